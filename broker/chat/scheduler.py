"""The scheduler: runs ``[[schedules]]`` prompts as turns of the pool, at their times.

:class:`Scheduler` is one task. It asks :func:`~broker.chat.schedules.next_runs`
what is due, starts each due run in a task of its own, and sleeps until the
next time (at most :data:`MAX_SLEEP_SECS`, so a wall clock that jumps is
noticed) or until :meth:`Scheduler.update` (a SIGHUP reload) wakes it.

* **A run is a turn like any other**: ``pool.submit`` under the target's
  thread key, its reply delivered by :func:`~broker.chat.delivery.deliver_turn`
  to the front-end that serves the target. It queues behind a busy thread,
  or, with ``overlap = "skip"``, is skipped with a log line when the thread
  is busy or the schedule's previous run has not ended.
* **Targets.** ``thread = "<key>"``: the run goes to that existing thread,
  where its last message came from (:class:`PlaceBook`; a thread no message
  ever came from is an error of that run). ``platform`` + ``channel``: each
  run starts the thread ``schedule:<name>:<run time>`` in that channel, so
  its thread key is ``<platform>:schedule:<name>:<run time>`` and a user
  answering in it talks to the same agent.
* **Never twice.** The run time is recorded as the schedule's last run (in
  the state store) before the turn is submitted, so a restart neither runs
  it again nor loses it; the result is recorded when the turn ends.
* **Never a crash.** A run that cannot be made (no such thread, no front-end
  for the platform) is a log line and the schedule's last result; an
  unexpected error in a run is logged and recorded the same way. Nothing a
  run does ends the scheduler.

Removing a schedule (a reload) stops its future runs; a run already going
finishes.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import attrs
import trio

from broker import sentences
from broker.chat.delivery import Replier, deliver_turn
from broker.chat.schedules import (
    Drop,
    Fire,
    ScheduleStatus,
    moment_of,
    next_runs,
    run_label,
    run_thread_id,
    run_title,
    target_text,
)
from broker.config import ScheduleConfig
from broker.frontends.base import ReplyChannel
from broker.frontends.wire import Channel, Content, InboundEvent, Sender, thread_key
from broker.reply import Prompt, TurnHandle
from broker.sessions.session import SessionSnapshot, SessionState
from broker.store import Place, ScheduleRun, Store

log = logging.getLogger(__name__)

MAX_SLEEP_SECS = 60.0
RESPONSE_TIMEOUT_SECS = 5.0

# Results that are not a turn's outcome.
RUNNING = "running"
SKIPPED = "skipped"
MISSED = "missed"
FAILED = "failed"  # the run could not be made, or went wrong in the broker
INTERRUPTED = "interrupted"  # the broker stopped while it ran


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


class PlaceBook:
    """Where each thread's replies go, from the last message that came from it.

    :meth:`note` is called (synchronously) for every inbound event; a change
    is recorded in the store. :meth:`load` takes in what earlier runs saw.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._places: dict[str, Place] = {}

    def __len__(self) -> int:
        return len(self._places)

    async def load(self) -> None:
        if self.store is not None:
            self._places.update(await self.store.places())

    def note(self, event: InboundEvent, frontend: str) -> None:
        channel = event.channel
        place = Place(frontend, event.platform, channel.id, channel.thread_id or None)
        key = thread_key(event)
        if self._places.get(key) != place:
            self._places[key] = place
            if self.store is not None:
                self.store.save_place(key, place)

    def get(self, key: str) -> Place | None:
        return self._places.get(key)


class TurnPool(Protocol):
    """What the scheduler needs of the pool (:class:`~broker.sessions.pool.Pool` fits)."""

    def submit(self, thread_key: str, prompt: Prompt) -> TurnHandle: ...

    def session_snapshot(self, thread_key: str) -> SessionSnapshot | None: ...


class RunStore(Protocol):
    """Where last runs persist (:class:`~broker.store.Store` fits)."""

    def save_schedule_run(self, name: str, run: ScheduleRun) -> None: ...

    async def schedule_runs(self) -> dict[str, ScheduleRun]: ...


#: The reply channel for a platform: (platform, front-end of the place, or None
#: for any that serves the platform) -> a channel, or None when none runs.
ChannelFinder = Callable[[str, str | None], ReplyChannel | None]


class ThreadNotOpened(Exception):
    """A native front-end could not open a run's thread; ``str(exc)`` says why."""


#: Opens the thread of a run on a platform's native front-end (Discord: a thread
#: from a message the bot posts; Slack: a top-level message whose thread holds the
#: run): (platform, channel, first message) -> the new thread's place, or None when
#: the platform has no native front-end here (the run's thread is then
#: ``schedule:<name>:<run time>``). Raises :class:`ThreadNotOpened`.
ThreadOpener = Callable[[str, str, str], Awaitable[Place | None]]


