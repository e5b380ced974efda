"""next_runs: which schedule fires when, and what a missed run does, at exact times."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from broker.chat.schedules import Drop, Fire, next_runs, run_thread_id
from broker.config import ScheduleConfig

NIGHTLY = ScheduleConfig(
    name="nightly", cron="0 2 * * *", prompt="run the tests", platform="t", channel="1"
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_a_schedule_fires_at_its_time_and_names_its_next_time() -> None:
    plan = next_runs([NIGHTLY], {"nightly": utc(2026, 11, 30, 2)}, utc(2026, 12, 1, 2))
    assert plan.fire == (Fire("nightly", utc(2026, 12, 1, 2)),)
    assert plan.drop == ()
    assert plan.next_run == {"nightly": utc(2026, 12, 2, 2)}
    assert plan.wake_at == utc(2026, 12, 2, 2)


def test_before_its_time_nothing_fires() -> None:
    plan = next_runs([NIGHTLY], {"nightly": utc(2026, 11, 30, 2)}, utc(2026, 12, 1, 1, 59, 59))
    assert (plan.fire, plan.drop) == ((), ())
    assert plan.wake_at == utc(2026, 12, 1, 2)


def test_a_schedule_seen_for_the_first_time_runs_nothing_of_its_past() -> None:
    plan = next_runs([NIGHTLY], {}, utc(2026, 12, 1, 10))
    assert (plan.fire, plan.drop) == ((), ())
    assert plan.wake_at == utc(2026, 12, 2, 2)


def test_runs_missed_while_down_catch_up_once_with_the_newest_time() -> None:
    plan = next_runs([NIGHTLY], {"nightly": utc(2026, 11, 27, 2)}, utc(2026, 12, 1, 10))
    assert plan.fire == (Fire("nightly", utc(2026, 12, 1, 2), caught_up=True, missed=3),)
    assert plan.wake_at == utc(2026, 12, 2, 2)
    # recorded as the last run, the same time never fires again
    again = next_runs([NIGHTLY], {"nightly": utc(2026, 12, 1, 2)}, utc(2026, 12, 1, 10))
    assert again.fire == ()


def test_catch_up_none_drops_the_missed_runs() -> None:
    schedule = attrs.evolve(NIGHTLY, catch_up="none")
    plan = next_runs([schedule], {"nightly": utc(2026, 11, 27, 2)}, utc(2026, 12, 1, 10))
    assert plan.fire == ()
    assert plan.drop == (Drop("nightly", utc(2026, 12, 1, 2), missed=4),)


def test_a_run_found_a_few_seconds_late_is_on_time_even_without_catch_up() -> None:
    schedule = attrs.evolve(NIGHTLY, catch_up="none")
    plan = next_runs([schedule], {"nightly": utc(2026, 11, 30, 2)}, utc(2026, 12, 1, 2, 0, 30))
    assert plan.fire == (Fire("nightly", utc(2026, 12, 1, 2)),)


def test_local_times_hold_across_both_daylight_saving_changes_in_berlin() -> None:
    berlin = attrs.evolve(NIGHTLY, cron="30 2 * * *", tz="Europe/Berlin")
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist and runs at 03:00.
    spring = next_runs([berlin], {"nightly": utc(2026, 3, 28, 1, 30)}, utc(2026, 3, 28, 12))
    assert spring.wake_at == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    after = next_runs([berlin], {"nightly": utc(2026, 3, 29, 1)}, utc(2026, 3, 29, 1))
    assert after.wake_at == utc(2026, 3, 30, 0, 30)  # 02:30 CEST
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice and runs once.
    autumn = next_runs([berlin], {"nightly": utc(2026, 10, 24, 0, 30)}, utc(2026, 10, 24, 12))
    assert autumn.wake_at == utc(2026, 10, 25, 0, 30)  # the first 02:30, CEST
    once = next_runs([berlin], {"nightly": utc(2026, 10, 25, 0, 30)}, utc(2026, 10, 25, 0, 30))
    assert once.wake_at == utc(2026, 10, 26, 1, 30)  # 02:30 CET the next day


def test_each_schedule_is_decided_on_its_own() -> None:
    hourly = attrs.evolve(NIGHTLY, name="hourly", cron="0 * * * *")
    last = {"nightly": utc(2026, 11, 30, 2), "hourly": utc(2026, 12, 1, 1)}
    plan = next_runs([NIGHTLY, hourly], last, utc(2026, 12, 1, 2))
    assert {f.name for f in plan.fire} == {"nightly", "hourly"}
    assert plan.next_run == {"nightly": utc(2026, 12, 2, 2), "hourly": utc(2026, 12, 1, 3)}
    assert plan.wake_at == utc(2026, 12, 1, 3)


def test_a_run_of_a_channel_schedule_has_a_thread_of_its_own() -> None:
    assert run_thread_id("nightly", utc(2026, 12, 1, 2)) == "schedule:nightly:2026-12-01T02:00Z"
