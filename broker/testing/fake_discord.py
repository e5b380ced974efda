"""A fake Discord (API v10): REST over HTTP and the gateway over WebSocket, on loopback.

Written from Discord's API documentation, it plays Discord for the adapter's
tests and the ``discord`` benchmark:

* **REST** (``api_base_url``): ``GET /gateway/bot``, messages (create with
  ``nonce``/``enforce_nonce``, edit), threads from messages, own reactions,
  channels, interaction callbacks and follow-ups, application command
  overwrites, and attachment downloads. Every request needs ``Authorization:
  Bot <token>`` (else 401). Responses carry ``X-RateLimit-*`` headers of
  per-route buckets (``route_limit`` per ``route_window`` seconds) and a
  global limit; going over answers 429 with ``retry_after``, as Discord does.
  Faults on demand: :meth:`FakeDiscord.force_429`, :attr:`FakeDiscord.down`
  (every request answers 503), :meth:`FakeDiscord.delete_channel`.
* **Gateway** (``gateway_url``): HELLO, heartbeats and ACKs (or none, with
  :attr:`FakeDiscord.ack_heartbeats` False), IDENTIFY -> READY, RESUME with the
  missed dispatches replayed then RESUMED, and on demand RECONNECT, INVALID_SESSION
  and close codes. A wrong token closes with 4004; an intent in
  :attr:`FakeDiscord.disallowed_intents` with 4014.

What breaks the documented rules (content over 2000 characters, a bad
component, an interaction answered after 3 s or twice, a heartbeat without
the last sequence, a gateway payload over 4096 bytes) is answered as Discord
would and recorded in :attr:`FakeDiscord.violations`; :meth:`FakeDiscord.assert_clean`
fails a test on any.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import trio
import trio_websocket

from broker.testing.http11 import Answer, serve_requests

log = logging.getLogger(__name__)

BOT_ID = "900000000000000001"
APPLICATION_ID = "900000000000000002"
GUILD_ID = "100000000000000001"
CHANNEL_ID = "200000000000000001"
MESSAGE_LIMIT = 2000
INTERACTION_DEADLINE_SECS = 3.0
GATEWAY_PAYLOAD_LIMIT = 4096
PRIVILEGED_MESSAGE_CONTENT = 1 << 15
THREAD_TYPES = frozenset({10, 11, 12})

_snowflakes = itertools.count(300000000000000001)


def snowflake() -> str:
    return str(next(_snowflakes))


def user(user_id: str, username: str, *, bot: bool = False) -> dict[str, Any]:
    """A user object as Discord sends it."""
    return {
        "id": user_id,
        "username": username,
        "discriminator": "0",
        "global_name": username.title(),
        "avatar": None,
        "bot": bot,
    }


ALICE = user("400000000000000001", "alice")
BOB = user("400000000000000002", "bob")
OTHER_BOT = user("400000000000000003", "helper", bot=True)


@attrs.define
class Request:
    method: str
    path: str
    body: Any
    status: int
    at: float


@attrs.define
class _Bucket:
    remaining: int
    reset_at: float
    reset_epoch: float  # X-RateLimit-Reset: the same for every answer of the window


@attrs.define
class _Session:
    session_id: str
    seq: int = 0
    log: list[dict[str, Any]] = attrs.field(factory=list)


class FakeDiscord:
    """See the module docstring. Start it with :func:`fake_discord`."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        heartbeat_interval_ms: int = 41250,
        route_limit: int = 5,
        route_window: float = 5.0,
        global_per_second: int = 50,
        session_start_remaining: int = 1000,
        max_concurrency: int = 1,
        identify_close: int | None = None,
    ) -> None:
        self.token = token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.route_limit = route_limit
        self.route_window = route_window
        self.global_per_second = global_per_second
        self.session_start_remaining = session_start_remaining
        self.max_concurrency = max_concurrency
        self.bot = user(BOT_ID, "agent-broker", bot=True)
        self.api_base_url = ""
        self.gateway_url = ""
        self.violations: list[str] = []
        self.requests: list[Request] = []
        self.rate_limited = 0  # 429s answered
        self.down = False
        self.ack_heartbeats = True
        self.disallowed_intents = 0
        self.replay_overlap = 0  # replay this many already-seen dispatches on RESUME
        self.identify_close = identify_close  # close every IDENTIFY with this code
        self._accepting = trio.Event()
        self._accepting.set()
        self.channels: dict[str, dict[str, Any]] = {
            CHANNEL_ID: {"id": CHANNEL_ID, "type": 0, "guild_id": GUILD_ID, "name": "general"},
        }
        self.messages: dict[str, dict[str, Any]] = {}
        self.reactions: dict[str, list[str]] = collections.defaultdict(list)
        self.files: dict[str, bytes] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.interactions: dict[str, dict[str, Any]] = {}
        self.followups: list[dict[str, Any]] = []
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.heartbeats: list[tuple[float, Any]] = []
        self.connections = 0
        self.connection_paths: list[str] = []
        self.closes_sent: list[int] = []
        self.session: _Session | None = None
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._identified = trio.Event()
        self._changed = trio.Event()
        self._buckets: dict[str, _Bucket] = {}
        self._recent: collections.deque[float] = collections.deque()
        self._forced_429: list[tuple[str, str, float, bool]] = []
        self._nonces: dict[tuple[str, str], str] = {}

    # --- what tests look at ---------------------------------------------------------

    def assert_clean(self) -> None:
        assert not self.violations, "Discord rules broken:\n" + "\n".join(self.violations)

    def bot_messages(self, channel_id: str) -> list[dict[str, Any]]:
        """The bot's messages in ``channel_id``, oldest first (edits applied)."""
        return [
            m
            for m in self.messages.values()
            if m["channel_id"] == channel_id and m["author"]["id"] == BOT_ID
        ]

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Any) -> None:
        """Wait until ``predicate()`` is true (re-checked after every change)."""
        while not predicate():
            await self._changed.wait()

    async def wait_identified(self) -> None:
        await self._identified.wait()

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # --- what users do ----------------------------------------------------------------

    def add_thread(self, parent_id: str, owner_id: str, thread_id: str | None = None) -> str:
        thread_id = thread_id or snowflake()
        self.channels[thread_id] = {
            "id": thread_id,
            "type": 11,
            "guild_id": self.channels[parent_id].get("guild_id"),
            "parent_id": parent_id,
            "owner_id": owner_id,
            "name": "thread",
        }
        return thread_id

    def add_dm(self, recipient: dict[str, Any]) -> str:
        channel_id = snowflake()
        self.channels[channel_id] = {"id": channel_id, "type": 1, "recipients": [recipient]}
        return channel_id

    def add_file(self, filename: str, data: bytes, content_type: str) -> dict[str, Any]:
        """An attachment object whose ``url`` this fake serves."""
        attachment_id = snowflake()
        self.files[attachment_id] = data
        url = f"{self.api_base_url.rsplit('/api/', 1)[0]}/attachments/{attachment_id}/{filename}"
        return {
            "id": attachment_id,
            "filename": filename,
            "content_type": content_type,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }

    async def post_message(
        self,
        channel_id: str,
        content: str,
        *,
        author: dict[str, Any] = ALICE,
        mention_bot: bool = False,
        attachments: tuple[dict[str, Any], ...] = (),
        message_type: int = 0,
    ) -> dict[str, Any]:
        """A user writes in ``channel_id``: stored, then MESSAGE_CREATE is dispatched."""
        channel = self.channels[channel_id]
        mentions = [self.bot] if mention_bot else []
        if mention_bot:
            content = f"<@{BOT_ID}> {content}"
        message = self._message(channel_id, content, author, message_type=message_type)
        message["mentions"] = mentions
        message["attachments"] = list(attachments)
        payload = dict(message, channel_type=channel["type"])
        if channel.get("guild_id"):
            payload["guild_id"] = channel["guild_id"]
            payload["member"] = {"roles": [], "joined_at": message["timestamp"]}
        await self.dispatch("MESSAGE_CREATE", payload)
        return message

    async def click(
        self, message_id: str, custom_id: str, *, clicker: dict[str, Any] = ALICE
    ) -> str:
        """A user clicks a button of a bot message: INTERACTION_CREATE (type 3). Returns its id."""
        message = self.messages[message_id]
        return await self._interaction(
            3,
            message["channel_id"],
            clicker,
            {"custom_id": custom_id, "component_type": 2},
            message=message,
        )

    async def slash(
        self,
        channel_id: str,
        name: str,
        options: tuple[tuple[str, str], ...] = (),
        *,
        invoker: dict[str, Any] = ALICE,
    ) -> str:
        """A user runs an application command: INTERACTION_CREATE (type 2)."""
        data = {
            "id": snowflake(),
            "name": name,
            "type": 1,
            "options": [{"name": n, "type": 3, "value": v} for n, v in options],
        }
        return await self._interaction(2, channel_id, invoker, data)

    async def _interaction(
        self,
        kind: int,
        channel_id: str,
        who: dict[str, Any],
        data: dict[str, Any],
        message: dict[str, Any] | None = None,
    ) -> str:
        channel = self.channels[channel_id]
        interaction_id = snowflake()
        token = f"itoken-{interaction_id}"
        payload: dict[str, Any] = {
            "id": interaction_id,
            "application_id": APPLICATION_ID,
            "type": kind,
            "data": data,
            "channel_id": channel_id,
            "channel": {"id": channel_id, "type": channel["type"]},
            "token": token,
            "version": 1,
        }
        if channel.get("guild_id"):
            payload["guild_id"] = channel["guild_id"]
            payload["member"] = {"user": who, "roles": [], "permissions": "0"}
        else:
            payload["user"] = who
        if message is not None:
            payload["message"] = message
        self.interactions[interaction_id] = {
            "token": token,
            "created": trio.current_time(),
            "callback": None,
            "callback_at": None,
        }
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction_id

    def _message(
        self, channel_id: str, content: str, author: dict[str, Any], *, message_type: int = 0
    ) -> dict[str, Any]:
        message_id = snowflake()
        message: dict[str, Any] = {
            "id": message_id,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": message_type,
            "components": [],
            "edits": 0,
        }
        self.messages[message_id] = message
        return message

    def delete_channel(self, channel_id: str) -> None:
        self.channels.pop(channel_id, None)

    def force_429(
        self, method: str, path_pattern: str, retry_after: float, *, is_global: bool = False
    ) -> None:
        """The next request matching ``method`` and ``path_pattern`` gets a 429."""
        self._forced_429.append((method, path_pattern, retry_after, is_global))

    # --- gateway control -----------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Dispatch ``event`` in the current session: sent now if connected, else
        kept for the replay of a RESUME. Before any session, it is lost (as on Discord)."""
        session = self.session
        if session is None:
            self.violations.append(f"dispatch {event} before any session")
            return
        session.seq += 1
        payload = {"op": 0, "d": data, "s": session.seq, "t": event}
        session.log.append(payload)
        await self._send(payload)

    async def send_op(self, op: int, d: Any = None) -> None:
        await self._send({"op": op, "d": d, "s": None, "t": None})

    async def reconnect(self) -> None:
        """RECONNECT (op 7): the client should resume on the resume URL."""
        await self.send_op(7)

    async def invalid_session(self, resumable: bool) -> None:
        await self.send_op(9, resumable)

    async def close(self, code: int, reason: str = "") -> None:
        """Close the live connection with ``code``."""
        ws = self._ws
        if ws is not None:
            self.closes_sent.append(code)
            with trio.move_on_after(2):
                await ws.aclose(code, reason)

    async def _send(self, payload: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send_message(json.dumps(payload))
        except trio_websocket.ConnectionClosed:
            pass

    # --- gateway server --------------------------------------------------------------

    def hold_connections(self) -> None:
        """New gateway connections wait (a gap) until :meth:`release_connections`."""
        self._accepting = trio.Event()

    def release_connections(self) -> None:
        self._accepting.set()

    async def _gateway(self, request: trio_websocket.WebSocketRequest) -> None:
        await self._accepting.wait()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        ws = await request.accept()
        self.connections += 1
        self.connection_paths.append(request.path)
        if query.get("v") != ["10"] or query.get("encoding") != ["json"]:
            self.violations.append(f"gateway connected without v=10&encoding=json: {request.path}")
            await ws.aclose(4012, "Invalid API version")
            return
        if self._ws is not None:
            with trio.move_on_after(1):
                await self._ws.aclose(4000, "replaced")
        self._ws = ws
        self._notify()
        try:
            await ws.send_message(
                json.dumps({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            )
            while True:
                text = await ws.get_message()
                if len(text.encode() if isinstance(text, str) else text) > GATEWAY_PAYLOAD_LIMIT:
                    self.violations.append("gateway payload over 4096 bytes")
                    await ws.aclose(4002, "Decode error")
                    return
                payload = json.loads(text)
                op, d = payload.get("op"), payload.get("d")
                if op == 1:
                    self.heartbeats.append((trio.current_time(), d))
                    if d is not None and (self.session is None or d > self.session.seq):
                        self.violations.append(f"heartbeat with seq {d} never sent")
                    if self.ack_heartbeats:
                        await ws.send_message(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws, d)
                elif op == 6:
                    await self._resume(ws, d)
                self._notify()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            self._notify()

    async def _identify(self, ws: trio_websocket.WebSocketConnection, d: dict[str, Any]) -> None:
        self.identifies.append(dict(d, at=trio.current_time(), token="***"))
        if d.get("token") != self.token or self.identify_close is not None:
            code = 4004 if self.identify_close is None else self.identify_close
            self.closes_sent.append(code)
            await ws.aclose(code, "Authentication failed." if code == 4004 else "closed")
            return
        if int(d.get("intents", 0)) & self.disallowed_intents:
            self.closes_sent.append(4014)
            await ws.aclose(4014, "Disallowed intent(s).")
            return
        self.session = _Session(f"session-{snowflake()}")
        self._identified.set()
        resume_url = self.gateway_url + "/resume"
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": self.bot,
                "guilds": [{"id": GUILD_ID, "unavailable": True}],
                "session_id": self.session.session_id,
                "resume_gateway_url": resume_url,
                "application": {"id": APPLICATION_ID, "flags": 0},
            },
        )

    async def _resume(self, ws: trio_websocket.WebSocketConnection, d: dict[str, Any]) -> None:
        self.resumes.append(dict(d, at=trio.current_time(), token="***"))
        session = self.session
        if d.get("token") != self.token:
            await ws.aclose(4004, "Authentication failed.")
            return
        if session is None or d.get("session_id") != session.session_id:
            await ws.send_message(json.dumps({"op": 9, "d": False}))
            return
        seq = d.get("seq") or 0
        for payload in session.log:
            if payload["s"] > seq - self.replay_overlap:
                await ws.send_message(json.dumps(payload))
        await self.dispatch("RESUMED", {})

    # --- REST server -------------------------------------------------------------------

    async def _serve_http(self, stream: trio.SocketStream) -> None:
        await serve_requests(stream, self._answer_and_notify)

    def _answer_and_notify(self, request: h11.Request, raw: bytes) -> Answer:
        answer = self._answer(request, raw)
        self._notify()
        return answer

    def _answer(self, request: h11.Request, raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        method = request.method.decode()
        target = request.target.decode()
        path = urllib.parse.urlsplit(target).path
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._record(method, path, None, 400, {"message": "bad JSON", "code": 50109})
        if path.startswith("/attachments/"):
            data = self.files.get(path.split("/")[2])
            if data is None:
                return 404, [], b"not found"
            self.requests.append(Request(method, path, None, 200, trio.current_time()))
            return 200, [("content-type", "application/octet-stream")], data
        path = path.removeprefix("/api/v10")
        if headers.get("authorization") != f"Bot {self.token}":
            return self._record(
                method, path, body, 401, {"message": "401: Unauthorized", "code": 0}
            )
        if self.down:
            return self._record(method, path, body, 503, {"message": "upstream unavailable"})
        limited = self._limit(method, path)
        if limited is not None:
            self.rate_limited += 1
            self.requests.append(Request(method, path, body, 429, trio.current_time()))
            return limited
        status, answer = self._route(method, path, body)
        status_headers = self._rate_headers(method, path)
        code, extra, content = self._record(method, path, body, status, answer)
        return code, extra + status_headers, content

    def _record(
        self, method: str, path: str, body: Any, status: int, answer: Any
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        self.requests.append(Request(method, path, body, status, trio.current_time()))
        if answer is None:
            return status, [], b""
        return status, [("content-type", "application/json")], json.dumps(answer).encode()

    # Rate limits: the fake's own grouping of routes (method + path with every id
    # after the first replaced), independent of the client's.
    def _bucket_key(self, method: str, path: str) -> str:
        parts = path.strip("/").split("/")
        seen_major = False
        for index, part in enumerate(parts):
            if part.isdigit():
                if seen_major or index != 1 or parts[0] not in ("channels", "guilds"):
                    parts[index] = "#"
                seen_major = True
        if "reactions" in parts:
            parts[parts.index("reactions") + 1 :] = ["*"]
        return method + " /" + "/".join(parts)

    def _limit(self, method: str, path: str) -> tuple[int, list[tuple[str, str]], bytes] | None:
        now = trio.current_time()
        for index, (m, pattern, retry_after, is_global) in enumerate(self._forced_429):
            if m == method and re.search(pattern, path):
                del self._forced_429[index]
                return self._too_many(retry_after, is_global)
        if not path.startswith(("/interactions/", "/webhooks/")):
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.global_per_second:
                return self._too_many(self._recent[0] + 1.0 - now, True)
            self._recent.append(now)
        key = self._bucket_key(method, path)
        bucket = self._buckets.get(key)
        if bucket is None or now >= bucket.reset_at:
            epoch = round(time.time() + self.route_window, 3)
            bucket = self._buckets[key] = _Bucket(self.route_limit, now + self.route_window, epoch)
        if bucket.remaining <= 0:
            self.violations.append(f"request on an exhausted bucket: {method} {path}")
            return self._too_many(bucket.reset_at - now, False, key)
        bucket.remaining -= 1
        return None

    def _rate_headers(self, method: str, path: str) -> list[tuple[str, str]]:
        key = self._bucket_key(method, path)
        bucket = self._buckets[key]
        reset_after = max(0.0, bucket.reset_at - trio.current_time())
        return [
            ("x-ratelimit-limit", str(self.route_limit)),
            ("x-ratelimit-remaining", str(bucket.remaining)),
            ("x-ratelimit-reset", f"{bucket.reset_epoch:.3f}"),
            ("x-ratelimit-reset-after", f"{reset_after:.3f}"),
            (
                "x-ratelimit-bucket",
                hashlib.sha1(re.sub(r"\d+", "#", key).encode()).hexdigest()[:16],
            ),
        ]

    def _too_many(
        self, retry_after: float, is_global: bool, key: str | None = None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        retry_after = round(max(retry_after, 0.001), 3)
        headers = [
            ("content-type", "application/json"),
            ("retry-after", str(math.ceil(retry_after))),
            ("x-ratelimit-scope", "global" if is_global else "user"),
        ]
        if is_global:
            headers.append(("x-ratelimit-global", "true"))
        elif key is not None:
            headers += [
                ("x-ratelimit-limit", str(self.route_limit)),
                ("x-ratelimit-remaining", "0"),
            ]
            headers.append(("x-ratelimit-reset-after", f"{retry_after:.3f}"))
        body = {"message": "You are being rate limited.", "retry_after": retry_after}
        body["global"] = is_global
        return 429, headers, json.dumps(body).encode()

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        match parts:
            case ["gateway", "bot"] if method == "GET":
                return 200, {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": self.session_start_remaining,
                        "reset_after": 14400000,
                        "max_concurrency": self.max_concurrency,
                    },
                }
            case ["applications", "@me"] if method == "GET":
                return 200, {"id": APPLICATION_ID, "name": "agent-broker", "bot": self.bot}
            case ["channels", channel_id] if method == "GET":
                channel = self.channels.get(channel_id)
                return (200, channel) if channel else _unknown_channel()
            case ["channels", channel_id, "messages"] if method == "POST":
                return self._create_message(channel_id, body)
            case ["channels", channel_id, "messages", message_id] if method == "PATCH":
                return self._edit_message(channel_id, message_id, body)
            case ["channels", channel_id, "messages", message_id, "threads"] if method == "POST":
                return self._start_thread(channel_id, message_id, body)
            case ["channels", channel_id, "messages", message_id, "reactions", emoji, "@me"]:
                if channel_id not in self.channels:
                    return _unknown_channel()
                if message_id not in self.messages:
                    return 404, {"message": "Unknown Message", "code": 10008}
                emoji = urllib.parse.unquote(emoji)
                if method == "PUT" and emoji not in self.reactions[message_id]:
                    self.reactions[message_id].append(emoji)
                elif method == "DELETE" and emoji in self.reactions[message_id]:
                    self.reactions[message_id].remove(emoji)
                return 204, None
            case ["interactions", interaction_id, token, "callback"] if method == "POST":
                return self._callback(interaction_id, token, body)
            case ["webhooks", application_id, token] if method == "POST":
                return self._followup(application_id, token, body)
            case ["webhooks", application_id, token, "messages", "@original"] if method == "PATCH":
                return self._followup(application_id, token, body)
            case ["applications", application_id, *rest] if method == "PUT":
                if application_id != APPLICATION_ID or not isinstance(body, list):
                    return 400, {"message": "Invalid Form Body", "code": 50035}
                scope = rest[1] if rest[:1] == ["guilds"] else "global"
                self.commands[scope] = body
                return 200, [dict(c, id=snowflake(), application_id=APPLICATION_ID) for c in body]
        return 404, {"message": "404: Not Found", "code": 0}

    def _check_message(self, body: Any, where: str) -> tuple[int, Any] | None:
        if not isinstance(body, dict):
            return 400, {"message": "Invalid Form Body", "code": 50035}
        content = body.get("content")
        if content is not None and len(content) > MESSAGE_LIMIT:
            self.violations.append(f"{where}: content of {len(content)} characters")
            return 400, {"message": "Invalid Form Body", "code": 50035}
        problem = _component_problem(body.get("components"))
        if problem:
            self.violations.append(f"{where}: {problem}")
            return 400, {"message": "Invalid Form Body", "code": 50035}
        return None

    def _create_message(self, channel_id: str, body: Any) -> tuple[int, Any]:
        if channel_id not in self.channels:
            return _unknown_channel()
        bad = self._check_message(body, f"POST /channels/{channel_id}/messages")
        if bad:
            return bad
        if not body.get("content") and not body.get("components"):
            self.violations.append("message without content or components")
            return 400, {"message": "Cannot send an empty message", "code": 50006}
        nonce = body.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            self.violations.append(f"nonce over 25 characters: {nonce!r}")
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self._nonces.get((channel_id, str(nonce)))
            if earlier is not None:
                return 200, _public(self.messages[earlier])
        message = self._message(channel_id, body.get("content") or "", self.bot)
        message["components"] = body.get("components") or []
        if nonce is not None:
            self._nonces[(channel_id, str(nonce))] = message["id"]
        return 200, _public(message)

    def _edit_message(self, channel_id: str, message_id: str, body: Any) -> tuple[int, Any]:
        if channel_id not in self.channels:
            return _unknown_channel()
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return 404, {"message": "Unknown Message", "code": 10008}
        if message["author"]["id"] != BOT_ID:
            self.violations.append(f"edit of a message the bot did not write: {message_id}")
            return 403, {"message": "Cannot edit a message authored by another user", "code": 50005}
        bad = self._check_message(body, f"PATCH /channels/{channel_id}/messages/{message_id}")
        if bad:
            return bad
        if "content" in body:
            message["content"] = body["content"] or ""
        if "components" in body:
            message["components"] = body["components"] or []
        message["edits"] += 1
        return 200, _public(message)

    def _start_thread(self, channel_id: str, message_id: str, body: Any) -> tuple[int, Any]:
        channel = self.channels.get(channel_id)
        if channel is None:
            return _unknown_channel()
        if channel["type"] not in (0, 5):
            return 400, {"message": "Cannot execute action on this channel type", "code": 50024}
        if message_id not in self.messages:
            return 404, {"message": "Unknown Message", "code": 10008}
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            self.violations.append(f"thread name must be 1-100 characters: {name!r}")
            return 400, {"message": "Invalid Form Body", "code": 50035}
        if message_id in self.channels:
            return 400, {
                "message": "A thread has already been created for this message",
                "code": 160004,
            }
        self.add_thread(channel_id, BOT_ID, thread_id=message_id)
        self.channels[message_id]["name"] = name
        return 201, self.channels[message_id]

    def _callback(self, interaction_id: str, token: str, body: Any) -> tuple[int, Any]:
        interaction = self.interactions.get(interaction_id)
        if interaction is None or interaction["token"] != token:
            return 404, {"message": "Unknown interaction", "code": 10062}
        now = trio.current_time()
        if interaction["callback"] is not None:
            self.violations.append(f"interaction {interaction_id} acknowledged twice")
            return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
        if now - interaction["created"] > INTERACTION_DEADLINE_SECS:
            self.violations.append(
                f"interaction {interaction_id} answered after {now - interaction['created']:.1f} s"
            )
            return 404, {"message": "Unknown interaction", "code": 10062}
        if not isinstance(body, dict) or body.get("type") not in (1, 4, 5, 6, 7, 8, 9):
            self.violations.append(f"bad interaction callback: {body!r}")
            return 400, {"message": "Invalid Form Body", "code": 50035}
        interaction["callback"] = body
        interaction["callback_at"] = now
        return 204, None

    def _followup(self, application_id: str, token: str, body: Any) -> tuple[int, Any]:
        interaction = next((i for i in self.interactions.values() if i["token"] == token), None)
        if application_id != APPLICATION_ID or interaction is None:
            return 404, {"message": "Unknown Webhook", "code": 10015}
        if interaction["callback"] is None:
            self.violations.append("follow-up before the interaction was acknowledged")
        bad = self._check_message(body, "follow-up")
        if bad:
            return bad
        self.followups.append(dict(body, token=token))
        return 200, {
            "id": snowflake(),
            "content": body.get("content", ""),
            "flags": body.get("flags", 0),
        }


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "edits"}


def _unknown_channel() -> tuple[int, Any]:
    return 404, {"message": "Unknown Channel", "code": 10003}


def _component_problem(components: Any) -> str | None:
    if components is None:
        return None
    if not isinstance(components, list) or len(components) > 5:
        return "components must be a list of at most 5 action rows"
    custom_ids: set[str] = set()
    for row in components:
        if not isinstance(row, dict) or row.get("type") != 1:
            return f"top-level component is not an action row: {row!r}"
        buttons = row.get("components")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 5:
            return "an action row holds 1 to 5 buttons"
        for button in buttons:
            if button.get("type") != 2 or button.get("style") not in (1, 2, 3, 4):
                return f"not a button with custom_id style 1-4: {button!r}"
            custom_id = button.get("custom_id")
            if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
                return f"custom_id must be 1-100 characters: {custom_id!r}"
            if custom_id in custom_ids:
                return f"custom_id {custom_id!r} used twice in one message"
            custom_ids.add(custom_id)
            label = button.get("label")
            if label is not None and len(label) > 80:
                return f"button label over 80 characters: {label!r}"
    return None


@asynccontextmanager
async def fake_discord(**options: Any) -> AsyncIterator[FakeDiscord]:
    """Run a :class:`FakeDiscord` on 127.0.0.1 (both ports chosen by the system)."""
    fake = FakeDiscord(**options)
    async with trio.open_nursery() as nursery:
        serve_http = functools.partial(trio.serve_tcp, fake._serve_http, 0, host="127.0.0.1")
        listeners = await nursery.start(serve_http)
        http_port = listeners[0].socket.getsockname()[1]
        server = await nursery.start(
            trio_websocket.serve_websocket, fake._gateway, "127.0.0.1", 0, None
        )
        fake.api_base_url = f"http://127.0.0.1:{http_port}/api/v10"
        fake.gateway_url = f"ws://127.0.0.1:{server.port}"
        try:
            yield fake
        finally:
            nursery.cancel_scope.cancel()
