"""The benchmark's two clients: a chat client on the broker's WebSocket, and a
direct ACP client on one fake agent (the baseline).

:class:`ChatClient` speaks protocol v1 as a gateway would (docs/protocol.md):
it sends events and follows every event's reply: plain replies, streamed
messages (it answers each ``request_id`` with a fresh ``message_id``) and
their ``edit_message`` frames. What the chat shows for an event is
:attr:`Exchange.text`, the concatenation of its messages' current texts. A
scenario says when an exchange is *done* (``done_when``, a predicate over the
exchange, e.g. :func:`text_is` the expected reply); the client records when
that first became true, when the first frame came, when the text first
contained a given marker, and every frame that came after it was done (a
duplicate).

:func:`open_direct` is the baseline without the broker: the same agent
spawned with :func:`supervisor.process.run_child` and driven with
:class:`broker.acp.AcpClient` in this process.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

from bench.harness import wall
from broker.acp.client import AcpClient, ClientOptions
from broker.acp.schema import AgentMessageChunk, SessionUpdate, TextContent
from supervisor.process import ChildSpec, run_child

PLATFORM = "bench"
MAX_FRAME = 64 * 1024 * 1024


def never(_: Exchange) -> bool:
    return False


@attrs.define(eq=False)
class Exchange:
    """One event sent and what came back for it."""

    event_id: str
    thread: str
    text_sent: str
    sent_at: float
    done_when: Callable[[Exchange], bool] = never
    first_marker: str | None = None
    messages: list[str] = attrs.field(factory=list)
    length: int = 0  # len(self.text), kept up to date so checks need not join the messages
    plain_frames: int = 0
    requests: int = 0
    edits: int = 0
    frame_times: list[float] = attrs.field(factory=list)
    message_times: list[list[float]] = attrs.field(factory=list)  # per message: sent, edits
    first_frame_at: float | None = None
    first_marker_at: float | None = None
    done_at: float | None = None
    frames_after_done: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)
    changed: trio.Event = attrs.field(factory=trio.Event)  # set (and replaced) on every frame

    @property
    def text(self) -> str:
        return "".join(self.messages)

    def min_edit_gap(self) -> float | None:
        """The shortest time between two consecutive versions (sent, then edits) of
        any one message; None when no message was edited."""
        gaps = [b - a for times in self.message_times for a, b in itertools.pairwise(times)]
        return min(gaps) if gaps else None

    @property
    def latency(self) -> float | None:
        return None if self.done_at is None else self.done_at - self.sent_at

    @property
    def first_latency(self) -> float | None:
        return None if self.first_marker_at is None else self.first_marker_at - self.sent_at

    def record_frame(self, now: float) -> None:
        """A frame for this exchange arrived at ``now`` (after it was applied)."""
        self.frame_times.append(now)
        self.changed.set()
        self.changed = trio.Event()
        if self.first_frame_at is None:
            self.first_frame_at = now
        if self.done_at is not None:
            self.frames_after_done += 1
            return
        if (
            self.first_marker is not None
            and self.first_marker_at is None
            and self.first_marker in self.text
        ):
            self.first_marker_at = now
        if self.done_when(self):
            self.done_at = now
            self.done.set()


async def until(exchange: Exchange, condition: Callable[[Exchange], bool]) -> None:
    """Wait (unbounded: wrap it) until ``condition`` holds for ``exchange``."""
    while not condition(exchange):
        await exchange.changed.wait()


def text_is(expected: str) -> Callable[[Exchange], bool]:
    return lambda exchange: exchange.length == len(expected) and exchange.text == expected


def text_contains(marker: str) -> Callable[[Exchange], bool]:
    return lambda exchange: marker in exchange.text


def any_reply(exchange: Exchange) -> bool:
    return bool(exchange.messages)


class ChatClient:
    """One connection to ``/ws``; open it with :func:`open_chat`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.exchanges: dict[str, Exchange] = {}
        self._by_message: dict[str, tuple[Exchange, int]] = {}
        self._ids = itertools.count(1)
        self.unmatched: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.frames = 0
        self._send_lock = trio.Lock()

    async def send(
        self,
        thread: str,
        text: str,
        *,
        done_when: Callable[[Exchange], bool] = any_reply,
        first_marker: str | None = None,
    ) -> Exchange:
        """Send one message in ``thread``; returns its exchange at once."""
        event_id = f"{self.name}-e{next(self._ids)}"
        frame = {
            "schema": "openab.gateway.event.v1",
            "event_id": event_id,
            "timestamp": "2026-11-23T00:00:00Z",
            "platform": PLATFORM,
            "event_type": "message",
            "channel": {"id": thread, "type": "group", "thread_id": None},
            "sender": {"id": "u1", "name": "bench", "display_name": "Bench", "is_bot": False},
            "content": {"type": "text", "text": text},
            "mentions": [],
            "message_id": f"msg-{event_id}",
        }
        exchange = Exchange(event_id, thread, text, wall(), done_when, first_marker)
        self.exchanges[event_id] = exchange
        async with self._send_lock:
            exchange.sent_at = wall()
            await self.ws.send_message(json.dumps(frame))
        return exchange

    async def ask(self, thread: str, text: str, **kwargs: Any) -> Exchange:
        """Send and wait until the exchange is done. No deadline of its own: an
        exchange the caller's cancel scope cuts short stays in :attr:`exchanges`,
        not done (see :func:`ask_within`)."""
        exchange = await self.send(thread, text, **kwargs)
        await exchange.done.wait()
        return exchange

    async def read_frames(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                now = wall()
                self.frames += 1
                await self._on_frame(json.loads(message), now)
        except trio_websocket.ConnectionClosed:
            return

    async def _on_frame(self, frame: dict[str, Any], now: float) -> None:
        if frame.get("schema") != "openab.gateway.reply.v1":
            self.errors.append(frame)
            return
        command = frame.get("command")
        text = frame["content"]["text"]
        reply_to = frame["reply_to"]
        if command == "edit_message":
            found = self._by_message.get(reply_to)
            if found is None:
                self.unmatched.append(frame)
                return
            exchange, index = found
            exchange.length += len(text) - len(exchange.messages[index])
            exchange.messages[index] = text
            exchange.message_times[index].append(now)
            exchange.edits += 1
            exchange.record_frame(now)
            return
        if command is not None:
            return  # reactions and topics: not used by the scenarios
        exchange_or_none = self.exchanges.get(reply_to)
        if exchange_or_none is None:
            self.unmatched.append(frame)
            return
        exchange = exchange_or_none
        exchange.messages.append(text)
        exchange.length += len(text)
        exchange.message_times.append([now])
        request_id = frame.get("request_id")
        if request_id:
            exchange.requests += 1
            message_id = f"m-{exchange.event_id}-{len(exchange.messages)}"
            self._by_message[message_id] = (exchange, len(exchange.messages) - 1)
            response = {
                "schema": "openab.gateway.response.v1",
                "request_id": request_id,
                "success": True,
                "thread_id": None,
                "message_id": message_id,
                "error": None,
            }
            async with self._send_lock:  # answer first: the broker waits for it
                await self.ws.send_message(json.dumps(response))
            exchange.record_frame(now)
        else:
            exchange.plain_frames += 1
            exchange.record_frame(now)


async def ask_within(
    client: ChatClient, secs: float, thread: str, text: str, **kwargs: Any
) -> Exchange:
    """:meth:`ChatClient.ask` bounded by ``secs``: the exchange, done or not."""
    exchange = await client.send(thread, text, **kwargs)
    with trio.move_on_after(secs):
        await exchange.done.wait()
    return exchange


@asynccontextmanager
async def open_chat(url: str, name: str = "c") -> AsyncIterator[ChatClient]:
    """A connected :class:`ChatClient` whose reader runs for the block."""
    async with trio_websocket.open_websocket_url(url, max_message_size=MAX_FRAME) as ws:
        client = ChatClient(ws, name)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_frames)
            yield client
            nursery.cancel_scope.cancel()