@attrs.frozen
class Target:
    """Where one run goes: the pool's thread key, the event it answers, the channel."""

    key: str
    event: InboundEvent
    channel: ReplyChannel


def run_event(schedule: ScheduleConfig, run_time: datetime, place: Place) -> InboundEvent:
    """The inbound event a run answers, as if the schedule had sent its prompt."""
    label = run_label(run_time)
    return InboundEvent(
        event_id=f"schedule:{schedule.name}:{label}",
        timestamp=run_time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        platform=place.platform,
        channel=Channel(place.channel_id, "group", place.thread_id),
        sender=Sender(
            f"schedule:{schedule.name}", schedule.name, f"schedule {schedule.name}", True
        ),
        content=Content("text", schedule.prompt),
        message_id="",
    )


async def find_target(
    schedule: ScheduleConfig,
    run_time: datetime,
    places: PlaceBook,
    channels: ChannelFinder,
    threads: ThreadOpener | None = None,
) -> Target | str:
    """Where a run of ``schedule`` goes, or the sentence saying why it cannot.
    Waits only for a native front-end to open the run's thread."""
    if schedule.thread:
        place = places.get(schedule.thread)
        if place is None:
            return sentences.schedule_unknown_thread(schedule.thread)
    else:
        where = f"{schedule.platform}:{schedule.channel}"
        opened = None
        if threads is not None:
            try:
                opened = await threads(
                    schedule.platform, schedule.channel, run_title(schedule.name, run_time)
                )
            except ThreadNotOpened as exc:
                return sentences.schedule_no_thread(where, str(exc))
        thread = run_thread_id(schedule.name, run_time)
        place = opened or Place("", schedule.platform, schedule.channel, thread)
    frontend = place.frontend or None
    channel = channels(place.platform, frontend)
    if channel is None:
        return sentences.schedule_no_frontend(frontend, place.platform)
    event = run_event(schedule, run_time, place)
    return Target(thread_key(event), event, channel)


