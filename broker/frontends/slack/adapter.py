"""The Slack front-end: Socket Mode in, the Web API out, one reply channel.

:class:`SlackFrontend` runs beside the WebSocket server and the gateway
client. :meth:`SlackFrontend.run` asks ``auth.test`` who the bot is, then
keeps Socket Mode up (:mod:`~broker.frontends.slack.socket`); each envelope
is acknowledged at once and read by
:class:`~broker.frontends.slack.events.Conversations`; a message to answer
has its files downloaded with the bot token (up to ``max_file_bytes`` each;
a larger one goes on with its size and no data, for the router to decline)
and goes to the sink in a task of its own, which outlives the connection it
came on.

The front-end is the :class:`~broker.frontends.base.ReplyChannel` of every
Slack event (``frontend`` ``"slack"``). A reply becomes:

* a plain reply: ``chat.postMessage`` into the event's thread (buttons as
  Block Kit); a reply to a button click: ``chat.postEphemeral`` to the user
  who clicked;
* :meth:`request`: ``chat.postMessage``, answered with the message's ``ts``
  as ``message_id``;
* ``edit_message``: ``chat.update`` of that ``ts``, paced per channel by an
  :class:`~broker.frontends.slack.pacing.EditPacer` (a newer text of the
  same message replaces a waiting one);
* reactions: ``reactions.add`` / ``reactions.remove`` by Slack's emoji name.

Rate limits are waited out by :class:`~broker.frontends.slack.web.SlackWeb`.
A reply Slack does not answer goes to the outbox; from then on, until the
outbox is empty again, every new reply queues behind it, so the order holds,
and a task sends them, oldest first, once Slack answers. An error Slack
answers (``channel_not_found``...) is logged and the reply dropped: sending
it again would fail again.

Fatal errors (``invalid_auth`` and the like, from ``auth.test`` or
``apps.connections.open``) stop the front-end's Socket Mode for good; the
log, :meth:`snapshot` and so ``/status`` and the dashboard say why. Neither
token is ever logged: only method names and Slack's error codes are.
"""

from __future__ import annotations

import base64
import collections
import logging
from collections.abc import Iterable, Sized
from typing import Any

import attrs
import httpx
import trio

from broker.frontends.base import (
    Claim,
    InboundSink,
    MemoryOutbox,
    Outbox,
    SlackSettings,
)
from broker.frontends.gateway import Backoff, BackoffPolicy
from broker.frontends.link import run_event
from broker.frontends.slack.events import (
    PLATFORM,
    BotIdentity,
    Conversations,
    FileRef,
    Incoming,
    split_thread_id,
    thread_id,
)
from broker.frontends.slack.message import blocks, emoji_name, escape
from broker.frontends.slack.pacing import EDIT_INTERVAL_SECS, EditPacer
from broker.frontends.slack.socket import Envelope, SocketMode
from broker.frontends.slack.web import SlackApiError, SlackUnavailable, SlackWeb
from broker.frontends.wire import (
    Attachment,
    Command,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    ReplyChannelRef,
    new_request_id,
)

log = logging.getLogger(__name__)

DEFAULT_BACKOFF = BackoffPolicy()

PLATFORMS = frozenset({PLATFORM})
HTTP_TIMEOUT_SECS = 30.0
DEFAULT_MAX_FILE_BYTES = 5 * 1024 * 1024
CLICKS_REMEMBERED = 1000
TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-yaml",
        "application/toml",
        "application/x-sh",
        "application/sql",
    }
)
TEXT_SUFFIXES = frozenset(
    {
        "txt",
        "md",
        "py",
        "js",
        "ts",
        "json",
        "yaml",
        "yml",
        "toml",
        "rs",
        "go",
        "c",
        "h",
        "cpp",
        "java",
        "sh",
        "sql",
        "csv",
        "log",
        "diff",
        "patch",
        "html",
        "css",
        "xml",
        "ini",
        "cfg",
    }
)
# Errors of an add or remove that leave the reaction as wanted.
REACTION_DONE = frozenset({"already_reacted", "no_reaction"})


def attachment_type(ref: FileRef) -> str:
    """``image``, ``text_file``, or ``file`` (which the router declines)."""
    if ref.mimetype.startswith("image/"):
        return "image"
    suffix = ref.name.rpartition(".")[2].lower() if "." in ref.name else ""
    if (
        ref.mimetype.startswith("text/")
        or ref.mimetype in TEXT_MIME_TYPES
        or suffix in TEXT_SUFFIXES
    ):
        return "text_file"
    return "file"


@attrs.frozen
class SlackSnapshot:
    """The Slack front-end's state for ``/status`` and the dashboard."""

    state: str  # starting | connected | reconnecting | stopped
    connections: int
    connects: int
    refreshes: int
    events_received: int
    events_ignored: int
    rate_limited: int
    outbox_waiting: int | None
    last_error: str
    fatal: str  # why it stopped for good, "" while it runs
    bot_user_id: str


