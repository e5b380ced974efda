"""claude-agent-acp given an MCP server through ``[agents.NAME] mcp_servers``, offline.

The broker's pool starts the real agent from a profile whose ``mcp_servers``
names :mod:`tests.interop.tiny_mcp` (a stdio MCP server this test owns); the
agent starts that server, and the fake Anthropic API sees its tool offered to
the model as ``mcp__tiny__shout``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.config import structure_config
from broker.reply import Outcome, Prompt
from broker.sessions.pool import open_pool, session_settings

from .claude_world import Claude
from .conftest import NODE_MISSING, node_available
from .harness import exact_env

pytestmark = pytest.mark.skipif(not node_available(), reason=NODE_MISSING)
TINY_MCP = Path(__file__).with_name("tiny_mcp.py")
OFFERED = "mcp__tiny__shout"  # claude's name for the tool "shout" of the server "tiny"


def recorded(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def test_claude_agent_acp_offers_the_tool_of_a_profiles_mcp_server(claude: Claude) -> None:
    record = claude.home.parent / "mcp-record.jsonl"
    agent_env = {k: v for k, v in claude.env().items() if k != "PATH"}
    profile = {
        "command": "node",
        "args": [str(claude.entry)],
        "working_dir": str(claude.cwd),
        "env": agent_env,
        "mcp_servers": {
            "tiny": {"command": sys.executable, "args": [str(TINY_MCP), "--record", str(record)]}
        },
    }
    config = structure_config(
        {
            "agents": {"default": "claude", "claude": profile},
            "state": {"path": str(claude.home.parent / "state" / "broker.sqlite3")},
            "server": {"listen": "127.0.0.1:0"},
        },
        file="<interop config>",
    )
    settings = session_settings(config, profile="claude", environ=exact_env())
    with trio.fail_after(60):
        async with open_pool(config, settings=settings) as pool:
            end = await pool.submit("cli:mcp", Prompt("[say] tools ready")).result()
    assert (end.outcome, end.text) == (Outcome.COMPLETED, "tools ready")
    turn = [r for r in claude.api.message_requests() if r.get("tools")][-1]
    names = [tool["name"] for tool in turn["tools"]]
    assert OFFERED in names, names
    offered = next(tool for tool in turn["tools"] if tool["name"] == OFFERED)
    assert offered["input_schema"]["required"] == ["words"]
    methods = [m.get("method") for m in recorded(record)]
    assert methods[:2] == ["initialize", "notifications/initialized"] and "tools/list" in methods
