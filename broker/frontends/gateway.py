"""The gateway client (``[gateway]``): the broker dials an openab gateway.

The client keeps one connection to ``[gateway] url`` (with ``?token=T`` added
when a token is set) and reconnects when it drops, with backoff: 1 s doubling
to 30 s, minus up to a quarter at random (so many brokers do not reconnect in
step), back to 1 s after a good connection (one that lasted 10 s or brought
an event). The backoff is a synchronous decision (:class:`Backoff`); the loop
only sleeps what it says.

Right after connecting, the client sends openab's newer ``client_hello``; a
gateway that knows it answers ``hello`` with what each platform can do
(message limit, editing, streaming mode, acknowledgements), which the
channel then offers to delivery (:meth:`LinkChannel.capabilities`) and the
link honours (acknowledged replies). Events are handled from the first
frame; replies that waited for the connection wait for the hello at most
``hello_wait`` seconds (2) more; a gateway that has not answered by then is
spoken to in plain v1.

Events go to the sink, each in its own task that outlives the connection it
came on. All of them share one :class:`~broker.frontends.base.ReplyChannel`
(the client's :attr:`GatewayClient.channel`), which always writes to the
current connection; while there is none, finished replies wait in the
outbox, and so do replies a connection closed on before taking them; each
is delivered once, on the next connection, before the replies that follow.
"""

from __future__ import annotations

import logging
import random
import urllib.parse
from collections.abc import Callable, Sequence, Sized
from contextlib import AbstractAsyncContextManager
from typing import NoReturn

import attrs
import trio
import trio_websocket

from broker.frontends.base import (
    EVERYTHING,
    FrontendError,
    GatewaySettings,
    InboundSink,
    MemoryOutbox,
    Outbox,
    Parcel,
)
from broker.frontends.link import CLOSE_GRACE_SECS, Link, LinkChannel, deliver_parcels, run_event
from broker.frontends.wire import (
    GatewayHello,
    Hello,
    InboundEvent,
    OutboundReply,
    WireError,
    encode_client_hello,
    error_reply,
)
from broker.pulse import Pulse

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECS = 10.0
MAX_FRAME_BYTES = 16 * 1024 * 1024  # events carry base64 attachments
PING_INTERVAL_SECS = 20.0
PONG_TIMEOUT_SECS = 10.0
CLIENT_NAME = "agent-broker"
HELLO_WAIT_SECS = 2.0  # for the gateway's hello before replies go out in plain v1

Dialer = Callable[[str], AbstractAsyncContextManager[trio_websocket.WebSocketConnection]]


@attrs.frozen
class BackoffPolicy:
    initial_secs: float = 1.0
    max_secs: float = 30.0
    jitter: float = 0.25  # up to this fraction is taken off each delay at random
    good_after_secs: float = 10.0  # a connection this long (or with an event) resets


def reconnect_delay(failures: int, policy: BackoffPolicy, rand: float) -> float:
    """The wait before the next dial after ``failures`` bad tries in a row
    (0 for the first): ``initial * 2**failures`` capped at ``max_secs``, then
    reduced by ``jitter * rand`` (``rand`` in [0, 1)). Never above ``max_secs``."""
    base = min(policy.max_secs, policy.initial_secs * 2.0 ** min(failures, 32))
    return base * (1.0 - policy.jitter * rand)


def was_good(connected_secs: float | None, events: int, policy: BackoffPolicy) -> bool:
    """A connection that lasted ``good_after_secs`` or brought an event."""
    return connected_secs is not None and (connected_secs >= policy.good_after_secs or events > 0)


