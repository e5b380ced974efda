"""Restart policy for crash-looping children (OTP / systemd style).

At most ``max_restarts`` restarts within ``window_secs`` seconds; between
them an exponential backoff (``backoff_initial``, doubling, capped at
``backoff_max``). One failure more inside the window is FATAL: the caller
stops trying and reports the reason.

:class:`RestartTracker` only decides (synchronous, no I/O, time passed in);
:func:`supervise_restarts` is the loop that acts on its decisions.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

logger = logging.getLogger("supervisor")


@attrs.frozen
class RestartPolicy:
    """``max_restarts`` restarts allowed within any ``window_secs``; backoff between them."""

    max_restarts: int = attrs.field(validator=attrs.validators.ge(0))
    window_secs: float = attrs.field(validator=attrs.validators.ge(0))
    backoff_initial: float = attrs.field(validator=attrs.validators.ge(0))
    backoff_max: float = attrs.field(validator=attrs.validators.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )


@attrs.frozen
class RestartDecision:
    """Either restart after ``delay`` seconds, or give up (``fatal`` says why)."""

    delay: float | None = None
    fatal: str | None = None

    @property
    def is_fatal(self) -> bool:
        return self.fatal is not None


class RestartTracker:
    """Counts failures against a :class:`RestartPolicy`.

    ``record_failure`` returns what to do next; ``record_success`` (the child
    came up and did its work) resets the backoff but not the window, so a
    child that starts fine and then keeps crashing still ends FATAL. Once
    FATAL, every further failure is FATAL with the same reason until
    :meth:`reset`.
    """

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._restarts: collections.deque[float] = collections.deque()
        self._consecutive = 0
        self._fatal: str | None = None

    @property
    def fatal(self) -> str | None:
        """The reason for giving up, or None while restarts are allowed."""
        return self._fatal

    def restarts_in_window(self, now: float) -> int:
        """How many restarts were granted within the last ``window_secs`` before ``now``."""
        self._forget_before(now - self.policy.window_secs)
        return len(self._restarts)

    def record_failure(self, now: float, reason: str | None = None) -> RestartDecision:
        """A failure at time ``now``: restart after a delay, or FATAL."""
        if self._fatal is not None:
            return RestartDecision(fatal=self._fatal)
        recent = self.restarts_in_window(now)
        if recent >= self.policy.max_restarts:
            self._fatal = (
                f"{recent + 1} failures within {self.policy.window_secs:g}s "
                f"(at most {self.policy.max_restarts} restarts allowed)"
            )
            if reason:
                self._fatal += f"; last failure: {reason}"
            return RestartDecision(fatal=self._fatal)
        delay = min(self.policy.backoff_max, self.policy.backoff_initial * 2**self._consecutive)
        self._consecutive += 1
        self._restarts.append(now)
        return RestartDecision(delay=delay)

    def record_success(self) -> None:
        """The child is healthy again: the next failure restarts after the initial backoff."""
        self._consecutive = 0

    def reset(self) -> None:
        """Forget everything (an operator cleared the FATAL state)."""
        self._restarts.clear()
        self._consecutive = 0
        self._fatal = None

    def _forget_before(self, horizon: float) -> None:
        while self._restarts and self._restarts[0] <= horizon:
            self._restarts.popleft()


async def supervise_restarts(
    run_once: Callable[[], Awaitable[object]],
    policy: RestartPolicy,
    *,
    name: str = "child",
    healthy_after: float | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> str:
    """Run ``run_once`` again and again under ``policy``; return the FATAL reason.

    Every end of ``run_once`` counts as a failure, whether it returns or
    raises an ``Exception`` (a permanent child such as a warm spare is not
    supposed to end). A run that lasted at least ``healthy_after`` seconds
    (default: the policy window) resets the backoff first. Between runs it
    sleeps the backoff delay. When the policy gives up it logs the reason,
    calls ``on_fatal(reason)`` and returns the reason. Cancellation propagates
    at once (during a run or a backoff sleep); it is never counted.
    """
    tracker = RestartTracker(policy)
    stable = policy.window_secs if healthy_after is None else healthy_after
    while True:
        started = trio.current_time()
        try:
            await run_once()
            reason = "ended"
        except Exception as exc:  # noqa: BLE001 - a crash of the child is what we supervise
            reason = f"{type(exc).__name__}: {exc}"
        now = trio.current_time()
        if now - started >= stable:
            tracker.record_success()
        decision = tracker.record_failure(now, reason)
        if decision.fatal is not None:
            logger.error("%s: giving up: %s", name, decision.fatal)
            if on_fatal is not None:
                on_fatal(decision.fatal)
            return decision.fatal
        assert decision.delay is not None
        logger.warning("%s %s; restarting in %.1fs", name, reason, decision.delay)
        await trio.sleep(decision.delay)
