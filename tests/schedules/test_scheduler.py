"""The scheduler under trio's autojump clock: runs at exact virtual times, catches up
once, skips or queues overlapping runs, never runs twice after a restart, and
reports what it could not do instead of crashing.

The pool is a stand-in whose turns end when the test says (no agent process), and
the wall clock is tied to trio's clock, so every time below is exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import attrs
import pytest
import trio
import trio.testing

from broker.chat.scheduler import (
    FAILED,
    INTERRUPTED,
    SKIPPED,
    PlaceBook,
    Scheduler,
)
from broker.chat.schedules import schedules_text
from broker.config import ScheduleConfig
from broker.frontends.wire import (
    Channel,
    Content,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    Sender,
)
from broker.reply import Outcome, Prompt, TextChunk, TurnEnd, TurnHandle
from broker.sessions.session import SessionSnapshot
from broker.store import ScheduleRun

DAY = 86400.0


def epoch(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


@attrs.define
class Submitted:
    key: str
    prompt: Prompt
    at: float  # wall-clock seconds when it was submitted
    handle: TurnHandle


class FakePool:
    """Turns that answer "done" after ``turn_secs`` virtual seconds, one at a
    time per thread, as a session's queue would."""

    def __init__(self, nursery: trio.Nursery, wall: Callable[[], float], turn_secs: float) -> None:
        self.nursery = nursery
        self.wall = wall
        self.turn_secs = turn_secs
        self.submitted: list[Submitted] = []
        self.open: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}

    def submit(self, thread_key: str, prompt: Prompt) -> TurnHandle:
        handle = TurnHandle(thread_key)
        self.submitted.append(Submitted(thread_key, prompt, self.wall(), handle))
        self.open[thread_key] = self.open.get(thread_key, 0) + 1
        self.nursery.start_soon(self._answer, thread_key, handle)
        return handle

    async def _answer(self, key: str, handle: TurnHandle) -> None:
        async with self._locks.setdefault(key, trio.Lock()):
            await trio.sleep(self.turn_secs)
            handle.push(TextChunk("done"))
            handle.push(TurnEnd(Outcome.COMPLETED, text="done"))
        self.open[key] -= 1

    def session_snapshot(self, thread_key: str) -> SessionSnapshot | None:
        if not self.open.get(thread_key):
            return None
        return SessionSnapshot(
            thread_key,
            "busy",
            1,
            0.0,
            None,
            self.open[thread_key] - 1,
            None,
            0.0,
            None,
            0,
            0,
            "fake",
        )


