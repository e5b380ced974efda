"""An agent racing the confinement or feeding it FIFOs reaches nothing outside and
starves no one: a real agent (raw_agent.py) sends the fs/* requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from broker.config import BrokerConfig
from broker.testing.harness import free_port
from tests.security.clients import RAW_AGENT, rss_bytes, stop
from tests.security.test_bad_text import store_status
from tests.security.test_fs_confinement import agent_fs, read, write
from tests.service.broker_process import broker_process, chat, write_config

MB = 1024 * 1024
ROUNDS = 300

# Swaps work/d (a real directory) and work/d.other (a symlink to the outside), atomically
# (renameat2 RENAME_EXCHANGE), as fast as it can: work/d always exists, as one or the other.
_SWAPPER = """
import ctypes, os, sys
os.chdir(sys.argv[1])
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
AT_FDCWD, RENAME_EXCHANGE = -100, 2
print("swapping", flush=True)
while True:
    if renameat2(AT_FDCWD, b"d", AT_FDCWD, b"d.other", RENAME_EXCHANGE) != 0:
        sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
"""

# Writes 256 MB into a FIFO for whoever opens it for reading.
_PUMP = """
import sys
try:
    with open(sys.argv[1], "wb") as pipe:
        block = b"p" * (1 << 20)
        for _ in range(256):
            pipe.write(block)
except BrokenPipeError:
    pass
"""


@contextmanager
def running(script: str, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """A helper process of this test, killed (by its pid) when the block ends."""
    helper = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
    try:
        yield helper
    finally:
        helper.kill()
        helper.wait(10)


async def test_a_directory_swapped_for_a_symlink_never_lets_a_read_or_write_out(
    tmp_path: Path, raw_agent_config: Callable[..., BrokerConfig]
) -> None:
    config = raw_agent_config(agent={"fs_read": True, "fs_write": True})
    work = Path(config.agent.working_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    (work / "d").mkdir()
    (work / "d" / "secret.txt").write_text("inside")
    (work / "d.other").symlink_to(outside)
    requests = [read("d/secret.txt") for _ in range(ROUNDS)]
    requests += [write(f"d/planted-{n}.txt", "planted") for n in range(ROUNDS)]
    with running(_SWAPPER, str(work)) as swapper:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"swapping\n"
        answers = await agent_fs(config, requests)
        assert swapper.poll() is None, "the swapper stopped"
    reads, writes = answers[:ROUNDS], answers[ROUNDS:]
    assert sum("SECRET" in json.dumps(answer) for answer in reads) == 0
    assert sorted(os.listdir(outside)) == ["secret.txt"]  # 0 of 300 writes outside
    # the race was real: some requests found the directory, others did not
    inside = sum(answer == {"result": {"content": "inside"}} for answer in reads)
    assert 0 < inside < ROUNDS, reads[:5]
    assert 0 < sum(answer == {"result": {}} for answer in writes) < ROUNDS


async def test_fifos_neither_flood_the_broker_nor_starve_other_threads_the_store_or_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    work = tmp_path / "work"
    work.mkdir()
    (work / "inside.txt").write_text("inside\n")
    for n in range(45):
        os.mkfifo(work / f"p{n}")
    os.mkfifo(work / "pump")
    agent = {
        "command": sys.executable,
        "args": [str(RAW_AGENT)],
        "working_dir": str(work),
        "fs_read": True,
        "fs_write": True,
    }
    async with broker_process(write_config(tmp_path, port, agent=agent)) as broker:
        with running(_PUMP, str(work / "pump")), trio.fail_after(60):
            before = rss_bytes(broker.pid)
            async with chat(port) as client:
                pipes = json.dumps([read(f"p{n}") for n in range(45)] + [read("pump")])
                stuck = await client.send("fs-parallel " + pipes, "pipes")
                refused = "cannot read: not a regular file"
                while "".join(client.replies[stuck]).count(refused) < 46:  # a reply in parts
                    await trio.sleep(0.05)
                assert "ppp" not in "".join(client.replies[stuck])
                others = json.dumps([read("inside.txt"), write("out.txt", "written")])
                assert json.loads(await client.ask("fs " + others, "others", "[")) == [
                    {"result": {"content": "inside\n"}},
                    {"result": {}},
                ]
            assert rss_bytes(broker.pid) - before < 64 * MB
            while (store := await store_status(port))["queued"] or not store["writes"]:
                await trio.sleep(0.05)  # the store writes on: its threads are its own
        await stop(broker)  # SIGTERM: exit 0 within 30 s
