"""The WebSocket server on a real loopback socket, with an echo sink standing in for the router."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_websocket
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wsproto.events import TextMessage

from broker.config import ServerConfig
from broker.frontends.base import FrontendError
from broker.frontends.http import HttpRequest, HttpResponse
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.frontends.wire import (
    ERROR_SCHEMA,
    GatewayResponse,
    encode_event,
    encode_response,
)
from broker.testing.fake_gateway import make_event
from broker.testing.harness import http_get
from tests.frontends.echo import EchoSink

TOKEN = "s3cret"


@asynccontextmanager
async def running(
    sink: EchoSink, *, token: str = "", max_frame_bytes: int = 1048576, **kwargs: Any
) -> AsyncIterator[WebSocketServer]:
    config = ServerConfig(listen="127.0.0.1:0", token=token, max_frame_bytes=max_frame_bytes)
    async with trio.open_nursery() as nursery:
        server: WebSocketServer = await nursery.start(
            lambda task_status: serve_websocket(config, sink, task_status=task_status, **kwargs)
        )
        yield server
        nursery.cancel_scope.cancel()


async def receive_json(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    frame: dict[str, Any] = json.loads(message)
    return frame


async def test_missing_or_wrong_token_is_refused_at_the_handshake() -> None:
    with trio.fail_after(10):
        async with running(EchoSink(), token=TOKEN) as server:
            cases = [
                (server.url, [], 401),
                (server.url + "?token=wrong", [], 403),
                (server.url, [(b"Authorization", b"Bearer wrong")], 403),
            ]
            for url, headers, status in cases:
                with pytest.raises(ConnectionRejected) as caught:
                    async with open_websocket_url(url, extra_headers=headers):
                        pass
                assert caught.value.status_code == status
            for url, headers in [
                (server.url + f"?token={TOKEN}", []),
                (server.url, [(b"Authorization", f"Bearer {TOKEN}".encode())]),
            ]:
                async with open_websocket_url(url, extra_headers=headers) as ws:
                    await ws.send_message(encode_event(make_event("hi")))
                    assert (await receive_json(ws))["content"]["text"] == "echo: hi"


async def test_listening_beyond_loopback_without_token_is_refused_at_start() -> None:
    config = ServerConfig(listen="0.0.0.0:0", token="")
    with trio.fail_after(5), pytest.raises(FrontendError, match=r"set a token"):
        await serve_websocket(config, EchoSink())


async def test_frame_over_the_limit_closes_with_1009() -> None:
    with trio.fail_after(10):
        async with running(EchoSink(), max_frame_bytes=1024) as server:
            # 2000 characters, and 600 two-byte characters (1200 bytes in 600 characters)
            for oversize in ("x" * 2000, "é" * 600):
                async with open_websocket_url(server.url) as ws:
                    await ws.send_message(oversize)
                    with pytest.raises(ConnectionClosed) as caught:
                        await ws.get_message()
                    assert caught.value.reason is not None
                    assert caught.value.reason.code == 1009


async def test_bad_frames_get_an_error_frame_and_the_connection_stays_usable() -> None:
    with trio.fail_after(10):
        async with running(EchoSink()) as server, open_websocket_url(server.url) as ws:
            await ws.send_message("{not json")
            error = await receive_json(ws)
            assert error["schema"] == ERROR_SCHEMA and error["error"].startswith("not JSON: ")
            frame = json.loads(encode_event(make_event(event_id="evt_bad")))
            del frame["sender"]["display_name"]
            await ws.send_message(json.dumps(frame))
            assert await receive_json(ws) == {
                "schema": ERROR_SCHEMA,
                "error": "missing field sender.display_name",
                "event_id": "evt_bad",
            }
            await ws.send_message(encode_event(make_event("still here")))
            assert (await receive_json(ws))["content"]["text"] == "echo: still here"


async def test_replies_go_to_the_connection_the_event_came_from() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with (
            running(sink) as server,
            open_websocket_url(server.url) as first,
            open_websocket_url(server.url) as second,
        ):
            a, b = make_event("from first"), make_event("from second")
            await first.send_message(encode_event(a))
            await second.send_message(encode_event(b))
            assert (await receive_json(second))["reply_to"] == b.event_id
            assert (await receive_json(first))["reply_to"] == a.event_id
            assert sink.channels[a.event_id][0] == sink.channels[b.event_id][0] == "server"
            assert sink.channels[a.event_id][1] != sink.channels[b.event_id][1]
            # Nothing else was queued for either: the next frame each gets is its own echo.
            for ws, name in ((first, "again 1"), (second, "again 2")):
                await ws.send_message(encode_event(make_event(name)))
                assert (await receive_json(ws))["content"]["text"] == f"echo: {name}"


async def test_a_slow_event_does_not_delay_the_next_event_on_the_same_connection() -> None:
    sink = EchoSink()
    with trio.fail_after(20):
        async with running(sink) as server, open_websocket_url(server.url) as ws:
            slow, fast = make_event("slow"), make_event("fast")
            await ws.send_message(encode_event(slow))
            await ws.send_message(encode_event(fast))
            with trio.fail_after(5):  # the slow one would wait forever
                assert (await receive_json(ws))["reply_to"] == fast.event_id
            sink.release.set()
            assert (await receive_json(ws))["reply_to"] == slow.event_id


async def test_reply_finished_after_disconnect_reaches_a_client_that_claims_its_thread() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with running(sink) as server:
            slow = make_event("slow", platform="discord")
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(encode_event(slow))
                await receive_json_after_echo(ws)
                await settled(server)
            await wait_until(lambda: not server.snapshot().connections)
            sink.release.set()
            await sink.wait_replied(slow.event_id)
            assert server.snapshot().outbox_waiting == 1
            # A client for another platform does not take it; one for its thread does.
            async with open_websocket_url(server.url + "?platforms=slack") as other:
                await other.send_message(encode_event(make_event("x", platform="slack")))
                assert (await receive_json(other))["content"]["text"] == "echo: x"
                await settled(server)
            async with open_websocket_url(server.url + "?threads=discord:1001") as ws:
                frame = await receive_json(ws)
                assert frame["reply_to"] == slow.event_id
                assert frame["content"]["text"] == "echo: slow"
                await settled(server)
            assert server.snapshot().outbox_waiting == 0


async def test_waiting_reply_goes_only_to_a_client_of_its_thread_and_once() -> None:
    """Client A sends in thread X and leaves before the reply; client B (same
    platform) sends in thread Y and never sees X's reply; A comes back and
    sends in X: it gets the waiting reply, once."""
    sink = EchoSink()
    with trio.fail_after(15):
        async with running(sink) as server:
            x = make_event("slow", channel_id="X")
            async with open_websocket_url(server.url) as a:
                await a.send_message(encode_event(x))
                await wait_until(lambda: x.event_id in sink.channels)
            await wait_until(lambda: not server.snapshot().connections)
            async with open_websocket_url(server.url) as b:
                y = make_event("in y", channel_id="Y")
                await b.send_message(encode_event(y))
                assert (await receive_json(b))["reply_to"] == y.event_id
                await settled(server)
                sink.release.set()
                await sink.wait_replied(x.event_id)
                # B asks again in Y: its next frame is its own echo, not X's reply.
                again = make_event("again", channel_id="Y")
                await b.send_message(encode_event(again))
                assert (await receive_json(b))["reply_to"] == again.event_id
                assert server.snapshot().outbox_waiting == 1
                await settled(server)
            async with open_websocket_url(server.url) as a:
                back = make_event("back", channel_id="X")
                await a.send_message(encode_event(back))
                frames = [await receive_json(a), await receive_json(a)]
                assert sorted(f["reply_to"] for f in frames) == sorted([x.event_id, back.event_id])
                later = make_event("later", channel_id="X")
                await a.send_message(encode_event(later))
                assert (await receive_json(a))["reply_to"] == later.event_id
                await settled(server)
            assert server.snapshot().outbox_waiting == 0


async def test_reply_finished_after_disconnect_goes_straight_to_a_live_client_of_its_platform() -> (
    None
):
    sink = EchoSink()
    with trio.fail_after(10):
        async with (
            running(sink) as server,
            open_websocket_url(server.url + "?platforms=telegram") as live,
        ):
            slow = make_event("slow")
            async with open_websocket_url(server.url) as gone:
                await gone.send_message(encode_event(slow))
                await wait_until(lambda: slow.event_id in sink.channels)
            await wait_until(lambda: len(server.snapshot().connections) == 1)
            sink.release.set()
            frame = await receive_json(live)
            assert frame["reply_to"] == slow.event_id
            await settled(server)
            assert server.snapshot().outbox_waiting == 0


async def test_a_reply_written_as_its_client_closes_is_delivered_again_on_its_next_connection() -> (
    None
):
    """The reply's write completes on an open connection, but the client
    closes before reading it (a closing WebSocket drops what it has not read).
    The reply goes back to the outbox and reaches the client's next
    connection in that thread, before the new event's reply, once."""
    sink = EchoSink()
    with trio.fail_after(15):
        async with running(sink) as server:
            slow = make_event("slow", channel_id="Z")
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(encode_event(slow))
                await wait_until(lambda: slow.event_id in sink.channels)
                sink.release.set()
                await sink.wait_replied(slow.event_id)  # written; the client closes unread
            await wait_until(lambda: server.snapshot().outbox_waiting == 1)
            async with open_websocket_url(server.url) as ws:
                back = make_event("back", channel_id="Z")
                await ws.send_message(encode_event(back))
                first, second = await receive_json(ws), await receive_json(ws)
                assert (first["reply_to"], second["reply_to"]) == (slow.event_id, back.event_id)
                await settled(server)
            assert server.snapshot().outbox_waiting == 0


