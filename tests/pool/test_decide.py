"""The sessions' pure decisions, tested directly: facts in, decision out."""

from __future__ import annotations

import math
from typing import Any

import attrs

from broker import sentences
from broker.reply import Outcome
from broker.sessions.decide import (
    Admit,
    Failure,
    Refuse,
    SendCancel,
    StopAgent,
    StopReason,
    TurnFacts,
    TurnOutcomeFacts,
    TurnOver,
    WaitUntil,
    decide_admission,
    idle_expired,
    turn_end,
    turn_step,
)


@attrs.define
class FakeSession:
    name: str
    is_idle: bool
    last_active: float
    profile: str = "default"


def test_admission_below_the_limit_evicts_nobody() -> None:
    sessions = [FakeSession("a", True, 1.0)]
    assert decide_admission(sessions, max_sessions=2) == Admit()


def test_admission_at_the_limit_evicts_the_least_recently_used_idle_session() -> None:
    busy = FakeSession("busy", False, 0.0)  # the oldest, but busy: never evicted
    old = FakeSession("old", True, 5.0)
    new = FakeSession("new", True, 9.0)
    assert decide_admission([busy, new, old], max_sessions=3) == Admit(evict=old)


def test_admission_refuses_when_every_session_is_busy_or_starting() -> None:
    sessions = [FakeSession(str(i), False, float(i)) for i in range(3)]
    assert decide_admission(sessions, max_sessions=3) == Refuse(busy=3)


def test_a_full_pool_evicts_first_the_idle_sessions_of_a_profile_over_its_share() -> None:
    oldest = FakeSession("oldest", True, 1.0, "claude")  # claude holds 1, its share is 2
    review_old = FakeSession("review-old", True, 3.0, "review")
    review_new = FakeSession("review-new", True, 4.0, "review")  # review holds 3 of its 1
    review_busy = FakeSession("review-busy", False, 0.0, "review")
    sessions = [oldest, review_new, review_old, review_busy]
    shares = {"claude": 2, "review": 1}
    assert decide_admission(sessions, 4, shares) == Admit(evict=review_old)
    # no profile over its share: plain LRU over every idle session
    assert decide_admission(sessions, 4, {"claude": 1, "review": 3}) == Admit(evict=oldest)
    # over its share but busy: never evicted; LRU over the others
    assert decide_admission([oldest, review_busy], 2, {"review": 0}) == Admit(evict=oldest)
    assert decide_admission([review_busy], 1, shares) == Refuse(busy=1)


def test_idle_expiry_returns_the_expired_and_the_next_moment_to_look() -> None:
    expired = FakeSession("expired", True, 0.0)
    soon = FakeSession("soon", True, 50.0)
    busy = FakeSession("busy", False, 0.0)
    assert idle_expired([expired, soon, busy], now=100.0, ttl=100.0) == ([expired], 150.0)


def test_idle_expiry_with_nothing_idle_looks_again_one_ttl_later() -> None:
    assert idle_expired([FakeSession("b", False, 0.0)], now=10.0, ttl=30.0) == ([], 40.0)


def test_a_running_turn_waits_for_its_hard_ceiling() -> None:
    assert turn_step(TurnFacts(hard_deadline=60.0), now=10.0) == WaitUntil(60.0)


def test_the_hard_ceiling_sends_a_cancel_marked_as_a_timeout() -> None:
    assert turn_step(TurnFacts(hard_deadline=60.0), now=60.0) == SendCancel(timed_out=True)


def test_a_stop_request_sends_a_cancel_that_is_no_timeout() -> None:
    facts = TurnFacts(hard_deadline=60.0, stop_requested=StopReason.SHUTDOWN)
    assert turn_step(facts, now=1.0) == SendCancel(timed_out=False)


def test_after_the_cancel_the_turn_waits_the_grace_then_stops_the_agent() -> None:
    facts = TurnFacts(hard_deadline=60.0, cancel_deadline=65.0)
    assert turn_step(facts, now=61.0) == WaitUntil(65.0)
    assert turn_step(facts, now=65.0) == StopAgent()


def test_an_answer_or_the_agents_exit_settles_the_turn_whatever_the_clock() -> None:
    assert turn_step(TurnFacts(hard_deadline=1.0, settled=True), now=99.0) == TurnOver()
    late = TurnFacts(hard_deadline=1.0, cancel_deadline=2.0, agent_exited=True)
    assert turn_step(late, now=99.0) == TurnOver()


