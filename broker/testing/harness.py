"""Building blocks for tests and benchmarks: a broker config that runs the fake agent.

:func:`fake_agent_config` gives a complete :class:`~broker.config.BrokerConfig`
whose agent is ``python -m broker.testing.fake_agent`` (this interpreter), with
short timeouts, the agent's session files and the broker's state under one
directory. Sections are overridden by keyword, with the same keys as
broker.toml, and go through the real config validation.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from broker.config import BrokerConfig, config_to_dict, structure_config

FAST_TIMEOUTS: Mapping[str, Any] = {
    "initialize_secs": 20,
    "session_new_secs": 20,
    "turn_hard_secs": 120,
    "cancel_grace_secs": 2,
    "stop_grace_secs": 2,
    "drain_ms": 50,
}


def fake_agent_argv(root: Path, *agent_args: str) -> list[str]:
    """The fake agent's command line with its session files under ``root``."""
    return [
        sys.executable,
        "-m",
        "broker.testing.fake_agent",
        "--state-dir",
        str(root / "agent-sessions"),
        *agent_args,
    ]


def fake_agent_config(
    root: Path, *, agent_args: Sequence[str] = (), **sections: Mapping[str, Any]
) -> BrokerConfig:
    """A config running the fake agent in ``root``; ``sections`` override keys
    per section, e.g. ``pool={"max_sessions": 2}``."""
    argv = fake_agent_argv(root, *agent_args)
    data: dict[str, dict[str, Any]] = {
        "agent": {"command": argv[0], "args": argv[1:], "working_dir": str(root)},
        "timeouts": dict(FAST_TIMEOUTS),
        "state": {"path": str(root / "state" / "broker.sqlite3")},
        "server": {"listen": "127.0.0.1:0"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return structure_config(data, file="<test config>")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        pairs = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + pairs + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(data: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]]) -> str:
    """broker.toml text for sections of keys (as from ``config_to_dict``); a list
    of tables (``routes``) becomes ``[[routes]]`` tables, nested tables inline."""
    lines = []
    for section, values in data.items():
        tables = [values] if isinstance(values, Mapping) else list(values)
        header = f"[{section}]" if isinstance(values, Mapping) else f"[[{section}]]"
        for table in tables:
            lines.append(header)
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


def config_toml(config: BrokerConfig) -> str:
    """broker.toml text with every key of ``config`` written out."""
    return toml_text(config_to_dict(config))


def free_port() -> int:
    """A loopback port that was free a moment ago (bound to port 0, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def http_get(port: int, target: str, headers: str = "") -> tuple[int, bytes]:
    """Status code and body of one ``GET target`` on loopback, the connection
    closed after it (``headers``: extra CRLF-ended lines)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        await stream.send_all(request.encode())
        data = bytearray()
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
