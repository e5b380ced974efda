"""A grandchild that calls setsid() leaves its child's process group, and is still
stopped and reaped with that child, and only with that child."""

from __future__ import annotations

import os
import sys
import textwrap
from functools import partial

import trio

from supervisor.process import Child, run_child
from tests.supervisor.test_process import proc_state, read_line, spec

# Daemonises a grandchild (fork, setsid, fork, the middle one exits), prints its
# pid and "ready", then sleeps or exits as the last line says.
DAEMON_THEN = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, b"%d\\n" % os.getpid())
        time.sleep(120)
    os._exit(0)
os.wait()
print(os.read(r, 64).decode().strip(), flush=True)
print("ready", flush=True)
"""


def stat_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


async def start_with_daemon(nursery: trio.Nursery, last_line: str) -> tuple[Child, int]:
    code = textwrap.dedent(DAEMON_THEN) + last_line + "\n"
    child: Child = await nursery.start(partial(run_child, spec(code), stop_grace=0.5))
    daemon = int(await read_line(child))
    assert await read_line(child) == b"ready"
    return child, daemon


async def test_a_grandchild_that_calls_setsid_is_stopped_and_reaped_with_its_child() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child, daemon = await start_with_daemon(nursery, "time.sleep(120)")
            fields = stat_of(daemon)
            assert int(fields[3]) not in (child.pgid, os.getsid(0))  # a session of its own
            assert int(fields[1]) == child.pid  # orphaned, it stays in its child's tree
            await child.stop(0.5)
        assert proc_state(daemon) is None  # stopped and reaped: no zombie, not left to PID 1


async def test_a_grandchild_that_calls_setsid_is_stopped_when_its_child_exits_on_its_own() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child, daemon = await start_with_daemon(nursery, "sys.exit(4)")
            status = await child.wait()
            await child.orphans_stopped.wait()
        assert status.returncode == 4
        assert proc_state(daemon) is None


async def test_stopping_one_child_leaves_others_descendants_and_other_processes_alone() -> None:
    bystander = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import time; time.sleep(120)"]
    )
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                first, first_daemon = await start_with_daemon(nursery, "time.sleep(120)")
                second, second_daemon = await start_with_daemon(nursery, "time.sleep(120)")
                await first.stop(0.5)
                assert proc_state(first_daemon) is None
                assert proc_state(second_daemon) not in (None, "Z")
                assert proc_state(second.pid) not in (None, "Z")
                assert bystander.poll() is None
                await second.stop(0.5)
            assert proc_state(second_daemon) is None
        assert bystander.poll() is None
    finally:
        bystander.kill()
        await bystander.wait()
