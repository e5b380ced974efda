"""One bad byte reaches no further than its own thread, against a real broker process.

Lone UTF-16 surrogates (JSON escapes such as ``\\ud800``) in a client's
frame or in an agent's output, JSON nested 20,000 levels deep and a response
id ``"²"``: each gets a clear error or is made valid text where it came in,
and the broker goes on serving everyone, itself included.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from broker.frontends.wire import ERROR_SCHEMA, encode_event, parse_reply
from broker.testing.fake_gateway import make_event
from broker.testing.harness import free_port, http_get
from tests.security.clients import RAW_AGENT, stop
from tests.service.broker_process import broker_process, chat, write_config

LONE = "\\ud800"  # as written in the JSON text of a frame


def event_json(text: str, channel: str, field: str = "", raw: str = "") -> str:
    """An event frame as JSON text whose ``field`` (a dotted path) is the raw
    JSON ``raw`` (``'"c\\ud800"'``), so the escape reaches the broker as written."""
    frame: dict[str, Any] = json.loads(encode_event(make_event(text, channel_id=channel)))
    if field:
        *parents, last = field.split(".")
        holder = frame
        for key in parents:
            holder = holder[key]
        holder[last] = "@@"
    return json.dumps(frame).replace('"@@"', raw)


@asynccontextmanager
async def raw_client(
    tmp_path: Path,
) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, int]]:
    """A broker process and a plain WebSocket on its /ws; the broker must then stop cleanly."""
    port = free_port()
    async with broker_process(write_config(tmp_path, port)) as broker:
        with trio.fail_after(60):
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
                yield ws, port
        await stop(broker)


async def error_frame(ws: trio_websocket.WebSocketConnection, text: str) -> dict[str, Any]:
    """Send ``text``; the next frame must be the broker's error frame."""
    await ws.send_message(text)
    frame: dict[str, Any] = json.loads(await ws.get_message())
    assert frame["schema"] == ERROR_SCHEMA, frame
    return frame


async def store_status(port: int) -> dict[str, Any]:
    code, body = await http_get(port, "/status")
    assert code == 200
    store: dict[str, Any] = json.loads(body)["store"]
    return store


async def test_lone_surrogates_in_ids_are_refused_in_text_replaced_and_the_broker_serves_on(
    tmp_path: Path,
) -> None:
    async with raw_client(tmp_path) as (ws, port):
        for field in ("channel.id", "channel.thread_id", "platform", "event_id"):
            error = await error_frame(ws, event_json("hello", "c1", field, f'"x{LONE}"'))
            assert f"field {field} is not valid text" in error["error"], error
            assert LONE not in json.dumps(error)
        await ws.send_message(event_json("", "c1", "content.text", f'"hi {LONE} there"'))
        reply = parse_reply(await ws.get_message())
        assert "hi \ufffd there" in reply.text, reply
        async with chat(port) as client:
            assert "You said" in await client.ask("still there?", "c2")
        assert (await store_status(port))["skipped"] == 0


async def test_frames_nested_twenty_thousand_deep_get_an_error_frame_on_a_live_connection(
    tmp_path: Path,
) -> None:
    async with raw_client(tmp_path) as (ws, _):
        error = await error_frame(ws, '{"schema":' + "[" * 20_000 + "]" * 20_000 + "}")
        assert "nested too deeply" in error["error"]
        await ws.send_message(encode_event(make_event("on the same connection", channel_id="c1")))
        assert "You said" in parse_reply(await ws.get_message()).text


async def test_an_agent_writing_lone_surrogates_and_a_bad_id_disturbs_no_one(
    tmp_path: Path,
) -> None:
    """Its session id and a chunk that arrives while its client is away hold
    lone surrogates, and it answers with the id "²": the reply still reaches
    the outbox and the reconnected client, the store writes everything."""
    port = free_port()
    agent = {"command": sys.executable, "args": [str(RAW_AGENT), "--surrogate-session"]}
    config = write_config(tmp_path, port, agent=agent)
    async with broker_process(config) as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                assert "pong: after a bad id" in await client.ask("bad-id", "a", "pong")
                away = await client.send("surrogate 1", "a")
            async with chat(port, "?threads=telegram:a") as client:  # takes over thread a
                assert "before \ufffd after" in await client.reply(away)
                assert "pong" in await client.ask("and again", "b", "pong")
            store = await store_status(port)
            assert store["skipped"] == 0 and not store["retrying"], store
        await stop(broker)
    assert "dropping response to unknown id '²'" in broker.log()
