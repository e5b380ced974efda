"""A cgroup per child where there is a delegated cgroup v2: everything the child
started, wherever it went, is killed with it, and the cgroup is removed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from supervisor.cgroups import cgroup_dir
from supervisor.process import Child, run_child
from tests.supervisor.test_process import proc_state, read_line, spec
from tests.supervisor.test_reaper import DAEMON_THEN

MOUNTINFO = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize(
    ("proc_cgroup", "expected"),
    [
        (
            "0::/system.slice/agent-broker.service\n",
            "/sys/fs/cgroup/unified/system.slice/agent-broker.service",
        ),
        ("9:name=systemd:/\n0::/\n", None),  # the root cgroup is never used
        ("4:memory:/x\n", None),  # cgroup v1 only
    ],
)
def test_the_delegated_cgroup_is_the_processes_own_v2_cgroup_never_the_root(
    proc_cgroup: str, expected: str | None
) -> None:
    found = cgroup_dir(proc_cgroup, MOUNTINFO)
    assert (None if found is None else str(found)) == expected


@pytest.fixture
def parent_cgroup() -> Iterator[Path]:
    """A cgroup the test may create children in, as systemd's Delegate=yes gives one."""
    mount = cgroup_dir("0::/x", Path("/proc/self/mountinfo").read_text())
    if mount is None:
        pytest.skip("no cgroup v2 here")
    path = mount.parent / f"agent-broker-test-{os.getpid()}"
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here: {exc}")
    try:
        yield path
    finally:
        for child in path.iterdir():
            if child.is_dir():
                child.rmdir()
        path.rmdir()


async def test_a_child_and_its_setsid_grandchild_run_in_a_cgroup_that_dies_with_it(
    parent_cgroup: Path,
) -> None:
    code = DAEMON_THEN + "time.sleep(120)\n"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            child: Child = await nursery.start(
                partial(run_child, spec(code, cgroup_parent=str(parent_cgroup)), stop_grace=0.5)
            )
            daemon = int(await read_line(child))
            assert child.cgroup is not None
            for pid in (child.pid, daemon):
                assert (
                    Path(f"/proc/{pid}/cgroup").read_text().strip().endswith(child.cgroup.path.name)
                )
            await child.stop(0.5)
        assert proc_state(daemon) is None
        assert not child.cgroup.path.exists()
