"""broker.toml loading: exact error messages, ${VAR} expansion, agent environment, docs in sync."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from broker.config import (
    ARRAYS,
    SECTIONS,
    TABLES,
    AgentConfig,
    BrokerConfig,
    ConfigError,
    agent_environment,
    config_to_dict,
    default_config,
    load_config,
    parse_listen,
    resolve_command,
    server_url,
    structure_config,
)

ROOT = Path(__file__).resolve().parent.parent
EX_CONFIG = 78


def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m broker check-config --config PATH` as a real process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "broker", "check-config", "--config", str(path)],
        check=False,
        cwd=path.parent,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_default_broker_toml_passes_check_config_with_a_summary() -> None:
    result = check_config(ROOT / "broker.toml")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "\n" not in line
    assert line.startswith(f"{ROOT / 'broker.toml'}: ok; agent: ")
    assert "-m broker.testing.fake_agent" in line
    assert "server ws://127.0.0.1:8765/ws" in line


def test_default_broker_toml_equals_the_builtin_default() -> None:
    loaded = load_config(ROOT / "broker.toml", environ={})
    expected = default_config()
    # Only the relative paths differ: the file's are resolved against its directory.
    assert loaded.agent.working_dir == str(ROOT)
    assert loaded.state.path == str(ROOT / "state" / "broker.sqlite3")
    unresolved = attrs.evolve(
        loaded,
        agent=attrs.evolve(loaded.agent, working_dir=expected.agent.working_dir),
        state=expected.state,
    )
    assert unresolved == expected


BAD_FILES = [
    pytest.param(
        '[pool]\nmax_sessions = "ten"\n',
        'pool.max_sessions: expected an integer >= 1, got "ten"',
        id="wrong-type",
    ),
    pytest.param("[pool]\nmax_sesions = 3\n", "pool.max_sesions: unknown key", id="unknown-key"),
    pytest.param("[pools]\nmax_sessions = 3\n", "pools: unknown key", id="unknown-section"),
    pytest.param(
        "[timeouts]\nturn_hard_secs = -5\n",
        "timeouts.turn_hard_secs: expected a number >= 0, got -5",
        id="negative-timeout",
    ),
    pytest.param(
        "[pool]\nmax_sessions = 0\n",
        "pool.max_sessions: expected an integer >= 1, got 0",
        id="zero-sessions",
    ),
    pytest.param(
        "[pool]\nqueue_depth = -1\n",
        "pool.queue_depth: expected an integer >= 0, got -1",
        id="negative-queue",
    ),
    pytest.param(
        '[server]\nlisten = "localhost"\n',
        'server.listen: expected an address "HOST:PORT"',
        id="listen-without-port",
    ),
    pytest.param(
        '[permissions]\ndefault = "yes"\n',
        'permissions.default: expected one of allow_always | allow_once | reject | ask, got "yes"',
        id="unknown-permission",
    ),
    pytest.param(
        '[permissions]\nby_kind = { execute = "always" }\n',
        "permissions.by_kind.execute: expected one of allow_always | allow_once | reject | ask",
        id="unknown-permission-by-kind",
    ),
    pytest.param(
        '[permissions]\nby_kind = { exec = "reject" }\n',
        "permissions.by_kind.exec: expected an ACP tool kind: read | edit | delete | move | search"
        ' | execute | think | fetch | switch_mode | other, got "exec"',
        id="misspelt-tool-kind",
    ),
    pytest.param(
        '[log]\nformat = "xml"\n',
        'log.format: expected one of text | json, got "xml"',
        id="unknown-log-format",
    ),
    pytest.param(
        '[log]\nlevel = "loud"\n',
        'log.level: expected one of debug | info | warning | error | critical, got "loud"',
        id="unknown-log-level",
    ),
    pytest.param(
        '[server]\nstreaming = "yes"\n',
        'server.streaming: expected true or false, got "yes"',
        id="string-for-bool",
    ),
    pytest.param(
        '[agent]\nargs = ["--acp", 3]\n', "agent.args[1]: expected a string, got 3", id="args-int"
    ),
    pytest.param("pool = 3\n", "pool: expected a table, got 3", id="scalar-for-section"),
    pytest.param(
        '[gateway]\ntoken = "${BROKER_TEST_UNSET_TOKEN}"\n',
        "gateway.token: environment variable BROKER_TEST_UNSET_TOKEN is not set",
        id="unset-variable",
    ),
    pytest.param(
        '[agent]\nargs = ["${BROKER_TEST_UNSET_ARG}"]\n',
        "agent.args[0]: environment variable BROKER_TEST_UNSET_ARG is not set",
        id="unset-variable-in-array",
    ),
    pytest.param(
        "[pool]\nmax_sessions = = 3\n",
        "line 2, column 16: TOML syntax error",
        id="toml-syntax",
    ),
    pytest.param(
        '[agent]\ncommand = "no-such-agent-command-xyz"\n',
        "agent.command: 'no-such-agent-command-xyz' not found",
        id="missing-agent-command",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_check_config_rejects_bad_file_with_one_message_and_exit_78(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr.startswith(f"agent-broker: {path}: {message}")
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text('[pool]\nmax_sessions = "ten"\nbogus = 1\n[log]\nlevel = 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert sorted(lines) == sorted(
        [
            f'{path}: pool.max_sessions: expected an integer >= 1, got "ten"',
            f"{path}: pool.bogus: unknown key",
            f"{path}: log.level: expected a string, got 3",
        ]
    )


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    result = check_config(tmp_path / "absent.toml")
    assert result.returncode == EX_CONFIG
    assert (
        result.stderr
        == f"agent-broker: {tmp_path / 'absent.toml'}: cannot read: No such file or directory\n"
    )


def load_text(tmp_path: Path, text: str, environ: dict[str, str]) -> BrokerConfig:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return load_config(path, environ=environ)


def test_variables_expand_in_every_string_value(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[server]\ntoken = "${TOK}"\n'
        '[agent]\ncommand = "${BIN:-claude-agent-acp}"\nargs = ["--model", "${MODEL:-sonnet}"]\n'
        'env = { API_BASE = "https://${HOST}/v1", LITERAL = "$${HOME}" }\n'
        '[router]\nallowed_users = ["${ADMIN}"]\n',
        {"TOK": "t0k", "MODEL": "opus", "HOST": "api.local", "ADMIN": "42"},
    )
    assert config.server.token == "t0k"
    assert config.agent.command == "claude-agent-acp"
    assert config.agent.args == ("--model", "opus")
    assert config.agent.env == {"API_BASE": "https://api.local/v1", "LITERAL": "${HOME}"}
    assert config.router.allowed_users == ("42",)


def test_empty_variable_takes_the_default_and_unset_without_default_names_key(
    tmp_path: Path,
) -> None:
    text = '[gateway]\nurl = "${GW_URL:-}"\n[state]\npath = "${DIR:-/var/lib/x}/db.sqlite3"\n'
    config = load_text(tmp_path, text, {"DIR": ""})
    assert config.gateway.url == ""
    assert config.state.path == "/var/lib/x/db.sqlite3"
    with pytest.raises(ConfigError, match=r"state\.path: environment variable DIR is not set"):
        load_text(tmp_path, '[state]\npath = "${DIR}/db"\n', {})


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[agent]\nworking_dir = "work"\n[state]\npath = "s.db"\n', {})
    assert config.agent.working_dir == str(tmp_path / "work")
    assert config.state.path == str(tmp_path / "s.db")
    absolute = load_text(tmp_path, '[state]\npath = "/srv/b.db"\n', {})
    assert absolute.state.path == "/srv/b.db"


def test_integers_are_accepted_for_seconds_but_bools_are_not(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[timeouts]\ncancel_grace_secs = 2.5\ninitialize_secs = 3\n", {})
    assert config.timeouts.cancel_grace_secs == 2.5
    assert config.timeouts.initialize_secs == 3
    with pytest.raises(ConfigError, match="expected a number >= 0, got true"):
        load_text(tmp_path, "[timeouts]\ncancel_grace_secs = true\n", {})


def test_bare_command_resolves_next_to_the_interpreter_first() -> None:
    assert resolve_command("python") == os.path.join(os.path.dirname(sys.executable), "python")
    assert resolve_command("sh") == __import__("shutil").which("sh")
    assert resolve_command(sys.executable) == sys.executable
    with pytest.raises(ConfigError, match="'no-such-agent-xyz' not found"):
        resolve_command("no-such-agent-xyz")
    with pytest.raises(ConfigError, match="'/nonexistent/agent' is not an executable file"):
        resolve_command("/nonexistent/agent")


def test_agent_environment_is_cleared_and_never_carries_broker_tokens() -> None:
    broker_env = {
        "HOME": "/home/b",
        "PATH": "/usr/bin",
        "USER": "b",
        "LANG": "C.UTF-8",
        "ANTHROPIC_API_KEY": "sk-agent",
        "BROKER_SERVER_TOKEN": "server-secret",
        "AWS_SECRET_ACCESS_KEY": "unlisted",
    }
    agent = AgentConfig(
        env={"MODE": "demo", "LEAK": "Bearer gateway-secret"},
        inherit_env=("ANTHROPIC_API_KEY", "BROKER_SERVER_TOKEN", "NOT_SET_ANYWHERE"),
    )
    env = agent_environment(agent, broker_env, secrets=("server-secret", "gateway-secret"))
    assert env == {
        "HOME": "/home/b",
        "PATH": "/usr/bin",
        "USER": "b",
        "LANG": "C.UTF-8",
        "MODE": "demo",
        "ANTHROPIC_API_KEY": "sk-agent",
    }


def test_redacted_view_hides_tokens() -> None:
    config = BrokerConfig(
        server=attrs.evolve(default_config().server, token="s1"),
        gateway=attrs.evolve(default_config().gateway, url="wss://g/ws?token=g2", token="g2"),
    )
    data = config_to_dict(config.redacted())
    assert data["server"]["token"] == "***"
    assert data["gateway"] == {"url": "wss://g/ws?token=***", "token": "***", "streaming": False}
    assert config_to_dict(default_config().redacted())["server"]["token"] == ""
    assert config.secret_values() == ("s1", "g2")


def test_server_url_comes_from_listen_and_token() -> None:
    assert server_url(default_config()) == "ws://127.0.0.1:8765"
    config = BrokerConfig(
        server=attrs.evolve(default_config().server, listen="0.0.0.0:9000", token="a b")
    )
    assert server_url(config) == "ws://127.0.0.1:9000?token=a%20b"
    v6 = BrokerConfig(server=attrs.evolve(default_config().server, listen="[::1]:9001"))
    assert server_url(v6) == "ws://[::1]:9001"
    assert parse_listen("example.org:80") == ("example.org", 80)
    for bad in ("nohost", ":80", "h:99999", "h:port", "::1:80"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# ---------------------------------------------------------------- docs/config.md in sync


def toml_literal(value: Any) -> str:
    """A default as it is written in TOML (and in docs/config.md)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    return str(value)


