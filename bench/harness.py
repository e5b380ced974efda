"""The benchmark's plumbing: a broker in its own process, /proc readings, statistics.

:func:`run_broker` starts ``python -m broker run --config FILE`` as a separate
process (so its CPU time and memory are its own, read from ``/proc``), waits
until ``/healthz`` answers, and stops it with SIGTERM when the block ends.
Its agents are the fake agent, run through ``bench/agent.py`` so a
scenario can give single agents a role (see that module).

Profiling seam: with ``BENCH_PROFILE=DIR`` in the environment each broker runs
under ``cProfile`` (bench/profiling.py; ``BENCH_PROFILE_CLOCK=wall`` for
elapsed instead of CPU time) and writes ``DIR/<label>.prof`` when it exits (it
exits normally on SIGTERM).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.testing import harness
from broker.testing.harness import free_port

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
READY_TIMEOUT_SECS = 30.0
PROFILE_ENV = "BENCH_PROFILE"
PROFILE_CLOCK_ENV = "BENCH_PROFILE_CLOCK"  # cpu (default) or wall


# -- statistics -------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of samples in seconds, plus ``n``."""
    if not samples:
        return {"n": 0}
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 0.50) * 1000, 3),
        "p90_ms": round(percentile(samples, 0.90) * 1000, 3),
        "p99_ms": round(percentile(samples, 0.99) * 1000, 3),
        "max_ms": round(max(samples) * 1000, 3),
        "mean_ms": round(sum(samples) / len(samples) * 1000, 3),
    }


# -- /proc ---------------------------------------------------------------------------


def proc_cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far; zeros when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def proc_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 when it is gone)."""
    return sum(proc_cpu_times(pid))


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (0 when it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return pages * PAGE


def proc_peak_rss_bytes(pid: int) -> int:
    """The peak resident set size (VmHWM) of ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def proc_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return raw.rsplit(")", 1)[1].split()[0] != "Z"


