"""The ACP client driving the real fake agent process under the supervisor."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from broker.acp.client import AcpClient, ClientOptions
from broker.acp.jsonrpc import PeerClosed
from broker.acp.policy import PermissionPolicy
from broker.acp.schema import (
    AgentMessageChunk,
    PermissionRequest,
    SessionUpdate,
    TextContent,
    ToolCallStart,
    ToolCallUpdate,
    UserMessageChunk,
)
from supervisor.process import ChildSpec, run_child

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


def reply_text(updates: list[SessionUpdate]) -> str:
    return "".join(
        u.content.text
        for u in updates
        if isinstance(u, AgentMessageChunk) and isinstance(u.content, TextContent)
    )


@asynccontextmanager
async def fake_agent(
    tmp_path: Path, options: ClientOptions | None = None, max_line_bytes: int = 8 * 1024 * 1024
) -> AsyncIterator[AcpClient]:
    """A fake agent process (state under ``tmp_path``) and an initialized
    client serving its stdout. Leaving stops the process."""
    spec = ChildSpec(
        argv=(
            sys.executable,
            "-m",
            "broker.testing.fake_agent",
            "--state-dir",
            str(tmp_path / "agent-state"),
        ),
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "PYTHONPATH": PROJECT_ROOT,
            "LANG": "C.UTF-8",
        },
        cwd=str(tmp_path),
        name="fake-agent",
        max_line_bytes=max_line_bytes,
    )
    async with trio.open_nursery() as nursery:
        child = await nursery.start(
            lambda task_status: run_child(spec, stop_grace=2, task_status=task_status)
        )
        client = AcpClient(child.send, options or ClientOptions(cwd=str(tmp_path)))
        nursery.start_soon(client.serve, child.stdout_lines(), child.stderr_tail)
        with trio.fail_after(30):
            await client.initialize()
        yield client
        nursery.cancel_scope.cancel()


async def test_prompt_streams_the_reply_of_a_real_agent_process(tmp_path: Path) -> None:
    async with fake_agent(tmp_path) as client:
        seen: list[SessionUpdate] = []
        with trio.fail_after(30):
            setup = await client.new_session(str(tmp_path))
            stop = await client.prompt(
                setup.session_id,
                [TextContent("@tool Reading files 0.05 read\n@reply hello from the agent")],
                seen.append,
            )
    assert stop == "end_turn"
    assert reply_text(seen) == "hello from the agent"
    assert any(isinstance(u, ToolCallStart) and u.kind == "read" for u in seen)
    assert client.agent_capabilities.load_session


async def test_cancel_answers_a_pending_permission_of_a_real_agent(tmp_path: Path) -> None:
    asked = trio.Event()

    async def approver(request: PermissionRequest, suggested: str | None) -> str | None:
        asked.set()
        await trio.sleep_forever()  # nobody answers; the cancel must
        raise AssertionError("unreachable")

    options = ClientOptions(cwd=str(tmp_path), approver=approver)
    async with fake_agent(tmp_path, options) as client:
        seen: list[SessionUpdate] = []
        stop: list[str] = []
        with trio.fail_after(30):
            setup = await client.new_session(str(tmp_path))

            async def run() -> None:
                stop.append(
                    await client.prompt(
                        setup.session_id,
                        [TextContent("@permission execute rm -rf build")],
                        seen.append,
                    )
                )

            async with trio.open_nursery() as inner:
                inner.start_soon(run)
                await asked.wait()
                await client.cancel(setup.session_id)
    assert stop == ["cancelled"]
    assert any(isinstance(u, ToolCallStart) and u.kind == "execute" for u in seen)
    assert not any(isinstance(u, ToolCallUpdate) and u.status == "completed" for u in seen)


async def test_permission_policy_decides_for_a_real_agent(tmp_path: Path) -> None:
    options = ClientOptions(
        cwd=str(tmp_path), permissions=PermissionPolicy(by_kind={"execute": "reject"})
    )
    async with fake_agent(tmp_path, options) as client:
        seen: list[SessionUpdate] = []
        with trio.fail_after(30):
            setup = await client.new_session(str(tmp_path))
            stop = await client.prompt(
                setup.session_id,
                [
                    TextContent(
                        "@permission edit notes.txt\n@permission execute make clean\n@reply done"
                    )
                ],
                seen.append,
            )
    statuses = [u.status for u in seen if isinstance(u, ToolCallUpdate)]
    assert stop == "end_turn" and statuses == ["completed", "failed"]
    assert "selected allow_once" in reply_text(seen) and "selected reject_once" in reply_text(seen)


async def test_load_session_in_a_new_process_replays_history_apart(tmp_path: Path) -> None:
    async with fake_agent(tmp_path) as client:
        with trio.fail_after(30):
            session_id = (await client.new_session(str(tmp_path))).session_id
            await client.prompt(session_id, [TextContent("@reply first answer")], lambda u: None)
    async with fake_agent(tmp_path) as client:
        seen: list[SessionUpdate] = []
        with trio.fail_after(30):
            loaded = await client.load_session(session_id, str(tmp_path))
            await client.prompt(session_id, [TextContent("@reply second answer")], seen.append)
    assert any(isinstance(u, UserMessageChunk) for u in loaded.replayed)
    assert "first answer" in reply_text(list(loaded.replayed))
    assert reply_text(seen) == "second answer"


async def test_agent_crash_fails_the_prompt_with_its_stderr(tmp_path: Path) -> None:
    async with fake_agent(tmp_path) as client:
        with trio.fail_after(30):
            session_id = (await client.new_session(str(tmp_path))).session_id
            try:
                await client.prompt(session_id, [TextContent("@crash 3")], lambda u: None)
            except PeerClosed as exc:
                error = exc
            else:
                raise AssertionError("prompt returned although the agent crashed")
    assert "agent exited" in str(error) and "simulated crash" in error.detail


async def test_overlong_line_fails_the_prompt_at_once(tmp_path: Path) -> None:
    async with fake_agent(tmp_path, max_line_bytes=64 * 1024) as client:
        with trio.fail_after(30):
            session_id = (await client.new_session(str(tmp_path))).session_id
            try:
                await client.prompt(
                    session_id, [TextContent("@longline 200000\n@hang")], lambda u: None
                )
            except PeerClosed as exc:
                error = exc
            else:
                raise AssertionError("prompt returned although stdout was unusable")
    assert "LineTooLong" in error.reason
