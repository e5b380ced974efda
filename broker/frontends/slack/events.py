"""Slack's events read into inbound events: which messages the broker answers.

Synchronous and free of I/O; the adapter feeds it each envelope's payload.

* ``app_mention`` in a channel starts a conversation in the mention's thread
  (``thread_ts`` = the mention's own ``ts`` when it is not in a thread yet).
* ``message`` in a thread the broker is in needs no mention; elsewhere in a
  channel it needs one when ``mention_required`` (the default). A direct
  message (``channel_type`` ``im``) always counts, threaded by its
  ``thread_ts`` where it has one.
* Ignored: the bot's own messages (its user id or bot id, from
  ``auth.test``), every subtype but a plain message, ``file_share``,
  ``thread_broadcast`` and ``bot_message`` (``message_changed``,
  ``message_deleted``, joins...), and an event already seen: a redelivery
  (same ``event_id``) or the same message arriving both as ``app_mention``
  and as ``message``.
* Other bots are passed on with ``is_bot`` set; the router drops them unless
  ``[router] allow_bots``.

The thread key comes out as ``slack:<channel>:<thread_ts>``: the event's
``channel.id`` is the Slack channel and its ``thread_id`` is
``<channel>:<thread_ts>`` (:func:`thread_id` / :func:`split_thread_id`).

Text: the leading ``<@bot>`` mention is removed and ``&lt; &gt; &amp;``
unescaped. Because Slack's client takes a leading ``/`` for its own slash
commands, ``!cancel`` is read as ``/cancel``, and a mention followed by just a
broker command word (``@bot cancel``, ``@bot model list``, ``@bot allow 3``) as that
command.
"""

from __future__ import annotations

import collections
import datetime
import re
from collections.abc import Iterable
from typing import Any

import attrs

from broker.frontends.wire import Channel, Content, InboundEvent, Sender

PLATFORM = "slack"
ANSWERED_SUBTYPES = frozenset({"file_share", "thread_broadcast", "bot_message"})
SEEN_CAPACITY = 10_000
THREADS_CAPACITY = 50_000
# Commands that take words after them; the others are read from a bare word only.
COMMANDS_WITH_ARGS = frozenset({"model", "mode", "allow", "deny", "answer"})

Json = dict[str, Any]


@attrs.frozen
class BotIdentity:
    """Who the broker is in this workspace, from ``auth.test``."""

    user_id: str
    bot_id: str


@attrs.frozen
class FileRef:
    """A file shared with a message, to download with the bot token."""

    name: str
    mimetype: str
    size: int | None
    url: str


@attrs.frozen
class Incoming:
    """A message to answer; its files still to be downloaded."""

    event: InboundEvent
    files: tuple[FileRef, ...] = ()


@attrs.frozen
class Ignored:
    reason: str


def thread_id(channel: str, thread_ts: str) -> str:
    return f"{channel}:{thread_ts}"


def split_thread_id(channel: str, value: str | None) -> str | None:
    """The ``thread_ts`` inside an event's ``thread_id`` (None: no thread)."""
    if not value:
        return None
    prefix, sep, ts = value.partition(":")
    return ts if sep and prefix == channel and ts else None


class Seen:
    """A bounded set of keys already handled; the oldest are forgotten first."""

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        self.capacity = capacity
        self._keys: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> bool:
        """Record ``key``; False when it was there already."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


def unescape(text: str) -> str:
    """Slack escapes ``&``, ``<`` and ``>`` in message text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def command_text(text: str, commands: Iterable[str], *, mentioned: bool) -> str:
    """``!word ...`` as ``/word ...``; after a mention, a bare broker command
    word (``cancel``; ``model``, ``mode``, ``allow``, ``deny``, ``answer`` with
    their words) as that command."""
    stripped = text.strip()
    if stripped.startswith("!") and len(stripped) > 1 and not stripped[1].isspace():
        return "/" + stripped[1:]
    if mentioned:
        first, _, rest = stripped.partition(" ")
        word = first.lower()
        if word in commands and (not rest.strip() or word in COMMANDS_WITH_ARGS):
            return f"/{word} {rest.strip()}".strip()
    return text


def _iso(ts: str) -> str:
    try:
        seconds = float(ts)
    except ValueError:
        seconds = 0.0
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _files(raw: object) -> tuple[FileRef, ...]:
    refs = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict):
            continue
        url = item.get("url_private_download") or item.get("url_private")
        if not isinstance(url, str) or not url:
            continue
        size = item.get("size")
        refs.append(
            FileRef(
                str(item.get("name") or item.get("title") or "file"),
                str(item.get("mimetype") or ""),
                size if isinstance(size, int) else None,
                url,
            )
        )
    return tuple(refs)


