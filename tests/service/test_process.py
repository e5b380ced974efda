"""``python -m broker run`` as systemd runs it: notify, SIGTERM, SIGHUP, kill -9."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from broker.store import open_store
from broker.testing.harness import free_port
from tests.service.broker_process import (
    Document,
    agent_pids,
    alive,
    broker_process,
    chat,
    grandchild_pid,
    status_until,
    wait_gone,
    write_config,
)

STUBBORN = ("--ignore-sigterm", "--ignore-stdin-eof")  # only SIGKILL ends these agents


def busy_threads(document: Document) -> set[str]:
    return {s["thread_key"] for s in document["sessions"] if s["state"] == "busy"}


async def test_systemd_is_told_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    async with broker_process(config, env={"WATCHDOG_USEC": "2000000"}) as broker:
        with trio.fail_after(60):
            await broker.notify.wait_for(lambda m: m.get("WATCHDOG") == "1")
            ready = await broker.notify.wait_for(lambda m: m.get("READY") == "1")
            assert broker.notify.messages[ready]["STATUS"].startswith("0 sessions (0 busy)")
            async with chat(port) as client:
                await client.ask("hello", "room-1")
                seen = await broker.notify.wait_for(
                    lambda m: m.get("STATUS", "").startswith("1 sessions"), ready
                )
                assert broker.notify.messages[seen]["STATUS"].endswith(", 1 client")
            broker.signal(signal.SIGTERM)
            stopping = await broker.notify.wait_for(lambda m: m.get("STOPPING") == "1", seen)
            assert broker.notify.messages[stopping]["STATUS"].startswith("stopping: ")
            assert await broker.wait() == 0


async def test_sigterm_with_busy_sessions_stops_every_agent_tells_users_and_resumes(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, agent_args=STUBBORN)
    store_path = tmp_path / "state" / "broker.sqlite3"
    async with broker_process(config, name="first") as broker:
        with trio.fail_after(90):
            async with chat(port) as client:
                first_reply = await client.ask("@grandchild\n@reply spawned", "grand", "spawned")
                grandchild = grandchild_pid(first_reply)
                in_flight = {
                    "telegram:silent": await client.send("@silent-tool 60", "silent"),
                    "telegram:stubborn": await client.send("@hang-hard", "stubborn"),
                    "telegram:grand": await client.send("@silent-tool 60", "grand"),
                }
                document = await status_until(port, lambda d: busy_threads(d) == set(in_flight))
                agents = agent_pids(document)
                assert set(agents) == set(in_flight)

                broker.signal(signal.SIGTERM)
                stop_started = trio.current_time()
                for event_id in in_flight.values():
                    assert "restarting" in await client.reply(event_id, "restarting")
            assert await broker.wait() == 0
            stop_secs = trio.current_time() - stop_started
        # exit 0 means within the budget (cancel grace 2 s + stop grace 2 s + 5 s margin);
        # measured from here it also holds the interpreter's exit
        assert stop_secs < 12.0, f"the stop took {stop_secs:.1f} s"
        with trio.fail_after(10):
            await wait_gone([*agents.values(), grandchild])
        assert not any(alive(pid) for pid in [*agents.values(), grandchild])
        print(f"graceful stop with 3 busy stubborn agents: {stop_secs:.2f} s")

    async with open_store(store_path) as store:
        saved = await store.threads()
        assert set(saved) == set(in_flight)
        assert await store.agents() == []

    async with broker_process(config, name="second") as broker:
        with trio.fail_after(90):
            async with chat(port) as client:
                for key in in_flight:
                    await client.ask("back again", key.removeprefix("telegram:"))
            document = await status_until(port, lambda d: d["counters"]["resumed"] == 3)
            assert document["counters"]["spawned"] == 3
            broker.signal(signal.SIGTERM)
            assert await broker.wait() == 0


async def test_sighup_applies_a_new_allowlist_without_dropping_a_session(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, router={"allowed_channels": ["kept", "dropped"]})
    async with broker_process(config) as broker:
        with trio.fail_after(90):
            async with chat(port) as client:
                await client.ask("hello", "kept")
                await client.ask("hello", "dropped")
                before = agent_pids(await status_until(port, lambda d: len(d["sessions"]) == 2))

                config.write_text(config.read_text().replace('"kept", "dropped"', '"kept"'))
                mark = len(broker.notify.messages)
                broker.signal(signal.SIGHUP)
                reloading = await broker.notify.wait_for(lambda m: "RELOADING" in m, mark)
                await broker.notify.wait_for(lambda m: m.get("READY") == "1", reloading)

                refused = await client.send("anyone there?", "dropped")
                reply = await client.ask("still here?", "kept")
                assert "turn 2 of this session" in reply
                after = agent_pids(await status_until(port, lambda d: True))
                assert after["telegram:kept"] == before["telegram:kept"]
                assert refused not in client.replies

                config.write_text("[pool]\nmax_sessions = 0\n")
                mark = len(broker.notify.messages)
                broker.signal(signal.SIGHUP)
                reloading = await broker.notify.wait_for(lambda m: "RELOADING" in m, mark)
                await broker.notify.wait_for(lambda m: m.get("READY") == "1", reloading)
                assert "turn 3 of this session" in await client.ask("and now?", "kept")
            broker.signal(signal.SIGTERM)
            assert await broker.wait() == 0
    log = broker.log()
    assert "reloaded" in log and "[router] changed" in log
    assert "reload failed, keeping the running configuration" in log
    assert "pool.max_sessions: expected an integer >= 1, got 0" in log


async def test_agents_of_a_killed_broker_die_and_leftovers_are_stopped_at_the_next_start(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    async with broker_process(config, name="killed") as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                grandchild = grandchild_pid(
                    await client.ask("@grandchild\n@reply spawned", "grand", "spawned")
                )
                await client.ask("hello", "plain")
            agents = agent_pids(await status_until(port, lambda d: len(d["sessions"]) == 2))
            broker.signal(signal.SIGKILL)
            await broker.wait()
            await wait_gone(list(agents.values()))  # parent-death signal
    assert alive(grandchild), "the grandchild outlives its agent until the next start"

    async with broker_process(config, name="restarted") as broker:
        with trio.fail_after(60):
            await wait_gone([grandchild])
            async with chat(port) as client:
                await client.ask("still there?", "grand")
                await client.ask("still there?", "plain")
            document = await status_until(port, lambda d: d["counters"]["resumed"] == 2)
            assert document["counters"]["leftovers_stopped"] >= 1
            broker.signal(signal.SIGTERM)
            assert await broker.wait() == 0


async def test_a_second_signal_cuts_the_stop_short_and_still_stops_every_agent(
    tmp_path: Path,
) -> None:
    port = free_port()
    slow_cancel = {"cancel_grace_secs": 30, "stop_grace_secs": 2}
    config = write_config(tmp_path, port, agent_args=STUBBORN, timeouts=slow_cancel)
    async with broker_process(config) as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                await client.send("@hang-hard", "stuck")
                agents = agent_pids(await status_until(port, lambda d: bool(busy_threads(d))))
                broker.signal(signal.SIGTERM)
                await broker.notify.wait_for(lambda m: m.get("STOPPING") == "1")
                broker.signal(signal.SIGINT)
                second = trio.current_time()
                assert await broker.wait() == 1
            cut_secs = trio.current_time() - second
            await wait_gone(list(agents.values()))
        print(f"stop cut short by SIGINT after SIGTERM: {cut_secs:.2f} s")
    # the graceful stop would wait the 30 s cancel grace; cut short, only the 2 s stop grace
    assert cut_secs < 10.0, f"the stop took {cut_secs:.1f} s after the second signal"
    assert "stopping now (SIGINT during the stop)" in broker.log()
