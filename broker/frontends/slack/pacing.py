"""Pacing ``chat.update`` per channel: at most one edit an interval, newest text wins.

Slack allows about one ``chat.update`` a second in a channel. Edits of
messages in one channel wait in an :class:`EditPacer`; an edit of a message
that already has one waiting replaces it (the superseded text is never sent:
each edit carries the whole text), so the last text of a message, its final
one, is always the one sent. The pacer only decides; the adapter sleeps and
sends.
"""

from __future__ import annotations

import collections

from broker.frontends.wire import OutboundReply

EDIT_INTERVAL_SECS = 1.0


class EditPacer:
    """The edits waiting for one channel, oldest message first."""

    def __init__(self, interval: float = EDIT_INTERVAL_SECS) -> None:
        self.interval = interval
        self.superseded = 0
        self._waiting: collections.OrderedDict[str, OutboundReply] = collections.OrderedDict()
        self._next_at = float("-inf")

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, edit: OutboundReply) -> None:
        """Keep ``edit`` (``reply_to`` is the message's ts); it replaces a
        waiting edit of the same message, in that message's place in line."""
        if edit.reply_to in self._waiting:
            self.superseded += 1
        self._waiting[edit.reply_to] = edit

    def wait(self, now: float) -> float | None:
        """Seconds until the next edit may go (0: now); None when the pacer is
        done: no edit waits and the interval of the last one is over, so a new
        edit may go at once (and the pacer can be dropped)."""
        if not self._waiting and now >= self._next_at:
            return None
        return max(0.0, self._next_at - now)

    def take(self, now: float) -> OutboundReply | None:
        """The edit to send now, or None (none waits, or not yet due). Taking
        it starts the interval."""
        if not self._waiting or now < self._next_at:
            return None
        _, edit = self._waiting.popitem(last=False)
        self._next_at = now + self.interval
        return edit
