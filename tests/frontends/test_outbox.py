"""The bounded in-memory outbox."""

from __future__ import annotations

import logging

import pytest

from broker.frontends.base import MemoryOutbox
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
    assert [r.text for r in outbox.take(frozenset({"telegram"}))] == ["a", "c"]
    assert len(outbox) == 1
    assert [r.text for r in outbox.take(None)] == ["b"]
    assert outbox.take(None) == []


def test_a_later_edit_of_the_same_message_replaces_the_waiting_one() -> None:
    outbox = MemoryOutbox()
    outbox.on_undeliverable(reply("plain"))
    for text in ("Hel", "Hello", "Hello world"):
        outbox.on_undeliverable(reply(text, reply_to="m-1", command=Command.EDIT_MESSAGE))
    outbox.on_undeliverable(reply("other", reply_to="m-2", command=Command.EDIT_MESSAGE))
    assert [r.text for r in outbox.take(None)] == ["plain", "Hello world", "other"]


def test_when_full_the_oldest_is_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    outbox = MemoryOutbox(capacity=2)
    with caplog.at_level(logging.WARNING):
        for text in ("1", "2", "3"):
            outbox.on_undeliverable(reply(text))
    assert [r.text for r in outbox.take(None)] == ["2", "3"]
    assert outbox.dropped == 1 and "outbox full" in caplog.text


def test_every_change_is_reported_so_a_store_can_keep_the_list() -> None:
    saved: list[list[str]] = []
    outbox = MemoryOutbox(
        initial=[reply("from last run")], on_change=lambda r: saved.append([x.text for x in r])
    )
    outbox.on_undeliverable(reply("new", "discord"))
    assert [r.text for r in outbox.take(frozenset({"telegram"}))] == ["from last run"]
    assert outbox.take(frozenset({"slack"})) == []  # nothing taken, nothing reported
    assert saved == [["from last run", "new"], ["new"]]
