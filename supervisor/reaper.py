"""Descendants that leave their child's process group are still found, stopped and reaped.

A process group reaches only the processes that stay in it: a grandchild that
calls ``setsid()`` (a daemonising tool, a dev server) leaves it and would
outlive its child's stop. Two Linux child-subreaper settings
(``PR_SET_CHILD_SUBREAPER``) keep every descendant within reach:

* every child is a subreaper itself (set between fork and exec, and kept
  across exec), so while it lives its orphaned descendants are re-parented to
  *it*: they stay in its tree, never in another child's;
* the supervising process is a subreaper (:func:`become_subreaper`), so when
  a child dies, what is left of its tree is re-parented to the supervisor
  instead of to PID 1 (which, in a container, may never reap anything).

After a child's exit, :func:`adopted_orphans` therefore names exactly what
its tree left behind: processes whose parent is now this process, that run
in a session other than this process's own, that are not a running child,
and that started no earlier than the child that died. :func:`stop_orphans`
SIGKILLs and reaps them. The one thing this assumes is that the supervising
process starts no other process in a session of its own (the broker does
not); a descendant of a child that is still running is never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import trio

from supervisor.leftovers import stat_fields

logger = logging.getLogger("supervisor")

PR_SET_CHILD_SUBREAPER = 36
REAP_POLL_SECS = 0.01

_PROC = Path("/proc")
_running: set[int] = set()  # pids of this process's running children (their leaders)
#: Held while a child is forked and recorded as running, and while orphans are
#: looked for: a child just forked is never taken for an orphan.
spawn_lock = threading.Lock()


@functools.cache
def prctl() -> Any:
    """libc's ``prctl``, typed (resolve it before a fork: the child only calls it)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def set_subreaper() -> bool:
    """Make the calling process a child subreaper; False where Linux refuses."""
    if not sys.platform.startswith("linux"):
        return False
    return bool(prctl()(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


_subreaper_pid: int | None = None


def become_subreaper() -> bool:
    """Make this process the subreaper of its children's trees (once per process)."""
    global _subreaper_pid
    if _subreaper_pid != os.getpid():
        if not set_subreaper():
            logger.warning(
                "cannot become a child subreaper: descendants that leave a child's"
                " process group are left to PID 1"
            )
            return False
        _subreaper_pid = os.getpid()
    return True


def running(pid: int) -> None:
    """``pid`` is a running child of this process (never an orphan to stop);
    call with :data:`spawn_lock` held since before the fork."""
    _running.add(pid)


def reaped(pid: int) -> None:
    _running.discard(pid)


def adopted_orphans(started_since: int) -> list[int]:
    """What the trees of dead children left to this process (see the module
    docstring): ours by re-parenting, in a session not ours, started at or
    after ``started_since`` (clock ticks since boot), not a running child."""
    me, my_session = os.getpid(), os.getsid(0)
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in _running:
            continue
        fields = stat_fields(int(entry.name))
        if (
            fields is not None
            and int(fields[1]) == me
            and int(fields[3]) != my_session
            and int(fields[19]) >= started_since
        ):
            found.append(int(entry.name))
    return found


async def stop_orphans(started_since: int) -> list[int]:
    """SIGKILL :func:`adopted_orphans` and wait until each is reaped; returns
    their pids. Bound it with the caller's cancel scope: one still there then
    stays this process's child and is found again next time."""
    with spawn_lock:
        orphans = adopted_orphans(started_since)
    for pid in orphans:  # ours until reaped: the pid cannot be reused meanwhile
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if orphans:
        logger.warning(
            "stopping %d process(es) that had left a stopped child's group: %s",
            len(orphans),
            orphans,
        )
    left = set(orphans)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - never blocks
            except ChildProcessError:  # not ours (any more): nothing to reap
                done = pid
            if done:
                left.discard(pid)
        if left:
            await trio.sleep(REAP_POLL_SECS)
    return orphans
