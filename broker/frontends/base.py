"""What transports and the router share.

A transport (the WebSocket server, the gateway client) turns frames into
:class:`~broker.frontends.wire.InboundEvent` values and hands each one to an
:class:`InboundSink` (the router) in a task of its own, together with the
:class:`ReplyChannel` the answers go to. The router never sees a socket: it
calls :meth:`ReplyChannel.send_reply` for plain replies, edits and
reactions, and :meth:`ReplyChannel.request` when it needs the platform's
answer (the message_id of the first streamed message, a created topic).

Replies that no connection has taken go to an :class:`Outbox`; the
transport hands each to a connection that serves its thread (a
:class:`Claim`) when one connects or claims the thread, and forgets it only
once that connection took it. :class:`MemoryOutbox` is the bounded in-memory
one; the service keeps a durable one in the SQLite store.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import attrs

from broker.frontends.wire import (
    Command,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    PlatformCapabilities,
)
from broker.logs import RepeatLimiter

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

        If the connection is gone (or goes before it has taken the reply),
        the reply waits in the transport's outbox for a connection that
        serves its thread. It waits only for the socket write (backpressure
        of a slow peer).
        """
        ...

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        """Send ``reply`` with a fresh ``request_id`` (``req_<uuid>``, replacing
        any it had) and wait for the matching response.

        Returns None when there is no connection (nothing is sent and nothing
        is queued) or when the connection is lost before the answer; the
        caller then falls back (e.g. to a plain final reply). It sets no
        deadline of its own: the caller bounds the wait with its cancel scope
        (the protocol's :data:`RESPONSE_TIMEOUT_SECS`) and, when that expires,
        the request is forgotten. A response with ``success: false`` is
        returned as is.
        """
        ...


@runtime_checkable
class KnowsCapabilities(Protocol):
    """A channel whose peer said what each platform can do (a gateway's ``hello``)."""

    def capabilities(self, platform: str) -> PlatformCapabilities | None: ...


def channel_capabilities(channel: ReplyChannel, platform: str) -> PlatformCapabilities | None:
    """What ``channel``'s peer said ``platform`` can do; None when it said nothing."""
    return channel.capabilities(platform) if isinstance(channel, KnowsCapabilities) else None


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


def reply_thread(reply: OutboundReply) -> str:
    """The thread key a reply belongs to: the same ``{platform}:{thread_id or
    channel.id}`` as :func:`~broker.frontends.wire.thread_key` of its event."""
    return f"{reply.platform}:{reply.channel.thread_id or reply.channel.id}"


@attrs.frozen
class Claim:
    """Which waiting replies a connection serves: those of ``threads`` (thread
    keys), of every thread of ``platforms``, or all of them (``everything``:
    the gateway client, a server client with ``?platforms=*``)."""

    threads: frozenset[str] = frozenset()
    platforms: frozenset[str] = frozenset()
    everything: bool = False

    def covers(self, reply: OutboundReply) -> bool:
        return (
            self.everything
            or reply.platform in self.platforms
            or reply_thread(reply) in self.threads
        )


EVERYTHING = Claim(everything=True)


@attrs.define(eq=False)
class Parcel:
    """A reply on its way to a connection. ``ticket`` is its place in the
    outbox it was taken from (None: it was sent straight, never waited);
    ``resent`` counts sends again after a gateway could not say whether it
    was delivered; ``request_id`` stays the same on every send, so a peer that
    took it before can acknowledge it again without showing it twice.
    Compared by identity, so two equal replies stay two."""

    reply: OutboundReply
    ticket: int | None = None
    resent: int = 0
    request_id: str | None = None  # once sent acknowledged: the same id every time it is sent


class Outbox(Protocol):
    """Replies waiting for a connection that serves their thread.

    Every method is synchronous and never waits. A reply leaves the outbox
    only once a connection has taken it: :meth:`take` hands it out,
    :meth:`delivered` forgets it for good, :meth:`put_back` returns it (in
    order, before everything that waits) when its connection closed first.
    """

    def on_undeliverable(self, reply: OutboundReply) -> None:
        """Keep ``reply`` (newest last); no connection took it."""
        ...

    def take(self, claim: Claim) -> list[Parcel]:
        """Hand out the waiting replies ``claim`` covers, oldest first."""
        ...

    def delivered(self, parcels: Sequence[Parcel]) -> None:
        """``parcels`` were taken by a connection: forget them."""
        ...

    def put_back(self, parcels: Sequence[Parcel]) -> None:
        """``parcels`` (in the order they were sent) were not taken: keep
        them again, ahead of everything waiting."""
        ...


class MemoryOutbox:
    """A bounded in-memory :class:`Outbox`.

    An ``edit_message`` replaces a waiting edit of the same message (only the
    last full text matters), so a stream of edits during an outage costs one
    entry. When full, the oldest reply is dropped with a warning (repeats of
    that warning are rate-limited, with a count).
    """

    def __init__(self, capacity: int = 1000, *, initial: Iterable[OutboundReply] = ()) -> None:
        self.capacity = capacity
        self._tickets = itertools.count(1)
        self._parcels: collections.deque[Parcel] = collections.deque(
            Parcel(reply, next(self._tickets)) for reply in initial
        )
        self.dropped = 0
        self._full = RepeatLimiter(log)

    def __len__(self) -> int:
        return len(self._parcels)

    def on_undeliverable(self, reply: OutboundReply) -> None:
        if reply.command is Command.EDIT_MESSAGE:
            for index, waiting in enumerate(self._parcels):
                if waiting.reply.command is Command.EDIT_MESSAGE and _same_message(
                    waiting.reply, reply
                ):
                    self._parcels[index] = Parcel(reply, waiting.ticket)
                    return
        if len(self._parcels) >= self.capacity:
            lost = self._parcels.popleft().reply
            self.dropped += 1
            self._full.warning(
                "outbox full (%d): dropped the oldest reply to %s",
                self.capacity,
                reply_thread(lost),
            )
        self._parcels.append(Parcel(reply, next(self._tickets)))

    def take(self, claim: Claim) -> list[Parcel]:
        taken = [p for p in self._parcels if claim.covers(p.reply)]
        if taken:
            self._parcels = collections.deque(p for p in self._parcels if not claim.covers(p.reply))
        return taken

    def delivered(self, parcels: Sequence[Parcel]) -> None:
        pass

    def put_back(self, parcels: Sequence[Parcel]) -> None:
        self._parcels.extendleft(reversed(parcels))


def _same_message(a: OutboundReply, b: OutboundReply) -> bool:
    return (a.platform, a.channel, a.reply_to) == (b.platform, b.channel, b.reply_to)
