"""Hard ceilings, cancels, failed starts and context resets, against real agents."""

from __future__ import annotations

from collections.abc import Callable

import trio

from broker.config import BrokerConfig
from broker.reply import Outcome, Prompt
from broker.sessions.pool import Pool, open_pool
from tests.pool.conftest import ask
from tests.pool.test_isolation import started


async def test_a_stream_that_never_ends_is_ended_by_the_hard_ceiling_and_the_thread_works_again(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(timeouts={"turn_hard_secs": 1, "cancel_grace_secs": 0.5})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await ask(pool, "cli:1", "@say partial\n@hang-hard")
            assert end.outcome is Outcome.TIMED_OUT
            assert end.text == "partial"
            assert "1-second limit" in end.reason and "was stopped" in end.reason
            again = await ask(pool, "cli:1", "@reply alive")
            assert again.ok and again.text == "alive"
            assert pool.counters.timed_out == 1 and pool.counters.resumed == 1


async def agent_pid(pool: Pool, key: str) -> int:
    snapshot = pool.session_snapshot(key)
    assert snapshot is not None and snapshot.pid is not None
    return snapshot.pid


async def test_an_agent_that_honours_cancel_keeps_running_after_the_ceiling(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        timeouts={"turn_hard_secs": 1, "cancel_grace_secs": 5},
        agent={"restart_after_cancel": False},
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            handle = pool.submit("cli:1", Prompt("@hang"))
            await started(handle)
            pid = await agent_pid(pool, "cli:1")
            end = await handle.result()
            assert end.outcome is Outcome.TIMED_OUT and end.stop_reason == "cancelled"
            assert (await ask(pool, "cli:1", "@reply same agent")).ok
            assert await agent_pid(pool, "cli:1") == pid


async def test_after_a_cancelled_turn_a_fresh_agent_resumes_the_session(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config(agent={"restart_after_cancel": True})) as pool:
            handle = pool.submit("cli:1", Prompt("@hang"))
            await started(handle)
            pid = await agent_pid(pool, "cli:1")
            assert await pool.cancel("cli:1")
            assert (await handle.result()).outcome is Outcome.CANCELLED
            after = pool.submit("cli:1", Prompt("@reply fresh and resumed"))
            assert (await after.result()).text == "fresh and resumed"
            assert not after.transcript.context_reset
            assert await agent_pid(pool, "cli:1") != pid
            assert pool.counters.resumed == 1 and pool.counters.crashed == 0


async def test_cancel_during_a_streaming_turn_returns_cancelled_without_waiting_for_it(
    pool: Pool,
) -> None:
    with trio.fail_after(30):
        handle = pool.submit(
            "cli:1", Prompt("@reply " + "word " * 100 + "\n@chunks 100\n@chunk-delay 0.1")
        )
        while not handle.transcript.text:
            await handle.wait_changed(handle.transcript.version)
        with trio.fail_after(1):
            assert await pool.cancel("cli:1")
            end = await handle.result()
        assert end.outcome is Outcome.CANCELLED and end.stop_reason == "cancelled"
        assert 0 < len(end.text) < len("word " * 100)
        assert not await pool.cancel("cli:1")  # nothing runs any more
        assert (await ask(pool, "cli:1", "@reply next")).text == "next"


async def test_a_failed_start_reports_the_agents_stderr_and_leaves_no_entry(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(agent_args=["--crash-on-start", "7"])
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await ask(pool, "cli:1", "hello")
            assert end.outcome is Outcome.START_FAILED
            assert "could not be started" in end.reason
            assert end.detail.strip(), "the agent's stderr tail is part of the error"
            while pool.snapshot().sessions:
                await pool.wait_changed(pool.version)
            assert repr(pool).startswith("<Pool 0/20 sessions, 0 suspended")


async def test_failed_starts_over_a_thousand_threads_leave_nothing_behind(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        agent={"command": "/bin/false", "args": []},
        pool={"max_sessions": 1000, "restart_window_secs": 0.2},
    )
    with trio.fail_after(120):
        async with open_pool(config) as pool:
            handles = [pool.submit(f"cli:{i}", Prompt("hi")) for i in range(1000)]
            ends = [await handle.result() for handle in handles]
            assert {end.outcome for end in ends} == {Outcome.START_FAILED}
            assert pool.snapshot().sessions == ()
            assert pool._stopping == set()
            await trio.sleep(0.3)  # let the crash-loop window pass
            await ask(pool, "cli:last", "hi")
            assert len(pool._trackers) <= 1


async def test_a_crash_looping_agent_gets_a_clear_error_instead_of_a_spin(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        agent_args=["--crash-on-start", "1"], pool={"max_restarts": 2, "restart_window_secs": 60}
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            for _ in range(3):
                assert (await ask(pool, "cli:1", "hi")).outcome is Outcome.START_FAILED
            spawned = pool.counters.spawned
            with trio.fail_after(1):
                refused = await ask(pool, "cli:1", "hi")
            assert refused.outcome is Outcome.START_FAILED
            assert "keeps failing" in refused.reason
            assert pool.counters.spawned == spawned  # no new agent was started


async def test_without_load_session_the_user_is_told_only_when_context_was_lost(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(agent_args=["--no-load-session"], pool={"max_sessions": 1})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            first = pool.submit("cli:A", Prompt("@reply a"))
            assert (await first.result()).ok and not first.transcript.context_reset
            assert (await ask(pool, "cli:B", "@reply b")).ok  # evicts A
            back = pool.submit("cli:A", Prompt("@reply a again"))
            assert (await back.result()).ok
            assert back.transcript.context_reset
            assert pool.counters.resumed == 0


async def test_reset_stops_the_agent_and_forgets_the_conversation(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config()) as pool:
            assert (await ask(pool, "cli:1", "@reply one")).ok
            old_pid = pool.session_snapshot("cli:1").pid  # type: ignore[union-attr]
            running = pool.submit("cli:1", Prompt("@silent-tool 30"))
            await started(running)
            queued = pool.submit("cli:1", Prompt("@reply never"))
            assert await pool.reset("cli:1")
            assert (await queued.result()).outcome is Outcome.CANCELLED
            assert (await running.result()).outcome in (Outcome.CANCELLED, Outcome.SHUTDOWN)
            fresh = pool.submit("cli:1", Prompt("@reply fresh"))
            assert (await fresh.result()).text == "fresh"
            assert not fresh.transcript.context_reset  # a reset is asked for, not lost
            assert pool.session_snapshot("cli:1").pid != old_pid  # type: ignore[union-attr]
            assert pool.counters.resumed == 0
