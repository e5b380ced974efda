"""The embedded WebSocket server (``[server]``): clients connect and send events.

One TCP port serves:

* ``/ws``: the openab gateway protocol v1 (events in, replies out); in a
  cluster, ``/ws?peer=NAME`` with the peer token is another replica
  forwarding its clients' events (no per-connection cap on events in flight);
* extra WebSocket routes (``ws_routes``, e.g. a live ``/status`` feed);
* plain HTTP ``GET`` routes (``http_routes``: ``/status``, ``/healthz``,
  ``/metrics``). Paths in ``PUBLIC_PATHS`` need no token; all others do
  when ``[server] token`` is set.

Every event runs in its own task in the server's nursery, so a slow turn
never delays the connection's reader, and a turn outlives the connection it
came on. A reply goes only to a connection that serves its thread: the one
the event came on, or later one that has sent events in that thread or
declared it with ``?threads=`` or ``?platforms=`` (see docs/protocol.md). A
reply no such connection has taken waits in the outbox; each connection
takes what it serves as soon as it serves it.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence, Sized
from typing import NoReturn

import attrs
import trio
import trio_websocket

from broker.frontends.base import (
    Claim,
    InboundSink,
    MemoryOutbox,
    Outbox,
    Parcel,
    ServerSettings,
)
from broker.frontends.http import (
    HEAD_TIMEOUT_SECS,
    BadRequest,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    StreamWithPrefix,
    check_exposure,
    parse_head,
    parse_listen,
    read_head,
    token_status,
)
from broker.frontends.link import (
    CLOSE_GRACE_SECS,
    Link,
    LinkChannel,
    deliver_parcels,
    run_event,
)
from broker.frontends.wire import (
    ClientHello,
    GatewayHello,
    Hello,
    InboundEvent,
    OutboundReply,
    PlatformCapabilities,
    WireError,
    encode_error,
    encode_hello,
    thread_key,
)

log = logging.getLogger(__name__)

STOP_CLOSE_SECS = 0.1  # closing a client while the server stops

WS_PATH = "/ws"
PUBLIC_PATHS = frozenset({"/healthz"})
PING_INTERVAL_SECS = 20.0
PONG_TIMEOUT_SECS = 10.0
MAX_EVENTS_IN_FLIGHT = 64  # per connection; more are refused with "slow down"
PEER_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}")  # a cluster member, as in [cluster] members
FIRST_FRAME_WAIT_SECS = 0.5  # waiting replies wait this long for a client's first frame

WebSocketHandler = Callable[[trio_websocket.WebSocketRequest], Awaitable[None]]


@attrs.frozen
class ServerSnapshot:
    host: str
    port: int
    connections: tuple[str, ...]
    events_received: int
    outbox_waiting: int | None  # None when the outbox cannot count
    untaken: int = 0  # replies written whose connection has not taken them yet


def declared_claim(platforms: str | None, threads: str | None) -> Claim:
    """What a client declared it serves in its URL: ``?platforms=a,b`` (every
    thread of those platforms; ``*`` for all) and ``?threads=p:1,p:2``."""

    def names(value: str | None) -> frozenset[str]:
        return frozenset(filter(None, (value or "").split(",")))

    wanted = names(platforms)
    return Claim(names(threads), wanted - {"*"}, "*" in wanted)


@attrs.define(eq=False)
class _Client:
    link: Link
    channel: LinkChannel
    claim: Claim  # declared, plus every thread it has sent an event in


class WebSocketServer:
    """The running server, as returned by ``await nursery.start(serve_websocket, ...)``."""

    def __init__(
        self,
        settings: ServerSettings,
        sink: InboundSink,
        outbox: Outbox,
        *,
        host: str,
        port: int,
        http_routes: Mapping[str, HttpHandler],
        ws_routes: Mapping[str, WebSocketHandler],
        ping_interval: float,
        pong_timeout: float,
        event_nursery: trio.Nursery,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.outbox = outbox
        self.host = host
        self.port = port
        self.http_routes = dict(http_routes)
        self.ws_routes = dict(ws_routes)
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.events_received = 0
        self._events = event_nursery
        self.max_events_in_flight = MAX_EVENTS_IN_FLIGHT
        self.peer_token = ""  # set in a cluster: /ws?peer=NAME connections present it
        self._clients: dict[str, _Client] = {}
        self._ids = itertools.count(1)
        self._waiting_changed = trio.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{WS_PATH}"

    def snapshot(self) -> ServerSnapshot:
        """Synchronous, never waits."""
        waiting = len(self.outbox) if isinstance(self.outbox, Sized) else None
        return ServerSnapshot(
            self.host,
            self.port,
            tuple(self._clients),
            self.events_received,
            waiting,
            sum(c.link.untaken for c in self._clients.values()),
        )

    async def wait_taken(self) -> None:
        """Wait until each connection has taken what was written to it (or closed)."""
        for client in list(self._clients.values()):
            await client.link.wait_taken()

    # --- connections -----------------------------------------------------

    async def handle_stream(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection: read the head, then WebSocket or plain HTTP.

        Nothing a connection does raises out of here: an error ends that
        connection only (logged), never the server.
        """
        try:
            await self._serve_stream(stream)
        except Exception:
            log.exception("connection from %s failed", _peer(stream))
            with trio.move_on_after(CLOSE_GRACE_SECS) as scope:
                scope.shield = True
                await stream.aclose()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        try:
            with trio.fail_after(HEAD_TIMEOUT_SECS):
                head, rest = await read_head(stream)
            request = parse_head(head)
        except (BadRequest, trio.TooSlowError, trio.BrokenResourceError) as exc:
            status = exc.status if isinstance(exc, BadRequest) else 400
            await _answer(stream, HttpResponse(status, f"{exc}\n".encode(), "text/plain"))
            return
        if request.is_websocket:
            try:
                await self._serve_websocket(
                    StreamWithPrefix(stream, head + rest), request, _peer(stream)
                )
            except trio_websocket.ConnectionClosed:
                log.info("connection from %s closed during the handshake", _peer(stream))
        else:
            await _answer(stream, await self._serve_http(request))

    async def _serve_http(self, request: HttpRequest) -> HttpResponse:
        if request.path == WS_PATH:
            return HttpResponse(426, b"use a WebSocket client for /ws\n", "text/plain")
        handler = self.http_routes.get(request.path)
        if handler is None:
            return HttpResponse(404, b"not found\n", "text/plain")
        refusal = (
            None if request.path in PUBLIC_PATHS else token_status(request, self.settings.token)
        )
        if refusal is not None:
            return HttpResponse(refusal, b"token required\n", "text/plain")
        if request.method != "GET":
            return HttpResponse(405, b"GET only\n", "text/plain")
        try:
            return await handler(request)
        except Exception:
            log.exception("GET %s failed", request.path)
            return HttpResponse(500, b"internal error\n", "text/plain")

    async def _serve_websocket(
        self, stream: StreamWithPrefix, head: HttpRequest, peer: str
    ) -> None:
        request: trio_websocket.WebSocketRequest | None = None
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(HEAD_TIMEOUT_SECS):
                request = await trio_websocket.wrap_server_stream(
                    nursery, stream, max_message_size=self.settings.max_frame_bytes
                )
            if request is None:
                pass  # not a valid handshake: the library answered 400
            elif head.path != WS_PATH and head.path not in self.ws_routes:
                await request.reject(404, body=b"not found\n")
            elif (peer_name := self._peer_name(head)) == "":
                await request.reject(400, body=b"peer: expected a member name\n")
            elif (refusal := token_status(head, self._token_for(peer_name))) is not None:
                log.warning("refused %s from %s: HTTP %d", head.path, peer, refusal)
                await request.reject(refusal, body=b"token required\n")
            elif head.path in self.ws_routes:
                await self.ws_routes[head.path](request)
            else:
                await self._serve_client(await request.accept(), head, peer, peer_name)
            nursery.cancel_scope.cancel()
        with trio.move_on_after(CLOSE_GRACE_SECS) as scope:
            scope.shield = True
            await stream.aclose()

    def _peer_name(self, head: HttpRequest) -> str | None:
        """The member a ``/ws?peer=NAME`` connection says it is ("" when the name
        is not one); None for an ordinary client or when no peer token is set."""
        name = head.query_value("peer")
        if name is None or not self.peer_token or head.path != WS_PATH:
            return None
        return name if PEER_NAME.fullmatch(name) else ""

    def _token_for(self, peer_name: str | None) -> str:
        return self.settings.token if peer_name is None else self.peer_token

    async def _serve_client(
        self,
        ws: trio_websocket.WebSocketConnection,
        head: HttpRequest,
        peer: str,
        peer_name: str | None = None,
    ) -> None:
        # A peer replica forwards many clients' events: the forwarder bounds them.
        number = next(self._ids)
        connection_id = f"ws-{number}" if peer_name is None else f"peer-{peer_name}-{number}"
        link = Link(
            ws,
            connection_id,
            max_frame_bytes=self.settings.max_frame_bytes,
            max_in_flight=self.max_events_in_flight if peer_name is None else None,
            on_lost=self._put_back,
            on_taken=self.outbox.delivered,
        )
        channel = LinkChannel("server", connection_id, link, self._keep, peer=peer_name is not None)
        claim = declared_claim(head.query_value("platforms"), head.query_value("threads"))
        client = self._clients[connection_id] = _Client(link, channel, claim)
        log.info("%s connected from %s (serves %s)", connection_id, peer, _describe(claim))

        def on_event(event: InboundEvent) -> None:
            self.events_received += 1
            key = thread_key(event)
            waiting: list[Parcel] = []
            if key not in client.claim.threads:
                # The thread's waiting replies are now this client's, and go before
                # anything the new event brings.
                client.claim = attrs.evolve(client.claim, threads=client.claim.threads | {key})
                waiting = self.outbox.take(Claim(threads=frozenset({key})))
            self._events.start_soon(self._run_event, waiting, event, channel, link)

        async def on_bad_frame(error: WireError) -> None:
            await link.send(encode_error(error))

        def on_hello(hello: Hello) -> None:
            if not isinstance(hello, ClientHello):
                self._events.start_soon(on_bad_frame, WireError("a hello is the gateway's to send"))
                return
            # The client acknowledges every reply from now on (exactly once, not
            # at least once) and may name the platforms it serves.
            link.acks = True
            platforms = client.claim.platforms | set(hello.requested_platforms) - {"*"}
            client.claim = attrs.evolve(
                client.claim,
                platforms=frozenset(platforms),
                everything=client.claim.everything or "*" in hello.requested_platforms,
            )
            self._notify_waiting()
            self._events.start_soon(link.send, encode_hello(server_hello(hello)))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.heartbeat, self.ping_interval, self.pong_timeout)
                nursery.start_soon(link.settle_written)
                nursery.start_soon(self._hand_waiting, client)
                await link.read_frames(on_event, on_bad_frame, on_hello)
                nursery.cancel_scope.cancel()
        finally:
            if self._clients.get(connection_id) is client:
                del self._clients[connection_id]
            link.mark_closed()
            log.info("%s disconnected (%s)", connection_id, ws.closed)
            # when the server is stopping, the task that would read the peer's close
            # answer is cancelled already: send the close frame, do not wait for it
            stopping = trio.current_effective_deadline() == -math.inf
            with trio.move_on_after(STOP_CLOSE_SECS if stopping else CLOSE_GRACE_SECS) as scope:
                scope.shield = True
                await ws.aclose()

    def serves(self, platform: str) -> bool:
        """Whether a live client serves every thread of ``platform`` now."""
        return any(
            not c.link.closed and (c.claim.everything or platform in c.claim.platforms)
            for c in self._clients.values()
        )

    def platform_channel(self, connection_id: str) -> LinkChannel:
        """A channel for replies no client asked for (a scheduled run): each
        waits in the outbox until a client that serves its thread takes it (at
        once when one is connected). It cannot stream (``request`` answers None)."""
        return LinkChannel("server", connection_id, None, self._keep)

    async def _run_event(
        self, waiting: list[Parcel], event: InboundEvent, channel: LinkChannel, link: Link
    ) -> None:
        if waiting:
            await deliver_parcels(link, waiting, self._put_back)
        await run_event(self.sink, event, channel, link)

    async def _hand_waiting(self, client: _Client) -> None:
        """Write to ``client`` the waiting replies it serves, oldest first, from
        its first frame on (a ``client_hello`` comes first and decides how they
        are sent; a client that says nothing gets them after a moment), and
        whenever more wait or it claims another thread, until it closes."""
        with trio.move_on_after(FIRST_FRAME_WAIT_SECS):
            await client.link.first_frame.wait()
        while not client.link.closed:
            changed = self._waiting_changed
            parcels = self.outbox.take(client.claim)
            if parcels:
                await deliver_parcels(client.link, parcels, self._put_back)
            else:
                await changed.wait()

    def _notify_waiting(self) -> None:
        self._waiting_changed.set()
        self._waiting_changed = trio.Event()

    def _keep(self, reply: OutboundReply) -> None:
        """A reply its own connection could not write: it waits for a
        connection that serves its thread (one may be connected already)."""
        self.outbox.on_undeliverable(reply)
        self._notify_waiting()

    def _put_back(self, parcels: Sequence[Parcel]) -> None:
        self.outbox.put_back(parcels)
        self._notify_waiting()