def test_no_ceiling_means_no_deadline() -> None:
    assert turn_step(TurnFacts(hard_deadline=math.inf), now=1e9) == WaitUntil(math.inf)


def facts(**changes: Any) -> TurnOutcomeFacts:
    base = TurnOutcomeFacts(
        text="partial", stop_reason=None, turn_hard_secs=1800, cancel_grace_secs=10
    )
    return attrs.evolve(base, **changes)


def test_an_answered_turn_is_completed_and_needs_no_restart() -> None:
    end, restart = turn_end(facts(stop_reason="end_turn"))
    assert (end.outcome, end.stop_reason, end.text, restart) == (
        Outcome.COMPLETED,
        "end_turn",
        "partial",
        False,
    )


def test_a_timed_out_turn_says_which_limit() -> None:
    end, restart = turn_end(facts(stop_reason="cancelled", timed_out=True))
    assert end.outcome is Outcome.TIMED_OUT and not restart
    assert end.reason == sentences.timeout_reason(1800)


def test_a_cancel_the_agent_ignored_ends_the_turn_and_replaces_the_agent() -> None:
    end, restart = turn_end(facts(unresponsive=True))
    assert end.outcome is Outcome.CANCELLED and restart
    assert end.reason == sentences.ignored_cancel_reason(sentences.CANCELLED, 10)


def test_cancelled_by_a_reset_or_a_shutdown_says_so() -> None:
    reset, _ = turn_end(facts(stop_reason="cancelled", stop_requested=StopReason.RESET))
    shutdown, _ = turn_end(facts(stop_reason="cancelled", stop_requested=StopReason.SHUTDOWN))
    assert (reset.outcome, reset.reason) == (Outcome.CANCELLED, sentences.RESET)
    assert (shutdown.outcome, shutdown.reason) == (Outcome.SHUTDOWN, sentences.SHUTDOWN)


def test_restart_after_cancel_only_when_configured_and_nobody_asked_to_stop() -> None:
    assert turn_end(facts(stop_reason="cancelled", restart_after_cancel=True))[1]
    assert not turn_end(facts(stop_reason="cancelled"))[1]
    stopping = facts(
        stop_reason="cancelled", restart_after_cancel=True, stop_requested=StopReason.IDLE
    )
    assert not turn_end(stopping)[1]


def test_an_exited_agent_is_agent_died_with_its_stderr() -> None:
    end, restart = turn_end(
        facts(
            failure=Failure.AGENT_EXITED,
            exit_description="killed by SIGKILL",
            stderr_tail="oom",
        )
    )
    assert (end.outcome, end.detail, restart) == (Outcome.AGENT_DIED, "oom", False)
    assert end.reason == sentences.agent_died_reason("killed by SIGKILL")


def test_unreadable_output_of_a_live_agent_replaces_it() -> None:
    end, restart = turn_end(facts(failure=Failure.UNREADABLE, error="line too long"))
    assert end.outcome is Outcome.AGENT_DIED and restart
    assert end.reason == sentences.unreadable_reason("line too long")


def test_an_exit_during_a_requested_stop_is_a_shutdown_not_a_death() -> None:
    stopped = facts(
        failure=Failure.AGENT_EXITED,
        exit_description="killed by SIGTERM",
        stop_requested=StopReason.SHUTDOWN,
    )
    assert turn_end(stopped)[0].outcome is Outcome.SHUTDOWN


def test_an_agent_error_keeps_its_message_and_data() -> None:
    end, restart = turn_end(facts(failure=Failure.AGENT_ERROR, error="bad", error_detail="{}"))
    assert (end.outcome, end.reason, end.detail, restart) == (
        Outcome.ERROR,
        sentences.error_reason("bad"),
        "{}",
        False,
    )


def test_while_a_person_is_asked_the_ceiling_waits() -> None:
    asking = TurnFacts(hard_deadline=60.0, asking=True)
    assert turn_step(asking, now=90.0) == WaitUntil(math.inf)
    stopping = TurnFacts(hard_deadline=60.0, asking=True, stop_requested=StopReason.RESET)
    assert turn_step(stopping, now=90.0) == SendCancel(timed_out=False)
