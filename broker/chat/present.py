"""What a front-end shows of a turn, and when: the public face of rendering.

Everything here is pure and synchronous. A front-end watches a
:class:`~broker.reply.TurnHandle`, and on every change asks these functions
what to do; it does the I/O (sending, editing, reacting) afterwards:

- :func:`render` / :func:`render_end` turn the transcript into text
  (:mod:`broker.chat.render`), :func:`split_message` and :func:`platform_limit`
  cut it for the platform (:mod:`broker.chat.split`);
- :class:`EditThrottle` decides whether a streaming edit goes out now, later,
  or not at all; :func:`message_updates` says which of the messages that
  carry a long reply need editing or sending;
- :func:`reaction_for` maps the turn's state to an emoji on the user's
  message, :func:`reaction_changes` gives the add/remove commands.

A streaming loop, for illustration (``send`` and ``edit`` are the
front-end's own)::

    throttle = EditThrottle(config.render.edit_interval_ms / 1000)
    transcript = handle.transcript
    while not throttle.finished:
        seen = transcript.version
        if transcript.end is None:
            text, final = render(transcript, final=False), False
        else:
            text, final = render_end(transcript.end, transcript), True
        decision = throttle.decide(trio.current_time(), seen, text, final=final)
        if isinstance(decision, SendNow):
            await show(decision.text)  # split + message_updates + send/edit
        elif isinstance(decision, WaitUntil):
            await trio.sleep_until(decision.when)
        elif not throttle.finished:
            await handle.wait_changed(seen)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import attrs

from broker.chat.render import render, render_end
from broker.chat.split import platform_limit, split_message
from broker.reply import Outcome, Transcript

__all__ = [
    "DEFAULT_REACTIONS",
    "EditDecision",
    "EditThrottle",
    "MessageUpdate",
    "NothingChanged",
    "ReactionAction",
    "ReactionCommand",
    "ReactionSet",
    "SendNow",
    "WaitUntil",
    "message_updates",
    "platform_limit",
    "reaction_changes",
    "reaction_for",
    "render",
    "render_end",
    "split_message",
]


# --- streaming edits --------------------------------------------------------------------------


@attrs.frozen
class SendNow:
    """Show ``text`` now. ``final`` is true for the last text of the turn."""

    text: str
    final: bool = False


@attrs.frozen
class WaitUntil:
    """Too soon after the last edit: decide again at ``when`` (same clock as ``now``)."""

    when: float


@attrs.frozen
class NothingChanged:
    """What is shown is up to date; wait for the transcript to change."""


EditDecision = SendNow | WaitUntil | NothingChanged


class EditThrottle:
    """Paces the edits of one streamed message.

    :meth:`decide` is a pure decision over the throttle's own state: it never
    waits and does no I/O. It promises that

    - two :class:`SendNow` while the text streams are at least ``interval``
      seconds apart (the first one is immediate); the final text is never
      held back by the interval: it is sent as soon as it is asked about
      (a platform's own rate limit may still pace it, in its front-end);
    - a text equal to the one last sent is never sent again, and neither is
      an empty text;
    - the final text is the last thing sent: after a :class:`SendNow` with
      ``final=True``, or a final text identical to what is already shown,
      :attr:`finished` is true and every later call returns
      :class:`NothingChanged`.

    A :class:`SendNow` is recorded as sent when it is returned; the caller
    must show it. ``version`` is the transcript version the text was
    rendered from; an unchanged version is answered without comparing text.
    Times are plain numbers on any monotonic clock (``trio.current_time()``).
    """

    def __init__(self, interval: float) -> None:
        if not interval >= 0 or math.isinf(interval):
            raise ValueError(f"edit interval must be a finite number >= 0, got {interval!r}")
        self.interval = interval
        self.finished = False
        self.sent_text: str | None = None
        self._sent_at: float | None = None
        self._version: int | None = None

    def decide(self, now: float, version: int, text: str, *, final: bool = False) -> EditDecision:
        """What to do with ``text`` (rendered from ``version``) at time ``now``.

        Raises ``ValueError`` for an empty final text: the last message of a
        turn must say something (see :func:`render_end`).
        """
        if self.finished:
            return NothingChanged()
        if final and not text.strip():
            raise ValueError("the final text of a turn must not be empty")
        if (version == self._version and not final) or not text.strip():
            return NothingChanged()
        if text == self.sent_text:
            self._version = version
            self.finished = final
            return NothingChanged()
        if not final and self._sent_at is not None and now < self._sent_at + self.interval:
            return WaitUntil(self._sent_at + self.interval)
        self._sent_at = now
        self._version = version
        self.sent_text = text
        self.finished = final
        return SendNow(text, final)

    def sent(self, now: float) -> None:
        """The last :class:`SendNow` finished showing at ``now``: the interval
        runs from here, so a send that took longer than the interval (a long
        reply creating its continuation messages) is not edited again at once."""
        if self._sent_at is not None:
            self._sent_at = max(self._sent_at, now)


@attrs.frozen
class MessageUpdate:
    """Make message ``index`` of a reply show ``text``; an index past the
    messages already sent means send a new one."""

    index: int
    text: str


CLEARED_PART = "…"  # what a message no longer needed shows (there is no delete command)


def message_updates(shown: Sequence[str], parts: Sequence[str]) -> list[MessageUpdate]:
    """The edits and sends that turn the messages showing ``shown`` into ``parts``.

    ``parts`` is the reply split for the platform (:func:`split_message`), so
    a reply that outgrows one message continues in new messages while the
    earlier ones stay put. Only messages whose text changes are listed, in
    index order. When the reply shrinks to fewer parts, the surplus messages
    are edited to :data:`CLEARED_PART`.
    """
    updates = [
        MessageUpdate(i, part)
        for i, part in enumerate(parts)
        if i >= len(shown) or shown[i] != part
    ]
    updates.extend(
        MessageUpdate(i, CLEARED_PART)
        for i in range(len(parts), len(shown))
        if shown[i] != CLEARED_PART
    )
    return updates


# --- reactions --------------------------------------------------------------------------------


@attrs.frozen
class ReactionSet:
    """The emoji for each state of a turn.

    The defaults are all in Telegram's fixed set of allowed reactions (which
    has no ✅, ❌, ⏳ or 🔧), so they work on every platform.
    """

    queued: str = "👀"  # seen, not started yet
    thinking: str = "🤔"  # the agent is working on text or thoughts
    tool: str = "🔥"  # a tool is running
    coding: str = "👨‍💻"  # a tool that edits files or runs commands
    web: str = "⚡"  # a tool that fetches from the web
    done: str = "🆗"
    cancelled: str = "👌"
    error: str = "😱"  # timed out, agent died, busy, pool full, ...


DEFAULT_REACTIONS = ReactionSet()
_CODING_KINDS = frozenset({"edit", "delete", "move", "execute"})


def reaction_for(transcript: Transcript, reactions: ReactionSet = DEFAULT_REACTIONS) -> str | None:
    """The emoji that shows the turn's state; None before any event arrived."""
    end = transcript.end
    if end is not None:
        if end.outcome is Outcome.COMPLETED:
            return reactions.done
        return reactions.cancelled if end.outcome is Outcome.CANCELLED else reactions.error
    if transcript.version == 0:
        return None
    if not transcript.started:
        return reactions.queued
    tool = transcript.current_tool
    if tool is None or tool.kind == "think":
        return reactions.thinking
    if tool.kind in _CODING_KINDS:
        return reactions.coding
    return reactions.web if tool.kind == "fetch" else reactions.tool


class ReactionAction(enum.Enum):
    """Values are the gateway protocol's ``command`` names."""

    ADD = "add_reaction"
    REMOVE = "remove_reaction"


@attrs.frozen
class ReactionCommand:
    action: ReactionAction
    emoji: str


def reaction_changes(shown: str | None, wanted: str | None) -> list[ReactionCommand]:
    """Commands that replace reaction ``shown`` with ``wanted``: remove first, then add.

    Removing first keeps platforms that allow one reaction per user (and
    gateways that implement removal as "clear") from losing the new one.
    To pace reactions, feed the emoji to a separate :class:`EditThrottle`.
    """
    if shown == wanted:
        return []
    commands = []
    if shown is not None:
        commands.append(ReactionCommand(ReactionAction.REMOVE, shown))
    if wanted is not None:
        commands.append(ReactionCommand(ReactionAction.ADD, wanted))
    return commands
