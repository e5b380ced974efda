"""Driving a real agent process through the broker's own supervisor and ACP client.

:func:`running_agent` spawns the agent with :func:`supervisor.process.run_child`
(exact environment, own process group), connects a
:class:`broker.acp.client.AcpClient` to its stdin/stdout and runs the
client's reader; leaving the block cancels both, which stops the process
group (shielded, bounded by the supervisor's stop grace).

:class:`Turn` collects one prompt's updates; :class:`Approvals` is an
approver that records each permission request and answers with the choice
the client's policy made (or holds the request until the client cancels it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from broker.acp.client import AcpClient, ClientOptions
from broker.acp.schema import (
    AgentMessageChunk,
    AgentThoughtChunk,
    ContentBlock,
    PermissionRequest,
    SessionUpdate,
    TextContent,
    ToolCall,
    ToolCallStart,
    ToolCallUpdate,
    UserMessageChunk,
)
from supervisor.process import Child, ChildSpec, ExitStatus, run_child

STOP_GRACE_SECS = 5.0


def exact_env(**extra: str) -> dict[str, str]:
    """PATH from this environment plus ``extra``; nothing else is passed on."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


def texts(
    updates: Sequence[SessionUpdate],
    kind: type[AgentMessageChunk | AgentThoughtChunk | UserMessageChunk],
) -> list[str]:
    """The text of each update of ``kind`` (message chunks), in order."""
    return [
        u.content.text
        for u in updates
        if isinstance(u, kind) and isinstance(u.content, TextContent)
    ]


@attrs.define(eq=False)
class Turn:
    """The updates of one prompt; ``first_text`` is set at the first non-empty text chunk."""

    updates: list[SessionUpdate] = attrs.field(factory=list)
    first_text: trio.Event = attrs.field(factory=trio.Event)

    def on_update(self, update: SessionUpdate) -> None:
        self.updates.append(update)
        if isinstance(update, AgentMessageChunk) and texts([update], AgentMessageChunk) != [""]:
            self.first_text.set()

    @property
    def chunks(self) -> list[str]:
        return texts(self.updates, AgentMessageChunk)

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def tool_calls(self) -> list[ToolCall]:
        """``tool_call`` and ``tool_call_update`` updates, in order."""
        return [u for u in self.updates if isinstance(u, (ToolCallStart, ToolCallUpdate))]


@attrs.define(eq=False)
class Approvals:
    """An approver for :class:`ClientOptions` that records what it is asked.

    It answers with the policy's choice unless ``hold`` is set: then it waits
    until the client cancels it (``AcpClient.cancel`` does that).
    """

    hold: bool = False
    asked: list[tuple[PermissionRequest, str | None]] = attrs.field(factory=list)
    asked_event: trio.Event = attrs.field(factory=trio.Event)

    async def __call__(self, request: PermissionRequest, choice: str | None) -> str | None:
        self.asked.append((request, choice))
        self.asked_event.set()
        if self.hold:
            await trio.sleep_forever()
        return choice


@attrs.frozen
class RunningAgent:
    client: AcpClient
    child: Child

    async def finish(self) -> ExitStatus:
        """Close the agent's stdin and wait for it to exit by itself (bounded by the caller)."""
        await self.child.close_stdin()
        return await self.child.wait()


@asynccontextmanager
async def running_agent(spec: ChildSpec, options: ClientOptions) -> AsyncIterator[RunningAgent]:
    """Run ``spec`` with an :class:`AcpClient` attached; stop both on exit."""
    async with trio.open_nursery() as nursery:
        child: Child = await nursery.start(
            functools.partial(run_child, spec, stop_grace=STOP_GRACE_SECS)
        )
        client = AcpClient(child.send, options)
        nursery.start_soon(client.serve, child.stdout_lines(), child.stderr_tail)
        try:
            yield RunningAgent(client, child)
        finally:
            nursery.cancel_scope.cancel()


async def open_session(client: AcpClient, cwd: str) -> str:
    """``initialize`` then ``session/new``; returns the session id. Unbounded: wrap it."""
    await client.initialize()
    return (await client.new_session(cwd)).session_id


async def prompt_and_cancel(
    client: AcpClient, session_id: str, blocks: list[ContentBlock], turn: Turn, when: trio.Event
) -> str:
    """Run a prompt, send ``session/cancel`` once ``when`` is set, return the stop reason.

    Unbounded: wrap it in ``trio.fail_after``.
    """
    stop = ""

    async def run_prompt() -> None:
        nonlocal stop
        stop = await client.prompt(session_id, blocks, turn.on_update)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_prompt)
        await when.wait()
        await client.cancel(session_id)
    return stop
