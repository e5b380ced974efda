"""The Discord front-end: gateway events in, REST calls out.

:class:`DiscordFrontend` keeps the gateway connection (:mod:`.gateway`) and
turns its dispatches into :class:`~broker.frontends.wire.InboundEvent` values
for the sink (the router), each in a task of its own:

* ``MESSAGE_CREATE`` that :func:`~.messages.classify` lets through: a mention
  in a guild channel first starts a thread from the message; the conversation
  (thread key ``discord:<thread channel id>``) then lives in that thread,
  where no mention is needed. A DM is its own conversation. Images and text
  files are downloaded (at most ``max_attachment_bytes + 1`` bytes each, so
  the router can say one is too large) and passed on.
* ``INTERACTION_CREATE``: a button click is acknowledged at once (callback
  type 6, well inside Discord's 3 s) and becomes a ``button`` event whose text
  is the button's command; an application command is acknowledged with type 5
  and becomes the typed command. Replies to either go out as follow-ups of the
  interaction (ephemeral, flags 64, for a button's).
* Each dispatch is handled once: a message or interaction id already seen
  (a replay after RESUME) is skipped.

:attr:`DiscordFrontend.channel` is the one
:class:`~broker.frontends.base.ReplyChannel` of every Discord event
(``frontend`` ``"discord"``). It maps :class:`~broker.frontends.wire.OutboundReply`
to REST: a reply -> ``POST /channels/{id}/messages`` (with ``components`` for
buttons and a nonce, so a resend creates it once); ``edit_message`` -> ``PATCH``,
sent by a worker per message so that an edit still waiting (rate limit) when a
newer one arrives is dropped — the newest text wins and the last one is always
sent; reactions -> ``PUT``/``DELETE .../reactions/{emoji}/@me``.

When Discord does not answer (down, 5xx), text replies and edits wait in the
outbox, in order, and one task retries with backoff until Discord answers,
then delivers them once. A reply whose thread or message is gone (404) is
logged and dropped, never retried. Reactions are not kept.
"""

from __future__ import annotations

import base64
import collections
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Sized
from typing import Any, NoReturn, Protocol

import attrs
import trio

from broker.frontends.base import (
    Claim,
    InboundSink,
    MemoryOutbox,
    Outbox,
    Parcel,
)
from broker.frontends.discord import messages
from broker.frontends.discord.gateway import DiscordGateway, State
from broker.frontends.discord.messages import PLATFORM, Filters, Skip, Turn
from broker.frontends.discord.rest import DiscordHTTPError, DiscordUnavailable, Rest
from broker.frontends.gateway import BackoffPolicy, reconnect_delay
from broker.frontends.link import run_event
from broker.frontends.wire import (
    Attachment,
    Command,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    new_request_id,
)

log = logging.getLogger(__name__)

SEEN_MAX = 4096  # dispatch ids remembered against replays
INTERACTION_TTL_SECS = 15 * 60  # an interaction token is valid this long
DOWNLOAD_TIMEOUT_SECS = 30.0
RETRY_POLICY = BackoffPolicy(initial_secs=1.0, max_secs=30.0)
ACK_UPDATE = 6  # DEFERRED_UPDATE_MESSAGE: a button click, no loading state
ACK_DEFERRED = 5  # DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE: an application command
ACK_MESSAGE = 4

# Application commands registered by ``agent-broker discord register-commands``.
APPLICATION_COMMANDS: tuple[tuple[str, str, bool], ...] = (
    ("status", "This thread's agent: state, uptime, queue, current tool", False),
    ("cancel", "Stop the running turn", False),
    ("reset", "Stop the agent and forget this thread's conversation", False),
    ("model", "Show or switch the agent's model: list | set NAME", True),
    ("mode", "Show or switch the agent's mode: list | set NAME", True),
    ("allow", "Answer a permission question: [always] NUMBER", True),
    ("deny", "Answer a permission question: [always] NUMBER", True),
    ("answer", "Answer a question: NUMBER CHOICE", True),
    ("schedules", "The scheduled prompts, their next and last runs", False),
    ("help", "The broker's commands", False),
)


class DiscordSettings(Protocol):
    """The part of ``[discord]`` the front-end reads (``DiscordConfig`` fits)."""

    @property
    def token(self) -> str: ...
    @property
    def api_base_url(self) -> str: ...
    @property
    def mention_required(self) -> bool: ...
    @property
    def allowed_guilds(self) -> tuple[str, ...]: ...