class RecordingChannel:
    """A reply channel that keeps what it is given (no connection)."""

    def __init__(self, frontend: str = "server") -> None:
        self.replies: list[OutboundReply] = []
        self._frontend = frontend

    @property
    def connection_id(self) -> str:
        return "recording"

    @property
    def frontend(self) -> str:
        return self._frontend

    async def send_reply(self, reply: OutboundReply) -> None:
        self.replies.append(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        return None


class MemoryRunStore:
    """Last runs in memory; once ``killed``, writes are lost, as a SIGKILLed
    broker's would be."""

    def __init__(self) -> None:
        self.saved: dict[str, ScheduleRun] = {}
        self.killed = False

    def save_schedule_run(self, name: str, run: ScheduleRun) -> None:
        if not self.killed:
            self.saved[name] = run

    async def schedule_runs(self) -> dict[str, ScheduleRun]:
        await trio.lowlevel.checkpoint()
        return dict(self.saved)


def channel_schedule(**changes: str) -> ScheduleConfig:
    fields = {"name": "nightly", "cron": "0 2 * * *", "prompt": "run the tests"}
    fields.update(platform="telegram", channel="42")
    fields.update(changes)
    return ScheduleConfig(**fields)


@attrs.define
class Rig:
    pool: FakePool
    channel: RecordingChannel
    places: PlaceBook
    wall: Callable[[], float]
    nursery: trio.Nursery

    def scheduler(
        self, *schedules: ScheduleConfig, store: MemoryRunStore | None = None
    ) -> Scheduler:
        return Scheduler(
            schedules,
            self.pool,
            places=self.places,
            channels=lambda platform, frontend: self.channel,
            store=store,
            wall=self.wall,
        )

    async def sleep_until_wall(self, when: float) -> None:
        await trio.sleep_until(trio.current_time() + (when - self.wall()))


@pytest.fixture
def start_wall() -> float:
    return epoch(2026, 11, 30, 12)


@pytest.fixture
async def rig(autojump_clock: trio.testing.MockClock, start_wall: float) -> AsyncIterator[Rig]:
    offset = start_wall - trio.current_time()

    def wall() -> float:
        return offset + trio.current_time()

    async with trio.open_nursery() as nursery:
        yield Rig(FakePool(nursery, wall, 600.0), RecordingChannel(), PlaceBook(), wall, nursery)
        nursery.cancel_scope.cancel()


async def test_a_schedule_runs_at_its_exact_times_and_its_reply_reaches_its_thread(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    scheduler = rig.scheduler(channel_schedule())
    with trio.fail_after(4 * DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 12, 2, 12))
    assert [s.at for s in rig.pool.submitted] == [epoch(2026, 12, 1, 2), epoch(2026, 12, 2, 2)]
    assert [s.key for s in rig.pool.submitted] == [
        "telegram:schedule:nightly:2026-12-01T02:00Z",
        "telegram:schedule:nightly:2026-12-02T02:00Z",
    ]
    assert rig.pool.submitted[0].prompt == Prompt("run the tests")
    assert [(r.channel.id, r.channel.thread_id, r.text) for r in rig.channel.replies] == [
        ("42", "schedule:nightly:2026-12-01T02:00Z", "done"),
        ("42", "schedule:nightly:2026-12-02T02:00Z", "done"),
    ]
    (status,) = scheduler.snapshot()
    assert (status.last_run, status.last_result, status.next_run) == (
        epoch(2026, 12, 2, 2),
        "completed",
        epoch(2026, 12, 3, 2),
    )
    assert scheduler.runs[("nightly", "completed")] == 2


@pytest.mark.parametrize("start_wall", [epoch(2026, 3, 27, 12)])
async def test_a_daily_local_time_runs_at_the_same_local_hour_across_a_dst_change(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    scheduler = rig.scheduler(channel_schedule(cron="0 9 * * *", tz="Europe/Berlin"))
    with trio.fail_after(5 * DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 3, 30, 12))
    # 09:00 CET is 08:00 UTC; from 2026-03-29 09:00 CEST is 07:00 UTC
    assert [s.at for s in rig.pool.submitted] == [
        epoch(2026, 3, 28, 8),
        epoch(2026, 3, 29, 7),
        epoch(2026, 3, 30, 7),
    ]


async def test_a_missed_run_catches_up_once_on_start_never_a_burst(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryRunStore()
    store.saved["nightly"] = ScheduleRun(epoch(2026, 11, 25, 2), "completed")  # 5 days down
    scheduler = rig.scheduler(channel_schedule(), store=store)
    with trio.fail_after(2 * DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 12, 1, 1))
    assert [(s.at, s.key) for s in rig.pool.submitted] == [
        (epoch(2026, 11, 30, 12), "telegram:schedule:nightly:2026-11-30T02:00Z")
    ]
    assert store.saved["nightly"] == ScheduleRun(epoch(2026, 11, 30, 2), "completed")


async def test_catch_up_none_runs_nothing_missed_and_records_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryRunStore()
    store.saved["nightly"] = ScheduleRun(epoch(2026, 11, 25, 2), "completed")
    scheduler = rig.scheduler(channel_schedule(catch_up="none"), store=store)
    with trio.fail_after(DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 12, 1, 1))
    assert rig.pool.submitted == []
    assert scheduler.snapshot()[0].last_result == "missed"
    assert scheduler.runs[("nightly", "missed")] == 1


