"""The Slack front-end against the fake Slack: events in, Web API calls out."""

from __future__ import annotations

import base64

import trio

from broker.frontends.base import MemoryOutbox
from broker.frontends.wire import Button, ButtonStyle, Command, OutboundReply, ReplyChannelRef
from broker.testing.fake_slack import BOT_USER_ID, FakeSlack
from tests.frontends.slack.stack import Recorder, first_mention, running_slack, wait_connected


async def test_mention_is_answered_in_the_thread_it_starts() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            mention = fake.user_message("hello there", mention=True)
            delivery = await fake.send_event(mention)
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 1)
        (event,) = sink.events
        assert event.platform == "slack"
        assert event.content.text == "hello there"
        assert event.channel.id == "C0CHAN"
        assert event.channel.thread_id == f"C0CHAN:{mention['ts']}"
        assert event.message_id == mention["ts"]
        assert event.mentions == (BOT_USER_ID,)
        (reply,) = fake.bot_messages("C0CHAN")
        assert reply.thread_ts == mention["ts"]
        assert reply.text == "echo: hello there"
        assert delivery.envelope_id in fake.acks
        fake.assert_clean()


async def test_follow_up_in_the_thread_needs_no_mention_but_other_chatter_is_ignored() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            mention = fake.user_message("start", mention=True)
            await fake.send_event(mention)
            await sink.wait_events(1)
            chatter = await fake.send_event(fake.user_message("not for the bot"))
            stranger = fake.user_message("other thread", thread_ts=fake.next_ts())
            await fake.send_event(stranger)
            follow = fake.user_message("and then?", thread_ts=mention["ts"])
            await fake.send_event(follow)
            await sink.wait_events(2)
            await fake.wait_acked(chatter.envelope_id)
        assert [e.content.text for e in sink.events] == ["start", "and then?"]
        assert sink.events[1].channel.thread_id == sink.events[0].channel.thread_id
        fake.assert_clean()


async def test_direct_message_is_a_conversation_answered_in_the_dm() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            dm = fake.user_message("hi", channel="D0DM", channel_type="im")
            await fake.send_event(dm)
            await fake.wait_for(lambda: len(fake.bot_messages("D0DM")) == 1)
        (event,) = sink.events
        assert event.channel.type == "im"
        assert event.channel.thread_id is None
        assert fake.bot_messages("D0DM")[0].thread_ts is None
        fake.assert_clean()


async def test_redelivered_event_is_answered_once() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            first = await fake.send_event(fake.user_message("once", mention=True))
            again = await fake.redeliver(first)
            await fake.wait_acked(again.envelope_id)
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 1)
            # a later event is answered, so the redelivery had its turn and was dropped
            await fake.send_event(fake.user_message("later", mention=True))
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 2)
        assert [e.content.text for e in sink.events] == ["once", "later"]
        assert again.payload["event_id"] == first.payload["event_id"]
        fake.assert_clean()


async def test_own_and_other_bots_messages_and_edits_are_not_conversations() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink, mention_required=False) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            own = fake.user_message("mine", user=BOT_USER_ID)
            own["bot_id"] = "B0BOT"
            changed = fake.user_message("edited")
            changed["subtype"] = "message_changed"
            other_bot = fake.user_message("beep", user="U0OTHER")
            other_bot["bot_id"] = "B0OTHER"
            for event in (own, changed, other_bot):
                await fake.send_event(event)
            await fake.send_event(fake.user_message("person"))
            await sink.wait_events(2)
        assert [(e.content.text, e.sender.is_bot) for e in sink.events] == [
            ("beep", True),  # passed on as a bot: the router drops it unless allow_bots
            ("person", False),
        ]
        assert stack.frontend.events_ignored == 2


async def test_mention_and_message_of_the_same_post_are_one_event() -> None:
    sink = Recorder()
    async with running_slack(sink) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            mention = fake.user_message("both", mention=True)
            message = dict(mention, type="message", channel_type="channel")
            await fake.send_event(mention)
            await fake.send_event(message)
            await fake.send_event(fake.user_message("next", mention=True))
            await sink.wait_events(2)
        assert [e.content.text for e in sink.events] == ["both", "next"]


async def test_streamed_reply_edits_the_message_request_returned() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            mention, event = await first_mention(stack, sink, "go")
            response = await frontend.request(OutboundReply.to_event(event, "…"))
            assert response is not None and response.success and response.message_id
            edit = OutboundReply(
                response.message_id,
                "slack",
                ReplyChannelRef("C0CHAN", event.channel.thread_id),
                "the whole answer",
                Command.EDIT_MESSAGE,
            )
            await frontend.send_reply(edit)
            await fake.wait_for(lambda: bool(fake.calls_to("chat.update")))
        (message,) = fake.bot_messages("C0CHAN", mention["ts"])
        assert message.ts == response.message_id
        assert message.texts == ["…", "the whole answer"]
        fake.assert_clean()


async def test_rate_limited_update_is_waited_out_and_its_text_lands() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            _, event = await first_mention(stack, sink, "go")
            response = await frontend.request(OutboundReply.to_event(event, "first"))
            assert response is not None and response.message_id
            fake.rate_limit("chat.update", retry_after=0.2, times=2)
            ref = ReplyChannelRef("C0CHAN", event.channel.thread_id)
            for text in ("second", "third", "final"):
                edit = OutboundReply(response.message_id, "slack", ref, text, Command.EDIT_MESSAGE)
                await frontend.send_reply(edit)
            await fake.wait_for(lambda: fake.bot_messages("C0CHAN")[-1].text == "final")
        statuses = [c.status for c in fake.calls_to("chat.update")]
        assert statuses[:2] == [429, 429] and set(statuses[2:]) == {200}
        assert fake.bot_messages("C0CHAN")[-1].texts[-1] == "final"
        assert "third" not in fake.bot_messages("C0CHAN")[-1].texts  # superseded while waiting
        assert frontend.snapshot().rate_limited == 2
        fake.assert_clean()


