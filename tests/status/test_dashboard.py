"""The dashboard's screen, its feed against a real server, and the two CLI commands."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from rich.console import Console

from broker.config import BrokerConfig
from broker.frontends.slack.adapter import SlackSnapshot
from broker.ops.dashboard import follow, render_dashboard, shown_url, status_url
from broker.ops.status import status_document
from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.testing.harness import free_port
from tests.status.conftest import base_url, started, status_server
from tests.status.samples import GATEWAY, SERVER, busy_session, pool_snapshot

NOW = 1_700_000_100.0


def sample_doc() -> dict[str, Any]:
    snapshot = pool_snapshot(
        busy_session("discord:1234"),
        busy_session(
            "cli:quiet",
            state="idle",
            pid=777,
            idle_secs=42.0,
            current_tool=None,
            turn_elapsed_secs=None,
            turn_deadline_in_secs=None,
            queue_length=0,
            restarts=0,
        ),
    )
    return status_document(
        snapshot, SERVER, now=NOW, started_at=NOW - 3725, version="9.9", gateway=GATEWAY
    )


def screen(doc: dict[str, Any] | None, error: str | None = None, *, styles: bool = False) -> str:
    console = Console(record=True, width=120, force_terminal=styles, color_system="standard")
    console.print(render_dashboard(doc, error=error))
    return console.export_text(styles=styles)


def row_of(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if key in line)
    return [cell.strip() for cell in re.split("[│┃]", line.strip("│┃ "))]


def test_sessions_table_shows_state_pid_times_queue_tool_and_restarts() -> None:
    text = screen(sample_doc())
    assert row_of(text, "discord:1234") == [
        "discord:1234", "busy", "4242", "2m05s", "-", "1m01s", "28m58s", "2", "Run tests", "1",
    ]  # fmt: skip
    assert row_of(text, "cli:quiet") == [
        "cli:quiet", "idle", "777", "2m05s", "42s", "-", "-", "0", "-", "0",
    ]  # fmt: skip
    header = row_of(text, "ceiling in")
    assert header[:3] == ["thread", "state", "pid"] and "restarts" in header


def test_states_are_coloured() -> None:
    text = screen(sample_doc(), styles=True)
    assert "\x1b[1;33mbusy" in text and "\x1b[32midle" in text


def test_gauges_frontends_and_header() -> None:
    text = screen(sample_doc())
    assert "agent-broker 9.9  pid" in text and "up 1h02m  listening on 127.0.0.1:8765" in text
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in text.splitlines() if line}
    assert re.fullmatch(r"━+╺━+ 2/20 \(1 busy, 1 idle, 0 starting, 0 stopping\)", rows["active"])
    assert (rows["suspended"], rows["spares"], rows["queued"]) == ("4", "1/2 ready", "2")
    assert "2 client(s) connected (ws-1, ws-3), 17 events received" in text
    assert "2 replies waiting in the outbox" in text
    assert (
        "gateway wss://gw.example:8443/ws: disconnected (refused with HTTP 502), 3 connects, "
        "40 events, 5 replies in the outbox"
    ) in text
    assert "9 spawned, 0 resumed, 0 evicted, 1 crashed" in text


def test_recent_events_are_listed_newest_first() -> None:
    doc = sample_doc()
    doc["recent"].append(
        {"at": NOW - 5, "age_secs": 5.0, "kind": "timed_out", "thread_key": "cli:slow",
         "detail": "hard ceiling"}
    )  # fmt: skip
    text = screen(doc)
    lines = [
        line
        for line in text.splitlines()
        if re.search(r"\d\d:\d\d:\d\d  (timed_out|crashed)", line)
    ]
    assert "timed_out  cli:slow   hard ceiling" in lines[0]
    assert "crashed    discord:9  exited with code 3" in lines[1]


def test_broker_down_message_keeps_the_last_known_state() -> None:
    error = "broker not reachable at ws://127.0.0.1:9/status (connection refused), retrying in 2 s"
    assert error in screen(None, error)
    text = screen(sample_doc(), error)
    assert error in text and "last known state, as of" in text and "discord:1234" in text
    assert "connecting" in screen(None)


async def test_feed_says_when_the_broker_is_down_without_showing_the_token() -> None:
    port = free_port()
    shown: list[tuple[Any, str | None]] = []
    reported = trio.Event()

    def show(doc: dict[str, Any] | None, error: str | None) -> None:
        shown.append((doc, error))
        reported.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, f"ws://127.0.0.1:{port}?token=hush-secret", show)
            await reported.wait()
            nursery.cancel_scope.cancel()
    expected = (
        f"broker not reachable at ws://127.0.0.1:{port}/status (connection refused), "
        "retrying in 1 s"
    )
    assert shown == [(None, expected)]


async def test_feed_says_when_the_broker_refuses_the_token(
    make_config: Callable[..., BrokerConfig],
) -> None:
    errors: list[str | None] = []
    refused = trio.Event()

    def show(doc: dict[str, Any] | None, error: str | None) -> None:
        errors.append(error)
        refused.set()

    with trio.fail_after(30):
        async with (
            open_pool(make_config()) as pool,
            status_server(pool, token="right") as server,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(follow, base_url(server) + "?token=wrong", show)
            await refused.wait()
            nursery.cancel_scope.cancel()
    expected = (
        f"the broker at ws://127.0.0.1:{server.port}/status refused the dashboard: "
        "it refused the token, retrying in 1 s"
    )
    assert errors == [expected]


@pytest.mark.parametrize(
    ("given", "feed", "fetch"),
    [
        ("ws://h:1", "ws://h:1/status", "http://h:1/status"),
        ("ws://h:1/ws?token=t", "ws://h:1/status?token=t", "http://h:1/status?token=t"),
        (
            "wss://h/broker/?token=t",
            "wss://h/broker/status?token=t",
            "https://h/broker/status?token=t",
        ),
        ("http://h:1/status", "ws://h:1/status", "http://h:1/status"),
    ],
)
def test_status_urls_replace_the_path_and_keep_the_token(given: str, feed: str, fetch: str) -> None:
    assert (status_url(given), status_url(given, http=True)) == (feed, fetch)
    assert shown_url(status_url(given)) == feed.partition("?")[0]


class Terminal:
    """A pseudo-terminal whose output is read continuously (so the child never blocks)."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
        self.output = b""
        self.changed = trio.Event()

    async def read(self) -> None:
        stream = trio.lowlevel.FdStream(self.master)
        try:
            while data := await stream.receive_some(65536):
                self.output += data
                self.changed.set()
                self.changed = trio.Event()
        except (OSError, trio.BrokenResourceError):
            pass  # EIO: the child closed the terminal
        finally:
            await stream.aclose()

    async def wait_for(self, text: bytes, after: int = 0) -> int:
        """Until ``text`` appears past offset ``after``; returns where it ends."""
        while (found := self.output.find(text, after)) < 0:
            await self.changed.wait()
        return found + len(text)


