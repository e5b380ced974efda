"""What the security tests use to talk to and measure a real broker process."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio_websocket

from broker.testing.harness import http_get
from tests.service.broker_process import BrokerProcess, Chat

RAW_AGENT = Path(__file__).with_name("raw_agent.py")


@asynccontextmanager
async def chat_with_token(port: int, token: str) -> AsyncIterator[Chat]:
    """A chat client on ``/ws?token=...``."""
    url = f"ws://127.0.0.1:{port}/ws?token={token}"
    async with trio_websocket.open_websocket_url(url) as ws, trio.open_nursery() as nursery:
        client = Chat(ws)
        nursery.start_soon(client.read)
        yield client
        nursery.cancel_scope.cancel()


def rss_bytes(pid: int) -> int:
    """The resident set size of ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def turns_submitted(port: int) -> int:
    """The pool's count of submitted turns, from GET /status (no token set)."""
    code, body = await http_get(port, "/status")
    assert code == 200
    count: int = json.loads(body)["counters"]["turns_submitted"]
    return count


async def stop(broker: BrokerProcess) -> None:
    """SIGTERM, and the broker must exit 0 within 30 s."""
    broker.signal(signal.SIGTERM)
    with trio.fail_after(30):
        assert await broker.wait() == 0, broker.log()
