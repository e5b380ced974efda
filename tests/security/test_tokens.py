"""The server's token: exposure without one is refused, and /ws and /status demand it.

Everything runs against a real ``python -m broker run`` process on loopback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio
import trio_websocket

from broker.testing.harness import free_port, http_get
from tests.security.clients import chat_with_token
from tests.service.broker_process import broker_process, write_config

TOKEN = "tok-5d1e8a7c93f2"
REFUSAL = "is reachable from other machines and [server] token is empty"


async def ws_status(port: int, target: str) -> int:
    """101 when the WebSocket handshake on ``target`` succeeds, else the refusal's status."""
    try:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}{target}"):
            return 101
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code


async def run_cli(*args: str) -> tuple[int, str]:
    done = await trio.run_process(
        [sys.executable, "-m", "broker", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_a_broker_listening_beyond_loopback_without_a_token_refuses_to_run(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, free_port(), server={"listen": f"0.0.0.0:{free_port()}"})
    with trio.fail_after(60):
        code, output = await run_cli("run", "--config", str(config))
    assert code == 78, output
    assert REFUSAL in output and "set a token" in output, output
    assert not (tmp_path / "state").exists()  # refused before it opened anything


async def test_check_config_refuses_a_listen_address_beyond_loopback_without_a_token(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, free_port(), server={"listen": f"0.0.0.0:{free_port()}"})
    with trio.fail_after(60):
        code, output = await run_cli("check-config", "--config", str(config))
    assert code == 78 and REFUSAL in output, output


async def test_a_missing_or_wrong_token_is_refused_on_ws_and_status(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, server={"token": TOKEN})
    async with broker_process(config) as broker:
        with trio.fail_after(60):
            assert await ws_status(port, "/ws") == 401
            assert await ws_status(port, "/ws?token=wrong") == 403
            assert await ws_status(port, f"/ws?token={TOKEN}x") == 403
            assert await ws_status(port, "/status") == 401
            assert await ws_status(port, "/status?token=wrong") == 403
            assert (await http_get(port, "/status"))[0] == 401
            assert (await http_get(port, "/status?token=wrong"))[0] == 403
            assert (await http_get(port, "/status", "Authorization: Bearer wrong\r\n"))[0] == 403
            assert (await http_get(port, "/metrics"))[0] == 401
            assert (await http_get(port, "/healthz"))[0] == 200  # the one public route

            code, body = await http_get(port, f"/status?token={TOKEN}")
            assert code == 200 and json.loads(body)
            code, metrics = await http_get(port, "/metrics", f"Authorization: Bearer {TOKEN}\r\n")
            assert code == 200
            assert await ws_status(port, f"/status?token={TOKEN}") == 101
            async with chat_with_token(port, TOKEN) as ok:
                assert "You said" in await ok.ask("hello", "t1")
            code, body = await http_get(port, f"/status?token={TOKEN}")
            assert TOKEN.encode() not in body + metrics
        assert TOKEN not in broker.log()
