"""The bounded in-memory outbox."""

from __future__ import annotations

import logging

import pytest

from broker.frontends.base import EVERYTHING, Claim, MemoryOutbox, Parcel
from broker.frontends.wire import Command, OutboundReply, ReplyChannelRef


def reply(
    text: str,
    platform: str = "telegram",
    *,
    reply_to: str = "evt_1",
    command: Command | None = None,
) -> OutboundReply:
    return OutboundReply(reply_to, platform, ReplyChannelRef("1001"), text, command)


def test_replies_come_out_oldest_first_filtered_by_platform() -> None:
    outbox = MemoryOutbox()
    for item in (reply("a"), reply("b", "discord"), reply("c")):
        outbox.on_undeliverable(item)
    assert texts(outbox.take(Claim(platforms=frozenset({"telegram"})))) == ["a", "c"]
    assert len(outbox) == 1
    assert texts(outbox.take(EVERYTHING)) == ["b"]
    assert outbox.take(EVERYTHING) == []


def test_a_later_edit_of_the_same_message_replaces_the_waiting_one() -> None:
    outbox = MemoryOutbox()
    outbox.on_undeliverable(reply("plain"))
    for text in ("Hel", "Hello", "Hello world"):
        outbox.on_undeliverable(reply(text, reply_to="m-1", command=Command.EDIT_MESSAGE))
    outbox.on_undeliverable(reply("other", reply_to="m-2", command=Command.EDIT_MESSAGE))
    assert texts(outbox.take(EVERYTHING)) == ["plain", "Hello world", "other"]


def test_when_full_the_oldest_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    outbox = MemoryOutbox(capacity=2)
    with caplog.at_level(logging.WARNING):
        for text in ("1", "2", "3"):
            outbox.on_undeliverable(reply(text))
    assert texts(outbox.take(EVERYTHING)) == ["2", "3"]
    assert outbox.dropped == 1 and "outbox full" in caplog.text


def test_a_thread_claim_takes_only_that_threads_replies() -> None:
    outbox = MemoryOutbox()
    mine = OutboundReply("evt_1", "telegram", ReplyChannelRef("1001"), "mine")
    other = OutboundReply("evt_2", "telegram", ReplyChannelRef("1002"), "other")
    in_thread = OutboundReply("evt_3", "telegram", ReplyChannelRef("1002", "t9"), "in thread")
    for item in (mine, other, in_thread):
        outbox.on_undeliverable(item)
    assert outbox.take(Claim()) == []
    assert texts(outbox.take(Claim(threads=frozenset({"telegram:1001"})))) == ["mine"]
    assert texts(outbox.take(Claim(threads=frozenset({"telegram:t9"})))) == ["in thread"]
    assert texts(outbox.take(EVERYTHING)) == ["other"]


def test_replies_put_back_go_before_those_that_wait() -> None:
    outbox = MemoryOutbox()
    outbox.on_undeliverable(reply("first"))
    taken = outbox.take(EVERYTHING)
    outbox.on_undeliverable(reply("later"))
    outbox.put_back([*taken, Parcel(reply("sent straight"))])
    assert texts(outbox.take(EVERYTHING)) == ["first", "sent straight", "later"]


def texts(parcels: list[Parcel]) -> list[str]:
    return [p.reply.text for p in parcels]
