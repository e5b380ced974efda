"""The chaos soak's broker side: one ``python -m broker run`` process, started
and stopped on the same config and store, and what is measured of it.

Everything is read where the kernel and the broker keep it: /proc for RSS,
zombies and leftover processes, the SQLite store for the threads and agents
it lists, ``GET /status`` for the pool's counters. Used by chaos/__main__.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.config import load_config
from broker.ops.service import stop_budget

ROOT = Path(__file__).resolve().parents[1]
MAX_FRAME_BYTES = 64 * 1024
GATEWAY_TOKEN = "chaos-gateway-token"
TURN_HARD_SECS = 3.0
CANCEL_GRACE_SECS = 1.0
STOP_GRACE_SECS = 1.0
SAMPLE_SECS = 1.0
ZOMBIE_SAMPLES = 3


@attrs.define
class Figures:
    """Counts and measurements gathered during the run."""

    clients_connected: int = 0
    disconnects: int = 0
    abrupt_disconnects: int = 0
    connect_failures: int = 0
    oversize_sent: int = 0
    oversize_closed_1009: int = 0
    served_after_oversize: int = 0
    bad_frames_sent: int = 0
    error_frames: int = 0
    malformed_rounds: int = 0
    malformed_rounds_all_errors: int = 0
    stops: list[dict[str, Any]] = attrs.field(factory=list)
    leftovers: list[str] = attrs.field(factory=list)
    zombies: set[int] = attrs.field(factory=set)
    rss: list[list[tuple[float, int]]] = attrs.field(factory=list)  # per run: (secs, kB)
    store_threads: set[str] = attrs.field(factory=set)
    agents_rows_after_stop: int = 0
    outbox_rows_at_end: int = 0
    gateway_drops: int = 0
    pool_counters: Counter[str] = attrs.field(factory=Counter)
    agents_seen_max: int = 0  # marked processes seen at once: the leftover scan sees them
    gateway_violations: list[str] = attrs.field(factory=list)


def write_config(
    root: Path, port: int, marker: str, args: argparse.Namespace, gateway_url: str
) -> Path:
    state_dir = root / f"agent-sessions-{marker}"
    agent_args = ["-m", "broker.testing.fake_agent", "--state-dir", str(state_dir)]
    text = f"""
[server]
listen = "127.0.0.1:{port}"
streaming = false
max_frame_bytes = {MAX_FRAME_BYTES}

[gateway]
url = {json.dumps(gateway_url)}
token = "{GATEWAY_TOKEN}"
streaming = false

[agent]
command = {json.dumps(sys.executable)}
args = {json.dumps(agent_args)}
working_dir = {json.dumps(str(root))}
env = {{ CHAOS_RUN = "{marker}" }}

[pool]
max_sessions = {args.max_sessions}
queue_depth = {args.queue_depth}
idle_ttl_secs = 20
max_restarts = 3
restart_window_secs = 10

[timeouts]
initialize_secs = 20
session_new_secs = 20
turn_hard_secs = {TURN_HARD_SECS}
cancel_grace_secs = {CANCEL_GRACE_SECS}
stop_grace_secs = {STOP_GRACE_SECS}
drain_ms = 50

[permissions]
default = "allow_once"

[state]
path = {json.dumps(str(root / "state" / "broker.sqlite3"))}

[log]
level = "info"
"""
    path = root / "broker.toml"
    path.write_text(text)
    return path


# -- /proc ------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def marked_processes(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``CHAOS_RUN=marker``."""
    needle = f"CHAOS_RUN={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = proc_stat(int(entry.name))
        if needle in environ.split(b"\0") and stat is not None and stat[0] != "Z":
            found.append(int(entry.name))
    return found


