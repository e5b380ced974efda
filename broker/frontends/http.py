"""The HTTP side of the server port: request heads, plain responses, tokens.

The server reads each connection's request head itself, so one port serves
both WebSocket upgrades (handed on to trio-websocket with the bytes already
read replayed in front of the stream) and plain ``GET`` requests such as
``/healthz`` and ``/metrics``.
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable

import attrs
import trio

from broker import config
from broker.config import exposure_problem
from broker.frontends.base import FrontendError

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_SECS = 10.0

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class HttpRequest:
    """A parsed request head. Header names are lower case."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @property
    def is_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@attrs.frozen
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    def encode(self, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Status')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{name}: {value}" for name, value in extra_headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """Read up to the end of the request head; returns (head, bytes after it).

    Raises :class:`BadRequest` (431) for a head over ``MAX_HEAD_BYTES`` and
    (400) for a connection closed before the head ended.
    """
    buffer = b""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) >= MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        data = await stream.receive_some(4096)
        if not data:
            raise BadRequest(400, "connection closed before the request head ended")
        buffer += data
    if end + 4 > MAX_HEAD_BYTES:  # the bytes read decide, not the reads made
        raise BadRequest(431, "request head too large")
    return buffer[: end + 4], buffer[end + 4 :]


def parse_head(head: bytes) -> HttpRequest:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, f"bad request line {lines[0][:80]!r}")
    method, target, _ = parts
    split = urllib.parse.urlsplit(target)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise BadRequest(400, f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return HttpRequest(method, split.path or "/", urllib.parse.parse_qs(split.query), headers)


def token_status(request: HttpRequest, token: str) -> int | None:
    """None when ``request`` may pass, else the refusal: 401 without a token,
    403 with a wrong one. The token comes as ``?token=`` or
    ``Authorization: Bearer``; comparison takes constant time."""
    if not token:
        return None
    presented = request.query_value("token")
    auth = request.headers.get("authorization", "")
    if presented is None and auth[:7].lower() == "bearer ":
        presented = auth[7:].strip()
    if presented is None:
        return 401
    return None if hmac.compare_digest(presented.encode(), token.encode()) else 403


class StreamWithPrefix(trio.abc.Stream):
    """A stream that first yields ``prefix`` (bytes already read from
    ``inner``), then whatever ``inner`` yields."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` / ``"[::1]:8765"`` / ``"0.0.0.0:0"`` -> (host, port).

    The config's parser, with its error as a FrontendError."""
    try:
        return config.parse_listen(listen)
    except ValueError:
        raise FrontendError(
            f"[server] listen = {listen!r}: expected host:port, e.g. 127.0.0.1:8765"
        ) from None


def check_exposure(host: str, token: str) -> None:
    """Refuse to listen beyond loopback without a token."""
    problem = exposure_problem(host, token)
    if problem:
        raise FrontendError(problem)
