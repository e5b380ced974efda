"""The router's synchronous rules, and its last-resort replies when its own
transport fails or stops (a recording channel stands in for the transport)."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from broker.chat.commands import SlashCommand, parse_command
from broker.chat.prompt import fenced
from broker.chat.router import Router, ignore_reason, strip_leading_mentions
from broker.config import BrokerConfig, RouterConfig
from broker.frontends.wire import GatewayResponse, OutboundReply
from broker.sentences import SHUTDOWN_REPLY
from broker.sessions.pool import open_pool
from broker.testing.fake_gateway import make_event


def test_broker_commands_are_recognised_and_other_slash_words_are_not() -> None:
    assert parse_command("/status") == SlashCommand("status")
    assert parse_command("  /Model set Smart ") == SlashCommand("model", ("set", "Smart"))
    assert parse_command("/cancel@my_bot") == SlashCommand("cancel")
    assert parse_command("/compact") is None
    assert parse_command("please /reset") is None
    assert parse_command("/") is None


def test_leading_mentions_of_the_bot_are_stripped_and_others_kept() -> None:
    names = ["@Bot", "helper"]
    assert strip_leading_mentions("@bot, @HELPER: /status", names) == "/status"
    assert strip_leading_mentions("@botany is a science", names) == "@botany is a science"
    assert strip_leading_mentions("ask @bot later", names) == "ask @bot later"


def test_mentions_count_only_for_the_bot_and_only_where_required() -> None:
    config = RouterConfig(mention_required_platforms=("Slack",), bot_names=("bot",))
    plain = make_event("hi", platform="slack")
    assert ignore_reason(plain, config) is not None
    assert ignore_reason(make_event("hey @Bot hi", platform="slack"), config) is None
    assert ignore_reason(make_event("mail me@bot.example", platform="slack"), config) is not None
    assert ignore_reason(make_event("/status@bot", platform="slack"), config) is None
    assert ignore_reason(make_event("hi", platform="discord"), config) is None
    edited = attrs.evolve(make_event("hi", platform="discord"), event_type="message_edited")
    assert ignore_reason(edited, config) == "event type 'message_edited' is not a message"
    unnamed = RouterConfig(mention_required_platforms=("slack",))
    assert "bot_names is empty" in (ignore_reason(plain, unnamed) or "")


def test_a_text_file_with_fences_gets_a_longer_fence() -> None:
    assert fenced("a.md", "x\n```\ny\n") == "a.md:\n````\nx\n```\ny\n````"


class RecordingChannel:
    """A transport that records replies; its ``request`` is broken on purpose."""

    connection_id = "recording"
    frontend = "server"

    def __init__(self) -> None:
        self.replies: list[OutboundReply] = []

    async def send_reply(self, reply: OutboundReply) -> None:
        self.replies.append(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        raise RuntimeError("broken transport")


async def test_an_error_inside_the_router_becomes_one_error_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(server={"streaming": True})
    channel = RecordingChannel()
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            await Router(pool, config).handle_event(make_event("@reply hi"), channel)
    expected = (
        "⚠️ Internal error while handling this message (RuntimeError). "
        "It was logged; please try again."
    )
    assert [r.text for r in channel.replies] == [expected]


async def test_a_cancelled_event_task_still_hands_over_a_shutdown_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config()
    channel = RecordingChannel()
    event = make_event("@silent-tool 60", platform="cli")
    with trio.fail_after(30):
        async with open_pool(config) as pool, trio.open_nursery() as nursery:
            nursery.start_soon(Router(pool, config).handle_event, event, channel)
            while (snap := pool.session_snapshot("cli:1001")) is None or snap.state != "busy":
                await pool.wait_changed(pool.version)
            nursery.cancel_scope.cancel()
    assert channel.replies == [OutboundReply.to_event(event, SHUTDOWN_REPLY)]