async def test_dashboard_in_a_terminal_waits_for_the_broker_shows_its_threads_and_quits_on_ctrl_c(
    make_config: Callable[..., BrokerConfig], tmp_path: Path
) -> None:
    port = free_port()
    terminal = Terminal()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "140", "LINES": "40"}
    argv = [sys.executable, "-m", "broker", "dashboard", "--url", f"ws://127.0.0.1:{port}"]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            argv, stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave,
            cwd=tmp_path, env=env,
        )  # fmt: skip
        os.close(terminal.slave)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(terminal.read)
                seen = await terminal.wait_for(b"broker not reachable at ws://127.0.0.1:")
                async with open_pool(make_config()) as pool, status_server(pool, port=port):
                    await started(pool.submit("cli:dashboard-demo", Prompt("@silent-tool 60")))
                    await terminal.wait_for(b"cli:dashboard-demo", seen)
                    process.send_signal(signal.SIGINT)
                    assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert b"Traceback" not in terminal.output


async def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "broker", *args],
        cwd=cwd,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_status_command_prints_json_or_a_table_of_the_live_broker(
    make_config: Callable[..., BrokerConfig], tmp_path: Path
) -> None:
    with trio.fail_after(60):
        async with open_pool(make_config()) as pool, status_server(pool, token="tok") as server:
            await started(pool.submit("cli:status-demo", Prompt("@silent-tool 60")))
            url = base_url(server) + "?token=tok"
            as_json = await run_cli("status", "--json", "--url", url, cwd=tmp_path)
            table = await run_cli("status", "--url", url, cwd=tmp_path)
            refused = await run_cli("status", "--url", base_url(server), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    assert [(s["thread_key"], s["state"]) for s in doc["sessions"]] == [("cli:status-demo", "busy")]
    assert table.returncode == 0, table.stderr
    assert b"cli:status-demo" in table.stdout and b"busy" in table.stdout
    assert refused.returncode == 77
    assert refused.stderr.decode() == (
        f"agent-broker: the broker at http://127.0.0.1:{server.port}/status refused: it requires "
        "a token (set [server] token in broker.toml or pass --url ...?token=)\n"
    )


async def test_status_command_exits_69_when_the_broker_is_down(tmp_path: Path) -> None:
    port = free_port()
    with trio.fail_after(30):
        result = await run_cli("status", "--url", f"ws://127.0.0.1:{port}?token=x", cwd=tmp_path)
    assert result.returncode == 69
    assert result.stderr.decode() == (
        f"agent-broker: broker not reachable at http://127.0.0.1:{port}/status "
        "(connection refused)\n"
    )
    assert result.stdout == b""


def test_slack_shows_its_connection_state_and_why_it_stopped() -> None:
    snapshot = pool_snapshot()
    up = SlackSnapshot("connected", 2, 3, 1, 40, 7, 2, 0, "", "", "U0BOT")
    stopped = attrs.evolve(
        up, state="stopped", connections=0, fatal="invalid_auth (check [slack] bot_token)"
    )
    for slack, shown in (
        (up, "slack: connected (2 socket(s)), 40 events, 2 rate limited"),
        (stopped, "slack: stopped: invalid_auth (check [slack] bot_token), 40 events"),
    ):
        doc = status_document(snapshot, SERVER, now=NOW, started_at=NOW - 5, slack=slack)
        assert doc["frontends"]["slack"]["state"] == slack.state
        assert shown in screen(doc)


def test_a_thread_waiting_for_approval_is_highlighted_with_its_tool_and_wait() -> None:
    snapshot = pool_snapshot(busy_session("cli:asked", waiting_for="Bash", waiting_secs=75.0))
    doc = status_document(snapshot, SERVER, now=1_700_000_100.0, started_at=1_700_000_000.0)
    assert "waiting for approval: Bash (1m15s)" in row_of(screen(doc), "cli:asked")[8]
    assert "\x1b[1;30;43mwaiting for approval: Bash" in screen(doc, styles=True)


def crowded_doc() -> dict[str, Any]:
    sessions = [
        busy_session(f"discord:a-rather-long-thread-name-{i}", current_tool=f"Compiling module {i}")
        for i in range(12)
    ]
    snapshot = pool_snapshot(*sessions)
    return status_document(
        snapshot, SERVER, now=NOW, started_at=NOW - 3725, version="9.9", gateway=GATEWAY
    )


def test_the_dashboard_fits_80_by_24_giving_way_by_priority_and_lists_threads_without_agent() -> (
    None
):
    console = Console(record=True, width=80, height=24, color_system=None)
    console.print(render_dashboard(crowded_doc(), error=None, width=80, height=24))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), "\n".join(lines)
    header = row_of("\n".join(lines), "thread")
    assert header[:2] == ["thread", "state"] and {"tool", "up"} <= set(header)
    assert all(name for name in header), "no column is squeezed to nothing"
    first = row_of("\n".join(lines), "-name-0")
    assert first[0].startswith("discord:a-") and first[1] == "busy"
    assert first[header.index("tool")].startswith("Compiling")
    assert "suspended: cli:old-1, slack:C1 and 2 more" in "\n".join(lines)
    assert "blocked: discord:9 for 42s (The agent keeps failing.)" in "\n".join(lines)
    assert any(line.strip().startswith("… ") and "more" in line for line in lines)
