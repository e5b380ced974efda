"""Questions with the real claude-agent-acp, offline: its permission requests
reach the chat as questions over a real WebSocket connection, and the answer
typed there is what the agent gets."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from broker.chat.router import Router
from broker.frontends.server import serve_websocket
from broker.sessions.pool import open_pool
from tests.router.stack import Client, Stack, TrackedRouter, connect

from .claude_world import COMMAND, WRITTEN, Claude
from .conftest import NODE_MISSING, node_available
from .test_claude_agent_pool import pool_setup

pytestmark = pytest.mark.skipif(not node_available(), reason=NODE_MISSING)
STEP_SECS = 60.0


@asynccontextmanager
async def asking_broker(claude: Claude) -> AsyncIterator[Stack]:
    """claude-agent-acp behind the pool, router and WebSocket server; every
    tool kind is asked."""
    config, settings = pool_setup(
        claude, permissions={"default": "ask", "by_kind": {}}, server={"streaming": False}
    )
    async with open_pool(config, settings=settings) as pool, trio.open_nursery() as nursery:
        tracked = TrackedRouter(Router(pool, config))
        server = await nursery.start(functools.partial(serve_websocket, config.server, tracked))
        yield Stack(pool, tracked.router, tracked, server)
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def question_of(client: Client, event_id: str) -> str:
    def asked() -> list[str]:
        return [t for t in client.texts(event_id) if t.startswith("❓ Question")]

    await client.wait_for(lambda: bool(asked()))
    return asked()[0]


async def test_a_write_asked_in_the_chat_and_allowed_writes_the_file(claude: Claude) -> None:
    with trio.fail_after(STEP_SECS):
        async with asking_broker(claude) as stack, connect(stack) as client:
            event = await client.send("[write] please")
            question = await question_of(client, event.event_id)
            answer = await client.ask("/allow 1")
            frames = await client.settle(stack, event)
    assert "Write" in question and "(edit)" in question
    assert f"new file {claude.cwd / 'out.txt'}: +1 -0 lines" in question
    assert "/allow 1" in question and "/deny 1" in question
    assert "✅ allowed once by @alice" in answer
    assert (claude.cwd / "out.txt").read_text() == WRITTEN
    final = frames[-1].reply.text
    assert "The tool said:" in final
    claude.assert_only_known_endpoints()


async def test_a_bash_command_asked_and_denied_does_not_run_and_the_agent_is_told(
    claude: Claude,
) -> None:
    with trio.fail_after(STEP_SECS):
        async with asking_broker(claude) as stack, connect(stack) as client:
            event = await client.send("[bash] please")
            question = await question_of(client, event.event_id)
            answer = await client.ask("/deny 1")
            frames = await client.settle(stack, event)
    assert "(execute)" in question and f"$ {COMMAND}" in question
    assert "🚫 rejected by @alice" in answer
    assert not (claude.cwd / "bash.txt").exists()
    assert len(claude.model.tool_result_texts) == 1
    assert claude.model.tool_result_texts == ["User refused permission to run tool"]
    final = frames[-1].reply.text
    assert "❌ echo ran > bash.txt failed" in final
    assert "The tool said: User refused permission to run tool" in final
    claude.assert_only_known_endpoints()
