"""The service in-process: reload decisions, the durable outbox, start failures, embedding."""

from __future__ import annotations

import functools
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from broker.config import BrokerConfig, load_config
from broker.frontends.base import EVERYTHING, Claim, Parcel
from broker.frontends.wire import OutboundReply, ReplyChannelRef
from broker.ops.service import (
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    Broker,
    StoreOutbox,
    plan_reload,
    run,
    serve,
)
from broker.sessions.pool import Pool, PoolSnapshot
from broker.store import open_store
from broker.testing.fake_gateway import open_fake_gateway
from broker.testing.fake_slack import APP_TOKEN, BOT_TOKEN, open_fake_slack
from broker.testing.harness import fake_agent_config, free_port
from tests.service.broker_process import alive, chat, write_config


async def until(pool: Pool, predicate: Callable[[PoolSnapshot], bool]) -> None:
    while not predicate(pool.snapshot()):
        await pool.wait_changed(pool.version)


def reply(text: str, platform: str = "telegram") -> OutboundReply:
    return OutboundReply("evt_1", platform, ReplyChannelRef("room"), text)


def test_reload_applies_router_pool_and_log_but_keeps_listen_gateway_and_state() -> None:
    old = BrokerConfig()
    new = attrs.evolve(
        old,
        server=attrs.evolve(old.server, listen="127.0.0.1:9999", token="t2"),
        gateway=attrs.evolve(old.gateway, url="ws://gw/ws", streaming=True),
        state=attrs.evolve(old.state, path="elsewhere.sqlite3"),
        router=attrs.evolve(old.router, allowed_channels=("a",)),
        pool=attrs.evolve(old.pool, max_sessions=3),
        log=attrs.evolve(old.log, level="debug"),
    )
    plan = plan_reload(old, new)
    assert plan.config.router.allowed_channels == ("a",)
    assert plan.config.pool.max_sessions == 3
    assert plan.config.log.level == "debug"
    assert plan.config.server.token == "t2"
    assert plan.config.gateway.streaming is True
    assert plan.config.server.listen == old.server.listen
    assert plan.config.gateway.url == "" and plan.config.state == old.state
    assert plan.kept == (
        "[server] listen stays 127.0.0.1:8765 until a restart",
        "[gateway] url and token take effect at the next restart",
        "[state] path stays state/broker.sqlite3 until a restart",
    )
    assert plan.changed == ("server", "gateway", "pool", "state", "log", "router")
    assert plan_reload(old, old) == plan_reload(old, old)
    assert plan_reload(old, old).kept == () and plan_reload(old, old).changed == ()


