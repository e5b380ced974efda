"""supervisor.process with real child processes (small Python scripts)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor.process import (
    LOG_BURST,
    LOG_LINE_MAX,
    LOG_RATE,
    Child,
    ChildSpec,
    LineTooLong,
    SpawnError,
    run_child,
    spawner_thread,
)

ENV = {"PATH": os.defpath}

# Starts a grandchild in the same process group (it ignores SIGTERM too) and
# prints its pid, then "ready".
GRANDCHILD_THEN_READY = """
import signal, subprocess, sys, time
grand = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grand.pid, flush=True)
print("ready", flush=True)
"""


def spec(code: str, **kwargs: object) -> ChildSpec:
    return ChildSpec(
        argv=(sys.executable, "-c", textwrap.dedent(code)),
        env=ENV,
        **kwargs,  # type: ignore[arg-type]
    )


def proc_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` ("R", "S", "Z", ...), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes in group ``pgid`` that are not dead (zombies count as dead)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry.name))
    return members


async def wait_group_dead(pgid: int) -> None:
    """Wait until no live process is left in the group (bound it with fail_after)."""
    while live_group_members(pgid):
        await trio.sleep(0.05)


def assert_not_our_zombie(pid: int) -> None:
    """``pid`` is gone, or a dead orphan left for init to reap: never our zombie."""
    state = proc_state(pid)
    if state is None:
        return
    assert state in "ZX"
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid != os.getpid()


async def read_line(child: Child) -> bytes:
    return await child.stdout_lines().__anext__()


async def test_child_ignoring_sigterm_is_killed_after_grace_with_grandchild() -> None:
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + GRANDCHILD_THEN_READY
    code += "time.sleep(120)\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                partial(run_child, spec(code, name="stubborn"), stop_grace=5.0)
            )
            grandchild = int(await read_line(child))
            assert await read_line(child) == b"ready"
            started = trio.current_time()
            status = await child.stop(0.5)
            waited = trio.current_time() - started
        assert status.signal == signal.SIGKILL
        assert status.describe() == "killed by SIGKILL"
        assert waited >= 0.5
        assert proc_state(child.pid) is None  # reaped by us: no zombie
        await wait_group_dead(child.pgid)
    assert_not_our_zombie(grandchild)


async def test_grandchild_dies_with_group_when_leader_exits_on_its_own() -> None:
    code = GRANDCHILD_THEN_READY + "sys.exit(0)\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(partial(run_child, spec(code), stop_grace=5.0))
            grandchild = int(await read_line(child))
            status = await child.wait()
        assert status.returncode == 0
        assert proc_state(child.pid) is None
        await wait_group_dead(child.pgid)
    assert_not_our_zombie(grandchild)


async def test_exit_mid_read_is_noticed_at_once_with_code_and_stderr_tail() -> None:
    # A process outside the group keeps stdout open, so stdout never reaches EOF:
    # only the exit watcher can tell that the child is gone.
    code = """
    import subprocess, sys
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        start_new_session=True, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    print(holder.pid, flush=True)
    sys.stdin.readline()
    sys.stderr.write("fatal: the widget exploded\\n")
    sys.exit(3)
    """
    lines: list[bytes] = []
    stdout_ended = False
    holder = 0
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                child = await nursery.start(
                    partial(run_child, spec(code, name="crasher"), stop_grace=5.0)
                )
                holder = int(await read_line(child))

                async def read_all() -> None:
                    nonlocal stdout_ended
                    async for line in child.stdout_lines():
                        lines.append(line)
                    stdout_ended = True

                nursery.start_soon(read_all)
                await child.send(b"go\n")
                sent = trio.current_time()
                status = await child.wait()
                noticed = trio.current_time() - sent
                ended_before_exit_was_noticed = stdout_ended
                nursery.cancel_scope.cancel()
    finally:
        if holder and proc_state(holder) is not None:
            os.kill(holder, signal.SIGKILL)
    assert status.returncode == 3
    assert proc_state(holder) is None  # it left the group, and was stopped with the child
    assert status.describe() == "exited with code 3"
    assert "fatal: the widget exploded" in child.stderr_tail()
    assert noticed < 3.0  # no polling interval: the pidfd wakes us
    assert lines == [] and not ended_before_exit_was_noticed


async def test_stderr_flood_does_not_block_stdout_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    code = """
    import sys
    noise = ("e" * 99 + "\\n") * 100
    for i in range(1000):
        sys.stderr.write(noise)   # 10 MB in total
        print(i)
    """
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                partial(run_child, spec(code, name="noisy", stderr_tail_bytes=4096), stop_grace=5.0)
            )
            started = trio.current_time()
            received = [line async for line in child.stdout_lines()]
            status = await child.wait()
            elapsed = trio.current_time() - started
    assert received == [str(i).encode() for i in range(1000)]
    assert status.returncode == 0
    tail = child.stderr_tail(max_chars=10_000)
    assert len(tail) == 4096 and set(tail) == {"e", "\n"}
    prefix = f"noisy[{child.pid}] stderr: "
    stderr_records = [r for r in caplog.records if r.getMessage().startswith(prefix)]
    assert len(stderr_records) <= LOG_BURST + LOG_RATE * elapsed + 10  # not 100 000 lines
    assert any("not logged (rate limit)" in r.getMessage() for r in stderr_records)


async def test_stderr_lines_are_logged_with_name_and_pid_and_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor")
    code = """
    import sys
    sys.stderr.write("warming up\\n" + "x" * 10_000 + "\\nno newline at the end")
    """
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                partial(run_child, spec(code, name="chatty"), stop_grace=5.0)
            )
            await child.wait()
    prefix = f"chatty[{child.pid}] stderr: "
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
    assert len(logged) == 3
    assert logged[0] == prefix + "warming up"
    assert logged[1] == prefix + "x" * LOG_LINE_MAX + " [cut]"
    assert logged[2] == prefix + "no newline at the end"


async def test_overlong_stdout_line_raises_line_too_long_with_bounded_memory() -> None:
    limit = 64 * 1024
    code = f"""
    import sys
    sys.stdout.write("a" * {limit} + "\\n")
    sys.stdout.flush()
    chunk = "b" * (1024 * 1024)
    for _ in range(50):
        sys.stdout.write(chunk)   # 50 MB without a newline
    """
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(
                partial(run_child, spec(code, name="verbose", max_line_bytes=limit), stop_grace=5.0)
            )
            lines = child.stdout_lines()
            assert len(await lines.__anext__()) == limit  # exactly at the limit is fine
            tracemalloc.start()
            try:
                with pytest.raises(LineTooLong, match=str(limit)):
                    await lines.__anext__()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            with pytest.raises(LineTooLong):  # the stream stays unusable
                await lines.__anext__()
            await child.stop(5.0)
    assert peak < 4 * limit + 256 * 1024


async def test_cancelling_parent_nursery_stops_child_within_grace() -> None:
    code = GRANDCHILD_THEN_READY + "time.sleep(120)\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(partial(run_child, spec(code), stop_grace=30.0))
            grandchild = int(await read_line(child))
            assert await read_line(child) == b"ready"
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        assert child.exited.is_set()
        assert child.exit_status is not None and child.exit_status.signal == signal.SIGTERM
        assert elapsed < 10.0  # it obeyed SIGTERM: the 30 s grace was not waited out
        assert proc_state(child.pid) is None
        await wait_group_dead(child.pgid)
    assert_not_our_zombie(grandchild)


async def test_cancelling_parent_nursery_kills_child_ignoring_sigterm_after_grace() -> None:
    code = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(120)
    """
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                child = await nursery.start(partial(run_child, spec(code), stop_grace=1.0))
                assert await read_line(child) == b"ready"
                scope.cancel()
    assert child.exit_status is not None and child.exit_status.signal == signal.SIGKILL
    assert proc_state(child.pid) is None