class RouterSettings(Protocol):
    @property
    def allow_bots(self) -> bool: ...


class PromptSettings(Protocol):
    @property
    def max_attachment_bytes(self) -> int: ...


def command_definitions() -> list[dict[str, Any]]:
    """The application commands (type 1, CHAT_INPUT) the broker answers."""
    definitions = []
    for name, description, takes_args in APPLICATION_COMMANDS:
        definition: dict[str, Any] = {"name": name, "description": description, "type": 1}
        if takes_args:
            definition["options"] = [
                {"type": 3, "name": "args", "description": "what to pass", "required": False}
            ]
        definitions.append(definition)
    return definitions


async def register_commands(rest: Rest, guilds: Collection[str]) -> list[str]:
    """Overwrite the bot's application commands in ``guilds`` (globally when empty).
    Returns where they were registered. Raises what :meth:`Rest.call` raises."""
    application = await rest.call("GET", "/applications/@me")
    application_id = str(application.get("id")) if isinstance(application, dict) else ""
    definitions = command_definitions()
    if not guilds:
        await rest.call("PUT", f"/applications/{application_id}/commands", definitions)
        return ["global"]
    for guild in guilds:
        await rest.call(
            "PUT", f"/applications/{application_id}/guilds/{guild}/commands", definitions
        )
    return [f"guild {g}" for g in guilds]


@attrs.frozen
class DiscordSnapshot:
    state: str
    fatal: str
    connected: bool
    bot: str
    connects: int
    identifies: int
    resumes: int
    zombies: int
    events_received: int
    replies_sent: int
    edits_superseded: int
    rate_limited: int
    heartbeat_lateness_secs: float
    outbox_waiting: int | None
    last_error: str


@attrs.define
class _Interaction:
    application_id: str
    token: str
    ephemeral: bool
    expires: float


class _Recent:
    """A bounded set of the latest ids."""

    def __init__(self, size: int = SEEN_MAX) -> None:
        self._order: collections.deque[str] = collections.deque()
        self._ids: set[str] = set()
        self._size = size

    def add(self, key: str) -> bool:
        """Add ``key``; False if it was there already."""
        if key in self._ids:
            return False
        self._ids.add(key)
        self._order.append(key)
        if len(self._order) > self._size:
            self._ids.discard(self._order.popleft())
        return True


