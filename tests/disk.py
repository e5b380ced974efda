"""Broken disks for the store tests: a small tmpfs that fills up or turns
read-only, another process holding a lock on a SQLite file, and a store
holding one thread to check that it survives."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from broker.store import open_store

_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("BEGIN IMMEDIATE")
db.execute("CREATE TABLE IF NOT EXISTS held (x)")
print("locked", flush=True)
sys.stdin.read()
"""


class Tmpfs:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs root)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> None:
        """Write until the file system is full."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def read_only(self, on: bool = True) -> None:
        mode = "remount,ro" if on else "remount,rw"
        subprocess.run(["mount", "-o", mode, str(self.path)], check=True)


@contextmanager
def tmpfs(path: Path, size: str = "1m") -> Iterator[Tmpfs]:
    """Mount a tmpfs at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield Tmpfs(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextmanager
def lock_held(path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Another process holding the write lock of the SQLite file ``path``
    until the block ends (a broker of another unit, a backup tool...)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        yield holder
    finally:
        release(holder)


def release(holder: subprocess.Popen[bytes]) -> None:
    if holder.poll() is None:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)


def corrupt_copies(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".corrupt-" in name)


async def save_a_thread(path: Path) -> None:
    """A store at ``path`` holding the thread ``telegram:kept``."""
    async with open_store(path) as store:
        store.save_thread("telegram:kept", "sess-kept")


async def saved_threads(path: Path) -> dict[str, str]:
    async with open_store(path) as store:
        return await store.threads()
