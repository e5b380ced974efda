"""Dispatch ``batch``: held messages go to the agent as one prompt, under the autojump clock.

The agents are in-process (:mod:`broker.testing.memory_agent`), so the prompt
the agent received is asserted exactly and every time is virtual.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from broker import sentences
from broker.chat.commands import SlashCommand, run_command
from broker.config import BrokerConfig
from broker.reply import Image, Outcome, Person, Prompt, TurnEnd, TurnHandle
from broker.sessions.batch import may_hold, merge_prompts, prompt_bytes, together_end
from broker.testing.memory_agent import MemoryAgentOptions, MemoryTransport
from tests.pool.test_timing import end_time, exactly, memory_pool

BATCH = {"dispatch": "batch", "queue_depth": 5}
KEY = "cli:1"


def said(name: str, text: str, at: str, *, images: tuple[Image, ...] = ()) -> Prompt:
    person = Person(f"u-{name}", name)
    context = f"[Message from {name.title()} (username {name}, id u-{name}) on cli]"
    return Prompt(text, images, context, person, sent_at=at)


async def ended(handles: list[TurnHandle]) -> list[TurnEnd]:
    with trio.fail_after(120):
        return [await handle.result() for handle in handles]


async def test_batch_merges_three_held_messages_into_one_prompt_with_their_senders(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport, pool=BATCH) as pool:
        assert (await pool.submit(KEY, Prompt("@reply warm")).result()).ok
        started = trio.current_time()
        running = pool.submit(KEY, Prompt("@delay 10\n@reply long"))
        await trio.sleep(1)
        held = [
            pool.submit(KEY, said("alice", "is the build green?", "2026-11-23T08:00:01Z")),
            pool.submit(KEY, said("bob", "and the docs?", "2026-11-23T08:00:02Z")),
            pool.submit(KEY, said("carol", "ship it", "2026-11-23T08:00:03Z")),
        ]
        # every held message is told at once, and each note counts the whole batch
        assert [h.transcript.batched for h in held] == [3, 3, 3]
        assert [h.transcript.queued_position for h in held] == [1, 1, 1]
        end, at = await end_time(running)
        assert end.text == "long" and at == exactly(started + 10)
        answer, *others = reversed(await ended(held))
        agent = transport.agents[0]
        assert len(agent.prompts) == 3  # warm, long, and the one batch
        assert agent.prompts[2] == [
            {
                "type": "text",
                "text": (
                    "[3 messages arrived while you were busy; here they are in order.]\n\n"
                    "--- message 1 of 3, sent 2026-11-23T08:00:01Z ---\n"
                    "[Message from Alice (username alice, id u-alice) on cli]\n"
                    "is the build green?\n\n"
                    "--- message 2 of 3, sent 2026-11-23T08:00:02Z ---\n"
                    "[Message from Bob (username bob, id u-bob) on cli]\n"
                    "and the docs?\n\n"
                    "--- message 3 of 3, sent 2026-11-23T08:00:03Z ---\n"
                    "[Message from Carol (username carol, id u-carol) on cli]\n"
                    "ship it"
                ),
            }
        ]
        assert answer.ok and answer.text.startswith("echo: [3 messages arrived")
        assert others == [TurnEnd(Outcome.COMPLETED, sentences.answered_together(3))] * 2
        assert pool.counters.turns_ended["completed"] == 5  # every message ended once


@pytest.mark.parametrize(
    ("command", "answer"),
    [("cancel", sentences.cancel_answer(True, 3)), ("reset", sentences.RESET_DONE)],
)
async def test_cancel_and_reset_drop_the_held_batch_with_a_note_to_each_sender(
    make_config: Callable[..., BrokerConfig],
    autojump_clock: trio.testing.MockClock,
    command: str,
    answer: str,
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport, pool=BATCH) as pool:
        running = pool.submit(KEY, Prompt("@delay 30\n@reply never"))
        await trio.sleep(2)
        held = [pool.submit(KEY, said(n, "hello", "")) for n in ("alice", "bob", "carol")]
        assert await run_command(SlashCommand(command), pool, KEY) == answer
        dropped = TurnEnd(Outcome.CANCELLED, reason=sentences.batch_dropped(f"/{command}"))
        assert await ended(held) == [dropped] * 3
        end, at = await end_time(running)
        assert end.outcome is Outcome.CANCELLED and at == exactly(2)
        await trio.sleep(1)
        assert len(transport.agents[0].prompts) == 1  # the dropped batch never reached it
        assert (await pool.submit(KEY, Prompt("@reply after")).result()).text == "after"


async def test_a_message_beyond_max_batch_bytes_gets_the_busy_reply_and_the_batch_goes_on(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    pool_config = {**BATCH, "max_batch_bytes": 20}
    async with memory_pool(make_config, transport, pool=pool_config) as pool:
        running = pool.submit(KEY, Prompt("@delay 5\n@reply long"))
        await trio.sleep(1)
        first = pool.submit(KEY, said("alice", "x" * 12, ""))  # 12 bytes held
        too_much = pool.submit(KEY, said("bob", "y" * 9, ""))  # 21 > 20
        fits = pool.submit(KEY, said("carol", "z" * 8, ""))  # exactly 20
        assert too_much.done
        end = await too_much.result()
        assert end == TurnEnd(Outcome.BUSY, reason=sentences.busy_reason(1))
        assert (await running.result()).text == "long"
        assert (await fits.result()).ok
        assert (await first.result()).text == sentences.answered_together(2)
        batch_text = transport.agents[0].prompts[1][0]["text"]
        assert "x" * 12 in batch_text and "z" * 8 in batch_text and "y" * 9 not in batch_text


async def test_held_images_go_with_the_batch_and_a_single_held_message_is_not_wrapped(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport(MemoryAgentOptions(images=True))
    png = Image("iVBORw0KGgo=", "image/png", "a.png")
    async with memory_pool(make_config, transport, pool=BATCH) as pool:
        running = pool.submit(KEY, Prompt("@delay 5\n@reply long"))
        await trio.sleep(1)
        alone = pool.submit(KEY, Prompt("only me"))
        assert alone.transcript.batched == 1
        assert (await alone.result()).text == "echo: only me"
        running = pool.submit(KEY, Prompt("@delay 5\n@reply long"))
        await trio.sleep(1)
        held = [
            pool.submit(KEY, said("alice", "look", "", images=(png,))),
            pool.submit(KEY, said("bob", "and this", "", images=(png, png))),
        ]
        await ended([running, *held])
        prompts = transport.agents[0].prompts
        assert prompts[1] == [{"type": "text", "text": "only me"}]
        blocks = prompts[3]
        image = {"type": "image", "data": png.data_base64, "mimeType": "image/png"}
        assert blocks[1:] == [image, image, image]
        assert "--- message 1 of 2, with 1 image (after the text) ---" in blocks[0]["text"]
        assert "--- message 2 of 2, with 2 images (after the text) ---" in blocks[0]["text"]


async def test_queue_mode_keeps_each_waiting_message_its_own_turn(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        running = pool.submit(KEY, Prompt("@delay 5\n@reply long"))
        await trio.sleep(1)
        waiting = [pool.submit(KEY, Prompt(text)) for text in ("one", "two")]
        assert [h.transcript.batched for h in waiting] == [0, 0]
        assert pool.drop_held(KEY, "/cancel") == 0
        ends = await ended([running, *waiting])
        assert [e.text for e in ends] == ["long", "echo: one", "echo: two"]


def test_a_failed_batch_turn_tells_every_message_of_it() -> None:
    end = TurnEnd(Outcome.TIMED_OUT, "partial", reason=sentences.timeout_reason(60))
    other = together_end(end, 3)
    assert other.outcome is Outcome.TIMED_OUT and other.text == ""
    assert other.reason == sentences.failed_together(3, sentences.timeout_reason(60))
    assert "together with 2 other messages" in other.reason


@pytest.mark.parametrize(
    ("ahead", "held", "new", "allowed"),
    [(0, 0, 10**9, True), (1, 0, 20, True), (1, 0, 21, False), (2, 15, 5, True), (6, 0, 1, False)],
)
def test_may_hold_counts_messages_and_bytes(ahead: int, held: int, new: int, allowed: bool) -> None:
    assert may_hold(ahead, held, new, queue_depth=5, max_batch_bytes=20) is allowed


def test_prompt_bytes_counts_text_in_utf8_and_images_decoded() -> None:
    assert prompt_bytes(Prompt("é", (Image("AAAA", "image/png"),))) == 2 + 3


def test_a_prompt_without_sender_context_is_marked_with_its_author() -> None:
    merged = merge_prompts([Prompt("a", author=Person("7", "ann")), Prompt("b")])
    assert merged.text == (
        "[2 messages arrived while you were busy; here they are in order.]\n\n"
        "--- message 1 of 2 ---\n[Message from ann (id 7)]\na\n\n"
        "--- message 2 of 2 ---\nb"
    )
    assert merged.author is None and merged.context is None
