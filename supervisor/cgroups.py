"""A cgroup per child, where this process has a delegated cgroup v2 of its own.

A cgroup holds every process its members start, whatever they do with
sessions, process groups or parents; ``cgroup.kill`` (Linux 5.14) SIGKILLs
all of them at once. So where the supervising process may create cgroups
below its own (systemd's ``Delegate=yes``; never below the root cgroup),
each child runs in a cgroup of its own: the child moves itself into it
between fork and exec, and when the child is stopped or exits, the whole
cgroup is killed, waited for until empty, and removed.

Where there is no delegated cgroup, :mod:`supervisor.reaper` still finds
what a child's tree leaves behind.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from pathlib import Path

import trio

logger = logging.getLogger("supervisor")

EMPTY_POLL_SECS = 0.01
_names = itertools.count(1)


def cgroup_dir(proc_cgroup: str, mountinfo: str) -> Path | None:
    """The cgroup v2 directory named by ``/proc/self/cgroup`` (its ``0::`` line),
    under the cgroup2 mount found in ``/proc/self/mountinfo``; None for the
    root cgroup, without cgroup v2, or without such a mount."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")), None)
    if path is None or path.strip() in ("", "/"):
        return None
    for line in mountinfo.splitlines():
        fields, _, kind = line.partition(" - ")
        if kind.split(" ", 1)[0] == "cgroup2":
            return Path(fields.split(" ")[4]) / path.strip().lstrip("/")
    return None


@functools.cache
def delegated_cgroup() -> Path | None:
    """This process's own cgroup when it may create cgroups in it, else None
    (looked up once)."""
    try:
        directory = cgroup_dir(
            Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
        )
    except OSError:
        return None
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return None
    return directory


class ChildCgroup:
    """The cgroup of one child. :meth:`create` makes it; the forked child joins
    it by writing ``0`` to :attr:`procs` before exec; :meth:`remove` empties
    (``cgroup.kill``) and removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.procs = str(path / "cgroup.procs")

    def __repr__(self) -> str:
        return f"<ChildCgroup {self.path}>"

    @classmethod
    def create(cls, parent: Path, name: str) -> ChildCgroup | None:
        """A new cgroup ``parent/name-N``; None (logged) where it cannot be made
        or has no ``cgroup.kill``."""
        path = parent / f"{name}-{os.getpid()}-{next(_names)}"
        try:
            path.mkdir()
        except OSError as exc:
            logger.warning("cannot create the cgroup %s: %s", path, exc)
            return None
        if not (path / "cgroup.kill").exists():
            logger.warning("cgroup %s has no cgroup.kill (Linux < 5.14); not used", path)
            path.rmdir()
            return None
        return cls(path)

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError as exc:
            logger.warning("cannot kill the cgroup %s: %s", self.path, exc)

    def populated(self) -> bool:
        try:
            events = (self.path / "cgroup.events").read_text()
        except OSError:
            return False
        return "populated 1" in events.splitlines()

    async def remove(self) -> None:
        """Kill what is in the cgroup, wait until it is empty, and remove it (bound
        it with the caller's cancel scope: a cgroup still populated then stays)."""
        self.kill()
        try:
            while self.populated():  # noqa: ASYNC110 - no wakeup without inotify
                await trio.sleep(EMPTY_POLL_SECS)
        finally:
            try:
                self.path.rmdir()
            except OSError as exc:
                logger.error("cannot remove the cgroup %s: %s", self.path, exc)
