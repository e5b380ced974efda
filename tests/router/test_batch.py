"""Dispatch ``batch`` end to end: WebSocket client -> server -> router -> pool -> fake agent."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from broker import sentences
from broker.config import BrokerConfig
from broker.frontends.wire import InboundEvent, Sender
from broker.testing.fake_gateway import make_event
from tests.router.stack import Client, Stack, connect, edits, running_broker

BATCH = {"dispatch": "batch", "queue_depth": 5}


def from_person(text: str, name: str, number: int) -> InboundEvent:
    event = make_event(text, platform="cli", sender_id=f"u{number}")
    return attrs.evolve(event, sender=Sender(f"u{number}", name, name.title(), False))


async def hold(stack: Stack, client: Client, first: InboundEvent, key: str) -> None:
    """Send ``first`` and return once its turn runs."""
    await client.send_event(first)
    while (snap := stack.pool.session_snapshot(key)) is None or snap.state != "busy":
        await stack.pool.wait_changed(stack.pool.version)


async def held_count(stack: Stack, key: str, count: int) -> None:
    while (snap := stack.pool.session_snapshot(key)) is None or snap.queue_length < count:
        await stack.pool.wait_changed(stack.pool.version)


async def test_messages_sent_while_the_agent_works_are_answered_as_one_turn_over_websocket(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        pool=BATCH,
        server={"streaming": True},
        render={"edit_interval_ms": 50},
        prompt={"sender_context": True},
    )
    people = ("alice", "bob", "carol")
    held = [from_person(f"note {n}", name, n) for n, name in enumerate(people, 1)]
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            first = make_event("@delay 2\n@reply first done", platform="cli")
            await hold(stack, client, first, "cli:1001")
            for event in held:
                await client.send_event(event)
            frames = [await client.settle(stack, event) for event in held]
            first_frames = await client.settle(stack, first)
    assert first_frames[-1].reply.text == "first done"
    # each held message is told at once; its note is edited as the batch grows to 3
    notes = [sentences.batched_note(n) for n in (1, 2, 3)]
    assert all(f[0].reply.text in notes for f in frames)
    assert all(notes[2] in {e.reply.text for e in f[:1] + edits(f)} for f in frames)
    assert frames[0][0].reply.text == notes[0]
    together = sentences.answered_together(3)
    assert [f[-1].reply.text for f in frames[:2]] == [together, together]
    answer = frames[2][-1].reply.text
    assert "[3 messages arrived while you were busy" in answer
    for n, name in enumerate(people, 1):
        assert f"Message from {name.title()} (username {name}, id u{n}) on cli" in answer
        assert f"note {n}" in answer
    assert stack.pool.counters.turns_ended["completed"] == 4


async def test_without_streaming_a_held_message_gets_a_note_then_its_one_final_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool=BATCH)
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            first = make_event("@delay 2\n@reply first done", platform="cli")
            await hold(stack, client, first, "cli:1001")
            held = [from_person(f"note {n}", "bob", n) for n in (1, 2)]
            for event in held:
                await client.send_event(event)
            await held_count(stack, "cli:1001", 2)
            cancel = await client.ask("/cancel", platform="cli")
            replies = [await client.settle(stack, event) for event in held]
    assert cancel == sentences.cancel_answer(True, 2)
    dropped = sentences.batch_dropped("/cancel")
    for frames in replies:
        texts = [f.reply.text for f in frames]
        assert texts[0] == sentences.batched_note(1) or texts[0] == sentences.batched_note(2)
        assert len(texts) == 2 and dropped in texts[1]