async def test_button_click_reaches_the_sink_as_its_command_and_a_refusal_is_ephemeral() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            mention, event = await first_mention(stack, sink, "do it")
            question = OutboundReply.to_event(event, "May the agent run `ls`?")
            question = OutboundReply(
                question.reply_to,
                question.platform,
                question.channel,
                question.text,
                buttons=(
                    Button("Allow once", "/allow 3", ButtonStyle.SUCCESS),
                    Button("Deny", "/deny 3", ButtonStyle.DANGER),
                ),
            )
            response = await frontend.request(question)
            assert response is not None and response.message_id
            shown = fake.messages[("C0CHAN", response.message_id)]
            click = fake.block_actions(shown, "/deny 3", user="U0BOB")
            delivery = await fake.send("interactive", click)
            (_, clicked) = await sink.wait_events(2)
            await frontend.send_reply(OutboundReply.to_event(clicked, "only Alice can answer"))
            decided = OutboundReply(
                response.message_id,
                "slack",
                question.channel,
                "❌ denied by U0ALICE",
                Command.EDIT_MESSAGE,
            )
            await frontend.send_reply(decided)
            await fake.wait_for(lambda: not shown.blocks and bool(fake.ephemeral))
        assert delivery.envelope_id in fake.acks
        assert clicked.event_type == "button"
        assert clicked.content.text == "/deny 3"
        assert clicked.sender.id == "U0BOB"
        assert clicked.message_id == response.message_id
        assert clicked.channel == event.channel
        assert [
            b["value"] for b in fake.calls_to("chat.postMessage")[-1].args["blocks"][-1]["elements"]
        ] == ["/allow 3", "/deny 3"]
        (ephemeral,) = fake.ephemeral
        assert ephemeral["user"] == "U0BOB"
        assert ephemeral["thread_ts"] == mention["ts"]
        assert shown.text == "❌ denied by U0ALICE"
        fake.assert_clean()


async def test_replies_wait_while_slack_is_down_and_are_delivered_once_in_order() -> None:
    outbox = MemoryOutbox()
    sink = Recorder(answer=False)
    async with running_slack(sink, outbox=outbox) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            _, event = await first_mention(stack, sink, "q")
            await fake.set_down(True)
            for n in range(3):
                await frontend.send_reply(OutboundReply.to_event(event, f"part {n}"))
            assert len(outbox) == 3
            assert await frontend.request(OutboundReply.to_event(event, "x")) is None
            await fake.set_down(False)
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 3)
            await frontend.send_reply(OutboundReply.to_event(event, "after"))
            await fake.wait_for(lambda: len(fake.bot_messages("C0CHAN")) == 4)
        assert [m.text for m in fake.bot_messages("C0CHAN")] == [
            "part 0",
            "part 1",
            "part 2",
            "after",
        ]
        assert len(outbox) == 0
        fake.assert_clean()


async def test_shared_files_are_downloaded_with_the_bot_token() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink, max_file_bytes=1000) as stack:
        fake = stack.fake
        with trio.fail_after(10):
            await wait_connected(stack)
            notes = fake.add_file("notes.txt", b"line one\n", "text/plain")
            big = fake.add_file("big.png", b"x" * 2000, "image/png")
            pdf = fake.add_file("doc.pdf", b"%PDF", "application/pdf")
            message = fake.user_message("see files", mention=True, files=[notes, big, pdf])
            await fake.send_event(message)
            (event,) = await sink.wait_events(1)
        small, large, other = event.content.attachments
        assert (small.type, base64.b64decode(small.data)) == ("text_file", b"line one\n")
        assert (large.type, large.data, large.size) == ("image", "", 2000)  # over the limit
        assert (other.type, other.data) == ("file", "")
        assert len(fake.file_downloads) == 1
        fake.assert_clean()


async def test_reactions_use_slack_names_and_tolerate_being_already_there() -> None:
    sink = Recorder(answer=False)
    async with running_slack(sink) as stack:
        fake, frontend = stack.fake, stack.frontend
        with trio.fail_after(10):
            mention, event = await first_mention(stack, sink, "react")
            ref = ReplyChannelRef("C0CHAN", event.channel.thread_id)
            for command, emoji in (
                (Command.ADD_REACTION, "👀"),
                (Command.ADD_REACTION, "👀"),
                (Command.REMOVE_REACTION, "👀"),
                (Command.ADD_REACTION, "🆗"),
            ):
                await frontend.send_reply(
                    OutboundReply(event.message_id, "slack", ref, emoji, command)
                )
        assert fake.messages[("C0CHAN", mention["ts"])].reactions == {"ok"}
        fake.assert_clean()


async def test_invalid_bot_token_stops_slack_and_says_why() -> None:
    def revoke(fake: FakeSlack) -> None:
        fake.auth_error = "invalid_auth"

    async with running_slack(Recorder(), fake_setup=revoke) as stack:
        with trio.fail_after(10):
            while not stack.frontend.fatal:
                await stack.frontend.wait_changed()
        snapshot = stack.frontend.snapshot()
        assert snapshot.state == "stopped"
        assert "invalid_auth" in snapshot.fatal
        assert "xoxb" not in snapshot.fatal
        assert not stack.fake.calls_to("apps.connections.open")
