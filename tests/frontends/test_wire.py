"""Frames of the openab gateway protocol v1: parsing, errors, encoding."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from broker.frontends.wire import (
    ERROR_SCHEMA,
    Command,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    ReplyChannelRef,
    WireError,
    encode_error,
    encode_event,
    encode_reply,
    error_reply,
    parse_frame,
    parse_reply,
    thread_key,
)

EVENT: dict[str, Any] = {
    "schema": "openab.gateway.event.v1",
    "event_id": "evt_1",
    "timestamp": "2026-11-23T08:00:00Z",
    "platform": "telegram",
    "event_type": "message",
    "channel": {"id": "1001", "type": "group", "thread_id": None},
    "sender": {"id": "42", "name": "alice", "display_name": "Alice", "is_bot": False},
    "content": {
        "type": "text",
        "text": "hello",
        "attachments": [
            {
                "type": "image",
                "filename": "a.jpg",
                "mime_type": "image/jpeg",
                "data": "aGk=",
                "size": 2,
            },
            {"type": "text_file", "filename": "n.txt", "mime_type": "text/plain", "data": "eA=="},
        ],
    },
    "mentions": ["bot"],
    "message_id": "m-100",
}


def without(path: str) -> str:
    frame = copy.deepcopy(EVENT)
    *parents, last = path.split(".")
    holder = frame
    for key in parents:
        holder = holder[key]
    del holder[last]
    return json.dumps(frame)


def test_event_frame_parses_into_typed_event() -> None:
    event = parse_frame(json.dumps(EVENT))
    assert isinstance(event, InboundEvent)
    assert event.sender.display_name == "Alice" and event.sender.is_bot is False
    assert event.channel.thread_id is None
    assert [a.type for a in event.content.attachments] == ["image", "text_file"]
    assert event.content.attachments[0].size == 2 and event.content.attachments[1].size is None
    assert event.mentions == ("bot",)
    assert parse_frame(encode_event(event)) == event


def test_optional_event_fields_default_when_absent() -> None:
    frame = copy.deepcopy(EVENT)
    for key in ("event_type", "mentions"):
        del frame[key]
    del frame["content"]["attachments"]
    del frame["channel"]["thread_id"]
    frame["unknown_future_key"] = {"x": 1}
    event = parse_frame(json.dumps(frame))
    assert isinstance(event, InboundEvent)
    assert (
        event.event_type == "message" and event.mentions == () and event.content.attachments == ()
    )


@pytest.mark.parametrize(
    "path",
    [
        "event_id",
        "timestamp",
        "platform",
        "message_id",
        "channel.id",
        "channel.type",
        "sender.id",
        "sender.name",
        "sender.display_name",
        "sender.is_bot",
        "content.type",
        "content.text",
    ],
)
def test_each_missing_required_event_field_is_named(path: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_frame(without(path))
    assert str(caught.value) == f"missing field {path}"


def test_missing_attachment_field_names_its_index() -> None:
    frame = copy.deepcopy(EVENT)
    del frame["content"]["attachments"][1]["type"]
    with pytest.raises(WireError, match=r"^missing field content\.attachments\[1\]\.type$"):
        parse_frame(json.dumps(frame))


def test_wrong_types_are_named_not_coerced() -> None:
    frame = copy.deepcopy(EVENT)
    frame["sender"]["is_bot"] = "false"
    frame["channel"]["id"] = 1001
    with pytest.raises(WireError) as caught:
        parse_frame(json.dumps(frame))
    message = str(caught.value)
    assert "field channel.id: expected str, got number" in message
    assert "field sender.is_bot: expected bool, got string" in message


def test_bad_event_keeps_its_address_for_an_error_reply() -> None:
    with pytest.raises(WireError) as caught:
        parse_frame(without("sender.name"))
    reply = error_reply(caught.value)
    assert reply is not None
    assert (reply.reply_to, reply.platform, reply.channel.id) == ("evt_1", "telegram", "1001")
    assert "missing field sender.name" in reply.text
    assert error_reply(WireError("not JSON: x")) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"^not JSON: "),
        ("[1, 2]", r"^not a JSON object: got array$"),
        ('{"event_id": "e"}', r"^missing field schema$"),
        ('{"schema": "x"}', r"^unknown schema 'x'$"),
        (
            '{"schema": "openab.gateway.reply.v1"}',
            r"^unexpected schema 'openab\.gateway\.reply\.v1'",
        ),
        (b"{}", r"^binary frames are not supported"),
    ],
)
def test_unreadable_frames_say_why(text: str | bytes, message: str) -> None:
    with pytest.raises(WireError, match=message):
        parse_frame(text)


def test_response_frame_parses_and_requires_request_id_and_success() -> None:
    frame = {
        "schema": "openab.gateway.response.v1",
        "request_id": "req_1",
        "success": True,
        "thread_id": None,
        "message_id": "m-200",
        "error": None,
    }
    response = parse_frame(json.dumps(frame))
    assert response == GatewayResponse("req_1", True, None, "m-200", None)
    for key in ("request_id", "success"):
        partial = {k: v for k, v in frame.items() if k != key}
        with pytest.raises(WireError, match=f"^missing field {key}$"):
            parse_frame(json.dumps(partial))


def test_plain_reply_omits_empty_thread_command_and_request_id() -> None:
    reply = OutboundReply("evt_1", "telegram", ReplyChannelRef("1001"), "hi")
    assert json.loads(encode_reply(reply)) == {
        "schema": "openab.gateway.reply.v1",
        "reply_to": "evt_1",
        "platform": "telegram",
        "channel": {"id": "1001"},
        "content": {"type": "text", "text": "hi"},
    }
    assert parse_reply(encode_reply(reply)) == reply


def test_reply_carries_thread_command_and_request_id_when_set() -> None:
    reply = OutboundReply(
        "m-1",
        "discord",
        ReplyChannelRef("c", "t-9"),
        "full text",
        Command.EDIT_MESSAGE,
        "req_" + "a" * 32,
    )
    frame = json.loads(encode_reply(reply))
    assert frame["channel"] == {"id": "c", "thread_id": "t-9"}
    assert frame["command"] == "edit_message" and frame["request_id"] == "req_" + "a" * 32
    assert parse_reply(encode_reply(reply)) == reply


def test_reply_to_event_answers_in_the_events_thread() -> None:
    frame = copy.deepcopy(EVENT)
    frame["channel"]["thread_id"] = "t-5"
    event = parse_frame(json.dumps(frame))
    assert isinstance(event, InboundEvent)
    reply = OutboundReply.to_event(event, "ok")
    assert reply.reply_to == "evt_1" and reply.channel == ReplyChannelRef("1001", "t-5")


def test_reply_checker_rejects_present_but_empty_optional_fields() -> None:
    frame = json.loads(encode_reply(OutboundReply("e", "p", ReplyChannelRef("c"), "x")))
    frame["channel"]["thread_id"] = None
    frame["request_id"] = ""
    with pytest.raises(WireError) as caught:
        parse_reply(json.dumps(frame))
    assert "field thread_id is None: it must be omitted when empty" in str(caught.value)
    assert "field request_id is '': it must be omitted when empty" in str(caught.value)


def test_thread_key_uses_thread_id_else_channel_id() -> None:
    event = parse_frame(json.dumps(EVENT))
    assert isinstance(event, InboundEvent)
    assert thread_key(event) == "telegram:1001"
    frame = copy.deepcopy(EVENT)
    frame["channel"]["thread_id"] = "t-7"
    threaded = parse_frame(json.dumps(frame))
    assert isinstance(threaded, InboundEvent)
    assert thread_key(threaded) == "telegram:t-7"


def test_error_frame_names_the_problem_and_the_event() -> None:
    with pytest.raises(WireError) as caught:
        parse_frame(without("content.text"))
    assert json.loads(encode_error(caught.value)) == {
        "schema": ERROR_SCHEMA,
        "error": "missing field content.text",
        "event_id": "evt_1",
    }
    assert json.loads(encode_error(WireError("not JSON: x"))) == {
        "schema": ERROR_SCHEMA,
        "error": "not JSON: x",
    }


def _with_raw(path: str, raw: str) -> str:
    """The event's JSON text with the value at ``path`` written as the raw JSON ``raw``."""
    frame = copy.deepcopy(EVENT)
    *parents, last = path.split(".")
    holder = frame
    for key in parents:
        holder = holder[key]
    holder[last] = "@@"
    return json.dumps(frame).replace('"@@"', raw)


