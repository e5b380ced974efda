"""An agent's environment holds none of the broker's secrets.

The environment is read where the kernel keeps it, /proc/<agent pid>/environ,
of a real agent process started by the real pool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.testing.fake_gateway import open_fake_gateway
from broker.testing.harness import fake_agent_config, free_port, http_get
from tests.security.clients import chat_with_token
from tests.service.broker_process import broker_process, grandchild_pid, write_config

SERVER_TOKEN = "srv-4c1f9e2b7a0d"
GATEWAY_TOKEN = "gw-93ab7f1e0c55"


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    assert SERVER_TOKEN.encode() not in raw and GATEWAY_TOKEN.encode() not in raw
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if entry)
    return {name.decode(): value.decode() for name, value in pairs}


async def test_agent_environment_holds_only_the_base_and_configured_variables_never_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_SERVER_TOKEN", SERVER_TOKEN)
    monkeypatch.setenv("SECRET_GATEWAY_TOKEN", GATEWAY_TOKEN)
    monkeypatch.setenv("ALIAS_OF_TOKEN", SERVER_TOKEN)  # the token again, under another name
    monkeypatch.setenv("WRAPPED_TOKEN", f"Bearer {GATEWAY_TOKEN}")
    monkeypatch.setenv("HARMLESS", "fine")
    monkeypatch.setenv("NOT_LISTED", "never passed")
    config = fake_agent_config(
        tmp_path,
        server={"token": "${SECRET_SERVER_TOKEN}"},
        gateway={"token": "${SECRET_GATEWAY_TOKEN}"},
        agent={
            "env": {"CONFIGURED": "yes", "EMBEDS_TOKEN": "x-${SECRET_GATEWAY_TOKEN}-y"},
            "inherit_env": ["ALIAS_OF_TOKEN", "WRAPPED_TOKEN", "HARMLESS", "ABSENT_NAME"],
        },
    )
    assert config.server.token == SERVER_TOKEN and config.gateway.token == GATEWAY_TOKEN

    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await pool.submit("sec:env", Prompt("@grandchild\n@reply up")).result()
            assert end.ok, end
            snapshot = pool.session_snapshot("sec:env")
            assert snapshot is not None and snapshot.pid is not None
            agent_env = proc_environ(snapshot.pid)
            cmdline = Path(f"/proc/{snapshot.pid}/cmdline").read_bytes()
            grandchild = int(end.text.rsplit("pid ", 1)[1].rstrip("."))
            grandchild_env = proc_environ(grandchild)

    base = {
        name: os.environ[name] for name in ("HOME", "PATH", "USER", "LANG") if name in os.environ
    }
    assert agent_env == {**base, "CONFIGURED": "yes", "HARMLESS": "fine"}
    assert grandchild_env == agent_env
    assert SERVER_TOKEN.encode() not in cmdline and GATEWAY_TOKEN.encode() not in cmdline


async def test_a_running_brokers_agents_get_no_token_though_its_environment_has_them(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with open_fake_gateway(token=GATEWAY_TOKEN) as gateway:
        config = write_config(
            tmp_path,
            port,
            server={"token": SERVER_TOKEN},
            gateway={"url": gateway.url, "token": GATEWAY_TOKEN},
            agent={"env": {"CONFIGURED": "yes"}, "inherit_env": ["ALIAS_OF_TOKEN", "HARMLESS"]},
        )
        extra = {"ALIAS_OF_TOKEN": f"x{GATEWAY_TOKEN}x", "HARMLESS": "fine"}
        async with (
            broker_process(config, env=extra) as broker,
            chat_with_token(port, SERVER_TOKEN) as client,
        ):
            with trio.fail_after(60):
                await gateway.wait_connected()
                text = await client.ask("@grandchild\n@reply up", "t1", "up")
                code, body = await http_get(port, f"/status?token={SERVER_TOKEN}")
                assert code == 200
                pids = [s["pid"] for s in json.loads(body)["sessions"] if s["pid"]]
                assert len(pids) == 1
                agent_env = proc_environ(pids[0])
                grandchild_env = proc_environ(grandchild_pid(text))
            broker_env = Path(f"/proc/{broker.pid}/environ").read_bytes()
            assert GATEWAY_TOKEN.encode() in broker_env  # the broker did have it...
            assert GATEWAY_TOKEN not in broker.log() and SERVER_TOKEN not in broker.log()

    base = {
        name: os.environ[name] for name in ("HOME", "PATH", "USER", "LANG") if name in os.environ
    }
    assert agent_env == {**base, "CONFIGURED": "yes", "HARMLESS": "fine"}  # ...its agents do not
    assert grandchild_env == agent_env


async def test_slack_tokens_never_reach_an_agent_even_when_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_token, bot_token = "xapp-1-A0SEC-77-3f9c2a", "xoxb-5150-sec-9d1e77"
    monkeypatch.setenv("SLACK_APP_TOKEN", app_token)
    monkeypatch.setenv("SLACK_BOT_TOKEN", bot_token)
    config = fake_agent_config(
        tmp_path,
        slack={"app_token": "${SLACK_APP_TOKEN}", "bot_token": "${SLACK_BOT_TOKEN}"},
        agent={"inherit_env": ["SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"]},
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await pool.submit("sec:slack", Prompt("@reply up")).result()
            assert end.ok, end
            snapshot = pool.session_snapshot("sec:slack")
            assert snapshot is not None and snapshot.pid is not None
            raw = Path(f"/proc/{snapshot.pid}/environ").read_bytes()
    assert app_token.encode() not in raw and bot_token.encode() not in raw