async def test_a_reply_leaves_the_store_only_once_a_connection_took_it(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with trio.fail_after(20):
        async with open_store(path) as store, trio.open_nursery() as nursery:
            outbox = StoreOutbox(store, "server")
            nursery.start_soon(outbox.keep)
            outbox.on_undeliverable(reply("one"))
            outbox.on_undeliverable(reply("two", platform="line"))
            outbox.on_undeliverable(reply("three"))
            outbox.on_undeliverable(reply("four"))
            taken = outbox.take(Claim(platforms=frozenset({"telegram"})))
            assert [p.reply.text for p in taken] == ["one", "three", "four"]
            outbox.delivered(taken[:2])  # "four" was handed out, but never taken
            outbox.close()
        async with open_store(path) as store:
            again = StoreOutbox(store, "server")
            assert await again.load() == 2
            assert [p.reply.text for p in again.take(EVERYTHING)] == ["two", "four"]
            assert store.outbox_rows == 2
            assert await StoreOutbox(store, "gateway").load() == 0


async def test_a_reply_put_back_goes_first_and_stays_in_the_store(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    with trio.fail_after(20):
        async with open_store(path) as store, trio.open_nursery() as nursery:
            outbox = StoreOutbox(store, "server")
            nursery.start_soon(outbox.keep)
            outbox.on_undeliverable(reply("waited"))
            taken = outbox.take(EVERYTHING)
            outbox.on_undeliverable(reply("newer"))
            outbox.put_back([*taken, Parcel(reply("sent straight"))])
            assert [p.reply.text for p in outbox.take(EVERYTHING)] == [
                "waited",
                "sent straight",
                "newer",
            ]
            outbox.close()
        async with open_store(path) as store:
            assert await StoreOutbox(store, "server").load() == 3


async def test_a_full_outbox_drops_its_oldest_reply_from_memory_and_store(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with open_store(tmp_path / "s.sqlite3") as store, trio.open_nursery() as nursery:
            outbox = StoreOutbox(store, "server", capacity=2)
            nursery.start_soon(outbox.keep)
            for text in ("old", "mid", "new"):
                outbox.on_undeliverable(reply(text))
            assert (len(outbox), outbox.dropped) == (2, 1)
            outbox.close()
        async with open_store(tmp_path / "s.sqlite3") as store:
            kept = StoreOutbox(store, "server")
            await kept.load()
            assert [p.reply.text for p in kept.take(EVERYTHING)] == ["mid", "new"]


def taken_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("listen", "expected"), [("0.0.0.0:0", EX_CONFIG), ("taken", EX_UNAVAILABLE)]
)
def test_a_front_end_that_cannot_start_is_one_log_line_and_an_exit_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, listen: str, expected: int
) -> None:
    with taken_port() as busy:
        if listen == "taken":
            listen = f"127.0.0.1:{busy.getsockname()[1]}"
        base = fake_agent_config(tmp_path)
        # built in code, as an embedding program may: the service checks it again
        config = attrs.evolve(base, server=attrs.evolve(base.server, listen=listen))
        assert run(config) == expected
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("cannot start: ")


async def test_a_reply_finished_while_the_client_is_away_is_delivered_after_a_restart(
    tmp_path: Path,
) -> None:
    config = fake_agent_config(tmp_path, server={"streaming": False})
    serve_once = functools.partial(serve, config, handle_signals=False)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(serve_once)
            assert broker.server is not None
            async with chat(broker.server.port) as client:
                event_id = await client.send("@delay 1\n@reply done while away", "away")
                await until(broker.pool, lambda p: p.count("busy") == 1)
            await broker.in_flight.wait_idle()
            assert len(broker.outboxes["server"]) == 1
            broker.stop()
        async with trio.open_nursery() as nursery:
            broker = await nursery.start(serve_once)
            assert broker.server is not None
            assert len(broker.outboxes["server"]) == 1
            async with chat(broker.server.port, "?threads=telegram:away") as client:
                assert "done while away" in await client.reply(event_id, "done while away")
            broker.stop()


async def test_an_embedded_broker_stops_with_exit_0_and_no_agent_left(tmp_path: Path) -> None:
    config = fake_agent_config(tmp_path, server={"streaming": False})
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            result: list[int] = []

            async def serve_and_keep(task_status: trio.TaskStatus[Broker]) -> None:
                result.append(await serve(config, handle_signals=False, task_status=task_status))

            broker: Broker = await nursery.start(serve_and_keep)
            assert broker.server is not None
            async with chat(broker.server.port) as client:
                await client.ask("hello", "one")
            (session,) = broker.pool.snapshot().sessions
            broker.stop()
        assert result == [EX_OK]
        assert session.pid is not None and not alive(session.pid)


async def test_the_gateway_client_is_started_and_answers_through_the_router(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_fake_gateway(token="gw-secret") as gateway, trio.open_nursery() as nursery:
            config = fake_agent_config(
                tmp_path,
                server={"enabled": False},
                gateway={"url": gateway.url, "token": "gw-secret"},
            )
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            assert broker.server is None and broker.gateway is not None
            await gateway.wait_connected()
            await broker.gateway.wait_connected()
            assert broker.status_line() == "0 sessions (0 busy), 0 suspended, gateway connected"
            event = await gateway.send_event(text="hello via the gateway")
            final = await gateway.wait_reply(
                lambda r: r.reply_to == event.event_id and "You said" in r.text
            )
            assert "hello via the gateway" in final.text
            broker.stop()
        gateway.assert_clean()


async def test_slack_is_started_beside_the_server_shown_in_status_and_answers(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with open_fake_slack() as fake, trio.open_nursery() as nursery:
            slack = {
                "enabled": True,
                "app_token": APP_TOKEN,
                "bot_token": BOT_TOKEN,
                "api_base_url": fake.api_url,
            }
            config = fake_agent_config(tmp_path, slack=slack)
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            assert broker.slack is not None and broker.server is not None
            await fake.wait_for(lambda: fake.open_sockets == 1)
            while broker.slack.state != "connected":
                await broker.slack.socket.wait_changed()
            assert broker.status_line().endswith(", 0 clients, slack connected")
            part = broker.status.document()["frontends"]["slack"]
            assert (part["state"], part["connections"], part["fatal"]) == ("connected", 1, "")
            mention = fake.user_message("hello via slack", mention=True)
            await fake.send_event(mention)
            await fake.wait_for(
                lambda: any("hello via slack" in m.text for m in fake.bot_messages("C0CHAN"))
            )
            document = json.dumps(broker.status.document())
            assert APP_TOKEN not in document and BOT_TOKEN not in document
            broker.stop()
        fake.assert_clean()


async def test_a_streamed_turn_cut_by_the_stop_gets_its_final_edit_before_the_server_closes(
    tmp_path: Path,
) -> None:
    # The final edit waits out the edit interval, well after the pool has closed.
    config = fake_agent_config(tmp_path, render={"edit_interval_ms": 2000})
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(
                functools.partial(serve, config, handle_signals=False)
            )
            assert broker.server is not None
            async with chat(broker.server.port) as client:
                event_id = await client.send("@say partial answer\n@silent-tool 60", "cut")
                await client.reply(event_id, "partial answer")
                broker.stop()
                final = await client.reply(event_id, "restarting")
        assert "partial answer" in final
        assert broker.in_flight.running == 0


async def test_reload_applies_the_file_keeps_the_listen_address_and_survives_a_bad_file(
    tmp_path: Path,
) -> None:
    port = free_port()
    path = write_config(tmp_path, port)
    config = load_config(path)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            broker: Broker = await nursery.start(
                functools.partial(serve, config, config_path=str(path), handle_signals=False)
            )
            text = path.read_text()
            path.write_text(
                text.replace(f"127.0.0.1:{port}", "127.0.0.1:1")
                .replace("max_sessions = 20", "max_sessions = 4")
                .replace("allowed_users = []", 'allowed_users = ["42"]')
                .replace('level = "info"', 'level = "debug"')
            )
            try:
                assert await broker.reload()
                assert root.level == logging.DEBUG
            finally:  # the reload installed the broker's handler in this process
                for handler in set(root.handlers) - set(handlers):
                    root.removeHandler(handler)
                root.setLevel(level)
            assert broker.pool.config.pool.max_sessions == 4
            assert broker.router.config.router.allowed_users == ("42",)
            assert broker.config.server.listen == f"127.0.0.1:{port}"

            path.write_text('[agent]\ncommand = "no-such-agent-xyz"\n')
            assert not await broker.reload()
            assert broker.pool.config.pool.max_sessions == 4
            assert broker.reloads == 1
            broker.stop()


async def test_a_reply_put_back_keeps_its_request_id_across_a_restart(tmp_path: Path) -> None:
    """A peer that acknowledges replies may have taken one whose acknowledgement
    was lost: sent again, even after a restart, it carries the same request id,
    so the peer can tell it has it already."""
    path = tmp_path / "state.sqlite3"
    with trio.fail_after(20):
        async with open_store(path) as store, trio.open_nursery() as nursery:
            outbox = StoreOutbox(store, "gateway")
            nursery.start_soon(outbox.keep)
            outbox.on_undeliverable(reply("acked once"))
            (parcel,) = outbox.take(EVERYTHING)
            parcel.request_id = "req_" + "a" * 32  # what the link sent it with
            outbox.put_back([parcel])
            outbox.close()
        async with open_store(path) as store:
            again = StoreOutbox(store, "gateway")
            assert await again.load() == 1 and store.outbox_rows == 1
            (kept,) = again.take(EVERYTHING)
            assert kept.request_id == "req_" + "a" * 32 and kept.reply.request_id is None