# -- the baseline: ACP straight to the agent ----------------------------------------------


@attrs.frozen
class DirectTurn:
    first_chunk: float  # seconds from sending the prompt to the first chunk with the marker
    final: float  # seconds from sending the prompt to its response
    text: str


class DirectAgent:
    """One agent process and ACP session driven without the broker; see :func:`open_direct`."""

    def __init__(self, client: AcpClient, session_id: str, cwd: Path) -> None:
        self.client = client
        self.session_id = session_id
        self.cwd = cwd

    async def new_session(self) -> float:
        """Switch to a fresh ACP session (``session/new``); returns how long it took.
        Bounded by the caller's cancel scope, as is :meth:`turn`."""
        started = wall()
        setup = await self.client.new_session(str(self.cwd))
        self.session_id = setup.session_id
        return wall() - started

    async def turn(self, prompt: str, first_marker: str) -> DirectTurn:
        """Send ``prompt`` and time the first chunk holding ``first_marker`` and the response."""
        chunks: list[str] = []
        first: list[float] = []

        def on_update(update: SessionUpdate) -> None:
            if isinstance(update, AgentMessageChunk) and isinstance(update.content, TextContent):
                chunks.append(update.content.text)
                if not first and first_marker in "".join(chunks):
                    first.append(wall())

        started = wall()
        await self.client.prompt(self.session_id, [TextContent(prompt)], on_update)
        ended = wall()
        return DirectTurn(
            (first[0] if first else ended) - started, ended - started, "".join(chunks)
        )


@asynccontextmanager
async def open_direct(argv: Sequence[str], cwd: Path) -> AsyncIterator[DirectAgent]:
    """The agent ``argv`` spawned with the broker's supervisor and spoken to with
    the broker's ACP client in this process, with one new session: the baseline
    without the broker. The agent is stopped when the block ends."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    spec = ChildSpec(argv=tuple(argv), env=env, cwd=str(cwd), name="direct")
    async with trio.open_nursery() as nursery:
        child = await nursery.start(functools.partial(run_child, spec, stop_grace=2))
        client = AcpClient(child.send, ClientOptions(cwd=str(cwd)))
        nursery.start_soon(client.serve, child.stdout_lines(), child.stderr_tail)
        with trio.fail_after(30):
            await client.initialize()
            setup = await client.new_session(str(cwd))
        yield DirectAgent(client, setup.session_id, cwd)
        await child.close_stdin()  # the fake agent exits on EOF; the cancel below is a backstop
        with trio.move_on_after(5):
            await child.wait()
        nursery.cancel_scope.cancel()
