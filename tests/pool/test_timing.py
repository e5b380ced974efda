"""The pool's and session's clocks, in-process under trio's autojump clock.

The agents are :class:`~broker.testing.memory_agent.MemoryAgent` s behind the
session's transport seam: real ACP lines, real client, no process. Virtual
time only moves when every task waits, so each assertion names the exact
moment something happened (within float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from broker import sentences
from broker.config import BrokerConfig
from broker.reply import Outcome, Prompt, TurnEnd, TurnHandle
from broker.sessions.pool import Pool, open_pool, session_settings
from broker.testing.memory_agent import MemoryAgentOptions, MemoryTransport


def exactly(value: float) -> Any:
    return pytest.approx(value, abs=1e-6)


def memory_pool(
    make_config: Callable[..., BrokerConfig], transport: MemoryTransport, **sections: Any
) -> AbstractAsyncContextManager[Pool]:
    timeouts = {"turn_hard_secs": 60, "cancel_grace_secs": 5, "stop_grace_secs": 2, "drain_ms": 0}
    timeouts.update(sections.pop("timeouts", {}))
    config = make_config(timeouts=timeouts, **sections)
    settings = attrs.evolve(session_settings(config), run_agent=transport)
    return open_pool(config, settings=settings)


async def end_time(handle: TurnHandle) -> tuple[TurnEnd, float]:
    end = await handle.result()
    return end, trio.current_time()


def cancels(transport: MemoryTransport, index: int = 0) -> list[float]:
    return [at for at, method in transport.agents[index].received if method == "session/cancel"]


async def test_the_hard_ceiling_cancels_at_the_limit_and_the_agent_answers_at_once(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        assert (await pool.submit("cli:1", Prompt("@reply warm")).result()).ok
        started = trio.current_time()
        end, at = await end_time(pool.submit("cli:1", Prompt("@hang")))
        assert end.outcome is Outcome.TIMED_OUT
        assert end.reason == sentences.timeout_reason(60)
        assert cancels(transport) == [exactly(started + 60)]
        assert at == exactly(started + 60)
        assert len(transport.agents) == 1  # an agent that honours cancel keeps running


async def test_an_agent_ignoring_the_cancel_is_stopped_after_the_grace_and_replaced(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        started = trio.current_time()
        end, at = await end_time(pool.submit("cli:1", Prompt("@hang-hard")))
        assert end.outcome is Outcome.TIMED_OUT
        assert cancels(transport) == [exactly(started + 60)]
        assert at == exactly(started + 65)  # the ceiling, then the 5 s grace
        assert "did not stop within 5 s" in end.reason
        assert (await pool.submit("cli:1", Prompt("@reply again")).result()).text == "again"
        assert len(transport.agents) == 2


async def test_cancel_waits_the_grace_for_an_agent_that_ignores_it_and_no_longer(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        handle = pool.submit("cli:1", Prompt("@hang-hard"))
        await trio.sleep(7)
        asked = trio.current_time()
        assert await pool.cancel("cli:1")
        end, at = await end_time(handle)
        assert end.outcome is Outcome.CANCELLED
        assert cancels(transport) == [exactly(asked)]
        assert at == exactly(asked + 5)


async def test_an_idle_session_is_suspended_exactly_when_its_ttl_runs_out(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport, pool={"idle_ttl_secs": 100}) as pool:
        assert (await pool.submit("cli:1", Prompt("@delay 3\n@reply a")).result()).ok
        idle_from = trio.current_time()
        await trio.sleep_until(idle_from + 99.5)
        assert pool.session_snapshot("cli:1") is not None
        while pool.counters.idle_suspended == 0:
            await pool.wait_changed(pool.version)
        assert trio.current_time() == exactly(idle_from + 100)
        assert pool.session_snapshot("cli:1") is None and pool.is_suspended("cli:1")


async def test_a_crash_with_turns_left_restarts_after_the_backoff_not_before(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport()
    async with memory_pool(make_config, transport) as pool:
        crashing = pool.submit("cli:1", Prompt("@delay 2\n@crash 3"))
        follow_up = pool.submit("cli:1", Prompt("@reply after"))
        end, crashed_at = await end_time(crashing)
        assert end.outcome is Outcome.AGENT_DIED
        assert "exited with code 3" in end.reason
        assert (await follow_up.result()).text == "after"
        assert [a.started_at for a in transport.agents][1] == exactly(crashed_at + 0.5)


async def test_a_crash_looping_thread_is_blocked_after_max_restarts(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport(MemoryAgentOptions(crash_on_start=1))
    async with memory_pool(
        make_config, transport, pool={"max_restarts": 2, "restart_window_secs": 60}
    ) as pool:
        for _ in range(3):
            assert (await pool.submit("cli:1", Prompt("hi")).result()).outcome is (
                Outcome.START_FAILED
            )
        refused = await pool.submit("cli:1", Prompt("hi")).result()
        assert "keeps failing" in refused.reason
        assert len(transport.agents) == 3


async def test_the_reply_is_not_held_for_the_drain_window_but_the_next_prompt_is(
    make_config: Callable[..., BrokerConfig], autojump_clock: trio.testing.MockClock
) -> None:
    transport = MemoryTransport(MemoryAgentOptions(message_ids=True))
    async with memory_pool(make_config, transport, timeouts={"drain_ms": 5000}) as pool:
        assert (await pool.submit("cli:1", Prompt("@reply warm")).result()).ok
        await trio.sleep(10)  # past the warm-up's drain window
        started = trio.current_time()
        first = pool.submit("cli:1", Prompt("@delay 1\n@reply one two\n@chunks 2\n@late 2000"))
        second = pool.submit("cli:1", Prompt("@reply b"))
        end, at = await end_time(first)
        assert at == exactly(started + 1)  # the answer, not the answer plus 5 s
        assert end.text == "one "
        assert (await second.result()).text == "b"
        prompts = [t for t, method in transport.agents[0].received if method == "session/prompt"]
        assert prompts[-1] == exactly(started + 1 + 5)
        assert first.transcript.late_text == "two"  # 2 s after the answer: its own reply
        assert first.transcript.closed