class SlackFrontend:
    """Slack, run by :meth:`run`; see the module docstring."""

    def __init__(
        self,
        settings: SlackSettings,
        sink: InboundSink,
        *,
        outbox: Outbox | None = None,
        commands: Iterable[str] = (),
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        edit_interval: float = EDIT_INTERVAL_SECS,
        client: httpx.AsyncClient | None = None,
        socket_options: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.commands = tuple(commands)
        self.max_file_bytes = max_file_bytes
        self.backoff_policy = backoff
        self.edit_interval = edit_interval
        self._client = client
        self.web = SlackWeb(
            settings.api_base_url, client or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECS)
        )
        self.socket = SocketMode(
            self._connections_open, self._on_envelope, backoff=backoff, **(socket_options or {})
        )
        self.conversations: Conversations | None = None
        self.events_received = 0
        self.events_ignored = 0
        self.fatal = ""
        self.last_error = ""
        self._pacers: dict[str, EditPacer] = {}
        self._clicks: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._backlog = False  # replies wait in the outbox: new ones queue behind them
        self._wake_outbox = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    # -- ReplyChannel ------------------------------------------------------------------

    @property
    def connection_id(self) -> str:
        return "slack"

    @property
    def frontend(self) -> str:
        return "slack"

    async def send_reply(self, reply: OutboundReply) -> None:
        """Send ``reply`` (see the module docstring); never raises for Slack
        being away: the reply then waits in the outbox."""
        if self._backlog:
            self._keep(reply)
        elif reply.command is Command.EDIT_MESSAGE:
            self._pace(reply)
        else:
            await self._deliver(reply)

    async def request(self, reply: OutboundReply) -> GatewayResponse | None:
        """Post ``reply`` as a new message; its ``ts`` as ``message_id``. None
        (nothing sent, nothing queued) when replies wait in the outbox. The
        caller's cancel scope bounds the wait for Slack's answer."""
        request_id = new_request_id()
        if self._backlog or reply.command is not None:
            if reply.command is not None:
                await self.send_reply(reply)
                return GatewayResponse(request_id, True)
            return None
        try:
            answer = await self._post(reply)
        except SlackUnavailable as exc:
            self._unavailable(exc)
            return None
        except SlackApiError as exc:
            log.warning("slack: %s", exc)
            return GatewayResponse(request_id, False, error=exc.error)
        return GatewayResponse(
            request_id, True, thread_id=reply.channel.thread_id, message_id=str(answer["ts"])
        )

    async def open_thread(self, channel: str, text: str) -> str | None:
        """Post ``text`` as a new top-level message in ``channel``, whose thread
        holds a scheduled run; the conversation's ``thread_id``. None when Slack
        refuses or is away (logged)."""
        try:
            answer = await self._post(OutboundReply("", PLATFORM, ReplyChannelRef(channel), text))
        except (SlackUnavailable, SlackApiError) as exc:
            log.warning("slack: no thread opened in %s: %s", channel, exc)
            return None
        ts = str(answer["ts"])
        if self.conversations is not None:
            self.conversations.join(channel, ts)
        return thread_id(channel, ts)

    # -- sending -----------------------------------------------------------------------

    def _thread_ts(self, reply: OutboundReply) -> str | None:
        return split_thread_id(reply.channel.id, reply.channel.thread_id)

    async def _post(self, reply: OutboundReply) -> Any:
        args: dict[str, Any] = {"channel": reply.channel.id, "text": escape(reply.text)}
        thread_ts = self._thread_ts(reply)
        if thread_ts:
            args["thread_ts"] = thread_ts
        clicker = self._clicks.get(reply.reply_to)
        if clicker is not None:
            args["user"] = clicker
            return await self.web.call("chat.postEphemeral", self.settings.bot_token, args)
        if reply.buttons:
            args["blocks"] = blocks(args["text"], reply.buttons)
        return await self.web.call("chat.postMessage", self.settings.bot_token, args)

    async def _send(self, reply: OutboundReply) -> None:
        """One reply as its Web API call; raises SlackUnavailable / SlackApiError."""
        token = self.settings.bot_token
        if reply.command is None:
            await self._post(reply)
        elif reply.command is Command.EDIT_MESSAGE:
            text = escape(reply.text)
            args = {
                "channel": reply.channel.id,
                "ts": reply.reply_to,
                "text": text,
                "blocks": blocks(text, reply.buttons),
            }
            await self.web.call("chat.update", token, args)
        elif reply.command in (Command.ADD_REACTION, Command.REMOVE_REACTION):
            name = emoji_name(reply.text)
            if name is None:
                log.info("slack: no Slack name for the reaction %r; not shown", reply.text)
                return
            method = (
                "reactions.add" if reply.command is Command.ADD_REACTION else "reactions.remove"
            )
            args = {"channel": reply.channel.id, "timestamp": reply.reply_to, "name": name}
            try:
                await self.web.call(method, token, args)
            except SlackApiError as exc:
                if exc.error not in REACTION_DONE:
                    raise
        else:
            log.info("slack: %s has no Slack equivalent; not sent", reply.command.value)

    async def _deliver(self, reply: OutboundReply) -> bool:
        """Send ``reply``; False when Slack did not answer (it is then kept)."""
        try:
            await self._send(reply)
        except SlackUnavailable as exc:
            self._unavailable(exc)
            self._keep(reply)
            return False
        except SlackApiError as exc:
            log.warning(
                "slack: reply to %s in %s dropped: %s", reply.reply_to, reply.channel.id, exc
            )
        return True

    def _unavailable(self, exc: SlackUnavailable) -> None:
        self.last_error = str(exc)
        log.warning("slack: Web API: %s", exc)

    def _keep(self, reply: OutboundReply) -> None:
        self.outbox.on_undeliverable(reply)
        self._backlog = True
        self._wake_outbox.set()
        self._notify()

    def _pace(self, edit: OutboundReply) -> None:
        pacer = self._pacers.get(edit.channel.id)
        if pacer is None:
            pacer = self._pacers[edit.channel.id] = EditPacer(self.edit_interval)
            pacer.offer(edit)
            assert self._nursery is not None, "send_reply before run()"
            self._nursery.start_soon(self._send_edits, edit.channel.id, pacer)
        else:
            pacer.offer(edit)

    async def _send_edits(self, channel: str, pacer: EditPacer) -> None:
        """Send ``channel``'s waiting edits, one an interval; ends (dropping the
        pacer) once none waits and the last interval is over."""
        try:
            await self._send_paced(pacer)
        except Exception:  # a bug here must not end the broker
            log.exception("slack: sending the edits of %s failed", channel)
        finally:
            if self._pacers.get(channel) is pacer:
                del self._pacers[channel]
                self._notify()

    async def _send_paced(self, pacer: EditPacer) -> None:
        while (wait := pacer.wait(trio.current_time())) is not None:
            await trio.sleep(wait)
            edit = pacer.take(trio.current_time())
            if edit is None:
                continue
            if self._backlog:
                self._keep(edit)
            else:
                await self._deliver(edit)

    async def _deliver_outbox(self) -> None:
        """Send the waiting replies, oldest first, whenever some wait; retry
        with backoff while Slack does not answer. A bug in one round is
        logged and the next round goes on."""
        while True:
            try:
                await self._outbox_rounds()
            except Exception:
                log.exception("slack: delivering the outbox failed")
                self._wake_outbox.set()
                await trio.sleep(self.backoff_policy.max_secs)

    async def _outbox_rounds(self) -> None:
        backoff = Backoff(self.backoff_policy)
        while True:
            await self._wake_outbox.wait()
            self._wake_outbox = trio.Event()
            while True:
                waiting = self.outbox.take(Claim(platforms=PLATFORMS))
                if not waiting:
                    if self._backlog:
                        log.info("slack: the outbox is empty again")
                    self._backlog = False
                    self._notify()
                    break
                for index, parcel in enumerate(waiting):
                    reply = parcel.reply
                    try:
                        await self._send(reply)
                    except SlackUnavailable as exc:
                        self._unavailable(exc)
                        self.outbox.put_back(waiting[index:])
                        await trio.sleep(backoff.after(None, 0))
                        break
                    except SlackApiError as exc:
                        log.warning("slack: waiting reply to %s dropped: %s", reply.reply_to, exc)
                    self.outbox.delivered([parcel])
                else:
                    backoff.failures = 0
                    log.info("slack: delivered %d waiting replies", len(waiting))

    # -- receiving ---------------------------------------------------------------------

    async def _connections_open(self) -> str:
        answer = await self.web.call("apps.connections.open", self.settings.app_token)
        url = answer.get("url")
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
            raise SlackUnavailable("apps.connections.open: no WebSocket URL in the answer")
        return url

    def _on_envelope(self, envelope: Envelope) -> None:
        conversations = self.conversations
        assert conversations is not None and self._nursery is not None
        self.events_received += 1
        if envelope.type == "events_api":
            result = conversations.read_event(envelope.payload)
            if isinstance(result, Incoming):
                self._nursery.start_soon(self._handle, result)
                return
            why = result.reason
        elif envelope.type == "interactive":
            clicks = conversations.read_action(envelope.payload)
            if isinstance(clicks, list):
                for click in clicks:
                    self._remember_click(click)
                    self._nursery.start_soon(run_event, self.sink, click, self)
                return
            why = clicks.reason
        else:
            why = f"envelope type {envelope.type!r}"
        self.events_ignored += 1
        log.debug("slack: ignored envelope %s: %s", envelope.envelope_id, why)

    def _remember_click(self, click: InboundEvent) -> None:
        self._clicks[click.event_id] = click.sender.id
        while len(self._clicks) > CLICKS_REMEMBERED:
            self._clicks.popitem(last=False)

    async def _handle(self, incoming: Incoming) -> None:
        event = incoming.event
        if incoming.files:
            attachments = []
            for ref in incoming.files:
                try:
                    attachments.append(await self._attachment(ref))
                except Exception:  # a bug here must not cost the message its answer
                    log.exception("slack: reading file %s failed", ref.name)
                    attachments.append(Attachment("unavailable", "", ref.name, ref.mimetype))
            content = attrs.evolve(event.content, attachments=tuple(attachments))
            event = attrs.evolve(event, content=content)
        await run_event(self.sink, event, self)

    async def _attachment(self, ref: FileRef) -> Attachment:
        kind = attachment_type(ref)
        if kind == "file" or (ref.size is not None and ref.size > self.max_file_bytes):
            return Attachment(kind, "", ref.name, ref.mimetype, ref.size)
        try:
            data = await self.web.download(ref.url, self.settings.bot_token, self.max_file_bytes)
        except SlackUnavailable as exc:
            log.warning("slack: file %s could not be downloaded: %s", ref.name, exc)
            return Attachment("unavailable", "", ref.name, ref.mimetype, ref.size)
        if data is None:
            return Attachment(kind, "", ref.name, ref.mimetype, ref.size or self.max_file_bytes + 1)
        return Attachment(kind, base64.b64encode(data).decode(), ref.name, ref.mimetype, len(data))

    # -- running -----------------------------------------------------------------------

    async def _identify(self) -> BotIdentity | None:
        """``auth.test`` until it answers; None after a fatal error."""
        backoff = Backoff(self.backoff_policy)
        while True:
            try:
                answer = await self.web.call("auth.test", self.settings.bot_token)
                return BotIdentity(
                    str(answer.get("user_id") or ""), str(answer.get("bot_id") or "")
                )
            except SlackApiError as exc:
                if exc.fatal:
                    self._stop_for_good(f"{exc.error} (check [slack] bot_token)")
                    return None
                self.last_error = str(exc)
            except SlackUnavailable as exc:
                self.last_error = str(exc)
            delay = backoff.after(None, 0)
            log.warning("slack: %s; retrying in %.1f s", self.last_error, delay)
            await trio.sleep(delay)

    def _stop_for_good(self, why: str) -> None:
        self.fatal = why
        self.last_error = why
        log.error("slack: stopped: %s", why)
        self._notify()

    async def run(
        self, *, task_status: trio.TaskStatus[SlackFrontend] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled; reports started at once (Slack being away
        delays nothing else). After a fatal error it keeps delivering what
        it can but receives nothing more. Cancelling it cancels the event
        tasks and closes the connections."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._deliver_outbox)
                self._wake_outbox.set()  # replies kept by an earlier run
                task_status.started(self)
                try:
                    await self._receive()
                except Exception as exc:  # a bug here must not end the broker
                    log.exception("slack: failed")
                    self._stop_for_good(f"internal error: {type(exc).__name__}")
                await trio.sleep_forever()
        finally:
            if self._client is None:
                with trio.CancelScope(shield=True):
                    await self.web.client.aclose()

    async def _receive(self) -> None:
        """Sign in, then keep Socket Mode up; returns after a fatal error."""
        bot = await self._identify()
        if bot is None:
            return
        self.conversations = Conversations(
            bot,
            mention_required=self.settings.mention_required,
            commands=self.commands,
        )
        log.info("slack: signed in as %s; opening Socket Mode", bot.user_id)
        await self.socket.run()
        self._stop_for_good(f"{self.socket.fatal} (check [slack] app_token)")

    # -- state -------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of state (fatal stop, outbox, edits sent)."""
        await self._changed.wait()

    @property
    def edits_pending(self) -> bool:
        """Whether edits wait (or their channel's interval still runs)."""
        return bool(self._pacers)

    @property
    def state(self) -> str:
        if self.fatal:
            return "stopped"
        if self.socket.connected:
            return "connected"
        return "reconnecting" if self.socket.connects else "starting"

    def snapshot(self) -> SlackSnapshot:
        """Synchronous, never waits."""
        waiting = len(self.outbox) if isinstance(self.outbox, Sized) else None
        return SlackSnapshot(
            self.state,
            self.socket.open_connections,
            self.socket.connects,
            self.socket.refreshes,
            self.events_received,
            self.events_ignored,
            self.web.rate_limited,
            waiting,
            self.socket.last_error or self.last_error,
            self.fatal,
            self.conversations.bot.user_id if self.conversations else "",
        )
