"""What transports and the router share.

A transport (the WebSocket server, the gateway client) turns frames into
:class:`~broker.frontends.wire.InboundEvent` values and hands each one to an
:class:`InboundSink` (the router) in a task of its own, together with the
:class:`ReplyChannel` the answers go to. The router never sees a socket: it
calls :meth:`ReplyChannel.send_reply` for plain replies, edits and
reactions, and :meth:`ReplyChannel.request` when it needs the platform's
answer (the message_id of the first streamed message, a created topic).

Replies that cannot be delivered because the connection is gone go to an
:class:`Outbox`; the transport delivers them when a client connects again.
:class:`MemoryOutbox` is the bounded in-memory one; the SQLite store can
provide a durable one with the same two methods.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from broker.frontends.wire import Command, GatewayResponse, InboundEvent, OutboundReply

log = logging.getLogger(__name__)

RESPONSE_TIMEOUT_SECS = 5.0  # protocols.md: no answer within 5 s -> give up streaming


class FrontendError(Exception):
    """A transport cannot start as configured; the message says why and what to set."""


class ServerSettings(Protocol):
    """The part of ``[server]`` the WebSocket server reads (``ServerConfig`` fits)."""

    @property
    def listen(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def max_frame_bytes(self) -> int: ...


class GatewaySettings(Protocol):
    """The part of ``[gateway]`` the gateway client reads (``GatewayConfig`` fits)."""

    @property
    def url(self) -> str: ...
    @property
    def token(self) -> str: ...


class SlackSettings(Protocol):
    """The part of ``[slack]`` the Slack front-end reads (``SlackConfig`` fits)."""

    @property
    def app_token(self) -> str: ...
    @property
    def bot_token(self) -> str: ...
    @property
    def api_base_url(self) -> str: ...
    @property
    def mention_required(self) -> bool: ...


class ReplyChannel(Protocol):
    """Where the replies to one inbound event go.

    ``connection_id`` names the connection for logs and status counts
    (``ws-3``, ``gateway``, ``slack``); ``frontend`` is ``"server"``,
    ``"gateway"`` or ``"slack"``, the config section whose settings
    (``streaming``) apply.
    """

    @property
    def connection_id(self) -> str: ...

    @property
    def frontend(self) -> str: ...

    async def send_reply(self, reply: OutboundReply) -> None:
        """Send ``reply``; never raises for a lost connection.

        If the connection is gone (or goes while sending), the reply is put in
        the transport's outbox and delivered when a client connects again. It
        waits only for the socket write (backpressure of a slow peer).
        """
        ...

    async def request(
        self, reply: OutboundReply, *, timeout: float = RESPONSE_TIMEOUT_SECS
    ) -> GatewayResponse | None:
        """Send ``reply`` with a fresh ``request_id`` (``req_<uuid>``, replacing
        any it had) and wait up to ``timeout`` seconds for the matching
        response.

        Returns None when there is no connection (nothing is sent and nothing
        is queued), when the connection is lost before the answer, or on
        timeout; the caller then falls back (e.g. to a plain final reply).
        A response with ``success: false`` is returned as is.
        """
        ...


class InboundSink(Protocol):
    """The receiver of inbound events (the router)."""

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        """Handle one event; runs in its own task, concurrently with others.

        The task belongs to the transport, not to the connection: it goes on
        when the connection that brought the event closes (replies then go
        to the outbox), and it is cancelled only when the transport stops. If
        it raises, the transport logs the error and sends the event one plain
        error reply, so the user is never left without an answer.
        """
        ...


class Outbox(Protocol):
    """Replies waiting for a connection. Both methods are synchronous and never wait."""

    def on_undeliverable(self, reply: OutboundReply) -> None:
        """Keep ``reply``; its connection is gone."""
        ...

    def take(self, platforms: frozenset[str] | None) -> list[OutboundReply]:
        """Remove and return the waiting replies for ``platforms`` (all when
        None), oldest first. The transport puts back, with
        :meth:`on_undeliverable`, any it then fails to send."""
        ...


class MemoryOutbox:
    """A bounded in-memory :class:`Outbox`.

    An ``edit_message`` replaces a waiting edit of the same message (only the
    last full text matters), so a stream of edits during an outage costs one
    entry. When full, the oldest reply is dropped with a warning.

    To make it durable, pass the replies kept from the last run as
    ``initial`` and an ``on_change`` that records the whole waiting list
    (synchronously, e.g. by queueing a write to the store); it is called after
    every change with the replies in order.
    """

    def __init__(
        self,
        capacity: int = 1000,
        *,
        initial: Iterable[OutboundReply] = (),
        on_change: Callable[[list[OutboundReply]], None] | None = None,
    ) -> None:
        self.capacity = capacity
        self._replies: collections.deque[OutboundReply] = collections.deque(initial)
        self._on_change = on_change
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._replies)

    def on_undeliverable(self, reply: OutboundReply) -> None:
        self._keep(reply)
        self._changed()

    def _keep(self, reply: OutboundReply) -> None:
        if reply.command is Command.EDIT_MESSAGE:
            for index, waiting in enumerate(self._replies):
                if waiting.command is Command.EDIT_MESSAGE and _same_message(waiting, reply):
                    self._replies[index] = reply
                    return
        if len(self._replies) >= self.capacity:
            lost = self._replies.popleft()
            self.dropped += 1
            log.warning(
                "outbox full (%d): dropped the oldest reply to %s:%s",
                self.capacity,
                lost.platform,
                lost.channel.id,
            )
        self._replies.append(reply)

    def take(self, platforms: frozenset[str] | None) -> list[OutboundReply]:
        taken = [r for r in self._replies if platforms is None or r.platform in platforms]
        kept = [r for r in self._replies if not (platforms is None or r.platform in platforms)]
        self._replies = collections.deque(kept)
        if taken:
            self._changed()
        return taken

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(list(self._replies))


def _same_message(a: OutboundReply, b: OutboundReply) -> bool:
    return (a.platform, a.channel, a.reply_to) == (b.platform, b.channel, b.reply_to)