class DiscordChannel:
    """The :class:`~broker.frontends.base.ReplyChannel` of Discord events."""

    def __init__(self, frontend: DiscordFrontend) -> None:
        self._frontend = frontend

    @property
    def connection_id(self) -> str:
        return "discord"

    @property
    def frontend(self) -> str:
        return "discord"

    async def send_reply(self, reply: OutboundReply) -> None:
        await self._frontend.send(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        return await self._frontend.create(reply)


class DiscordFrontend:
    """The Discord front-end; :meth:`run` keeps it up. See the module docstring."""

    def __init__(
        self,
        settings: DiscordSettings,
        sink: InboundSink,
        *,
        outbox: Outbox | None = None,
        allow_bots: bool = False,
        max_attachment_bytes: int = 5 * 1024 * 1024,
        rest: Rest | None = None,
        gateway_options: dict[str, Any] | None = None,
        retry: BackoffPolicy = RETRY_POLICY,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.allow_bots = allow_bots
        self.max_attachment_bytes = max_attachment_bytes
        self.rest = rest or Rest(settings.api_base_url, settings.token)
        self.gateway = DiscordGateway(
            settings.token, self.rest, self._on_dispatch, **(gateway_options or {})
        )
        self.retry = retry
        self.channel = DiscordChannel(self)
        self.events_received = 0
        self.messages_skipped = 0
        self.replies_sent = 0
        self.edits_superseded = 0
        self.dropped_gone = 0
        self._own_threads: set[str] = set()
        self._thread_owner: dict[str, bool] = {}
        self._message_channel: dict[str, str] = {}  # a thread's first message -> its channel
        self._seen = _Recent()
        self._interactions: dict[str, _Interaction] = {}
        self._commands: dict[str, str] = {}  # custom_id -> command, for long commands
        self._pending_edits: dict[str, OutboundReply] = {}
        self._editing: set[str] = set()
        self._in_hand: list[Parcel] = []  # taken from the outbox, being retried
        self._outage = False
        self._outage_started = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- running ----------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[DiscordFrontend] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Keep the gateway up and handle events until cancelled; reports started at
        once (an unreachable Discord delays nothing else). Event tasks and edit
        workers run in this task's nursery and are cancelled with it; edits not
        yet sent then go to the outbox."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.gateway.run)
                nursery.start_soon(self._retry_outbox)
                self._begin_outage()  # replies kept from before, if any, go first
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for reply in self._pending_edits.values():
                self.outbox.on_undeliverable(reply)
            self._pending_edits.clear()
            await self.rest.aclose()
        raise AssertionError("unreachable")

    def snapshot(self) -> DiscordSnapshot:
        """Synchronous, never waits."""
        gateway = self.gateway
        waiting = len(self.outbox) if isinstance(self.outbox, Sized) else None
        if waiting is not None:
            waiting += len(self._in_hand)
        return DiscordSnapshot(
            gateway.state.value,
            gateway.fatal,
            gateway.state is State.READY,
            str(gateway.user.get("username") or ""),
            gateway.connects,
            gateway.identifies,
            gateway.resumes,
            gateway.zombies,
            self.events_received,
            self.replies_sent,
            self.edits_superseded,
            self.rest.limiter.limited_count,
            round(gateway.heartbeat_lateness, 3),
            waiting,
            gateway.last_error,
        )

    def configure(
        self, settings: DiscordSettings, router: RouterSettings, prompt: PromptSettings
    ) -> None:
        """Use these settings from now on (at the start, and after a reload): the
        filters (``mention_required``, ``allowed_guilds``, ``[router] allow_bots``)
        and the attachment limit. The token and URL stay as they were."""
        self.settings = settings
        self.allow_bots = router.allow_bots
        self.max_attachment_bytes = prompt.max_attachment_bytes

    @property
    def bot_id(self) -> str:
        return str(self.gateway.user.get("id") or "")

    def _start(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # --- inbound ---------------------------------------------------------------------

    def _on_dispatch(self, kind: str, d: dict[str, Any]) -> None:
        """One gateway dispatch; synchronous: it only starts tasks."""
        if kind == "MESSAGE_CREATE":
            if self._seen.add(f"m{d.get('id')}"):
                self._start(self._message, d)
        elif kind == "INTERACTION_CREATE":
            if self._seen.add(f"i{d.get('id')}"):
                self._start(self._interaction, d)
        elif kind in ("THREAD_CREATE", "THREAD_UPDATE"):
            self._learn_thread(d)
        elif kind == "THREAD_DELETE":
            self._own_threads.discard(str(d.get("id")))
        elif kind == "GUILD_CREATE":
            for thread in d.get("threads") or ():
                if isinstance(thread, dict):
                    self._learn_thread(thread)

    def _learn_thread(self, channel: dict[str, Any]) -> None:
        thread_id = str(channel.get("id") or "")
        own = bool(self.bot_id) and channel.get("owner_id") == self.bot_id
        self._thread_owner[thread_id] = own
        if own:
            self._own_threads.add(thread_id)

    def _filters(self) -> Filters:
        return Filters(
            self.bot_id,
            self.settings.mention_required,
            self.allow_bots,
            frozenset(self.settings.allowed_guilds),
        )

    async def _is_own_thread(self, d: dict[str, Any]) -> bool:
        channel_id = str(d.get("channel_id") or "")
        if channel_id in self._own_threads:
            return True
        if d.get("channel_type") not in messages.THREAD_CHANNEL_TYPES or not d.get("guild_id"):
            return False
        if channel_id not in self._thread_owner:
            try:
                channel = await self.rest.call("GET", f"/channels/{channel_id}")
            except (DiscordHTTPError, DiscordUnavailable) as exc:
                log.warning("discord: cannot tell who owns thread %s: %s", channel_id, exc)
                return False
            if isinstance(channel, dict):
                self._learn_thread(channel)
        return self._thread_owner.get(channel_id, False)

    async def _message(self, d: dict[str, Any]) -> None:
        turn = messages.classify(d, self._filters(), own_thread=await self._is_own_thread(d))
        if isinstance(turn, Skip):
            self.messages_skipped += 1
            log.debug("discord: message %s skipped: %s", d.get("id"), turn.reason)
            return
        conversation = turn.channel_id
        if turn.start_thread:
            conversation = await self._start_thread(d, turn)
        attachments = await self._attachments(d.get("attachments"))
        bot_name = str(self.gateway.user.get("username") or "")
        mentioned = messages.mentions(d, self.bot_id)
        event = messages.message_event(
            d, turn, conversation, attachments, bot_name=bot_name if mentioned else ""
        )
        await self._handle(event)

    async def _start_thread(self, d: dict[str, Any], turn: Turn) -> str:
        """Start a thread from message ``d``; the conversation's channel id (the
        thread's, which is the message's id, or the channel's if that fails)."""
        message_id = str(d.get("id") or "")
        body = {
            "name": messages.thread_name(turn.text),
            "auto_archive_duration": messages.THREAD_ARCHIVE_MINUTES,
        }
        try:
            thread = await self.rest.call(
                "POST", f"/channels/{turn.channel_id}/messages/{message_id}/threads", body
            )
            thread_id = str(thread.get("id")) if isinstance(thread, dict) else message_id
        except DiscordHTTPError as exc:
            if exc.code != 160004:  # a thread exists for this message already
                log.warning(
                    "discord: no thread for %s, answering in the channel: %s", message_id, exc
                )
                return turn.channel_id
            thread_id = message_id
        except DiscordUnavailable as exc:
            log.warning("discord: no thread for %s (%s); the reply waits", message_id, exc)
            return turn.channel_id
        self._own_threads.add(thread_id)
        self._thread_owner[thread_id] = True
        self._message_channel[message_id] = turn.channel_id
        return thread_id

    async def open_thread(self, channel_id: str, text: str) -> str | None:
        """Post ``text`` in channel ``channel_id`` and start a thread from that
        message (a scheduled run's conversation); the thread's id, which is the
        conversation's channel id. None when Discord refuses or is away (logged)."""
        message_body = {"content": text, "allowed_mentions": {"parse": []}}
        thread_body = {
            "name": messages.thread_name(text),
            "auto_archive_duration": messages.THREAD_ARCHIVE_MINUTES,
        }
        try:
            message = await self.rest.call("POST", f"/channels/{channel_id}/messages", message_body)
            message_id = str(message.get("id") or "") if isinstance(message, dict) else ""
            path = f"/channels/{channel_id}/messages/{message_id}/threads"
            thread = await self.rest.call("POST", path, thread_body)
        except (DiscordHTTPError, DiscordUnavailable) as exc:
            log.warning("discord: no thread opened in %s: %s", channel_id, exc)
            return None
        thread_id = str(thread.get("id") or message_id) if isinstance(thread, dict) else message_id
        self.replies_sent += 1
        self._own_threads.add(thread_id)
        self._thread_owner[thread_id] = True
        self._message_channel[message_id] = channel_id
        return thread_id

    async def _attachments(self, items: object) -> tuple[Attachment, ...]:
        if not isinstance(items, list):
            return ()
        found = []
        for item in items:
            if not isinstance(item, dict):
                continue
            kind = messages.attachment_kind(item)
            name = str(item.get("filename") or "attachment")
            size = item.get("size") if isinstance(item.get("size"), int) else None
            data = b""
            if kind in ("image", "text_file") and isinstance(item.get("url"), str):
                with trio.move_on_after(DOWNLOAD_TIMEOUT_SECS):
                    try:
                        data = await self.rest.download(item["url"], self.max_attachment_bytes)
                    except DiscordUnavailable as exc:
                        log.warning("discord: attachment %s not downloaded: %s", name, exc)
                        kind = "unreadable"
            encoded = base64.b64encode(data).decode()
            found.append(Attachment(kind, encoded, name, str(item.get("content_type") or ""), size))
        return tuple(found)

    async def _handle(self, event: InboundEvent) -> None:
        self.events_received += 1
        await run_event(self.sink, event, self.channel)

    async def _interaction(self, d: dict[str, Any]) -> None:
        interaction_id = str(d.get("id") or "")
        token = str(d.get("token") or "")
        data = messages.obj(d.get("data"))
        kind = d.get("type")
        guild_id = d.get("guild_id")
        allowed = self.settings.allowed_guilds
        if kind not in (2, 3):
            return
        if guild_id and allowed and str(guild_id) not in allowed:
            await self._ack(interaction_id, token, ACK_MESSAGE, "This bot does not answer here.")
            return
        if kind == 3:
            if not await self._ack(interaction_id, token, ACK_UPDATE):
                return
            identifier = str(data.get("custom_id") or "")
            command = (
                identifier[4:] if identifier.startswith("cmd:") else self._commands.get(identifier)
            )
            text, event_type, ephemeral = command or "", "button", True
        else:
            if not await self._ack(interaction_id, token, ACK_DEFERRED):
                return
            text, event_type, ephemeral = messages.command_text(data), "message", False
        event = messages.interaction_event(d, text, event_type)
        application_id = str(d.get("application_id") or self.gateway.application_id)
        expires = trio.current_time() + INTERACTION_TTL_SECS
        self._interactions[event.event_id] = _Interaction(application_id, token, ephemeral, expires)
        try:
            if not text:
                note = "⚠️ This button is no longer valid; type the command shown in the message."
                await self.send(OutboundReply.to_event(event, note))
                return
            await self._handle(event)
        finally:
            self._forget_interactions(trio.current_time())

    def _forget_interactions(self, now: float) -> None:
        for key in [k for k, v in self._interactions.items() if v.expires <= now]:
            del self._interactions[key]

    async def _ack(self, interaction_id: str, token: str, kind: int, text: str = "") -> bool:
        """Answer an interaction (within Discord's 3 s: the route has no global limit)."""
        body: dict[str, Any] = {"type": kind}
        if text:
            body["data"] = {"content": text, "flags": messages.EPHEMERAL}
        try:
            await self.rest.call("POST", f"/interactions/{interaction_id}/{token}/callback", body)
        except (DiscordHTTPError, DiscordUnavailable) as exc:
            log.warning("discord: interaction %s not acknowledged: %s", interaction_id, exc)
            return False
        return True

    # --- outbound --------------------------------------------------------------------

    async def send(self, reply: OutboundReply) -> None:
        """Deliver ``reply``; see :meth:`~broker.frontends.base.ReplyChannel.send_reply`."""
        if reply.command in (Command.ADD_REACTION, Command.REMOVE_REACTION):
            await self._attempt(reply)
        elif reply.command is Command.EDIT_MESSAGE:
            self._edit(reply)
        elif reply.command is None:
            if self._outage:
                self._keep(reply)
            else:
                await self._attempt(reply)
        else:
            log.info("discord: %s is not supported, dropped", reply.command.value)

    async def create(self, reply: OutboundReply) -> GatewayResponse | None:
        """Post ``reply`` as a new message and say its id (None: not sent). The
        caller's cancel scope bounds the wait; when it gives up, the caller sends
        the reply as a plain one, which the nonce keeps from appearing twice."""
        if self._outage or reply.reply_to in self._interactions:
            return None
        try:
            message = await self.rest.call(*self._post(reply))
        except DiscordUnavailable as exc:
            log.warning("discord: %s", exc)
            return None
        except DiscordHTTPError as exc:
            return GatewayResponse(new_request_id(), False, error=str(exc))
        self.replies_sent += 1
        message_id = str(message.get("id")) if isinstance(message, dict) else None
        return GatewayResponse(new_request_id(), True, message_id=message_id)

    def _post(self, reply: OutboundReply) -> tuple[str, str, dict[str, Any]]:
        """The request that posts ``reply`` (a message, or an interaction's follow-up)."""
        body: dict[str, Any] = {"content": reply.text}
        if reply.buttons:
            body["components"] = messages.components(reply.buttons, self._remember)
        body["allowed_mentions"] = {"parse": []}
        interaction = self._interactions.get(reply.reply_to)
        if interaction is not None:
            if interaction.ephemeral:
                body["flags"] = messages.EPHEMERAL
            return "POST", f"/webhooks/{interaction.application_id}/{interaction.token}", body
        body["nonce"] = messages.message_nonce(reply)
        body["enforce_nonce"] = True
        return "POST", f"/channels/{reply.channel.id}/messages", body

    def _remember(self, identifier: str, command: str) -> None:
        if not identifier.startswith("cmd:"):
            self._commands[identifier] = command

    def _request_for(self, reply: OutboundReply) -> tuple[str, str, dict[str, Any] | None]:
        channel = reply.channel.id
        if reply.command is Command.EDIT_MESSAGE:
            body: dict[str, Any] = {"content": reply.text}
            body["components"] = messages.components(reply.buttons, self._remember)
            return "PATCH", f"/channels/{channel}/messages/{reply.reply_to}", body
        if reply.command in (Command.ADD_REACTION, Command.REMOVE_REACTION):
            channel = self._message_channel.get(reply.reply_to, channel)
            emoji = urllib.parse.quote(reply.text, safe="")
            method = "PUT" if reply.command is Command.ADD_REACTION else "DELETE"
            return (
                method,
                f"/channels/{channel}/messages/{reply.reply_to}/reactions/{emoji}/@me",
                None,
            )
        return self._post(reply)

    async def _attempt(self, reply: OutboundReply) -> bool:
        """Send ``reply`` once. False when Discord did not answer: text and edits are
        then kept in the outbox (in order) and retried; a gone target is dropped."""
        try:
            await self.rest.call(*self._request_for(reply))
        except DiscordUnavailable as exc:
            if reply.command in (Command.ADD_REACTION, Command.REMOVE_REACTION):
                log.info("discord: reaction not shown: %s", exc)
                return True
            log.warning("discord: %s; the reply waits in the outbox", exc)
            self._keep(reply)
            return False
        except DiscordHTTPError as exc:
            if exc.gone:
                self.dropped_gone += 1
                log.warning(
                    "discord: channel %s or message %s is gone (deleted?); reply to %s dropped",
                    reply.channel.id,
                    reply.reply_to,
                    reply.reply_to,
                )
            else:
                log.warning("discord: reply to %s refused: %s", reply.reply_to, exc)
            return True
        self.replies_sent += 1
        return True

    def _keep(self, reply: OutboundReply) -> None:
        self.outbox.on_undeliverable(reply)
        self._begin_outage()

    def _begin_outage(self) -> None:
        if not self._outage:
            self._outage = True
            self._outage_started.set()

    def _edit(self, reply: OutboundReply) -> None:
        """Queue an edit; a worker per message sends the newest queued text."""
        if self._outage:
            self._keep(reply)
            return
        key = f"{reply.channel.id}/{reply.reply_to}"
        busy = key in self._pending_edits or key in self._editing
        if key in self._pending_edits:
            self.edits_superseded += 1
        self._pending_edits[key] = reply
        if not busy:
            self._editing.add(key)
            if self._nursery is None:
                self._editing.discard(key)
                self._pending_edits.pop(key)
                self._keep(reply)
                return
            self._nursery.start_soon(self._edit_worker, key)

    async def _edit_worker(self, key: str) -> None:
        try:
            while (reply := self._pending_edits.pop(key, None)) is not None:
                if self._outage:
                    self._keep(reply)
                    continue
                try:
                    await self._attempt(reply)
                except BaseException:  # cancelled mid-send: the text is not lost
                    self.outbox.on_undeliverable(reply)
                    raise
        finally:
            self._editing.discard(key)

    async def _retry_outbox(self) -> None:
        """During an outage: deliver the waiting replies in order; when Discord still
        does not answer, put them back in front (they stay in the durable outbox
        meanwhile) and ask ``GET /gateway/bot``, with backoff, until it answers. The
        outage ends when the outbox has no Discord reply left."""
        claim = Claim(platforms=frozenset({PLATFORM}))
        while True:
            await self._outage_started.wait()
            waiting = self.outbox.take(claim)
            if not waiting:
                self._outage = False
                self._outage_started = trio.Event()
                continue
            self._in_hand = waiting
            try:
                while waiting and await self._send_waiting(waiting[0].reply):
                    self.outbox.delivered([waiting.pop(0)])
            finally:
                self.outbox.put_back(waiting)
                self._in_hand = []
            if waiting:
                await self._wait_for_discord()

    async def _wait_for_discord(self) -> None:
        """Return once Discord answers a request again (backoff between tries)."""
        failures = 0
        while True:
            await trio.sleep(reconnect_delay(failures, self.retry, 0.0))
            failures += 1
            try:
                await self.rest.call("GET", "/gateway/bot")
            except DiscordUnavailable:
                continue
            except DiscordHTTPError:
                pass
            log.info("discord: answering again; delivering the waiting replies")
            return

    async def _send_waiting(self, reply: OutboundReply) -> bool:
        """Send a waiting reply once: False when Discord still does not answer."""
        try:
            await self.rest.call(*self._request_for(reply))
        except DiscordUnavailable:
            return False
        except DiscordHTTPError as exc:
            self.dropped_gone += int(exc.gone)
            log.warning("discord: waiting reply to %s dropped: %s", reply.reply_to, exc)
            return True
        self.replies_sent += 1
        return True