def documented_keys() -> dict[str, str]:
    """`section.key` -> default literal, from the tables of docs/config.md."""
    found: dict[str, str] = {}
    section = None
    for line in (ROOT / "docs" / "config.md").read_text().splitlines():
        if heading := re.fullmatch(r"## \[\[?([\w.]+)\]\]?", line):
            section = heading.group(1).split(".")[-2 if line.endswith("NAME]") else -1]
        elif row := re.match(r"\| `(\w+)` \| `(.*?)` \| .+ \|$", line):
            assert section is not None, line
            key = f"{section}.{row.group(1)}"
            assert key not in found, f"{key} documented twice"
            found[key] = row.group(2)
    return found


def test_docs_list_exactly_the_keys_and_defaults_of_the_code() -> None:
    defaults = config_to_dict(default_config())
    in_code = {
        f"{section}.{field.name}": toml_literal(defaults[section][field.name])
        for section, cls in SECTIONS.items()
        for field in attrs.fields(cls)
    }
    for array, cls in ARRAYS.items():  # [[schedules]], [[routes]]: the defaults of one entry
        entry = cls()
        in_code.update(
            {f"{array}.{f.name}": toml_literal(getattr(entry, f.name)) for f in attrs.fields(cls)}
        )
    for table, cls in TABLES.items():  # [agents.NAME.mcp_servers.NAME]
        for key, value in attrs.asdict(cls()).items():
            in_code[f"{table}.{key}"] = toml_literal(value)
    assert documented_keys() == in_code


