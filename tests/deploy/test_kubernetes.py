"""deploy/kubernetes renders, and what it renders runs the cluster docs/scaling.md describes.

Rendered with ``kubectl kustomize`` where kubectl is installed; otherwise the resources are read
with PyYAML where it is installed; with neither, the test is skipped and says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig, load_config
from broker.ops.service import stop_budget
from tests.deploy.block_yaml import documents

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
ENVIRON = {
    "HOSTNAME": "agent-broker-1",
    "BROKER_SERVER_TOKEN": "server-token",
    "BROKER_PEER_TOKEN": "peer-token",
}


def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        out = subprocess.run(
            [kubectl, "kustomize", str(BASE)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return documents(out.stdout)
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pytest.skip("neither kubectl nor PyYAML is installed: deploy/kubernetes is not checked")
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    docs = [yaml.safe_load((BASE / name).read_text()) for name in kustomization["resources"]]
    for generated in kustomization["configMapGenerator"]:
        data = {name: (BASE / name).read_text() for name in generated["files"]}
        docs.append({"kind": "ConfigMap", "metadata": {"name": generated["name"]}, "data": data})
    return docs


def one(docs: list[dict[str, Any]], kind: str, **where: Any) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind and all(d["metadata"].get(k) == v for k, v in where.items())
    ]
    assert len(found) == 1, (kind, where, [d["metadata"]["name"] for d in docs])
    return found[0]


def broker_config(docs: list[dict[str, Any]], tmp_path: Path) -> BrokerConfig:
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    path = tmp_path / "broker.toml"
    path.write_text(config_map["data"]["broker.toml"])
    return load_config(path, environ=ENVIRON)


def test_the_statefulset_runs_one_member_per_replica_each_with_its_own_volume(
    tmp_path: Path,
) -> None:
    docs = rendered()
    config = broker_config(docs, tmp_path)
    statefulset = one(docs, "StatefulSet")
    spec = statefulset["spec"]
    names = [f"{statefulset['metadata']['name']}-{n}" for n in range(spec["replicas"])]
    assert list(config.cluster.members) == names
    assert config.cluster.replica == ENVIRON["HOSTNAME"]
    assert config.cluster.peer_token == ENVIRON["BROKER_PEER_TOKEN"]
    headless = one(docs, "Service", name=spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    port = int(config.server.listen.rsplit(":", 1)[1])
    assert all(
        address == f"{name}.{spec['serviceName']}:{port}"
        for name, address in config.cluster.members.items()
    )
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
    for kept in (config.state.path, config.agent.working_dir, home):
        assert kept.startswith(mount["mountPath"] + "/"), kept


def test_readiness_is_healthz_on_the_server_port_and_the_grace_covers_the_stop_budget(
    tmp_path: Path,
) -> None:
    docs = rendered()
    config = broker_config(docs, tmp_path)
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == int(config.server.listen.rsplit(":", 1)[1])
    probe = container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": port["name"]}
    assert "httpGet" not in container["livenessProbe"]  # a stopping broker's 503 is not death
    assert pod["terminationGracePeriodSeconds"] >= stop_budget(config)
    config_volume = next(v for v in pod["volumes"] if "configMap" in v)
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_the_services_and_the_disruption_budget_select_the_brokers_pods() -> None:
    docs = rendered()
    statefulset = one(docs, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    selected = [
        one(docs, "Service", name="agent-broker")["spec"]["selector"],
        one(docs, "Service", name="agent-broker-ws")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selected:
        assert selector.items() <= labels.items()
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    secret = one(docs, "Secret")
    referenced = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert referenced == {secret["metadata"]["name"]}
