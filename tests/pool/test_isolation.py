"""One slow, silent or starting agent holds up nothing else (seeds 000, 001, 002, 003)."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from broker.config import BrokerConfig
from broker.reply import Outcome, Prompt, TurnHandle
from broker.sentences import pool_full_reason
from broker.sessions.pool import Pool, open_pool
from broker.store import open_store
from tests.pool.conftest import ask

FAST = 8.0  # what "not delayed" means here: the slow thread takes 60 s


async def started(handle: TurnHandle) -> None:
    while not handle.transcript.started:
        await handle.wait_changed(handle.transcript.version)


def state_of(pool: Pool, key: str) -> str | None:
    snapshot = pool.session_snapshot(key)
    return snapshot.state if snapshot else None


async def test_long_silent_tool_call_does_not_delay_other_threads_or_eviction(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"max_sessions": 2})
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            slow = pool.submit("cli:A", Prompt("@silent-tool 60"))
            await started(slow)
            with trio.fail_after(FAST):
                assert (await ask(pool, "cli:B", "@reply b")).text == "b"
                snapshot = pool.snapshot()  # synchronous: it cannot wait on anybody
                assert {s.thread_key: s.state for s in snapshot.sessions} == {
                    "cli:A": "busy",
                    "cli:B": "idle",
                }
                # pool full: the idle B is evicted for a new thread C, never the busy A
                assert (await ask(pool, "cli:C", "@reply c")).text == "c"
                assert pool.is_suspended("cli:B")
                # and B comes back by loading its ACP session, evicting the idle C
                back = pool.submit("cli:B", Prompt("@reply b again"))
                events = [event async for event in back]
                assert back.transcript.end is not None and back.transcript.end.ok
                assert not back.transcript.context_reset
            assert pool.counters.evicted == 2 and pool.counters.resumed == 1
            assert state_of(pool, "cli:A") == "busy" and not slow.done
            assert len(events) >= 2


async def test_all_sessions_busy_gives_a_clear_pool_full_error_at_once(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"max_sessions": 1})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            slow = pool.submit("cli:A", Prompt("@silent-tool 30"))
            await started(slow)
            with trio.fail_after(1):
                refused = await ask(pool, "cli:B", "hello")
            assert refused.outcome is Outcome.POOL_FULL
            assert refused.reason == pool_full_reason(1)
            assert pool.counters.refused_pool_full == 1


async def test_idle_reaper_suspends_idle_sessions_and_never_waits_on_a_busy_one(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"idle_ttl_secs": 0.5})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            slow = pool.submit("cli:A", Prompt("@silent-tool 30"))
            await started(slow)
            assert (await ask(pool, "cli:B", "@reply b")).ok
            with trio.fail_after(FAST):
                while not pool.is_suspended("cli:B"):
                    await pool.wait_changed(pool.version)
            assert state_of(pool, "cli:A") == "busy"
            assert pool.counters.idle_suspended == 1


def write_slow_first_agent(root: Path, init_delay: float) -> Path:
    """An agent command whose first process takes ``init_delay`` s to initialize."""
    script = root / "slow-first-agent.sh"
    base = f'"{sys.executable}" -m broker.testing.fake_agent --state-dir "{root}/agent-sessions"'
    script.write_text(
        "#!/bin/sh\n"
        f'if mkdir "{root}/slow-claimed" 2>/dev/null; then\n'
        f"  exec {base} --init-delay {init_delay}\n"
        "fi\n"
        f"exec {base}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_slow_initialize_blocks_neither_other_threads_nor_the_snapshot(
    make_config: Callable[..., BrokerConfig],
    tmp_path: Path,
) -> None:
    script = write_slow_first_agent(tmp_path, init_delay=20)
    config = make_config(
        agent={"command": str(script), "args": []}, timeouts={"initialize_secs": 40}
    )
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            slow = pool.submit("cli:A", Prompt("@reply finally"))
            while not (tmp_path / "slow-claimed").exists():
                await trio.sleep(0.02)
            with trio.fail_after(FAST):
                assert (await ask(pool, "cli:B", "@reply quick")).text == "quick"
                assert state_of(pool, "cli:A") == "starting"
                assert not slow.done


async def test_two_rapid_messages_to_a_new_thread_start_one_agent_and_load_one_session(
    make_config: Callable[..., BrokerConfig],
    tmp_path: Path,
) -> None:
    config = make_config()
    with trio.fail_after(60):
        path = tmp_path / "state.sqlite3"
        async with open_store(path) as store, open_pool(config, store=store) as pool:
            assert (await ask(pool, "cli:A", "@reply remembered")).ok
        async with open_store(path) as store, open_pool(config, store=store) as pool:
            assert pool.is_suspended("cli:A")
            first = pool.submit("cli:A", Prompt("@reply one"))
            second = pool.submit("cli:A", Prompt("@reply two"))
            assert (await first.result()).text == "one"
            assert (await second.result()).text == "two"
            assert pool.counters.spawned == 1
            assert pool.counters.resumed == 1
            assert not first.transcript.context_reset
