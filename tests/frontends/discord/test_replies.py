"""Replies through the real front-end to the fake Discord: splits, edits, limits, outages,
buttons."""

from __future__ import annotations

import attrs
import trio

from broker.chat.delivery import Replier
from broker.frontends.base import ReplyChannel
from broker.frontends.discord.adapter import command_definitions, register_commands
from broker.frontends.wire import Button, Command, InboundEvent, OutboundReply
from broker.testing.fake_discord import ALICE, BOB, CHANNEL_ID, GUILD_ID

from .harness import WAIT_SECS, Recorder, running, wait_until


class Scripted(Recorder):
    """Answers with the reply ``script(event, channel)`` sends."""

    def __init__(self, script: object) -> None:
        super().__init__()
        self.script = script

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()
        await self.script(event, channel)  # type: ignore[operator]


def _edit(
    event: InboundEvent, message_id: str, text: str, buttons: tuple[Button, ...] = ()
) -> OutboundReply:
    plain = OutboundReply.to_event(event, text)
    return attrs.evolve(plain, reply_to=message_id, command=Command.EDIT_MESSAGE, buttons=buttons)


async def test_a_4500_character_reply_is_split_into_messages_of_at_most_2000() -> None:
    lines = [f"line {n:04d} " + "x" * 40 for n in range(90)]  # 90 lines of 50: 4,500
    text = "\n".join(lines)

    async def script(event: InboundEvent, channel: ReplyChannel) -> None:
        await Replier(event, channel).final(text)

    async with running(Scripted(script)) as (fake, _):
        message = await fake.post_message(CHANNEL_ID, "long", mention_bot=True)
        await wait_until(fake, lambda: len(fake.bot_messages(message["id"])) == 3)
        parts = [m["content"] for m in fake.bot_messages(message["id"])]
        assert all(len(p) <= 2000 for p in parts)
        assert "\n".join(parts).split("\n") == lines
        fake.assert_clean()


async def test_an_edit_hit_by_a_429_is_retried_after_retry_after() -> None:
    async def script(event: InboundEvent, channel: ReplyChannel) -> None:
        response = await channel.request(OutboundReply.to_event(event, "…"))
        assert response is not None and response.message_id
        await channel.send_reply(_edit(event, response.message_id, "final text"))

    async with running(Scripted(script)) as (fake, frontend):
        fake.force_429("PATCH", r"/messages/\d+$", retry_after=0.3)
        message = await fake.post_message(CHANNEL_ID, "go", mention_bot=True)
        thread = message["id"]
        await wait_until(
            fake, lambda: [m["content"] for m in fake.bot_messages(thread)] == ["final text"]
        )
        patches = fake.requests_to("PATCH", r"/messages/\d+$")
        assert [p.status for p in patches] == [429, 200]
        assert patches[1].at - patches[0].at >= 0.3
        assert fake.rate_limited == 1 and frontend.snapshot().rate_limited == 1
        fake.assert_clean()


async def test_an_edit_superseded_while_it_waits_is_dropped_and_the_newest_text_wins() -> None:
    async def script(event: InboundEvent, channel: ReplyChannel) -> None:
        response = await channel.request(OutboundReply.to_event(event, "…"))
        assert response is not None and response.message_id
        for text in ("one", "two", "three", "final"):
            await channel.send_reply(_edit(event, response.message_id, text))
            await trio.sleep(0.05)  # the router's pace; "one" meanwhile waits out its 429

    async with running(Scripted(script)) as (fake, frontend):
        fake.force_429("PATCH", r"/messages/\d+$", retry_after=0.3)
        message = await fake.post_message(CHANNEL_ID, "go", mention_bot=True)
        thread = message["id"]
        await wait_until(
            fake, lambda: [m["content"] for m in fake.bot_messages(thread)] == ["final"]
        )
        sent = [p.body["content"] for p in fake.requests_to("PATCH", r"/messages/\d+$")]
        assert sent == [
            "one",
            "one",
            "final",
        ]  # "one" waited out its 429; two and three were dropped
        assert frontend.edits_superseded == 2
        fake.assert_clean()


