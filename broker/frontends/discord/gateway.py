"""The Discord gateway connection, kept up on trio-websocket.

:meth:`DiscordGateway.run` asks ``GET /gateway/bot`` for the URL and the
session start limit, connects with ``?v=10&encoding=json``, heartbeats from
HELLO on (the first beat after ``interval * jitter``, each with the last
sequence), IDENTIFYs (paced by :class:`~.protocol.IdentifyPacer`) or RESUMEs,
and hands every new dispatch to ``on_dispatch`` — a synchronous callable that
must only start work, never wait. A dispatch replayed a second time (same or
older sequence) is not handed on again.

When the connection ends it decides with :func:`~.protocol.after_close`:
RECONNECT, a zombie connection (no ACK before the next beat), INVALID_SESSION
``true`` or a resumable close -> RESUME on ``resume_gateway_url``;
INVALID_SESSION ``false`` -> IDENTIFY anew after 1–5 s; a fatal close (4004,
4010–4014) -> no more connections: :attr:`DiscordGateway.fatal` says why and
``run`` waits until cancelled. Other failures back off with jitter (the same
policy as the openab gateway client). Nothing but cancellation leaves ``run``.
"""

from __future__ import annotations

import enum
import json
import logging
import random
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import attrs
import trio
import trio_websocket

from broker.frontends.discord import protocol
from broker.frontends.discord.messages import obj
from broker.frontends.discord.protocol import Heartbeat, IdentifyPacer, Next, Op, Session
from broker.frontends.discord.rest import DiscordHTTPError, DiscordUnavailable, Rest
from broker.frontends.gateway import Backoff, BackoffPolicy, Dialer, websocket_dialer

log = logging.getLogger(__name__)

HELLO_TIMEOUT_SECS = 10.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
CLOSE_GRACE_SECS = 2.0

DEFAULT_BACKOFF = BackoffPolicy()
OnDispatch = Callable[[str, dict[str, Any]], None]


class State(enum.Enum):
    STARTING = "starting"
    CONNECTING = "connecting"
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    READY = "ready"
    WAITING = "waiting"  # backing off before the next connection
    STOPPED = "stopped"  # a fatal close: no more tries until restarted


