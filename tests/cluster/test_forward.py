"""The forwarding link against a real WebSocket server on loopback playing the owner."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from broker.cluster.forward import ClusterSink, Peer, Route, decide_route
from broker.cluster.ownership import owner
from broker.config import ServerConfig
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.frontends.wire import GatewayResponse, InboundEvent, OutboundReply
from broker.sentences import HOST_RESTARTING
from broker.testing.fake_gateway import make_event
from broker.testing.harness import free_port
from tests.frontends.echo import EchoSink

TOKEN = "peer-token-for-tests"
MEMBERS = ["agent-broker-0", "agent-broker-1"]
HERE, THERE = MEMBERS


def owned_by(name: str, count: int = 1) -> list[str]:
    """Channel ids of telegram threads ``name`` owns."""
    found = [f"room-{n}" for n in range(200) if owner(f"telegram:room-{n}", MEMBERS) == name]
    return found[:count]


@attrs.define(eq=False)
class ClientChannel:
    """The channel of the client an event came from: records what reaches it
    and answers requests with message ids ``m-1``, ``m-2``, ..."""

    frontend: str = "server"
    connection_id: str = "ws-1"
    replies: list[OutboundReply] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def _record(self, reply: OutboundReply) -> None:
        self.replies.append(reply)
        self.changed.set()
        self.changed = trio.Event()

    async def send_reply(self, reply: OutboundReply) -> None:
        self._record(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        self._record(reply)
        return GatewayResponse("req_x", True, message_id=f"m-{len(self.replies)}")

    async def texts(self, count: int) -> list[str]:
        while len(self.replies) < count:
            await self.changed.wait()
        return [r.text for r in self.replies]


@asynccontextmanager
async def owner_server(echo: EchoSink, port: int = 0) -> AsyncIterator[WebSocketServer]:
    async with trio.open_nursery() as nursery:
        settings = ServerConfig(listen=f"127.0.0.1:{port}")
        server: WebSocketServer = await nursery.start(
            functools.partial(serve_websocket, settings, echo)
        )
        server.peer_token = TOKEN
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def cluster_sink(port: int) -> AsyncIterator[ClusterSink]:
    members = {HERE: "127.0.0.1:1", THERE: f"127.0.0.1:{port}"}
    local = EchoSink()
    sink = ClusterSink(
        local, replica=HERE, members=members, peer_token=TOKEN, ignored=lambda e: False
    )
    async with trio.open_nursery() as nursery:
        yield await nursery.start(sink.run)
        nursery.cancel_scope.cancel()


def event_in(channel_id: str, text: str) -> InboundEvent:
    return make_event(text, channel_id=channel_id)


async def test_an_event_owned_elsewhere_is_answered_by_its_owner_over_the_peer_link() -> None:
    echo = EchoSink()
    with trio.fail_after(10):
        async with owner_server(echo) as server, cluster_sink(server.port) as sink:
            client = ClientChannel()
            event = event_in(owned_by(THERE)[0], "hello")
            await sink.handle_event(event, client)
            assert await client.texts(1) == ["echo: hello"]
            assert client.replies[0].reply_to == event.event_id
            frontend, connection = echo.channels[event.event_id]
            assert frontend == "server" and connection.startswith(f"peer-{HERE}-")
            mine = event_in(owned_by(HERE)[0], "local")
            await sink.handle_event(mine, client)
            assert mine.event_id not in echo.channels  # answered here, not forwarded
            assert sink.snapshot().forwarded == 1 and sink.snapshot().handled_here == 1


async def test_a_request_from_the_owner_is_relayed_to_the_client_and_its_answer_back() -> None:
    echo = EchoSink()
    with trio.fail_after(10):
        async with owner_server(echo) as server, cluster_sink(server.port) as sink:
            client = ClientChannel()
            await sink.handle_event(event_in(owned_by(THERE)[0], "ask"), client)
            assert await client.texts(2) == ["...", "echo: ask"]
            assert client.replies[1].reply_to == "m-1"  # the edit of the message the client made
            assert [r.message_id for r in echo.responses if r is not None] == ["m-1"]


async def test_an_unreachable_owner_gets_the_user_the_host_restarting_reply() -> None:
    with trio.fail_after(10):
        async with cluster_sink(free_port()) as sink:
            client = ClientChannel()
            event = event_in(owned_by(THERE)[0], "hello")
            await sink.handle_event(event, client)
            assert await client.texts(1) == [HOST_RESTARTING]
            assert client.replies[0].reply_to == event.event_id
            (peer,) = sink.snapshot().peers
            assert peer.unreachable == 1 and not peer.connected and peer.last_error


async def test_events_waiting_when_the_owner_goes_away_get_the_host_restarting_reply() -> None:
    echo = EchoSink()
    client = ClientChannel()
    port = free_port()
    with trio.fail_after(10):
        async with cluster_sink(port) as sink, trio.open_nursery() as nursery:
            async with owner_server(echo, port) as server:
                assert server.port == port
                for channel_id in owned_by(THERE, 2):
                    nursery.start_soon(sink.handle_event, event_in(channel_id, "slow"), client)
                while len(echo.channels) < 2:
                    await trio.sleep(0.01)
            # the owner is gone with both events unanswered
            assert await client.texts(2) == [HOST_RESTARTING, HOST_RESTARTING]
            (peer,) = sink.snapshot().peers
            assert peer.forwarded == 2 and peer.unreachable == 2 and peer.waiting == 0


async def test_forwarded_events_wait_for_a_slot_when_the_owner_has_too_many_unanswered() -> None:
    echo = EchoSink()
    client = ClientChannel()
    with trio.fail_after(10):
        async with owner_server(echo) as server, trio.open_nursery() as nursery:
            peer = Peer(
                THERE,
                f"127.0.0.1:{server.port}",
                replica=HERE,
                token=TOKEN,
                nursery=nursery,
                max_in_flight=2,
            )
            channels = owned_by(THERE, 3)
            for channel_id in channels:
                nursery.start_soon(peer.forward, event_in(channel_id, "slow"), client)
            while len(echo.channels) < 2:
                await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked(0.05)
            assert len(echo.channels) == 2 and peer.snapshot().waiting == 2
            echo.release.set()
            assert await client.texts(3) == ["echo: slow"] * 3
            nursery.cancel_scope.cancel()


async def test_a_peer_with_a_wrong_token_is_refused() -> None:
    with trio.fail_after(10):
        async with owner_server(EchoSink()) as server:
            url = f"ws://127.0.0.1:{server.port}/ws?peer={HERE}"
            wrong = [(b"authorization", b"Bearer not-the-token")]
            with pytest.raises(trio_websocket.ConnectionRejected) as caught:
                async with trio_websocket.open_websocket_url(url, extra_headers=wrong):
                    pass
            assert caught.value.status_code == 403


@pytest.mark.parametrize(
    ("frontend", "from_peer", "owned_here", "route"),
    [
        ("server", False, False, Route.FORWARD),
        ("slack", False, False, Route.FORWARD),
        ("gateway", False, False, Route.IGNORE),
        ("gateway", False, True, Route.HERE),
        ("server", True, False, Route.HERE),
        ("discord", False, False, Route.HERE),
        ("server", False, True, Route.HERE),
    ],
)
def test_where_an_event_is_answered(
    frontend: str, from_peer: bool, owned_here: bool, route: Route
) -> None:
    event = event_in(owned_by(HERE if owned_here else THERE)[0], "hi")
    decision = decide_route(event, frontend, from_peer=from_peer, replica=HERE, members=MEMBERS)
    assert decision.route is route