async def test_killing_the_parent_kills_the_child() -> None:
    helper = Path(__file__).with_name("parent_helper.py")
    repo = Path(__file__).resolve().parents[2]
    parent = await trio.lowlevel.open_process(
        [sys.executable, str(helper)],
        stdout=subprocess.PIPE,
        env={**ENV, "PYTHONPATH": str(repo)},
    )
    try:
        with trio.fail_after(20):
            assert parent.stdout is not None
            data = b""
            while not data.endswith(b"\n"):
                chunk = await parent.stdout.receive_some(100)
                assert chunk, "the parent process exited before reporting its child"
                data += chunk
            child_pid = int(data)
            assert proc_state(child_pid) not in (None, "Z")
            parent.kill()
            await parent.wait()
            while proc_state(child_pid) not in (None, "Z", "X"):
                await trio.sleep(0.05)
    finally:
        if parent.returncode is None:
            parent.kill()
            with trio.move_on_after(5) as s:
                s.shield = True
                await parent.wait()


async def test_children_are_forked_from_one_long_lived_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits, so forking must not happen on a
    # trio worker thread (they retire after idling) but on one that lives as long as we do.
    forked_on: list[threading.Thread] = []

    class RecordingPopen(subprocess.Popen[bytes]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            forked_on.append(threading.current_thread())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                child = await nursery.start(partial(run_child, spec("pass"), stop_grace=5.0))
                await child.wait()
    thread = spawner_thread()
    assert forked_on == [thread, thread]
    assert thread.is_alive() and thread.daemon and thread is not threading.main_thread()


async def test_child_gets_exactly_its_environment_cwd_and_own_session(tmp_path: Path) -> None:
    code = """
    import os
    print(os.getpid() == os.getpgid(0) == os.getsid(0), flush=True)
    import sys; sys.stdin.readline()
    """
    env = {"PATH": os.defpath, "MARKER": "only-this"}
    child_spec = ChildSpec(
        argv=(sys.executable, "-c", textwrap.dedent(code)), env=env, cwd=str(tmp_path)
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(partial(run_child, child_spec, stop_grace=5.0))
            assert await read_line(child) == b"True"
            raw = Path(f"/proc/{child.pid}/environ").read_bytes()
            seen = dict(item.split("=", 1) for item in raw.decode().split("\0") if item)
            cwd = os.readlink(f"/proc/{child.pid}/cwd")
            await child.close_stdin()
            status = await child.wait()
    assert seen == env
    assert cwd == str(tmp_path)
    assert status.returncode == 0


async def test_send_round_trip_and_stop_is_shared_and_idempotent() -> None:
    code = """
    import sys
    for line in sys.stdin:
        print(line.strip().upper(), flush=True)
    """
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(partial(run_child, spec(code), stop_grace=5.0))
            for word in (b"one", b"two"):
                await child.send(word + b"\n")
                assert await read_line(child) == word.upper()
            results = []

            async def stop() -> None:
                results.append(await child.stop(5.0))

            async with trio.open_nursery() as stoppers:
                stoppers.start_soon(stop)
                stoppers.start_soon(stop)
            results.append(await child.stop(5.0))
            with pytest.raises(trio.ClosedResourceError):
                await child.send(b"late\n")
    assert len(results) == 3 and len(set(results)) == 1
    assert results[0] == child.exit_status


async def test_missing_command_raises_spawn_error_naming_it(tmp_path: Path) -> None:
    missing = ChildSpec(argv=("no-such-agent-xyz", "--acp"), env={"PATH": str(tmp_path)})
    with pytest.raises(SpawnError, match="no-such-agent-xyz"):
        await run_child(missing, stop_grace=1.0)
    by_path = ChildSpec(argv=(str(tmp_path / "absent"),), env=ENV)
    with pytest.raises(SpawnError, match="absent"):
        await run_child(by_path, stop_grace=1.0)


async def test_non_executable_command_raises_spawn_error_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    for argv0 in (str(script), "agent.sh"):
        not_exec = ChildSpec(argv=(argv0,), env={"PATH": str(tmp_path)})
        with pytest.raises(SpawnError, match=r"not executable: .*agent\.sh"):
            await run_child(not_exec, stop_grace=1.0)


async def test_exec_failure_is_mapped_to_spawn_error(tmp_path: Path) -> None:
    gone = ChildSpec(argv=(sys.executable, "-c", "pass"), env=ENV, cwd=str(tmp_path / "nowhere"))
    with pytest.raises(SpawnError, match="nowhere"):
        await run_child(gone, stop_grace=1.0)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    with pytest.raises(SpawnError, match="garbage"):
        await run_child(ChildSpec(argv=(str(garbage),), env=ENV), stop_grace=1.0)


async def test_without_pidfd_support_exit_and_stop_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")  # kernels before 5.3

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    code = GRANDCHILD_THEN_READY + "sys.exit(5)\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child = await nursery.start(partial(run_child, spec(code), stop_grace=5.0))
            grandchild = int(await read_line(child))
            assert (await child.wait()).returncode == 5
            sleeper = await nursery.start(
                partial(
                    run_child, spec(GRANDCHILD_THEN_READY + "time.sleep(120)\n"), stop_grace=5.0
                )
            )
            assert (await sleeper.stop(5.0)).signal == signal.SIGTERM
        await wait_group_dead(child.pgid)
        await wait_group_dead(sleeper.pgid)
    assert_not_our_zombie(grandchild)
