"""Delivery of one streamed turn against a recording channel, on trio's virtual clock."""

from __future__ import annotations

import trio

from broker.chat.delivery import Replier, deliver_turn
from broker.frontends.base import RESPONSE_TIMEOUT_SECS
from broker.frontends.wire import Command, GatewayResponse, OutboundReply
from broker.reply import Outcome, TextChunk, TurnEnd, TurnHandle, TurnStarted
from broker.testing.fake_gateway import make_event

SHIPPED_EDIT_INTERVAL = 1.5  # broker.toml's edit_interval_ms


class RecordingChannel:
    """Answers every request with a message id; records what was sent, and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, OutboundReply]] = []

    @property
    def connection_id(self) -> str:
        return "test"

    @property
    def frontend(self) -> str:
        return "server"

    async def send_reply(self, reply: OutboundReply) -> None:
        self.sent.append((trio.current_time(), reply))

    async def request(
        self, reply: OutboundReply, *, timeout: float = RESPONSE_TIMEOUT_SECS
    ) -> GatewayResponse | None:
        self.sent.append((trio.current_time(), reply))
        return GatewayResponse("req", True, message_id=f"m-{len(self.sent)}")


async def test_the_final_text_shows_as_soon_as_the_turn_ends_not_an_interval_later(
    autojump_clock: trio.abc.Clock,
) -> None:
    channel = RecordingChannel()
    handle = TurnHandle("telegram:1001")
    replier = Replier(make_event("hi"), channel)
    start = trio.current_time()

    async def agent() -> None:
        handle.push(TurnStarted())
        handle.push(TextChunk("Hel"))
        await trio.sleep(0.1)
        handle.push(TextChunk("lo"))
        handle.push(TurnEnd(Outcome.COMPLETED, text="Hello", stop_reason="end_turn"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            await deliver_turn(
                handle,
                replier,
                streaming=True,
                edit_interval=SHIPPED_EDIT_INTERVAL,
                response_timeout=RESPONSE_TIMEOUT_SECS,
                reactions=False,
            )
    final_at, final = channel.sent[-1]
    assert final.command is Command.EDIT_MESSAGE and final.text == "Hello"
    assert final_at - start == 0.1  # the turn's end, not the edit interval
    assert replier.finished
