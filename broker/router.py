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
2. **Broker commands** (:mod:`broker.commands`): ``/reset``, ``/cancel``,
   ``/status``, ``/model``, ``/mode``, ``/help`` are answered by the broker.
   Any other ``/word`` goes to the agent as text (agents have their own).
3. **The prompt** (:func:`build_prompt`, synchronous): the text without a
   leading mention of the bot, the sender as ``Prompt.context`` when
   ``[prompt] sender_context`` is on, ``image`` attachments as images,
   ``text_file`` attachments decoded (UTF-8, bad bytes replaced) and appended
   as fenced blocks. An attachment over ``max_attachment_bytes``, of an
   unknown type or with undecodable data is left out with a note in the
   reply; a message over ``max_message_bytes`` in all, or with nothing left
   to send, gets an error reply and reaches no agent.
4. **The turn**: ``pool.submit`` under the thread key
   ``{platform}:{thread_id or channel.id}``, then :func:`~broker.delivery.deliver_turn`
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

import base64
import binascii
import logging
import re
from collections.abc import Iterable

import attrs
import trio

from broker.commands import parse_command, run_command
from broker.config import BrokerConfig, PromptConfig, RouterConfig
from broker.delivery import Replier, deliver_turn
from broker.frontends.base import RESPONSE_TIMEOUT_SECS, ReplyChannel
from broker.frontends.wire import InboundEvent, thread_key
from broker.pool import Pool
from broker.reply import Image, Prompt

log = logging.getLogger(__name__)

DIRECT_CHANNEL_TYPES = frozenset({"direct", "dm", "private", "im", "p2p", "personal"})
COMMAND_TIMEOUT_SECS = 30.0
CANCELLED_REPLY_GRACE_SECS = 1.0
SHUTDOWN_REPLY = (
    "🔌 The broker stopped before this message was answered; send it again once it is back."
)


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
    if event.event_type != "message":
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


# --- the prompt ----------------------------------------------------------------------------


@attrs.frozen
class PromptPlan:
    """A prompt ready for the pool, and notes for the user about what was left out."""

    prompt: Prompt
    notes: tuple[str, ...] = ()


@attrs.frozen
class Refusal:
    """The message cannot go to the agent; ``text`` is the error reply."""

    text: str


def sender_context(event: InboundEvent) -> str:
    sender = event.sender
    return (
        f"[Message from {sender.display_name} (username {sender.name}, id {sender.id}) "
        f"on {event.platform}]"
    )


