"""What the fake model APIs share: an HTTP/1.1 server on loopback (trio + h11)
that records every request, and the sending of JSON and server-sent events."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import h11
import trio

from broker.testing.http11 import read_request

log = logging.getLogger(__name__)
T = TypeVar("T")


@attrs.frozen
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, the raw text when it is not JSON, None when empty


class FakeHttpServer:
    """The server; a subclass answers each request in :meth:`respond`. Start it
    with ``port = await nursery.start(fake.serve)``. Each connection is served in
    its own task; a client that hangs up mid-stream ends only that connection
    and is counted in :attr:`aborted_streams`."""

    name = "fake api"

    def __init__(self) -> None:
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.unknown: list[RecordedRequest] = []
        self.errors: list[str] = []
        self.aborted_streams = 0
        self.completed_streams = 0
        self.changed = trio.Event()

    async def respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> None:
        raise NotImplementedError

    def bodies(self, path: str) -> list[Any]:
        """The bodies of every request to ``path`` (query ignored), oldest first."""
        return [r.body for r in self.requests if r.path.split("?")[0] == path]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait (unbounded; wrap in ``trio.fail_after``) until ``condition()``
        holds; checked again after every request and every stream end."""
        while not condition():
            await self.changed.wait()

    def touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1 (a free port) until cancelled; reports the port."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._serve_connection, listeners, handler_nursery=nursery)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                raw = await read_request(conn, stream)
                if raw is None:
                    return
                request = _record(*raw)
                self.requests.append(request)
                self.touch()
                await self.respond(conn, stream, request)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.debug("%s: connection ended: %r", self.name, exc)
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def scripted(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        script: Callable[[dict[str, Any]], T],
        body: dict[str, Any],
        error: Callable[[str], Any],
    ) -> T | None:
        """``script(body)``; when it raises, the agent gets a 500 with ``error(reason)``
        as its body (and the reason is recorded in :attr:`errors`) instead of a hang."""
        try:
            return script(body)
        except Exception as exc:  # the agent must see an error, not a hang
            log.exception("%s: responder failed", self.name)
            self.errors.append(repr(exc))
            await send_json(conn, stream, 500, error(repr(exc)))
            return None

    def unknown_request(self, request: RecordedRequest) -> None:
        log.warning("%s: unknown request %s %s", self.name, request.method, request.path)
        self.unknown.append(request)

    async def stream_events(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        events: Iterable[tuple[str, Any, float]],
    ) -> None:
        """A 200 ``text/event-stream`` of ``(event name, JSON data, delay before it)``."""
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send(conn, stream, h11.Response(status_code=200, headers=headers))
        try:
            for name, payload, delay in events:
                if delay:
                    await trio.sleep(delay)
                frame = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
                await send(conn, stream, h11.Data(data=frame))
            await send(conn, stream, h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.aborted_streams += 1
            self.touch()
            raise
        self.completed_streams += 1
        self.touch()


def _record(head: h11.Request, body: bytes) -> RecordedRequest:
    text = body.decode("utf-8", "replace")
    parsed: Any = None
    if text:
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    return RecordedRequest(head.method.decode(), head.target.decode(), headers, parsed)


async def send(conn: h11.Connection, stream: trio.SocketStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def send_json(
    conn: h11.Connection, stream: trio.SocketStream, status: int, payload: Any
) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send(conn, stream, h11.Response(status_code=status, headers=headers))
    await send(conn, stream, h11.Data(data=data))
    await send(conn, stream, h11.EndOfMessage())