def test_more_warm_spares_than_sessions_is_impossible(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "[pool]\nmax_sessions = 2\nwarm_spares = 3\n", {})
    assert str(err.value) == (
        f"{tmp_path / 'broker.toml'}: pool.warm_spares: "
        "expected an integer <= pool.max_sessions (2), got 3"
    )


def test_a_broker_token_in_the_agents_arguments_is_refused() -> None:
    data = {"server": {"token": "s3cret-token"}, "agent": {"args": ["--key=s3cret-token"]}}
    with pytest.raises(ConfigError) as caught:
        structure_config(data, file="broker.toml", environ={})
    assert str(caught.value).startswith("broker.toml: agent.args: holds one of the broker's tokens")


def test_a_short_token_is_matched_in_agent_arguments_only_as_a_whole_value() -> None:
    ok = {"server": {"token": "t"}, "agent": {"args": ["-m", "broker.testing.fake_agent"]}}
    assert structure_config(ok, file="broker.toml", environ={}).server.token == "t"
    bad = {"server": {"token": "t"}, "agent": {"args": ["--token=t"]}}
    with pytest.raises(ConfigError, match=r"agent\.args: holds one of the broker's tokens"):
        structure_config(bad, file="broker.toml", environ={})


def test_enabled_slack_needs_tokens_of_the_right_kind_and_never_shows_them() -> None:
    data = {"slack": {"enabled": True, "app_token": "xoxb-wrong-kind", "bot_token": ""}}
    with pytest.raises(ConfigError) as caught:
        structure_config(data, file="broker.toml", environ={})
    message = str(caught.value)
    assert "slack.app_token: does not start with xapp-" in message
    assert "slack.bot_token: is empty" in message
    assert "xoxb-wrong-kind" not in message
    off = {"slack": {"app_token": "whatever"}}
    assert not structure_config(off, file="broker.toml", environ={}).slack.enabled


def test_slack_tokens_are_secrets_and_the_api_url_must_be_https_off_loopback() -> None:
    data = {"slack": {"enabled": True, "app_token": "xapp-1-A-2-t", "bot_token": "xoxb-1-2-t"}}
    config = structure_config(data, file="broker.toml", environ={})
    assert {"xapp-1-A-2-t", "xoxb-1-2-t"} <= set(config.secret_values())
    assert config.redacted().slack.bot_token == "***"
    plain = {"slack": {"api_base_url": "http://slack.example/api/"}}
    with pytest.raises(ConfigError, match=r"slack\.api_base_url: expected an https:// URL"):
        structure_config(plain, file="broker.toml", environ={})
    local = {"slack": {"api_base_url": "http://127.0.0.1:9/api/"}}
    assert structure_config(local, file="broker.toml", environ={}).slack.api_base_url
