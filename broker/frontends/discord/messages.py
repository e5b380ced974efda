"""Discord payloads <-> the broker's events and replies. Synchronous, no I/O.

Inbound: :func:`classify` decides what a ``MESSAGE_CREATE`` is to the broker —
skipped (its own, another bot's, a system message, another guild, chatter that
does not mention the bot) or a turn in a conversation, and whether the
conversation still needs a thread. :func:`message_event` and
:func:`interaction_event` build the :class:`~broker.frontends.wire.InboundEvent`.

Outbound: :func:`components` renders reply buttons as action rows,
:func:`message_nonce` gives a message the nonce that makes a resend create it
once, :func:`thread_name` names a new thread.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from broker.frontends.wire import (
    Attachment,
    Button,
    ButtonStyle,
    Channel,
    Content,
    InboundEvent,
    OutboundReply,
    Sender,
)

PLATFORM = "discord"
USER_MESSAGE_TYPES = frozenset({0, 19})  # DEFAULT, REPLY; the rest are system messages
THREAD_CHANNEL_TYPES = frozenset({10, 11, 12})
DM_CHANNEL_TYPES = frozenset({1, 3})
EPHEMERAL = 1 << 6
MAX_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
CUSTOM_ID_MAX = 100
LABEL_MAX = 80
NONCE_MAX = 25
THREAD_NAME_MAX = 100
THREAD_ARCHIVE_MINUTES = 1440

_STYLES = {
    ButtonStyle.PRIMARY: 1,
    ButtonStyle.SECONDARY: 2,
    ButtonStyle.SUCCESS: 3,
    ButtonStyle.DANGER: 4,
}


@attrs.frozen
class Skip:
    """The message gets no answer; ``reason`` is logged."""

    reason: str


@attrs.frozen
class Turn:
    """The message is for the broker.

    ``channel_id`` is the conversation's channel (a DM, a thread), or, when
    ``start_thread``, the channel the thread is to be started in from the message.
    """

    channel_id: str
    kind: str  # "direct", "thread" or "channel"
    text: str
    start_thread: bool = False


@attrs.frozen
class Filters:
    """What decides whether a message is answered (``[discord]`` and ``[router]``)."""

    bot_id: str
    mention_required: bool = True
    allow_bots: bool = False
    allowed_guilds: frozenset[str] = frozenset()


def obj(value: object) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (payloads are read leniently)."""
    return value if isinstance(value, dict) else {}


def _mention_re(bot_id: str) -> re.Pattern[str]:
    return re.compile(rf"<@!?{re.escape(bot_id)}>")


def mentions(d: Mapping[str, Any], bot_id: str) -> bool:
    listed = d.get("mentions")
    if isinstance(listed, list) and any(
        isinstance(u, dict) and u.get("id") == bot_id for u in listed
    ):
        return True
    return bool(_mention_re(bot_id).search(str(d.get("content") or "")))


def strip_mention(text: str, bot_id: str) -> str:
    return _mention_re(bot_id).sub("", text).strip()


def classify(d: Mapping[str, Any], filters: Filters, *, own_thread: bool) -> Skip | Turn:
    """What MESSAGE_CREATE ``d`` is to the broker; ``own_thread``: its channel is a
    thread the bot started."""
    author = obj(d.get("author"))
    if author.get("id") == filters.bot_id:
        return Skip("the bot's own message")
    if d.get("type", 0) not in USER_MESSAGE_TYPES:
        return Skip(f"system message (type {d.get('type')})")
    if author.get("system"):
        return Skip("a Discord system message")
    if (author.get("bot") or d.get("webhook_id")) and not filters.allow_bots:
        return Skip("from a bot and [router] allow_bots is false")
    guild_id = d.get("guild_id")
    if guild_id and filters.allowed_guilds and str(guild_id) not in filters.allowed_guilds:
        return Skip(f"guild {guild_id} is not in [discord] allowed_guilds")
    channel_id = str(d.get("channel_id") or "")
    text = strip_mention(str(d.get("content") or ""), filters.bot_id)
    if not guild_id:
        return Turn(channel_id, "direct", text)
    if own_thread:
        return Turn(channel_id, "thread", text)
    mentioned = mentions(d, filters.bot_id)
    if filters.mention_required and not mentioned:
        return Skip("a guild message that does not mention the bot")
    if d.get("channel_type") in THREAD_CHANNEL_TYPES:
        return Turn(channel_id, "thread", text)  # someone else's thread: talk in it
    return Turn(channel_id, "channel", text, start_thread=True)


def sender(author: Mapping[str, Any]) -> Sender:
    username = str(author.get("username") or author.get("id") or "unknown")
    return Sender(
        str(author.get("id") or ""),
        username,
        str(author.get("global_name") or username),
        bool(author.get("bot")),
    )


