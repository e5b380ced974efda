"""sd_notify over real unix datagram sockets, abstract and path; watchdog pings."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from supervisor.notify import Notifier, run_watchdog, watchdog_interval


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on ``sock`` (sends are synchronous, so none is in flight)."""
    received = []
    while True:
        try:
            received.append(sock.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return received


@pytest.fixture
def path_socket() -> Iterator[tuple[str, socket.socket]]:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:  # short: sun_path is 108 bytes
        path = os.path.join(directory, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield path, sock


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"agent-broker-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield "@" + name, sock


def test_notify_reaches_a_path_socket(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.notify(ready=True, status="serving 3 sessions")
    assert notifier.notify(stopping=True)
    assert drain(sock) == [b"READY=1\nSTATUS=serving 3 sessions\n", b"STOPPING=1\n"]


def test_notify_reaches_an_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, sock = abstract_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.notify(watchdog=True, status="line one\nline two")
    assert drain(sock) == [b"STATUS=line one line two\nWATCHDOG=1\n"]


def test_notify_is_a_no_op_without_socket_and_survives_a_missing_one() -> None:
    assert not Notifier.from_environ({}).notify(ready=True)
    assert Notifier.from_environ({}).watchdog_interval() is None
    gone = Notifier.from_environ({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not gone.notify(ready=True)  # logged, never raised


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


async def test_watchdog_pings_at_half_the_interval_only_while_healthy(
    autojump_clock: trio.testing.MockClock, abstract_socket: tuple[str, socket.socket]
) -> None:
    name, sock = abstract_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "4000000"})
    interval = notifier.watchdog_interval()
    assert interval == 2.0
    pings: list[float] = []
    healthy_until = 7.0

    def is_healthy() -> bool:
        now = trio.current_time()
        if now < healthy_until:
            pings.append(now)
        return now < healthy_until

    with trio.move_on_after(20):
        await run_watchdog(notifier, is_healthy)
    assert pings == [0.0, 2.0, 4.0, 6.0]
    assert drain(sock) == [b"WATCHDOG=1\n"] * len(pings)


async def test_watchdog_returns_at_once_when_not_asked_for(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, _ = abstract_socket
    with trio.fail_after(5):
        await run_watchdog(Notifier.from_environ({"NOTIFY_SOCKET": name}), lambda: True)