async def test_fifty_busy_threads_stay_inside_the_buckets() -> None:
    async def script(event: InboundEvent, channel: ReplyChannel) -> None:
        response = await channel.request(OutboundReply.to_event(event, "…"))
        assert response is not None and response.message_id
        for n in range(4):
            await channel.send_reply(_edit(event, response.message_id, f"step {n}"))
            await trio.sleep(0.01)
        await channel.send_reply(OutboundReply.to_event(event, "done"))

    # Small route buckets, so every thread runs into its own; a global limit the
    # 50 threads reach together.
    fake_options = {"route_limit": 3, "route_window": 0.2, "global_per_second": 150}
    async with running(Scripted(script), fake_options=fake_options) as (fake, frontend):
        frontend.rest.limiter.global_per_second = 150
        threads = [
            (await fake.post_message(CHANNEL_ID, f"job {n}", mention_bot=True))["id"]
            for n in range(50)
        ]
        await wait_until(
            fake,
            lambda: all(
                [m["content"] for m in fake.bot_messages(t)] == ["step 3", "done"] for t in threads
            ),
        )
        assert fake.rate_limited == 0
        fake.assert_clean()


async def test_replies_wait_while_discord_is_down_and_are_delivered_once() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        dm = fake.add_dm(ALICE)
        fake.down = True
        await fake.post_message(dm, "first")
        await fake.post_message(dm, "second")
        await sink.wait_events(2)
        await wait_until(fake, lambda: frontend.snapshot().outbox_waiting == 2)
        fake.down = False
        await wait_until(fake, lambda: len(fake.bot_messages(dm)) == 2)
        assert [m["content"] for m in fake.bot_messages(dm)] == ["echo: first", "echo: second"]
        await wait_until(fake, lambda: not frontend._outage)
        await fake.post_message(dm, "third")
        await wait_until(fake, lambda: len(fake.bot_messages(dm)) == 3)
        assert frontend.snapshot().outbox_waiting == 0


async def test_a_reply_sent_twice_is_created_once() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        dm = fake.add_dm(ALICE)
        await fake.post_message(dm, "hi")
        [event] = await sink.wait_events(1)
        await wait_until(fake, lambda: len(fake.bot_messages(dm)) == 1)
        # A resend (e.g. after a 5xx that Discord had in fact carried out) carries the same nonce.
        await frontend.channel.send_reply(OutboundReply.to_event(event, "echo: hi"))
        assert len(fake.bot_messages(dm)) == 1
        assert len(fake.requests_to("POST", rf"/channels/{dm}/messages$")) == 2


async def test_a_reply_to_a_deleted_thread_is_logged_and_not_retried() -> None:
    sink = Recorder()
    async with running(sink) as (fake, frontend):
        message = await fake.post_message(CHANNEL_ID, "hold", mention_bot=True)
        await sink.wait_events(1)
        thread = message["id"]
        fake.delete_channel(thread)
        sink.release.set()
        await wait_until(fake, lambda: frontend.dropped_gone == 1)
        assert len(fake.requests_to("POST", rf"/channels/{thread}/messages$")) == 1
        assert frontend.snapshot().outbox_waiting == 0


async def test_reactions_go_on_the_users_message_in_its_own_channel() -> None:
    async def script(event: InboundEvent, channel: ReplyChannel) -> None:
        await Replier(event, channel).react(Command.ADD_REACTION, "👀")

    async with running(Scripted(script)) as (fake, _):
        message = await fake.post_message(CHANNEL_ID, "look", mention_bot=True)
        await wait_until(fake, lambda: fake.reactions[message["id"]] == ["👀"])
        [put] = fake.requests_to("PUT", "/reactions/")
        assert put.path.startswith(f"/channels/{CHANNEL_ID}/messages/{message['id']}/")


