"""Running one prompt turn of the fake agent: the actions of a :class:`Script`, then the reply.

:func:`run_turn` runs inside the turn's cancel scope; session/cancel cancels that scope (unless a
``@hang-hard`` set :attr:`TurnControl.ignore_cancel`), so every await here is a cancellation point
and the turn ends promptly with ``cancelled``. Chunks the script keeps for ``@late`` are returned,
not sent: the caller sends them after the prompt response.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.testing import fake_agent_script as fs
from broker.testing.fake_agent_store import SessionRecord
from broker.testing.fake_agent_wire import Wire, encode, log

FLOOD_BATCH = 8192
_PERMISSION_OPTIONS = [
    {"optionId": "allow_once", "name": "Allow once", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow", "kind": "allow_always"},
    {"optionId": "reject_once", "name": "Reject", "kind": "reject_once"},
    {"optionId": "reject_always", "name": "Always reject", "kind": "reject_always"},
]


@attrs.define
class TurnControl:
    """The running turn of a session, as seen by session/cancel."""

    scope: trio.CancelScope
    ignore_cancel: bool = False

    def cancel(self) -> bool:
        """Cancel the turn unless a ``@hang-hard`` ignores it; True if cancelled."""
        if self.ignore_cancel:
            return False
        self.scope.cancel()
        return True


@attrs.define
class Turn:
    """Everything one turn needs; ``sent`` collects the agent text for the history."""

    wire: Wire
    record: SessionRecord
    control: TurnControl
    images: int = 0
    timings: Path | None = None  # --permission-timings
    message_id: str | None = None  # ACP messageId on this turn's agent_message_chunks
    mcp_servers: tuple[str, ...] = ()  # the names session/new or session/load gave
    sent: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    _tool_ids: int = 0

    def next_tool_id(self) -> str:
        self._tool_ids += 1
        return f"call_{self._tool_ids}"

    async def update(self, session_update: str, /, **fields: Any) -> None:
        """Send a session/update notification ``{sessionUpdate: session_update, **fields}``."""
        update = {"sessionUpdate": session_update, **fields}
        await self.wire.notify(
            "session/update", {"sessionId": self.record.session_id, "update": update}
        )

    async def say(self, text: str) -> None:
        self.sent.append(text)
        await self.chunk(text)

    async def chunk(self, text: str) -> None:
        """One agent_message_chunk, with the turn's ``messageId`` when it has one."""
        fields: dict[str, Any] = {"content": {"type": "text", "text": text}}
        if self.message_id is not None:
            fields["messageId"] = self.message_id
        await self.update("agent_message_chunk", **fields)


def message_chunk_line(session_id: str, text: str) -> bytes:
    """The exact JSON line of an agent_message_chunk (shared by @flood and @longline)."""
    update = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    return encode(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session_id, "update": update},
        }
    )


async def _flood(turn: Turn, count: int) -> None:
    """``count`` chunks, built by string formatting and written in batches of whole lines."""
    head, tail = message_chunk_line(turn.record.session_id, "#").split(b"#", 1)
    for start in range(0, count, FLOOD_BATCH):
        numbers = range(start, min(count, start + FLOOD_BATCH))
        await turn.wire.write(b"".join(b"%b%d %b" % (head, i, tail) for i in numbers))
    turn.sent.append("".join(f"{i} " for i in range(count)))


async def _longline(turn: Turn, size: int) -> None:
    empty = message_chunk_line(turn.record.session_id, "")
    room = size - (len(empty) - 1)
    if room < 0:
        raise fs.ScriptError(f"@longline: at least {len(empty) - 1} bytes (an empty chunk)")
    await turn.wire.write(message_chunk_line(turn.record.session_id, "x" * room))
    turn.sent.append("x" * room)


async def _tool(turn: Turn, tool: fs.Tool) -> None:
    call_id = turn.next_tool_id()
    await turn.update(
        "tool_call",
        toolCallId=call_id,
        title=tool.title,
        kind=tool.kind,
        status="pending",
        content=[],
        locations=[],
        rawInput={"title": tool.title},
    )
    await turn.update("tool_call_update", toolCallId=call_id, status="in_progress")
    await trio.sleep(tool.secs)
    result = "simulated failure" if tool.fail else f"{tool.title}: done"
    await turn.update(
        "tool_call_update",
        toolCallId=call_id,
        status="failed" if tool.fail else "completed",
        content=[{"type": "content", "content": {"type": "text", "text": result}}],
    )


async def _permission(turn: Turn, ask: fs.Permission) -> None:
    """Ask the client (``ask.count`` requests at once); run each tool whose answer selects an
    allow option, fail the others."""
    if ask.count == 1:
        await _ask_one(turn, ask, ask.title)
        return
    async with trio.open_nursery() as nursery:
        for n in range(1, ask.count + 1):
            nursery.start_soon(_ask_one, turn, ask, f"{ask.title} {n}")


def _options(kind: str) -> list[dict[str, str]]:
    if kind == "none":
        return []
    if kind == "duplicate":
        return [{**_PERMISSION_OPTIONS[0]}, {**_PERMISSION_OPTIONS[2], "optionId": "allow_once"}]
    return _PERMISSION_OPTIONS


