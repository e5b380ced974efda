"""Restart policy: synchronous decisions, and the loop under a virtual clock."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from supervisor.restart import RestartPolicy, RestartTracker, supervise_restarts

POLICY = RestartPolicy(max_restarts=3, window_secs=60, backoff_initial=1, backoff_max=3)


def test_backoff_doubles_up_to_the_cap_then_fatal_names_the_reason() -> None:
    tracker = RestartTracker(POLICY)
    delays = [tracker.record_failure(now=t).delay for t in (0.0, 1.0, 3.0)]
    assert delays == [1, 2, 3]  # 1, 2, then 4 capped at 3
    decision = tracker.record_failure(now=6.0, reason="exited with code 1")
    assert decision.is_fatal and decision.delay is None
    assert decision.fatal == (
        "4 failures within 60s (at most 3 restarts allowed); last failure: exited with code 1"
    )
    assert tracker.record_failure(now=500.0).fatal == decision.fatal  # sticky
    tracker.reset()
    assert tracker.record_failure(now=501.0).delay == 1


def test_failures_outside_the_window_do_not_count() -> None:
    tracker = RestartTracker(POLICY)
    for t in (0.0, 30.0, 59.0):
        assert not tracker.record_failure(now=t).is_fatal
    # The first restart (t=0) has left the window by t=61: three within it, one more allowed.
    assert tracker.restarts_in_window(61.0) == 2
    assert not tracker.record_failure(now=61.0).is_fatal
    assert tracker.record_failure(now=62.0).is_fatal


def test_success_resets_backoff_but_not_the_window() -> None:
    tracker = RestartTracker(POLICY)
    assert tracker.record_failure(now=0.0).delay == 1
    assert tracker.record_failure(now=1.0).delay == 2
    tracker.record_success()
    assert tracker.record_failure(now=10.0).delay == 1
    assert tracker.record_failure(now=11.0).is_fatal


def test_zero_restarts_means_the_first_failure_is_fatal() -> None:
    tracker = RestartTracker(RestartPolicy(0, 60, 1, 1))
    assert tracker.record_failure(now=0.0).fatal is not None


def test_invalid_policy_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        RestartPolicy(max_restarts=-1, window_secs=60, backoff_initial=1, backoff_max=2)
    with pytest.raises(ValueError, match="backoff_max"):
        RestartPolicy(max_restarts=1, window_secs=60, backoff_initial=5, backoff_max=2)


async def test_crash_loop_backs_off_then_goes_fatal(autojump_clock: trio.testing.MockClock) -> None:
    starts: list[float] = []
    fatal: list[str] = []

    async def crash_at_once() -> None:
        starts.append(trio.current_time())
        raise RuntimeError("agent exited with code 1")

    with trio.fail_after(100):
        reason = await supervise_restarts(
            crash_at_once, POLICY, name="agent", on_fatal=fatal.append
        )
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == [1, 2, 3]
    assert len(starts) == POLICY.max_restarts + 1
    assert fatal == [reason]
    assert "RuntimeError: agent exited with code 1" in reason


async def test_long_healthy_runs_are_restarted_forever(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs = 0

    async def run_a_while() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(POLICY.window_secs + 1)  # each run outlives the window

    with trio.move_on_after(20 * (POLICY.window_secs + 2)):
        await supervise_restarts(run_a_while, POLICY, name="spare")
    assert runs >= 10  # never FATAL: restarts are spread wider than the window


async def test_cancellation_during_backoff_propagates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = RestartPolicy(max_restarts=5, window_secs=60, backoff_initial=30, backoff_max=30)
    runs = 0

    async def crash() -> None:
        nonlocal runs
        runs += 1
        raise OSError("boom")

    with trio.move_on_after(10) as scope:
        await supervise_restarts(crash, slow)
    assert scope.cancelled_caught and runs == 1
