"""One open WebSocket speaking protocol v1 from the broker's side.

Both transports use it: the server has one :class:`Link` per accepted client,
the gateway client one per successful dial. A link reads frames, correlates
responses with pending requests, keeps the peer honest with pings, and says
(by returning False) when a frame could not be sent because the connection
is gone, so the caller can put the reply in its outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio
import trio_websocket

from broker.frontends.base import RESPONSE_TIMEOUT_SECS, InboundSink, Outbox, ReplyChannel
from broker.frontends.wire import (
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    WireError,
    encode_reply,
    new_request_id,
    parse_frame,
)

log = logging.getLogger(__name__)

CLOSE_TOO_BIG = 1009
CLOSE_HEARTBEAT = 1011  # the peer stopped answering pings
CLOSE_INTERNAL_ERROR = 1011
CLOSE_GRACE_SECS = 2.0


@attrs.define
class _Pending:
    done: trio.Event = attrs.field(factory=trio.Event)
    response: GatewayResponse | None = None


class Link:
    """A live WebSocket connection and its pending requests.

    ``closed`` becomes true once the connection is known to be gone (the
    reader ended, a send failed, the heartbeat gave up); pending requests are
    then answered with None at once.
    """

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, connection_id: str, *, max_frame_bytes: int
    ) -> None:
        self.ws = ws
        self.connection_id = connection_id
        self.max_frame_bytes = max_frame_bytes
        self.closed = False
        self.events_received = 0
        self._pending: dict[str, _Pending] = {}

    def __repr__(self) -> str:
        return f"<Link {self.connection_id} {'closed' if self.closed else 'open'}>"

    def mark_closed(self) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for slot in pending.values():
            slot.done.set()

    async def send(self, text: str) -> bool:
        """Send one text frame. False (never an exception) if the connection is gone."""
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
        return True

    async def request(self, reply: OutboundReply, timeout: float) -> GatewayResponse | None:
        """See :meth:`broker.frontends.base.ReplyChannel.request`."""
        if self.closed:
            return None
        request_id = new_request_id()
        slot = self._pending[request_id] = _Pending()
        try:
            if not await self.send(encode_reply(attrs.evolve(reply, request_id=request_id))):
                return None
            with trio.move_on_after(timeout):
                await slot.done.wait()
            return slot.response
        finally:
            self._pending.pop(request_id, None)

    def resolve(self, response: GatewayResponse) -> None:
        slot = self._pending.pop(response.request_id, None)
        if slot is None:
            log.info(
                "%s: response to unknown or expired %s", self.connection_id, response.request_id
            )
            return
        slot.response = response
        slot.done.set()

    async def read_frames(
        self,
        on_event: Callable[[InboundEvent], None],
        on_bad_frame: Callable[[WireError], Awaitable[None]],
    ) -> None:
        """Read frames until the connection ends; then mark the link closed.

        Events go to ``on_event`` (synchronous: it must only start a task),
        responses wake their requests, unreadable frames go to
        ``on_bad_frame`` and reading goes on. A frame over ``max_frame_bytes``
        closes the connection with 1009.
        """
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return
                if isinstance(message, str) and len(message.encode()) > self.max_frame_bytes:
                    await self.close(CLOSE_TOO_BIG, f"frame over {self.max_frame_bytes} bytes")
                    return
                try:
                    frame = parse_frame(message)
                except WireError as err:
                    log.warning("%s: unreadable frame: %s", self.connection_id, err)
                    await on_bad_frame(err)
                    continue
                if isinstance(frame, GatewayResponse):
                    self.resolve(frame)
                else:
                    self.events_received += 1
                    on_event(frame)
        finally:
            self.mark_closed()

    async def heartbeat(self, interval: float, timeout: float) -> None:
        """Ping every ``interval`` seconds; close the connection (1011) when a
        pong does not come within ``timeout``. Returns when the link closes."""
        while not self.closed:
            await trio.sleep(interval)
            with trio.move_on_after(timeout) as scope:
                try:
                    await self.ws.ping()
                except trio_websocket.ConnectionClosed:
                    break
            if scope.cancelled_caught:
                log.warning(
                    "%s: no pong within %.1f s, dropping the peer", self.connection_id, timeout
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
    absent or gone; undeliverable replies go to ``fallback`` (a callable that
    tries another connection or the outbox)."""

    def __init__(
        self,
        frontend: str,
        connection_id: str,
        link: Link | None,
        fallback: Callable[[OutboundReply], Awaitable[None]],
    ) -> None:
        self._frontend = frontend
        self._connection_id = connection_id
        self.link = link
        self._fallback = fallback

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def frontend(self) -> str:
        return self._frontend

    async def send_reply(self, reply: OutboundReply) -> None:
        link = self.link
        if link is not None and await link.send(encode_reply(reply)):
            return
        await self._fallback(reply)

    async def request(
        self, reply: OutboundReply, *, timeout: float = RESPONSE_TIMEOUT_SECS
    ) -> GatewayResponse | None:
        link = self.link
        return None if link is None else await link.request(reply, timeout)


async def deliver_outbox(link: Link, outbox: Outbox, platforms: frozenset[str] | None) -> int:
    """Send the outbox's waiting replies for ``platforms`` on ``link``, oldest
    first; any that cannot be sent go back to the outbox. Returns how many were
    sent."""
    waiting = outbox.take(platforms)
    for index, reply in enumerate(waiting):
        if not await link.send(encode_reply(reply)):
            for unsent in waiting[index:]:
                outbox.on_undeliverable(unsent)
            return index
    if waiting:
        log.info("%s: delivered %d waiting replies", link.connection_id, len(waiting))
    return len(waiting)


async def run_event(sink: InboundSink, event: InboundEvent, channel: ReplyChannel) -> None:
    """Hand ``event`` to ``sink``; if the sink raises, log it and send one plain
    error reply so the user is not left without an answer."""
    try:
        await sink.handle_event(event, channel)
    except Exception as exc:
        log.exception("handling %s from %s failed", event.event_id, channel.connection_id)
        text = f"⚠️ Internal error while handling this message: {type(exc).__name__}"
        try:
            await channel.send_reply(OutboundReply.to_event(event, text))
        except Exception:  # one event's failure never ends the transport
            log.exception("the error reply to %s could not be sent", event.event_id)
