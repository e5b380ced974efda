"""A fake Slack: the Web API over HTTP and Socket Mode over WebSocket, on loopback.

Written from Slack's documentation (docs.slack.dev: Socket Mode, the Events
API, interaction payloads, the Web API methods and rate limits), it plays
Slack for the broker's Slack front-end in tests and benchmarks:

* **Web API** (``POST {api_url}{method}``, a bearer token, JSON or form body,
  always HTTP 200 with ``{"ok": ...}`` unless rate limited or down):
  ``auth.test``, ``apps.connections.open`` (app token ``xapp-``),
  ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
  ``reactions.add``, ``reactions.remove``; files shared into a conversation
  are served at their ``url_private_download`` to the bot token only.
* **Socket Mode**: ``apps.connections.open`` hands out a one-use
  ``ws://`` URL; the connection gets ``hello`` first, then envelopes
  (``events_api``, ``interactive``) that must be acknowledged with
  ``{"envelope_id": ...}``; ``disconnect`` asks the client to move to a new
  connection while the old one still works.

Controls: :meth:`FakeSlack.rate_limit` answers the next calls of a method
with 429 and ``Retry-After``; :attr:`FakeSlack.down` makes every call answer
503 and closes the sockets; :attr:`FakeSlack.auth_error` makes the tokens
invalid. Everything the client did wrong is kept in
:attr:`FakeSlack.violations` (:meth:`FakeSlack.assert_clean` fails a test on
any): an unknown token, a missing argument, an ack for an envelope never
sent or acknowledged twice, an ack later than 3 s, text over 4,000
characters, Block Kit over its limits.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio
import trio_websocket

from broker.testing.http11 import serve_requests

log = logging.getLogger(__name__)

APP_TOKEN = "xapp-1-A0FAKE-1-fakeapptoken"
BOT_TOKEN = "xoxb-0000-fake-bot-token"
TEAM_ID = "T0FAKE"
APP_ID = "A0FAKE"
BOT_USER_ID = "U0BOT"
BOT_ID = "B0BOT"
ACK_DEADLINE_SECS = 3.0  # Slack redelivers an envelope not acknowledged in time
TEXT_LIMIT = 4000  # Slack: keep a message's text under 4,000 characters
SECTION_TEXT_LIMIT = 3000
FATAL_AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked")

Json = dict[str, Any]


@attrs.define
class Message:
    """A message in the fake workspace."""

    channel: str
    ts: str
    text: str
    user: str
    thread_ts: str | None = None
    blocks: list[Any] = attrs.field(factory=list)
    texts: list[str] = attrs.field(factory=list)  # every text it showed, in order
    reactions: set[str] = attrs.field(factory=set)


@attrs.frozen
class ApiCall:
    method: str
    args: Json
    status: int  # HTTP status answered
    error: str | None  # the "error" of an ok: false answer
    at: float


@attrs.frozen
class Delivery:
    """An envelope sent on a socket."""

    envelope_id: str
    type: str
    payload: Json
    sent_at: float
    connection: int
    retry_attempt: int = 0


@attrs.define
class _Socket:
    number: int
    ws: trio_websocket.WebSocketConnection
    disconnect_sent: bool = False
    closed: bool = False


def envelope(
    envelope_id: str, kind: str, payload: Json, *, retry_attempt: int = 0, retry_reason: str = ""
) -> Json:
    """A Socket Mode envelope as Slack sends it."""
    frame: Json = {
        "envelope_id": envelope_id,
        "payload": payload,
        "type": kind,
        "accepts_response_payload": False,
    }
    if kind == "events_api":
        frame["retry_attempt"] = retry_attempt
        frame["retry_reason"] = retry_reason
    return frame


class FakeSlack:
    """State and controls of a running fake Slack (see :func:`open_fake_slack`)."""

    def __init__(self) -> None:
        self.http_port = 0
        self.ws_port = 0
        self.calls: list[ApiCall] = []
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemeral: list[Json] = []
        self.deliveries: dict[str, Delivery] = {}
        self.acks: dict[str, float] = {}  # envelope id -> seconds from send to ack
        self.violations: list[str] = []
        self.files: dict[str, tuple[bytes, str]] = {}  # path -> (data, mime type)
        self.file_downloads: list[str] = []
        self.down = False
        self.auth_error: str | None = None
        self.connections_opened = 0
        self._rate_limits: dict[str, list[float]] = {}
        self._tickets: set[str] = set()
        self._sockets: list[_Socket] = []
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- what tests read ---------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/"

    @property
    def open_sockets(self) -> int:
        return sum(1 for s in self._sockets if not s.closed)

    def assert_clean(self) -> None:
        assert not self.violations, "Slack API violations:\n" + "\n".join(self.violations)

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    def bot_messages(self, channel: str, thread_ts: str | None = None) -> list[Message]:
        """The bot's messages in ``channel`` (in thread ``thread_ts`` if given), oldest first."""
        return [
            m
            for m in self.messages.values()
            if m.channel == channel
            and m.user == BOT_USER_ID
            and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checked after every change (a call,
        an ack, a connection). Bound it with ``trio.fail_after``."""
        while not condition():
            await self._changed.wait()

    async def wait_acked(self, envelope_id: str) -> float:
        """Wait for the ack of ``envelope_id``; the seconds it took."""
        await self.wait_for(lambda: envelope_id in self.acks)
        return self.acks[envelope_id]

    # -- controls ----------------------------------------------------------------------

    def rate_limit(self, method: str, retry_after: float = 1.0, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        self._rate_limits.setdefault(method, []).extend([retry_after] * times)

    def next_ts(self) -> str:
        n = next(self._ts)
        return f"{1_700_000_000 + n}.{n:06d}"

    def add_file(self, name: str, data: bytes, mimetype: str) -> Json:
        """A file object (as message events carry it) whose content the fake serves."""
        file_id = f"F{next(self._ids):08d}"
        path = f"/files-pri/{TEAM_ID}-{file_id}/download/{urllib.parse.quote(name)}"
        self.files[path] = (data, mimetype)
        url = f"http://127.0.0.1:{self.http_port}{path}"
        return {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rpartition(".")[2] or "binary",
            "size": len(data),
            "url_private": url,
            "url_private_download": url,
        }

    async def set_down(self, down: bool) -> None:
        """Slack unreachable (every call 503, sockets closed) or back."""
        self.down = down
        if down:
            for sock in list(self._sockets):
                await self._close(sock)
        self._notify()

    # -- events ------------------------------------------------------------------------

    def user_message(
        self,
        text: str,
        *,
        channel: str = "C0CHAN",
        user: str = "U0ALICE",
        thread_ts: str | None = None,
        channel_type: str = "channel",
        mention: bool = False,
        files: list[Json] | None = None,
    ) -> Json:
        """A user's message, recorded in the workspace, as a ``message`` event
        (``app_mention`` when ``mention``: then ``<@bot>`` leads the text)."""
        ts = self.next_ts()
        if mention:
            text = f"<@{BOT_USER_ID}> {text}"
        self.messages[(channel, ts)] = Message(channel, ts, text, user, thread_ts)
        event: Json = {
            "type": "app_mention" if mention else "message",
            "user": user,
            "text": text,
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": TEAM_ID,
        }
        if not mention:
            event["channel_type"] = channel_type
        if thread_ts is not None:
            event["thread_ts"] = thread_ts
        if files:
            event["files"] = files
            event["subtype"] = "file_share"
        return event

    def event_callback(self, event: Json, event_id: str | None = None) -> Json:
        """The Events API outer payload around ``event``."""
        return {
            "token": "verification-token",
            "team_id": TEAM_ID,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}",
            "event_time": int(float(event.get("ts", "1700000000"))),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": TEAM_ID,
                    "user_id": BOT_USER_ID,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def block_actions(self, message: Message, value: str, *, user: str = "U0ALICE") -> Json:
        """The ``block_actions`` payload of a click on the button with ``value``
        under the bot's ``message``."""
        action = None
        for block in message.blocks:
            for element in block.get("elements", []) if block.get("type") == "actions" else []:
                if element.get("type") == "button" and element.get("value") == value:
                    action = element
                    action_block = block
        if action is None:
            raise AssertionError(f"no button with value {value!r} under {message.ts}")
        container: Json = {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": False,
        }
        if message.thread_ts:
            container["thread_ts"] = message.thread_ts
        shown: Json = {
            "type": "message",
            "user": message.user,
            "bot_id": BOT_ID,
            "text": message.text,
            "ts": message.ts,
            "blocks": message.blocks,
        }
        if message.thread_ts:
            shown["thread_ts"] = message.thread_ts
        return {
            "type": "block_actions",
            "user": {
                "id": user,
                "username": user.lower(),
                "name": user.lower(),
                "team_id": TEAM_ID,
            },
            "api_app_id": APP_ID,
            "token": "verification-token",
            "container": container,
            "trigger_id": f"{next(self._ids)}.{TEAM_ID}.trigger",
            "team": {"id": TEAM_ID, "domain": "fake"},
            "channel": {"id": message.channel, "name": "general"},
            "message": shown,
            "response_url": f"http://127.0.0.1:{self.http_port}/actions/{message.ts}",
            "actions": [
                {
                    "action_id": action.get("action_id", ""),
                    "block_id": action_block.get("block_id", ""),
                    "text": action["text"],
                    "value": value,
                    "type": "button",
                    "action_ts": self.next_ts(),
                }
            ],
        }

    async def send(
        self,
        kind: str,
        payload: Json,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        connection: int | None = None,
    ) -> Delivery:
        """Send one envelope on ``connection`` (by number) or, as Slack does, on
        an open connection not asked to go, else any open one."""
        sock = self._pick(connection)
        envelope_id = f"{secrets.token_hex(4)}-{next(self._ids):04d}"
        frame = envelope(
            envelope_id, kind, payload, retry_attempt=retry_attempt, retry_reason=retry_reason
        )
        delivery = Delivery(
            envelope_id, kind, payload, trio.current_time(), sock.number, retry_attempt
        )
        self.deliveries[envelope_id] = delivery
        await sock.ws.send_message(json.dumps(frame))
        return delivery

    async def send_event(self, event: Json, *, event_id: str | None = None) -> Delivery:
        return await self.send("events_api", self.event_callback(event, event_id))

    async def redeliver(self, delivery: Delivery) -> Delivery:
        """Send ``delivery``'s payload again, as Slack does after a missed ack:
        a new envelope, the same event, ``retry_attempt`` one higher."""
        return await self.send(
            delivery.type,
            delivery.payload,
            retry_attempt=delivery.retry_attempt + 1,
            retry_reason="timeout",
        )

    async def disconnect(
        self, reason: str = "refresh_requested", *, close_after: float = 10.0
    ) -> int:
        """Send ``disconnect`` on the connection events now go to; it closes
        after ``close_after`` s unless the client closes it first. Its number."""
        sock = self._pick(None)
        sock.disconnect_sent = True
        frame = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-applink"}}
        await sock.ws.send_message(json.dumps(frame))
        assert self._nursery is not None
        self._nursery.start_soon(self._close_later, sock, close_after)
        return sock.number

    async def _close_later(self, sock: _Socket, delay: float) -> None:
        await trio.sleep(delay)
        await self._close(sock)

    async def _close(self, sock: _Socket) -> None:
        if not sock.closed:
            sock.closed = True
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await sock.ws.aclose(1001, "going away")
            self._notify()

    def _pick(self, number: int | None) -> _Socket:
        live = [s for s in self._sockets if not s.closed]
        if number is not None:
            live = [s for s in live if s.number == number]
        if not live:
            raise AssertionError("no open Socket Mode connection")
        staying = [s for s in live if not s.disconnect_sent]
        return (staying or live)[-1]

    # -- Socket Mode -------------------------------------------------------------------

    async def _serve_socket(self, request: trio_websocket.WebSocketRequest) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        ticket = (query.get("ticket") or [""])[0]
        if self.down or ticket not in self._tickets:
            if not self.down:
                self.violations.append(f"socket: connected with an unknown ticket {request.path}")
            await request.reject(401)
            return
        self._tickets.discard(ticket)
        ws = await request.accept()
        self.connections_opened += 1
        sock = _Socket(self.connections_opened, ws)
        self._sockets.append(sock)
        hello = {
            "type": "hello",
            "num_connections": self.open_sockets,
            "debug_info": {
                "host": "fake-applink",
                "build_number": 1,
                "approximate_connection_time": 18060,
            },
            "connection_info": {"app_id": APP_ID},
        }
        self._notify()
        try:
            await ws.send_message(json.dumps(hello))
            while True:
                self._on_frame(sock, await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            sock.closed = True
            self._notify()

    def _on_frame(self, sock: _Socket, text: str | bytes) -> None:
        try:
            frame = json.loads(text)
            envelope_id = frame["envelope_id"]
        except (ValueError, KeyError, TypeError):
            self.violations.append(f"socket {sock.number}: not an ack: {text!r:.200}")
            return
        delivery = self.deliveries.get(envelope_id)
        if delivery is None:
            self.violations.append(f"socket {sock.number}: ack of unknown envelope {envelope_id}")
        elif envelope_id in self.acks:
            self.violations.append(f"socket {sock.number}: envelope {envelope_id} acked twice")
        else:
            took = trio.current_time() - delivery.sent_at
            self.acks[envelope_id] = took
            if took > ACK_DEADLINE_SECS:
                self.violations.append(f"envelope {envelope_id} acked after {took:.2f} s")
        self._notify()

    # -- Web API -----------------------------------------------------------------------

    async def _serve_http(self, stream: trio.SocketStream) -> None:
        await serve_requests(stream, self._answer)

    def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = {name.lower(): value.decode("latin-1") for name, value in request.headers}
        target = request.target.decode()
        token = headers.get(b"authorization", "").removeprefix("Bearer ")
        if request.method == b"GET" and target in self.files:
            return self._download(target, token)
        if request.method != b"POST" or not target.startswith("/api/"):
            return 404, [], b"not found"
        method = target.removeprefix("/api/").partition("?")[0]
        args = self._args(headers.get(b"content-type", ""), body, method)
        now = trio.current_time()
        if self.down:
            self.calls.append(ApiCall(method, args, 503, None, now))
            self._notify()
            return 503, [], b"service unavailable"
        waits = self._rate_limits.get(method)
        if waits:
            retry_after = waits.pop(0)
            self.calls.append(ApiCall(method, args, 429, None, now))
            self._notify()
            return 429, [(b"retry-after", f"{retry_after:g}".encode())], b""
        answer = self._call(method, token, args)
        error = None if answer.get("ok") else str(answer.get("error"))
        self.calls.append(ApiCall(method, args, 200, error, now))
        self._notify()
        return (
            200,
            [(b"content-type", b"application/json; charset=utf-8")],
            json.dumps(answer).encode(),
        )

    def _args(self, content_type: str, body: bytes, method: str) -> Json:
        if not body:
            return {}
        if content_type.startswith("application/json"):
            try:
                parsed = json.loads(body)
            except ValueError:
                self.violations.append(f"{method}: body is not JSON")
                return {}
            return parsed if isinstance(parsed, dict) else {}
        return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}

    def _download(self, path: str, token: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if token != BOT_TOKEN:
            self.violations.append(f"file {path} fetched without the bot token")
            return 403, [], b"forbidden"
        data, mimetype = self.files[path]
        self.file_downloads.append(path)
        self._notify()
        return 200, [(b"content-type", mimetype.encode())], data

    def _call(self, method: str, token: str, args: Json) -> Json:
        if not token:
            self.violations.append(f"{method}: called without a token")
            return {"ok": False, "error": "not_authed"}
        if self.auth_error:
            return {"ok": False, "error": self.auth_error}
        wanted = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != wanted:
            if token in (APP_TOKEN, BOT_TOKEN):
                self.violations.append(f"{method}: called with the wrong kind of token")
                return {"ok": False, "error": "not_allowed_token_type"}
            self.violations.append(f"{method}: called with an unknown token")
            return {"ok": False, "error": "invalid_auth"}
        handler = _METHODS.get(method)
        if handler is None:
            self.violations.append(f"{method}: not a method the fake knows")
            return {"ok": False, "error": "unknown_method"}
        return handler(self, args)

    def _required(self, method: str, args: Json, *names: str) -> str | None:
        for name in names:
            if not args.get(name):
                self.violations.append(f"{method}: missing argument {name}")
                return name
        return None

    def _check_content(self, method: str, args: Json) -> None:
        text = args.get("text")
        if not isinstance(text, str) or not text:
            self.violations.append(f"{method}: no text (needed as the notification fallback)")
        elif len(shown_text(text)) > TEXT_LIMIT:
            self.violations.append(
                f"{method}: text of {len(shown_text(text))} characters (over {TEXT_LIMIT})"
            )
        blocks = args.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if blocks is not None:
            self.violations.extend(f"{method}: {p}" for p in block_problems(blocks))

    def _auth_test(self, args: Json) -> Json:
        return {
            "ok": True,
            "url": "https://fake.slack.com/",
            "team": "Fake",
            "user": "agent-bot",
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _connections_open(self, args: Json) -> Json:
        ticket = secrets.token_hex(8)
        self._tickets.add(ticket)
        url = f"ws://127.0.0.1:{self.ws_port}/link/?ticket={ticket}&app_id={APP_ID}"
        return {"ok": True, "url": url}

    def _post_message(self, args: Json) -> Json:
        if self._required("chat.postMessage", args, "channel"):
            return {"ok": False, "error": "channel_not_found"}
        self._check_content("chat.postMessage", args)
        channel, ts = args["channel"], self.next_ts()
        blocks = _blocks(args)
        thread_ts = args.get("thread_ts") or None
        if thread_ts is not None and (channel, thread_ts) not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        text = str(args.get("text", ""))
        message = Message(channel, ts, text, BOT_USER_ID, thread_ts, blocks or [], [text])
        self.messages[(channel, ts)] = message
        shown = {"type": "message", "text": text, "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts}
        return {"ok": True, "channel": channel, "ts": ts, "message": shown}

    def _update(self, args: Json) -> Json:
        if self._required("chat.update", args, "channel", "ts"):
            return {"ok": False, "error": "message_not_found"}
        self._check_content("chat.update", args)
        message = self.messages.get((args["channel"], args["ts"]))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.user != BOT_USER_ID:
            return {"ok": False, "error": "cant_update_message"}
        message.text = str(args.get("text", ""))
        message.texts.append(message.text)
        blocks = _blocks(args)
        if blocks is not None:  # left out: the blocks stay; [] removes them
            message.blocks = blocks
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": message.text}

    def _post_ephemeral(self, args: Json) -> Json:
        if self._required("chat.postEphemeral", args, "channel", "user"):
            return {"ok": False, "error": "user_not_in_channel"}
        self._check_content("chat.postEphemeral", args)
        self.ephemeral.append(dict(args))
        return {"ok": True, "message_ts": self.next_ts()}

    def _reaction(self, method: str, args: Json) -> Json:
        if self._required(method, args, "channel", "timestamp", "name"):
            return {"ok": False, "error": "no_item_specified"}
        message = self.messages.get((args["channel"], args["timestamp"]))
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        name = str(args["name"])
        if method == "reactions.add":
            if name in message.reactions:
                return {"ok": False, "error": "already_reacted"}
            message.reactions.add(name)
        else:
            if name not in message.reactions:
                return {"ok": False, "error": "no_reaction"}
            message.reactions.discard(name)
        return {"ok": True}


def shown_text(text: str) -> str:
    """Message text as Slack shows it: ``&lt; &gt; &amp;`` are one character each."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _blocks(args: Json) -> list[Any] | None:
    blocks = args.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return blocks if isinstance(blocks, list) else None


def block_problems(blocks: object) -> list[str]:
    """What breaks Block Kit's documented limits in ``blocks``."""
    if not isinstance(blocks, list):
        return ["blocks is not an array"]
    problems = []
    if len(blocks) > 50:
        problems.append(f"{len(blocks)} blocks (at most 50)")
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "section":
            text = block.get("text", {}).get("text", "")
            if len(text) > SECTION_TEXT_LIMIT:
                problems.append(f"section text of {len(text)} characters (over 3000)")
        elif kind == "actions":
            elements = block.get("elements", [])
            if len(elements) > 25:
                problems.append(f"{len(elements)} elements in an actions block (at most 25)")
            for element in elements:
                problems.extend(_button_problems(element))
        else:
            problems.append(f"block type {kind!r} is not one the broker sends")
    return problems


def _button_problems(element: Json) -> list[str]:
    if element.get("type") != "button":
        return [f"element type {element.get('type')!r} is not a button"]
    problems = []
    text = element.get("text", {})
    if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 75:
        problems.append(f"button text {text!r} (plain_text, 1 to 75 characters)")
    if len(element.get("value", "")) > 2000:
        problems.append("button value over 2000 characters")
    if len(element.get("action_id", "")) > 255:
        problems.append("button action_id over 255 characters")
    if element.get("style") not in (None, "primary", "danger"):
        problems.append(f"button style {element.get('style')!r} (primary or danger, or none)")
    return problems


_METHODS: dict[str, Callable[[FakeSlack, Json], Json]] = {
    "auth.test": FakeSlack._auth_test,
    "apps.connections.open": FakeSlack._connections_open,
    "chat.postMessage": FakeSlack._post_message,
    "chat.update": FakeSlack._update,
    "chat.postEphemeral": FakeSlack._post_ephemeral,
    "reactions.add": lambda fake, args: fake._reaction("reactions.add", args),
    "reactions.remove": lambda fake, args: fake._reaction("reactions.remove", args),
}


@asynccontextmanager
async def open_fake_slack() -> AsyncIterator[FakeSlack]:
    """Run a fake Slack on two loopback ports (Web API, Socket Mode) for the
    duration of the block."""
    fake = FakeSlack()
    async with trio.open_nursery() as nursery:
        fake._nursery = nursery
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, fake._serve_http, 0, host="127.0.0.1")
        )
        fake.http_port = listeners[0].socket.getsockname()[1]
        server = await nursery.start(
            trio_websocket.serve_websocket, fake._serve_socket, "127.0.0.1", 0, None
        )
        fake.ws_port = server.port
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
