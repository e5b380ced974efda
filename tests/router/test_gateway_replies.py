"""The router behind the gateway client, against the fake gateway that checks
every frame against protocol v1: ``[gateway] streaming`` applies there while
``[server] streaming`` stays off."""

from __future__ import annotations

import functools
from collections.abc import Callable

import trio

from broker.chat.router import Router
from broker.config import BrokerConfig
from broker.frontends.gateway import run_gateway
from broker.frontends.wire import Command, GatewayHello, PlatformCapabilities
from broker.sessions.pool import open_pool
from broker.testing.fake_gateway import open_fake_gateway


async def test_gateway_replies_stream_as_edits_with_reactions_and_follow_the_protocol(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with open_fake_gateway() as gateway:
            config = make_config(
                gateway={"url": gateway.url, "streaming": True},
                render={"edit_interval_ms": 100},
                reactions={"enabled": True},
            )
            assert not config.server.streaming
            async with open_pool(config) as pool, trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(run_gateway, config.gateway, Router(pool, config))
                )
                await gateway.wait_connected()
                event = await gateway.send_event(
                    text="@reply via the gateway\n@chunks 3\n@chunk-delay 0.2"
                )
                await gateway.wait_reply(
                    lambda r: r.command is Command.EDIT_MESSAGE and r.text == "via the gateway"
                )
                await gateway.wait_reply(
                    lambda r: r.command is Command.ADD_REACTION and r.text == "🆗"
                )
                nursery.cancel_scope.cancel()
    first = gateway.replies[0]
    assert first.request_id is not None and first.reply_to == event.event_id
    assert all(
        r.reply_to == event.message_id
        for r in gateway.replies
        if r.command in (Command.ADD_REACTION, Command.REMOVE_REACTION)
    )
    gateway.assert_clean()


async def test_the_gateways_hello_is_honoured_no_edits_where_it_cannot_and_its_message_limit(
    make_config: Callable[..., BrokerConfig],
) -> None:
    """``[gateway] streaming`` is on, but the hello says telegram cannot edit
    and takes 40 characters a message: plain replies, split at 40."""
    hello = GatewayHello(1, {"telegram": PlatformCapabilities(message_limit=40, can_edit=False)})
    words = " ".join(f"word{n}" for n in range(30))
    with trio.fail_after(60):
        async with open_fake_gateway(hello=hello) as gateway:
            config = make_config(gateway={"url": gateway.url, "streaming": True})
            async with open_pool(config) as pool, trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(run_gateway, config.gateway, Router(pool, config))
                )
                await gateway.wait_connected()
                probe = await gateway.send_event(text="/help")  # read after the hello
                await gateway.wait_reply(lambda r: r.reply_to == probe.event_id)
                event = await gateway.send_event(text=f"@reply {words}")
                await gateway.wait_reply(
                    lambda r: r.reply_to == event.event_id and "word29" in r.text
                )
                nursery.cancel_scope.cancel()
    parts = [r for r in gateway.replies if r.reply_to == event.event_id]
    assert all(r.command is None and r.request_id is None for r in parts)
    assert len(parts) > 1 and all(len(r.text) <= 40 for r in parts)
    gateway.assert_clean()