async def test_a_button_click_is_acknowledged_before_the_sink_sees_it() -> None:
    sink = Recorder()
    clicks: list[InboundEvent] = []
    acked_before_sink: list[bool] = []

    async def on_button(event: InboundEvent, channel: ReplyChannel) -> None:
        interaction = next(iter(fake.interactions.values()))
        acked_before_sink.append(interaction["callback"] == {"type": 6})
        clicks.append(event)
        await trio.sleep_forever()  # a busy agent does not delay the acknowledgement

    sink.answer_button = on_button
    async with running(sink) as (fake, _):
        message = await fake.post_message(CHANNEL_ID, "question", mention_bot=True)
        await wait_until(fake, lambda: sink.question_id is not None)
        question = fake.messages[sink.question_id]  # type: ignore[index]
        [row] = question["components"]
        assert [(b["label"], b["style"]) for b in row["components"]] == [
            ("Allow once", 3),
            ("Deny", 4),
        ]
        await fake.click(question["id"], row["components"][0]["custom_id"], clicker=BOB)
        await wait_until(fake, lambda: bool(clicks))
        [click] = clicks
        assert acked_before_sink == [True]
        assert (click.event_type, click.content.text) == ("button", "/allow 3")
        assert click.message_id == question["id"] and click.sender.name == "bob"
        assert click.channel.id == message["id"]
        fake.assert_clean()


async def test_a_refused_click_gets_an_ephemeral_note_and_the_decision_edits_the_question() -> None:
    sink = Recorder()

    async def on_button(event: InboundEvent, channel: ReplyChannel) -> None:
        if event.sender.name == "bob":
            await channel.send_reply(OutboundReply.to_event(event, "only @alice can answer this"))
            return
        decision = _edit(event, event.message_id, "✅ allowed once by @alice", buttons=())
        await channel.send_reply(decision)

    sink.answer_button = on_button
    async with running(sink) as (fake, _):
        await fake.post_message(CHANNEL_ID, "question", mention_bot=True)
        await wait_until(fake, lambda: sink.question_id is not None)
        question = fake.messages[sink.question_id]  # type: ignore[index]
        allow = question["components"][0]["components"][0]["custom_id"]
        await fake.click(question["id"], allow, clicker=BOB)
        await wait_until(fake, lambda: len(fake.followups) == 1)
        [note] = fake.followups
        assert note["content"] == "only @alice can answer this" and note["flags"] == 64
        await fake.click(question["id"], allow, clicker=ALICE)
        await wait_until(fake, lambda: question["content"] == "✅ allowed once by @alice")
        assert question["components"] == []
        fake.assert_clean()


async def test_an_application_command_is_deferred_then_answered_as_a_follow_up() -> None:
    sink = Recorder()
    async with running(sink) as (fake, _):
        thread = fake.add_thread(CHANNEL_ID, fake.bot["id"])
        interaction = await fake.slash(thread, "model", (("args", "list"),))
        [event] = await sink.wait_events(1)
        assert event.content.text == "/model list" and event.event_type == "message"
        assert event.channel.id == thread
        await wait_until(fake, lambda: len(fake.followups) == 1)
        assert fake.interactions[interaction]["callback"] == {"type": 5}
        assert fake.followups[0]["content"] == "echo: /model list"
        assert "flags" not in fake.followups[0]
        fake.assert_clean()


async def test_register_commands_overwrites_the_guilds_commands() -> None:
    async with running() as (fake, frontend):
        where = await register_commands(frontend.rest, [GUILD_ID])
        assert where == [f"guild {GUILD_ID}"]
        assert fake.commands[GUILD_ID] == command_definitions()
        assert {c["name"] for c in fake.commands[GUILD_ID]} >= {"status", "cancel", "reset"}
        with trio.fail_after(WAIT_SECS):
            assert await register_commands(frontend.rest, []) == ["global"]
