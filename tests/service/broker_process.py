"""A real ``python -m broker run --config FILE`` for tests, and the clients that talk to it.

The broker runs as a subprocess with a fake ``NOTIFY_SOCKET`` (an AF_UNIX
datagram socket owned by the test), so readiness is READY=1, not a sleep. Its
log goes to a file that a failing test prints. Chat clients speak protocol v1
on ``/ws``; the ``/status`` WebSocket feed tells which agents run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from broker.config import config_to_dict
from broker.frontends.wire import GatewayResponse, encode_event, encode_response, parse_reply
from broker.testing.fake_gateway import make_event
from broker.testing.harness import fake_agent_config, toml_text

ROOT = Path(__file__).resolve().parents[2]
Document = dict[str, Any]


def write_config(
    root: Path, port: int, *, agent_args: tuple[str, ...] = (), **sections: Mapping[str, Any]
) -> Path:
    """Write ``root/broker.toml`` running the fake agent with the harness's
    short timeouts, listening on ``port``, streaming off (one final reply per
    message); ``sections`` override keys as in broker.toml."""
    server = {"listen": f"127.0.0.1:{port}", "streaming": False, **sections.pop("server", {})}
    # validated on loopback; the file may still ask for another address (to test refusals)
    config = fake_agent_config(
        root, agent_args=agent_args, server={**server, "listen": f"127.0.0.1:{port}"}, **sections
    )
    data = config_to_dict(config)
    data["server"]["listen"] = server["listen"]
    path = root / "broker.toml"
    path.write_text(toml_text(data))
    return path


class NotifySocket:
    """The systemd side of sd_notify: records every datagram as a dict of fields."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="notify-", dir="/tmp")  # short: sun_path limit
        self.path = os.path.join(self.directory, "sock")
        self.messages: list[dict[str, str]] = []
        self._changed = trio.Event()
        self._sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._sock.bind(self.path)
        task_status.started()
        try:
            while True:
                data = await self._sock.recv(65536)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
                self.messages.append(fields)
                self._changed.set()
                self._changed = trio.Event()
        finally:
            self._sock.close()
            os.unlink(self.path)
            os.rmdir(self.directory)

    async def wait_for(self, predicate: Callable[[dict[str, str]], bool], start: int = 0) -> int:
        """Index of the first message from ``start`` on that satisfies ``predicate``."""
        while True:
            for index in range(start, len(self.messages)):
                if predicate(self.messages[index]):
                    return index
            await self._changed.wait()


class Chat:
    """A protocol v1 client on ``/ws``: sends messages, collects the replies
    (and the edits of streamed ones) by event id, answers ``request_id``
    frames with message ids ``m-1``, ``m-2``, ..."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.replies: dict[str, list[str]] = defaultdict(list)
        self._event_of: dict[str, str] = {}  # platform message id -> event id
        self._changed = trio.Event()

    async def read(self) -> None:
        try:
            while True:
                reply = parse_reply(await self.ws.get_message())
                event_id = self._event_of.get(reply.reply_to, reply.reply_to)
                self.replies[event_id].append(reply.text)
                self._changed.set()
                self._changed = trio.Event()
                if reply.request_id:
                    message_id = self._event_of[event_id] = f"m-{len(self._event_of) + 1}"
                    self._event_of[message_id] = event_id
                    response = GatewayResponse(reply.request_id, True, message_id=message_id)
                    await self.ws.send_message(encode_response(response))
        except trio_websocket.ConnectionClosed:
            pass

    async def send(self, text: str, channel: str) -> str:
        """Send ``text`` in thread ``channel``; returns the event id."""
        event = make_event(text, channel_id=channel)
        await self.ws.send_message(encode_event(event))
        return event.event_id

    async def reply(self, event_id: str, needle: str = "") -> str:
        """The first reply to ``event_id`` containing ``needle``."""
        while True:
            for text in self.replies.get(event_id, []):
                if needle in text:
                    return text
            await self._changed.wait()

    async def ask(self, text: str, channel: str, needle: str = "You said") -> str:
        return await self.reply(await self.send(text, channel), needle)


@asynccontextmanager
async def chat(port: int, query: str = "") -> AsyncIterator[Chat]:
    """A chat client of the broker at ``port``; ``query`` is added to the URL
    (``?threads=telegram:away`` to take over that thread's waiting replies)."""
    url = f"ws://127.0.0.1:{port}/ws{query}"
    async with trio_websocket.open_websocket_url(url) as ws, trio.open_nursery() as nursery:
        client = Chat(ws)
        nursery.start_soon(client.read)
        yield client
        nursery.cancel_scope.cancel()


async def status_until(port: int, predicate: Callable[[Document], bool]) -> Document:
    """The first ``/status`` document that satisfies ``predicate`` (the feed
    sends one on every pool change)."""
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/status") as ws:
        while True:
            document: Document = json.loads(await ws.get_message())
            if predicate(document):
                return document


def agent_pids(document: Document) -> dict[str, int]:
    return {s["thread_key"]: s["pid"] for s in document["sessions"] if s["pid"] is not None}


def grandchild_pid(reply: str) -> int:
    match = re.search(r"grandchild process: pid (\d+)", reply)
    assert match is not None, reply
    return int(match.group(1))


class BrokerProcess:
    """One ``python -m broker run --config FILE`` and its fake systemd socket."""

    def __init__(self, process: trio.Process, notify: NotifySocket, log_path: Path) -> None:
        self.process = process
        self.notify = notify
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait(self) -> int:
        return await self.process.wait()


@asynccontextmanager
async def broker_process(
    config_path: Path, *, name: str = "broker", env: Mapping[str, str] | None = None
) -> AsyncIterator[BrokerProcess]:
    """Start the broker (``env`` added to its environment) and wait for READY=1.
    On leaving, make sure it is gone (SIGKILL if a test left it running) and
    print its log if the test failed."""
    notify = NotifySocket()
    log_path = config_path.parent / f"{name}.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    environ.update({"NOTIFY_SOCKET": notify.path, **(env or {})})
    async with trio.open_nursery() as nursery:
        await nursery.start(notify.run)
        with log_path.open("wb") as log_file:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "broker", "run", "--config", str(config_path)],
                cwd=ROOT,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        running = BrokerProcess(process, notify, log_path)
        try:
            with trio.fail_after(60):
                await notify.wait_for(lambda m: m.get("READY") == "1")
            yield running
        except BaseException:
            print(f"--- {log_path} ---\n{running.log()}")
            raise
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                with trio.move_on_after(10) as scope:
                    scope.shield = True
                    await process.wait()
            nursery.cancel_scope.cancel()


async def wait_gone(pids: list[int]) -> None:
    """Return once every one of ``pids`` has exited (pidfds: no polling)."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
    try:
        for fd in fds:
            await trio.lowlevel.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
