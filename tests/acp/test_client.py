"""The ACP client against an in-test agent speaking real JSON lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.acp.client import AcpClient, AcpError, ClientOptions
from broker.acp.jsonrpc import PeerClosed
from broker.acp.policy import PermissionPolicy
from broker.acp.schema import (
    AgentMessageChunk,
    PermissionRequest,
    SessionUpdate,
    TextContent,
    ToolCallStart,
    UnknownUpdate,
    UsageUpdate,
)

from .wire import AgentEnd, iter_lines, stream_pair

INIT_RESULT = {
    "protocolVersion": 1,
    "agentCapabilities": {
        "loadSession": True,
        "promptCapabilities": {"image": True, "audio": False, "embeddedContext": None},
        "sessionCapabilities": {"resume": {}, "close": None},
    },
    "authMethods": [{"id": "api-key", "name": "API key", "description": None}],
    "agentInfo": {"name": "in-test-agent", "version": "0.0.1"},
}
PERMISSION_OPTIONS = [
    {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "once", "name": "Allow", "kind": "allow_once"},
    {"optionId": "no", "name": "Reject", "kind": "reject_once"},
]


def text(update: SessionUpdate) -> str:
    assert isinstance(update, AgentMessageChunk) and isinstance(update.content, TextContent)
    return update.content.text


def chunk(words: str) -> dict[str, Any]:
    return {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": words}}


async def connect(
    nursery: trio.Nursery, options: ClientOptions | None = None
) -> tuple[AcpClient, AgentEnd]:
    """A client serving an in-memory wire, initialized against the agent end."""
    stream, agent = stream_pair()
    client = AcpClient(stream.send_all, options or ClientOptions())
    nursery.start_soon(client.serve, iter_lines(stream), lambda: "agent stderr tail")

    async def answer_initialize() -> None:
        request = await agent.receive()
        assert request["method"] == "initialize"
        await agent.respond(request, INIT_RESULT)

    with trio.fail_after(5):
        nursery.start_soon(answer_initialize)
        await client.initialize()
    return client, agent


@asynccontextmanager
async def prompting(
    client: AcpClient, agent: AgentEnd, seen: list[SessionUpdate], session_id: str = "s1"
) -> AsyncIterator[dict[str, Any]]:
    """Run a prompt in a task; yield its request as the agent got it; on
    exit answer it with end_turn and wait until prompt() has returned."""
    async with trio.open_nursery() as inner:
        inner.start_soon(client.prompt, session_id, [TextContent("hi")], seen.append)
        request = await agent.receive_method("session/prompt")
        yield request
        await agent.respond(request, {"stopReason": "end_turn"})


async def request_from_agent(agent: AgentEnd, method: str, params: Any) -> dict[str, Any]:
    """Send one agent->client request and return the client's answer."""
    await agent.send({"id": f"agent-{method}", "method": method, "params": params})
    answer = await agent.receive()
    assert answer["id"] == f"agent-{method}"
    return answer


async def test_initialize_advertises_only_enabled_capabilities(nursery: trio.Nursery) -> None:
    stream, agent = stream_pair()
    client = AcpClient(stream.send_all, ClientOptions(name="b", version="9", fs_read=True))
    nursery.start_soon(client.serve, iter_lines(stream), lambda: "")
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(client.initialize)
            request = await agent.receive()
            await agent.respond(request, INIT_RESULT)
    assert request["params"] == {
        "protocolVersion": 1,
        "clientCapabilities": {
            "fs": {"readTextFile": True, "writeTextFile": False},
            "terminal": False,
        },
        "clientInfo": {"name": "b", "version": "9"},
    }
    caps = client.agent_capabilities
    assert caps.load_session and caps.prompt_capabilities.image
    assert not caps.prompt_capabilities.embedded_context
    assert caps.session_capabilities.resume and not caps.session_capabilities.close
    assert client.init_result is not None and client.init_result.auth_methods[0].id == "api-key"


