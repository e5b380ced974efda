"""Schedules in a running broker: the real pool and fake agent, a real store file,
a real WebSocket client on loopback."""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import attrs
import trio

from broker.chat.schedules import latest_at_or_before, run_label
from broker.config import BrokerConfig, ScheduleConfig
from broker.ops.service import Broker, serve
from broker.store import ScheduleRun, open_store
from broker.testing.harness import config_toml, fake_agent_config, http_get
from tests.service.broker_process import chat

NIGHTLY = ScheduleConfig(
    name="nightly",
    cron="0 2 * * *",
    prompt="run the test suite and report",
    platform="telegram",
    channel="ops-room",
)


def with_schedules(tmp_path: Path, *schedules: ScheduleConfig) -> BrokerConfig:
    config = fake_agent_config(tmp_path, server={"streaming": False})
    return attrs.evolve(config, schedules=schedules)


async def test_a_run_missed_while_down_runs_once_at_start_and_reaches_a_client_of_its_platform(
    tmp_path: Path,
) -> None:
    config = with_schedules(tmp_path, NIGHTLY)
    due = latest_at_or_before(NIGHTLY, datetime.now(UTC))
    assert due is not None
    async with open_store(config.state.path) as store:  # the last run was three days ago
        store.save_schedule_run("nightly", ScheduleRun(due.timestamp() - 3 * 86400, "completed"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            assert broker.server is not None
            async with chat(broker.server.port) as client:
                reply = await client.reply(f"schedule:nightly:{run_label(due)}", "You said")
                assert "run the test suite and report" in reply
                while broker.scheduler.snapshot()[0].last_result != "completed":
                    await broker.scheduler.wait_changed(broker.scheduler.version)
                listing = await client.ask("/schedules", "room", needle="nightly")
            status, body = await http_get(broker.server.port, "/status")
            _, metrics = await http_get(broker.server.port, "/metrics")
            broker.stop()
    assert "new thread in telegram:ops-room" in listing and "completed" in listing
    assert status == 200
    (shown,) = json.loads(body)["schedules"]
    assert (shown["last_run"], shown["last_result"]) == (due.timestamp(), "completed")
    assert b'agent_broker_schedule_runs_total{schedule="nightly",result="completed"} 1' in metrics
    # one run for three missed nights, plus the /schedules command, which is no turn
    assert broker.pool.snapshot().counters.turns_submitted == 1
    async with open_store(config.state.path) as store:
        assert (await store.schedule_runs())["nightly"] == ScheduleRun(due.timestamp(), "completed")


async def test_a_reload_adds_and_removes_schedules_without_a_restart(tmp_path: Path) -> None:
    config = with_schedules(tmp_path, NIGHTLY)
    path = tmp_path / "broker.toml"
    path.write_text(config_toml(config))
    weekly = attrs.evolve(NIGHTLY, name="weekly", cron="0 6 * * 1")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(
                functools.partial(serve, config, config_path=str(path), handle_signals=False)
            )
            assert [s.name for s in broker.scheduler.snapshot()] == ["nightly"]
            path.write_text(config_toml(attrs.evolve(config, schedules=(weekly,))))
            assert await broker.reload()
            (status,) = broker.scheduler.snapshot()
            while status.next_run is None:
                await broker.scheduler.wait_changed(broker.scheduler.version)
                (status,) = broker.scheduler.snapshot()
            broker.stop()
    assert status.name == "weekly"
    assert datetime.fromtimestamp(status.next_run, UTC).strftime("%a %H:%M") == "Mon 06:00"
    assert status.next_run > time.time()
