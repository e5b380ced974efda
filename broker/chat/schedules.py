"""When scheduled prompts run: pure decisions over ``[[schedules]]``, no I/O.

:func:`next_runs` is the scheduler's one decision. Given the schedules, the
newest run time each one has dealt with (``last_runs``) and the wall-clock
``now``, it says which schedules fire now, which missed runs are dropped,
and when each schedule runs next. It never returns more than one run per
schedule, so a broker that was down for a week runs a schedule at most once
on start (``catch_up = "latest"``: the newest missed time) or not at all
(``catch_up = "none"``), never a burst.

Cron times are computed by cronsim in the schedule's time zone (``tz``), so
``0 2 * * *`` in ``Europe/Berlin`` runs at 02:00 local time on both sides of
a daylight saving change. cronsim follows Debian's cron there: a time inside
the hour that is skipped in spring runs at the first minute after the gap
(03:00), a time inside the hour that repeats in autumn runs once.

Every time here is an aware ``datetime``; results are in UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import attrs
from cronsim import CronSim

from broker import sentences
from broker.config import ScheduleConfig

#: A run found this late after its time is still "on time" (the scheduler was
#: busy or the wake-up late), not a missed run to catch up on.
ON_TIME_SECS = 60.0
#: Missed times are counted up to this many, for the log line.
MAX_COUNTED = 1000
_TICK = timedelta(microseconds=1)


@attrs.frozen
class Fire:
    """Run ``name`` now for ``run_time``. ``caught_up``: the time passed while
    the broker was not running; ``missed`` earlier times were not run."""

    name: str
    run_time: datetime
    caught_up: bool = False
    missed: int = 0


@attrs.frozen
class Drop:
    """``missed`` runs of ``name``, the newest at ``run_time``, passed while the
    broker was not running and are not run (``catch_up = "none"``)."""

    name: str
    run_time: datetime
    missed: int


@attrs.frozen
class RunPlan:
    fire: tuple[Fire, ...]
    drop: tuple[Drop, ...]
    next_run: Mapping[str, datetime | None]  # name -> its next time after this plan
    wake_at: datetime | None  # the earliest next time (None: no schedule ever runs again)


def _cron(schedule: ScheduleConfig, start: datetime, *, reverse: bool = False) -> CronSim:
    return CronSim(schedule.cron, start.astimezone(ZoneInfo(schedule.tz)), reverse=reverse)


def time_after(schedule: ScheduleConfig, moment: datetime) -> datetime | None:
    """The first time of ``schedule`` strictly after ``moment`` (None: never)."""
    try:
        return next(_cron(schedule, moment)).astimezone(UTC)
    except StopIteration:
        return None


def latest_at_or_before(schedule: ScheduleConfig, moment: datetime) -> datetime | None:
    """The newest time of ``schedule`` at or before ``moment`` (None: none)."""
    start = moment.replace(microsecond=0) + _TICK  # cronsim's reverse is exclusive
    try:
        return next(_cron(schedule, start, reverse=True)).astimezone(UTC)
    except StopIteration:
        return None


def count_between(schedule: ScheduleConfig, after: datetime, before: datetime) -> int:
    """How many times of ``schedule`` lie strictly between ``after`` and ``before``
    (at most :data:`MAX_COUNTED`)."""
    count = 0
    for moment in _cron(schedule, after):
        if moment.astimezone(UTC) >= before or count >= MAX_COUNTED:
            break
        count += 1
    return count


def next_runs(
    schedules: Iterable[ScheduleConfig], last_runs: Mapping[str, datetime], now: datetime
) -> RunPlan:
    """What fires at ``now``, what is dropped, and when each schedule runs next.

    ``last_runs[name]`` is the newest run time already dealt with (fired,
    skipped or dropped); a schedule without one counts from ``now`` (nothing
    of its past is due). A due time at most :data:`ON_TIME_SECS` old fires
    as usual; an older one was missed while the broker was down and fires
    with ``caught_up`` (``catch_up = "latest"``) or is dropped (``"none"``).
    Only the newest due time of a schedule is considered, whatever the number
    of missed ones. The caller records ``run_time`` of each fire and drop as
    that schedule's last run, so the same time never fires twice.
    """
    fire: list[Fire] = []
    drop: list[Drop] = []
    next_run: dict[str, datetime | None] = {}
    for schedule in schedules:
        since = last_runs.get(schedule.name, now)
        due = latest_at_or_before(schedule, now)
        if due is not None and due > since:
            missed = count_between(schedule, since, due)
            late = (now - due).total_seconds() > ON_TIME_SECS
            if not late or schedule.catch_up == "latest":
                fire.append(Fire(schedule.name, due, caught_up=late, missed=missed))
            else:
                drop.append(Drop(schedule.name, due, missed + 1))
        next_run[schedule.name] = time_after(schedule, max(since, now))
    times = [t for t in next_run.values() if t is not None]
    return RunPlan(tuple(fire), tuple(drop), next_run, min(times, default=None))


def run_label(run_time: datetime) -> str:
    """A run time as it appears in thread ids and logs: ``2026-12-01T02:00Z`` (UTC)."""
    return run_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def run_title(name: str, run_time: datetime) -> str:
    """The first message of a run's thread on a native front-end."""
    return sentences.schedule_run_title(name, run_label(run_time))


