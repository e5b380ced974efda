"""The sessions' decisions: pure, synchronous functions over facts.

They change nothing and never wait; they return what to do, and the caller
does it (in the manner of httpcore's connection pool: state in, decisions
out, I/O after). Each has direct tests (tests/pool/test_decide.py).

- :func:`decide_admission`: may a new thread start a session, whom to evict;
- :func:`idle_expired`: which sessions the reaper suspends, when to look again;
- :func:`turn_step`: what a running turn needs next (cancel, stop, wait, end);
- :func:`turn_end`: how a settled turn ended, and whether its agent must be
  replaced.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Generic, Protocol, TypeVar

import attrs

from broker import sentences
from broker.reply import Outcome, TurnEnd


class Candidate(Protocol):
    """What the decisions read of a session."""

    @property
    def is_idle(self) -> bool: ...

    @property
    def last_active(self) -> float: ...

    @property
    def profile(self) -> str: ...


C = TypeVar("C", bound=Candidate)


@attrs.frozen
class Admit(Generic[C]):
    """Start a session for the new thread, after suspending ``evict`` if set."""

    evict: C | None = None


@attrs.frozen
class Refuse:
    """No room: every one of ``busy`` sessions is busy or starting."""

    busy: int


def decide_admission(
    sessions: Iterable[C], max_sessions: int, shares: Mapping[str, int] | None = None
) -> Admit[C] | Refuse:
    """Whether a new thread may start a session, and whom to evict for it.

    Starting sessions count toward ``max_sessions``. Only an idle session with
    an empty queue can be evicted, the least recently used first; a busy one
    never is. ``shares`` (profile -> its share of the pool, absent or 0: none)
    say whose idle sessions go first: those of a profile holding more sessions
    than its share.
    """
    live = list(sessions)
    if len(live) < max_sessions:
        return Admit()
    idle = [s for s in live if s.is_idle]
    if not idle:
        return Refuse(busy=len(live))
    held: dict[str, int] = {}
    for session in live:
        held[session.profile] = held.get(session.profile, 0) + 1
    shares = shares or {}
    over = [s for s in idle if shares.get(s.profile, 0) and held[s.profile] > shares[s.profile]]
    return Admit(evict=min(over or idle, key=lambda s: s.last_active))


def idle_expired(sessions: Iterable[C], now: float, ttl: float) -> tuple[list[C], float]:
    """The sessions idle for ``ttl`` or longer, and when to look again."""
    expired, next_check = [], now + ttl
    for session in sessions:
        if not session.is_idle:
            continue
        expires = session.last_active + ttl
        if expires <= now:
            expired.append(session)
        else:
            next_check = min(next_check, expires)
    return expired, next_check


# --- one turn's life -------------------------------------------------------------------------


class StopReason(enum.Enum):
    """Why the pool asked a session to end."""

    EVICTED = "evicted"
    IDLE = "idle"
    SHUTDOWN = "shutdown"
    RESET = "reset"
    RETIRED = "retired"  # its profile was removed by a reload; stopped between turns


@attrs.frozen
class TurnFacts:
    """What is known of a running turn at one instant; built by the session.

    ``cancel_deadline`` is set once ``session/cancel`` went out: the agent has
    until then to answer ``cancelled``.
    """

    hard_deadline: float
    cancel_deadline: float | None = None
    settled: bool = False  # the prompt was answered, or failed
    asking: bool = False  # a person is being asked: the hard ceiling waits
    agent_exited: bool = False
    stop_requested: StopReason | None = None


@attrs.frozen
class SendCancel:
    """Send ``session/cancel`` now; ``timed_out`` when the hard ceiling is why."""

    timed_out: bool


@attrs.frozen
class StopAgent:
    """The agent ignored the cancel past its grace: stop the process."""


@attrs.frozen
class WaitUntil:
    """Nothing to do before ``when`` (or before the turn's facts change)."""

    when: float


@attrs.frozen
class TurnOver:
    """The turn is over (answered, failed or its agent gone): end it."""


TurnStep = SendCancel | StopAgent | WaitUntil | TurnOver


def turn_step(facts: TurnFacts, now: float) -> TurnStep:
    """What a running turn needs next.

    A turn has no inactivity timeout: a silent agent is waited for up to the
    hard ceiling, which does not run while a person is being asked (the
    session moves it on by the time that took). At the ceiling, or when a
    stop is requested, the turn is cancelled once; an agent that does not
    answer within the cancel grace is stopped. The answer and the agent's
    exit both end the turn.
    """
    if facts.settled or facts.agent_exited:
        return TurnOver()
    if facts.cancel_deadline is not None:
        if now >= facts.cancel_deadline:
            return StopAgent()
        return WaitUntil(facts.cancel_deadline)
    past_ceiling = now >= facts.hard_deadline and not facts.asking
    if past_ceiling or facts.stop_requested is not None:
        return SendCancel(timed_out=past_ceiling)
    return WaitUntil(math.inf if facts.asking else facts.hard_deadline)


class Failure(enum.Enum):
    """How a prompt failed, when it did not get an answer."""

    NONE = "none"
    AGENT_EXITED = "agent_exited"  # the process is gone
    UNREADABLE = "unreadable"  # stdout closed or unreadable, the process maybe alive
    AGENT_ERROR = "agent_error"  # the agent answered with a JSON-RPC error
    INTERNAL = "internal"  # anything else


@attrs.frozen
class TurnOutcomeFacts:
    """What is known once a turn settled; input of :func:`turn_end`.

    ``error`` is the agent's error message (AGENT_ERROR), the unreadable
    stream's reason (UNREADABLE) or the exception's repr (INTERNAL);
    ``exit_description`` is set when the agent process exited.
    """

    text: str
    stop_reason: str | None  # the prompt's answer; None when it got none
    failure: Failure = Failure.NONE
    error: str = ""
    error_detail: str = ""
    unresponsive: bool = False  # ignored a cancel past the grace, so it was stopped
    timed_out: bool = False
    stop_requested: StopReason | None = None
    exit_description: str | None = None
    stderr_tail: str = ""
    turn_hard_secs: float = 0.0
    cancel_grace_secs: float = 0.0
    restart_after_cancel: bool = False  # configured, and the agent can load the session
    cancel_requested: bool = False  # the user asked (/cancel)
    refusal: str = ""  # why the broker refused a tool of this turn, if it did


def turn_end(facts: TurnOutcomeFacts) -> tuple[TurnEnd, bool]:
    """The turn's :class:`TurnEnd`, and whether the agent must be replaced
    before the next turn (it ignored a cancel, its output is unreadable, or
    it needs a restart after a cancel to answer the next prompt)."""
    text = facts.text
    if facts.unresponsive or facts.stop_reason == "cancelled":
        if facts.timed_out:
            outcome, reason = Outcome.TIMED_OUT, sentences.timeout_reason(facts.turn_hard_secs)
        elif facts.stop_requested is StopReason.RESET:
            outcome, reason = Outcome.CANCELLED, sentences.RESET
        elif facts.stop_requested is not None:
            outcome, reason = Outcome.SHUTDOWN, sentences.SHUTDOWN
        elif facts.refusal and not facts.cancel_requested:
            outcome, reason = Outcome.CANCELLED, facts.refusal
        else:
            outcome, reason = Outcome.CANCELLED, sentences.CANCELLED
        if facts.unresponsive:
            reason = sentences.ignored_cancel_reason(reason, facts.cancel_grace_secs)
        restart = facts.unresponsive or (
            facts.stop_reason == "cancelled"
            and facts.stop_requested is None
            and facts.restart_after_cancel
        )
        return TurnEnd(outcome, text, facts.stop_reason, reason), restart
    if facts.stop_reason is not None:
        return TurnEnd(Outcome.COMPLETED, text, facts.stop_reason, facts.refusal), False
    if facts.failure in (Failure.AGENT_EXITED, Failure.UNREADABLE):
        if facts.stop_requested is not None:
            return TurnEnd(Outcome.SHUTDOWN, text, None, sentences.SHUTDOWN), False
        if facts.exit_description is not None:
            reason = sentences.agent_died_reason(facts.exit_description)
            return TurnEnd(Outcome.AGENT_DIED, text, None, reason, facts.stderr_tail), False
        reason = sentences.unreadable_reason(facts.error or "closed")
        return TurnEnd(Outcome.AGENT_DIED, text, None, reason, facts.stderr_tail), True
    if facts.failure is Failure.AGENT_ERROR:
        reason = sentences.error_reason(facts.error)
        return TurnEnd(Outcome.ERROR, text, None, reason, facts.error_detail), False
    return TurnEnd(Outcome.ERROR, text, None, sentences.error_reason(facts.error)), False