async def receive_json_after_echo(ws: trio_websocket.WebSocketConnection) -> None:
    """Make sure the server has read the previous frame: a round trip."""
    probe = make_event("probe", platform="discord")
    await ws.send_message(encode_event(probe))
    assert (await receive_json(ws))["reply_to"] == probe.event_id


async def settled(server: WebSocketServer) -> None:
    """Wait until every reply written has been taken (plain v1: its connection
    stayed open a moment after the write), so closing now loses nothing."""
    await wait_until(lambda: server.snapshot().untaken == 0)


async def wait_until(condition: Any) -> None:
    """Poll a server-side condition that has no event to wait on (bounded by the caller)."""
    while not condition():
        await trio.sleep(0.01)


async def test_request_waits_for_the_matching_response_then_edits() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with running(sink) as server, open_websocket_url(server.url) as ws:
            await ws.send_message(encode_event(make_event("ask")))
            first = await receive_json(ws)
            assert first["request_id"].startswith("req_")
            await ws.send_message(
                encode_response(GatewayResponse(first["request_id"], True, message_id="m-9"))
            )
            edit = await receive_json(ws)
            assert edit["command"] == "edit_message" and edit["reply_to"] == "m-9"
            assert sink.responses == [GatewayResponse(first["request_id"], True, None, "m-9")]


