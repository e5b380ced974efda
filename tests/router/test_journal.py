"""The event journal's decisions, with a clock the test sets (no store, then a real one)."""

from __future__ import annotations

from pathlib import Path

import trio

from broker.chat.journal import Duplicate, EventJournal, NewEvent, tell_unfinished
from broker.frontends.base import Claim, MemoryOutbox
from broker.sentences import RESTARTED_REPLY
from broker.store import open_store
from broker.testing.fake_gateway import make_event

EVERYTHING = Claim(everything=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_duplicate_within_the_window_gets_the_first_reply_and_none_in_flight() -> None:
    clock = Clock()
    journal = EventJournal(None, 600, clock)
    event = make_event("hi")
    first = journal.begin(event, "server")
    assert isinstance(first, NewEvent)
    assert journal.begin(event, "server") == Duplicate(first.key, done=False)
    journal.finish(first.key, "the answer")
    again = journal.begin(event, "gateway")
    assert again == Duplicate(first.key, done=True)
    assert await journal.final_reply(again) == "the answer"
    clock.now += 601
    assert isinstance(journal.begin(event, "server"), NewEvent)  # out of the window: new


async def test_an_event_still_in_flight_is_never_forgotten_however_old() -> None:
    clock = Clock()
    journal = EventJournal(None, 10, clock)
    slow, quick = make_event("slow"), make_event("quick")
    slow_key = journal.begin(slow, "server")
    journal.finish(journal.begin(quick, "server").key, "done")
    clock.now += 3600
    journal.begin(make_event("later"), "server")
    assert len(journal) == 2  # quick forgotten, slow and later kept
    assert journal.begin(slow, "server") == Duplicate(slow_key.key, done=False)


async def test_unfinished_events_of_a_killed_broker_are_told_once_through_the_outbox(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    answered, killed = make_event("a", channel_id="c1"), make_event("b", thread_id="th")
    with trio.fail_after(10):
        async with open_store(path) as store:
            journal = EventJournal(store, 600)
            journal.finish(journal.begin(answered, "server").key, "answered")
            journal.begin(killed, "gateway")  # and then the broker is killed
        async with open_store(path) as store:
            journal = EventJournal(store, 600)
            outboxes = {"server": MemoryOutbox(), "gateway": MemoryOutbox()}
            assert tell_unfinished(journal, await journal.load(), outboxes) == 1
            (told,) = [parcel.reply for parcel in outboxes["gateway"].take(EVERYTHING)]
            assert (told.reply_to, told.text) == (killed.event_id, RESTARTED_REPLY)
            assert (told.channel.id, told.channel.thread_id) == (killed.channel.id, "th")
            assert outboxes["server"].take(EVERYTHING) == []
            assert journal.begin(answered, "server") == Duplicate(
                "telegram:" + answered.event_id, True
            )
        async with open_store(path) as store:
            journal = EventJournal(store, 600)
            assert await journal.load() == []  # told once
            duplicate = journal.begin(killed, "gateway")
            assert isinstance(duplicate, Duplicate)
            assert await journal.final_reply(duplicate) == RESTARTED_REPLY