def size_phrase(n: int) -> str:
    """``2048`` -> ``2 KiB``; ``5242880`` -> ``5 MiB``; ``300`` -> ``300 bytes``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MiB"
    if n >= 1024:
        return f"{n / 1024:.3g} KiB"
    return f"{n} bytes"


def fenced(name: str, content: str) -> str:
    """``content`` in a fenced block (longer fence than any run of backticks in it)."""
    fence = "```"
    while fence in content:
        fence += "`"
    return f"{name}:\n{fence}\n{content.rstrip(chr(10))}\n{fence}"


def build_prompt(event: InboundEvent, text: str, config: PromptConfig) -> PromptPlan | Refusal:
    """The prompt for ``event`` whose text (mention already stripped) is ``text``."""
    notes: list[str] = []
    images: list[Image] = []
    files: list[str] = []
    total = len(event.content.text.encode())
    for number, attachment in enumerate(event.content.attachments, 1):
        name = attachment.filename or f"attachment {number}"
        if attachment.type not in ("image", "text_file"):
            notes.append(
                f"{name} was not passed to the agent: "
                f"{attachment.type} attachments are not supported."
            )
            continue
        try:
            data = base64.b64decode(attachment.data, validate=True)
        except (binascii.Error, ValueError):
            notes.append(f"{name} was not passed to the agent: its data is not valid base64.")
            continue
        total += len(data)
        if len(data) > config.max_attachment_bytes:
            notes.append(
                f"{name} was not passed to the agent: it is {size_phrase(len(data))}, over the "
                f"limit of {size_phrase(config.max_attachment_bytes)} per attachment."
            )
        elif attachment.type == "image":
            mime = attachment.mime_type or "image/png"
            images.append(Image(base64.b64encode(data).decode(), mime, attachment.filename))
        else:
            files.append(fenced(name, data.decode("utf-8", errors="replace")))
    if total > config.max_message_bytes:
        return Refusal(
            f"⚠️ This message is too large: {size_phrase(total)} with its attachments, over the "
            f"limit of {size_phrase(config.max_message_bytes)}. Nothing was sent to the agent; "
            "send smaller or fewer files."
        )
    prompt_text = "\n\n".join(part for part in (text, *files) if part)
    if not prompt_text.strip() and not images:
        why = " ".join(notes) if notes else "It has no text and no attachments."
        return Refusal(f"⚠️ Nothing to send to the agent. {why}")
    context = sender_context(event) if config.sender_context else None
    return PromptPlan(Prompt(prompt_text, tuple(images), context), tuple(notes))


# --- the router ----------------------------------------------------------------------------


def streaming_enabled(config: BrokerConfig, frontend: str) -> bool:
    """The ``streaming`` setting of the front-end a channel belongs to."""
    if frontend == "server":
        return config.server.streaming
    if frontend == "gateway":
        return config.gateway.streaming
    return False


def _leaf_name(exc: BaseException) -> str:
    """The type name of the first real error in ``exc`` (nurseries wrap errors in groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


class Router:
    """Routes events to the pool and replies back; see the module docstring.

    ``response_timeout`` is how long a streamed reply waits for the response
    to its first message (the protocol's 5 s); ``command_timeout`` bounds
    what ``/model`` and ``/mode`` wait for the agent.
    """

    def __init__(
        self,
        pool: Pool,
        config: BrokerConfig,
        *,
        response_timeout: float = RESPONSE_TIMEOUT_SECS,
        command_timeout: float = COMMAND_TIMEOUT_SECS,
    ) -> None:
        self.pool = pool
        self.config = config
        self.response_timeout = response_timeout
        self.command_timeout = command_timeout
        self.events_handled = 0
        self.events_ignored = 0

    def update_config(self, config: BrokerConfig) -> None:
        """Use ``config`` (a SIGHUP reload) for events from now on: allowlists,
        mention gating, prompt limits, streaming, edit interval, reactions.
        Events already being handled keep the config they started with."""
        self.config = config

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
        try:
            await self._handle(event, replier, config)
        except Exception as exc:
            log.exception("handling %s from %s failed", event.event_id, channel.connection_id)
            if not replier.finished:
                await replier.final(
                    f"⚠️ Internal error while handling this message ({_leaf_name(exc)}). "
                    "It was logged; please try again."
                )
        finally:
            if not replier.finished:
                with trio.move_on_after(CANCELLED_REPLY_GRACE_SECS) as scope:
                    scope.shield = True
                    await replier.final(SHUTDOWN_REPLY)

    async def _handle(self, event: InboundEvent, replier: Replier, config: BrokerConfig) -> None:
        key = thread_key(event)
        text = strip_leading_mentions(event.content.text, config.router.bot_names)
        command = parse_command(text)
        if command is not None:
            log.info("%s: /%s from %s", key, command.name, event.sender.id)
            answer = await run_command(command, self.pool, key, timeout=self.command_timeout)
            await replier.final(answer)
            return
        plan = build_prompt(event, text, config.prompt)
        if isinstance(plan, Refusal):
            await replier.final(plan.text)
            return
        handle = self.pool.submit(key, plan.prompt)
        await deliver_turn(
            handle,
            replier,
            streaming=streaming_enabled(config, replier.channel.frontend),
            edit_interval=config.render.edit_interval_ms / 1000,
            response_timeout=self.response_timeout,
            reactions=config.reactions.enabled,
            notes=plan.notes,
        )
