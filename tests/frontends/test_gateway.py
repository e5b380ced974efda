"""The gateway client against the fake gateway on loopback, and its backoff in numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_websocket

from broker.config import GatewayConfig
from broker.frontends.base import EVERYTHING, FrontendError
from broker.frontends.gateway import (
    Backoff,
    BackoffPolicy,
    GatewayClient,
    describe_dial_error,
    reconnect_delay,
    with_token,
)
from broker.frontends.wire import (
    CLIENT_HELLO_SCHEMA,
    Command,
    GatewayHello,
    OutboundReply,
    PlatformCapabilities,
    ReplyChannelRef,
)
from broker.testing.fake_gateway import FakeGateway, Received, ResponseMode, open_fake_gateway
from broker.testing.harness import free_port
from tests.frontends.echo import EchoSink

FAST = BackoffPolicy(initial_secs=0.05, max_secs=0.2)


def test_delay_doubles_from_one_second_to_thirty() -> None:
    policy = BackoffPolicy()
    assert [reconnect_delay(n, policy, 0.0) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert reconnect_delay(200, policy, 0.0) == 30


def test_jitter_only_shortens_the_delay() -> None:
    policy = BackoffPolicy(jitter=0.25)
    assert reconnect_delay(3, policy, 0.5) == pytest.approx(8 * 0.875)
    assert reconnect_delay(3, policy, 0.999999) == pytest.approx(6.0, abs=1e-4)
    assert reconnect_delay(9, policy, 0.999999) == pytest.approx(22.5, abs=1e-4)


def test_good_connection_resets_the_backoff() -> None:
    backoff = Backoff(BackoffPolicy(), rand=lambda: 0.0)
    assert [backoff.after(None, 0) for _ in range(3)] == [1, 2, 4]
    assert backoff.after(2.0, 0) == 8  # short and silent: still failing
    assert backoff.after(12.0, 0) == 1  # lasted over 10 s
    assert backoff.after(None, 0) == 2
    assert backoff.after(0.5, 1) == 1  # brought an event


def test_token_is_added_to_the_query() -> None:
    assert with_token("ws://h:1/gw", "") == "ws://h:1/gw"
    assert with_token("ws://h:1/gw", "a b") == "ws://h:1/gw?token=a+b"
    assert with_token("ws://h:1/gw?x=1&token=old", "T") == "ws://h:1/gw?x=1&token=T"


def test_url_that_is_not_websocket_is_refused() -> None:
    with pytest.raises(FrontendError, match=r"ws:// or wss://"):
        GatewayClient(GatewayConfig(url="http://h/"), EchoSink())


async def test_redial_loop_waits_as_the_backoff_says(autojump_clock: trio.abc.Clock) -> None:
    dialed: list[float] = []

    @asynccontextmanager
    async def unreachable(url: str) -> AsyncIterator[trio_websocket.WebSocketConnection]:
        dialed.append(trio.current_time())
        raise OSError("connection refused")
        yield  # pragma: no cover

    client = GatewayClient(GatewayConfig(url="ws://h:1/gw"), EchoSink(), dial=unreachable)
    client.backoff = Backoff(BackoffPolicy(), rand=lambda: 0.0)
    with trio.move_on_after(100):
        await client.run()
    start = dialed[0]
    assert [round(t - start, 6) for t in dialed] == [0, 1, 3, 7, 15, 31, 61, 91]
    assert client.last_error == "OSError: connection refused"


@asynccontextmanager
async def running(
    gateway: FakeGateway, sink: EchoSink, token: str = ""
) -> AsyncIterator[GatewayClient]:
    client = GatewayClient(GatewayConfig(url=gateway.url, token=token), sink, backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        yield client
        nursery.cancel_scope.cancel()


async def test_client_receives_events_and_replies_on_the_protocol() -> None:
    with trio.fail_after(10):
        async with open_fake_gateway(token="T") as gateway, running(gateway, EchoSink(), "T"):
            await gateway.wait_connected()
            event = await gateway.send_event(text="hi", thread_id="t-1")
            reply = await gateway.wait_reply(lambda r: r.reply_to == event.event_id)
            assert reply.text == "echo: hi" and reply.channel == ReplyChannelRef("1001", "t-1")
            gateway.assert_clean()


async def test_wrong_token_is_reported_and_retried() -> None:
    with trio.fail_after(10):
        async with (
            open_fake_gateway(token="T") as gateway,
            running(gateway, EchoSink(), "bad") as client,
        ):
            await gateway.wait_for(lambda: gateway.refused >= 2)
            assert client.last_error == "refused with HTTP 401" and not client.connected


async def test_client_reconnects_after_the_gateway_drops() -> None:
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, EchoSink()) as client:
            await gateway.wait_connected()
            await gateway.drop()
            await gateway.wait_connected(count=2)
            event = await gateway.send_event(text="after")
            await gateway.wait_reply(lambda r: r.reply_to == event.event_id)
            assert client.snapshot().connects == 2
            gateway.assert_clean()


async def test_reply_finished_while_disconnected_is_delivered_once_on_reconnect() -> None:
    sink = EchoSink()
    with trio.fail_after(15):
        async with open_fake_gateway() as gateway, running(gateway, sink) as client:
            await gateway.wait_connected()
            slow = await gateway.send_event(text="slow")
            gateway.refuse_connections = True
            await gateway.drop()
            await client.wait_connected(False)
            sink.release.set()
            await sink.wait_replied(slow.event_id)
            assert client.snapshot().outbox_waiting == 1
            gateway.refuse_connections = False
            await gateway.wait_connected(count=2)
            await gateway.wait_reply(lambda r: r.reply_to == slow.event_id)
            # A later round trip proves nothing else (no second copy) was in flight.
            later = await gateway.send_event(text="later")
            await gateway.wait_reply(lambda r: r.reply_to == later.event_id)
            copies = [r for r in gateway.received if r.reply and r.reply.reply_to == slow.event_id]
            assert [c.connection for c in copies] == [2]
            assert client.snapshot().outbox_waiting == 0
            gateway.assert_clean()


async def test_streaming_request_gets_a_message_id_that_edits_may_use() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, sink):
            await gateway.wait_connected()
            await gateway.send_event(text="ask")
            edit = await gateway.wait_reply(lambda r: r.command is Command.EDIT_MESSAGE)
            assert edit.reply_to == "m-1" and edit.text == "echo: ask"
            assert sink.responses[0] is not None and sink.responses[0].message_id == "m-1"
            gateway.assert_clean()


async def test_delayed_response_within_the_timeout_still_streams() -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, sink):
            gateway.response_delay = 0.3  # the sink waits up to 1 s
            await gateway.wait_connected()
            await gateway.send_event(text="ask")
            edit = await gateway.wait_reply(lambda r: r.command is Command.EDIT_MESSAGE)
            assert edit.reply_to == "m-1"
            gateway.assert_clean()


@pytest.mark.parametrize("mode", [ResponseMode.REFUSE, ResponseMode.IGNORE])
async def test_refused_or_unanswered_request_falls_back_to_a_plain_reply(
    mode: ResponseMode,
) -> None:
    sink = EchoSink()
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, sink):
            gateway.response_mode = mode
            await gateway.wait_connected()
            ask = await gateway.send_event(text="ask")
            plain = await gateway.wait_reply(
                lambda r: r.reply_to == ask.event_id and not r.request_id
            )
            assert plain.text == "echo: ask" and plain.command is None
            response = sink.responses[0]
            assert (
                (response is None)
                if mode is ResponseMode.IGNORE
                else (response and not response.success)
            )
            gateway.assert_clean()


async def test_unreadable_event_from_the_gateway_is_answered_in_the_chat() -> None:
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, EchoSink()):
            await gateway.wait_connected()
            await gateway.send_raw(
                '{"schema":"openab.gateway.event.v1","event_id":"evt_broken","platform":"telegram",'
                '"channel":{"id":"1001","type":"group"}}'
            )
            reply = await gateway.wait_reply(lambda r: r.reply_to == "evt_broken")
            assert "missing field" in reply.text and reply.channel == ReplyChannelRef("1001")
            gateway.assert_clean()


async def test_reply_sent_while_never_connected_waits_in_the_outbox() -> None:
    client = GatewayClient(GatewayConfig(url="ws://127.0.0.1:1/gw"), EchoSink())
    reply = OutboundReply("evt_1", "telegram", ReplyChannelRef("1001"), "later")
    with trio.fail_after(5):
        await client.channel.send_reply(reply)
        assert await client.channel.request(reply) is None
    assert [p.reply for p in client.outbox.take(EVERYTHING)] == [reply]
    assert (client.channel.frontend, client.channel.connection_id) == ("gateway", "gateway")


async def test_gateway_that_stops_answering_pings_is_dropped_and_redialed() -> None:
    import wsproto
    from wsproto.events import AcceptConnection, Request

    handshakes: list[int] = []
    second = trio.Event()

    async def mute_gateway(stream: trio.SocketStream) -> None:
        """Accepts the handshake, then never reads again (a half-open peer)."""
        server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        while True:
            server.receive_data(await stream.receive_some(4096))
            if any(isinstance(e, Request) for e in server.events()):
                break
        await stream.send_all(server.send(AcceptConnection()))
        handshakes.append(1)
        if len(handshakes) == 2:
            second.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                trio.serve_listeners,
                mute_gateway,
                await trio.open_tcp_listeners(0, host="127.0.0.1"),
            )
            port = listeners[0].socket.getsockname()[1]
            client = GatewayClient(
                GatewayConfig(url=f"ws://127.0.0.1:{port}/gw"),
                EchoSink(),
                backoff=FAST,
                ping_interval=0.2,
                pong_timeout=0.5,
            )
            await nursery.start(client.run)
            await second.wait()
            await client.wait_connected()  # the second connection, the first was dropped
            assert client.snapshot().connects == 2
            nursery.cancel_scope.cancel()


async def test_a_refused_dial_says_refused_never_an_empty_handshake_error() -> None:
    config = GatewayConfig(url=f"ws://127.0.0.1:{free_port()}/gw")
    client = GatewayClient(config, EchoSink(), backoff=FAST)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            while not client.last_error:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert client.last_error == "connection refused"


def test_every_dial_failure_has_a_reason() -> None:
    def raised_from(cause: BaseException) -> trio_websocket.HandshakeError:
        error = trio_websocket.HandshakeError()
        error.__cause__ = cause
        return error

    assert describe_dial_error(trio_websocket.ConnectionTimeout()) == "timed out while connecting"
    assert describe_dial_error(raised_from(OSError("no route to host"))) == (
        "OSError: no route to host"
    )
    assert describe_dial_error(trio_websocket.HandshakeError()) == (
        "HandshakeError: failed without a reason"
    )


ACKED = GatewayHello(1, {"telegram": PlatformCapabilities(send_ack=True, edit_ack=True)})


async def test_client_says_client_hello_and_speaks_plain_v1_when_no_hello_comes() -> None:
    with trio.fail_after(10):
        async with open_fake_gateway() as gateway, running(gateway, EchoSink()) as client:
            await gateway.wait_connected()
            event = await gateway.send_event(text="plain")
            reply = await gateway.wait_reply(lambda r: r.reply_to == event.event_id)
            assert reply.request_id is None  # no acknowledgements asked of a v1 gateway
            assert [h["schema"] for h in gateway.client_hellos] == [CLIENT_HELLO_SCHEMA]
            assert client.channel.capabilities("telegram") is None
            gateway.assert_clean()


async def test_with_acknowledgements_a_reply_is_kept_until_the_gateway_says_delivered() -> None:
    sink = EchoSink()
    with trio.fail_after(15):
        async with (
            open_fake_gateway(hello=ACKED) as gateway,
            running(gateway, sink) as client,
        ):
            await gateway.wait_connected()
            probe = await gateway.send_event(text="probe")  # read after the hello, in order
            await gateway.wait_reply(lambda r: r.reply_to == probe.event_id)
            assert client.channel.capabilities("telegram") == ACKED.capabilities["telegram"]
            gateway.response_mode = ResponseMode.IGNORE  # taken by nobody yet
            event = await gateway.send_event(text="kept")
            await gateway.wait_reply(lambda r: r.reply_to == event.event_id)
            await gateway.drop()  # before any acknowledgement
            gateway.response_mode = ResponseMode.ANSWER
            await gateway.wait_connected(count=2)

            def copies() -> list[Received]:
                return [
                    r for r in gateway.received if r.reply and r.reply.reply_to == event.event_id
                ]

            await gateway.wait_for(lambda: len(copies()) == 2)
            again = copies()[1]
            assert again.connection == 2 and again.taken and again.reply is not None
            assert again.reply.request_id is not None  # acknowledged this time
            later = await gateway.send_event(text="later")
            await gateway.wait_reply(lambda r: r.reply_to == later.event_id)
            assert len(copies()) == 2 and client.snapshot().outbox_waiting == 0
            gateway.assert_clean()