async def _ask_one(turn: Turn, ask: fs.Permission, title: str) -> None:
    call_id = turn.next_tool_id()
    raw_input: dict[str, str] = {"title": title}
    if ask.kind == "execute":
        raw_input["command"] = title
    tool_call = {
        "toolCallId": call_id,
        "title": title,
        "kind": ask.kind,
        "status": "pending",
        "rawInput": raw_input,
    }
    await turn.update("tool_call", **tool_call, content=[], locations=[])
    timing: list[float] = []
    answer = await turn.wire.request(
        "session/request_permission",
        {
            "sessionId": turn.record.session_id,
            "toolCall": tool_call,
            "options": _options(ask.options),
        },
        timing=timing,
    )
    if turn.timings is not None:
        with turn.timings.open("a") as out:
            out.write(json.dumps({"sent": timing[0], "received": timing[1]}) + "\n")
    outcome = (answer or {}).get("outcome") or {}
    option = outcome.get("optionId") if outcome.get("outcome") == "selected" else None
    if option is None:
        turn.notes.append(f"Permission for “{title}” was cancelled.")
    else:
        turn.notes.append(f"Permission for “{title}”: selected {option}.")
    allowed = isinstance(option, str) and option.startswith("allow")
    await turn.update(
        "tool_call_update", toolCallId=call_id, status="completed" if allowed else "failed"
    )


def _grandchild(turn: Turn) -> None:
    """A ``sleep`` in our process group that inherits stdout/stderr, like a started dev server."""
    proc = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
    log(f"started grandchild pid {proc.pid}")
    turn.notes.append(f"Started a grandchild process: pid {proc.pid}.")


def _append_line(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as file:
        file.write(text + "\n")


def _crash(code: int) -> None:
    log(f"fatal: simulated crash (exit code {code})")
    os._exit(code)


async def _hang(turn: Turn, hard: bool) -> None:
    log("hanging" + (" (ignoring session/cancel)" if hard else ""))
    turn.control.ignore_cancel = hard
    await trio.sleep_forever()


async def run_action(turn: Turn, action: fs.Action) -> None:
    """Perform one action; may raise :class:`ScriptError` (bad @longline size) or RpcError."""
    match action:
        case fs.Say(text):
            await turn.say(text)
        case fs.Delay(secs) | fs.SilentTool(secs):
            await trio.sleep(secs)
        case fs.Tool():
            await _tool(turn, action)
        case fs.Plan(entries):
            await turn.update(
                "plan",
                entries=[
                    {"content": e, "priority": "medium", "status": "pending"} for e in entries
                ],
            )
        case fs.Crash(code):
            _crash(code)
        case fs.Hang(hard):
            await _hang(turn, hard)
        case fs.Flood(count):
            await _flood(turn, count)
        case fs.Malformed():
            await turn.wire.write(b"this line is not JSON {{{\n")
        case fs.LongLine(size):
            await _longline(turn, size)
        case fs.Permission():
            await _permission(turn, action)
        case fs.Grandchild():
            _grandchild(turn)
        case fs.WhereAmI():
            turn.notes.append(f"cwd: {turn.record.cwd}")
            turn.notes.append(f"process cwd: {os.getcwd()}")
            turn.notes.append(f"mcp servers: {', '.join(turn.mcp_servers) or '(none)'}")
        case fs.Write(path, text):
            await trio.to_thread.run_sync(_append_line, os.path.join(turn.record.cwd, path), text)
            turn.notes.append(f"Wrote {path}.")
        case fs.Stderr(lines):
            for i in range(1, lines + 1):
                log(f"noise {i}/{lines}: indexing workspace, nothing to worry about")
        case fs.Thought(text):
            await turn.update("agent_thought_chunk", content={"type": "text", "text": text})
        case fs.Usage():
            await turn.update("usage_update", used=None, size=200000)
        case fs.Ext(text):
            await turn.wire.notify(
                "_fake/status", {"sessionId": turn.record.session_id, "status": text}
            )


def echo(turn: Turn, message: str) -> str:
    """The demo's friendly answer to ``message``."""
    record = turn.record
    said = f"You said: “{message}”." if message else "You sent no text."
    if turn.images:
        said += f" I also received {turn.images} image{'s' if turn.images > 1 else ''}."
    return (
        f"Hello! {said} I am a scriptable fake agent (model {record.model}, mode {record.mode}, "
        f"turn {record.turns() + 1} of this session). Start a line with @ to script me, "
        f"e.g. “@tool Build 2” or “@chunks 5” (see docs/fake-agent.md)."
    )


async def run_turn(turn: Turn, script: fs.Script) -> list[str]:
    """Run the actions, stream the reply; return the chunks kept back for ``@late``.

    Cancellation (session/cancel) propagates out of here; ``turn.sent`` then holds what was sent.
    """
    for action in script.actions:
        await run_action(turn, action)
    if script.empty or script.error is not None:
        return []
    text = script.reply if script.reply is not None else echo(turn, script.message)
    text = "\n".join([text, *turn.notes])
    chunks = fs.split_text(text, script.chunks)
    late: list[str] = []
    if script.late_ms is not None:
        keep = min(script.late_chunks, len(chunks))
        chunks, late = chunks[: len(chunks) - keep], chunks[len(chunks) - keep :]
    for i, chunk in enumerate(chunks):
        if i and script.chunk_delay:
            await trio.sleep(script.chunk_delay)
        await turn.say(chunk)
    return late
