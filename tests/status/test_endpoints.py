"""/status, /healthz and /metrics served by the real server from a real pool of fake agents."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionRejected, open_websocket_url

from broker.config import BrokerConfig
from broker.frontends.wire import encode_event
from broker.ops.status import METRICS_CONTENT_TYPE, STATUS_SCHEMA, StatusEndpoints
from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.testing.fake_gateway import make_event
from tests.status import prometheus
from tests.status.conftest import base_url, get_json, http_get, started, status_server

TOKEN = "status-t0ken"


async def next_doc(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    doc: dict[str, Any] = json.loads(message)
    assert doc["schema"] == STATUS_SCHEMA
    return doc


def states(doc: dict[str, Any]) -> dict[str, str]:
    return {s["thread_key"]: s["state"] for s in doc["sessions"]}


async def test_status_answers_within_a_second_while_every_session_is_busy(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"max_sessions": 2})
    with trio.fail_after(60):
        async with open_pool(config) as pool, status_server(pool) as server:
            for key in ("cli:A", "cli:B"):
                await started(pool.submit(key, Prompt("@silent-tool 60")))
            with trio.fail_after(1):
                doc = await get_json(server.port, "/status")
            assert states(doc) == {"cli:A": "busy", "cli:B": "busy"}
            assert doc["pool"]["active"] == doc["pool"]["max_sessions"] == 2
            busy = doc["sessions"][0]
            assert busy["pid"] > 0 and busy["turn_elapsed_secs"] >= 0
            assert 0 < busy["turn_deadline_in_secs"] <= config.timeouts.turn_hard_secs
            with trio.fail_after(1):
                async with open_websocket_url(base_url(server) + "/status") as ws:
                    assert states(await next_doc(ws)) == {"cli:A": "busy", "cli:B": "busy"}


async def test_status_feed_pushes_a_document_when_a_session_changes(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config()
    with trio.fail_after(30):
        async with (
            open_pool(config) as pool,
            status_server(pool, heartbeat_secs=600) as server,
            open_websocket_url(base_url(server) + "/status") as ws,
        ):
            first = await next_doc(ws)
            assert first["sessions"] == []
            pool.submit("cli:new", Prompt("@reply hi"))
            seen = []  # with a 600 s heartbeat, every document here is a change
            while (doc := await next_doc(ws))["counters"]["turns_completed"] == 0:
                seen.append(states(doc).get("cli:new"))
            assert "starting" in seen or "busy" in seen
            assert states(doc) == {"cli:new": "idle"}
            assert doc["pool"]["version"] > first["pool"]["version"]
            assert [e["kind"] for e in doc["recent"]] == ["started"]


async def test_status_feed_sends_heartbeats_when_nothing_changes_and_ignores_client_messages(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(20):
        async with (
            open_pool(make_config()) as pool,
            status_server(pool, heartbeat_secs=0.5) as server,
            open_websocket_url(base_url(server) + "/status") as ws,
        ):
            await ws.send_message("what a client says is ignored")
            first, second, third = [await next_doc(ws) for _ in range(3)]
    assert first["pool"]["version"] == second["pool"]["version"] == third["pool"]["version"]
    assert third["generated_at"] - first["generated_at"] >= 0.9


async def test_status_feed_sends_at_most_ten_documents_a_second_under_a_flood_of_changes(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"queue_depth": 2})
    flood_secs = 2.0
    with trio.fail_after(60):
        async with (
            open_pool(config) as pool,
            status_server(pool, heartbeat_secs=600) as server,
        ):
            await started(pool.submit("cli:A", Prompt("@silent-tool 60")))
            async with open_websocket_url(base_url(server) + "/status") as ws:
                await next_doc(ws)
                docs: list[dict[str, Any]] = []
                changes = 0
                begin = trio.current_time()

                last_version: int | None = None
                caught_up = trio.Event()

                def check() -> None:
                    if last_version is None or not docs:
                        return
                    if docs[-1]["pool"]["version"] >= last_version:
                        caught_up.set()

                async def receive() -> None:
                    while True:
                        docs.append(await next_doc(ws))
                        check()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    while trio.current_time() < begin + flood_secs:
                        pool.submit("cli:A", Prompt("more"))  # queued, then refused busy
                        changes += 1
                        await trio.lowlevel.checkpoint()
                    last_version = pool.version
                    check()
                    await caught_up.wait()  # the last change still arrives
                    nursery.cancel_scope.cancel()
                elapsed = trio.current_time() - begin
    assert changes > 200, "the flood was not a flood"
    assert 5 <= len(docs) <= 10 * elapsed + 1
    stamps = [doc["generated_at"] for doc in docs]
    assert min(b - a for a, b in itertools.pairwise(stamps)) >= 0.09
    assert docs[-1]["counters"]["refused_busy"] == changes - 2


async def test_status_refuses_a_missing_or_wrong_token_and_healthz_needs_none(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with (
            open_pool(make_config()) as pool,
            status_server(pool, token=TOKEN) as server,
        ):
            url = base_url(server) + "/status"
            for presented, status in ((None, 401), ("wrong", 403)):
                query = "" if presented is None else f"?token={presented}"
                with pytest.raises(ConnectionRejected) as caught:
                    async with open_websocket_url(url + query):
                        pass
                assert caught.value.status_code == status
                for path in ("/status", "/metrics"):
                    assert (await http_get(server.port, path, presented))[0] == status
            async with open_websocket_url(f"{url}?token={TOKEN}") as ws:
                assert (await next_doc(ws))["broker"]["closing"] is False
            assert (await get_json(server.port, "/status", TOKEN))["schema"] == STATUS_SCHEMA
            assert (await http_get(server.port, "/metrics", TOKEN))[0] == 200
            assert await http_get(server.port, "/healthz") == (200, "text/plain", b"ok\n")


async def test_healthz_turns_503_once_the_pool_is_closing(
    make_config: Callable[..., BrokerConfig],
) -> None:
    # an agent that ignores session/cancel keeps the shutdown going for the cancel grace
    config = make_config(timeouts={"cancel_grace_secs": 5})
    answers: list[tuple[int, str, bytes]] = []
    with trio.fail_after(40):
        async with (
            trio.open_nursery() as outer,
            open_pool(config) as pool,
            status_server(pool) as server,
        ):
            await started(pool.submit("cli:A", Prompt("@hang hard")))
            answers.append(await http_get(server.port, "/healthz"))
            version = pool.version
            outer.start_soon(pool.aclose)
            await pool.wait_changed(version)
            assert pool.snapshot().closing
            answers.append(await http_get(server.port, "/healthz"))
            await trio.sleep_forever()  # the pool's close ends this block
    assert answers == [(200, "text/plain", b"ok\n"), (503, "text/plain", b"closing\n")]


async def test_healthz_and_the_document_say_closing_once_the_service_begins_to_stop(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(20):
        async with open_pool(make_config()) as pool:
            endpoints = StatusEndpoints(pool, started_at=time.time())
            async with status_server(pool, endpoints=endpoints) as server:
                assert (await http_get(server.port, "/healthz"))[0] == 200
                endpoints.closing = True  # what the service does before closing the pool
                assert await http_get(server.port, "/healthz") == (503, "text/plain", b"closing\n")
                assert (await get_json(server.port, "/status"))["broker"]["closing"] is True


async def test_metrics_describe_the_live_pool_and_front_end_clients(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(40):
        async with open_pool(make_config()) as pool, status_server(pool) as server:
            assert (await pool.submit("cli:done", Prompt("@reply ok")).result()).ok
            await started(pool.submit("cli:busy", Prompt("@silent-tool 60")))
            async with open_websocket_url(server.url) as client:
                await client.send_message(encode_event(make_event("hello")))
                assert "echo: hello" in str(await client.get_message())
                status, content_type, body = await http_get(server.port, "/metrics")
                doc = await get_json(server.port, "/status")
    assert (status, content_type) == (200, METRICS_CONTENT_TYPE)
    families = prometheus.parse(body.decode())
    sessions = families["agent_broker_sessions"]
    assert (sessions.value(state="busy"), sessions.value(state="idle")) == (1, 1)
    assert sessions.value(state="suspended") == 0
    assert families["agent_broker_turns_total"].value(outcome="completed") == 1
    duration = families["agent_broker_turn_duration_seconds"]
    assert duration.value("agent_broker_turn_duration_seconds_count") == 1
    assert families["agent_broker_spawns_total"].value() == 2
    assert families["agent_broker_clients"].value() == 1
    assert families["agent_broker_events_received_total"].value(frontend="server") == 1
    assert doc["frontends"]["server"]["clients"] == ["ws-1"]
