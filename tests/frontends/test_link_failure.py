"""A link whose socket fails in an unexpected way closes that link only."""

from __future__ import annotations

from typing import Any, cast

import trio
import trio_websocket

from broker.frontends.base import Parcel
from broker.frontends.link import CLOSE_INTERNAL_ERROR, Link
from broker.frontends.wire import OutboundReply, ReplyChannelRef


class BrokenSocket:
    """A WebSocket whose writes fail with something other than ConnectionClosed."""

    def __init__(self) -> None:
        self.closed_with: tuple[int, str] | None = None

    async def send_message(self, message: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self.closed_with = (code, reason or "")


async def test_a_send_that_fails_unexpectedly_closes_only_its_link() -> None:
    for attempt in ("send", "deliver"):
        socket = BrokenSocket()
        link = Link(
            cast(trio_websocket.WebSocketConnection, socket), "ws-9", max_frame_bytes=1 << 20
        )
        with trio.fail_after(5):
            if attempt == "send":
                sent = await link.send("{}")
            else:
                reply = OutboundReply("evt_1", "telegram", ReplyChannelRef("c"), "hi")
                sent = await link.deliver(Parcel(reply))
        assert sent is False and link.closed
        assert socket.closed_with == (CLOSE_INTERNAL_ERROR, "internal error")