def zombie_children(parent: int) -> set[int]:
    zombies = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat == ("Z", parent):
                zombies.add(int(entry.name))
    return zombies


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope (kB per second) of (secs, kB) points; 0 for fewer than 3."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 0.0 if var == 0 else sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def read_store(path: Path) -> tuple[set[str], int, int]:
    """Threads with a session id, agents rows and outbox rows of a stopped broker's store."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT thread_key FROM threads WHERE session_id != ''")
        threads = {row[0] for row in rows}
        agents = db.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
        outbox = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    return threads, int(agents), int(outbox)


# -- the broker process ---------------------------------------------------------


class BrokerRunner:
    """Starts and stops ``python -m broker run`` on one config and store."""

    def __init__(self, config: Path, port: int, log_dir: Path, marker: str, figures: Figures):
        self.config = config
        self.port = port
        self.log_dir = log_dir
        self.marker = marker
        self.figures = figures
        self.process: trio.Process | None = None
        self.state = "down"
        self.runs = 0
        self.started_at = 0.0
        self.t0 = trio.current_time()
        config_values = load_config(config)
        self.budget = stop_budget(config_values)
        self.store_path = Path(config_values.state.path)

    async def start(self) -> None:
        self.runs += 1
        log = (self.log_dir / f"broker-{self.runs}.log").open("wb")  # the child keeps it open
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "broker", "run", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.log_dir),
        )
        log.close()
        self.figures.rss.append([])
        with trio.fail_after(60):
            while not await self.healthy():
                if self.process.poll() is not None:
                    raise RuntimeError(f"the broker exited with {self.process.returncode} at start")
                await trio.sleep(0.1)
        self.state = "up"
        self.started_at = trio.current_time()

    def elapsed(self) -> float:
        return trio.current_time() - self.t0

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``; (0, b"") when the broker does not answer."""
        data = b""
        with trio.move_on_after(5):
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError:
                return 0, b""
            async with stream:
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                while chunk := await stream.receive_some(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"0"
        return int(status) if status.isdigit() else 0, body

    async def healthy(self) -> bool:
        return (await self.get("/healthz"))[0] == 200

    async def stop(self) -> None:
        """SIGTERM; wait for the exit (bounded), then check what it left behind."""
        assert self.process is not None
        pid = self.process.pid
        status, body = await self.get("/status")
        if status == 200:
            self.figures.pool_counters.update(flat_counters(json.loads(body)["counters"]))
        self.state = "stopping"
        began = trio.current_time()
        self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.budget + 15):
            await self.process.wait()
        took = trio.current_time() - began
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.state = "down"
        with trio.move_on_after(3):  # killed processes need a moment to become zombies
            while marked_processes(self.marker):
                await trio.sleep(0.1)
        left = marked_processes(self.marker)
        for leftover in left:
            self.figures.leftovers.append(f"{leftover}: {_cmdline(leftover)}")
            _kill(leftover)
        threads, agents, outbox = read_store(self.store_path)
        self.figures.store_threads |= threads
        self.figures.agents_rows_after_stop += agents
        self.figures.outbox_rows_at_end = outbox
        self.figures.stops.append(
            {
                "pid": pid,
                "at": round(began - self.t0, 2),
                "exit_code": self.process.returncode,
                "secs": round(took, 2),
                "leftovers": len(left),
                "agents_rows": agents,
            }
        )

    async def sample(self) -> None:
        """RSS and zombie children of the running broker, every SAMPLE_SECS."""
        seen: list[set[int]] = []
        while True:
            process = self.process
            if process is not None and self.state == "up":
                kb = rss_kb(process.pid)
                if kb is not None:
                    self.figures.rss[-1].append((trio.current_time() - self.started_at, kb))
                agents = len(marked_processes(self.marker))
                self.figures.agents_seen_max = max(self.figures.agents_seen_max, agents)
                seen = [*seen, zombie_children(process.pid)][-ZOMBIE_SAMPLES:]
                if len(seen) == ZOMBIE_SAMPLES:
                    self.figures.zombies |= set.intersection(*seen)
            else:
                seen = []
            await trio.sleep(SAMPLE_SECS)

    def kill(self) -> None:
        """SIGKILL the broker if it runs, and every process of this run left."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
        for pid in marked_processes(self.marker):
            _kill(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def flat_counters(counters: dict[str, Any]) -> dict[str, int]:
    """The status document's counters as one level: ``turns_ended`` by outcome
    becomes ``turns_ended.completed`` and so on, so runs add up."""
    flat: dict[str, int] = {}
    for name, value in counters.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": int(count) for key, count in value.items()})
        else:
            flat[name] = int(value)
    return flat
