"""chat.update pacing: one edit a second per channel, the newest text of each message."""

from __future__ import annotations

import trio
import trio.testing

from broker.frontends.slack.pacing import EditPacer
from broker.frontends.wire import Command, OutboundReply, ReplyChannelRef


def edit(ts: str, text: str, channel: str = "C1") -> OutboundReply:
    return OutboundReply(
        ts, "slack", ReplyChannelRef(channel, f"{channel}:1.0"), text, Command.EDIT_MESSAGE
    )


def test_a_newer_text_replaces_the_waiting_one_in_its_place() -> None:
    pacer = EditPacer(1.0)
    pacer.offer(edit("m1", "a"))
    pacer.offer(edit("m2", "x"))
    pacer.offer(edit("m1", "ab"))
    assert pacer.superseded == 1
    first = pacer.take(0.0)
    assert first is not None and (first.reply_to, first.text) == ("m1", "ab")
    assert pacer.take(0.5) is None and pacer.wait(0.5) == 0.5
    second = pacer.take(1.0)
    assert second is not None and second.text == "x"
    assert pacer.wait(1.5) == 0.5  # nothing waits, but the interval still runs
    assert pacer.wait(2.0) is None


async def test_edits_of_one_channel_go_one_a_second_and_the_final_text_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = EditPacer(1.0)
    sent: list[tuple[float, str]] = []

    async def sender() -> None:
        while (wait := pacer.wait(trio.current_time())) is not None:
            await trio.sleep(wait)
            taken = pacer.take(trio.current_time())
            if taken is not None:
                sent.append((trio.current_time(), taken.text))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(1, 6):
            pacer.offer(edit("m1", "x" * n))
            if n == 1:
                nursery.start_soon(sender)
            await trio.sleep(0.3)
        pacer.offer(edit("m1", "final"))
    assert [(round(at - start, 3), text) for at, text in sent] == [
        (0.0, "x"),
        (1.0, "xxxx"),
        (2.0, "final"),
    ]