def attachment_kind(item: Mapping[str, Any]) -> str:
    """``image``, ``text_file`` or the media type the router will decline."""
    media = str(item.get("content_type") or "").split(";")[0].strip().lower()
    if media.startswith("image/"):
        return "image"
    if media.startswith("text/") or media in ("application/json", "application/xml", ""):
        return "text_file"
    return media


def message_event(
    d: Mapping[str, Any],
    turn: Turn,
    conversation_id: str,
    attachments: tuple[Attachment, ...],
    *,
    bot_name: str = "",
) -> InboundEvent:
    """The event for MESSAGE_CREATE ``d`` in conversation ``conversation_id``
    (the thread or DM channel: the thread key is ``discord:<conversation_id>``).
    ``bot_name`` is listed in ``mentions`` when the message mentioned the bot."""
    author = obj(d.get("author"))
    kind = "direct" if turn.kind == "direct" else "thread"
    return InboundEvent(
        event_id=f"discord-{d.get('id')}",
        timestamp=str(d.get("timestamp") or ""),
        platform=PLATFORM,
        channel=Channel(
            conversation_id,
            kind,
            None if kind == "direct" else conversation_id,
            str(d.get("guild_id")) if d.get("guild_id") else None,
        ),
        sender=sender(author),
        content=Content("text", turn.text, attachments),
        message_id=str(d.get("id") or ""),
        mentions=(bot_name,) if bot_name else (),
    )


def command_text(data: Mapping[str, Any]) -> str:
    """``/name sub value ...`` for an application command's ``data``."""
    words = [f"/{data.get('name', '')}"]

    def walk(options: object) -> None:
        if not isinstance(options, list):
            return
        for option in options:
            if not isinstance(option, dict):
                continue
            if "value" in option:
                words.append(str(option["value"]))
            else:
                words.append(str(option.get("name", "")))
                walk(option.get("options"))

    walk(data.get("options"))
    return " ".join(w for w in words if w)


def interaction_event(d: Mapping[str, Any], text: str, event_type: str) -> InboundEvent:
    """The event for INTERACTION_CREATE ``d`` whose text is ``text``: a ``button``
    event (``message_id`` = the message the button is on) or a typed ``message``."""
    member = obj(d.get("member"))
    who = obj(member.get("user") or d.get("user"))
    channel_id = str(d.get("channel_id") or "")
    channel = obj(d.get("channel"))
    direct = not d.get("guild_id")
    message = obj(d.get("message"))
    in_thread = channel.get("type") in THREAD_CHANNEL_TYPES
    return InboundEvent(
        event_id=f"discord-i{d.get('id')}",
        timestamp="",
        platform=PLATFORM,
        channel=Channel(
            channel_id,
            "direct" if direct else ("thread" if in_thread else "group"),
            channel_id if in_thread else None,
            None if direct else str(d.get("guild_id")),
        ),
        sender=sender(who),
        content=Content("text", text),
        message_id=str(message.get("id") or d.get("id") or ""),
        event_type=event_type,
    )


def custom_id(command: str) -> str:
    """The button id for ``command``: the command itself when it fits, else a hash."""
    candidate = f"cmd:{command}"
    if len(candidate) <= CUSTOM_ID_MAX:
        return candidate
    return "h:" + hashlib.sha256(command.encode()).hexdigest()[:40]


def components(buttons: Iterable[Button], remember: Callable[[str, str], None]) -> list[Any]:
    """Action rows of buttons (5 per row, 5 rows; more are left out: the text says
    how to answer by typing). ``remember(custom_id, command)`` keeps the mapping."""
    rows: list[dict[str, Any]] = []
    for index, button in enumerate(buttons):
        if index >= MAX_ROWS * MAX_BUTTONS_PER_ROW:
            break
        if index % MAX_BUTTONS_PER_ROW == 0:
            rows.append({"type": 1, "components": []})
        identifier = custom_id(button.command)
        remember(identifier, button.command)
        rows[-1]["components"].append(
            {
                "type": 2,
                "style": _STYLES[button.style],
                "label": button.label[:LABEL_MAX] or button.command[:LABEL_MAX],
                "custom_id": identifier,
            }
        )
    return rows


def message_nonce(reply: OutboundReply, part: int = 0) -> str:
    """A nonce (25 characters) that is the same for every resend of ``reply``, so
    Discord creates its message once (``enforce_nonce``)."""
    key = f"{reply.reply_to}\0{reply.channel.id}\0{part}\0{reply.text}"
    return hashlib.sha256(key.encode()).hexdigest()[:NONCE_MAX]


def thread_name(text: str) -> str:
    """A thread's name from the message that starts it (1-100 characters)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"\s+", " ", first)
    if not first:
        return "conversation"
    return first if len(first) <= THREAD_NAME_MAX else first[: THREAD_NAME_MAX - 1] + "…"
