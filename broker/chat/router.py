"""The router: inbound chat events -> the pool, and the replies back.

:class:`Router` is the :class:`~broker.frontends.base.InboundSink` of both
front-ends. For each event, in the event's own task (the transport starts
one per event, so a slow turn or a slow frontend holds up nothing else):

1. **Who may talk** (:func:`ignore_reason`, synchronous). An event is
   *ignored* — no reply at all, only a log line — when it is not a
   ``message``, when its channel or sender is not on ``[router]
   allowed_channels`` / ``allowed_users`` (empty lists allow all; an entry
   is an id or ``platform:id``), when the sender is a bot and
   ``allow_bots`` is false, or when its platform is in
   ``mention_required_platforms``, it comes from a group channel outside a
   thread, and it mentions none of ``bot_names`` (in ``mentions`` or as
   ``@name`` in the text). Staying silent is deliberate: answering strangers,
   bots or chatter not addressed to the bot would be noise or a loop.
2. **Broker commands** (:mod:`broker.chat.commands`): ``/reset``, ``/cancel``,
   ``/status``, ``/model``, ``/mode``, ``/schedules``, ``/help`` are answered by
   the broker, and so are answers to the agent's questions (``/allow``,
   ``/deny``, ``/answer``: :mod:`broker.chat.questions`), typed or sent by a button.
   Any other ``/word`` goes to the agent as text (agents have their own).
3. **The prompt** (:func:`~broker.chat.prompt.build_prompt`, synchronous): text,
   sender context and attachments, or a refusal that reaches no agent.
4. **The turn**: ``pool.submit`` under the thread key
   ``{platform}:{thread_id or channel.id}``, then :func:`~broker.chat.delivery.deliver_turn`
   streams or sends the reply (``[server]`` / ``[gateway] streaming`` by the
   channel's front-end).

Every event that is not ignored ends in exactly one final reply or one
explicit error reply: refusals (busy, pool full, crash loop, shutdown) and
failures (agent death, time limit) arrive as the turn's end and are rendered
like any reply; an unexpected exception in the router becomes an error
reply; and if the event's task is cancelled (the transport stopping) before
the final reply went out, a short shutdown reply is still handed to the
channel, shielded and bounded, so a durable outbox can keep it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import attrs
import trio

from broker import sentences
from broker.chat.commands import CommandContext, parse_command, run_command
from broker.chat.delivery import Replier, deliver_turn, with_notes
from broker.chat.journal import Duplicate, EventJournal
from broker.chat.present import render_end
from broker.chat.prompt import Refusal, build_prompt
from broker.chat.questions import ANSWER_COMMANDS, answer_text, parse_answer
from broker.chat.routes import choose_route, switch_refusal
from broker.chat.schedules import ScheduleSource
from broker.config import BrokerConfig, RouterConfig
from broker.frontends.base import RESPONSE_TIMEOUT_SECS, ReplyChannel, channel_capabilities
from broker.frontends.wire import InboundEvent, thread_key
from broker.reply import Person
from broker.sentences import SHUTDOWN_REPLY
from broker.sessions.pool import Pool
from broker.sessions.questions import Accepted, Answerer

log = logging.getLogger(__name__)

DIRECT_CHANNEL_TYPES = frozenset({"direct", "dm", "private", "im", "p2p", "personal"})
COMMAND_TIMEOUT_SECS = 30.0
CANCELLED_REPLY_GRACE_SECS = 1.0


# --- who may talk ------------------------------------------------------------------------


def _listed(entries: Iterable[str], platform: str, value: str) -> bool:
    return any(entry in (value, f"{platform}:{value}") for entry in entries)


def _names(bot_names: Iterable[str]) -> list[str]:
    return [n.strip().lstrip("@").lower() for n in bot_names if n.strip().lstrip("@")]


def _mention_pattern(name: str) -> re.Pattern[str]:
    # "@name" as a word, or Telegram's "/command@name".
    return re.compile(rf"(?:^/\w+|(?<![\w@]))@{re.escape(name)}(?![\w-])", re.IGNORECASE)


def mentions_bot(event: InboundEvent, bot_names: Iterable[str]) -> bool:
    """Whether ``event`` mentions one of ``bot_names`` (with or without ``@``,
    ignoring case), in its ``mentions`` or as ``@name`` in its text."""
    names = _names(bot_names)
    if any(m.strip().lstrip("@").lower() in names for m in event.mentions):
        return True
    text = event.content.text.strip()
    return any(_mention_pattern(name).search(text) for name in names)


def ignore_reason(event: InboundEvent, config: RouterConfig) -> str | None:
    """Why ``event`` gets no reply at all, or None when it is answered."""
    if event.event_type == "button":
        command = parse_command(strip_leading_mentions(event.content.text, config.bot_names))
        if command is None:
            return "a button whose command is not the broker's"
    elif event.event_type != "message":
        return f"event type {event.event_type!r} is not a message"
    platform = event.platform
    if config.allowed_channels and not _listed(config.allowed_channels, platform, event.channel.id):
        return f"channel {event.channel.id} is not in [router] allowed_channels"
    if config.allowed_users and not _listed(config.allowed_users, platform, event.sender.id):
        return f"user {event.sender.id} is not in [router] allowed_users"
    if event.sender.is_bot and not config.allow_bots:
        return f"sender {event.sender.id} is a bot and [router] allow_bots is false"
    mention_platforms = {p.lower() for p in config.mention_required_platforms}
    if (
        platform.lower() in mention_platforms
        and event.event_type != "button"
        and event.channel.type.lower() not in DIRECT_CHANNEL_TYPES
        and not event.channel.thread_id
        and not mentions_bot(event, config.bot_names)
    ):
        if not _names(config.bot_names):
            return "a mention is required on this platform but [router] bot_names is empty"
        return "a group message without a thread that does not mention the bot"
    return None


def strip_leading_mentions(text: str, bot_names: Iterable[str]) -> str:
    """``text`` without mentions of the bot at its start (``@bot, do X`` -> ``do X``)."""
    names = _names(bot_names)
    if not names:
        return text.strip()
    alternatives = "|".join(re.escape(n) for n in names)
    leading = re.compile(rf"^\s*@(?:{alternatives})(?![\w-])[:,]?\s*", re.IGNORECASE)
    previous = None
    while previous != text:
        previous, text = text, leading.sub("", text, count=1)
    return text.strip()


# --- the router ----------------------------------------------------------------------------


def streaming_enabled(config: BrokerConfig, frontend: str) -> bool:
    """The ``streaming`` setting of the front-end a channel belongs to; Discord
    always streams (it edits one message, paced by ``[render] edit_interval_ms``)."""
    if frontend == "server":
        return config.server.streaming
    if frontend == "gateway":
        return config.gateway.streaming
    return frontend in ("discord", "slack")  # both edit their messages: always streamed


def streams(config: BrokerConfig, channel: ReplyChannel, platform: str) -> bool:
    """Stream the reply: the front-end's ``streaming`` is on, and the peer did
    not say (in a gateway's ``hello``) that the platform cannot edit or does
    not stream."""
    caps = channel_capabilities(channel, platform)
    return streaming_enabled(config, channel.frontend) and (caps is None or caps.streams)


def _leaf_name(exc: BaseException) -> str:
    """The type name of the first real error in ``exc`` (nurseries wrap errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


class Router:
    """Routes events to the pool and replies back; see the module docstring.

    ``response_timeout`` is how long a streamed reply waits for the response
    to its first message (the protocol's 5 s); ``command_timeout`` bounds
    what ``/model`` and ``/mode`` wait for the agent. ``journal`` answers
    each event id once (default: in memory only; the service gives it the
    store, so the window and the restart notice survive a crash). ``schedules`` is
    what ``/schedules`` lists.
    """

    def __init__(
        self,
        pool: Pool,
        config: BrokerConfig,
        *,
        response_timeout: float = RESPONSE_TIMEOUT_SECS,
        command_timeout: float = COMMAND_TIMEOUT_SECS,
        journal: EventJournal | None = None,
        schedules: ScheduleSource | None = None,
    ) -> None:
        self.pool = pool
        self.schedules = schedules
        self.config = config
        self.journal = (
            journal if journal is not None else EventJournal(None, config.router.dedup_window_secs)
        )
        self.response_timeout = response_timeout
        self.command_timeout = command_timeout
        self.events_handled = 0
        self.events_ignored = 0

    def update_config(self, config: BrokerConfig) -> None:
        """Use ``config`` (a SIGHUP reload) for events from now on: allowlists,
        mention gating, prompt limits, streaming, edit interval, reactions.
        Events already being handled keep the config they started with."""
        self.config = config
        self.journal.window = config.router.dedup_window_secs

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        """Handle one event to its end: ignore it, or send exactly one final
        (or error) reply. Waits for the whole turn when it goes to the agent.
        Raises nothing but cancellation."""
        config = self.config
        why = ignore_reason(event, config.router)
        if why is not None:
            self.events_ignored += 1
            log.info("ignored %s from %s: %s", event.event_id, channel.connection_id, why)
            return
        self.events_handled += 1
        replier = Replier(event, channel)
        seen = self.journal.begin(event, channel.frontend)
        if isinstance(seen, Duplicate):
            await self._answer_duplicate(seen, replier)
            return
        final = SHUTDOWN_REPLY
        journaled = False

        def answered(text: str) -> None:
            """The final reply went out: a second delivery gets it from now on,
            even while late text may still be added to it."""
            nonlocal journaled
            journaled = True
            self.journal.finish(seen.key, text)

        try:
            final = await self._handle(event, replier, config, answered)
        except Exception as exc:
            log.exception("handling %s from %s failed", event.event_id, channel.connection_id)
            if not replier.finished:
                final = sentences.internal_error(_leaf_name(exc))
                await replier.final(final)
        finally:
            if not replier.finished:
                final = SHUTDOWN_REPLY
                with trio.move_on_after(CANCELLED_REPLY_GRACE_SECS) as scope:
                    scope.shield = True
                    await replier.final(SHUTDOWN_REPLY)
            if not journaled:
                self.journal.finish(seen.key, final)

    async def _answer_duplicate(self, seen: Duplicate, replier: Replier) -> None:
        """A second delivery of an event: the first's final reply again when it is
        done, nothing while it is in flight (its reply is on its way)."""
        event, connection = replier.event, replier.channel.connection_id
        if not seen.done:
            log.info("%s from %s again while in flight: nothing new", event.event_id, connection)
            return
        final = await self.journal.final_reply(seen)
        log.info("%s from %s again: its reply again", event.event_id, connection)
        if final:  # "": it was answered by an edit (a button), not a reply
            await replier.final(final)

    async def _handle(
        self,
        event: InboundEvent,
        replier: Replier,
        config: BrokerConfig,
        answered: Callable[[str], None],
    ) -> str:
        """Answer ``event``; returns the text of its final reply. A turn's reply
        calls ``answered`` with it as soon as it went out (its late text may
        follow for a moment)."""
        key = thread_key(event)
        route = choose_route(config, event)
        text = strip_leading_mentions(event.content.text, config.router.bot_names)
        command = parse_command(text)
        if command is not None and command.name in ANSWER_COMMANDS:
            answer = parse_answer(command)
            if isinstance(answer, str):
                await replier.final(answer)
                return answer
            sender = event.sender
            answerer = Answerer(Person(sender.id, sender.name), event.platform, sender.is_bot)
            if event.event_type == "button":
                answer = attrs.evolve(answer, message_id=event.message_id)
            decision = self.pool.answer(key, answer, answerer)
            if event.event_type == "button" and isinstance(decision, Accepted):
                replier.finished = True  # the question's message is edited to show it
                return ""
            await replier.final(answer_text(decision))
            return answer_text(decision)
        if command is not None:
            log.info("%s: /%s from %s", key, command.name, event.sender.id)
            answer = sentences.command_timed_out(command.name, self.command_timeout)
            context = CommandContext(route, switch_refusal(config, route, event))
            with trio.move_on_after(self.command_timeout):
                answer = await run_command(
                    command, self.pool, key, context, schedules=self.schedules
                )
            await replier.final(answer)
            return answer
        plan = build_prompt(event, text, config.prompt)
        if isinstance(plan, Refusal):
            await replier.final(plan.text)
            return plan.text
        handle = self.pool.submit(key, plan.prompt, profile=route.profile)

        def final_text() -> str:
            end = handle.transcript.end
            assert end is not None
            return with_notes(plan.notes, handle.transcript, render_end(end, handle.transcript))

        await deliver_turn(
            handle,
            replier,
            streaming=streams(config, replier.channel, event.platform),
            edit_interval=config.render.edit_interval_ms / 1000,
            response_timeout=self.response_timeout,
            reactions=config.reactions.enabled,
            notes=plan.notes,
            on_final=lambda: answered(final_text()),
        )
        return final_text()
