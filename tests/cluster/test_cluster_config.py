"""``[cluster]``: a member list that cannot work is refused; the peer token is a secret."""

from __future__ import annotations

from typing import Any

import pytest

from broker.config import ConfigError, load_config, structure_config
from broker.ops.service import discord_shard_of, plan_reload

MEMBERS = {"agent-broker-0": "127.0.0.1:9000", "agent-broker-1": "127.0.0.1:9001"}


def cluster(**values: Any) -> dict[str, Any]:
    return {"cluster": {"members": MEMBERS, "peer_token": "peer-s3cret", **values}}


def test_the_replica_comes_from_the_environment_and_is_a_member() -> None:
    data = cluster(replica="${HOSTNAME}")
    config = structure_config(data, file="broker.toml", environ={"HOSTNAME": "agent-broker-1"})
    assert config.cluster.enabled and config.cluster.replica == "agent-broker-1"
    assert list(config.cluster.members) == ["agent-broker-0", "agent-broker-1"]
    with pytest.raises(ConfigError) as err:
        structure_config(data, file="broker.toml", environ={"HOSTNAME": "laptop"})
    assert "cluster.replica: expected one of the names in cluster.members" in str(err.value)
    assert '"laptop"' in str(err.value)


def test_a_cluster_without_a_peer_token_or_server_is_refused() -> None:
    data = cluster(replica="agent-broker-0", peer_token="")
    with pytest.raises(ConfigError, match=r"cluster\.peer_token: required"):
        structure_config(data, file="broker.toml", environ={})
    data = {**cluster(replica="agent-broker-0"), "server": {"enabled": False}}
    with pytest.raises(ConfigError, match=r"server\.enabled: must be true in a cluster"):
        structure_config(data, file="broker.toml", environ={})


def test_a_member_without_an_address_is_refused_by_name() -> None:
    data = {"cluster": {"members": {"agent-broker-0": "nowhere"}, "replica": "agent-broker-0"}}
    with pytest.raises(ConfigError, match=r"cluster\.members\.agent-broker-0: expected"):
        structure_config(data, file="broker.toml", environ={})


def test_the_peer_token_is_a_secret_masked_in_the_redacted_config() -> None:
    config = structure_config(cluster(replica="agent-broker-0"), file="broker.toml", environ={})
    assert "peer-s3cret" in config.secret_values()
    assert config.redacted().cluster.peer_token == "***"


def test_a_default_config_is_no_cluster(tmp_path: Any) -> None:
    path = tmp_path / "broker.toml"
    path.write_text("")
    assert not load_config(str(path)).cluster.enabled


def test_a_reload_keeps_the_member_list_until_a_restart() -> None:
    old = structure_config(cluster(replica="agent-broker-0"), file="a", environ={})
    new_members = {**MEMBERS, "agent-broker-2": "127.0.0.1:9002"}
    new = structure_config(
        cluster(replica="agent-broker-0", members=new_members), file="b", environ={}
    )
    plan = plan_reload(old, new)
    assert plan.config.cluster == old.cluster
    assert "[cluster] takes effect at the next restart" in plan.kept


def test_each_replica_runs_the_discord_shard_of_its_ordinal() -> None:
    config = structure_config(cluster(replica="agent-broker-1"), file="broker.toml", environ={})
    assert discord_shard_of(config) == (1, 2)
