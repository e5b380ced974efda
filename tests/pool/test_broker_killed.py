"""No agent outlives a broker killed with SIGKILL, and its threads resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.store import open_store
from broker.testing.harness import fake_agent_config
from tests.pool.broker_process import KEYS


def running(pid: int) -> bool:
    """Alive and not a zombie (this container's init does not reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def wait_until_gone(pids: list[int]) -> None:
    while any(running(pid) for pid in pids):
        await trio.sleep(0.05)


async def test_agents_die_with_a_killed_broker_and_leftovers_are_stopped_at_next_start(
    tmp_path: Path,
) -> None:
    script = Path(__file__).with_name("broker_process.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    broker = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert broker.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await broker.stdout.receive_some()
                assert chunk, "the broker process ended before reporting"
                line += chunk
        report = json.loads(line)
        agents = report["agents"]
        grandchildren = [int(m) for t in report["texts"] for m in re.findall(r"pid (\d+)", t)]
        assert len(agents) == 2 and len(grandchildren) == 2
        assert all(running(pid) for pid in agents + grandchildren)

        broker.send_signal(signal.SIGKILL)
        await broker.wait()
        with trio.fail_after(10):
            await wait_until_gone(agents)  # parent-death signal
        assert all(running(pid) for pid in grandchildren), "a grandchild outlives its agent..."

        config = fake_agent_config(tmp_path)
        with trio.fail_after(60):
            async with (
                open_store(config.state.path) as store,
                open_pool(config, store=store) as pool,
            ):
                await wait_until_gone(grandchildren)  # ...until the next broker starts
                assert pool.counters.leftovers_stopped >= 2
                assert all(pool.is_suspended(key) for key in KEYS)
                end = await pool.submit(KEYS[0], Prompt("@reply back")).result()
                assert end.ok and end.text == "back"
                assert pool.counters.resumed == 1
                assert await store.agents() != []  # the new agent is recorded...
            async with open_store(config.state.path) as store:
                assert await store.agents() == []  # ...and forgotten after a clean stop
    finally:
        if broker.returncode is None:
            broker.kill()
            with trio.CancelScope(shield=True):
                await broker.wait()
