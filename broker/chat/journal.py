"""The journal of accepted events: each event answered once, and none forgotten by a crash.

A gateway that is unsure whether an event arrived sends it again (on the same
connection or after a reconnect). :meth:`EventJournal.begin` is the
synchronous decision the router makes before any work: a new event is
recorded (in memory and, durably, in the store) and handled; an event id seen
within ``[router] dedup_window_secs`` is a :class:`Duplicate`, answered with
the first delivery's final reply when that one is done, and with nothing new
while it is still in flight. :meth:`EventJournal.finish` records the final
reply.

An event accepted by a broker that was then killed stays unfinished in the
store. At the next start :meth:`EventJournal.load` returns those, so the
service can tell each thread that its message was not finished; they are
then marked done with that notice.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Mapping

import attrs

from broker.frontends.base import Outbox
from broker.frontends.wire import InboundEvent, OutboundReply, ReplyChannelRef
from broker.sentences import RESTARTED_REPLY
from broker.store import EventRecord, Store

log = logging.getLogger(__name__)

FORGET_EVERY = 256  # finished events between two prunes of the store's journal


@attrs.frozen
class NewEvent:
    """A new event: handle it, then call :meth:`EventJournal.finish` with ``key``."""

    key: str


@attrs.frozen
class Duplicate:
    """An event id seen before. ``done``: the first delivery was answered (its
    final reply is in the store under ``key``); else it is still in flight."""

    key: str
    done: bool


def event_key(event: InboundEvent) -> str:
    return f"{event.platform}:{event.event_id}"


class EventJournal:
    """See the module docstring. ``window`` is ``[router] dedup_window_secs``
    (0: no deduplication, events are still journalled for the restart
    notice); ``clock`` is wall-clock seconds, as the store keeps them."""

    def __init__(
        self, store: Store | None, window: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        # key -> (received at, done, final reply when there is no store to keep it)
        self._seen: collections.OrderedDict[str, tuple[float, bool, str | None]] = (
            collections.OrderedDict()
        )
        self._finished = 0
        self.duplicates = 0

    def __len__(self) -> int:
        return len(self._seen)

    def begin(self, event: InboundEvent, frontend: str) -> NewEvent | Duplicate:
        """Decide about ``event`` and, when it is new, record it; never waits."""
        now = self.clock()
        self._forget_before(now - self.window)
        key = event_key(event)
        seen = self._seen.get(key)
        if seen is not None and self.window > 0:
            self.duplicates += 1
            return Duplicate(key, seen[1])
        self._seen[key] = (now, False, None)
        if self.store is not None:
            channel = event.channel
            self.store.record_event(
                EventRecord(
                    key,
                    frontend,
                    event.platform,
                    channel.id,
                    channel.thread_id or None,
                    event.event_id,
                    now,
                    False,
                )
            )
        return NewEvent(key)

    def finish(self, key: str, final: str) -> None:
        """The event of ``key`` got its final reply ``final``; never waits."""
        if key in self._seen:
            kept = final if self.store is None else None
            self._seen[key] = (self._seen[key][0], True, kept)
        if self.store is not None:
            self.store.finish_event(key, final)
            self._finished += 1
            if self._finished % FORGET_EVERY == 0:
                self.store.forget_events(self.clock() - self.window)

    async def final_reply(self, duplicate: Duplicate) -> str | None:
        """The first delivery's final reply (None when it is no longer known)."""
        if self.store is None:
            seen = self._seen.get(duplicate.key)
            return None if seen is None else seen[2]
        return await self.store.event_final(duplicate.key)

    async def load(self) -> list[EventRecord]:
        """Take in the events of the window from the store; returns those never
        answered (a broker was killed while handling them), oldest first."""
        if self.store is None:
            return []
        since = self.clock() - self.window
        unfinished = []
        for record in await self.store.events(since):
            self._seen[record.event_key] = (record.received_at, record.done, None)
            if not record.done:
                unfinished.append(record)
        self.store.forget_events(since)
        return unfinished

    def _forget_before(self, before: float) -> None:
        """Drop answered events older than ``before``; one still in flight is
        kept however old (its duplicate must not run it again)."""
        for _ in range(len(self._seen)):
            key, seen = next(iter(self._seen.items()))
            received, done, _ = seen
            if received >= before:
                return
            del self._seen[key]
            if not done:
                self._seen[key] = seen  # to the back: looked at again later


def tell_unfinished(
    journal: EventJournal, records: Iterable[EventRecord], outboxes: Mapping[str, Outbox]
) -> int:
    """Give each event a killed broker never answered its explicit reply
    (:data:`RESTARTED_REPLY`), through the outbox of its front-end like any
    undeliverable reply, and mark it done. Returns how many were told."""
    told = 0
    for record in records:
        outbox = outboxes.get(record.frontend)
        if outbox is None:
            log.error(
                "event %s of %s was not finished before the restart, and the %s front-end is"
                " not running to tell it",
                record.event_id,
                record.platform,
                record.frontend,
            )
            continue
        target = ReplyChannelRef(record.channel_id, record.thread_id)
        outbox.on_undeliverable(
            OutboundReply(record.event_id, record.platform, target, RESTARTED_REPLY)
        )
        journal.finish(record.event_key, RESTARTED_REPLY)
        told += 1
    if told:
        log.warning("%d events were not finished before the restart; their threads are told", told)
    return told