def with_query(url: str) -> str:
    """``url`` with ``v=10&encoding=json`` as its query (and ``/`` as an empty path)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(
        parts._replace(path=parts.path or "/", query=protocol.GATEWAY_QUERY)
    )


@attrs.define
class _Ended:
    """How one connection ended."""

    next: Next
    reason: str
    delay: float | None = None  # None: the backoff decides


async def keep_heartbeat(
    beat: Heartbeat,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    seq: Callable[[], int | None],
    on_zombie: Callable[[], Awaitable[None]],
) -> None:
    """Send heartbeats as ``beat`` schedules them; when one is due and the last
    got no ACK, await ``on_zombie()`` and return. Runs until cancelled otherwise."""
    while True:
        await trio.sleep_until(beat.next_at)
        if beat.zombie:
            await on_zombie()
            return
        beat.beat(trio.current_time())
        await send(protocol.heartbeat(seq()))


class DiscordGateway:
    """One bot's gateway connection; see the module docstring."""

    def __init__(
        self,
        token: str,
        rest: Rest,
        on_dispatch: OnDispatch,
        *,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        rand: Callable[[], float] = random.random,
        dial: Dialer | None = None,
        intents: int = int(protocol.INTENTS),
        shard: tuple[int, int] | None = None,
    ) -> None:
        self._token = token
        self.shard = shard
        self.rest = rest
        self.on_dispatch = on_dispatch
        self.backoff = Backoff(backoff, rand)
        self.rand = rand
        self.intents = intents
        self._dial = dial or websocket_dialer(MAX_FRAME_BYTES)
        self.session = Session()
        self.pacer = IdentifyPacer()
        self.state = State.STARTING
        self.fatal = ""  # why the gateway stopped for good
        self.last_error = ""
        self.url = ""
        self.user: dict[str, Any] = {}
        self.application_id = ""
        self.connects = 0
        self.identifies = 0
        self.resumes = 0
        self.dispatches = 0
        self.heartbeats = 0
        self.heartbeat_lateness = 0.0  # the worst, in seconds
        self.zombies = 0
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._ready = trio.Event()
        self._changed = trio.Event()

    def _set(self, state: State) -> None:
        self.state = state
        self._changed.set()
        self._changed = trio.Event()

    async def wait_state(self, *states: State) -> None:
        while self.state not in states:
            await self._changed.wait()

    async def wait_ready(self) -> None:
        """Wait for the first READY (the bot's user is then known)."""
        await self._ready.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Connect and stay connected until cancelled (reports started at once)."""
        task_status.started()
        while not self.url:
            if await self._fetch_gateway() is Next.STOP:
                await self._stop()
        while True:
            resume = self.session.resumable
            url = self.session.resume_url if resume and self.session.resume_url else self.url
            started = trio.current_time()
            dispatches = self.dispatches
            ended = await self._connect_once(with_query(url), resume=resume)
            if ended.next is Next.STOP:
                self.fatal = ended.reason
                log.error("discord gateway stopped: %s", ended.reason)
                await self._stop()
            if ended.next is Next.IDENTIFY:
                self.session.forget()
            self.last_error = ended.reason
            lasted = trio.current_time() - started
            delay = self.backoff.after(lasted, self.dispatches - dispatches)
            if ended.delay is not None:
                delay = ended.delay
            log.info("discord gateway: %s; %s in %.1f s", ended.reason, ended.next.value, delay)
            self._set(State.WAITING)
            await trio.sleep(delay)

    async def _stop(self) -> NoReturn:
        self._set(State.STOPPED)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def _fetch_gateway(self) -> Next:
        """GET /gateway/bot; on failure wait the backoff (or say STOP for a bad token)."""
        try:
            data = await self.rest.call("GET", "/gateway/bot")
        except DiscordHTTPError as exc:
            if exc.status == 401:
                self.fatal = "authentication failed: [discord] token is wrong (HTTP 401)"
                log.error("discord gateway stopped: %s", self.fatal)
                return Next.STOP
            self.last_error = str(exc)
        except DiscordUnavailable as exc:
            self.last_error = str(exc)
        else:
            if isinstance(data, dict) and isinstance(data.get("url"), str):
                self.url = data["url"]
                limit = data.get("session_start_limit")
                if isinstance(limit, dict):
                    self.pacer.update(trio.current_time(), limit)
                return Next.IDENTIFY
            self.last_error = "GET /gateway/bot: no url in the answer"
        delay = self.backoff.after(None, 0)
        log.warning("discord: %s; asking again in %.1f s", self.last_error, delay)
        self._set(State.WAITING)
        await trio.sleep(delay)
        return Next.IDENTIFY

    async def _connect_once(self, url: str, *, resume: bool) -> _Ended:
        self._set(State.CONNECTING)
        try:
            async with self._dial(url) as ws:
                self.connects += 1
                self._ws = ws
                try:
                    return await self._serve(ws, resume=resume)
                except trio_websocket.ConnectionClosed as closed:
                    return self._closed(closed.reason)
                finally:
                    self._ws = None
        except trio_websocket.ConnectionClosed as closed:
            return self._closed(closed.reason)
        except (trio_websocket.HandshakeError, OSError) as exc:
            return _Ended(Next.RESUME if resume else Next.IDENTIFY, _describe(exc))
        except Exception as exc:  # a bug here must not end the front-end
            log.exception("discord gateway: connection failed")
            return _Ended(Next.RESUME if resume else Next.IDENTIFY, _describe(exc))

    def _closed(self, why: trio_websocket.CloseReason | None) -> _Ended:
        code = None if why is None else why.code
        reason = None if why is None else why.reason
        next_ = protocol.after_close(code, resumable_session=self.session.resumable)
        text = (
            protocol.close_reason(code)
            if code in protocol.FATAL_CLOSES
            else (f"closed with {code}" + (f" ({reason})" if reason else ""))
        )
        return _Ended(next_, text)

    async def _send(self, ws: trio_websocket.WebSocketConnection, payload: dict[str, Any]) -> None:
        await ws.send_message(json.dumps(payload, separators=(",", ":")))

    async def _receive(self, ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
        while True:
            message = await ws.get_message()
            try:
                payload = json.loads(message)
            except ValueError:
                log.warning("discord gateway: a frame that is not JSON, ignored")
                continue
            if isinstance(payload, dict):
                return payload

    async def _serve(self, ws: trio_websocket.WebSocketConnection, *, resume: bool) -> _Ended:
        with trio.move_on_after(HELLO_TIMEOUT_SECS):
            hello = await self._receive(ws)
        if hello.get("op") == Op.RECONNECT:
            return _Ended(Next.RESUME, "RECONNECT before HELLO", delay=0.0)
        d = hello.get("d")
        if hello.get("op") != Op.HELLO or not isinstance(d, dict):
            await _close(ws, protocol.CLOSE_RESUMABLE, "no HELLO")
            return _Ended(Next.RESUME if resume else Next.IDENTIFY, "no HELLO from the gateway")
        beat = Heartbeat.after_hello(
            trio.current_time(), int(d.get("heartbeat_interval", 41250)), self.rand()
        )
        zombie = False

        async def on_zombie() -> None:
            nonlocal zombie
            zombie = True
            self.zombies += 1
            log.warning("discord gateway: no heartbeat ACK, the connection is a zombie")
            await _close(ws, protocol.CLOSE_RESUMABLE, "zombie connection")

        async def send_beat(payload: dict[str, Any]) -> None:
            self.heartbeats += 1
            self.heartbeat_lateness = max(self.heartbeat_lateness, beat.lateness)
            await self._send(ws, payload)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_heartbeat, beat, send_beat, lambda: self.session.seq, on_zombie)
            if resume and self.session.session_id:
                self._set(State.RESUMING)
                self.resumes += 1
                await self._send(
                    ws, protocol.resume(self._token, self.session.session_id, self.session.seq)
                )
            else:
                self._set(State.IDENTIFYING)
                while (wait := self.pacer.wait(trio.current_time())) > 0:
                    log.info("discord gateway: identify limit, waiting %.1f s", wait)
                    await trio.sleep(wait)
                self.pacer.sent(trio.current_time())
                self.identifies += 1
                await self._send(ws, protocol.identify(self._token, self.intents, self.shard))
            try:
                ended = await self._read(ws, beat)
            except trio_websocket.ConnectionClosed as closed:
                if zombie:
                    ended = _Ended(Next.RESUME, "no heartbeat ACK (zombie connection)")
                else:
                    ended = self._closed(closed.reason)
            nursery.cancel_scope.cancel()
        return ended

    async def _read(self, ws: trio_websocket.WebSocketConnection, beat: Heartbeat) -> _Ended:
        while True:
            payload = await self._receive(ws)
            op = payload.get("op")
            if op == Op.DISPATCH:
                self._dispatch(payload)
            elif op == Op.HEARTBEAT:
                beat.requested(trio.current_time())
                await self._send(ws, protocol.heartbeat(self.session.seq))
            elif op == Op.HEARTBEAT_ACK:
                beat.ack()
            elif op == Op.RECONNECT:
                await _close(ws, protocol.CLOSE_RESUMABLE, "reconnect")
                return _Ended(Next.RESUME, "RECONNECT asked by Discord", delay=0.0)
            elif op == Op.INVALID_SESSION:
                await _close(ws, protocol.CLOSE_RESUMABLE, "invalid session")
                if payload.get("d") is True and self.session.resumable:
                    return _Ended(Next.RESUME, "INVALID_SESSION (resumable)", delay=0.0)
                self.session.forget()
                return _Ended(
                    Next.IDENTIFY, "INVALID_SESSION: identifying anew", delay=1 + 4 * self.rand()
                )

    def _dispatch(self, payload: dict[str, Any]) -> None:
        if not self.session.saw(payload.get("s")):
            log.info("discord gateway: dispatch %s replayed again, skipped", payload.get("s"))
            return
        kind = payload.get("t")
        d = payload.get("d")
        if not isinstance(kind, str) or not isinstance(d, dict):
            return
        self.dispatches += 1
        if kind == "READY":
            self.session.session_id = str(d.get("session_id") or "") or None
            self.session.resume_url = str(d.get("resume_gateway_url") or "") or None
            self.user = obj(d.get("user"))
            application = d.get("application")
            if isinstance(application, dict):
                self.application_id = str(application.get("id") or "")
            self.backoff.failures = 0
            self._ready.set()
            self._set(State.READY)
        elif kind == "RESUMED":
            self.backoff.failures = 0
            self._set(State.READY)
        try:
            self.on_dispatch(kind, d)
        except Exception:  # one bad event must not end the connection
            log.exception("discord: handling %s failed", kind)


async def _close(ws: trio_websocket.WebSocketConnection, code: int, reason: str) -> None:
    """Close with ``code`` (never 1000/1001, which would end the session); bounded, shielded."""
    with trio.move_on_after(CLOSE_GRACE_SECS) as scope:
        scope.shield = True
        await ws.aclose(code, reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"refused with HTTP {exc.status_code}"
    return f"{type(exc).__name__}: {exc or 'failed'}"