class Backoff:
    """Failures since the last good connection, and the delay they call for."""

    def __init__(self, policy: BackoffPolicy, rand: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.failures = 0
        self._rand = rand

    def after(self, connected_secs: float | None, events: int) -> float:
        """Record how a try went (``connected_secs`` None: it never connected)
        and return how long to wait before the next one."""
        if was_good(connected_secs, events, self.policy):
            self.failures = 0
        delay = reconnect_delay(self.failures, self.policy, self._rand())
        self.failures += 1
        return delay


def with_token(url: str, token: str) -> str:
    """``url`` with ``token=`` added to its query (replacing one already there)."""
    if not token:
        return url
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "token"]
    query.append(("token", token))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def websocket_dialer(max_frame_bytes: int) -> Dialer:
    """Dial a ws:// or wss:// URL with the client limits the front-ends share."""

    def dial(url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        return trio_websocket.open_websocket_url(
            url,
            max_message_size=max_frame_bytes,
            connect_timeout=CONNECT_TIMEOUT_SECS,
            disconnect_timeout=CLOSE_GRACE_SECS,
        )

    return dial


@attrs.frozen
class GatewaySnapshot:
    url: str  # without the token
    connected: bool
    connects: int
    events_received: int
    outbox_waiting: int | None
    last_error: str


class GatewayClient:
    """The connection to the gateway, kept up by :meth:`run`."""

    def __init__(
        self,
        settings: GatewaySettings,
        sink: InboundSink,
        *,
        outbox: Outbox | None = None,
        backoff: BackoffPolicy = BackoffPolicy(),
        ping_interval: float = PING_INTERVAL_SECS,
        pong_timeout: float = PONG_TIMEOUT_SECS,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        dial: Dialer | None = None,
        hello_wait: float = HELLO_WAIT_SECS,
    ) -> None:
        if not settings.url.startswith(("ws://", "wss://")):
            raise FrontendError(f"[gateway] url = {settings.url!r}: expected a ws:// or wss:// URL")
        self.settings = settings
        self.sink = sink
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.backoff = Backoff(backoff)
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_frame_bytes = max_frame_bytes
        self.hello_wait = hello_wait
        self.channel = LinkChannel("gateway", "gateway", None, self._keep)
        self.connects = 0
        self.events_received = 0
        self.last_error = ""
        self._dial = dial or websocket_dialer(max_frame_bytes)
        self._changed = Pulse()

    @property
    def connected(self) -> bool:
        link = self.channel.link
        return link is not None and not link.closed

    def snapshot(self) -> GatewaySnapshot:
        """Synchronous, never waits."""
        waiting = len(self.outbox) if isinstance(self.outbox, Sized) else None
        return GatewaySnapshot(
            self.settings.url,
            self.connected,
            self.connects,
            self.events_received,
            waiting,
            self.last_error,
        )

    async def wait_connected(self, connected: bool = True) -> None:
        """Wait until the client is (or, with False, is not) connected."""
        while self.connected is not connected:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.fire()

    def _keep(self, reply: OutboundReply) -> None:
        """A reply no connection could write: it waits for the next one."""
        self.outbox.on_undeliverable(reply)
        self._notify()

    def _put_back(self, parcels: Sequence[Parcel]) -> None:
        self.outbox.put_back(parcels)
        self._notify()

    async def _hand_waiting(self, link: Link) -> None:
        """Write the waiting replies on ``link``, oldest first, now and
        whenever more wait, until it closes."""
        while not link.closed:
            parcels = self.outbox.take(EVERYTHING)
            if parcels:
                await deliver_parcels(link, parcels, self._put_back)
            else:
                await self._changed.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[GatewayClient] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Dial, serve, and redial forever; event tasks run in this task's nursery.

        Reports started at once (before the first dial): an unreachable
        gateway delays nothing else. Cancelling it closes the connection and
        cancels the event tasks.
        """
        url = with_token(self.settings.url, self.settings.token)
        async with trio.open_nursery() as events:
            task_status.started(self)
            while True:
                connected_secs, events_seen = await self._connect_once(url, events)
                delay = self.backoff.after(connected_secs, events_seen)
                log.info("gateway: reconnecting in %.1f s", delay)
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _connect_once(self, url: str, events: trio.Nursery) -> tuple[float | None, int]:
        """One connection, served until it ends: (seconds connected or None, events)."""
        started: float | None = None
        link: Link | None = None
        try:
            async with self._dial(url) as ws:
                started = trio.current_time()
                self.connects += 1
                link = Link(
                    ws,
                    f"gateway-{self.connects}",
                    max_frame_bytes=self.max_frame_bytes,
                    on_lost=self._put_back,
                    on_taken=self.outbox.delivered,
                )
                await self._serve(link, events)
        except (trio_websocket.HandshakeError, OSError) as exc:
            self.last_error = describe_dial_error(exc)
            log.warning("gateway %s: %s", self.settings.url, self.last_error)
        except Exception as exc:  # a bug here must not end the gateway for good
            self.last_error = describe_dial_error(exc)
            log.exception("gateway %s: connection failed", self.settings.url)
        finally:
            if link is not None:
                link.mark_closed()
            if self.channel.link is link:
                self.channel.link = None
            self._notify()
        connected = None if started is None else trio.current_time() - started
        return connected, 0 if link is None else link.events_received

    async def _serve(self, link: Link, events: trio.Nursery) -> None:
        log.info("gateway %s: connected (%s)", self.settings.url, link.connection_id)
        self.last_error = ""

        def on_event(event: InboundEvent) -> None:
            self.events_received += 1
            events.start_soon(run_event, self.sink, event, self.channel)

        async def on_bad_frame(error: WireError) -> None:
            reply = error_reply(error)
            if reply is not None:
                await self.channel.send_reply(reply)

        hello_seen = trio.Event()

        def on_hello(hello: Hello) -> None:
            if not isinstance(hello, GatewayHello):
                log.warning("gateway %s: sent a client_hello; ignored", self.settings.url)
                return
            link.hello = hello
            link.acks = any(c.send_ack for c in hello.capabilities.values())
            log.info(
                "gateway %s: hello, protocol %d, platforms %s%s",
                self.settings.url,
                hello.protocol_version,
                ", ".join(sorted(hello.capabilities)) or "none named",
                ", replies acknowledged" if link.acks else "",
            )
            hello_seen.set()

        async def read() -> None:
            await link.read_frames(on_event, on_bad_frame, on_hello)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            if not await link.send(encode_client_hello(CLIENT_NAME)):
                return
            nursery.start_soon(read)
            # Events are read and handled at once. Replies that waited for this
            # connection wait a moment more for the hello, which says how to send
            # them; with none waiting, nothing waits for it.
            if not isinstance(self.outbox, Sized) or len(self.outbox):
                with trio.move_on_after(self.hello_wait):
                    await hello_seen.wait()
            # Waiting replies go first: they are written before the channel
            # points at this link; the pump then writes what comes to wait later.
            await deliver_parcels(link, self.outbox.take(EVERYTHING), self._put_back)
            self.channel.link = link
            self._notify()
            nursery.start_soon(self._hand_waiting, link)
            nursery.start_soon(link.heartbeat, self.ping_interval, self.pong_timeout)
            nursery.start_soon(link.settle_written)
        log.info("gateway %s: disconnected (%s)", self.settings.url, link.ws.closed)


def describe_dial_error(exc: BaseException) -> str:
    """Why a dial failed, never an empty reason: trio-websocket's handshake
    errors carry no text, their cause (refused, unreachable) does."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"refused with HTTP {exc.status_code}"
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return "timed out while connecting"
    if isinstance(exc, trio_websocket.DisconnectionTimeout):
        return "timed out while closing"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio_websocket.HandshakeError) and cause is not None:
        exc = cause
    attempts = exc.__cause__  # trio: "all attempts to connect ... failed", from a group
    if isinstance(attempts, BaseExceptionGroup) and attempts.subgroup(ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {str(exc) or 'failed without a reason'}"


async def run_gateway(
    settings: GatewaySettings,
    sink: InboundSink,
    *,
    outbox: Outbox | None = None,
    task_status: trio.TaskStatus[GatewayClient] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """``client = await nursery.start(run_gateway, config.gateway, router)``.

    Raises :class:`~broker.frontends.base.FrontendError` at once for a URL that
    is not ws:// or wss://; otherwise runs until cancelled (see
    :meth:`GatewayClient.run`).
    """
    await GatewayClient(settings, sink, outbox=outbox).run(task_status=task_status)
