"""Delivering one turn's reply to the chat: plain, streamed as edits, and reactions.

The router hands each turn to :func:`deliver_turn`. What to show and when is
decided by the pure functions of :mod:`broker.chat.present` (render, split,
:class:`~broker.chat.present.EditThrottle`, :func:`~broker.chat.present.message_updates`,
reactions); this module does the sending.

* **Plain** (streaming off): wait for the turn's end, render it with
  :func:`~broker.chat.present.render_end`, split it for the platform and send one
  reply per part (``reply_to`` = the event id). A message that has to wait
  in its thread's queue is answered at once with a note ("⏳ Queued behind
  2 messages…", :class:`_QueueNote`), which follows the queue and is replaced
  by the reply where the front-end can edit, and is followed by it elsewhere.
* **Streaming**: the first message goes out with
  :meth:`~broker.frontends.base.ReplyChannel.request`; the response's
  ``message_id`` is what later ``edit_message`` frames address, each with the
  full text so far, at most every ``edit_interval`` seconds while it streams
  and only when it changed; the final text goes out as soon as the turn ends,
  never held back by the interval. A reply that outgrows one message continues in new messages (each
  asked for with a request too). When a request gets no usable response in
  time (``None``, ``success: false`` or no ``message_id``), streaming is given
  up for the turn: the messages that do have ids get their final text as an
  edit and the rest of the final text goes out as plain replies. A turn that
  has already ended before anything was shown (a busy or pool-full refusal)
  is answered with plain replies at once.
* **Reactions** (``[reactions] enabled``): the turn's state as an emoji on the
  user's message, changed with ``remove_reaction`` / ``add_reaction``, paced by
  their own throttle, in a task beside the text.

:class:`Replier` records whether the final reply went out, so the router can
guarantee exactly one final or error reply per event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from broker.chat.present import (
    EditThrottle,
    NothingChanged,
    SendNow,
    WaitUntil,
    message_updates,
    platform_limit,
    reaction_changes,
    reaction_for,
    render,
    render_end,
    split_message,
)
from broker.chat.questions import show_questions
from broker.frontends.base import ReplyChannel, channel_capabilities
from broker.frontends.wire import Command, InboundEvent, OutboundReply, reply_target
from broker.reply import Transcript, TurnEnd, TurnHandle

log = logging.getLogger(__name__)

NOTE_PREFIX = "ℹ️ "
LATE_TEXT_SECS = 1.0  # late text is watched for this long after the end, if the turn stays open

LateEdit = Callable[[str], Awaitable[None]]  # shows the reply with this late text added


class Replier:
    """Sends the replies to one inbound event.

    :attr:`finished` becomes true once the final reply (or an error reply)
    has been handed to the channel; nothing is sent as a final reply twice.
    """

    def __init__(self, event: InboundEvent, channel: ReplyChannel) -> None:
        self.event = event
        self.channel = channel
        caps = channel_capabilities(channel, event.platform)
        said = None if caps is None else caps.message_limit
        self.limit = platform_limit(event.platform) if said is None else said
        self.finished = False

    async def final(self, text: str) -> None:
        """Send ``text`` as the final reply: one plain reply per platform-sized part.

        :attr:`finished` is set as the last part is handed to the channel, which
        keeps it even if this is cancelled while it is written: a reply cut
        short by a stop is delivered later, and not followed by another."""
        parts = split_message(text, self.limit) or ["…"]
        await self.plain_parts(parts[:-1])
        self.finished = True
        await self.plain_parts(parts[-1:])

    async def plain_parts(self, parts: Sequence[str]) -> None:
        for part in parts:
            await self.channel.send_reply(OutboundReply.to_event(self.event, part))

    async def edit(self, message_id: str, text: str) -> None:
        event = self.event
        reply = OutboundReply(
            message_id, event.platform, reply_target(event), text, Command.EDIT_MESSAGE
        )
        await self.channel.send_reply(reply)

    async def new_message(self, text: str, response_timeout: float) -> str | None:
        """Send ``text`` as a new message with a request_id; its platform
        message id, or None when no usable response came within
        ``response_timeout`` seconds."""
        response = None
        with trio.move_on_after(response_timeout):
            response = await self.channel.request(OutboundReply.to_event(self.event, text))
        if response is None or not response.success or not response.message_id:
            why = "no response" if response is None else (response.error or "no message_id")
            log.info(
                "%s: streaming given up for %s: %s",
                self.channel.connection_id,
                self.event.event_id,
                why,
            )
            return None
        return response.message_id

    async def react(self, command: Command, emoji: str) -> None:
        event = self.event
        reply = OutboundReply(event.message_id, event.platform, reply_target(event), emoji, command)
        await self.channel.send_reply(reply)


def with_notes(notes: Sequence[str], transcript: Transcript, text: str) -> str:
    """``text`` below the router's notes and the session's (``transcript.notes``,
    e.g. an image the agent does not take), each once."""
    lines = [NOTE_PREFIX + n for n in (*notes, *transcript.notes) if n not in text]
    return "\n\n".join([*lines, text]) if lines else text


class _Messages:
    """The platform messages that show one streamed reply."""

    def __init__(self, replier: Replier, response_timeout: float) -> None:
        self.replier = replier
        self.response_timeout = response_timeout
        self.ids: list[str] = []
        self.shown: list[str] = []
        self.broken = False  # a request went unanswered: no more new messages

    async def show(self, text: str, *, final: bool) -> None:
        """Make the messages show ``text``: edit those that change, ask for new
        ones as needed. With ``final``, parts that have no message to edit
        (streaming was given up) go out as plain replies."""
        parts = split_message(text, self.replier.limit) or ["…"]
        for update in message_updates(self.shown, parts):
            if update.index < len(self.ids):
                await self.replier.edit(self.ids[update.index], update.text)
                self.shown[update.index] = update.text
            elif self.broken:
                break
            else:
                message_id = await self.replier.new_message(update.text, self.response_timeout)
                if message_id is None:
                    self.broken = True
                    break
                self.ids.append(message_id)
                self.shown.append(update.text)
        if final and len(parts) > len(self.ids):
            await self.replier.plain_parts(parts[len(self.ids) :])


class _QueueNote:
    """The note a queued message gets at once when the reply is not streamed.

    It goes out as a request, so where the front-end can edit (the response
    carries a message id) it follows the queue ("queued behind 2", then 1,
    then working) and the reply replaces it; where it cannot, the note stays
    and the reply follows it. Nothing here waits for the note: the reply goes
    out as soon as the turn ends, as an edit if the note's id is known by then.
    """

    def __init__(self, replier: Replier, response_timeout: float) -> None:
        self.replier = replier
        self.response_timeout = response_timeout
        self.message_id: str | None = None
        self.shown = ""
        self.done = False  # the reply went out: the note changes no more

    async def follow(self, handle: TurnHandle) -> None:
        """Show the note while the turn waits in the queue; returns once it
        can change no more (the turn started, ended, or the front-end cannot edit)."""
        transcript = handle.transcript
        while not self.done and transcript.end is None:
            seen = transcript.version
            if transcript.queued_position is not None or self.message_id is not None:
                text = render(transcript, final=False)
                if self.message_id is None and not self.shown:
                    self.shown = text
                    self.message_id = await self.replier.new_message(text, self.response_timeout)
                    if self.message_id is None:
                        return  # it cannot be edited: the reply will follow it
                    continue
                if text != self.shown and not self.done and self.message_id is not None:
                    self.shown = text
                    await self.replier.edit(self.message_id, text)
                if transcript.started:
                    return
            await handle.wait_changed(seen)

    async def replace(
        self, end: TurnEnd, transcript: Transcript, compose: Callable[[str], str]
    ) -> LateEdit | None:
        """Send the final reply: in place of the note where it can be edited.
        Returns how late text can edit it (None: it cannot)."""
        self.done = True
        text = compose(render_end(end, transcript))
        message_id = self.message_id
        if message_id is None:
            await self.replier.final(text)
            return None
        parts = split_message(text, self.replier.limit) or ["…"]
        if len(parts) == 1:
            self.replier.finished = True  # handed over with the edit (see Replier.final)
        await self.replier.edit(message_id, parts[0])
        await self.replier.plain_parts(parts[1:-1])
        self.replier.finished = True
        await self.replier.plain_parts(parts[1:][-1:])
        if len(parts) > 1:
            return None  # its last message is a plain one

        async def edit_late(late: str) -> None:
            await self.replier.edit(message_id, compose(with_late(end, transcript, late)))

        return edit_late


async def deliver_turn(
    handle: TurnHandle,
    replier: Replier,
    *,
    streaming: bool,
    edit_interval: float,
    response_timeout: float,
    reactions: bool,
    notes: Sequence[str] = (),
    late_watch: float = LATE_TEXT_SECS,
    on_final: Callable[[], None] = lambda: None,
) -> None:
    """Send the reply of ``handle``'s turn, streamed or plain, with reactions
    if asked; returns once the final text is sent (and the final reaction),
    and the turn's late text was shown: until the session closed the turn,
    at most ``late_watch`` seconds after the end (:func:`_follow_late`).
    ``on_final`` is called once the final reply went out, before that.

    Waits for the turn's end, however long it runs (the session bounds it by
    the hard ceiling). Raises nothing for lost connections: the channel
    reroutes or keeps those replies.
    """

    def compose(text: str) -> str:
        return with_notes(notes, handle.transcript, text)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                show_questions,
                handle,
                replier.channel,
                replier.event,
                response_timeout=response_timeout,
                ask_ids=streaming or replier.channel.frontend != "gateway",
            )
        )
        if reactions:
            nursery.start_soon(_show_reactions, handle, replier, edit_interval)
        if streaming:
            edit = await _stream(handle, replier, compose, edit_interval, response_timeout)
        else:
            note = _QueueNote(replier, response_timeout)
            nursery.start_soon(note.follow, handle)
            end = await handle.result()
            edit = await note.replace(end, handle.transcript, compose)
        on_final()
        await _follow_late(handle, replier, edit, late_watch)


async def _stream(
    handle: TurnHandle,
    replier: Replier,
    compose: Callable[[str], str],
    edit_interval: float,
    response_timeout: float,
) -> LateEdit | None:
    """Stream the reply; returns how late text can edit it (None: it cannot)."""
    transcript = handle.transcript
    throttle = EditThrottle(edit_interval)
    messages = _Messages(replier, response_timeout)
    while not throttle.finished and not messages.broken:
        seen = transcript.version
        end = transcript.end
        if end is not None and not messages.ids:
            messages.broken = True  # ended before anything was shown: plain reply below
            break
        final = end is not None
        text = compose(render_end(end, transcript) if end else render(transcript, final=False))
        decision = throttle.decide(trio.current_time(), seen, text, final=final)
        if isinstance(decision, SendNow):
            await messages.show(decision.text, final=decision.final)
            throttle.sent(trio.current_time())
        elif isinstance(decision, WaitUntil):
            await _until_or_end(handle, decision.when)  # the final text never waits
        elif isinstance(decision, NothingChanged) and not throttle.finished:
            await handle.wait_changed(seen)
    end = await handle.result()
    if not (throttle.finished and not messages.broken):
        await messages.show(compose(render_end(end, transcript)), final=True)
    replier.finished = True
    if messages.broken:
        return None

    async def edit_late(late: str) -> None:
        await messages.show(compose(with_late(end, transcript, late)), final=True)

    return edit_late


def with_late(end: TurnEnd, transcript: Transcript, late: str) -> str:
    """The turn's final text with ``late`` text added where the agent's text ended."""
    return render_end(attrs.evolve(end, text=end.text + late), transcript)


async def _follow_late(
    handle: TurnHandle, replier: Replier, edit: LateEdit | None, watch_secs: float
) -> None:
    """Show the text the agent sends for this turn after its end (late text,
    see :meth:`~broker.reply.TurnHandle.push_late`), until the session says
    no more belongs to it (``transcript.closed``) or ``watch_secs`` passed:
    as an edit of the reply where it can be edited (``edit``), else as a
    short continuation message. Each is logged."""
    transcript = handle.transcript
    shown = ""
    with trio.move_on_after(watch_secs):
        while True:
            seen, late = transcript.version, transcript.late_text
            if late != shown:
                if edit is not None:
                    await edit(late)
                    how = "an edit of the reply"
                else:
                    await replier.plain_parts(
                        split_message("…" + late[len(shown) :], replier.limit)
                    )
                    how = "a continuation"
                log.info(
                    "%s: %d characters of late text for %s shown as %s",
                    handle.thread_key,
                    len(late) - len(shown),
                    replier.event.event_id,
                    how,
                )
                shown = late
            elif transcript.closed:
                return
            else:
                await handle.wait_changed(seen)
    if transcript.late_text != shown:
        log.info(
            "%s: late text for %s came after %.1f s; not shown",
            handle.thread_key,
            replier.event.event_id,
            watch_secs,
        )


async def _until_or_end(handle: TurnHandle, when: float) -> None:
    """Sleep until ``when`` (trio's clock), or less if the turn ends first."""
    with trio.move_on_at(when):
        while handle.transcript.end is None:
            await handle.wait_changed(handle.transcript.version)


async def _show_reactions(handle: TurnHandle, replier: Replier, interval: float) -> None:
    """Keep the reaction on the user's message in step with the turn's state."""
    transcript = handle.transcript
    throttle = EditThrottle(interval)
    shown: str | None = None
    while not throttle.finished:
        seen = transcript.version
        wanted = reaction_for(transcript) or ""
        decision = throttle.decide(
            trio.current_time(), seen, wanted, final=transcript.end is not None
        )
        if isinstance(decision, SendNow):
            for change in reaction_changes(shown, decision.text):
                await replier.react(Command(change.action.value), change.emoji)
            shown = decision.text
        elif isinstance(decision, WaitUntil):
            await trio.sleep_until(decision.when)
        elif not throttle.finished:
            await handle.wait_changed(seen)
