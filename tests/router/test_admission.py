"""Who gets answered, and what reaches the agent: allowlists, bots, mentions,
sender context and attachments, through the real stack."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import attrs
import trio

from broker.config import BrokerConfig
from broker.frontends.wire import Attachment, Content, InboundEvent
from broker.testing.fake_gateway import make_event
from tests.router.stack import Client, Stack, connect, running_broker


async def assert_ignored(client: Client, stack: Stack, **fields: object) -> None:
    event = await client.send("@reply should not run", **fields)
    assert await client.settle(stack, event) == []


async def test_allowlists_and_bot_senders_get_no_reply_and_start_no_agent(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        router={
            "allowed_channels": ["room-1", "telegram:room-2", "probe"],
            "allowed_users": ["42", "probe"],
        }
    )
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            await assert_ignored(client, stack, channel_id="room-9")
            await assert_ignored(client, stack, channel_id="room-2")  # listed for telegram only
            await assert_ignored(client, stack, channel_id="room-1", sender_id="43")
            await assert_ignored(client, stack, channel_id="room-1", is_bot=True)
            assert stack.pool.counters.turns_submitted == 0
            assert stack.router.events_ignored == 4
            assert await client.ask("@reply yes", channel_id="room-1") == "yes"
            reply = await client.ask("@reply tg", channel_id="room-2", platform="telegram")
            assert reply == "tg"


async def test_bots_are_answered_when_allowed_and_reload_changes_the_allowlist(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(router={"allow_bots": True})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            assert await client.ask("@reply hi bot", is_bot=True) == "hi bot"
            stack.router.update_config(
                make_config(router={"allowed_users": ["someone-else", "probe"]})
            )
            await assert_ignored(client, stack)


async def test_mention_gating_answers_only_messages_addressed_to_the_bot(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        router={"mention_required_platforms": ["telegram"], "bot_names": ["@BrokerBot"]}
    )
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            tg = {"platform": "telegram"}
            await assert_ignored(client, stack, **tg)
            await assert_ignored(client, stack, mentions=("someone",), **tg)
            await assert_ignored(client, stack, channel_id="c2", **tg)
            # named in mentions, as @name in the text (stripped), in a thread, on other platforms
            assert await client.ask("@reply a", mentions=("brokerbot",), **tg) == "a"
            reply = await client.ask("@brokerbot, @@hello", channel_id="c3", **tg)
            assert "You said: “@hello”" in reply
            assert await client.ask("@reply c", thread_id="t-1", **tg) == "c"
            assert await client.ask("@reply d", platform="discord") == "d"
            direct = make_event("@reply e", platform="telegram", channel_id="dm-1")
            direct = attrs.evolve(direct, channel=attrs.evolve(direct.channel, type="private"))
            await client.send_event(direct)
            assert await client.reply_to(direct) == ["e"]
            status = await client.ask("/status@brokerbot", channel_id="c4", **tg)
            assert status.startswith("📊")


async def test_sender_context_reaches_the_agent(make_config: Callable[..., BrokerConfig]) -> None:
    with trio.fail_after(60):
        async with (
            running_broker(make_config(prompt={"sender_context": True})) as stack,
            connect(stack) as client,
        ):
            reply = await client.ask("what is the time?", sender_id="77")
    assert "[Message from Alice (username alice, id 77) on cli]" in reply
    assert "what is the time?" in reply


def with_attachments(text: str, *attachments: Attachment, **fields: Any) -> InboundEvent:
    event = make_event(text, platform="cli", **fields)
    return attrs.evolve(event, content=Content("text", text, attachments))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_text_files_are_appended_fenced_and_images_are_passed(
    make_config: Callable[..., BrokerConfig],
) -> None:
    notes = Attachment("text_file", b64(b"line one\n```\nbad \xff byte\n"), "notes.md")
    image = Attachment("image", b64(b"\x89PNG fake"), "shot.png", "image/png")
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            event = with_attachments("read this", notes, image, channel_id="a")
            await client.send_event(event)
            (reply,) = await client.reply_to(event)
    assert "read this\n\nnotes.md:\n````\nline one\n```\nbad \ufffd byte\n````" in reply
    assert "I also received 1 image" in reply


async def test_an_agent_without_images_gets_the_text_and_the_user_a_note(
    make_config: Callable[..., BrokerConfig],
) -> None:
    image = Attachment("image", b64(b"\x89PNG fake"), "shot.png", "image/png")
    with trio.fail_after(60):
        async with (
            running_broker(make_config(agent_args=["--no-images"])) as stack,
            connect(stack) as client,
        ):
            event = with_attachments("look", image)
            await client.send_event(event)
            (reply,) = await client.reply_to(event)
    assert reply.startswith("ℹ️ shot.png was not sent: this agent does not accept images.")
    assert "You said: “look”" in reply


async def test_attachment_limits_drop_a_file_with_a_note_and_refuse_an_oversized_message(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(prompt={"max_attachment_bytes": 100, "max_message_bytes": 300})
    small = Attachment("text_file", b64(b"small file"), "small.txt")
    big = Attachment("text_file", b64(b"x" * 150), "big.txt")
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            event = with_attachments("files", small, big, Attachment("audio", b64(b"a")))
            await client.send_event(event)
            (reply,) = await client.reply_to(event)
            assert (
                "ℹ️ big.txt was not passed to the agent: it is 150 bytes, over the limit of "
                "100 bytes per attachment." in reply
            )
            assert "attachment 3 was not passed to the agent: audio attachments" in reply
            assert "small file" in reply and "x" * 150 not in reply
            submitted = stack.pool.counters.turns_submitted
            huge = with_attachments("too much", *[small] * 3, big, big, channel_id="b")
            await client.send_event(huge)
            (refusal,) = await client.reply_to(huge)
            assert refusal.startswith("⚠️ This message is too large: 338 bytes")
            assert "limit of 300 bytes" in refusal
            empty = with_attachments("", big, channel_id="c")
            await client.send_event(empty)
            (nothing,) = await client.reply_to(empty)
            assert nothing.startswith("⚠️ Nothing to send to the agent. big.txt was not passed")
            assert stack.pool.counters.turns_submitted == submitted