def run_thread_id(name: str, run_time: datetime) -> str:
    """The thread a run of a ``platform`` + ``channel`` schedule starts:
    ``schedule:<name>:<run time>``."""
    return f"schedule:{name}:{run_label(run_time)}"


# -- what people read about schedules -------------------------------------------------


@attrs.define
class ScheduleStatus:
    """One schedule as ``/status``, the dashboard and ``/schedules`` show it."""

    name: str
    cron: str
    tz: str
    target: str
    next_run: float | None = None  # seconds since the epoch
    last_run: float | None = None
    last_result: str = ""  # "" never ran; an outcome value, or skipped | missed | failed
    last_detail: str = ""  # why, for failed and skipped
    running: int = 0


def target_text(schedule: ScheduleConfig) -> str:
    return sentences.schedule_target(schedule.thread, schedule.platform, schedule.channel)


class ScheduleSource(Protocol):
    """Where the schedules' states come from (the scheduler)."""

    def snapshot(self) -> tuple[ScheduleStatus, ...]: ...


def moment_of(epoch: float) -> datetime:
    """Seconds since the epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch, UTC)


def schedules_text(statuses: Iterable[ScheduleStatus], now: float) -> str:
    """What ``/schedules`` shows."""
    lines = [
        sentences.schedule_entry(
            status.name,
            f"{status.cron} ({status.tz})",
            status.target,
            sentences.schedule_next_run(status.next_run, now),
            status.last_run,
            status.last_result,
            status.last_detail,
            status.running,
        )
        for status in statuses
    ]
    return "\n".join(lines) if lines else sentences.NO_SCHEDULES


def upcoming_text(schedules: Iterable[ScheduleConfig], now: float, count: int = 3) -> str:
    """What ``agent-broker schedules`` prints: each schedule and its next runs."""
    entries = []
    for schedule in schedules:
        times: list[tuple[str, str]] = []
        moment: datetime | None = moment_of(now)
        while moment is not None and len(times) < count:
            moment = time_after(schedule, moment)
            if moment is not None:
                local = moment.astimezone(ZoneInfo(schedule.tz)).strftime("%Y-%m-%d %H:%M %Z")
                times.append((moment.strftime("%Y-%m-%d %H:%M"), local))
        entries.append(
            sentences.schedule_upcoming(
                schedule.name,
                f"{schedule.cron} ({schedule.tz})",
                target_text(schedule),
                schedule.overlap,
                schedule.catch_up,
                times,
            )
        )
    return "\n".join(entries) if entries else sentences.NO_SCHEDULES
