"""systemd service notifications (``sd_notify``) and the watchdog keep-alive.

The protocol: one datagram of ``KEY=value`` lines sent to the unix socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract socket when it starts
with ``@``). Without ``$NOTIFY_SOCKET`` (not run by systemd with
``Type=notify``) every call is a no-op. ``$WATCHDOG_USEC`` asks for a
``WATCHDOG=1`` ping at least that often; we ping at half of it, and only
while the service reports itself healthy, so a wedged broker gets restarted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

import trio

logger = logging.getLogger("supervisor")


def socket_address(value: str) -> str | bytes:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address: ``@name`` is the abstract ``\\0name``."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``.

    None when no watchdog is asked for, when the value is not a positive
    integer, or when ``$WATCHDOG_PID`` names another process than ``pid``
    (default: ours).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Sends ``sd_notify`` datagrams; does nothing when there is no socket."""

    def __init__(self, address: str | bytes | None, *, watchdog: float | None = None) -> None:
        self.address = address
        self._watchdog = watchdog

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC`` and ``$WATCHDOG_PID``."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        return cls(address, watchdog=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings, or None when systemd asked for none."""
        return self._watchdog if self.enabled else None

    def notify(
        self,
        *,
        ready: bool = False,
        status: str | None = None,
        stopping: bool = False,
        watchdog: bool = False,
        reloading: bool = False,
    ) -> bool:
        """Send one datagram with the given fields; True if it was sent.

        Never blocks (``MSG_DONTWAIT``) and never raises for socket trouble:
        a failure is logged and False returned, because a notification is
        never worth taking the service down for. ``status`` is one line.
        """
        if self.address is None:
            return False
        lines = []
        if ready:
            lines.append("READY=1")
        if reloading:
            lines.append("RELOADING=1")
            # Type=notify-reload wants the time the reload began
            lines.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        if stopping:
            lines.append("STOPPING=1")
        if status is not None:
            lines.append("STATUS=" + " ".join(status.splitlines()))
        if watchdog:
            lines.append("WATCHDOG=1")
        if not lines:
            return False
        message = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            level = logging.DEBUG if exc.errno == errno.EAGAIN else logging.WARNING
            logger.log(level, "sd_notify to %r failed: %s", self.address, exc)
            return False
        return True


async def run_watchdog(notifier: Notifier, is_healthy: Callable[[], bool]) -> None:
    """Ping ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` while ``is_healthy()`` holds.

    Returns at once when no watchdog was asked for. An unhealthy check skips
    the ping (logged), so systemd restarts a broker that stays wedged. Runs
    until cancelled; the first ping goes out immediately.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        if is_healthy():
            notifier.notify(watchdog=True)
        else:
            logger.warning("watchdog: unhealthy, ping skipped")
        await trio.sleep(interval)