async def test_a_restart_right_after_a_run_does_not_run_it_twice(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryRunStore()
    schedule = channel_schedule()
    with trio.fail_after(2 * DAY):
        async with trio.open_nursery() as first_life:
            await first_life.start(rig.scheduler(schedule, store=store).run)
            await rig.sleep_until_wall(epoch(2026, 12, 1, 2, 0, 1))
            store.killed = True  # the broker is killed mid-run: nothing more is written
            first_life.cancel_scope.cancel()
        assert len(rig.pool.submitted) == 1
        assert store.saved["nightly"] == ScheduleRun(epoch(2026, 12, 1, 2), "running")
        store.killed = False
        again = rig.scheduler(schedule, store=store)
        await rig.nursery.start(again.run)
        assert again.snapshot()[0].last_result == INTERRUPTED
        await rig.sleep_until_wall(epoch(2026, 12, 1, 23))
    assert [s.at for s in rig.pool.submitted] == [epoch(2026, 12, 1, 2)]


async def test_a_run_cut_by_a_stop_is_recorded_as_interrupted(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    store = MemoryRunStore()
    with trio.fail_after(DAY):
        async with trio.open_nursery() as life:
            await life.start(rig.scheduler(channel_schedule(), store=store).run)
            await rig.sleep_until_wall(epoch(2026, 12, 1, 2, 0, 1))
            life.cancel_scope.cancel()
    assert store.saved["nightly"] == ScheduleRun(epoch(2026, 12, 1, 2), INTERRUPTED)


def _event_from(platform: str, channel: str, thread: str | None) -> InboundEvent:
    return InboundEvent(
        "e1",
        "2026-11-30T10:00:00Z",
        platform,
        Channel(channel, "group", thread),
        Sender("u1", "alice", "Alice", False),
        Content("text", "hi"),
        "m1",
    )


async def test_overlap_skip_skips_a_run_while_the_thread_is_busy_and_queue_queues_it(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    rig.pool.turn_secs = 5400.0  # each turn runs for an hour and a half
    rig.places.note(_event_from("discord", "c1", "t9"), "gateway")
    hourly_skip = ScheduleConfig(
        name="skipper", cron="0 * * * *", prompt="check", thread="discord:t9", overlap="skip"
    )
    hourly_queue = ScheduleConfig(name="queuer", cron="30 * * * *", prompt="q", thread="discord:q")
    rig.places.note(_event_from("discord", "c2", "q"), "gateway")
    scheduler = rig.scheduler(hourly_skip, hourly_queue)
    with trio.fail_after(DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 11, 30, 16, 45))
    skipped = [s.at for s in rig.pool.submitted if s.key == "discord:t9"]
    queued = [s.at for s in rig.pool.submitted if s.key == "discord:q"]
    # 13:00 runs until 14:30, so 14:00 is skipped; 15:00 runs until 16:30, 16:00 is skipped
    assert skipped == [epoch(2026, 11, 30, 13), epoch(2026, 11, 30, 15)]
    assert scheduler.runs[("skipper", SKIPPED)] == 2
    # queue: every half past goes to the pool, behind the running turn
    assert queued == [epoch(2026, 11, 30, h, 30) for h in (12, 13, 14, 15, 16)]
    replies = [r for r in rig.channel.replies if r.channel.thread_id == "q"]
    assert [r.channel.id for r in replies] == ["c2", "c2"]  # 12:30 ended at 14:00, 13:30 at 15:30


async def test_an_unknown_thread_is_a_failed_run_with_a_reason_not_a_crash(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    broken = ScheduleConfig(name="lost", cron="0 13 * * *", prompt="p", thread="slack:nowhere")
    fine = channel_schedule(cron="0 14 * * *")
    scheduler = rig.scheduler(broken, fine)
    with trio.fail_after(DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 11, 30, 15))
    lost, nightly = scheduler.snapshot()
    assert (lost.last_result, lost.last_detail) == (
        FAILED,
        "thread slack:nowhere is unknown: no message has come from it",
    )
    assert nightly.last_result == "completed"  # the other schedule ran on
    assert "slack:nowhere is unknown" in schedules_text([lost], epoch(2026, 11, 30, 15))


async def test_a_reload_drops_a_removed_schedule_and_its_running_turn_finishes(
    rig: Rig, autojump_clock: trio.testing.MockClock
) -> None:
    scheduler = rig.scheduler(channel_schedule(cron="0 13 * * *"))
    with trio.fail_after(2 * DAY):
        await rig.nursery.start(scheduler.run)
        await rig.sleep_until_wall(epoch(2026, 11, 30, 13, 1))
        scheduler.update([channel_schedule(name="other", cron="0 15 * * *")])
        await rig.sleep_until_wall(epoch(2026, 12, 1, 14))
    assert [s.key for s in rig.pool.submitted] == [
        "telegram:schedule:nightly:2026-11-30T13:00Z",
        "telegram:schedule:other:2026-11-30T15:00Z",
    ]
    assert [r.text for r in rig.channel.replies] == ["done", "done"]  # both turns answered
    assert [s.name for s in scheduler.snapshot()] == ["other"]
