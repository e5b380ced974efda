#!/usr/bin/env python3
"""Chaos soak: a real broker process under a random mix of abuse, with its invariants checked.

Starts ``python -m broker run --config FILE`` with the fake agent (a small pool
so sessions are evicted all the time, a short hard turn ceiling), then for
``--duration`` seconds several WebSocket clients on loopback send a random mix
to many threads: normal prompts, ``@crash``, ``@hang`` / ``@hang-hard`` (hard
timeouts), ``@grandchild``, ``@malformed``, ``/cancel``, ``/reset``, and they
disconnect and reconnect. A separate connection sends oversize and malformed
frames. A fake gateway, which the broker's gateway client dials, sends events
too and drops the connection now and then. Now and then the broker gets
SIGTERM and is started again on the same store.

Checked, and reported as figures at the end (exit code 1 when one fails):

* every event sent got exactly one reply (``reply_to`` = its event id;
  streaming is off). An event whose send failed was never received and is
  only counted. One sent while a stop was under way and never answered is
  reported apart (the protocol has no acknowledgement for a frame the server
  never read);
* no process outlives the broker: after every stop, no process (zombies
  aside: this container's init does not reap orphans) carries this run's
  marker in its environment, grandchildren included;
* no zombie child of the broker stays unreaped (seen in 3 samples running);
* broker RSS is stable: linear fit over each run after a warm-up, fail when
  the fitted growth of the longest run exceeds ``--rss-growth-mb``;
* the store matches the pool: after a clean stop the agents table is empty,
  and every thread the store lists with a session id got a reply;
* every stop is clean: exit code 0 within the stop budget;
* every frame the gateway received follows protocol v1; oversize frames are
  closed with 1009 and the next connection is served; every malformed frame
  gets an error frame and the connection keeps serving.

Usage: ``python scripts/chaos.py --duration 60 [--json]``. See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
import trio_websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker.config import load_config
from broker.frontends.wire import (
    Channel,
    Content,
    InboundEvent,
    Sender,
    WireError,
    encode_event,
    parse_reply,
)
from broker.service import stop_budget
from broker.testing.fake_gateway import FakeGateway, open_fake_gateway

MAX_FRAME_BYTES = 64 * 1024
GATEWAY_TOKEN = "chaos-gateway-token"
GATEWAY_DROP_CHANCE = 0.05
TURN_HARD_SECS = 3.0
CANCEL_GRACE_SECS = 1.0
STOP_GRACE_SECS = 1.0
WARMUP_SECS = 10.0  # RSS samples of a run's first seconds are not fitted
SAMPLE_SECS = 1.0
ZOMBIE_SAMPLES = 3

Body = Callable[[trio_websocket.WebSocketConnection, trio.Event], Awaitable[None]]

# (weight, kind, text); {n} is a counter
PROMPTS: list[tuple[int, str, str]] = [
    (30, "normal", "hello {n}"),
    (10, "normal", "@tool Build 0.2 execute\n@reply built {n}"),
    (8, "normal", "@delay 0.8\n@reply slow {n}"),
    (4, "normal", "@silent-tool 1.5\n@reply quiet {n}"),
    (3, "normal", "@flood 300\n@reply flooded {n}"),
    (3, "malformed", "@malformed\n@reply after noise {n}"),
    (3, "grandchild", "@grandchild\n@reply with a grandchild {n}"),
    (6, "crash", "@say partial {n}\n@crash 3"),
    (5, "hang", "@say waiting {n}\n@hang"),
    (4, "hang-hard", "@hang-hard"),
    (8, "cancel", "/cancel"),
    (4, "reset", "/reset"),
]
DISCONNECT_WEIGHT = 5
# How a reply reads, for the figures: first matching phrase wins.
REPLY_CLASSES = [
    ("shutdown", ("restarting", "stopped before this message", "shutting down")),
    ("timed_out", ("limit",)),
    ("agent_died", ("exited unexpectedly",)),
    ("busy", ("thread is busy",)),
    ("pool_full", ("capacity", "pool full")),
    ("start_failed", ("keeps failing", "could not be started")),
    ("reset", ("reset",)),
    ("cancelled", ("cancel",)),
    ("agent_error", ("answered with an error",)),
]
BAD_FRAMES: list[str | bytes] = [
    "not json {",
    "[1, 2, 3]",
    '{"schema": "x"}',
    '{"schema": "openab.gateway.event.v1", "event_id": "evt_bad"}',
    b"\x00binary",
]


@attrs.define
class Sent:
    thread: str
    kind: str
    at: float
    broker_state: str  # up | stopping | down
    broker_run: int


@attrs.define
class Ledger:
    """Every event sent and every reply received, keyed by event id."""

    sent: dict[str, Sent] = attrs.field(factory=dict)
    replies: dict[str, list[str]] = attrs.field(factory=dict)
    send_failed: Counter[str] = attrs.field(factory=Counter)
    stray_replies: int = 0
    bad_replies: list[str] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def record_reply(self, frame: str) -> None:
        try:
            reply = parse_reply(frame)
        except WireError as exc:
            self.bad_replies.append(str(exc))
            return
        if reply.reply_to not in self.sent:
            self.stray_replies += 1
            return
        self.replies.setdefault(reply.reply_to, []).append(reply.text)
        self.changed.set()
        self.changed = trio.Event()

    def unsend(self, event_id: str) -> None:
        """The send of ``event_id`` failed: the broker never got it."""
        self.send_failed[self.sent.pop(event_id).kind] += 1

    def owed(self, platform: str) -> bool:
        """Whether an event of ``platform`` still waits for its reply."""
        return any(self.sent[e].thread.startswith(f"{platform}:") for e in self.unanswered())

    def unanswered(self) -> list[str]:
        return [event_id for event_id in self.sent if event_id not in self.replies]

    def answered_threads(self) -> set[str]:
        return {self.sent[event_id].thread for event_id in self.replies}


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
            self.figures.pool_counters.update(json.loads(body)["counters"])
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
        self.figures.stops.append({
            "pid": pid,
            "at": round(began - self.t0, 2),
            "exit_code": self.process.returncode,
            "secs": round(took, 2),
            "leftovers": len(left),
            "agents_rows": agents,
        })

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
                seen = (seen + [zombie_children(process.pid)])[-ZOMBIE_SAMPLES:]
                if len(seen) == ZOMBIE_SAMPLES:
                    self.figures.zombies |= set.intersection(*seen)
            else:
                seen = []
            await trio.sleep(SAMPLE_SECS)


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


# -- clients -------------------------------------------------------------------------


class Chaos:
    """The clients, the abuse, the restarts and the ledger of one soak."""

    def __init__(self, args: argparse.Namespace, runner: BrokerRunner, figures: Figures):
        self.args = args
        self.runner = runner
        self.figures = figures
        self.ledger = Ledger()
        self.rng = random.Random(args.seed)
        self.ids = itertools.count(1)
        self.sending = True  # clients send until the duration is over...
        self.done = False  # ...and stay connected until the report

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.runner.port}/ws"

    def event(self, platform: str, channel: str, text: str) -> tuple[str, str]:
        event_id = f"evt_{next(self.ids)}"
        event = InboundEvent(
            event_id,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            platform,
            Channel(channel, "group"),
            Sender("u1", "chaos", "Chaos", False),
            Content("text", text),
            f"m-{event_id}",
        )
        return event_id, encode_event(event)

    async def send_event(
        self, ws: trio_websocket.WebSocketConnection, platform: str, channel: str, kind: str,
        text: str,
    ) -> str | None:
        event_id, frame = self.event(platform, channel, text)
        self.expect(event_id, platform, channel, kind)  # first: its reply may beat our wake-up
        try:
            await ws.send_message(frame)
        except trio_websocket.ConnectionClosed:
            self.ledger.unsend(event_id)
            return None
        return event_id

    def expect(self, event_id: str, platform: str, channel: str, kind: str) -> None:
        self.ledger.sent[event_id] = Sent(
            f"{platform}:{channel}", kind, round(self.runner.elapsed(), 2), self.runner.state,
            self.runner.runs,
        )

    def take_frame(self, message: str | bytes) -> None:
        if isinstance(message, str) and '"agent-broker.error.v1"' in message:
            self.figures.error_frames += 1
        else:
            self.ledger.record_reply(str(message))

    async def read_replies(self, ws: trio_websocket.WebSocketConnection, closed: trio.Event) -> None:
        try:
            while True:
                self.take_frame(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            closed.set()

    async def connected(self, platform: str, body: Body) -> None:
        """Stay connected as a client of ``platform`` (reconnecting) until the
        report; ``body`` runs on each connection and returns to reconnect."""
        while not self.done:
            try:
                async with trio_websocket.open_websocket_url(
                    f"{self.url}?platforms={platform}", connect_timeout=5, disconnect_timeout=5
                ) as ws, trio.open_nursery() as nursery:
                    self.figures.clients_connected += 1
                    closed = trio.Event()
                    nursery.start_soon(self.read_replies, ws, closed)
                    await body(ws, closed)
                    nursery.cancel_scope.cancel()
            except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                self.figures.connect_failures += 1
                await trio.sleep(0.3)

    async def client(self, index: int) -> None:
        """One chat client: its own platform, a few threads, random actions."""
        platform = f"chaos{index}"
        channels = [f"t{n}" for n in range(self.args.threads_per_client)]

        async def act(ws: trio_websocket.WebSocketConnection, closed: trio.Event) -> None:
            await self.act(ws, closed, platform, channels)

        await self.connected(platform, act)

    async def listen(self, platform: str) -> None:
        """A client that only takes replies: those of the abuse connections'
        events that found their connection gone wait in the outbox for it."""

        async def until_closed(ws: trio_websocket.WebSocketConnection, closed: trio.Event) -> None:
            await closed.wait()

        await self.connected(platform, until_closed)

    async def act(
        self, ws: trio_websocket.WebSocketConnection, closed: trio.Event, platform: str,
        channels: list[str],
    ) -> None:
        """Send random events until a disconnect is drawn or sending ends.

        After the sending the connection stays open until the report (or until
        the broker closes it: the caller reconnects), so the final replies, and
        "restarting" ones, reach it."""
        weights = [w for w, _, _ in PROMPTS] + [DISCONNECT_WEIGHT]
        while self.sending:
            await trio.sleep(self.rng.expovariate(1 / self.args.pause))
            if not self.sending:
                break
            pick = self.rng.choices(range(len(weights)), weights)[0]
            if pick == len(PROMPTS):
                self.figures.disconnects += 1
                # Abrupt (no close handshake, like a lost network) only when nothing is owed
                # to this client: a reply already in its socket buffer would be lost, and the
                # protocol has no acknowledgement to tell the broker.
                if not self.ledger.owed(platform) and self.rng.random() < 0.5:
                    self.figures.abrupt_disconnects += 1
                    await ws._stream.aclose()
                await ws.aclose()
                await trio.sleep(self.rng.uniform(0, 2))  # replies meanwhile go to the outbox
                return
            _, kind, text = PROMPTS[pick]
            if await self.send_event(ws, platform, self.rng.choice(channels), kind,
                                     text.format(n=next(self.ids))) is None:
                return
        await closed.wait()

    async def abuse(self) -> None:
        """Oversize frames (expect close 1009, then a served connection) and
        malformed frames (expect one error frame each, connection kept).
        A round that a broker restart cut into is not counted."""
        while self.sending:
            await trio.sleep(self.rng.uniform(2, 6))
            run = self.runner.runs
            if self.runner.state != "up":
                continue
            with trio.move_on_after(20):
                try:
                    closed_1009, served = await self.oversize_then_served()
                    errors_all, kept_serving = await self.malformed_frames()
                except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed):
                    self.figures.connect_failures += 1
                    continue
                if self.runner.runs != run or self.runner.state != "up":
                    continue
                self.figures.oversize_sent += 1
                self.figures.oversize_closed_1009 += closed_1009
                self.figures.served_after_oversize += served
                self.figures.bad_frames_sent += len(BAD_FRAMES)
                self.figures.malformed_rounds += 1
                self.figures.malformed_rounds_all_errors += errors_all and kept_serving

    async def oversize_then_served(self) -> tuple[bool, bool]:
        """(closed with 1009, the next connection was answered)"""
        url = f"{self.url}?platforms=abuse-big"
        closed_1009 = False
        async with trio_websocket.open_websocket_url(url, connect_timeout=5) as ws:
            _, frame = self.event("abuse", "big", "x" * (MAX_FRAME_BYTES + 1024))
            try:
                await ws.send_message(frame)
                while True:
                    await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                closed_1009 = exc.reason is not None and exc.reason.code == 1009
        async with trio_websocket.open_websocket_url(
            f"{self.url}?platforms=abuse", connect_timeout=5
        ) as ws:
            return closed_1009, await self.answered(ws, "after-big", "@reply served")

    async def malformed_frames(self) -> tuple[bool, bool]:
        """(one error frame per bad frame, the connection answered an event after them)"""
        async with trio_websocket.open_websocket_url(
            f"{self.url}?platforms=abuse", connect_timeout=5
        ) as ws:
            for frame in BAD_FRAMES:
                await ws.send_message(frame)
            errors_before = self.figures.error_frames
            served = await self.answered(ws, "after-bad", "@reply still served")
            return self.figures.error_frames - errors_before == len(BAD_FRAMES), served

    async def answered(self, ws: trio_websocket.WebSocketConnection, channel: str,
                       text: str) -> bool:
        """Send one event and read this connection until its reply came (bounded)."""
        event_id = await self.send_event(ws, "abuse", channel, "normal", text)
        with trio.move_on_after(15):
            while event_id is not None and event_id not in self.ledger.replies:
                self.take_frame(await ws.get_message())
        return event_id in self.ledger.replies

    async def gateway_chat(self, gateway: FakeGateway) -> None:
        """Events through the broker's gateway client; now and then the
        gateway drops the connection abruptly (the broker redials)."""
        weights = [w for w, _, _ in PROMPTS]
        while self.sending:
            await trio.sleep(self.rng.expovariate(1 / self.args.pause))
            if not gateway.connected:
                continue
            if self.rng.random() < GATEWAY_DROP_CHANCE:
                self.figures.gateway_drops += 1
                await gateway.drop()
                continue
            _, kind, text = PROMPTS[self.rng.choices(range(len(PROMPTS)), weights)[0]]
            channel = f"g{self.rng.randrange(self.args.threads_per_client)}"
            event_id, frame = self.event("gw", channel, text.format(n=next(self.ids)))
            self.expect(event_id, "gw", channel, kind)
            try:
                await gateway.send_raw(frame)
            except (RuntimeError, trio_websocket.ConnectionClosed):
                self.ledger.unsend(event_id)

    async def gateway_replies(self, gateway: FakeGateway) -> None:
        seen = 0
        while True:
            def more(seen: int = seen) -> bool:
                return len(gateway.received) > seen

            await gateway.wait_for(more)
            for received in gateway.received[seen:]:
                if received.reply is not None:
                    self.ledger.record_reply(received.text)
            seen = len(gateway.received)

    async def restarts(self, times: list[float]) -> None:
        for at in times:
            await trio.sleep_until(at)
            if not self.sending:
                return
            await self.runner.stop()
            await trio.sleep(self.rng.uniform(0.2, 1.5))
            await self.runner.start()

    async def settle(self, limit: float) -> None:
        """Wait until every event sent is answered, at most ``limit`` seconds."""
        with trio.move_on_after(limit):
            while self.ledger.unanswered():
                await self.ledger.changed.wait()


async def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    marker = f"{os.getpid()}-{random.randrange(1 << 30):x}"
    port = free_port()
    figures = Figures()
    began = time.monotonic()
    async with open_fake_gateway(token=GATEWAY_TOKEN) as gateway:
        config = write_config(root, port, marker, args, gateway.url if args.gateway else "")
        runner = BrokerRunner(config, port, root, marker, figures)
        chaos = Chaos(args, runner, figures)
        await run_chaos(args, chaos, runner, gateway, marker)
        figures.gateway_violations = list(gateway.violations)
    return report(args, chaos, figures, time.monotonic() - began)


async def run_chaos(
    args: argparse.Namespace, chaos: Chaos, runner: BrokerRunner, gateway: FakeGateway,
    marker: str,
) -> None:
    await runner.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.sample)
            if args.gateway:
                nursery.start_soon(chaos.gateway_chat, gateway)
                nursery.start_soon(chaos.gateway_replies, gateway)
            now = trio.current_time()
            gap = args.duration / (args.restarts + 1)
            times = [now + gap * (k + 1) + chaos.rng.uniform(-gap / 4, gap / 4)
                     for k in range(args.restarts)]
            nursery.start_soon(chaos.restarts, times)
            for index in range(args.clients):
                nursery.start_soon(chaos.client, index)
            nursery.start_soon(chaos.abuse)
            nursery.start_soon(chaos.listen, "abuse")
            await trio.sleep_until(now + args.duration)
            chaos.sending = False
            while runner.state != "up":  # a restart in progress finishes first
                await trio.sleep(0.1)
            await chaos.settle(TURN_HARD_SECS + CANCEL_GRACE_SECS + STOP_GRACE_SECS + 20)
            await runner.stop()
            await chaos.settle(2)
            chaos.done = True
            nursery.cancel_scope.cancel()
    finally:
        if runner.process is not None and runner.process.returncode is None:
            runner.process.kill()
        for pid in marked_processes(marker):
            _kill(pid)


def report(args: argparse.Namespace, chaos: Chaos, figures: Figures, wall: float) -> dict[str, Any]:
    ledger = chaos.ledger
    unanswered = ledger.unanswered()
    lost_in_stop = [e for e in unanswered if ledger.sent[e].broker_state != "up"]
    missing = [e for e in unanswered if ledger.sent[e].broker_state == "up"]
    duplicates = {e: texts for e, texts in ledger.replies.items() if len(texts) > 1}
    slopes = [slope([p for p in run if p[0] >= WARMUP_SECS]) for run in figures.rss]
    longest = max(figures.rss, key=len) if figures.rss else []
    fitted = [p for p in longest if p[0] >= WARMUP_SECS]
    growth_mb = slope(fitted) * (fitted[-1][0] - fitted[0][0]) / 1024 if len(fitted) > 2 else 0.0
    unanswered_threads = figures.store_threads - ledger.answered_threads()
    unclean_stops = [
        s for s in figures.stops if s["exit_code"] != 0 or s["secs"] > chaos.runner.budget
    ]
    by_kind = Counter(s.kind for s in ledger.sent.values())
    invariants = {
        "one_reply_per_event": _check(
            not missing and not duplicates,
            f"{len(missing)} unanswered, {len(duplicates)} answered more than once"
            + "".join(f"; {e}: {attrs.asdict(ledger.sent[e])}" for e in missing[:5])
            + "".join(f"; {e} got {texts}" for e, texts in list(duplicates.items())[:3]),
        ),
        "replies_well_formed": _check(not ledger.bad_replies, f"{len(ledger.bad_replies)} bad: "
                                      f"{ledger.bad_replies[:3]}"),
        "no_process_outlives_the_broker": _check(not figures.leftovers, f"{figures.leftovers[:5]}"),
        "no_zombie_children": _check(not figures.zombies, f"{sorted(figures.zombies)[:10]}"),
        "rss_stable": _check(growth_mb <= args.rss_growth_mb,
                             f"fitted growth {growth_mb:.1f} MB over the longest run"),
        "store_consistent": _check(
            figures.agents_rows_after_stop == 0 and not unanswered_threads,
            f"{figures.agents_rows_after_stop} agents rows after stops; threads in the store "
            f"never answered: {sorted(unanswered_threads)[:5]}",
        ),
        "clean_stops": _check(
            not unclean_stops, f"{unclean_stops} (budget {chaos.runner.budget:g} s)",
        ),
        "oversize_frames_closed_1009": _check(
            figures.oversize_closed_1009 == figures.oversize_sent
            and figures.served_after_oversize == figures.oversize_sent,
            f"{figures.oversize_closed_1009}/{figures.oversize_sent} closed with 1009, "
            f"{figures.served_after_oversize} next connections served",
        ),
        "gateway_protocol_clean": _check(
            not figures.gateway_violations, f"{figures.gateway_violations[:3]}"
        ),
        "malformed_frames_answered_with_errors": _check(
            figures.malformed_rounds_all_errors == figures.malformed_rounds,
            f"{figures.malformed_rounds_all_errors}/{figures.malformed_rounds} rounds got one error "
            f"frame per bad frame and kept serving",
        ),
    }
    rss_all = [kb for run in figures.rss for _, kb in run]
    figures_out = {
        "duration_secs": args.duration,
        "seed": args.seed,
        "wall_secs": round(wall, 1),
        "events_sent": len(ledger.sent),
        "events_by_kind": dict(sorted(by_kind.items())),
        "replies": sum(len(t) for t in ledger.replies.values()),
        "replies_by_kind": dict(
            Counter(classify(t) for texts in ledger.replies.values() for t in texts).most_common()
        ),
        "unanswered": len(missing),
        "unanswered_sent_during_a_stop": len(lost_in_stop),
        "answered_more_than_once": len(duplicates),
        "send_failed": sum(ledger.send_failed.values()),
        "stray_replies": ledger.stray_replies,
        "connections": figures.clients_connected,
        "client_disconnects": figures.disconnects,
        "abrupt_disconnects": figures.abrupt_disconnects,
        "connect_failures": figures.connect_failures,
        "oversize_frames": figures.oversize_sent,
        "closed_1009": figures.oversize_closed_1009,
        "bad_frames": figures.bad_frames_sent,
        "error_frames": figures.error_frames,
        "gateway_drops": figures.gateway_drops,
        "broker_runs": len(figures.rss),
        "pool_counters": dict(sorted(figures.pool_counters.items())),
        "stops": figures.stops,
        "rss_mb_min": round(min(rss_all) / 1024, 1) if rss_all else None,
        "rss_mb_max": round(max(rss_all) / 1024, 1) if rss_all else None,
        "rss_slope_kb_per_min": [round(s * 60, 1) for s in slopes],
        "rss_growth_mb_longest_run": round(growth_mb, 2),
        "agents_seen_max": figures.agents_seen_max,
        "store_threads": len(figures.store_threads),
        "outbox_rows_at_end": figures.outbox_rows_at_end,
    }
    return {"ok": all(v["ok"] for v in invariants.values()), "invariants": invariants,
            "figures": figures_out}


def classify(text: str) -> str:
    lowered = text.lower()
    for name, phrases in REPLY_CLASSES:
        if any(phrase in lowered for phrase in phrases):
            return name
    return "answer"


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def print_table(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out("invariant                          result  detail")
    for name, check in result["invariants"].items():
        out(f"{name:<34} {'ok' if check['ok'] else 'FAIL':<7} {check['detail']}")
    out("")
    for name, value in result["figures"].items():
        out(f"{name:<34} {json.dumps(value) if isinstance(value, list | dict) else value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of chaos (600)")
    parser.add_argument("--clients", type=int, default=4, help="WebSocket chat clients (4)")
    parser.add_argument("--threads-per-client", type=int, default=4)
    parser.add_argument("--max-sessions", type=int, default=6, help="[pool] max_sessions (6)")
    parser.add_argument("--queue-depth", type=int, default=2, help="[pool] queue_depth (2)")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="mean seconds between a client's actions (0.5)")
    parser.add_argument("--restarts", type=int, default=None,
                        help="broker SIGTERM+restarts (default: one per 2 minutes, at least 1)")
    parser.add_argument("--rss-growth-mb", type=float, default=32.0,
                        help="fail when RSS grows more than this over the longest run (32)")
    parser.add_argument("--no-gateway", dest="gateway", action="store_false",
                        help="no gateway client (by default a fake gateway also sends events "
                        "and drops the broker's connection now and then)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", help="keep config, logs and store here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    if args.restarts is None:
        args.restarts = max(1, int(args.duration // 120))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = trio.run(soak, args, root)
    finally:
        if args.workdir is None and not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
