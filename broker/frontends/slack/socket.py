"""Socket Mode: the WebSocket connections Slack delivers events on.

:class:`SocketMode` asks for a URL (``apps.connections.open`` with the app
token, through the ``open_url`` it is given), connects, waits for ``hello``
and reads envelopes. Every envelope is acknowledged with its
``envelope_id`` the moment it is read, before it is handed on (Slack
redelivers what is not acknowledged within 3 s); the reader does nothing
else that could wait, so a busy broker acknowledges as fast as an idle one.

When Slack sends ``disconnect`` (``refresh_requested``, ``warning``...), a new
connection is opened while the old one keeps reading; the old one is closed
once the new one has said ``hello``, so no envelope falls between the two.
Other failures (a refused dial, a dropped connection, no ``hello`` in time,
no pong) reconnect with the gateway client's backoff: 1 s doubling to 30 s,
with jitter. An ``open_url`` that raises a fatal :class:`SlackApiError`
(``invalid_auth``...) stops :meth:`SocketMode.run` for good: no retry mends
a bad token, and :attr:`SocketMode.fatal` says why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio
import trio_websocket

from broker.frontends.gateway import Backoff, BackoffPolicy
from broker.frontends.slack.web import SlackApiError, SlackUnavailable

log = logging.getLogger(__name__)

DEFAULT_BACKOFF = BackoffPolicy()

CONNECT_TIMEOUT_SECS = 10.0
HELLO_TIMEOUT_SECS = 10.0
CLOSE_TIMEOUT_SECS = 2.0
PING_INTERVAL_SECS = 30.0
PONG_TIMEOUT_SECS = 10.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

Dialer = Callable[[str], AbstractAsyncContextManager[trio_websocket.WebSocketConnection]]


class SocketModeError(Exception):
    """A Socket Mode message that cannot be read."""


@attrs.frozen
class Hello:
    num_connections: int


@attrs.frozen
class Disconnect:
    reason: str


@attrs.frozen
class Envelope:
    """One delivery: ``type`` is ``events_api``, ``interactive`` or ``slash_commands``."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    retry_attempt: int = 0
    retry_reason: str = ""


@attrs.frozen
class Other:
    type: str


SocketMessage = Hello | Disconnect | Envelope | Other


