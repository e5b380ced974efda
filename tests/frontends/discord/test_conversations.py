"""Messages in, replies out, through the fake Discord and the real front-end."""

from __future__ import annotations

import base64

from broker.frontends.wire import thread_key
from broker.testing.fake_discord import ALICE, CHANNEL_ID, OTHER_BOT

from .harness import Recorder, running, wait_until


async def test_a_mention_starts_a_thread_from_the_message_and_the_reply_lands_in_it() -> None:
    sink = Recorder()
    async with running(sink) as (fake, _):
        message = await fake.post_message(CHANNEL_ID, "fix the build", mention_bot=True)
        [event] = await sink.wait_events(1)
        thread_id = message["id"]  # a thread started from a message has the message's id
        await wait_until(fake, lambda: bool(fake.bot_messages(thread_id)))
        assert fake.channels[thread_id]["owner_id"] == fake.bot["id"]
        assert fake.channels[thread_id]["name"] == "fix the build"
        assert thread_key(event) == f"discord:{thread_id}"
        assert event.content.text == "fix the build"
        assert event.sender.name == "alice" and not event.sender.is_bot
        assert [m["content"] for m in fake.bot_messages(thread_id)] == ["echo: fix the build"]
        assert fake.bot_messages(CHANNEL_ID) == []
        fake.assert_clean()


async def test_a_follow_up_in_the_bots_thread_needs_no_mention() -> None:
    sink = Recorder()
    async with running(sink) as (fake, _):
        first = await fake.post_message(CHANNEL_ID, "hello", mention_bot=True)
        await sink.wait_events(1)
        thread_id = first["id"]
        await fake.post_message(thread_id, "and now?")
        events = await sink.wait_events(2)
        assert thread_key(events[1]) == f"discord:{thread_id}"
        await wait_until(fake, lambda: len(fake.bot_messages(thread_id)) == 2)
        assert len(fake.requests_to("POST", r"/threads$")) == 1
        fake.assert_clean()


async def test_a_thread_started_before_a_restart_is_still_the_bots() -> None:
    sink = Recorder()
    async with running(sink) as (fake, _):
        thread_id = fake.add_thread(CHANNEL_ID, fake.bot["id"])
        await fake.post_message(thread_id, "still there?")
        [event] = await sink.wait_events(1)
        assert thread_key(event) == f"discord:{thread_id}"


async def test_guild_chatter_without_a_mention_is_ignored() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        await fake.post_message(CHANNEL_ID, "lunch?")
        someone_elses = fake.add_thread(CHANNEL_ID, ALICE["id"])
        await fake.post_message(someone_elses, "in a thread the bot did not start")
        await wait_until(fake, lambda: frontend.messages_skipped == 2)
        await fake.post_message(CHANNEL_ID, "marker", mention_bot=True)
        events = await sink.wait_events(1)
        assert [e.content.text for e in events] == ["marker"]


async def test_bots_its_own_and_system_messages_are_ignored() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        await fake.post_message(CHANNEL_ID, "beep", author=OTHER_BOT, mention_bot=True)
        await fake.post_message(CHANNEL_ID, "me", author=fake.bot, mention_bot=True)
        await fake.post_message(CHANNEL_ID, "pinned", message_type=6, mention_bot=True)
        await wait_until(fake, lambda: frontend.messages_skipped == 3)
        await fake.post_message(CHANNEL_ID, "marker", mention_bot=True)
        events = await sink.wait_events(1)
        assert [e.content.text for e in events] == ["marker"]
        assert len(fake.requests_to("POST", r"/threads$")) == 1


async def test_other_bots_are_answered_when_allowed() -> None:
    sink = Recorder()
    async with running(sink, allow_bots=True) as (fake, _):
        await fake.post_message(CHANNEL_ID, "beep", author=OTHER_BOT, mention_bot=True)
        [event] = await sink.wait_events(1)
        assert event.sender.is_bot


async def test_a_guild_outside_allowed_guilds_is_ignored() -> None:
    sink = Recorder()
    async with running(sink, settings={"allowed_guilds": ("42",)}) as (fake, frontend):
        dm = fake.add_dm(ALICE)
        await fake.post_message(CHANNEL_ID, "hello", mention_bot=True)
        await wait_until(fake, lambda: frontend.messages_skipped == 1)
        await fake.post_message(dm, "marker")
        events = await sink.wait_events(1)
        assert [e.content.text for e in events] == ["marker"]


async def test_a_dm_is_its_own_conversation() -> None:
    sink = Recorder()
    async with running(sink) as (fake, _):
        dm = fake.add_dm(ALICE)
        await fake.post_message(dm, "hi in private")
        [event] = await sink.wait_events(1)
        assert thread_key(event) == f"discord:{dm}"
        assert event.channel.type == "direct"
        await wait_until(fake, lambda: bool(fake.bot_messages(dm)))
        assert fake.requests_to("POST", r"/threads$") == []


async def test_mention_not_required_answers_every_guild_message_in_a_thread() -> None:
    sink = Recorder()
    async with running(sink, settings={"mention_required": False}) as (fake, _):
        message = await fake.post_message(CHANNEL_ID, "no mention")
        [event] = await sink.wait_events(1)
        assert thread_key(event) == f"discord:{message['id']}"


async def test_images_and_text_files_are_downloaded_and_passed_on() -> None:
    sink = Recorder()
    async with running(sink, max_attachment_bytes=1024) as (fake, _):
        png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
        files = (
            fake.add_file("shot.png", png, "image/png"),
            fake.add_file("notes.txt", b"line one\n", "text/plain; charset=utf-8"),
            fake.add_file("big.log", b"x" * 5000, "text/plain"),
        )
        await fake.post_message(CHANNEL_ID, "look", mention_bot=True, attachments=files)
        [event] = await sink.wait_events(1)
        image, text, big = event.content.attachments
        assert (image.type, base64.b64decode(image.data), image.mime_type) == (
            "image",
            png,
            "image/png",
        )
        assert (text.type, base64.b64decode(text.data)) == ("text_file", b"line one\n")
        # Over the limit: only limit + 1 bytes are read, so the router can say it is too large.
        assert len(base64.b64decode(big.data)) == 1025 and big.size == 5000


async def test_a_message_replayed_twice_is_handled_once() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        message = await fake.post_message(CHANNEL_ID, "once", mention_bot=True)
        await sink.wait_events(1)
        frontend._on_dispatch("MESSAGE_CREATE", dict(message, guild_id="1", channel_type=0))
        await fake.post_message(CHANNEL_ID, "marker", mention_bot=True)
        events = await sink.wait_events(2)
        assert [e.content.text for e in events] == ["once", "marker"]
