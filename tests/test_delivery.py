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

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
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


async def run_turn_with_late_text(channel: RecordingChannel, *, streaming: bool) -> TurnHandle:
    """A turn that ends, then gets late text 0.3 s later, then is closed."""
    handle = TurnHandle("telegram:1001")
    replier = Replier(make_event("hi"), channel)

    async def agent() -> None:
        handle.push(TurnStarted())
        handle.push(TextChunk("Hello"))
        handle.push(TurnEnd(Outcome.COMPLETED, text="Hello", stop_reason="end_turn"))
        await trio.sleep(0.3)
        handle.push_late(" and more")
        await trio.sleep(0.1)
        handle.close()
        handle.push_late(" never shown")  # the turn is closed: ignored

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent)
            await deliver_turn(
                handle,
                replier,
                streaming=streaming,
                edit_interval=SHIPPED_EDIT_INTERVAL,
                response_timeout=RESPONSE_TIMEOUT_SECS,
                reactions=False,
            )
    return handle


async def test_late_text_is_shown_as_an_edit_of_the_streamed_reply(
    autojump_clock: trio.abc.Clock,
) -> None:
    channel = RecordingChannel()
    await run_turn_with_late_text(channel, streaming=True)
    texts = [reply.text for _, reply in channel.sent]
    assert texts[-1] == "Hello and more"
    assert channel.sent[-1][1].command is Command.EDIT_MESSAGE
    assert channel.sent[-1][0] == 0.3  # shown when it came, not held for the interval


async def test_late_text_of_a_plain_reply_follows_as_a_short_continuation(
    autojump_clock: trio.abc.Clock,
) -> None:
    channel = RecordingChannel()
    await run_turn_with_late_text(channel, streaming=False)
    assert [(reply.command, reply.text) for _, reply in channel.sent] == [
        (None, "Hello"),
        (None, "… and more"),
    ]
