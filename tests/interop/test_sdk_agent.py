"""The broker's ACP client against an agent built on the official Python SDK.

The agent (``sdk_agent.py``) checks every message the client sends with the
SDK's pydantic models in strict mode and records them; these tests drive it
through the broker's own supervisor and :class:`AcpClient` and then assert
that nothing was flagged and that the agent exited 0.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from acp.schema import CancelNotification, NewSessionRequest, PromptRequest

from broker.acp.client import ClientOptions
from broker.acp.policy import PermissionPolicy
from broker.acp.schema import (
    AgentMessageChunk,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceContents,
    ResourceLink,
    TextContent,
    ToolCallStart,
    ToolCallUpdate,
    UserMessageChunk,
)
from broker.config import structure_config
from broker.reply import Image, Prompt
from broker.sessions.pool import open_pool, session_settings
from supervisor.process import ChildSpec

from .harness import (
    Approvals,
    RunningAgent,
    Turn,
    exact_env,
    open_session,
    prompt_and_cancel,
    running_agent,
    texts,
)
from .sdk_agent import params_problems

SDK_AGENT = Path(__file__).with_name("sdk_agent.py")
BOUND = 30.0  # seconds for any one step; the agent answers in milliseconds


class SdkAgent:
    """Where one test's agent keeps its record and sessions."""

    def __init__(self, tmp_path: Path) -> None:
        self.record = tmp_path / "record.jsonl"
        self.state = tmp_path / "state"
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()

    def spec(self) -> ChildSpec:
        argv = (
            sys.executable,
            str(SDK_AGENT),
            "--record",
            str(self.record),
            "--state",
            str(self.state),
        )
        return ChildSpec(argv=argv, env=exact_env(), cwd=str(self.cwd), name="sdk-agent")

    def options(self, **kwargs: Any) -> ClientOptions:
        return ClientOptions(cwd=str(self.cwd), **kwargs)

    def received(self) -> list[dict[str, Any]]:
        """Records of what the agent received (and its own notes)."""
        lines = self.record.read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["dir"] != "out"]

    def assert_all_valid(self) -> list[str]:
        """No message was flagged; returns the methods received, in order."""
        received = self.received()
        flagged = [r for r in received if r["problems"]]
        assert flagged == [], f"the agent flagged what the client sent: {flagged}"
        return [r["message"].get("method", "<answer>") for r in received]


async def finish_cleanly(agent: RunningAgent) -> None:
    with trio.fail_after(BOUND):
        status = await agent.finish()
    assert status.returncode == 0, (
        f"sdk agent {status.describe()}; stderr: {agent.child.stderr_tail()}"
    )


