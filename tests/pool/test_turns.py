"""Turns through the pool against real fake-agent processes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from broker.config import BrokerConfig
from broker.reply import Outcome, Prompt, Queued, TextChunk, TurnStarted
from broker.sessions.pool import open_pool
from tests.pool.conftest import ask


async def test_a_prompt_streams_text_and_ends_completed(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config()) as pool:
            handle = pool.submit("cli:1", Prompt("@reply Hello there, friend\n@chunks 3"))
            events = [event async for event in handle]
    assert isinstance(events[0], TurnStarted)
    assert sum(isinstance(e, TextChunk) for e in events) == 3
    end = events[-1]
    assert end == handle.transcript.end
    assert end.outcome is Outcome.COMPLETED and end.stop_reason == "end_turn"
    assert end.text == "Hello there, friend"


async def test_same_thread_follow_up_is_queued_and_answered_after(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config()) as pool:
            first = pool.submit("cli:1", Prompt("@delay 1\n@reply first"))
            second = pool.submit("cli:1", Prompt("@reply second"))
            events = [event async for event in second]
            assert (await first.result()).text == "first"
    assert events[0] == Queued(1)
    assert events[-1].text == "second"  # type: ignore[union-attr]
    assert pool.counters.spawned == 1


async def test_full_queue_answers_busy_at_once(make_config: Callable[..., BrokerConfig]) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config(pool={"queue_depth": 1})) as pool:
            running = pool.submit("cli:1", Prompt("@delay 2\n@reply one"))
            queued = pool.submit("cli:1", Prompt("@reply two"))
            with trio.fail_after(0.5):
                refused = await pool.submit("cli:1", Prompt("three")).result()
            assert refused.outcome is Outcome.BUSY
            assert "busy" in refused.reason
            assert (await running.result()).text == "one"
            assert (await queued.result()).text == "two"


async def test_agent_death_mid_turn_reaches_the_caller_at_once_with_stderr(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config()) as pool:
            assert (await ask(pool, "cli:1", "@reply warm")).ok
            handle = pool.submit("cli:1", Prompt("@say partial answer\n@crash 3"))
            await handle.wait_changed(1)  # TurnStarted
            while "partial" not in handle.transcript.text:
                await handle.wait_changed(handle.transcript.version)
            crashed_at = trio.current_time()
            end = await handle.result()
            latency = trio.current_time() - crashed_at
            assert end.outcome is Outcome.AGENT_DIED
            assert "exited with code 3" in end.reason
            assert "simulated crash" in end.detail
            assert end.text == "partial answer"
            assert latency < 1.0
            # the thread works again, resuming its ACP session
            again = await ask(pool, "cli:1", "@reply back")
            assert again.ok and again.text == "back"
            assert pool.counters.resumed == 1


@pytest.mark.parametrize("message_ids", [True, False], ids=["message-ids", "no-message-ids"])
async def test_chunks_sent_after_the_prompt_response_are_kept(
    make_config: Callable[..., BrokerConfig], message_ids: bool
) -> None:
    args = [] if message_ids else ["--no-message-ids"]
    config = make_config(args, timeouts={"drain_ms": 400})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            handle = pool.submit("cli:1", Prompt("@reply one two three four\n@chunks 4\n@late 100"))
            end = await handle.result()
            assert end.ok and end.text == "one two three "  # the reply is not held back
            while handle.transcript.late_text != "four":
                await handle.wait_changed(handle.transcript.version)
            assert not handle.transcript.closed  # until the next prompt of the thread
            assert (await ask(pool, "cli:1", "@reply next")).text == "next"
            assert handle.transcript.closed and handle.transcript.late_text == "four"


async def test_late_chunks_never_join_the_next_turns_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(timeouts={"drain_ms": 200})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            first = pool.submit("cli:1", Prompt("@reply AAA BBB\n@chunks 2\n@late 300"))
            second = pool.submit("cli:1", Prompt("@reply CCC\n@delay 0.5"))
            assert (await first.result()).text == "AAA "
            assert (await second.result()).text == "CCC"
            # BBB came 300 ms after its answer, after the next prompt: it is dropped
            assert first.transcript.closed and "BBB" not in first.transcript.late_text
