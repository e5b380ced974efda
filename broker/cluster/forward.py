"""Events to their owner, and the replies back: the cluster's forwarding link.

:class:`ClusterSink` stands in front of the router on every transport. For
each event it decides, synchronously (:func:`decide_route`), one of:

* **here**: this replica owns the thread, the event came from a peer (never
  forwarded twice, so a stale member list cannot loop), or Discord's shard
  delivered it; the router handles it;
* **ignore**: a gateway broadcast another replica owns (every replica gets
  it; only the owner answers);
* **forward**: a WebSocket client or Slack's random connection brought an
  event another replica owns. It goes, as the same protocol v1 frame, to the
  owner's ``/ws?peer=NAME`` with the peer token, on the one :class:`Peer`
  connection kept per owner. The owner answers it as it answers any client:
  its replies come back on that connection and are written to the channel
  the event came on (``request_id`` frames are relayed both ways).

An owner that cannot be reached (the dial fails, or the connection drops
before an event had its reply) gets the thread's user one
:data:`~broker.sentences.HOST_RESTARTING` reply, never silence. A lost
connection is dialled again on the next event, after a short backoff that
every waiting event shares (one dial, not one per event). Backpressure: at
most :data:`MAX_FORWARDED_IN_FLIGHT` events per owner wait for their reply;
the next waits for a slot, and with it the connection that brought it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio
import trio_websocket

from broker import sentences
from broker.cluster.ownership import owner
from broker.frontends.base import RESPONSE_TIMEOUT_SECS, InboundSink, ReplyChannel, reply_thread
from broker.frontends.gateway import Backoff, BackoffPolicy
from broker.frontends.link import LinkChannel
from broker.frontends.wire import (
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    WireError,
    encode_event,
    encode_response,
    parse_reply,
    thread_key,
)
from broker.logs import RepeatLimiter

log = logging.getLogger(__name__)

MAX_FORWARDED_IN_FLIGHT = 256  # per owner: events forwarded and not answered yet
MAX_FRAME_BYTES = 16 * 1024 * 1024  # events carry base64 attachments
CONNECT_TIMEOUT_SECS = 5.0
PING_INTERVAL_SECS = 20.0
PONG_TIMEOUT_SECS = 10.0
CLOSE_GRACE_SECS = 2.0
#: A restarting pod is back within seconds: retry soon, and never wait long.
PEER_BACKOFF = BackoffPolicy(initial_secs=0.1, max_secs=2.0, jitter=0.25, good_after_secs=10.0)


class Route(enum.Enum):
    HERE = "here"
    FORWARD = "forward"
    IGNORE = "ignore"


@attrs.frozen
class Decision:
    route: Route
    owner: str
    why: str


def decide_route(
    event: InboundEvent, frontend: str, *, from_peer: bool, replica: str, members: Sequence[str]
) -> Decision:
    """Where ``event``, brought by ``frontend`` (``"server"``, ``"gateway"``,
    ``"slack"``, ``"discord"``), is answered. Pure."""
    key = thread_key(event)
    if from_peer:
        return Decision(Route.HERE, replica, "forwarded by a peer")
    if frontend == "discord":
        return Decision(Route.HERE, replica, "Discord's shard delivered it")
    owned_by = owner(key, members)
    if owned_by == replica:
        return Decision(Route.HERE, replica, "owned here")
    if frontend == "gateway":
        return Decision(Route.IGNORE, owned_by, f"a gateway broadcast that {owned_by} answers")
    return Decision(Route.FORWARD, owned_by, f"owned by {owned_by}")


@attrs.frozen
class PeerSnapshot:
    name: str
    address: str
    connected: bool
    forwarded: int
    waiting: int  # forwarded events without their reply yet
    unreachable: int  # events answered "the host is restarting"
    last_error: str | None


@attrs.frozen
class ClusterSnapshot:
    replica: str
    members: tuple[str, ...]
    handled_here: int  # events this replica answered itself
    from_peers: int  # of those, forwarded to it by a peer
    not_owned: int  # of those, threads another member owns (a peer's older member list)
    forwarded: int
    ignored_broadcasts: int
    peers: tuple[PeerSnapshot, ...]


@attrs.define(eq=False)
class _Waiter:
    event_id: str
    done: trio.Event = attrs.field(factory=trio.Event)
    lost: bool = False  # the connection dropped before the reply


@attrs.define(eq=False)
class _Attempt:
    done: trio.Event = attrs.field(factory=trio.Event)
    ws: trio_websocket.WebSocketConnection | None = None


class Peer:
    """The pooled connection to one owner and the events waiting on it.

    ``nursery`` holds the connection's background tasks (reader, heartbeat,
    dials); the connection lives until it drops or the nursery is cancelled.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        replica: str,
        token: str,
        nursery: trio.Nursery,
        policy: BackoffPolicy = PEER_BACKOFF,
        max_in_flight: int = MAX_FORWARDED_IN_FLIGHT,
    ) -> None:
        self.name = name
        self.address = address
        self.url = f"ws://{address}/ws?peer={replica}"
        self._headers = [(b"authorization", f"Bearer {token}".encode())]
        self._nursery = nursery
        self._backoff = Backoff(policy)
        self._retry_at = 0.0
        self._slots = trio.Semaphore(max_in_flight)
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._connected_at = 0.0
        self._replies_seen = 0
        self._attempt: _Attempt | None = None
        self._sending = trio.Lock()
        self._routes: dict[str, ReplyChannel] = {}  # thread key -> where its replies go
        self._waiting: dict[str, list[_Waiter]] = {}  # thread key -> events without a reply
        self._dial_failed = RepeatLimiter(log)
        self.forwarded = 0
        self.unreachable = 0
        self.last_error: str | None = None

    def snapshot(self) -> PeerSnapshot:
        return PeerSnapshot(
            self.name,
            self.address,
            self._ws is not None,
            self.forwarded,
            sum(len(w) for w in self._waiting.values()),
            self.unreachable,
            self.last_error,
        )

    async def forward(self, event: InboundEvent, channel: ReplyChannel) -> bool:
        """Send ``event`` to this owner and wait for its first reply, which (as
        every reply of its thread) goes to ``channel``. False when the owner
        cannot be reached or the connection dropped before the reply: the
        caller tells the user. Waits for a slot while
        :data:`MAX_FORWARDED_IN_FLIGHT` events wait already."""
        async with self._slots:
            ws = await self._connection()
            if ws is None:
                self.unreachable += 1
                return False
            key = thread_key(event)
            self._routes[key] = channel
            waiter = _Waiter(event.event_id)
            self._waiting.setdefault(key, []).append(waiter)
            self.forwarded += 1
            try:
                if await self._send(ws, encode_event(event)):
                    await waiter.done.wait()
                else:
                    waiter.lost = True
            finally:
                self._forget(key, waiter)
            if waiter.lost:
                self.unreachable += 1
            return not waiter.lost

    def _forget(self, key: str, waiter: _Waiter) -> None:
        waiters = self._waiting.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiting.pop(key, None)

    async def _connection(self) -> trio_websocket.WebSocketConnection | None:
        """The open connection, dialling (once, for every caller) when there is
        none; None when the dial failed."""
        if self._ws is not None:
            return self._ws
        attempt = self._attempt
        if attempt is None:
            attempt = self._attempt = _Attempt()
            self._nursery.start_soon(self._dial, attempt)
        await attempt.done.wait()
        return attempt.ws

    async def _dial(self, attempt: _Attempt) -> None:
        try:
            await trio.sleep_until(self._retry_at)
            with trio.fail_after(CONNECT_TIMEOUT_SECS):
                ws = await trio_websocket.connect_websocket_url(
                    self._nursery,
                    self.url,
                    extra_headers=self._headers,
                    max_message_size=MAX_FRAME_BYTES,
                )
        except (OSError, trio_websocket.HandshakeError, trio.TooSlowError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            delay = self._backoff.after(None, 0)
            self._retry_at = trio.current_time() + delay
            self._dial_failed.warning(
                "peer %s (%s) unreachable: %s; next try in %.2f s",
                self.name,
                self.address,
                self.last_error,
                delay,
            )
        else:
            self._ws, self._connected_at, self._replies_seen = ws, trio.current_time(), 0
            self.last_error = None
            log.info("peer %s connected (%s)", self.name, self.address)
            self._nursery.start_soon(self._read, ws)
            self._nursery.start_soon(self._heartbeat, ws)
        finally:
            attempt.ws = self._ws
            self._attempt = None
            attempt.done.set()

    async def _send(self, ws: trio_websocket.WebSocketConnection, frame: str) -> bool:
        async with self._sending:
            try:
                await ws.send_message(frame)
            except trio_websocket.ConnectionClosed:
                self._lost(ws)
                return False
        return True

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        try:
            while True:
                message = await ws.get_message()
                try:
                    reply = parse_reply(message)
                except WireError as exc:
                    log.warning("peer %s sent a frame that is not a reply: %s", self.name, exc)
                    continue
                self._replies_seen += 1
                await self._relay(ws, reply)
        except trio_websocket.ConnectionClosed as exc:
            log.warning("peer %s disconnected (%s)", self.name, exc.reason)
            self.last_error = f"disconnected ({exc.reason})"
        finally:
            self._lost(ws)

    async def _relay(self, ws: trio_websocket.WebSocketConnection, reply: OutboundReply) -> None:
        """Write ``reply`` to its thread's channel; a request is relayed in a
        task of its own, and its answer sent back."""
        key = reply_thread(reply)
        channel = self._routes.get(key)
        if channel is None:
            log.warning("peer %s: a reply for %s, which no event was forwarded in", self.name, key)
            return
        if reply.request_id is not None:
            self._nursery.start_soon(self._relay_request, ws, channel, reply)
        else:
            await channel.send_reply(reply)
        self._answered(key, reply.reply_to)

    def _answered(self, key: str, reply_to: str) -> None:
        """The thread had a reply: the event it answers (else its oldest
        waiting one) is done."""
        waiters = self._waiting.get(key, [])
        matching = [w for w in waiters if w.event_id == reply_to] or waiters[:1]
        for waiter in matching:
            waiter.done.set()

    async def _relay_request(
        self, ws: trio_websocket.WebSocketConnection, channel: ReplyChannel, reply: OutboundReply
    ) -> None:
        request_id = reply.request_id
        assert request_id is not None
        response: GatewayResponse | None = None
        with trio.move_on_after(RESPONSE_TIMEOUT_SECS):
            response = await channel.request(reply)
        if response is None:
            answer = GatewayResponse(request_id, False, error="the client did not answer")
        else:
            answer = attrs.evolve(response, request_id=request_id)
        await self._send(ws, encode_response(answer))

    def _lost(self, ws: trio_websocket.WebSocketConnection) -> None:
        """``ws`` is gone: every event waiting on it is lost (its user is told)."""
        if self._ws is not ws:
            return
        self._ws = None
        connected = trio.current_time() - self._connected_at
        self._retry_at = trio.current_time() + self._backoff.after(connected, self._replies_seen)
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done.is_set():
                    waiter.lost = True
                    waiter.done.set()
        self._nursery.start_soon(self._close, ws)

    async def _close(self, ws: trio_websocket.WebSocketConnection) -> None:
        with trio.move_on_after(CLOSE_GRACE_SECS):
            await ws.aclose()

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Ping the owner; one that does not answer within the timeout is
        given up (a half-open TCP connection after a node died)."""
        while not ws.closed:
            await trio.sleep(PING_INTERVAL_SECS)
            with trio.move_on_after(PONG_TIMEOUT_SECS) as scope:
                try:
                    await ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                log.warning("peer %s: no pong within %.1f s", self.name, PONG_TIMEOUT_SECS)
                self.last_error = "no pong"
                self._lost(ws)
                return


class ClusterSink:
    """The :class:`~broker.frontends.base.InboundSink` of every transport in a
    cluster: handles an event here, forwards it, or ignores it (see the module
    docstring). ``ignored`` says whether the router would ignore an event (it
    then goes to ``local``, which logs it: an owner would send no reply to
    wait for). Its peer connections live in :meth:`run`."""

    def __init__(
        self,
        local: InboundSink,
        *,
        replica: str,
        members: Mapping[str, str],
        peer_token: str,
        ignored: Callable[[InboundEvent], bool],
    ) -> None:
        self.local = local
        self.replica = replica
        self.members = tuple(members)
        self._addresses = dict(members)
        self._token = peer_token
        self._ignored = ignored
        self._peers: dict[str, Peer] = {}
        self._nursery: trio.Nursery | None = None
        self.handled_here = 0
        self.from_peers = 0
        self.not_owned = 0
        self.ignored_broadcasts = 0

    async def run(
        self, *, task_status: trio.TaskStatus[ClusterSink] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the peer connections until cancelled: ``await nursery.start(sink.run)``."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._peers = {
                name: Peer(name, address, replica=self.replica, token=self._token, nursery=nursery)
                for name, address in self._addresses.items()
                if name != self.replica
            }
            task_status.started(self)
            await trio.sleep_forever()

    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(
            self.replica,
            self.members,
            self.handled_here,
            self.from_peers,
            self.not_owned,
            sum(p.forwarded for p in self._peers.values()),
            self.ignored_broadcasts,
            tuple(p.snapshot() for p in self._peers.values()),
        )

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        from_peer = isinstance(channel, LinkChannel) and channel.peer
        decision = decide_route(
            event, channel.frontend, from_peer=from_peer, replica=self.replica, members=self.members
        )
        if decision.route is Route.IGNORE:
            self.ignored_broadcasts += 1
            log.debug("%s: %s", event.event_id, decision.why)
            return
        if decision.route is Route.HERE or self._ignored(event):
            self.handled_here += 1
            if from_peer:
                self.from_peers += 1
                self.not_owned += owner(thread_key(event), self.members) != self.replica
            await self.local.handle_event(event, channel)
            return
        peer = self._peers[decision.owner]
        if await peer.forward(event, channel):
            return
        log.warning(
            "%s in %s: its owner %s is unreachable; told the user",
            event.event_id,
            thread_key(event),
            peer.name,
        )
        await channel.send_reply(OutboundReply.to_event(event, sentences.HOST_RESTARTING))
