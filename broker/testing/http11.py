"""One HTTP/1.1 request read from a trio stream with h11, for the fake HTTP servers."""

from __future__ import annotations

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