class Conversations:
    """The threads the broker is in, and how it reads events; see the module docstring.

    ``commands`` are the broker's command names (for ``@bot cancel``).
    """

    def __init__(
        self,
        bot: BotIdentity,
        *,
        mention_required: bool = True,
        commands: Iterable[str] = (),
        capacity: int = THREADS_CAPACITY,
    ) -> None:
        self.bot = bot
        self.mention_required = mention_required
        self.commands = frozenset(c.lower() for c in commands)
        self.threads = Seen(capacity)  # "channel:thread_ts" of conversations
        self.seen = Seen()
        self._mention = re.compile(rf"^\s*<@{re.escape(bot.user_id)}(?:\|[^>]*)?>[:,]?\s*")

    def join(self, channel: str, thread_ts: str) -> None:
        """Count the thread as one the broker is in."""
        self.threads.add(thread_id(channel, thread_ts))

    def read_event(self, payload: Json) -> Incoming | Ignored:
        """What to do with an ``events_api`` envelope's payload."""
        if payload.get("type") != "event_callback":
            return Ignored(f"payload type {payload.get('type')!r}")
        event = payload.get("event")
        if not isinstance(event, dict):
            return Ignored("no event")
        kind = event.get("type")
        if kind not in ("app_mention", "message"):
            return Ignored(f"event type {kind!r}")
        event_id = str(payload.get("event_id") or "")
        if event_id and not self.seen.add(f"event:{event_id}"):
            return Ignored(f"event {event_id} was already handled (a redelivery)")
        subtype = event.get("subtype")
        if subtype is not None and subtype not in ANSWERED_SUBTYPES:
            return Ignored(f"message subtype {subtype!r}")
        user = str(event.get("user") or "")
        bot_id = str(event.get("bot_id") or "")
        if user == self.bot.user_id or (bot_id and bot_id == self.bot.bot_id):
            return Ignored("the broker's own message")
        channel = event.get("channel")
        ts = event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str) or not channel or not ts:
            return Ignored("no channel or ts")
        text = str(event.get("text") or "")
        mentioned = kind == "app_mention" or f"<@{self.bot.user_id}" in text
        direct = event.get("channel_type") == "im" or (kind == "message" and channel[:1] == "D")
        raw_thread = event.get("thread_ts")
        in_thread = raw_thread if isinstance(raw_thread, str) and raw_thread else None
        if direct:
            thread = in_thread
            channel_type = "im"
        else:
            thread = in_thread or ts
            channel_type = "group" if event.get("channel_type") in ("group", "mpim") else "channel"
            known = in_thread is not None and thread_id(channel, in_thread) in self.threads
            if not (mentioned or known or not self.mention_required):
                return Ignored("a channel message that does not mention the bot")
        if not self.seen.add(f"message:{channel}:{ts}"):
            return Ignored(f"message {channel}/{ts} was already handled")
        if thread is not None:
            self.join(channel, thread)
        body = unescape(self._mention.sub("", text, count=1))
        body = command_text(body, self.commands, mentioned=mentioned)
        sender_id = user or bot_id or "unknown"
        inbound = InboundEvent(
            event_id=event_id or f"{channel}-{ts}",
            timestamp=_iso(ts),
            platform=PLATFORM,
            channel=Channel(channel, channel_type, thread_id(channel, thread) if thread else None),
            sender=Sender(
                sender_id, sender_id, sender_id, bool(bot_id) or subtype == "bot_message"
            ),
            content=Content("text", body),
            message_id=ts,
            mentions=(self.bot.user_id,) if mentioned else (),
        )
        return Incoming(inbound, _files(event.get("files")))

    def read_action(self, payload: Json) -> list[InboundEvent] | Ignored:
        """The button clicks of an ``interactive`` envelope's payload, each as a
        ``button`` event whose text is the button's value (its command)."""
        if payload.get("type") != "block_actions":
            return Ignored(f"interactive payload type {payload.get('type')!r}")
        container = payload.get("container")
        container = container if isinstance(container, dict) else {}
        message = payload.get("message")
        message = message if isinstance(message, dict) else {}
        user = payload.get("user")
        user_id = str(user.get("id") or "") if isinstance(user, dict) else ""
        name = user_id  # as in message events, which carry no user name
        channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
        message_ts = container.get("message_ts") or message.get("ts")
        if not isinstance(channel, str) or not isinstance(message_ts, str) or not user_id:
            return Ignored("a click without channel, message or user")
        thread = container.get("thread_ts") or message.get("thread_ts")
        if not thread and channel[:1] != "D":
            thread = message_ts
        clicks = []
        for action in payload.get("actions") or []:
            if not isinstance(action, dict) or action.get("type") != "button":
                continue
            value = action.get("value")
            action_ts = str(action.get("action_ts") or "")
            if not isinstance(value, str) or not value:
                continue
            key = f"click:{channel}:{message_ts}:{user_id}:{action_ts}"
            if not self.seen.add(key):
                continue
            clicks.append(
                InboundEvent(
                    event_id=f"act-{message_ts}-{action_ts}-{user_id}",
                    timestamp=_iso(action_ts or message_ts),
                    platform=PLATFORM,
                    channel=Channel(
                        channel,
                        "im" if channel[:1] == "D" else "channel",
                        thread_id(channel, thread) if isinstance(thread, str) and thread else None,
                    ),
                    sender=Sender(user_id, name, name, False),
                    content=Content("text", value),
                    message_id=message_ts,
                    event_type="button",
                )
            )
        return clicks or Ignored("no new button click")
