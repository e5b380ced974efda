"""Confined opens of regular files: real files, FIFOs and symlinks in a temporary directory,
with ``openat2`` and with the walk one component at a time."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from broker.acp.fs import (
    MAX_FS_THREADS,
    NotRegular,
    TooLarge,
    fs_limiter,
    open_beneath,
    read_regular,
    use_openat2,
    write_regular,
)


@pytest.fixture(params=["openat2", "walk"])
def way(request: pytest.FixtureRequest) -> Iterator[str]:
    use_openat2(request.param == "openat2")
    yield str(request.param)
    use_openat2(True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "a.txt").write_text("inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("SECRET")
    (work / "link").symlink_to(tmp_path / "outside")
    (work / "link-in").symlink_to(work / "sub")
    os.mkfifo(work / "pipe")
    return work


def test_a_regular_file_is_read_and_written_beneath_the_root(root: Path, way: str) -> None:
    assert read_regular(str(root), ["sub", "a.txt"], 100) == b"inside"
    write_regular(str(root), ["new", "deeper", "b.txt"], b"made")
    assert (root / "new" / "deeper" / "b.txt").read_bytes() == b"made"
    write_regular(str(root), ["sub", "a.txt"], b"short")
    assert (root / "sub" / "a.txt").read_bytes() == b"short"


@pytest.mark.parametrize(
    "parts", [["link", "secret.txt"], ["link-in", "a.txt"], ["sub", "..", "..", "outside"]]
)
def test_no_symlink_or_dot_dot_on_the_way_is_followed(
    root: Path, way: str, parts: list[str]
) -> None:
    with pytest.raises(OSError) as caught:
        read_regular(str(root), parts, 100)
    assert caught.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
    with pytest.raises(OSError):
        write_regular(str(root), [*parts[:-1], "planted.txt"], b"x")
    assert sorted(os.listdir(root.parent / "outside")) == ["secret.txt"]


def test_a_fifo_nobody_writes_is_refused_at_once_for_reading_and_writing(
    root: Path, way: str
) -> None:
    with pytest.raises(NotRegular):
        read_regular(str(root), ["pipe"], 100)
    with pytest.raises(NotRegular):
        write_regular(str(root), ["pipe"], b"x")  # no reader: ENXIO, not a blocked open


def test_a_fifo_with_a_reader_is_not_written(root: Path, way: str) -> None:
    reader = os.open(root / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(NotRegular):
            write_regular(str(root), ["pipe"], b"x")
        assert os.read(reader, 1) == b""  # nothing was written into it
    finally:
        os.close(reader)


def test_a_read_stops_at_the_limit_of_bytes_actually_read(root: Path, way: str) -> None:
    (root / "big.bin").write_bytes(b"x" * 1001)
    with pytest.raises(TooLarge):
        read_regular(str(root), ["big.bin"], 1000)
    assert read_regular(str(root), ["big.bin"], 1001) == b"x" * 1001


def test_a_directory_is_not_a_regular_file(root: Path, way: str) -> None:
    with pytest.raises(NotRegular):
        read_regular(str(root), ["sub"], 100)
    fd = open_beneath(str(root), ["sub"], os.O_RDONLY)
    os.close(fd)


async def test_file_access_has_a_limiter_of_its_own() -> None:
    limiter = fs_limiter()
    assert (
        limiter is fs_limiter() and limiter is not trio.to_thread.current_default_thread_limiter()
    )
    assert limiter.total_tokens == MAX_FS_THREADS