def parse_message(text: str | bytes) -> SocketMessage:
    """Read one Socket Mode message; raises :class:`SocketModeError`."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise SocketModeError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SocketModeError("not a JSON object")
    kind = raw.get("type")
    if kind == "hello":
        count = raw.get("num_connections")
        return Hello(count if isinstance(count, int) else 1)
    if kind == "disconnect":
        return Disconnect(str(raw.get("reason") or "unknown"))
    envelope_id = raw.get("envelope_id")
    if isinstance(envelope_id, str) and envelope_id:
        payload = raw.get("payload")
        attempt = raw.get("retry_attempt")
        return Envelope(
            envelope_id,
            str(kind or ""),
            payload if isinstance(payload, dict) else {},
            attempt if isinstance(attempt, int) else 0,
            str(raw.get("retry_reason") or ""),
        )
    return Other(str(kind))


def ack(envelope_id: str) -> str:
    """The acknowledgement of an envelope."""
    return json.dumps({"envelope_id": envelope_id})


def _dial(url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
    return trio_websocket.open_websocket_url(
        url,
        max_message_size=MAX_MESSAGE_BYTES,
        connect_timeout=CONNECT_TIMEOUT_SECS,
        disconnect_timeout=CLOSE_TIMEOUT_SECS,
    )


@attrs.define(eq=False)
class _Connection:
    number: int
    greeted: bool = False
    ended: bool = False
    asked_to_go: bool = False
    started_at: float | None = None
    envelopes: int = 0
    settled: trio.Event = attrs.field(factory=trio.Event)  # hello, or ended before it
    needs_successor: trio.Event = attrs.field(factory=trio.Event)  # disconnect, or ended
    retire: trio.Event = attrs.field(factory=trio.Event)  # a successor said hello


class SocketMode:
    """Socket Mode connections kept up by :meth:`run`; see the module docstring.

    ``on_envelope`` is called synchronously for each envelope after its ack
    (it must only start a task).
    """

    def __init__(
        self,
        open_url: Callable[[], Awaitable[str]],
        on_envelope: Callable[[Envelope], None],
        *,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        dial: Dialer = _dial,
        ping_interval: float = PING_INTERVAL_SECS,
        pong_timeout: float = PONG_TIMEOUT_SECS,
        hello_timeout: float = HELLO_TIMEOUT_SECS,
    ) -> None:
        self._open_url = open_url
        self._on_envelope = on_envelope
        self.backoff = Backoff(backoff)
        self._dial = dial
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.hello_timeout = hello_timeout
        self.connects = 0  # connections that said hello
        self.envelopes = 0
        self.acks_failed = 0
        self.refreshes = 0  # disconnect messages followed
        self.last_error = ""
        self.fatal = ""  # set once: the reason run() stopped
        self._numbers = 0
        self._live: set[_Connection] = set()
        self._changed = trio.Event()

    @property
    def connected(self) -> bool:
        return any(c.greeted and not c.ended for c in self._live)

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._live if c.greeted and not c.ended)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of connection state."""
        await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and reconnect until cancelled or a fatal error (then return,
        with :attr:`fatal` set and every connection closed). Reports started
        at once, before the first connection."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            current: _Connection | None = None
            while True:
                try:
                    url = await self._open_url()
                except SlackApiError as exc:
                    if exc.fatal:
                        self.fatal = self.last_error = exc.error
                        log.error(
                            "slack: Socket Mode stopped: %s (check [slack] app_token)", exc.error
                        )
                        self._notify()
                        nursery.cancel_scope.cancel()
                        return
                    await self._wait_after_failure(str(exc))
                    continue
                except SlackUnavailable as exc:
                    await self._wait_after_failure(str(exc))
                    continue
                self._numbers += 1
                conn = _Connection(self._numbers)
                self._live.add(conn)
                nursery.start_soon(self._serve, conn, url)
                await conn.settled.wait()
                if not conn.greeted:
                    await self._wait_after_failure(self.last_error or "no hello")
                    continue
                if current is not None:
                    current.retire.set()
                current = conn
                await conn.needs_successor.wait()
                if conn.asked_to_go and not conn.ended:
                    self.refreshes += 1
                    continue  # at once; the old connection reads on meanwhile
                lasted = None if conn.started_at is None else trio.current_time() - conn.started_at
                delay = self.backoff.after(lasted, conn.envelopes)
                log.info("slack: Socket Mode reconnecting in %.1f s", delay)
                await trio.sleep(delay)

    async def _wait_after_failure(self, why: str) -> None:
        self.last_error = why
        delay = self.backoff.after(None, 0)
        log.warning("slack: Socket Mode: %s; retrying in %.1f s", why, delay)
        self._notify()
        await trio.sleep(delay)

    async def _serve(self, conn: _Connection, url: str) -> None:
        try:
            async with self._dial(url) as ws, trio.open_nursery() as nursery:
                nursery.start_soon(self._close_when_retired, ws, conn)
                nursery.start_soon(self._hello_deadline, ws, conn)
                nursery.start_soon(self._heartbeat, ws, conn)
                await self._read(ws, conn)
                nursery.cancel_scope.cancel()
        except (trio_websocket.HandshakeError, trio_websocket.ConnectionClosed, OSError) as exc:
            self.last_error = _describe(exc)
            log.warning("slack: Socket Mode connection %d: %s", conn.number, self.last_error)
        except Exception as exc:  # a bug here must not end Slack for good
            self.last_error = _describe(exc)
            log.exception("slack: Socket Mode connection %d failed", conn.number)
        finally:
            conn.ended = True
            self._live.discard(conn)
            conn.settled.set()
            conn.needs_successor.set()
            self._notify()

    async def _read(self, ws: trio_websocket.WebSocketConnection, conn: _Connection) -> None:
        while True:
            try:
                text = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            try:
                message = parse_message(text)
            except SocketModeError as exc:
                log.warning("slack: connection %d: unreadable message: %s", conn.number, exc)
                continue
            if isinstance(message, Envelope):
                try:
                    await ws.send_message(ack(message.envelope_id))
                except trio_websocket.ConnectionClosed:
                    self.acks_failed += 1  # Slack sends it again; the duplicate is dropped
                conn.envelopes += 1
                self.envelopes += 1
                self._on_envelope(message)
            elif isinstance(message, Hello):
                if not conn.greeted:
                    conn.greeted = True
                    conn.started_at = trio.current_time()
                    self.connects += 1
                    self.last_error = ""
                    log.info(
                        "slack: Socket Mode connection %d up (%d open)",
                        conn.number,
                        message.num_connections,
                    )
                    conn.settled.set()
                    self._notify()
            elif isinstance(message, Disconnect):
                log.info("slack: connection %d: disconnect (%s)", conn.number, message.reason)
                conn.asked_to_go = True
                conn.needs_successor.set()

    async def _close_when_retired(
        self, ws: trio_websocket.WebSocketConnection, conn: _Connection
    ) -> None:
        await conn.retire.wait()
        log.info("slack: closing connection %d, its successor is up", conn.number)
        with trio.move_on_after(CLOSE_TIMEOUT_SECS):
            await ws.aclose(1000, "replaced")

    async def _hello_deadline(
        self, ws: trio_websocket.WebSocketConnection, conn: _Connection
    ) -> None:
        with trio.move_on_after(self.hello_timeout):
            await conn.settled.wait()
        if not conn.greeted:
            self.last_error = f"no hello within {self.hello_timeout:g} s"
            with trio.move_on_after(CLOSE_TIMEOUT_SECS):
                await ws.aclose(1000, "no hello")

    async def _heartbeat(self, ws: trio_websocket.WebSocketConnection, conn: _Connection) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            with trio.move_on_after(self.pong_timeout) as scope:
                try:
                    await ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
            if scope.cancelled_caught:
                self.last_error = f"no pong within {self.pong_timeout:g} s"
                log.warning("slack: connection %d: %s", conn.number, self.last_error)
                with trio.move_on_after(CLOSE_TIMEOUT_SECS):
                    await ws.aclose(1011, "heartbeat timeout")
                return


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"refused with HTTP {exc.status_code}"
    return f"{type(exc).__name__}: {exc or exc.__cause__ or 'failed'}"
