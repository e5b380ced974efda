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
from broker.testing.fake_discord import CHANNEL_ID, fake_discord
from broker.testing.fake_slack import APP_TOKEN, BOT_TOKEN, open_fake_slack
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
            async with chat(broker.server.port, "?platforms=telegram") as client:
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


def missed_nightly(schedule: ScheduleConfig) -> tuple[datetime, ScheduleRun]:
    """The newest time of ``schedule`` and a last run three days before it."""
    due = latest_at_or_before(schedule, datetime.now(UTC))
    assert due is not None
    return due, ScheduleRun(due.timestamp() - 3 * 86400, "completed")


async def test_a_discord_run_opens_a_thread_from_a_bot_message_and_answers_in_it(
    tmp_path: Path,
) -> None:
    schedule = attrs.evolve(NIGHTLY, platform="discord", channel=CHANNEL_ID)
    due, last = missed_nightly(schedule)
    with trio.fail_after(60):
        async with fake_discord() as fake, trio.open_nursery() as nursery:
            discord = {"enabled": True, "token": fake.token, "api_base_url": fake.api_base_url}
            config = attrs.evolve(
                fake_agent_config(tmp_path, server={"enabled": False}, discord=discord),
                schedules=(schedule,),
            )
            async with open_store(config.state.path) as store:
                store.save_schedule_run("nightly", last)
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )

            def threads() -> list[str]:
                return [c["id"] for c in fake.channels.values() if c.get("parent_id") == CHANNEL_ID]

            await fake.wait_for(lambda: len(threads()) == 1 and fake.bot_messages(threads()[0]))
            (thread,) = threads()
            (starter,) = fake.bot_messages(CHANNEL_ID)
            (answer,) = fake.bot_messages(thread)
            assert broker.scheduler.snapshot()[0].target == "new thread in discord:" + CHANNEL_ID
            broker.stop()
        fake.assert_clean()
    assert starter["content"] == f"⏰ nightly: the run of {run_label(due)}"
    assert thread == starter["id"]  # the thread started from the bot's message
    assert "run the test suite and report" in answer["content"]


async def test_a_slack_run_posts_a_top_level_message_whose_thread_holds_the_reply(
    tmp_path: Path,
) -> None:
    schedule = attrs.evolve(NIGHTLY, platform="slack", channel="C0CHAN")
    due, last = missed_nightly(schedule)
    with trio.fail_after(60):
        async with open_fake_slack() as fake, trio.open_nursery() as nursery:
            slack = {
                "enabled": True,
                "app_token": APP_TOKEN,
                "bot_token": BOT_TOKEN,
                "api_base_url": fake.api_url,
            }
            config = attrs.evolve(
                fake_agent_config(tmp_path, server={"enabled": False}, slack=slack),
                schedules=(schedule,),
            )
            async with open_store(config.state.path) as store:
                store.save_schedule_run("nightly", last)
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )

            def top_level() -> list[str]:
                return [m.ts for m in fake.bot_messages("C0CHAN") if m.thread_ts is None]

            await fake.wait_for(
                lambda: len(top_level()) == 1 and bool(fake.bot_messages("C0CHAN", top_level()[0]))
            )
            (head,) = top_level()
            (answer,) = fake.bot_messages("C0CHAN", head)
            # a person answering in that thread needs no mention: the broker is in it
            assert broker.slack is not None and broker.slack.conversations is not None
            assert f"C0CHAN:{head}" in broker.slack.conversations.threads
            broker.stop()
        fake.assert_clean()
    (shown,) = [m for m in fake.messages.values() if m.ts == head]
    assert shown.text == f"⏰ nightly: the run of {run_label(due)}"
    assert "run the test suite and report" in answer.text