def server_hello(hello: ClientHello) -> GatewayHello:
    """The server's answer to a client's ``client_hello``: every platform it
    asked for (``*`` when it named none) takes edits and acknowledges replies."""
    acked = PlatformCapabilities(send_ack=True, edit_ack=True)
    return GatewayHello(1, {name: acked for name in hello.requested_platforms or ("*",)})


def _describe(claim: Claim) -> str:
    if claim.everything:
        return "every thread"
    named = [*sorted(claim.platforms), *sorted(claim.threads)]
    return ", ".join(named) if named else "the threads it sends in"


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except OSError:
        return "a vanished peer"
    return f"{host}:{port}"


async def _answer(stream: trio.abc.Stream, response: HttpResponse) -> None:
    with trio.move_on_after(CLOSE_GRACE_SECS) as scope:
        scope.shield = True
        try:
            await stream.send_all(response.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await stream.aclose()


async def serve_websocket(
    settings: ServerSettings,
    sink: InboundSink,
    *,
    http_routes: Mapping[str, HttpHandler] | None = None,
    ws_routes: Mapping[str, WebSocketHandler] | None = None,
    outbox: Outbox | None = None,
    ping_interval: float = PING_INTERVAL_SECS,
    pong_timeout: float = PONG_TIMEOUT_SECS,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``[server]`` until cancelled: ``server = await nursery.start(serve_websocket, ...)``.

    Raises :class:`~broker.frontends.base.FrontendError` before listening when
    ``listen`` is malformed or is not loopback while ``token`` is empty, and
    ``OSError`` when the port cannot be bound. Cancelling it closes every
    connection and cancels the event tasks (stop the pool first to let turns
    end with their replies). ``outbox`` defaults to a :class:`MemoryOutbox`.
    """
    host, port = parse_listen(settings.listen)
    check_exposure(host, settings.token)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # name the address: "Address already in use" alone says too little
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"[server] listen = {settings.listen}: {reason}") from exc
    async with trio.open_nursery() as nursery:
        server = WebSocketServer(
            settings,
            sink,
            outbox if outbox is not None else MemoryOutbox(),
            host=host,
            port=listeners[0].socket.getsockname()[1],
            http_routes=http_routes or {},
            ws_routes=ws_routes or {},
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            event_nursery=nursery,
        )
        await nursery.start(trio.serve_listeners, server.handle_stream, listeners)
        log.info("serving %s", server.url)
        task_status.started(server)
        await trio.sleep_forever()
    raise AssertionError("unreachable")
