"""One HTTP/1.1 request read from a trio stream with h11, for the fake HTTP servers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import h11
import trio


async def read_request(
    conn: h11.Connection, stream: trio.abc.ReceiveStream
) -> tuple[h11.Request, bytes] | None:
    """The next request's head and whole body; None when the peer closed the
    connection first. Raises h11.ProtocolError for a malformed request."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            return head, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


Header = tuple[str, str] | tuple[bytes, bytes]
Answer = tuple[int, Sequence[Header], bytes]


async def serve_requests(
    stream: trio.SocketStream, answer: Callable[[h11.Request, bytes], Answer]
) -> None:
    """Answer the requests on ``stream`` one after another (keep-alive) with
    ``answer(head, body) -> (status, headers, content)`` until the peer closes;
    ``content-length`` is added (except to a 204). Closes the stream at the end."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await read_request(conn, stream)
            if request is None:
                return
            status, headers, content = answer(*request)
            fields = [(_raw(k), _raw(v)) for k, v in headers]
            if status != 204:
                fields.append((b"content-length", str(len(content)).encode()))
            data = conn.send(h11.Response(status_code=status, headers=fields)) or b""
            data += conn.send(h11.Data(data=content)) or b""
            await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


def _raw(text: str | bytes) -> bytes:
    return text.encode("latin-1") if isinstance(text, str) else text