class Scheduler:
    """Runs the schedules; see the module docstring. Start it with
    ``await nursery.start(scheduler.run)``.

    ``wall`` is the wall clock in seconds since the epoch (tests pass one
    tied to trio's clock). ``places``, ``channels`` and ``threads`` say where
    replies go.
    """

    def __init__(
        self,
        schedules: Sequence[ScheduleConfig],
        pool: TurnPool,
        *,
        places: PlaceBook,
        channels: ChannelFinder,
        threads: ThreadOpener | None = None,
        store: RunStore | None = None,
        wall: Callable[[], float] = time.time,
        edit_interval: float = 1.5,
    ) -> None:
        self.pool = pool
        self.places = places
        self.channels = channels
        self.threads = threads
        self.store = store
        self.wall = wall
        self.edit_interval = edit_interval
        self.schedules: tuple[ScheduleConfig, ...] = ()
        self.statuses: dict[str, ScheduleStatus] = {}
        self.runs: collections.Counter[tuple[str, str]] = collections.Counter()
        self.version = 0
        self._last: dict[str, datetime] = {}
        self._running: collections.Counter[str] = collections.Counter()
        self._wake = trio.Event()
        self._changed = trio.Event()
        self.update(schedules)

    # -- synchronous side ------------------------------------------------------

    def update(self, schedules: Iterable[ScheduleConfig]) -> None:
        """Use ``schedules`` from now on (a reload). A removed schedule runs no
        more; its running turn finishes."""
        self.schedules = tuple(schedules)
        old = self.statuses
        self.statuses = {}
        for schedule in self.schedules:
            status = ScheduleStatus(
                schedule.name, schedule.cron, schedule.tz, target_text(schedule)
            )
            if (previous := old.get(schedule.name)) is not None:
                status.last_run, status.last_result = previous.last_run, previous.last_result
                status.last_detail = previous.last_detail
            status.running = self._running[schedule.name]
            self.statuses[schedule.name] = status
        self._wake.set()
        self._bump()

    def snapshot(self) -> tuple[ScheduleStatus, ...]:
        """The schedules' states, copied; never waits."""
        return tuple(attrs.evolve(s) for s in self.statuses.values())

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, seen_version: int) -> None:
        while self.version <= seen_version:
            await self._changed.wait()

    def _record(self, name: str, run_time: datetime, result: str, detail: str = "") -> None:
        if result != RUNNING:
            self.runs[(name, result)] += 1
        self._last[name] = max(self._last.get(name, run_time), run_time)
        if self.store is not None:
            self.store.save_schedule_run(name, ScheduleRun(_epoch(run_time), result))
        status = self.statuses.get(name)
        if status is not None:
            status.last_run, status.last_result, status.last_detail = (
                _epoch(run_time),
                result,
                detail,
            )
            status.running = self._running[name]
        self._bump()

    # -- the task --------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Scheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run schedules until cancelled. Reads the last runs from the store
        first; raises nothing else (a failed run is that run's result)."""
        if self.store is not None:
            for name, stored in (await self.store.schedule_runs()).items():
                self._last[name] = moment_of(stored.run_time)
                if (status := self.statuses.get(name)) is not None:
                    status.last_run = stored.run_time
                    status.last_result = INTERRUPTED if stored.result == RUNNING else stored.result
        async with trio.open_nursery() as nursery:
            task_status.started(self)
            while True:
                now = moment_of(self.wall())
                wake_at = self._tick(now, nursery)
                wait = MAX_SLEEP_SECS
                if wake_at is not None:
                    wait = min(wait, max((wake_at - now).total_seconds(), 0.0))
                with trio.move_on_after(wait):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _tick(self, now: datetime, nursery: trio.Nursery) -> datetime | None:
        """Synchronous: fire and drop what is due at ``now``; the next wake time."""
        for schedule in self.schedules:
            if schedule.name not in self._last:  # first seen: counts from now
                self._last[schedule.name] = now
                if self.store is not None:
                    self.store.save_schedule_run(schedule.name, ScheduleRun(_epoch(now), ""))
        plan = next_runs(self.schedules, self._last, now)
        by_name = {s.name: s for s in self.schedules}
        for drop in plan.drop:
            self._drop(drop)
        for fire in plan.fire:
            self._fire(by_name[fire.name], fire, nursery)
        for name, next_time in plan.next_run.items():
            self.statuses[name].next_run = None if next_time is None else _epoch(next_time)
        self._bump()
        return plan.wake_at

    def _drop(self, drop: Drop) -> None:
        log.info(
            "schedule %s: %d runs up to %s were missed while the broker was down;"
            ' not run (catch_up = "none")',
            drop.name,
            drop.missed,
            run_label(drop.run_time),
        )
        self._record(drop.name, drop.run_time, MISSED, sentences.schedule_missed(drop.missed))

    def _fire(self, schedule: ScheduleConfig, fire: Fire, nursery: trio.Nursery) -> None:
        if fire.caught_up:
            log.info(
                "schedule %s: catching up on %s (%d earlier missed times not run)",
                schedule.name,
                run_label(fire.run_time),
                fire.missed,
            )
        busy = self._busy_reason(schedule)
        if schedule.overlap == "skip" and busy is not None:
            log.info(
                "schedule %s: run of %s skipped: %s", schedule.name, run_label(fire.run_time), busy
            )
            self._record(schedule.name, fire.run_time, SKIPPED, busy)
            return
        self._running[schedule.name] += 1
        self._record(schedule.name, fire.run_time, RUNNING)
        nursery.start_soon(self._run_one, schedule, fire.run_time)

    def _busy_reason(self, schedule: ScheduleConfig) -> str | None:
        """Why a run would overlap another, or None."""
        if self._running[schedule.name]:
            return sentences.SCHEDULE_PREVIOUS_RUN_GOING
        if schedule.thread:
            snap = self.pool.session_snapshot(schedule.thread)
            if snap is not None and (snap.state == SessionState.BUSY.value or snap.queue_length):
                return sentences.schedule_thread_busy(schedule.thread)
        return None

    async def _run_one(self, schedule: ScheduleConfig, run_time: datetime) -> None:
        result, detail = INTERRUPTED, sentences.SCHEDULE_RUN_STOPPED
        try:
            result, detail = await self._turn(schedule, run_time)
        except Exception as exc:
            log.exception("schedule %s: the run of %s failed", schedule.name, run_label(run_time))
            result, detail = FAILED, sentences.schedule_internal_error(type(exc).__name__)
        finally:
            self._running[schedule.name] -= 1
            if result == FAILED:
                log.warning(
                    "schedule %s: run of %s failed: %s",
                    schedule.name,
                    run_label(run_time),
                    detail,
                )
            self._record(schedule.name, run_time, result, detail)

    async def _turn(self, schedule: ScheduleConfig, run_time: datetime) -> tuple[str, str]:
        target = await find_target(schedule, run_time, self.places, self.channels, self.threads)
        if isinstance(target, str):
            return FAILED, target
        log.info("schedule %s: run of %s in %s", schedule.name, run_label(run_time), target.key)
        handle = self.pool.submit(target.key, Prompt(schedule.prompt))
        replier = Replier(target.event, target.channel)
        await deliver_turn(
            handle,
            replier,
            streaming=False,
            edit_interval=self.edit_interval,
            response_timeout=RESPONSE_TIMEOUT_SECS,
            reactions=False,
        )
        end = await handle.result()
        log.info(
            "schedule %s: run of %s ended: %s",
            schedule.name,
            run_label(run_time),
            end.outcome.value,
        )
        return end.outcome.value, end.reason


__all__ = [
    "FAILED",
    "INTERRUPTED",
    "MISSED",
    "RUNNING",
    "SKIPPED",
    "ChannelFinder",
    "PlaceBook",
    "Scheduler",
    "ThreadNotOpened",
    "ThreadOpener",
    "find_target",
]