async def test_request_without_answer_gives_none_after_the_timeout() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with running(sink) as server, open_websocket_url(server.url) as ws:
            ask = make_event("ask")
            await ws.send_message(encode_event(ask))
            assert "request_id" in await receive_json(ws)  # never answered
            fallback = await receive_json(ws)
            assert fallback["reply_to"] == ask.event_id and "command" not in fallback
            assert sink.responses == [None]


async def test_a_failing_sink_still_answers_the_event() -> None:
    with trio.fail_after(10):
        async with running(EchoSink()) as server, open_websocket_url(server.url) as ws:
            boom = make_event("boom")
            await ws.send_message(encode_event(boom))
            frame = await receive_json(ws)
            assert frame["reply_to"] == boom.event_id and "RuntimeError" in frame["content"]["text"]


async def test_plain_http_routes_share_the_port_and_respect_the_token() -> None:
    async def status(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, b'{"ok":true}')

    routes = {"/healthz": status, "/status": status}
    with trio.fail_after(10):
        async with running(EchoSink(), token=TOKEN, http_routes=routes) as server:
            assert await http_get(server.port, "/healthz") == (200, b'{"ok":true}')
            assert (await http_get(server.port, "/status"))[0] == 401
            assert (await http_get(server.port, "/status?token=nope"))[0] == 403
            auth = f"Authorization: Bearer {TOKEN}\r\n"
            assert await http_get(server.port, "/status", auth) == (200, b'{"ok":true}')
            assert (await http_get(server.port, "/ws"))[0] == 426
            assert (await http_get(server.port, "/nothing"))[0] == 404


