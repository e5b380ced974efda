"""Opening regular files strictly beneath one directory, whatever an agent does meanwhile.

A path checked first and opened later can be changed in between: an agent
that swaps a directory for a symlink gets the open to land outside. So the
confinement is on the open itself. :func:`open_beneath` starts from a
descriptor of the root and never follows a symlink: with ``openat2`` and
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it (Linux
5.6), else by opening one component at a time with ``O_NOFOLLOW`` relative
to the previous one. The caller hands it a path whose symlinks were already
resolved (and checked to lie inside), so a symlink met on the way can only be
one that appeared meanwhile: that open fails with ``ELOOP``/``EXDEV``.

Only regular files are read or written. Opens are non-blocking
(``O_NONBLOCK``), so a FIFO never blocks a thread in ``open()``; the type is
checked on the open descriptor (``S_ISREG``), and a read stops at the bytes
actually read beyond its limit, whatever size the file claims.

These functions block: run them with :func:`run_fs`, which uses a capacity
limiter of its own (:data:`MAX_FS_THREADS`), so agents' file access can never
take the worker threads the store and everything else need.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

MAX_FS_THREADS = 4
READ_CHUNK = 1024 * 1024

_T = TypeVar("_T")
_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("fs_limiter")

# openat2(2): linux/openat2.h
_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegular(Exception):
    """The path names something other than a regular file (a FIFO, a device, a directory)."""


class TooLarge(Exception):
    """The file holds more than the read limit."""


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


@functools.cache
def _syscall() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall


_openat2_missing = False


def _openat2(dir_fd: int, path: str, flags: int, mode: int) -> int | None:
    """``openat2`` confined beneath ``dir_fd`` with no symlinks, or None where
    the kernel (or a seccomp filter) does not offer it."""
    global _openat2_missing
    if _openat2_missing:
        return None
    mode = mode if flags & os.O_CREAT else 0  # openat2 refuses a mode it would not use
    how = _OpenHow(flags, mode, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall()(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM):
        _openat2_missing = True
        return None
    raise OSError(err, os.strerror(err), path)


def use_openat2(enabled: bool) -> None:
    """Use (the default, where the kernel has it) or avoid ``openat2`` (tests of the walk)."""
    global _openat2_missing
    _openat2_missing = not enabled


def open_beneath(
    root: str, parts: Sequence[str], flags: int, *, make_dirs: bool = False, mode: int = 0o666
) -> int:
    """Open ``root/parts...`` with ``flags`` (plus ``O_NOFOLLOW | O_CLOEXEC``) and
    return the descriptor; no symlink on the way is followed.

    ``make_dirs`` creates missing directories (relative to their parent's
    descriptor, so they too land inside). Raises OSError: ``ELOOP`` or
    ``EXDEV`` when a symlink or ``..`` is met, ``ENOENT``, ``ENXIO`` (a FIFO
    opened for writing with no reader), and the like.
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if not parts or any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] == "..":
        raise OSError(errno.EXDEV, "path leaves the directory", "/".join(parts))
    root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        if not make_dirs:
            fd = _openat2(root_fd, "/".join(parts), flags, mode)
            if fd is not None:
                return fd
        dir_fd = root_fd
        for name in parts[:-1]:
            if make_dirs:
                try:
                    os.mkdir(name, dir_fd=dir_fd)
                except FileExistsError:
                    pass
            next_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            if dir_fd != root_fd:
                os.close(dir_fd)
            dir_fd = next_fd
        try:
            return os.open(parts[-1], flags, mode, dir_fd=dir_fd)
        finally:
            if dir_fd != root_fd:
                os.close(dir_fd)
    finally:
        os.close(root_fd)


def _check_regular(fd: int) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise NotRegular()


def read_regular(root: str, parts: Sequence[str], max_bytes: int) -> bytes:
    """The content of a regular file; raises NotRegular, TooLarge or OSError."""
    fd = open_beneath(root, parts, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _check_regular(fd)
        chunks, total = [], 0
        while total <= max_bytes:
            data = os.read(fd, min(READ_CHUNK, max_bytes + 1 - total))
            if not data:
                break
            chunks.append(data)
            total += len(data)
        if total > max_bytes:
            raise TooLarge()
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_regular(root: str, parts: Sequence[str], data: bytes) -> None:
    """Replace (or create) a regular file with ``data``, creating its missing
    directories; raises NotRegular or OSError."""
    try:
        fd = open_beneath(root, parts, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, make_dirs=True)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise NotRegular() from None
        raise
    try:
        _check_regular(fd)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def fs_limiter() -> trio.CapacityLimiter:
    """The limiter of agents' file access in this trio run (:data:`MAX_FS_THREADS`)."""
    try:
        return _limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(MAX_FS_THREADS)
        _limiter.set(limiter)
        return limiter


async def run_fs(function: Callable[..., _T], *args: Any) -> _T:
    """Run ``function(*args)`` in a worker thread under :func:`fs_limiter`."""
    return await trio.to_thread.run_sync(function, *args, limiter=fs_limiter())