async def test_prompt_delivers_updates_sent_before_the_response(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    seen: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            stop: list[str] = []

            async def run() -> None:
                blocks = [TextContent("hello")]
                stop.append(await client.prompt("s1", blocks, lambda u: seen.append(text(u))))

            inner.start_soon(run)
            request = await agent.receive_method("session/prompt")
            assert request["params"] == {
                "sessionId": "s1",
                "prompt": [{"type": "text", "text": "hello"}],
            }
            lines = [
                b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s1",'
                b'"update":{"sessionUpdate":"agent_message_chunk","content":'
                b'{"type":"text","text":"%d "}}}}' % i
                for i in range(200)
            ]
            lines.append(
                b'{"jsonrpc":"2.0","id":%d,"result":{"stopReason":"end_turn"}}' % request["id"]
            )
            await agent.stream.send_all(b"\n".join(lines) + b"\n")
    assert stop == ["end_turn"]
    assert seen == [f"{i} " for i in range(200)]


async def test_updates_of_another_session_do_not_reach_the_prompt(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    seen: list[SessionUpdate] = []
    with trio.fail_after(5):
        async with prompting(client, agent, seen):
            await agent.update("other", chunk("not yours"))
            await agent.update("s1", chunk("yours"))
    assert [text(u) for u in seen] == ["yours"]
    assert client.foreign_updates == 1


async def test_load_session_replay_is_not_delivered_to_a_prompt(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    seen: list[SessionUpdate] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            loaded: list[Any] = []

            async def load() -> None:
                loaded.append(await client.load_session("s1", "/tmp"))

            inner.start_soon(load)
            request = await agent.receive_method("session/load")
            assert request["params"]["sessionId"] == "s1" and request["params"]["mcpServers"] == []
            await agent.update(
                "s1",
                {
                    "sessionUpdate": "user_message_chunk",
                    "content": {"type": "text", "text": "old question"},
                },
            )
            await agent.update("s1", chunk("old answer"))
            await agent.respond(request, {"configOptions": None, "modes": None})
        async with prompting(client, agent, seen):
            await agent.update("s1", chunk("new answer"))
    assert [text(u) for u in seen] == ["new answer"]
    assert len(loaded[0].replayed) == 2 and text(loaded[0].replayed[1]) == "old answer"
    assert client.session("s1").replayed_count == 2


async def test_unadvertised_session_methods_raise_before_sending(nursery: trio.Nursery) -> None:
    client, _ = await connect(nursery)
    with pytest.raises(AcpError, match=r"sessionCapabilities\.close"):
        await client.close_session("s1")


async def test_permission_policy_answers_per_tool_kind(nursery: trio.Nursery) -> None:
    policy = PermissionPolicy(
        default="allow_once", by_kind={"execute": "reject", "read": "allow_always"}
    )
    _, agent = await connect(nursery, ClientOptions(permissions=policy))
    outcomes = {}
    with trio.fail_after(5):
        for kind in ("execute", "read", "edit", None):
            answer = await request_from_agent(
                agent,
                "session/request_permission",
                {
                    "sessionId": "s1",
                    "toolCall": {"toolCallId": "t", "kind": kind},
                    "options": PERMISSION_OPTIONS,
                },
            )
            outcomes[kind] = answer["result"]["outcome"]
    assert outcomes == {
        "execute": {"outcome": "selected", "optionId": "no"},
        "read": {"outcome": "selected", "optionId": "always"},
        "edit": {"outcome": "selected", "optionId": "once"},
        None: {"outcome": "selected", "optionId": "once"},
    }


async def test_cancel_answers_pending_permission_and_prompt_ends_cancelled(
    nursery: trio.Nursery,
) -> None:
    asked = trio.Event()

    async def approver(request: PermissionRequest, suggested: str | None) -> str | None:
        asked.set()
        await trio.sleep_forever()  # nobody answers: only cancel can end this
        raise AssertionError("unreachable")

    client, agent = await connect(nursery, ClientOptions(approver=approver))
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            stop: list[str] = []

            async def run() -> None:
                stop.append(await client.prompt("s1", [TextContent("rm -rf")], lambda u: None))

            inner.start_soon(run)
            prompt = await agent.receive_method("session/prompt")
            await agent.send(
                {
                    "id": "perm-1",
                    "method": "session/request_permission",
                    "params": {
                        "sessionId": "s1",
                        "toolCall": {"toolCallId": "t1", "kind": "execute"},
                        "options": PERMISSION_OPTIONS,
                    },
                }
            )
            await asked.wait()
            await client.cancel("s1")  # while the prompt streams
            got = [await agent.receive(), await agent.receive()]
            by_kind = {m.get("method", "answer"): m for m in got}
            assert by_kind["session/cancel"]["params"] == {"sessionId": "s1"}
            assert by_kind["answer"]["id"] == "perm-1"
            assert by_kind["answer"]["result"] == {"outcome": {"outcome": "cancelled"}}
            # A permission request arriving after the cancel is answered cancelled too.
            late = await request_from_agent(
                agent,
                "session/request_permission",
                {
                    "sessionId": "s1",
                    "toolCall": {"toolCallId": "t2"},
                    "options": PERMISSION_OPTIONS,
                },
            )
            assert late["result"] == {"outcome": {"outcome": "cancelled"}}
            await agent.respond(prompt, {"stopReason": "cancelled"})
    assert stop == ["cancelled"]


async def test_unsupported_agent_requests_answer_method_not_found_and_turn_goes_on(
    nursery: trio.Nursery,
) -> None:
    client, agent = await connect(nursery)
    seen: list[SessionUpdate] = []
    with trio.fail_after(5):
        async with prompting(client, agent, seen):
            codes = []
            for method in (
                "terminal/create",
                "elicitation/create",
                "_vendor/thing",
                "fs/read_text_file",
            ):
                answer = await request_from_agent(agent, method, {"sessionId": "s1", "path": "x"})
                codes.append(answer["error"]["code"])
            await agent.update("s1", chunk("still here"))
    assert codes == [-32601] * 4
    assert [text(u) for u in seen] == ["still here"]


async def test_lenient_updates_reach_the_prompt(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    seen: list[SessionUpdate] = []
    with trio.fail_after(5):
        async with prompting(client, agent, seen):
            await agent.update("s1", {"sessionUpdate": "usage_update", "used": None, "size": 9})
            await agent.update("s1", {"sessionUpdate": "shiny_new_kind", "x": 1})
            await agent.update(
                "s1",
                {
                    "sessionUpdate": "tool_call",
                    "toolCallId": "t1",
                    "title": None,
                    "kind": "execute",
                    "status": "pending",
                    "extra": {"ignored": True},
                },
            )
    assert seen[0] == UsageUpdate(used=None, size=9)
    assert isinstance(seen[1], UnknownUpdate) and seen[1].kind == "shiny_new_kind"
    assert isinstance(seen[2], ToolCallStart) and seen[2].tool_call_id == "t1"
    assert client.session("s1").usage == UsageUpdate(used=None, size=9)


async def test_late_chunks_after_the_response_reach_a_watcher(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    seen: list[str] = []
    late_seen = trio.Event()

    def on_late(update: SessionUpdate) -> None:
        seen.append("late:" + text(update))
        late_seen.set()

    with trio.fail_after(5):
        with client.watch("s1", on_late):
            async with trio.open_nursery() as inner:
                inner.start_soon(
                    client.prompt, "s1", [TextContent("hi")], lambda u: seen.append(text(u))
                )
                prompt = await agent.receive_method("session/prompt")
                await agent.update("s1", chunk("a"))
                await agent.respond(prompt, {"stopReason": "end_turn"})
            await agent.update("s1", chunk("b"))
            await late_seen.wait()
    assert seen == ["a", "late:b"]


async def test_session_setup_and_config_options_are_tracked(nursery: trio.Nursery) -> None:
    client, agent = await connect(nursery)
    options = [
        {
            "id": "model",
            "name": "Model",
            "type": "select",
            "currentValue": "fast",
            "options": [{"value": "fast", "name": "Fast"}, {"value": "deep", "name": "Deep"}],
        }
    ]
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(client.new_session, "/tmp")
            request = await agent.receive_method("session/new")
            await agent.respond(
                request,
                {
                    "sessionId": "s9",
                    "configOptions": options,
                    "modes": {
                        "currentModeId": "ask",
                        "availableModes": [{"id": "ask", "name": "Ask"}],
                    },
                },
            )
        async with trio.open_nursery() as inner:
            inner.start_soon(client.set_config_option, "s9", "model", "deep")
            request = await agent.receive_method("session/set_config_option")
            assert request["params"] == {"sessionId": "s9", "configId": "model", "value": "deep"}
            options[0]["currentValue"] = "deep"
            await agent.update(
                "s9",
                {
                    "sessionUpdate": "available_commands_update",
                    "availableCommands": [{"name": "review", "input": None}],
                },
            )
            await agent.respond(request, {"configOptions": options})
    state = client.session("s9")
    assert state.current_mode_id == "ask"
    assert [c.name for c in state.available_commands] == ["review"]
    assert state.unrouted_count == 1  # outside any prompt and nobody watching
    assert [(o.id, o.current_value) for o in state.config_options] == [("model", "deep")]
    assert [v.value for v in state.config_options[0].options] == ["fast", "deep"]


async def test_fs_is_confined_to_the_working_directory(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    root = tmp_path / "work"
    root.mkdir()
    (root / "notes.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "dir-escape").symlink_to(tmp_path)
    _, agent = await connect(nursery, ClientOptions(cwd=str(root), fs_read=True, fs_write=True))

    async def call(method: str, **params: Any) -> dict[str, Any]:
        return await request_from_agent(agent, method, {"sessionId": "s1", **params})

    with trio.fail_after(10):
        ok = await call("fs/read_text_file", path=str(root / "notes.txt"), line=2, limit=1)
        assert ok["result"] == {"content": "two\n"}
        for bad in (
            "../secret.txt",
            str(tmp_path / "secret.txt"),
            "escape",
            "dir-escape/secret.txt",
        ):
            answer = await call("fs/read_text_file", path=bad)
            assert answer["error"]["code"] == -32602, bad
            assert "outside the working directory" in answer["error"]["message"]
        answer = await call("fs/write_text_file", path="escape", content="pwned")
        assert answer["error"]["code"] == -32602
        answer = await call("fs/write_text_file", path=str(root / "sub/new.txt"), content="hi")
        assert answer["result"] == {}
        missing = await call("fs/read_text_file", path="nope.txt")
        assert missing["error"]["code"] == -32002
    assert (tmp_path / "secret.txt").read_text() == "secret"
    assert (root / "sub/new.txt").read_text() == "hi"


async def test_disabled_fs_answers_method_not_found(nursery: trio.Nursery, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    _, agent = await connect(nursery, ClientOptions(cwd=str(tmp_path)))
    with trio.fail_after(5):
        read = await request_from_agent(
            agent, "fs/read_text_file", {"sessionId": "s1", "path": str(tmp_path / "a.txt")}
        )
        write = await request_from_agent(
            agent, "fs/write_text_file", {"sessionId": "s1", "path": "b.txt", "content": "x"}
        )
    assert read["error"]["code"] == write["error"]["code"] == -32601
    assert "fs_read = false" in read["error"]["message"]
    assert not (tmp_path / "b.txt").exists()


async def test_agent_exit_fails_a_running_prompt_with_the_stderr_tail(
    nursery: trio.Nursery,
) -> None:
    client, agent = await connect(nursery)
    errors: list[PeerClosed] = []

    async def run() -> None:
        try:
            await client.prompt("s1", [TextContent("hi")], lambda u: None)
        except PeerClosed as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(run)
            await agent.receive_method("session/prompt")
            await agent.close()
    assert len(errors) == 1 and "agent stderr tail" in str(errors[0])