async def test_peer_that_stops_answering_pings_is_dropped() -> None:
    import wsproto
    from wsproto.events import AcceptConnection, Request

    with trio.fail_after(10):
        async with running(EchoSink(), ping_interval=0.2, pong_timeout=0.5) as server:
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await stream.send_all(client.send(Request(host="127.0.0.1", target="/ws")))
            while not any(isinstance(e, AcceptConnection) for e in client.events()):
                client.receive_data(await stream.receive_some(4096))
            await wait_until(lambda: len(server.snapshot().connections) == 1)
            # Never answer the pings: the server must close the TCP stream.
            while await stream.receive_some(4096):
                pass
            await stream.aclose()
            await wait_until(lambda: not server.snapshot().connections)


async def test_broken_handshakes_end_their_connection_only() -> None:
    with trio.fail_after(15):
        async with running(EchoSink()) as server:
            garbage = [
                b"GET /ws HTTP/1.1\r\nHost: x\r\n",  # head never finished, then closed
                b"NOT HTTP AT ALL\r\n\r\n",
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",  # no key
                (
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade"
                    b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13"
                    b"\r\n\r\n"
                ),  # valid, then vanishes before reading the answer
            ]
            for data in garbage:
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                await stream.send_all(data)
                await stream.aclose()
            bad = await trio.open_tcp_stream("127.0.0.1", server.port)
            await bad.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            assert (await bad.receive_some(4096)).startswith(b"HTTP/1.1 400 ")
            await bad.aclose()
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(encode_event(make_event("fine")))
                assert (await receive_json(ws))["content"]["text"] == "echo: fine"


async def test_a_client_closed_mid_frame_loses_nothing_and_its_reply_waits_for_its_thread() -> None:
    sink = EchoSink()
    with trio.fail_after(15):
        async with running(sink) as server:
            slow = make_event("slow", channel_id="M")
            cut = make_event("cut in two", channel_id="M")
            async with open_websocket_url(server.url) as ws:
                await ws.send_message(encode_event(slow))
                await wait_until(lambda: slow.event_id in sink.channels)
                data = ws._wsproto.send(TextMessage(data=encode_event(cut)))
                await ws._stream.send_all(data[: len(data) // 2])  # half a frame, then gone
                await ws._stream.aclose()
            await wait_until(lambda: not server.snapshot().connections)
            sink.release.set()
            await sink.wait_replied(slow.event_id)
            assert cut.event_id not in sink.channels  # half a frame is no event
            async with open_websocket_url(server.url) as ws:
                back = make_event("back", channel_id="M")
                await ws.send_message(encode_event(back))
                first, second = await receive_json(ws), await receive_json(ws)
                assert (first["reply_to"], second["reply_to"]) == (slow.event_id, back.event_id)
                await settled(server)
            assert server.snapshot().outbox_waiting == 0