def proc_exists(pid: int) -> bool:
    """True while ``pid`` has a /proc entry at all (a zombie counts: not reaped)."""
    return Path(f"/proc/{pid}").exists()


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (scans /proc; children files are absent here)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(raw.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def machine() -> dict[str, Any]:
    """The machine the numbers are taken on, and its load average now."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0],
        "kernel": os.uname().release,
        "loadavg": os.getloadavg(),
    }


# -- config ----------------------------------------------------------------------------


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """broker.toml text for ``{section: {key: value}}``. Values are strings,
    numbers, booleans or lists of those, whose JSON spelling is also TOML, or
    tables of strings (``[cluster] members``), written inline."""
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        out.append("")
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def broker_sections(
    root: Path, *, agent_args: Sequence[str] = (), **overrides: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The benchmark's broker.toml: the fake agent through bench.agent (with a
    roles directory under ``root``), a free loopback port, state under ``root``,
    warnings only in the log. ``overrides`` replace keys per section."""
    fake_args = ["--state-dir", str(root / "agent-sessions"), *agent_args]
    sections: dict[str, dict[str, Any]] = {
        "server": {"listen": f"127.0.0.1:{free_port()}", "streaming": False},
        "agent": {
            "command": sys.executable,
            "args": [
                "-m",
                "bench.agent",
                "--roles",
                str(root / "roles"),
                "--",
                *fake_args,
            ],
            "working_dir": str(root),
        },
        "pool": {"max_sessions": 20},
        "timeouts": {
            "initialize_secs": 60,
            "session_new_secs": 60,
            "turn_hard_secs": 600,
            "cancel_grace_secs": 2,
            "stop_grace_secs": 2,
        },
        "state": {"path": str(root / "state" / "broker.sqlite3")},
        "permissions": {"default": "allow_once"},
        "log": {"level": os.environ.get("BENCH_LOG_LEVEL", "warning")},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return sections


# -- the broker process ----------------------------------------------------------------


@attrs.define
class BrokerProcess:
    """A running ``python -m broker run``; read its /proc entries while it runs."""

    process: trio.Process
    sections: dict[str, dict[str, Any]]
    root: Path
    log_path: Path
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.sections["server"]["listen"].rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def roles(self) -> Path:
        return self.root / "roles"

    def cpu_secs(self) -> float:
        return proc_cpu_secs(self.pid)

    def cpu_times(self) -> tuple[float, float]:
        return proc_cpu_times(self.pid)

    def rss_bytes(self) -> int:
        return proc_rss_bytes(self.pid)

    def peak_rss_bytes(self) -> int:
        return proc_peak_rss_bytes(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    async def terminate(self) -> int:
        """SIGTERM, then wait for the exit (bounded by the caller); the exit code."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        self.exit_code = await self.process.wait()
        return self.exit_code


STATUS_TIMEOUT_SECS = 10.0


async def get_status(port: int) -> dict[str, Any]:
    """The broker's GET /status document, within :data:`STATUS_TIMEOUT_SECS`."""
    with trio.fail_after(STATUS_TIMEOUT_SECS):
        status, body = await harness.http_get(port, "/status")
    if status != 200:
        raise RuntimeError(f"GET /status answered {status}: {body[:200]!r}")
    document: dict[str, Any] = json.loads(body)
    return document


async def _wait_ready(broker: BrokerProcess) -> None:
    with trio.fail_after(READY_TIMEOUT_SECS):
        while True:
            if broker.process.returncode is not None:
                raise RuntimeError(
                    f"the broker exited with {broker.process.returncode}:\n{broker.log_tail()}"
                )
            try:
                with trio.fail_after(2.0):
                    status, _ = await harness.http_get(broker.port, "/healthz")
                if status == 200:
                    return
            except (OSError, trio.TooSlowError):
                pass
            await trio.sleep(0.05)  # readiness poll of a process we cannot be told by


@asynccontextmanager
async def run_broker(
    root: Path, sections: dict[str, dict[str, Any]], *, label: str
) -> AsyncIterator[BrokerProcess]:
    """Run a broker process for the block; SIGTERM (then SIGKILL) when it ends.

    Raises RuntimeError with the broker's log tail when it does not get ready
    within :data:`READY_TIMEOUT_SECS`.
    """
    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{label}.toml"
    config.write_text(toml_text(sections))
    log_path = root / f"{label}.log"
    args = ["run", "--config", str(config)]
    argv = [sys.executable, "-m", "broker", *args]
    profile_dir = os.environ.get(PROFILE_ENV)
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        out = str(Path(profile_dir) / f"{label}.prof")
        clock = os.environ.get(PROFILE_CLOCK_ENV, "cpu")
        argv = [sys.executable, "-m", "bench.profiling", out, clock, "--", *args]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await trio.lowlevel.open_process(
            argv, stdout=log_fd, stderr=log_fd, cwd=str(REPO), start_new_session=True
        )
    finally:
        os.close(log_fd)
    broker = BrokerProcess(process, sections, root, log_path)
    try:
        await _wait_ready(broker)
        yield broker
    finally:
        with trio.CancelScope(shield=True):
            stop_budget = float(sections["timeouts"].get("cancel_grace_secs", 10)) + float(
                sections["timeouts"].get("stop_grace_secs", 5)
            )
            with trio.move_on_after(stop_budget + 10) as waited:
                await broker.terminate()
            if waited.cancelled_caught:
                process.kill()
                await process.wait()
                broker.exit_code = process.returncode


def wall() -> float:
    return time.perf_counter()


# -- results ------------------------------------------------------------------------------


@attrs.define
class Check:
    """One target of a scenario: what was measured against what was asked."""

    name: str
    target: str
    value: str
    met: bool | None  # None: could not be measured in this run
    detail: str = ""


@attrs.define
class Result:
    """What one scenario measured. ``where`` says how the broker ran."""

    scenario: str
    where: str
    metrics: dict[str, Any] = attrs.field(factory=dict)
    checks: list[Check] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    failed: bool = False  # the scenario raised instead of measuring

    def check(self, name: str, target: str, value: str, met: bool | None, detail: str = "") -> None:
        self.checks.append(Check(name, target, value, met, detail))


@attrs.frozen
class Context:
    """Where a scenario may write, and how big it should be."""

    root: Path
    quick: bool

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def secs(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def fresh(self, name: str) -> Path:
        """An empty directory for one scenario (emptied first when ``--keep`` reuses it)."""
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


IN_PROCESS = "in-process"
SEPARATE = "broker process (python -m broker run)"
