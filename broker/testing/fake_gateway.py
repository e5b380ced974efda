"""A fake openab gateway: a real WebSocket server the broker's gateway client dials.

It plays the chat side of protocol v1 for tests and benchmarks: it sends
events, answers ``request_id`` frames with responses (message ids ``m-1``,
``m-2``, ...), records every frame the broker sends and checks each one
against the protocol. It can drop the connection mid-turn and accept the
reconnect, refuse connections, and refuse, delay or ignore responses.

It speaks either dialect: by default a plain v1 gateway, which ignores the
broker's ``client_hello`` (recorded in :attr:`FakeGateway.client_hellos`);
given a ``hello`` (:func:`open_fake_gateway` ``hello=``), it answers the
``client_hello`` with it, and where a platform offers ``send_ack`` every
reply with a ``request_id`` gets a response with ``outcome``
(:attr:`FakeGateway.ack_outcome`: delivered, rejected or unknown).

Every frame that breaks the protocol is recorded in :attr:`FakeGateway.violations`
with the reason; :meth:`FakeGateway.assert_clean` fails a test on any.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import trio
import trio_websocket

from broker.frontends.wire import (
    CLIENT_HELLO_SCHEMA,
    ERROR_SCHEMA,
    Channel,
    Command,
    Content,
    GatewayHello,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    Sender,
    WireError,
    encode_event,
    encode_hello,
    encode_response,
    parse_reply,
)
from broker.pulse import Pulse

log = logging.getLogger(__name__)

_event_ids = itertools.count(1)


def make_event(
    text: str = "hello",
    *,
    event_id: str | None = None,
    platform: str = "telegram",
    channel_id: str = "1001",
    thread_id: str | None = None,
    message_id: str | None = None,
    sender_id: str = "42",
    is_bot: bool = False,
    mentions: tuple[str, ...] = (),
) -> InboundEvent:
    """A valid event; ids are fresh (``evt_N``, ``u-N``) unless given."""
    number = next(_event_ids)
    return InboundEvent(
        event_id=event_id or f"evt_{number}",
        timestamp="2026-11-23T08:00:00Z",
        platform=platform,
        channel=Channel(channel_id, "group", thread_id),
        sender=Sender(sender_id, "alice", "Alice", is_bot),
        content=Content("text", text),
        message_id=message_id or f"u-{number}",
        mentions=mentions,
    )


class ResponseMode(enum.Enum):
    ANSWER = "answer"  # success with a fresh message id
    REFUSE = "refuse"  # success: false with an error
    IGNORE = "ignore"  # never answer


@attrs.define
class Received:
    """One frame the broker sent, as text and (when valid) as a reply."""

    text: str
    reply: OutboundReply | None
    connection: int
    taken: bool = True  # False: its acknowledgement could not be sent (the chat never saw it)


class FakeGateway:
    """State and controls of a running fake gateway (see :func:`open_fake_gateway`)."""

    def __init__(self, token: str, hello: GatewayHello | None = None) -> None:
        self.token = token
        self.hello = hello
        self.ack_outcome = "delivered"
        self.client_hellos: list[dict[str, object]] = []
        self.port = 0
        self.response_mode = ResponseMode.ANSWER
        self.response_delay = 0.0
        self.refuse_connections = False
        self.received: list[Received] = []
        self.violations: list[str] = []
        self.connections = 0  # accepted so far
        self.refused = 0
        self._message_ids = itertools.count(1)
        self._issued: set[str] = set()  # platform message ids answered to requests
        self.issued_for: dict[str, str] = {}  # message id -> reply_to of the frame it answered
        self._taken_requests: set[str] = set()  # acknowledged request ids
        self.shown_again = 0  # acknowledged replies sent again, acknowledged and not shown
        self._event_ids: set[str] = set()  # of every event frame sent, even broken ones
        self._user_messages: set[str] = set()  # message ids of sent events
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._changed = Pulse()
        self._nursery: trio.Nursery | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.closed is None

    @property
    def replies(self) -> list[OutboundReply]:
        return [r.reply for r in self.received if r.reply is not None]

    def assert_clean(self) -> None:
        assert not self.violations, "protocol violations:\n" + "\n".join(self.violations)

    def _notify(self) -> None:
        self._changed.fire()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked after every change
        (a connection, a frame). Bound it with ``trio.fail_after``."""
        while not condition():
            await self._changed.wait()

    async def wait_connected(self, count: int = 1) -> None:
        """Wait until ``count`` connections were accepted so far and one is open."""
        await self.wait_for(lambda: self.connected and self.connections >= count)

    async def wait_reply(self, predicate: Callable[[OutboundReply], bool]) -> OutboundReply:
        """Wait for a reply matching ``predicate`` (received before or after the call)."""
        found: list[OutboundReply] = []

        def matched() -> bool:
            found[:] = [r for r in self.replies if predicate(r)]
            return bool(found)

        await self.wait_for(matched)
        return found[0]

    async def send_event(self, event: InboundEvent | None = None, **fields: object) -> InboundEvent:
        """Send ``event`` (or ``make_event(**fields)``) on the open connection."""
        event = event or make_event(**fields)  # type: ignore[arg-type]
        await self.send_raw(encode_event(event))
        return event

    async def send_raw(self, text: str) -> None:
        """Send any text frame; ids in it count as sent (replies may refer to them)."""
        if self._ws is None:
            raise RuntimeError("no broker is connected")
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if isinstance(frame, dict):
            if isinstance(frame.get("event_id"), str):
                self._event_ids.add(frame["event_id"])
            if isinstance(frame.get("message_id"), str):
                self._user_messages.add(frame["message_id"])
        await self._ws.send_message(text)

    async def drop(self) -> None:
        """Drop the current connection abruptly (no close handshake)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws._stream.aclose()  # an abrupt TCP close, like a crashed gateway
        self._notify()

    # --- serving -----------------------------------------------------------

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        if self.refuse_connections:
            self.refused += 1
            self._notify()
            await request.reject(503, body=b"refused by the test\n")
            return
        if self.token and f"token={self.token}" not in request.path:
            self.refused += 1
            self._notify()
            await request.reject(401, body=b"token required\n")
            return
        ws = await request.accept()
        self.connections += 1
        number = self.connections
        self._ws = ws
        self._notify()
        try:
            while True:
                try:
                    message = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                await self._on_frame(message, number)
        finally:
            if self._ws is ws:
                self._ws = None
            self._notify()

    async def _on_frame(self, message: str | bytes, connection: int) -> None:
        text = message if isinstance(message, str) else message.decode(errors="replace")
        reply = None
        try:
            schema = json.loads(text).get("schema")
            if schema == CLIENT_HELLO_SCHEMA:
                await self._greet(json.loads(text))
                return
            if schema == ERROR_SCHEMA:
                self.received.append(Received(text, None, connection))
                self._notify()
                return
            reply = parse_reply(text)
        except (WireError, ValueError, AttributeError) as exc:
            self.violations.append(f"{exc}: {text[:200]}")
        if reply is not None:
            self._check(reply, text)
        received = Received(text, reply, connection)
        if reply is not None and reply.request_id and self._acked(reply):
            # Acknowledged replies are answered before anything else is read, so
            # a reply counts as taken exactly when its acknowledgement went out;
            # one sent again (its acknowledgement was lost) is acknowledged again
            # and not shown twice.
            again = reply.request_id in self._taken_requests
            taken = await self._respond(reply.request_id, True, reply.reply_to)
            received.taken = taken and not again
            if taken:
                self._taken_requests.add(reply.request_id)
            self.shown_again += again
        elif reply is not None and reply.request_id and self._nursery is not None:
            self._nursery.start_soon(self._respond, reply.request_id, False, reply.reply_to)
        self.received.append(received)
        self._notify()

    def _acked(self, reply: OutboundReply) -> bool:
        """Whether ``reply`` is a plain reply or edit that the hello promised to acknowledge."""
        caps = None if self.hello is None else self.hello.capabilities.get(reply.platform)
        if caps is None:
            return False
        if reply.command is None:
            return caps.send_ack
        return reply.command is Command.EDIT_MESSAGE and caps.edit_ack

    async def _greet(self, frame: dict[str, object]) -> None:
        self.client_hellos.append(frame)
        self._notify()
        if self.hello is not None and self._ws is not None:
            await self._ws.send_message(encode_hello(self.hello))

    def _check(self, reply: OutboundReply, text: str) -> None:
        """The rules a gateway relies on beyond the frame's shape."""
        problem = None
        if reply.command is None and reply.reply_to not in self._event_ids:
            problem = f"plain reply to {reply.reply_to!r}, which is no event_id sent"
        elif reply.command is Command.EDIT_MESSAGE and reply.reply_to not in self._issued:
            problem = f"edit_message of {reply.reply_to!r}, which is no message_id issued"
        elif reply.command in (Command.ADD_REACTION, Command.REMOVE_REACTION) and (
            reply.reply_to not in self._user_messages
        ):
            problem = f"reaction on {reply.reply_to!r}, which is no user message_id"
        elif reply.command is Command.CREATE_TOPIC and not reply.request_id:
            problem = "create_topic without request_id"
        if problem:
            self.violations.append(f"{problem}: {text[:200]}")

    async def _respond(self, request_id: str, acked: bool, reply_to: str = "") -> bool:
        """Answer ``request_id``; False when the answer could not be sent."""
        if self.response_mode is ResponseMode.IGNORE:
            return False
        if not acked:
            await trio.sleep(self.response_delay)
        outcome = self.ack_outcome if acked else None
        if self.response_mode is ResponseMode.REFUSE or outcome == "rejected":
            response = GatewayResponse(
                request_id, False, error="refused by the test", outcome=outcome
            )
        else:
            message_id = f"m-{next(self._message_ids)}"
            self._issued.add(message_id)
            self.issued_for[message_id] = reply_to
            response = GatewayResponse(request_id, True, message_id=message_id, outcome=outcome)
        try:
            await self.send_raw(encode_response(response))
        except (RuntimeError, trio_websocket.ConnectionClosed):
            log.info("fake gateway: could not answer %s, the broker is gone", request_id)
            return False
        return True


@asynccontextmanager
async def open_fake_gateway(
    *, token: str = "", hello: GatewayHello | None = None
) -> AsyncIterator[FakeGateway]:
    """Run a fake gateway on 127.0.0.1 (a free port) for the ``async with`` body;
    with ``hello``, one that speaks the newer handshake."""
    gateway = FakeGateway(token, hello)
    async with trio.open_nursery() as nursery:
        gateway._nursery = nursery
        server = await nursery.start(
            trio_websocket.serve_websocket, gateway._handle, "127.0.0.1", 0, None
        )
        gateway.port = server.port
        yield gateway
        nursery.cancel_scope.cancel()
