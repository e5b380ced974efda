"""Status tests: a real pool of fake agents behind a real server on loopback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.config import BrokerConfig, ServerConfig
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.ops.status import StatusEndpoints
from broker.reply import TurnHandle
from broker.sessions.pool import Pool
from broker.testing.harness import fake_agent_config
from tests.frontends.echo import EchoSink


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., BrokerConfig]:
    def make(agent_args: Sequence[str] = (), **sections: Any) -> BrokerConfig:
        return fake_agent_config(tmp_path, agent_args=agent_args, **sections)

    return make


@asynccontextmanager
async def status_server(
    pool: Pool,
    *,
    token: str = "",
    heartbeat_secs: float = 2.0,
    port: int = 0,
    endpoints: StatusEndpoints | None = None,
) -> AsyncIterator[WebSocketServer]:
    """The server with the status routes (and an echo sink on /ws) until the block ends."""
    if endpoints is None:
        endpoints = StatusEndpoints(pool, started_at=time.time(), heartbeat_secs=heartbeat_secs)
    settings = ServerConfig(listen=f"127.0.0.1:{port}", token=token)
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            lambda task_status: serve_websocket(
                settings,
                EchoSink(),
                http_routes=endpoints.http_routes(),
                ws_routes=endpoints.ws_routes(),
                task_status=task_status,
            )
        )
        endpoints.server_snapshot = server.snapshot
        yield server
        nursery.cancel_scope.cancel()


def base_url(server: WebSocketServer) -> str:
    """What the CLI passes to the dashboard: ``ws://HOST:PORT``, no path."""
    return f"ws://127.0.0.1:{server.port}"


async def http_get(port: int, path: str, token: str | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of one plain ``GET``, as curl or Prometheus would send it."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")

    def get() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.headers["Content-Type"], refused.read()

    return await trio.to_thread.run_sync(get)


async def get_json(port: int, path: str, token: str | None = None) -> dict[str, Any]:
    status, _, body = await http_get(port, path, token)
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


async def started(handle: TurnHandle) -> None:
    """Until the agent has started working on the turn."""
    while not handle.transcript.started:
        await handle.wait_changed(handle.transcript.version)