@pytest.mark.parametrize(
    "path",
    ["event_id", "platform", "channel.id", "channel.thread_id", "message_id", "sender.id"],
)
def test_an_id_holding_a_lone_surrogate_is_refused_naming_the_field(path: str) -> None:
    with pytest.raises(WireError) as caught:
        parse_frame(_with_raw(path, '"x\\ud800"'))
    assert str(caught.value) == f"field {path} is not valid text (it holds a lone UTF-16 surrogate)"
    encode_error(caught.value).encode()  # the error frame itself always encodes
    if path != "event_id":
        assert caught.value.event_id == "evt_1"


def test_lone_surrogates_in_message_text_become_replacement_characters() -> None:
    event = parse_frame(_with_raw("content.text", '"a\\udfff b \\ud83d\\ude00"'))
    assert isinstance(event, InboundEvent)
    assert event.content.text == "a\ufffd b 😀"  # a valid pair stays
    sender = parse_frame(_with_raw("sender.display_name", '"\\ud800"'))
    assert isinstance(sender, InboundEvent) and sender.sender.display_name == "\ufffd"


def test_json_nested_twenty_thousand_deep_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="nested too deeply"):
        parse_frame('{"schema":' + "[" * 20_000 + "]" * 20_000 + "}")


def test_a_reply_holding_a_lone_surrogate_still_encodes() -> None:
    reply = OutboundReply("evt_1", "telegram", ReplyChannelRef("1001"), "a\ud800b")
    assert parse_reply(encode_reply(reply).encode().decode()).text == "a\ufffdb"
