"""The chaos soak's client side: chat clients, a gateway, abuse, restarts,
and the ledger of every event sent and every reply received.

Used by chaos/__main__.py; the broker process itself is in chaos/broker_process.py.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio
import trio_websocket

from broker.frontends.wire import (
    HELLO_SCHEMA,
    Channel,
    Command,
    Content,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    Sender,
    WireError,
    encode_client_hello,
    encode_event,
    encode_response,
    parse_reply,
)
from broker.testing.fake_gateway import FakeGateway
from chaos.broker_process import MAX_FRAME_BYTES, BrokerRunner, Figures

GATEWAY_DROP_CHANCE = 0.05
QUEUE_NOTE = "⏳ Queued"  # the note a queued message gets at once; the reply comes later

Body = Callable[[trio_websocket.WebSocketConnection, trio.Event], Awaitable[None]]

# (weight, kind, text); {n} is a counter
PROMPTS: list[tuple[int, str, str]] = [
    (30, "normal", "hello {n}"),
    (10, "normal", "@tool Build 0.2 execute\n@reply built {n}"),
    (8, "normal", "@delay 0.8\n@reply slow {n}"),
    (4, "normal", "@silent-tool 1.5\n@reply quiet {n}"),
    (3, "normal", "@flood 300\n@reply flooded {n}"),
    (3, "malformed", "@malformed\n@reply after noise {n}"),
    (3, "grandchild", "@grandchild\n@reply with a grandchild {n}"),
    (3, "permission", "@permission execute\n@delay 0.5\n@reply allowed {n}"),
    (2, "command", "/status"),
    (6, "crash", "@say partial {n}\n@crash 3"),
    (5, "hang", "@say waiting {n}\n@hang"),
    (4, "hang-hard", "@hang-hard"),
    (8, "cancel", "/cancel"),
    (4, "reset", "/reset"),
]
DISCONNECT_WEIGHT = 5
BAD_FRAMES: list[str | bytes] = [
    "not json {",
    "[1, 2, 3]",
    '{"schema": "x"}',
    '{"schema": "openab.gateway.event.v1", "event_id": "evt_bad"}',
    b"\x00binary",
]


@attrs.define
class Sent:
    thread: str
    kind: str
    at: float
    broker_state: str  # up | stopping | down
    broker_run: int
    sender: str = ""  # the client that sent it: only that one may get its reply


@attrs.define
class Ledger:
    """Every event sent and every reply received, keyed by event id."""

    sent: dict[str, Sent] = attrs.field(factory=dict)
    replies: dict[str, list[str]] = attrs.field(factory=dict)
    send_failed: Counter[str] = attrs.field(factory=Counter)
    stray_replies: int = 0
    queue_notes: int = 0
    misrouted: list[str] = attrs.field(factory=list)  # "evt_9 (from chaos1) to chaos0"
    bad_replies: list[str] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def record_reply(
        self, frame: str, receiver: str = "", message_events: Mapping[str, str] | None = None
    ) -> OutboundReply | None:
        """Count one reply frame received by client ``receiver``; returns it when
        readable. A queue note ("⏳ Queued behind …") is not the reply; an edit
        of a note's message (``message_events``: message id -> event id) is,
        the last one standing for the message."""
        try:
            reply = parse_reply(frame)
        except WireError as exc:
            self.bad_replies.append(str(exc))
            return None
        if reply.text.startswith(QUEUE_NOTE):
            self.queue_notes += 1
            return reply
        event_id = reply.reply_to
        if reply.command is Command.EDIT_MESSAGE:
            event_id = (message_events or {}).get(reply.reply_to, "")
        elif reply.command is not None:
            return reply
        sent = self.sent.get(event_id)
        if sent is None:
            self.stray_replies += 1
            return reply
        if receiver and sent.sender and receiver != sent.sender:
            self.misrouted.append(f"{event_id} (from {sent.sender}) to {receiver}")
        if reply.command is Command.EDIT_MESSAGE:
            self.replies[event_id] = [reply.text]  # the note's message now shows this
        else:
            self.replies.setdefault(event_id, []).append(reply.text)
        self.changed.set()
        self.changed = trio.Event()
        return reply

    def unsend(self, event_id: str) -> None:
        """The send of ``event_id`` failed: the broker never got it."""
        self.send_failed[self.sent.pop(event_id).kind] += 1

    def owed(self, sender: str) -> bool:
        """Whether an event ``sender`` sent still waits for its reply."""
        return any(self.sent[e].sender == sender for e in self.unanswered())

    def unanswered(self) -> list[str]:
        return [event_id for event_id in self.sent if event_id not in self.replies]

    def answered_threads(self) -> set[str]:
        return {self.sent[event_id].thread for event_id in self.replies}


class Chaos:
    """The clients, the abuse, the restarts and the ledger of one soak."""

    def __init__(self, args: argparse.Namespace, runner: BrokerRunner, figures: Figures):
        self.args = args
        self.runner = runner
        self.figures = figures
        self.ledger = Ledger()
        self.rng = random.Random(args.seed)
        self.ids = itertools.count(1)
        self.acked: set[str] = set()  # request ids of the replies taken
        self.sending = True  # clients send until the duration is over...
        self.done = False  # ...and stay connected until the report

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.runner.port}/ws"

    def event(self, platform: str, channel: str, text: str) -> tuple[str, str]:
        event_id = f"evt_{next(self.ids)}"
        event = InboundEvent(
            event_id,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            platform,
            Channel(channel, "group"),
            Sender("u1", "chaos", "Chaos", False),
            Content("text", text),
            f"m-{event_id}",
        )
        return event_id, encode_event(event)

    async def send_event(
        self,
        ws: trio_websocket.WebSocketConnection,
        platform: str,
        channel: str,
        kind: str,
        text: str,
        sender: str = "",
    ) -> str | None:
        event_id, frame = self.event(platform, channel, text)
        self.expect(event_id, platform, channel, kind, sender)  # first: its reply may beat us
        try:
            await ws.send_message(frame)
        except trio_websocket.ConnectionClosed:
            self.ledger.unsend(event_id)
            return None
        return event_id

    def expect(
        self, event_id: str, platform: str, channel: str, kind: str, sender: str = ""
    ) -> None:
        self.ledger.sent[event_id] = Sent(
            f"{platform}:{channel}",
            kind,
            round(self.runner.elapsed(), 2),
            self.runner.state,
            self.runner.runs,
            sender,
        )

    async def take_frame(
        self, ws: trio_websocket.WebSocketConnection, message: str | bytes, receiver: str = ""
    ) -> None:
        """Count one frame. A reply that asks for an acknowledgement
        (``request_id``) is taken, and counted, only once the acknowledgement
        went out: one the connection closed on first comes again later."""
        if isinstance(message, str) and '"agent-broker.error.v1"' in message:
            self.figures.error_frames += 1
            return
        if isinstance(message, str) and f'"{HELLO_SCHEMA}"' in message:
            return  # the server's answer to our client_hello
        try:
            request_id = parse_reply(message).request_id
        except WireError:
            request_id = None
        if request_id:
            ack = GatewayResponse(request_id, True, outcome="delivered")
            await ws.send_message(encode_response(ack))  # ConnectionClosed: not taken
            if request_id in self.acked:
                return  # sent again because our acknowledgement was lost: shown already
            self.acked.add(request_id)
        self.ledger.record_reply(str(message), receiver)

    async def read_replies(
        self, ws: trio_websocket.WebSocketConnection, closed: trio.Event, receiver: str
    ) -> None:
        try:
            while True:
                await self.take_frame(ws, await ws.get_message(), receiver)
        except trio_websocket.ConnectionClosed:
            closed.set()

    async def connected(self, query: str, body: Body, receiver: str = "") -> None:
        """Stay connected (reconnecting) with ``query`` in the URL until the
        report, acknowledging every reply (``client_hello``); ``body`` runs on
        each connection and returns to reconnect. Replies are counted as
        received by ``receiver``."""
        while not self.done:
            try:
                async with (
                    trio_websocket.open_websocket_url(
                        f"{self.url}?{query}", connect_timeout=5, disconnect_timeout=5
                    ) as ws,
                    trio.open_nursery() as nursery,
                ):
                    self.figures.clients_connected += 1
                    await ws.send_message(encode_client_hello("chaos"))
                    closed = trio.Event()
                    nursery.start_soon(self.read_replies, ws, closed, receiver)
                    await body(ws, closed)
                    nursery.cancel_scope.cancel()
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                self.figures.connect_failures += 1
                await trio.sleep(0.3)

    async def client(self, index: int) -> None:
        """One chat client: a few threads of its own, random actions. Two
        clients share each platform (``chaos0`` for clients 0 and 1, ...), so a
        reply that reached the other one would be counted as misrouted. On
        each connection it claims its threads (``?threads=``), so replies that
        waited for it come back."""
        name = f"client{index}"
        platform = f"chaos{index // 2}"
        channels = [f"c{index}t{n}" for n in range(self.args.threads_per_client)]

        async def act(ws: trio_websocket.WebSocketConnection, closed: trio.Event) -> None:
            await self.act(ws, closed, platform, channels, name)

        threads = ",".join(f"{platform}:{c}" for c in channels)
        await self.connected(f"threads={threads}", act, name)

    async def listen(self, platform: str) -> None:
        """A client that only takes replies: those of the abuse connections'
        events that found their connection gone wait in the outbox for it."""

        async def until_closed(ws: trio_websocket.WebSocketConnection, closed: trio.Event) -> None:
            await closed.wait()

        await self.connected(f"platforms={platform}", until_closed, platform)

    async def act(
        self,
        ws: trio_websocket.WebSocketConnection,
        closed: trio.Event,
        platform: str,
        channels: list[str],
        name: str,
    ) -> None:
        """Send random events until a disconnect is drawn or sending ends.

        After the sending the connection stays open until the report (or until
        the broker closes it: the caller reconnects), so the final replies, and
        "restarting" ones, reach it."""
        weights = [w for w, _, _ in PROMPTS] + [DISCONNECT_WEIGHT]
        while self.sending:
            await trio.sleep(self.rng.expovariate(1 / self.args.pause))
            if not self.sending:
                break
            pick = self.rng.choices(range(len(weights)), weights)[0]
            if pick == len(PROMPTS):
                self.figures.disconnects += 1
                # Abrupt (no close handshake, like a lost network) only when nothing is owed
                # to this client: a reply already in its socket buffer would be lost, and the
                # protocol has no acknowledgement to tell the broker.
                if not self.ledger.owed(name) and self.rng.random() < 0.5:
                    self.figures.abrupt_disconnects += 1
                    await ws._stream.aclose()
                await ws.aclose()
                await trio.sleep(self.rng.uniform(0, 2))  # replies meanwhile go to the outbox
                return
            _, kind, text = PROMPTS[pick]
            if (
                await self.send_event(
                    ws,
                    platform,
                    self.rng.choice(channels),
                    kind,
                    text.format(n=next(self.ids)),
                    name,
                )
                is None
            ):
                return
        await closed.wait()

    async def abuse(self) -> None:
        """Oversize frames (expect close 1009, then a served connection) and
        malformed frames (expect one error frame each, connection kept).
        A round that a broker restart cut into is not counted."""
        while self.sending:
            await trio.sleep(self.rng.uniform(2, 6))
            run = self.runner.runs
            if self.runner.state != "up":
                continue
            with trio.move_on_after(20):
                try:
                    closed_1009, served = await self.oversize_then_served()
                    errors_all, kept_serving = await self.malformed_frames()
                except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                    self.figures.connect_failures += 1
                    continue
                if self.runner.runs != run or self.runner.state != "up":
                    continue
                self.figures.oversize_sent += 1
                self.figures.oversize_closed_1009 += closed_1009
                self.figures.served_after_oversize += served
                self.figures.bad_frames_sent += len(BAD_FRAMES)
                self.figures.malformed_rounds += 1
                self.figures.malformed_rounds_all_errors += errors_all and kept_serving

    async def oversize_then_served(self) -> tuple[bool, bool]:
        """(closed with 1009, the next connection was answered)"""
        url = f"{self.url}?platforms=abuse-big"
        closed_1009 = False
        async with trio_websocket.open_websocket_url(url, connect_timeout=5) as ws:
            _, frame = self.event("abuse", "big", "x" * (MAX_FRAME_BYTES + 1024))
            await ws.send_message(encode_client_hello("chaos"))
            try:
                await ws.send_message(frame)
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                closed_1009 = exc.reason is not None and exc.reason.code == 1009
        async with trio_websocket.open_websocket_url(
            f"{self.url}?platforms=abuse", connect_timeout=5
        ) as ws:
            await ws.send_message(encode_client_hello("chaos"))
            return closed_1009, await self.answered(ws, "after-big", "@reply served")

    async def malformed_frames(self) -> tuple[bool, bool]:
        """(one error frame per bad frame, the connection answered an event after them)"""
        async with trio_websocket.open_websocket_url(
            f"{self.url}?platforms=abuse", connect_timeout=5
        ) as ws:
            await ws.send_message(encode_client_hello("chaos"))
            for frame in BAD_FRAMES:
                await ws.send_message(frame)
            errors_before = self.figures.error_frames
            served = await self.answered(ws, "after-bad", "@reply still served")
            return self.figures.error_frames - errors_before == len(BAD_FRAMES), served

    async def answered(
        self, ws: trio_websocket.WebSocketConnection, channel: str, text: str
    ) -> bool:
        """Send one event and read this connection until its reply came (bounded)."""
        event_id = await self.send_event(ws, "abuse", channel, "normal", text, "abuse")
        with trio.move_on_after(15):
            while event_id is not None and event_id not in self.ledger.replies:
                await self.take_frame(ws, await ws.get_message(), "abuse")
        return event_id in self.ledger.replies

    async def gateway_chat(self, gateway: FakeGateway) -> None:
        """Events through the broker's gateway client; now and then the
        gateway drops the connection abruptly (the broker redials)."""
        weights = [w for w, _, _ in PROMPTS]
        while self.sending:
            await trio.sleep(self.rng.expovariate(1 / self.args.pause))
            if not gateway.connected:
                continue
            if self.rng.random() < GATEWAY_DROP_CHANCE:
                self.figures.gateway_drops += 1
                await gateway.drop()
                continue
            _, kind, text = PROMPTS[self.rng.choices(range(len(PROMPTS)), weights)[0]]
            channel = f"g{self.rng.randrange(self.args.threads_per_client)}"
            event_id, frame = self.event("gw", channel, text.format(n=next(self.ids)))
            self.expect(event_id, "gw", channel, kind, "gateway")
            try:
                await gateway.send_raw(frame)
            except (RuntimeError, trio_websocket.ConnectionClosed):
                self.ledger.unsend(event_id)

    async def gateway_replies(self, gateway: FakeGateway) -> None:
        seen = 0
        while True:

            def more(seen: int = seen) -> bool:
                return len(gateway.received) > seen

            await gateway.wait_for(more)
            for received in gateway.received[seen:]:
                if received.reply is not None and received.taken:
                    self.ledger.record_reply(received.text, "gateway", gateway.issued_for)
            seen = len(gateway.received)

    async def restarts(self, times: list[float]) -> None:
        for at in times:
            await trio.sleep_until(at)
            if not self.sending:
                return
            await self.runner.stop()
            await trio.sleep(self.rng.uniform(0.2, 1.5))
            await self.runner.start()

    async def settle(self, limit: float) -> None:
        """Wait until every event sent is answered, at most ``limit`` seconds."""
        with trio.move_on_after(limit):
            while self.ledger.unanswered():
                await self.ledger.changed.wait()
