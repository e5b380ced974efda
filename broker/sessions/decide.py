"""The pool's decisions: pure, synchronous functions over the sessions.

They change nothing and never wait; they return what to do, and the pool
does it (in the manner of httpcore's connection pool). Each has direct tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

import attrs


class Candidate(Protocol):
    """What the decisions read of a session."""

    @property
    def is_idle(self) -> bool: ...

    @property
    def last_active(self) -> float: ...


C = TypeVar("C", bound=Candidate)


@attrs.frozen
class Admit(Generic[C]):
    """Start a session for the new thread, after suspending ``evict`` if set."""

    evict: C | None = None


@attrs.frozen
class Refuse:
    """No room: every one of ``busy`` sessions is busy or starting."""

    busy: int


def decide_admission(sessions: Iterable[C], max_sessions: int) -> Admit[C] | Refuse:
    """Whether a new thread may start a session, and whom to evict for it.

    Starting sessions count toward ``max_sessions``. Only an idle session with
    an empty queue can be evicted, the least recently used first; a busy one
    never is.
    """
    live = list(sessions)
    if len(live) < max_sessions:
        return Admit()
    idle = [s for s in live if s.is_idle]
    if not idle:
        return Refuse(busy=len(live))
    return Admit(evict=min(idle, key=lambda s: s.last_active))


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