async def test_whole_conversation_passes_the_sdk_strict_models(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    approvals = Approvals()
    async with running_agent(sdk.spec(), sdk.options(approver=approvals)) as agent:
        client = agent.client
        with trio.fail_after(BOUND):
            init = await client.initialize()
            setup = await client.new_session(str(sdk.cwd))
        assert init.agent_info is not None and init.agent_info.name == "sdk-interop-agent"
        assert init.agent_capabilities.load_session
        sid = setup.session_id

        echo = Turn()
        with trio.fail_after(BOUND):
            stop = await client.prompt(sid, [TextContent("hello there, agent")], echo.on_update)
        assert stop == "end_turn"
        assert echo.chunks == ["echo: ", "hello ", "there, ", "agent"]

        tool = Turn()
        with trio.fail_after(BOUND):
            stop = await client.prompt(sid, [TextContent("permission please")], tool.on_update)
        assert stop == "end_turn"
        [(request, choice)] = approvals.asked
        assert [o.kind for o in request.options] == ["allow_once", "reject_once"]
        assert choice == "yes"  # the default policy allows once
        calls = tool.tool_calls()
        assert [type(c) for c in calls] == [ToolCallStart, ToolCallUpdate]
        assert [c.status for c in calls] == ["pending", "completed"]
        assert tool.text == "permission: yes"

        await finish_cleanly(agent)
    methods = sdk.assert_all_valid()
    assert methods == ["initialize", "session/new", "session/prompt", "session/prompt", "<answer>"]


async def prompt_blocks(tmp_path: Path, blocks: list[ContentBlock]) -> str:
    """Send one prompt of ``blocks``; returns the agent's reply after checking it all."""
    sdk = SdkAgent(tmp_path)
    async with running_agent(sdk.spec(), sdk.options()) as agent:
        with trio.fail_after(BOUND):
            sid = await open_session(agent.client, str(sdk.cwd))
            turn = Turn()
            assert await agent.client.prompt(sid, blocks, turn.on_update) == "end_turn"
        await finish_cleanly(agent)
    sdk.assert_all_valid()
    return turn.text


async def test_image_and_resource_link_blocks_are_sent_as_the_schema_defines_them(
    tmp_path: Path,
) -> None:
    reply = await prompt_blocks(
        tmp_path,
        [
            TextContent("look at these"),
            ImageContent(data=base64.b64encode(b"\x89PNG").decode(), mime_type="image/png"),
            ResourceLink(uri="file:///work/notes.md", name="notes.md", mime_type="text/markdown"),
            EmbeddedResource(
                ResourceContents(uri="file:///work/b.bin", blob=base64.b64encode(b"\0\1").decode())
            ),
        ],
    )
    assert reply == "echo: look at these [image resource_link resource]"


async def test_embedded_text_resource_is_sent_as_the_schema_defines_it(tmp_path: Path) -> None:
    reply = await prompt_blocks(
        tmp_path,
        [
            TextContent("read this"),
            EmbeddedResource(
                ResourceContents(
                    uri="file:///work/a.py", mime_type="text/x-python", text="print('hi')\n"
                )
            ),
        ],
    )
    assert reply == "echo: read this [resource]"


async def test_cancel_mid_prompt_ends_the_turn_with_cancelled(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    async with running_agent(sdk.spec(), sdk.options()) as agent:
        with trio.fail_after(BOUND):
            sid = await open_session(agent.client, str(sdk.cwd))
        slow = Turn()
        with trio.fail_after(BOUND):  # the agent would tick for 60 s without the cancel
            stop = await prompt_and_cancel(
                agent.client, sid, [TextContent("slow please")], slow, slow.first_text
            )
        assert stop == "cancelled"
        assert slow.chunks[0] == "tick 0 "
        await finish_cleanly(agent)
    assert sdk.assert_all_valid() == [
        "initialize",
        "session/new",
        "session/prompt",
        "session/cancel",
    ]


async def test_cancel_answers_a_pending_permission_request_with_cancelled(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    approvals = Approvals(hold=True)  # nobody answers: only the cancel can
    async with running_agent(sdk.spec(), sdk.options(approver=approvals)) as agent:
        with trio.fail_after(BOUND):
            sid = await open_session(agent.client, str(sdk.cwd))
        turn = Turn()
        with trio.fail_after(BOUND):
            stop = await prompt_and_cancel(
                agent.client, sid, [TextContent("permission?")], turn, approvals.asked_event
            )
        assert stop == "cancelled"
        assert turn.text == "permission: cancelled"
        assert [c.status for c in turn.tool_calls()] == ["pending", "failed"]
        await finish_cleanly(agent)
    answers = [r["message"] for r in sdk.received() if "method" not in (r["message"] or {})]
    assert [a["result"]["outcome"] for a in answers] == [{"outcome": "cancelled"}]
    sdk.assert_all_valid()


async def test_reject_policy_is_what_the_agent_receives(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    options = sdk.options(permissions=PermissionPolicy(default="reject"))
    async with running_agent(sdk.spec(), options) as agent:
        with trio.fail_after(BOUND):
            sid = await open_session(agent.client, str(sdk.cwd))
            turn = Turn()
            assert (
                await agent.client.prompt(sid, [TextContent("permission")], turn.on_update)
                == "end_turn"
            )
        assert turn.text == "permission: no"
        assert [c.status for c in turn.tool_calls()] == ["pending", "failed"]
        await finish_cleanly(agent)
    sdk.assert_all_valid()


async def test_load_after_restart_replays_history_into_the_load_result(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    async with running_agent(sdk.spec(), sdk.options()) as agent:
        with trio.fail_after(BOUND):
            sid = await open_session(agent.client, str(sdk.cwd))
            assert (
                await agent.client.prompt(
                    sid, [TextContent("remember the lighthouse")], Turn().on_update
                )
                == "end_turn"
            )
        await finish_cleanly(agent)

    async with running_agent(sdk.spec(), sdk.options()) as agent:
        with trio.fail_after(BOUND):
            await agent.client.initialize()
            loaded = await agent.client.load_session(sid, str(sdk.cwd))
        assert loaded.setup.session_id == sid
        assert texts(list(loaded.replayed), UserMessageChunk) == ["remember the lighthouse"]
        assert texts(list(loaded.replayed), AgentMessageChunk) == ["echo: remember the lighthouse"]
        assert agent.client.session(sid).replayed_count == 2

        after = Turn()
        with trio.fail_after(BOUND):
            stop = await agent.client.prompt(sid, [TextContent("and now")], after.on_update)
        assert stop == "end_turn"
        assert after.text == "echo: and now"  # no replayed update leaks into a prompt
        await finish_cleanly(agent)
    assert sdk.assert_all_valid()[-3:] == ["initialize", "session/load", "session/prompt"]


async def test_pool_resume_and_images_pass_the_sdk_strict_models(tmp_path: Path) -> None:
    sdk = SdkAgent(tmp_path)
    [command, *args] = sdk.spec().argv
    config = structure_config(
        {
            "agent": {"command": command, "args": args, "working_dir": str(sdk.cwd)},
            "pool": {"max_sessions": 1},
            "state": {"path": str(tmp_path / "broker.sqlite3")},
            "server": {"listen": "127.0.0.1:0"},
        },
        file="<interop config>",
    )
    picture = Image(base64.b64encode(b"\x89PNG").decode(), "image/png", "a.png")
    with trio.fail_after(3 * BOUND):
        async with open_pool(config, settings=session_settings(config, exact_env())) as pool:
            first = await pool.submit("cli:A", Prompt("see", images=(picture,))).result()
            assert first.text == "echo: see [image]"
            other = await pool.submit("cli:B", Prompt("hi", context="[alice]")).result()
            assert other.text == "echo: [alice] hi"
            assert pool.is_suspended("cli:A")  # evicted: one agent at most
            back = pool.submit("cli:A", Prompt("again"))
            assert (await back.result()).text == "echo: again"
            assert not back.transcript.context_reset and pool.counters.resumed == 1
    methods = sdk.assert_all_valid()
    assert methods.count("session/load") == 1 and methods.count("session/new") == 2


@pytest.mark.parametrize(
    ("model", "params", "expected"),
    [
        (
            NewSessionRequest,
            {"cwd": "/w", "mcpServers": [], "mcp_servers": []},
            "params.mcp_servers: not a field",
        ),
        (
            PromptRequest,
            {"sessionId": "s", "prompt": [], "session_id": "s"},
            "params.session_id: not a field",
        ),
        (
            PromptRequest,
            {"sessionId": "s", "prompt": [{"type": "text", "text": 5}]},
            "prompt.0.text.text: Input should be a valid string",
        ),
        (CancelNotification, {"sessionId": 7}, "sessionId: Input should be a valid string"),
    ],
)
def test_strict_check_flags_what_lenient_parsing_would_accept(
    model: Any, params: dict[str, Any], expected: str
) -> None:
    problems = params_problems(model, params)
    assert any(expected in p for p in problems), problems
