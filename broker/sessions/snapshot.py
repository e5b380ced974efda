"""What the pool shows of itself: counters, the turn-duration histogram,
recent events, and the :class:`PoolSnapshot` the status side reads.

A snapshot is built synchronously (:meth:`broker.sessions.pool.Pool.snapshot`) and is
immutable from then on, so a status endpoint can serialise it at leisure.
"""

from __future__ import annotations

import math

import attrs

from broker.reply import Outcome
from broker.sessions.questions import QuestionCounters
from broker.sessions.session import SessionSnapshot, SessionState


@attrs.define
class PoolCounters:
    spawned: int = 0
    resumed: int = 0
    evicted: int = 0
    idle_suspended: int = 0
    crashed: int = 0
    start_failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    turns_submitted: int = 0
    turns_completed: int = 0
    refused_busy: int = 0
    refused_pool_full: int = 0
    leftovers_stopped: int = 0
    crash_loops: int = 0  # threads blocked after their agent failed too often
    # every submitted turn's one outcome (an Outcome value): they sum to turns_submitted
    turns_ended: dict[str, int] = attrs.field(factory=lambda: {o.value: 0 for o in Outcome})

    def copy(self) -> PoolCounters:
        return attrs.evolve(self, turns_ended=dict(self.turns_ended))


TURN_SECONDS_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, math.inf)


@attrs.define
class Histogram:
    """Cumulative-bucket histogram, Prometheus style (``le`` upper bounds)."""

    bounds: tuple[float, ...] = TURN_SECONDS_BUCKETS
    counts: list[int] = attrs.field(factory=lambda: [0] * len(TURN_SECONDS_BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count)


@attrs.frozen
class PoolEvent:
    """Something people watching the broker want to see (the dashboard's feed)."""

    at: float  # wall-clock time, seconds since the epoch
    # started | resumed | evicted | idle | crashed | start_failed | blocked | timed_out | reset
    # | dropped (held messages of a batch, by /cancel)
    kind: str
    thread_key: str
    detail: str = ""


LISTED_THREADS = 100  # suspended threads a snapshot names (all are counted)


@attrs.frozen
class BlockedThread:
    """A thread refused for a while after its agent kept failing: until
    ``until`` (wall clock, seconds since the epoch), or a /reset."""

    thread_key: str
    secs_left: float
    reason: str
    until: float = 0.0
    detail: str = ""  # the tail of the last failure's stderr


@attrs.frozen
class ProfileGauge:
    """One agent profile's part of the pool: its live sessions (stopping ones
    left out), how many run a turn, and its share (``[agents.NAME]
    max_sessions``; 0: no share of its own)."""

    profile: str
    sessions: int
    busy: int
    share: int


@attrs.frozen
class PoolSnapshot:
    """The pool at one instant; built synchronously, so it never waits."""

    sessions: tuple[SessionSnapshot, ...]
    max_sessions: int
    suspended: int
    spares: int
    spares_ready: int
    counters: PoolCounters
    closing: bool
    version: int
    turn_seconds: Histogram
    recent: tuple[PoolEvent, ...]
    questions: QuestionCounters = attrs.field(factory=QuestionCounters)
    answer_seconds: Histogram = attrs.field(factory=Histogram)
    suspended_threads: tuple[str, ...] = ()  # the first LISTED_THREADS, sorted
    blocked_threads: tuple[BlockedThread, ...] = ()
    shares: tuple[tuple[str, int], ...] = ()  # each configured profile and its share, in order

    def count(self, state: str) -> int:
        return sum(1 for s in self.sessions if s.state == state)

    @property
    def active(self) -> int:
        return sum(1 for s in self.sessions if s.state != SessionState.STOPPING.value)

    def summary(self) -> str:
        """One line, e.g. ``12 sessions (3 busy), 2 suspended``."""
        busy = self.count(SessionState.BUSY.value)
        starting = self.count(SessionState.STARTING.value)
        parts = [f"{busy} busy"] + ([f"{starting} starting"] if starting else [])
        line = f"{self.active} sessions ({', '.join(parts)}), {self.suspended} suspended"
        if self.spares:
            line += f", {self.spares_ready}/{self.spares} spares ready"
        return line

    def profiles(self) -> tuple[ProfileGauge, ...]:
        """Each configured profile (in the config's order), then any profile a
        reload removed that still has sessions, with its gauges."""
        names = dict(self.shares)
        for session in self.sessions:
            names.setdefault(session.profile, 0)
        live = [s for s in self.sessions if s.state != SessionState.STOPPING.value]
        return tuple(
            ProfileGauge(
                name,
                sum(1 for s in live if s.profile == name),
                sum(1 for s in live if s.profile == name and s.state == SessionState.BUSY.value),
                share,
            )
            for name, share in names.items()
        )
