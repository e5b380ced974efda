"""Which Slack events become inbound events, read without any I/O."""

from __future__ import annotations

from typing import Any

from broker.frontends.slack.events import (
    BotIdentity,
    Conversations,
    Ignored,
    Incoming,
    Seen,
    command_text,
    split_thread_id,
    thread_id,
)
from broker.frontends.wire import thread_key

BOT = BotIdentity("U0BOT", "B0BOT")
COMMANDS = ("cancel", "status", "reset", "help", "model", "mode", "allow", "deny", "answer")


def payload(event: dict[str, Any], event_id: str = "Ev1") -> dict[str, Any]:
    return {"type": "event_callback", "event_id": event_id, "event": event}


def message(text: str, ts: str = "1.000001", **fields: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": "C1", "channel_type": "channel", "user": "U1"}
    return {**event, "text": text, "ts": ts, **fields}


def read(conversations: Conversations, event: dict[str, Any], event_id: str = "Ev1") -> Any:
    return conversations.read_event(payload(event, event_id))


def test_mention_starts_a_thread_keyed_by_channel_and_ts() -> None:
    conversations = Conversations(BOT, commands=COMMANDS)
    mention = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "ts": "5.5",
        "text": "<@U0BOT> hi",
    }
    result = read(conversations, mention)
    assert isinstance(result, Incoming)
    assert thread_key(result.event) == "slack:C1:5.5"
    assert result.event.content.text == "hi"
    follow = read(conversations, message("more", "6.1", thread_ts="5.5"), "Ev2")
    assert isinstance(follow, Incoming)
    assert thread_key(follow.event) == "slack:C1:5.5"


def test_channel_chatter_and_unknown_threads_need_a_mention() -> None:
    conversations = Conversations(BOT)
    assert isinstance(read(conversations, message("hello all")), Ignored)
    assert isinstance(
        read(conversations, message("in a thread", "2.0", thread_ts="1.5"), "Ev2"), Ignored
    )
    mid = read(conversations, message("hey <@U0BOT> look", "3.0"), "Ev3")
    assert isinstance(mid, Incoming)
    assert mid.event.content.text == "hey <@U0BOT> look"
    open_channel = Conversations(BOT, mention_required=False)
    assert isinstance(read(open_channel, message("hello all")), Incoming)


def test_direct_messages_are_conversations_threaded_where_they_have_a_thread() -> None:
    conversations = Conversations(BOT)
    top = read(conversations, message("hi", channel="D1", channel_type="im"))
    threaded = read(
        conversations,
        message("in thread", "2.0", channel="D1", channel_type="im", thread_ts="1.0"),
        "Ev2",
    )
    assert isinstance(top, Incoming) and isinstance(threaded, Incoming)
    assert thread_key(top.event) == "slack:D1"
    assert thread_key(threaded.event) == "slack:D1:1.0"
    assert top.event.channel.type == "im"


def test_own_messages_subtypes_and_repeats_are_ignored_but_other_bots_pass_as_bots() -> None:
    conversations = Conversations(BOT, mention_required=False)
    assert "own" in read(conversations, message("x", user="U0BOT")).reason
    assert "own" in read(conversations, message("x", "2.0", bot_id="B0BOT"), "Ev2").reason
    assert (
        "message_changed"
        in read(conversations, message("x", "3.0", subtype="message_changed"), "Ev3").reason
    )
    other = read(conversations, message("beep", "4.0", bot_id="B9", subtype="bot_message"), "Ev4")
    assert isinstance(other, Incoming) and other.event.sender.is_bot
    assert "redelivery" in read(conversations, message("beep", "4.0"), "Ev4").reason
    assert "already handled" in read(conversations, message("beep", "4.0"), "Ev5").reason


def test_slash_commands_can_be_typed_with_a_bang_or_after_a_mention() -> None:
    assert command_text("!cancel", COMMANDS, mentioned=False) == "/cancel"
    assert command_text("!compact now", COMMANDS, mentioned=False) == "/compact now"
    assert command_text("cancel", COMMANDS, mentioned=True) == "/cancel"
    assert command_text("model set opus", COMMANDS, mentioned=True) == "/model set opus"
    assert command_text("allow always 3", COMMANDS, mentioned=True) == "/allow always 3"
    assert command_text("help me read this", COMMANDS, mentioned=True) == "help me read this"
    assert command_text("cancel", COMMANDS, mentioned=False) == "cancel"
    assert command_text("! not a command", COMMANDS, mentioned=False) == "! not a command"
    conversations = Conversations(BOT, commands=COMMANDS)
    mention = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U1",
        "ts": "5.5",
        "text": "<@U0BOT> status",
    }
    result = read(conversations, mention)
    assert isinstance(result, Incoming) and result.event.content.text == "/status"


def test_text_is_unescaped() -> None:
    conversations = Conversations(BOT, mention_required=False)
    result = read(conversations, message("a &lt;b&gt; &amp;&amp; c"))
    assert isinstance(result, Incoming) and result.event.content.text == "a <b> && c"


def test_button_click_is_a_button_event_in_the_question_thread() -> None:
    conversations = Conversations(BOT)
    click = {
        "type": "block_actions",
        "user": {"id": "U2", "username": "bob"},
        "container": {
            "type": "message",
            "message_ts": "9.0",
            "channel_id": "C1",
            "thread_ts": "5.5",
        },
        "message": {"ts": "9.0", "thread_ts": "5.5"},
        "actions": [{"type": "button", "value": "/allow 3", "action_ts": "10.0", "action_id": "a"}],
    }
    (event,) = conversations.read_action(click)  # type: ignore[misc]
    assert (event.event_type, event.content.text, event.message_id) == ("button", "/allow 3", "9.0")
    assert thread_key(event) == "slack:C1:5.5"
    assert event.sender.id == "U2"
    assert isinstance(conversations.read_action(click), Ignored)  # redelivered: once


def test_thread_ids_round_trip_and_seen_keys_are_bounded() -> None:
    assert split_thread_id("C1", thread_id("C1", "5.5")) == "5.5"
    assert split_thread_id("C1", None) is None
    assert split_thread_id("C1", "C2:5.5") is None
    seen = Seen(capacity=2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    assert seen.add("c") and "b" not in seen and len(seen) == 2
