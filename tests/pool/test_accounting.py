"""Every turn counted once, and a crash-looping thread visible where people look.

In-process agents (:mod:`broker.testing.memory_agent`) under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from broker.chat.commands import status_text
from broker.config import BrokerConfig
from broker.ops.status import metrics_text, status_document
from broker.reply import Outcome, Prompt, TurnHandle
from broker.testing.memory_agent import MemoryAgentOptions, MemoryTransport
from tests.pool.test_timing import end_time, exactly, memory_pool


async def started(handle: TurnHandle) -> None:
    while not handle.transcript.started:
        await handle.wait_changed(handle.transcript.version)


async def test_every_turn_ends_in_one_outcome_and_the_outcomes_sum_to_submitted(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    sections = {"pool": {"max_sessions": 3, "queue_depth": 0}}
    async with memory_pool(make_config, transport, **sections) as pool:
        ends = [
            await pool.submit("cli:ok", Prompt("@reply ok")).result(),
            await pool.submit("cli:err", Prompt("@error -32603 boom")).result(),
            await pool.submit("cli:died", Prompt("@crash 3")).result(),
        ]
        transport.options = MemoryAgentOptions(crash_on_start=1)
        ends.append(await pool.submit("cli:nostart", Prompt("hi")).result())
        transport.options = MemoryAgentOptions()
        hanging = pool.submit("cli:cancel", Prompt("@hang"))
        await started(hanging)
        ends.append(await pool.submit("cli:cancel", Prompt("too soon")).result())
        assert await pool.cancel("cli:cancel")
        ends.append(await hanging.result())
        ends.append(await pool.submit("cli:slow", Prompt("@hang")).result())  # the ceiling
        running = [pool.submit(f"cli:busy{i}", Prompt("@hang")) for i in range(3)]
        for handle in running:
            await started(handle)
        ends.append(await pool.submit("cli:full", Prompt("hi")).result())
    ends += [await handle.result() for handle in running]  # the pool closed under them
    assert [end.outcome for end in ends] == [
        Outcome.COMPLETED,
        Outcome.ERROR,
        Outcome.AGENT_DIED,
        Outcome.START_FAILED,
        Outcome.BUSY,
        Outcome.CANCELLED,
        Outcome.TIMED_OUT,
        Outcome.POOL_FULL,
        Outcome.SHUTDOWN,
        Outcome.SHUTDOWN,
        Outcome.SHUTDOWN,
    ]
    counters = pool.counters
    assert counters.turns_submitted == len(ends)
    assert sum(counters.turns_ended.values()) == counters.turns_submitted
    for outcome in Outcome:
        expected = sum(1 for end in ends if end.outcome is outcome)
        assert counters.turns_ended[outcome.value] == expected, outcome
    metrics = metrics_text(pool.snapshot(), None, now=0.0, started_at=0.0)
    assert 'agent_broker_turns_total{outcome="shutdown"} 3' in metrics
    assert 'agent_broker_turns_total{outcome="agent_died"} 1' in metrics


async def test_a_message_right_after_a_crash_waits_out_the_backoff(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        end, crashed_at = await end_time(pool.submit("cli:1", Prompt("@crash 3")))
        assert end.outcome is Outcome.AGENT_DIED
        assert (await pool.submit("cli:1", Prompt("@reply back")).result()).text == "back"
        assert transport.agents[1].started_at == exactly(crashed_at + 0.5)  # not at once


async def test_a_crash_looping_thread_shows_in_status_metrics_and_lifts_with_reset(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport(MemoryAgentOptions(crash_on_start=1))
    sections = {"pool": {"max_restarts": 2, "restart_window_secs": 60}}
    async with memory_pool(make_config, transport, **sections) as pool:
        for _ in range(3):
            end = await pool.submit("cli:1", Prompt("hi")).result()
            assert end.outcome is Outcome.START_FAILED
        blocked = pool.snapshot().blocked_threads
        assert [b.thread_key for b in blocked] == ["cli:1"]
        assert blocked[0].secs_left == exactly(60) and "simulated crash" in blocked[0].detail
        status = status_text(pool, "cli:1")
        assert status.startswith("📊 Blocked until ") and "simulated crash" in status
        assert "resumes with your next message" not in status
        refused = await pool.submit("cli:1", Prompt("hi")).result()
        assert refused.outcome is Outcome.START_FAILED
        assert "keeps failing" in refused.reason and "/reset" in refused.reason
        assert "simulated crash" in refused.detail
        assert len(transport.agents) == 3  # the refused message started no agent
        metrics = metrics_text(pool.snapshot(), None, now=0.0, started_at=0.0)
        assert "agent_broker_blocked_threads 1" in metrics
        assert "agent_broker_crash_loops_total 1" in metrics
        document = status_document(pool.snapshot(), None, now=0.0, started_at=0.0)
        assert document["pool"]["blocked_threads"][0]["detail"] == blocked[0].detail
        transport.options = MemoryAgentOptions()
        await pool.reset("cli:1")
        assert pool.snapshot().blocked_threads == ()
        assert (await pool.submit("cli:1", Prompt("@reply free")).result()).text == "free"


@pytest.mark.parametrize("crash", ["@crash 3", "@delay 1\n@crash 3"])
async def test_max_restarts_counts_crashes_mid_turn_too(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock, crash: str
) -> None:
    transport = MemoryTransport()
    sections = {"pool": {"max_restarts": 1, "restart_window_secs": 60}}
    async with memory_pool(make_config, transport, **sections) as pool:
        for _ in range(2):
            assert (await pool.submit("cli:1", Prompt(crash)).result()).outcome is (
                Outcome.AGENT_DIED
            )
        refused = await pool.submit("cli:1", Prompt("hi")).result()
        assert "keeps failing" in refused.reason
