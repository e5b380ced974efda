"""One open WebSocket speaking protocol v1 from the broker's side.

Both transports use it: the server has one :class:`Link` per accepted client,
the gateway client one per successful dial. A link reads frames, correlates
responses with pending requests, keeps the peer honest with pings, and keeps
every reply it wrote until the peer has *taken* it:

* where the gateway promised acknowledgements (its ``hello`` said
  ``send_ack``), a reply goes out with a ``request_id`` and is taken when the
  response says ``outcome: delivered`` (``rejected`` is logged and not
  retried; ``unknown`` is sent again, once);
* otherwise (plain v1, which has no acknowledgement) a reply is taken once
  its write completed and the connection stayed open for ``settle_secs``
  after it: a peer that was closing as the reply was written (its close
  frame crossing the reply) gets it again on its next connection. A peer
  that reads a reply and closes within that window may get it twice: at
  least once, never lost. (A ping would tell exactly, but WebSocket clients
  that have begun closing may fail on one.)

When the link closes, the replies not yet taken go to ``on_lost`` in the order
they were written, so the transport can put them back in its outbox for the
next connection that serves their thread; taken ones go to ``on_taken`` (the
outbox forgets them). A send that fails returns False, so the caller can keep
the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio
import trio_websocket

from broker.frontends.base import (
    InboundSink,
    Parcel,
    ReplyChannel,
)
from broker.frontends.wire import (
    GatewayHello,
    GatewayResponse,
    Hello,
    InboundEvent,
    OutboundReply,
    PlatformCapabilities,
    WireError,
    encode_reply,
    new_request_id,
    parse_frame,
)
from broker.logs import RepeatLimiter
from broker.pulse import Pulse

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008  # too many events in flight and the peer does not read
CLOSE_HEARTBEAT = 1011  # the peer stopped answering pings
CLOSE_INTERNAL_ERROR = 1011
CLOSE_GRACE_SECS = 2.0
SETTLE_SECS = 0.25  # plain v1: a reply is taken when its connection stayed open this long
SLOW_DOWN_SECS = 2.0  # at the cap: wait this long for room, then as long to write "slow down"
UNKNOWN_RETRIES = 1  # an ``outcome: unknown`` reply is sent again this often

Parcels = Callable[[Sequence[Parcel]], None]


def _ignore(parcels: Sequence[Parcel]) -> None:
    pass


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: GatewayResponse | None = None


@attrs.define(eq=False)
class _Written:
    parcel: Parcel
    done_at: float | None = None  # when the write returned on an open connection
    request_id: str | None = None  # acknowledged by the response to it


class Link:
    """A live WebSocket connection, its pending requests and the replies it
    has written that the peer has not taken yet.

    ``closed`` becomes true once the connection is known to be gone (the
    reader ended, a send failed, the heartbeat gave up); pending requests are
    then answered with None at once and the untaken replies go to ``on_lost``.
    ``capabilities`` and ``acks`` come from the gateway's ``hello``, if any.
    ``in_flight`` counts this connection's events being handled (the
    transport keeps it with :meth:`event_started` / :meth:`event_done`); at
    ``max_in_flight`` reading waits, then refuses (see :meth:`read_frames`).
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        connection_id: str,
        *,
        max_frame_bytes: int,
        max_in_flight: int | None = None,
        on_lost: Parcels = _ignore,
        on_taken: Parcels = _ignore,
    ) -> None:
        self.ws = ws
        self.connection_id = connection_id
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.on_lost = on_lost
        self.on_taken = on_taken
        self.closed = False
        self.events_received = 0
        self.events_refused = 0
        self.in_flight = 0
        self.hello: GatewayHello | None = None
        self.acks = False
        self._pending: dict[str, _Pending] = {}
        self._written: list[_Written] = []
        self._written_changed = Pulse()
        self._reading = trio.CancelScope()
        self.first_frame = trio.Event()  # the peer has sent something (a hello comes first)
        self._in_flight_changed = Pulse()
        self._refusals = RepeatLimiter(log)

    def __repr__(self) -> str:
        return f"<Link {self.connection_id} {'closed' if self.closed else 'open'}>"

    @property
    def untaken(self) -> int:
        return len(self._written)

    def capabilities(self, platform: str) -> PlatformCapabilities | None:
        """What the gateway's ``hello`` said ``platform`` can do; None without one."""
        return None if self.hello is None else self.hello.capabilities.get(platform)

    def mark_closed(self, *, written_taken: bool = False) -> None:
        """The connection is gone: answer pending requests with None and hand
        the untaken replies to ``on_lost``, once. With ``written_taken`` (the
        broker itself closes an open connection: the peer reads everything
        written before the close frame), completed writes count as taken."""
        self.closed = True
        self._reading.cancel()
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.done.set()
        lost, self._written = self._written, []
        self._written_changed.fire()
        if written_taken:
            taken = [w.parcel for w in lost if w.done_at is not None and not w.request_id]
            lost = [w for w in lost if w.done_at is None or w.request_id]
            if taken:
                self.on_taken(taken)
        if lost:
            log.info("%s: %d replies not taken, kept for later", self.connection_id, len(lost))
            self.on_lost([w.parcel for w in lost])

    async def send(self, text: str) -> bool:
        """Send one frame the peer need not take (an error frame, a
        handshake). False (never an exception) if the connection is gone."""
        if self.closed:
            return False
        try:
            await self.ws.send_message(text)
        except trio_websocket.ConnectionClosed:
            self.mark_closed()
            return False
        except Exception:  # whatever breaks a link ends that link only
            log.exception("%s: sending failed; closing this connection", self.connection_id)
            await self.close(CLOSE_INTERNAL_ERROR, "internal error")
            return False
        except BaseException:
            self.mark_closed()  # cancelled mid-write: a cut frame leaves nothing readable after it
            raise
        return True

    async def deliver(self, parcel: Parcel) -> bool:
        """Write ``parcel``'s reply and keep it until the peer has taken it.

        False when the connection is gone before the write (the caller keeps
        the reply). After True, the reply reaches ``on_taken`` or, if the
        connection closes first, ``on_lost``. Cancelled mid-write, the frame
        may be cut: the link is given up and the reply kept.
        """
        if self.closed:
            return False
        entry = _Written(parcel)
        reply = parcel.reply
        if self.acks and reply.request_id is None:
            parcel.request_id = entry.request_id = parcel.request_id or new_request_id()
            reply = attrs.evolve(reply, request_id=entry.request_id)
        self._written.append(entry)
        try:
            await self.ws.send_message(encode_reply(reply))
        except trio_websocket.ConnectionClosed:
            if entry in self._written:
                self._written.remove(entry)
            self.mark_closed()
            return False
        except Exception:  # whatever breaks a link ends that link only
            log.exception("%s: sending failed; closing this connection", self.connection_id)
            if entry in self._written:
                self._written.remove(entry)
            await self.close(CLOSE_INTERNAL_ERROR, "internal error")
            return False
        except BaseException:
            self.mark_closed()  # a frame cut in the middle: nothing after it is readable
            raise
        entry.done_at = trio.current_time()
        self._written_changed.fire()
        return True

    async def settle_written(self, settle_secs: float = SETTLE_SECS) -> None:
        """Hand written replies to ``on_taken`` once the connection stayed open
        ``settle_secs`` after their write (plain v1); replies sent with a
        ``request_id`` wait for their response instead. Returns when the link
        closes (the unsettled ones then go to ``on_lost``)."""
        while not self.closed:
            waiting = [w for w in self._written if w.done_at is not None and not w.request_id]
            if not waiting:
                await self._written_changed.wait()
                continue
            due = min(w.done_at for w in waiting if w.done_at is not None) + settle_secs
            await trio.sleep_until(due)
            now = trio.current_time()
            if not self.closed:
                self._taken(
                    [w for w in waiting if w.done_at is not None and w.done_at + settle_secs <= now]
                )

    def _taken(self, entries: Sequence[_Written]) -> None:
        gone = set(map(id, entries))
        self._written = [w for w in self._written if id(w) not in gone]
        self.on_taken([w.parcel for w in entries])
        self._written_changed.fire()

    async def wait_taken(self) -> None:
        """Wait until every reply written so far was taken or the link closed."""
        while self._written and not self.closed:
            await self._written_changed.wait()

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        """See :meth:`broker.frontends.base.ReplyChannel.request`."""
        if self.closed:
            return None
        request_id = new_request_id()
        slot = self._pending[request_id] = _Pending()
        try:
            if not await self.send(encode_reply(attrs.evolve(reply, request_id=request_id))):
                return None
            await slot.done.wait()
            return slot.response
        finally:
            self._pending.pop(request_id, None)

    def resolve(self, response: GatewayResponse) -> None:
        """A response: wake its request, or settle the reply it acknowledges."""
        for entry in self._written:
            if entry.request_id == response.request_id:
                self._acknowledged(entry, response)
                return
        slot = self._pending.pop(response.request_id, None)
        if slot is None:
            log.info(
                "%s: response to unknown or expired %s", self.connection_id, response.request_id
            )
            return
        slot.response = response
        slot.done.set()

    def _acknowledged(self, entry: _Written, response: GatewayResponse) -> None:
        outcome = response.outcome or ("delivered" if response.success else "rejected")
        if outcome == "unknown" and entry.parcel.resent < UNKNOWN_RETRIES:
            entry.parcel.resent += 1
            log.warning(
                "%s: the gateway does not know whether %s was delivered; sending it again",
                self.connection_id,
                entry.parcel.reply.reply_to,
            )
            self._written.remove(entry)
            self.on_lost([entry.parcel])
            return
        if outcome != "delivered":
            log.error(
                "%s: the gateway %s the reply to %s (%s)",
                self.connection_id,
                "rejected" if outcome == "rejected" else "could not confirm",
                entry.parcel.reply.reply_to,
                response.error_code or response.error or "no reason given",
            )
        self._taken([entry])

    async def read_frames(
        self,
        on_event: Callable[[InboundEvent], None],
        on_bad_frame: Callable[[WireError], Awaitable[None]],
        on_hello: Callable[[Hello], None] | None = None,
    ) -> None:
        """Read frames until the connection ends; then mark the link closed.

        Events go to ``on_event`` (synchronous: it must only start a task),
        responses wake their requests or settle acknowledged replies, a
        ``hello`` or ``client_hello`` goes to ``on_hello`` (where the
        transport speaks the newer handshake; elsewhere it is a bad frame),
        unreadable frames go to
        ``on_bad_frame`` and reading goes on. A frame over ``max_frame_bytes``
        closes the connection with 1009. An event that finds ``max_in_flight``
        events of this connection still being handled waits (reading waits
        with it, so a peer that floods is read no faster than its events are
        answered); when none is done within :data:`SLOW_DOWN_SECS` (its
        replies are not being read), the event is refused with an error frame
        ("slow down"), and when even that cannot be written within as long,
        the connection is closed with 1008.
        """
        with self._reading:  # cancelled when the link is given up (a frame cut mid-write)
            try:
                while True:
                    try:
                        message = await self.ws.get_message()
                    except trio_websocket.ConnectionClosed:
                        return
                    if isinstance(message, str) and len(message.encode()) > self.max_frame_bytes:
                        await self.close(CLOSE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
                        return
                    self.first_frame.set()
                    try:
                        frame = parse_frame(message)
                        if isinstance(frame, Hello) and on_hello is None:
                            raise WireError(f"unexpected schema '{frame.schema}'")
                    except WireError as err:
                        log.warning("%s: unreadable frame: %s", self.connection_id, err)
                        await on_bad_frame(err)
                        continue
                    if isinstance(frame, GatewayResponse):
                        self.resolve(frame)
                    elif isinstance(frame, Hello):
                        if on_hello is not None:
                            on_hello(frame)
                    elif not await self._room_for(frame, on_bad_frame):
                        if self.closed:
                            return
                    else:
                        self.events_received += 1
                        on_event(frame)
            except trio.Cancelled:
                self.mark_closed(written_taken=not self.closed)  # the transport stops
                raise
            finally:
                self.mark_closed()

    async def _room_for(
        self, event: InboundEvent, on_bad_frame: Callable[[WireError], Awaitable[None]]
    ) -> bool:
        """Whether ``event`` may be handled now: at ``max_in_flight``, reading
        waits (the peer's sends wait with it) until one of the connection's
        events is done; after :data:`SLOW_DOWN_SECS` the event is refused."""
        if self.max_in_flight is None or self.in_flight < self.max_in_flight:
            return True
        with trio.move_on_after(SLOW_DOWN_SECS):
            while self.in_flight >= self.max_in_flight:
                await self._in_flight_changed.wait()
            return True
        await self._refuse(event, on_bad_frame)
        return False

    def event_started(self) -> None:
        self.in_flight += 1

    def event_done(self) -> None:
        self.in_flight -= 1
        self._in_flight_changed.fire()

    async def _refuse(
        self, event: InboundEvent, on_bad_frame: Callable[[WireError], Awaitable[None]]
    ) -> bool:
        """Refuse ``event`` (too many in flight); False when the link was closed for it."""
        self.events_refused += 1
        self._refusals.warning(
            "%s: %d events in flight, refusing %s",
            self.connection_id,
            self.in_flight,
            event.event_id,
        )
        error = WireError(
            f"slow down: {self.in_flight} events of this connection are still being handled; "
            "this one was not accepted, send it again later",
            event_id=event.event_id,
        )
        with trio.move_on_after(SLOW_DOWN_SECS):
            await on_bad_frame(error)
            return not self.closed
        log.warning(
            "%s: refuses events and reads no replies: closing with %d",
            self.connection_id,
            CLOSE_POLICY,
        )
        await self.close(CLOSE_POLICY, "too many events in flight")
        return False

    async def heartbeat(self, interval: float, pong_timeout: float) -> None:
        """Ping every ``interval`` seconds; close the connection (1011) when a
        pong does not come within ``pong_timeout``. Returns when the link closes."""
        while not self.closed:
            await trio.sleep(interval)
            with trio.move_on_after(pong_timeout) as scope:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed:
                    break
            if scope.cancelled_caught:
                log.warning(
                    "%s: no pong within %.1f s, dropping the peer", self.connection_id, pong_timeout
                )
                await self.close(CLOSE_HEARTBEAT, "heartbeat timeout")
                break
        self.mark_closed()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``; bounded and shielded, marks the link closed."""
        self.mark_closed()
        with trio.move_on_after(CLOSE_GRACE_SECS) as scope:
            scope.shield = True
            await self.ws.aclose(code, reason)


class LinkChannel:
    """A :class:`~broker.frontends.base.ReplyChannel` over a link that may be
    absent or gone; replies its link cannot write go to ``fallback`` (a
    synchronous callable that keeps them in the outbox for a connection that
    serves their thread). ``peer``: the connection is another replica of a
    cluster forwarding its clients' events (docs/scaling.md)."""

    def __init__(
        self,
        frontend: str,
        connection_id: str,
        link: Link | None,
        fallback: Callable[[OutboundReply], None],
        *,
        peer: bool = False,
    ) -> None:
        self._frontend = frontend
        self._connection_id = connection_id
        self.link = link
        self._fallback = fallback
        self.peer = peer

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def frontend(self) -> str:
        return self._frontend

    def capabilities(self, platform: str) -> PlatformCapabilities | None:
        """What the peer said ``platform`` can do (a gateway's ``hello``), or None."""
        link = self.link
        return None if link is None else link.capabilities(platform)

    async def send_reply(self, reply: OutboundReply) -> None:
        link = self.link
        if link is not None and await link.deliver(Parcel(reply)):
            return
        self._fallback(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        link = self.link
        return None if link is None else await link.request(reply)


async def deliver_parcels(link: Link, parcels: Sequence[Parcel], on_unsent: Parcels) -> int:
    """Write ``parcels`` on ``link`` in order; those it cannot write go to
    ``on_unsent`` (in order). Returns how many were written."""
    for index, parcel in enumerate(parcels):
        if not await link.deliver(parcel):
            on_unsent(parcels[index:])
            return index
    if parcels:
        log.info("%s: delivered %d waiting replies", link.connection_id, len(parcels))
    return len(parcels)


async def run_event(
    sink: InboundSink, event: InboundEvent, channel: ReplyChannel, link: Link | None = None
) -> None:
    """Hand ``event`` to ``sink``, counted in ``link.in_flight`` while it
    runs; if the sink raises, log it and send one plain error reply so the
    user is not left without an answer."""
    if link is not None:
        link.event_started()
    try:
        await sink.handle_event(event, channel)
    except Exception as exc:
        log.exception("handling %s from %s failed", event.event_id, channel.connection_id)
        text = f"⚠️ Internal error while handling this message: {type(exc).__name__}"
        try:
            await channel.send_reply(OutboundReply.to_event(event, text))
        except Exception:  # one event's failure never ends the transport
            log.exception("the error reply to %s could not be sent", event.event_id)
    finally:
        if link is not None:
            link.event_done()
