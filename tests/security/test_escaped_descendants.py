"""A grandchild that calls setsid() leaves its agent's process group; it is still
stopped with its agent, by /reset and by the broker's stop (a real broker process)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import trio

from broker.testing.harness import free_port
from tests.security.clients import RAW_AGENT, stop
from tests.service.broker_process import alive, broker_process, chat, wait_gone, write_config


async def reaped(pid: int) -> None:
    """``pid`` exited and was reaped (no zombie left to a PID 1 that reaps nothing)."""
    await wait_gone([pid])
    while Path(f"/proc/{pid}").exists():
        await trio.sleep(0.05)


def daemon_pid(reply: str) -> int:
    match = re.search(r"daemon: (\d+)", reply)
    assert match is not None, reply
    return int(match.group(1))


async def test_a_setsid_grandchild_is_stopped_by_reset_and_by_the_brokers_stop(
    tmp_path: Path,
) -> None:
    port = free_port()
    agent = {"command": sys.executable, "args": [str(RAW_AGENT)]}
    async with broker_process(write_config(tmp_path, port, agent=agent)) as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                reset = daemon_pid(await client.ask("daemon", "t1", "daemon:"))
                kept = daemon_pid(await client.ask("daemon", "t2", "daemon:"))
                assert alive(reset) and alive(kept)
                assert "reset" in (await client.ask("/reset", "t1", "")).lower()
                await reaped(reset)
                assert alive(kept)  # another thread's agent: left alone
        await stop(broker)
        with trio.fail_after(10):
            await reaped(kept)
