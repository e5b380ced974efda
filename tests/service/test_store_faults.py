"""A broker whose store is locked, full or read-only says so and exits; it never
throws the store away nor starts "ready" without one it can write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from broker.testing.harness import free_port
from tests.disk import corrupt_copies, lock_held, save_a_thread, saved_threads, tmpfs
from tests.service.broker_process import ROOT, write_config


async def run_broker(config: Path) -> tuple[int, str]:
    """``python -m broker run`` to its exit (which must come within 60 s): code and log."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "broker", "run", "--config", str(config)],
            cwd=ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return done.returncode, done.stdout.decode(errors="replace")


async def test_a_locked_store_is_waited_for_then_the_broker_exits_75_and_keeps_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "broker.sqlite3"
    config = write_config(tmp_path, free_port(), state={"path": str(path), "lock_wait_secs": 1})
    await save_a_thread(path)
    with lock_held(path):
        code, log = await run_broker(config)
    assert code == 75, log
    assert f"state store {path} is locked by another process" in log
    assert "ready" not in log
    assert corrupt_copies(path.parent) == []
    assert await saved_threads(path) == {"telegram:kept": "sess-kept"}


@pytest.mark.parametrize(("fault", "code", "words"), [("full", 74, "full"), ("ro", 73, "written")])
async def test_a_full_or_read_only_store_at_start_is_named_and_the_broker_exits(
    tmp_path: Path, fault: str, code: int, words: str
) -> None:
    with tmpfs(tmp_path / "disk", "256k") as disk:
        path = disk.path / "broker.sqlite3"
        config = write_config(tmp_path, free_port(), state={"path": str(path)})
        await save_a_thread(path)
        if fault == "full":
            path.with_name(path.name + "-wal").unlink(missing_ok=True)
            disk.fill()
        else:
            disk.read_only()
        exit_code, log = await run_broker(config)
        assert exit_code == code, log
        assert f"state store {path}" in log and words in log, log
        assert "ready" not in log and "Traceback" not in log, log
        disk.read_only(False)
        disk.free()
        assert corrupt_copies(disk.path) == []
        assert await saved_threads(path) == {"telegram:kept": "sess-kept"}
