"""The broker's real parts wired together for router tests, and a protocol client.

:func:`running_broker` starts a pool of fake agents, a :class:`Router` and the
WebSocket server on 127.0.0.1:0. :class:`Client` is a chat client on a real
WebSocket connection that records every frame with its receive time and
answers ``request_id`` frames with message ids of its own (or not).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio_websocket

from broker.chat.router import Router
from broker.config import BrokerConfig
from broker.frontends.base import ReplyChannel
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.frontends.wire import (
    Command,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    encode_event,
    encode_response,
    parse_reply,
)
from broker.sessions.pool import Pool, open_pool
from broker.testing.fake_gateway import make_event


class TrackedRouter:
    """The real router, plus a record of which events' tasks have ended, so a
    test can tell "no reply was sent" from "no reply yet"."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.ended: set[str] = set()
        self._changed = trio.Event()

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        try:
            await self.router.handle_event(event, channel)
        finally:
            self.ended.add(event.event_id)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_ended(self, event_id: str) -> None:
        while event_id not in self.ended:
            await self._changed.wait()


@attrs.define
class Stack:
    pool: Pool
    router: Router
    tracked: TrackedRouter
    server: WebSocketServer


@asynccontextmanager
async def running_broker(
    config: BrokerConfig, *, response_timeout: float = 5.0
) -> AsyncIterator[Stack]:
    """Pool, router and server; on leaving, the pool closes first (turns end
    with their replies), then the server stops.

    The pool runs in a task of its own, as in the service, so a test may close
    it (``stack.pool.aclose()``) and go on talking to the server."""
    async with trio.open_nursery() as nursery:
        pool: Pool = await nursery.start(_run_pool, config)
        router = Router(pool, config, response_timeout=response_timeout)
        tracked = TrackedRouter(router)
        server: WebSocketServer = await nursery.start(
            functools.partial(serve_websocket, config.server, tracked)
        )
        yield Stack(pool, router, tracked, server)
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def _run_pool(config: BrokerConfig, *, task_status: trio.TaskStatus[Pool]) -> None:
    async with open_pool(config) as pool:
        task_status.started(pool)
        await trio.sleep_forever()


@attrs.frozen
class Frame:
    at: float
    reply: OutboundReply


class Client:
    """A chat on one WebSocket connection; see the module docstring.

    ``answer_requests``: respond to request_ids with ``cli-m-N`` message ids
    (True) or leave them unanswered (False).
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection, *, answer_requests: bool) -> None:
        self.ws = ws
        self.answer_requests = answer_requests
        self.frames: list[Frame] = []
        self.message_event: dict[str, str] = {}  # message id we issued -> event id
        self.request_message: dict[str, str] = {}  # request id -> the message id we issued
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                text = await self.ws.get_message()
                reply = parse_reply(text)
                self.frames.append(Frame(trio.current_time(), reply))
                if reply.request_id and self.answer_requests:
                    message_id = f"cli-m-{next(self._ids)}"
                    self.message_event[message_id] = reply.reply_to
                    self.request_message[reply.request_id] = message_id
                    response = GatewayResponse(reply.request_id, True, message_id=message_id)
                    await self.ws.send_message(encode_response(response))
                self._changed.set()
                self._changed = trio.Event()
        except trio_websocket.ConnectionClosed:
            pass

    async def send(self, text: str = "hello", **fields: Any) -> InboundEvent:
        fields.setdefault("platform", "cli")
        event = make_event(text, **fields)
        await self.ws.send_message(encode_event(event))
        return event

    async def send_event(self, event: InboundEvent) -> None:
        await self.ws.send_message(encode_event(event))

    def for_event(self, event_id: str) -> list[Frame]:
        """Frames that answer ``event_id``: replies to it and edits of its messages."""
        return [
            f
            for f in self.frames
            if f.reply.reply_to == event_id or self.message_event.get(f.reply.reply_to) == event_id
        ]

    def texts(self, event_id: str) -> list[str]:
        return [f.reply.text for f in self.for_event(event_id) if f.reply.command is None]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()

    async def reply_to(self, event: InboundEvent, count: int = 1) -> list[str]:
        """Wait for ``count`` plain replies to ``event``; their texts."""
        await self.wait_for(lambda: len(self.texts(event.event_id)) >= count)
        return self.texts(event.event_id)

    async def settle(self, stack: Stack, event: InboundEvent) -> list[Frame]:
        """Every frame for ``event``, once its task has ended: a probe sent
        after that is answered after all of them (frames stay in order). The
        probe is ``/help`` from user ``probe`` in channel ``probe`` (allowlists
        must admit them)."""
        await stack.tracked.wait_ended(event.event_id)
        probe = await self.send("/help", channel_id="probe", sender_id="probe")
        await self.reply_to(probe)
        return self.for_event(event.event_id)

    async def ask(self, text: str, **fields: Any) -> str:
        """Send ``text`` and return the one plain reply's text."""
        event = await self.send(text, **fields)
        return (await self.reply_to(event))[0]


@asynccontextmanager
async def connect(
    stack: Stack, *, answer_requests: bool = True, url: str | None = None
) -> AsyncIterator[Client]:
    async with (
        trio_websocket.open_websocket_url(url or stack.server.url) as ws,
        trio.open_nursery() as nursery,
    ):
        client = Client(ws, answer_requests=answer_requests)
        nursery.start_soon(client.run)
        yield client
        nursery.cancel_scope.cancel()


def edits(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.reply.command is Command.EDIT_MESSAGE]
