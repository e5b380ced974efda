"""The agent-broker command line, the systemd unit and the install script."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import broker
from broker.config import default_config, load_config
from broker.ops import cli

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "agent-broker.service"
INSTALL = ROOT / "deploy" / "install-service.sh"


def agent_broker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m broker ARGS` as a real process, without BROKER_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_version_is_printed() -> None:
    result = agent_broker("--version", cwd=ROOT)
    assert (result.returncode, result.stdout) == (0, f"agent-broker {broker.__version__}\n")


def test_without_config_option_uses_local_broker_toml_else_builtin_default(
    tmp_path: Path,
) -> None:
    builtin = agent_broker("check-config", cwd=tmp_path)
    assert builtin.returncode == 0, builtin.stderr
    assert builtin.stdout.startswith("<default>: ok; ")
    assert "pool: 20 sessions" in builtin.stdout

    (tmp_path / "broker.toml").write_text("[pool]\nmax_sessions = 7\n")
    local = agent_broker("check-config", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    assert local.stdout.startswith("broker.toml: ok; ")
    assert "pool: 7 sessions" in local.stdout


@pytest.mark.parametrize("command", ["run", "status", "dashboard", "chat"])
def test_every_subcommand_exits_78_on_a_bad_config_without_traceback(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "broker.toml").write_text("[server]\nlisten = 8765\n")
    result = agent_broker(command, cwd=tmp_path)
    assert result.returncode == cli.EX_CONFIG
    assert (
        result.stderr == "agent-broker: broker.toml: server.listen: expected a string, got 8765\n"
    )


def test_run_refuses_a_missing_agent_command_as_config_error(tmp_path: Path) -> None:
    (tmp_path / "broker.toml").write_text('[agent]\ncommand = "not-an-agent-xyz"\n')
    result = agent_broker("run", cwd=tmp_path)
    assert result.returncode == cli.EX_CONFIG
    assert "broker.toml: agent.command: 'not-an-agent-xyz' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_agent_working_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "broker.toml").write_text('[agent]\nworking_dir = "checkout"\n')
    result = agent_broker("check-config", cwd=tmp_path)
    assert result.returncode == cli.EX_CONFIG
    assert result.stderr == (
        "agent-broker: broker.toml: agent.working_dir: "
        f"{tmp_path / 'checkout'} is not a directory\n"
    )
    (tmp_path / "checkout").mkdir()
    assert agent_broker("check-config", cwd=tmp_path).returncode == 0


def test_a_worktree_profile_working_inside_its_repo_is_refused_naming_the_key(
    tmp_path: Path,
) -> None:
    for directory in ("repo/trees", "trees"):
        (tmp_path / directory).mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "repo" / "trees")
    config = (
        '[agents]\ndefault = "dev"\n[agents.dev]\nworkspace = "git-worktree"\n'
        'repo = "repo"\nworking_dir = "{}"\n'
    )
    for inside in ("repo/trees", "linked", "repo"):
        (tmp_path / "broker.toml").write_text(config.format(inside))
        result = agent_broker("check-config", cwd=tmp_path)
        assert result.returncode == cli.EX_CONFIG, inside
        assert result.stderr.startswith(
            f"agent-broker: broker.toml: agents.dev.working_dir: {tmp_path / inside} is inside "
            f"agents.dev.repo ({tmp_path / 'repo'}); "
        ), result.stderr
    (tmp_path / "broker.toml").write_text(config.format("trees"))
    result = agent_broker("check-config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_missing_subcommand_module_is_reported_as_not_available(tmp_path: Path) -> None:
    with pytest.raises(cli.Unavailable, match=r"broker\.no_such_part is not available yet"):
        cli._entry("broker.no_such_part", "main")
    with pytest.raises(cli.Unavailable, match=r"broker\.config\.main is not available yet"):
        cli._entry("broker.config", "main")


def test_broken_import_inside_a_subcommand_module_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "half_written_part.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli._entry("half_written_part", "main")


def test_default_url_comes_from_server_listen_and_token(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:9123"\ntoken = "t"\n')
    args = cli.build_parser().parse_args(["chat", "--config", str(path)])
    assert cli._url(args, load_config(path)) == "ws://127.0.0.1:9123?token=t"
    assert args.platform == "cli"
    args = cli.build_parser().parse_args(["status", "--json", "--url", "ws://h:1"])
    assert (cli._url(args, default_config()), args.json) == ("ws://h:1", True)


# ---------------------------------------------------------------- systemd


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_service_contract() -> None:
    s = unit_settings()
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": [
            "/opt/agent-broker/bin/agent-broker run --config /etc/agent-broker/broker.toml"
        ],
        "KillMode": ["mixed"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": [str(cli.EX_CONFIG)],
        "WatchdogSec": ["30"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "PrivateTmp": ["yes"],
        "StateDirectory": ["agent-broker"],
        "User": ["agent-broker"],
    }
    assert {key: s.get(key) for key in expected} == expected
    assert "RestartSteps" in s and "RestartMaxDelaySec" in s


def test_unit_stop_timeout_exceeds_the_brokers_stop_budget() -> None:
    t = default_config().timeouts
    budget = t.cancel_grace_secs + t.stop_grace_secs + t.drain_ms / 1000 + 1
    (timeout,) = unit_settings()["TimeoutStopSec"]
    assert float(timeout) > budget


def test_installed_config_keeps_state_and_work_in_the_state_directory() -> None:
    config = load_config(ROOT / "broker.toml", environ={"STATE_DIRECTORY": "/var/lib/agent-broker"})
    assert config.state.path == "/var/lib/agent-broker/broker.sqlite3"
    assert config.agent.working_dir == "/var/lib/agent-broker"


def systemd_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.search(r"systemd (\d+)", out)
    return int(match.group(1)) if match else 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at this venv's agent-broker.
    exe = Path(sys.executable).with_name("agent-broker")
    if not exe.exists():
        pytest.skip(f"{exe} not installed (pip install -e .)")
    unit = tmp_path / "agent-broker.service"
    unit.write_text(UNIT.read_text().replace("/opt/agent-broker/bin/agent-broker", str(exe)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    problems = result.stderr.splitlines()
    if systemd_version() < 254:  # RestartSteps= and RestartMaxDelaySec= came in systemd 254
        problems = [
            p
            for p in problems
            if not re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", p)
        ]
    assert problems == []
    assert result.returncode == 0


def test_install_script_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text("[pool]\nmax_sessions = 3\n")
    result = subprocess.run(
        [str(INSTALL), "--dry-run", "--prefix", "/srv/ab", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    commands = [step.split()[1] for step in steps]
    assert "python3" in commands and "systemctl" in commands
    assert (
        f"+ /srv/ab/bin/python -m pip install --disable-pip-version-check --upgrade {ROOT}" in steps
    )
    assert "+ systemctl daemon-reload" == steps[-1]
    installs = [step for step in steps if step.startswith("+ install ")]
    assert any(step.endswith(f"{config} /etc/agent-broker/broker.toml") for step in installs) or (
        "/etc/agent-broker/broker.toml exists, kept" in result.stdout
    )
    assert any(step.endswith("/etc/systemd/system/agent-broker.service") for step in installs)
    assert not Path("/srv/ab").exists()


def test_install_script_rejects_unknown_arguments() -> None:
    result = subprocess.run(
        [str(INSTALL), "--dry-run", "--frobnicate"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown argument: --frobnicate" in result.stderr


def test_a_listen_address_in_use_is_named_in_the_one_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "broker.toml").write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n[state]\npath = "state/b.sqlite3"\n'
        )
        result = agent_broker("run", cwd=tmp_path)
    assert result.returncode == 69
    lines = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr
    assert "Address already in use" in lines[0]


def test_a_negative_max_sessions_is_one_message_without_a_knock_on_error(tmp_path: Path) -> None:
    (tmp_path / "broker.toml").write_text("[pool]\nmax_sessions = -1\n")
    result = agent_broker("check-config", cwd=tmp_path)
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "agent-broker: broker.toml: pool.max_sessions: expected an integer >= 1, got -1"
    ]
