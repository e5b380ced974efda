"""Find and stop process groups left behind by a supervisor that was killed.

A parent-death signal covers a child whose parent dies, but not the child's
own children, and not a parent killed before the signal was armed. So a
supervisor records each child's pid, process group and start time (in clock
ticks since boot, ``/proc/<pid>/stat`` field 22); the next supervisor calls
:func:`stop_leftover_group` with that record. A pid is never trusted alone:
only processes in the recorded group that started no earlier than the
recorded leader are signalled, so a reused pid is left in peace.

Everything here is synchronous and reads ``/proc``; run it in a worker thread
when many records are checked.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None if gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may itself contain spaces or ')'
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None if it does not exist."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def process_group_members(pgid: int) -> list[int]:
    """Every live (non-zombie) process whose process group is ``pgid``."""
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def stop_leftover_group(pgid: int, recorded_start_ticks: int) -> list[int]:
    """SIGKILL the processes of group ``pgid`` that a dead supervisor left behind.

    Returns the pids signalled. A process counts as left behind when it is in
    the group and started at or after ``recorded_start_ticks`` (the group
    leader's start); never this process itself.
    """
    own = os.getpid()
    stopped = []
    for pid in process_group_members(pgid):
        ticks = start_ticks(pid)
        if pid == own or ticks is None or ticks < recorded_start_ticks:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        stopped.append(pid)
    return stopped
