"""A correct, scriptable ACP agent: ``python -m broker.testing.fake_agent [flags]``.

It speaks ACP (JSON-RPC 2.0, one JSON message per line) on stdin/stdout and logs on stderr. With
plain prompts it is a friendly demo agent; lines starting with ``@`` script the turn (delays, tool
calls, crashes, hangs, floods, malformed output, permission requests ...). The full directive and
flag reference is docs/fake-agent.md; the grammar lives in :mod:`fake_agent_script`.

Concurrency: one reader task parses stdin in order; every request runs in its own task, so a
``session/cancel`` notification is handled while a prompt streams. Notifications and responses are
handled synchronously by the reader. Sessions persist as JSON files under the state directory, so
``session/load`` works after a restart. The agent exits when stdin closes (unless
``--ignore-stdin-eof``), cancelling whatever runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.testing import fake_agent_script as fs
from broker.testing import fake_agent_store as store
from broker.testing.fake_agent_turn import Turn, TurnControl, run_turn
from broker.testing.fake_agent_wire import (
    AUTH_REQUIRED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    JSON,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RpcError,
    Wire,
    log,
    read_lines,
    set_log_name,
)

Handler = Callable[[JSON, dict[str, Any]], Awaitable[JSON]]
PROTOCOL_VERSION = 1
VERSION = "1.0.0"
EOF_GRACE = 1.0


@attrs.frozen
class Options:
    """Command-line flags (see :func:`parse_args` and docs/fake-agent.md)."""

    name: str = "fake-agent"
    state_dir: Path = attrs.field(factory=store.default_state_dir)
    init_delay: float = 0.0
    new_delay: float = 0.0
    load_delay: float = 0.0
    load_session: bool = True
    images: bool = True
    message_ids: bool = True
    ignore_sigterm: bool = False
    ignore_stdin_eof: bool = False
    stderr_noise: float | None = None
    crash_on_start: int | None = None
    auth_required: bool = False
    auth_methods: tuple[str, ...] = ()  # "ID" (a login) or "ID=VAR,VAR" (env_var)
    session_id: str | None = None  # every session/new answers this id
    permission_timings: Path | None = None  # a JSON line per permission request answered


def _done_event() -> trio.Event:
    event = trio.Event()
    event.set()
    return event


@attrs.define(eq=False)
class TurnTicket:
    """A received prompt's place in its session's queue, taken synchronously when it is read.

    The turn waits for ``previous`` (the ticket before it), runs inside ``control.scope`` (so
    session/cancel also ends prompts still queued) and calls :meth:`finish` when answered.
    """

    previous: trio.Event
    queue: list[TurnTicket]
    done: trio.Event = attrs.field(factory=trio.Event)
    control: TurnControl = attrs.field(factory=lambda: TurnControl(trio.CancelScope()))

    def finish(self) -> None:
        self.done.set()
        if self in self.queue:
            self.queue.remove(self)


@attrs.define
class LiveSession:
    """A session known to this process: its record and its received, unanswered prompts."""

    record: store.SessionRecord
    mcp_servers: tuple[str, ...] = ()  # names, as session/new or session/load gave them
    last_ticket_done: trio.Event = attrs.field(factory=_done_event)
    tickets: list[TurnTicket] = attrs.field(factory=list)

    def take_ticket(self) -> TurnTicket:
        """A place at the end of this session's prompt queue (synchronous, so FIFO)."""
        ticket = TurnTicket(previous=self.last_ticket_done, queue=self.tickets)
        self.last_ticket_done = ticket.done
        self.tickets.append(ticket)
        return ticket

    def cancel_prompts(self, force: bool = False) -> tuple[int, int]:
        """Cancel every received prompt (running or queued); ``force`` overrides @hang-hard.

        Returns (prompts cancelled, prompts that ignored it).
        """
        ignored = 0
        for ticket in self.tickets:
            if force:
                ticket.control.scope.cancel()
            elif not ticket.control.cancel():
                ignored += 1
        return len(self.tickets) - ignored, ignored


def _auth_method(spec: str) -> dict[str, Any]:
    """``"ID"`` -> an agent-run login method; ``"ID=A,B"`` -> an env_var method needing A and B."""
    method_id, _, names = spec.partition("=")
    if not names:
        return {"id": method_id, "name": f"Log in ({method_id})", "description": None}
    return {
        "type": "env_var",
        "id": method_id,
        "name": f"Use {names}",
        "description": f"Requires setting {names}.",
        "vars": [{"name": name} for name in names.split(",")],
    }


def _params(params: JSON) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object")
    return params


def _str_param(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise RpcError(INVALID_PARAMS, f"missing or invalid {key!r} (a non-empty string)")
    return value


class FakeAgent:
    """Request handlers and session state of one fake agent process."""

    def __init__(self, options: Options, wire: Wire, nursery: trio.Nursery) -> None:
        self.options = options
        self.wire = wire
        self.nursery = nursery
        self.sessions: dict[str, LiveSession] = {}
        self.authenticated: str | None = None  # the method id, once authenticated
        self._save_lock = trio.Lock()
        self.handlers: dict[str, Handler] = {
            "initialize": self.initialize,
            "authenticate": self.authenticate,
            "session/new": self.session_new,
            "session/resume": self.session_resume,
            "session/set_mode": self.set_mode,
            "session/set_config_option": self.set_config_option,
            "session/close": self.session_close,
        }
        if options.load_session:
            self.handlers["session/load"] = self.session_load

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, line: bytes) -> None:
        """Handle one stdin line (synchronous: requests are started as tasks)."""
        try:
            message = json.loads(line)
        except ValueError:
            log(f"unparsable line ignored ({len(line)} bytes)")
            self.nursery.start_soon(self._reply_error, None, RpcError(PARSE_ERROR, "parse error"))
            return
        if not isinstance(message, dict):
            self.nursery.start_soon(
                self._reply_error, None, RpcError(INVALID_REQUEST, "not a JSON object")
            )
            return
        method = message.get("method")
        if isinstance(method, str) and "id" in message:
            handler = self._accept(method, message.get("params"))
            self.nursery.start_soon(
                self._serve, message["id"], method, handler, message.get("params")
            )
        elif isinstance(method, str):
            self.notification(method, message.get("params"))
        elif "id" in message and ("result" in message or "error" in message):
            if not self.wire.deliver_response(message):
                log(f"response to unknown or abandoned request {message.get('id')!r} ignored")
        else:
            self.nursery.start_soon(
                self._reply_error, message.get("id"), RpcError(INVALID_REQUEST, "invalid request")
            )

    def _accept(self, method: str, params: JSON) -> Handler | None:
        """The handler of a request, chosen when it is read; a prompt takes its queue place now."""
        if method != "session/prompt":
            return self.handlers.get(method)
        live = self._session_of(params)
        return functools.partial(self.session_prompt, live.take_ticket() if live else None)

    def _session_of(self, params: JSON) -> LiveSession | None:
        session_id = params.get("sessionId") if isinstance(params, dict) else None
        return self.sessions.get(session_id) if isinstance(session_id, str) else None

    async def _reply_error(self, request_id: JSON, error: RpcError) -> None:
        await self.wire.respond_error(request_id, error)

    async def _serve(
        self, request_id: JSON, method: str, handler: Handler | None, params: JSON
    ) -> None:
        """Run one request handler and answer; handler errors become JSON-RPC errors."""
        try:
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")
            result = await handler(request_id, _params({} if params is None else params))
        except RpcError as exc:
            await self.wire.respond_error(request_id, exc)
            return
        except trio.BrokenResourceError:
            raise  # stdout is gone: the process ends (see main)
        except Exception as exc:  # noqa: BLE001 - a handler bug must not end the process
            log(f"internal error in {method}: {exc!r}")
            await self.wire.respond_error(
                request_id, RpcError(INTERNAL_ERROR, "internal error", traceback.format_exc())
            )
            return
        if result is not _ALREADY_ANSWERED:
            await self.wire.respond(request_id, result)

    def notification(self, method: str, params: JSON) -> None:
        """``session/cancel`` cancels the session's running and queued prompts; others are
        ignored."""
        if method != "session/cancel":
            if not method.startswith("_"):
                log(f"notification {method} ignored")
            return
        live = self._session_of(params)
        cancelled, ignored = live.cancel_prompts() if live is not None else (0, 0)
        if ignored:
            log("session/cancel ignored (@hang-hard)")
        elif not cancelled:
            log("session/cancel with no running turn ignored")

    def cancel_all_turns(self) -> None:
        for live in self.sessions.values():
            live.cancel_prompts()

    # -- lifecycle -----------------------------------------------------------------------------

    async def initialize(self, _id: JSON, params: dict[str, Any]) -> JSON:
        await trio.sleep(self.options.init_delay)
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": {
                "loadSession": self.options.load_session,
                "promptCapabilities": {
                    "image": self.options.images,
                    "audio": False,
                    "embeddedContext": True,
                },
                "sessionCapabilities": {"resume": {}, "close": {}},
            },
            "authMethods": [_auth_method(spec) for spec in self.options.auth_methods],
            "agentInfo": {"name": self.options.name, "title": "Fake ACP agent", "version": VERSION},
        }

    async def authenticate(self, _id: JSON, params: dict[str, Any]) -> JSON:
        """Accept an advertised method (any id when none is advertised); an env_var
        one only if its variables are set (else -32603 naming the variable, as
        codex-acp answers)."""
        method_id = _str_param(params, "methodId")
        specs = {spec.partition("=")[0]: spec for spec in self.options.auth_methods}
        if specs and method_id not in specs:  # none advertised: any id is fine
            raise RpcError(INVALID_PARAMS, f"unknown auth method: {method_id}")
        for name in _auth_method(specs.get(method_id, method_id)).get("vars", []):
            if not os.environ.get(name["name"]):
                raise RpcError(INTERNAL_ERROR, "Internal error", f"{name['name']} is not set")
        self.authenticated = method_id
        log(f"authenticated with {method_id}")
        return {}

    def _check_auth(self) -> None:
        if self.options.auth_required and self.authenticated is None:
            raise RpcError(AUTH_REQUIRED, "Authentication required")

    async def session_new(self, _id: JSON, params: dict[str, Any]) -> JSON:
        self._check_auth()
        await trio.sleep(self.options.new_delay)
        session_id = self.options.session_id or store.new_session_id()
        record = store.SessionRecord(session_id, cwd=str(params.get("cwd", "")))
        await self._save(record)
        self.sessions[record.session_id] = LiveSession(record, _mcp_names(params))
        return {"sessionId": record.session_id, **store.session_state(record)}

    async def _stored(self, params: dict[str, Any]) -> store.SessionRecord:
        session_id = _str_param(params, "sessionId")
        live = self.sessions.get(session_id)
        if live is not None:
            return live.record
        record = None
        if store.valid_session_id(session_id):
            record = await trio.to_thread.run_sync(
                store.load_record, self.options.state_dir, session_id
            )
        if record is None:
            raise RpcError(INVALID_PARAMS, f"unknown session: {session_id}")
        self.sessions[session_id] = LiveSession(record)
        return record

    async def session_load(self, _id: JSON, params: dict[str, Any]) -> JSON:
        """Replay the stored history as session/update notifications, then answer."""
        self._check_auth()
        await trio.sleep(self.options.load_delay)
        record = await self._stored(params)
        self.sessions[record.session_id].mcp_servers = _mcp_names(params)
        for entry in list(record.history):
            kind = "user_message_chunk" if entry["role"] == "user" else "agent_message_chunk"
            await self.wire.notify(
                "session/update",
                {
                    "sessionId": record.session_id,
                    "update": {
                        "sessionUpdate": kind,
                        "content": {"type": "text", "text": entry["text"]},
                    },
                },
            )
        return store.session_state(record)

    async def session_resume(self, _id: JSON, params: dict[str, Any]) -> JSON:
        await trio.sleep(self.options.load_delay)
        return store.session_state(await self._stored(params))

    async def session_close(self, _id: JSON, params: dict[str, Any]) -> JSON:
        """Forget the session in this process (cancelling its turn); its file stays loadable."""
        live = self.sessions.pop(_str_param(params, "sessionId"), None)
        if live is not None:
            live.cancel_prompts(force=True)
        return {}

    def _live(self, params: dict[str, Any]) -> LiveSession:
        session_id = _str_param(params, "sessionId")
        live = self.sessions.get(session_id)
        if live is None:
            raise RpcError(INVALID_PARAMS, f"unknown session: {session_id} (new or load it first)")
        return live

    async def _save(self, record: store.SessionRecord) -> None:
        """Write ``record`` as it is now; saves are serialised, so the newest state lands last."""
        async with self._save_lock:
            text = store.encode_record(record)  # snapshot here: the thread sees no live object
            await trio.to_thread.run_sync(
                store.write_record, self.options.state_dir, record.session_id, text
            )

    async def set_mode(self, _id: JSON, params: dict[str, Any]) -> JSON:
        live = self._live(params)
        mode = _str_param(params, "modeId")
        if mode not in store.MODES:
            raise RpcError(INVALID_PARAMS, f"unknown mode {mode!r}; one of {sorted(store.MODES)}")
        live.record.mode = mode
        await self._save(live.record)
        await self.wire.notify(
            "session/update",
            {
                "sessionId": live.record.session_id,
                "update": {"sessionUpdate": "current_mode_update", "currentModeId": mode},
            },
        )
        return {}

    async def set_config_option(self, _id: JSON, params: dict[str, Any]) -> JSON:
        live = self._live(params)
        config_id = _str_param(params, "configId")
        value = _str_param(params, "value")
        choices = {"model": store.MODELS, "mode": store.MODES}.get(config_id)
        if choices is None:
            raise RpcError(INVALID_PARAMS, f"unknown config option {config_id!r}")
        if value not in choices:
            raise RpcError(INVALID_PARAMS, f"{config_id}: unknown value {value!r}")
        setattr(live.record, config_id, value)
        await self._save(live.record)
        return {"configOptions": store.config_options(live.record)}

    # -- prompt --------------------------------------------------------------------------------

    async def session_prompt(
        self, ticket: TurnTicket | None, request_id: JSON, params: dict[str, Any]
    ) -> JSON:
        """Run one turn and answer it; @late chunks follow after the answer.

        The prompts of a session run one at a time in arrival order: ``ticket`` was taken by the
        reader (None if the session was unknown then). The answer is written before the next
        turn of the session starts. session/cancel ends the turn, or the wait for its place.
        """
        try:
            live = self._live(params)
            ticket = ticket or live.take_ticket()
            text, images = self._prompt_content(params.get("prompt"))
            try:
                script = fs.parse_script(text)
            except fs.ScriptError as exc:
                raise RpcError(INVALID_PARAMS, f"bad directive: {exc}") from None
            turn = Turn(
                self.wire,
                live.record,
                ticket.control,
                images=images,
                timings=self.options.permission_timings,
                message_id=f"msg-{uuid.uuid4().hex[:12]}" if self.options.message_ids else None,
                mcp_servers=live.mcp_servers,
            )
            late, cancelled = await self._run_turn(turn, ticket, script)
            if script.error is not None and not cancelled:
                raise RpcError(script.error.code, script.error.message)
            stop = "cancelled" if cancelled else script.stop_reason
            await self.wire.respond(request_id, {"stopReason": stop})
        finally:
            if ticket is not None:
                ticket.finish()
        if late:
            self.nursery.start_soon(self._send_late, turn, late, (script.late_ms or 0) / 1000)
        return _ALREADY_ANSWERED

    async def _run_turn(
        self, turn: Turn, ticket: TurnTicket, script: fs.Script
    ) -> tuple[list[str], bool]:
        """Wait for the ticket's turn and run it; record it in the history.

        Returns the chunks kept for @late (none if cancelled) and whether it was cancelled.
        """
        late: list[str] = []
        with ticket.control.scope:
            await ticket.previous.wait()
            try:
                late = await run_turn(turn, script)
            except fs.ScriptError as exc:
                raise RpcError(INVALID_PARAMS, f"bad directive: {exc}") from None
        cancelled = ticket.control.scope.cancelled_caught
        if cancelled:
            late = []
        record = turn.record
        record.history.append({"role": "user", "text": script.message})
        record.history.append({"role": "agent", "text": "".join(turn.sent) + "".join(late)})
        await self._save(record)
        return late, cancelled

    async def _send_late(self, turn: Turn, chunks: list[str], delay: float) -> None:
        await trio.sleep(delay)
        for chunk in chunks:
            await turn.chunk(chunk)

    def _prompt_content(self, prompt: JSON) -> tuple[str, int]:
        """The prompt's text (text blocks joined) and its number of images."""
        if not isinstance(prompt, list):
            raise RpcError(INVALID_PARAMS, "prompt must be a list of content blocks")
        texts: list[str] = []
        images = 0
        for block in prompt:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                texts.append(str(block.get("text", "")))
            elif kind == "image":
                if not self.options.images:
                    raise RpcError(INVALID_PARAMS, "this agent does not accept images")
                images += 1
            elif kind == "resource_link":
                texts.append(f"[link {block.get('name', block.get('uri', ''))}]")
            elif kind == "audio":
                raise RpcError(INVALID_PARAMS, "this agent does not accept audio")
            elif kind != "resource":
                raise RpcError(INVALID_PARAMS, f"unknown content block type {kind!r}")
        return "\n".join(texts), images


_ALREADY_ANSWERED: Any = object()  # returned by handlers that wrote their answer themselves


async def _stderr_noise(interval: float) -> None:
    count = 0
    while True:
        await trio.sleep(interval)
        count += 1
        log(f"noise {count}: background indexing ({count * 17 % 100}% done)")


async def serve(options: Options) -> None:
    """Serve ACP on stdin/stdout until stdin closes (or forever with ``--ignore-stdin-eof``).

    At EOF running turns are cancelled as by session/cancel (their answers are still written),
    other requests in flight get :data:`EOF_GRACE` seconds to finish, then the process exits.
    """
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with stdin, stdout, trio.open_nursery() as background:
        if options.stderr_noise:
            background.start_soon(_stderr_noise, options.stderr_noise)
        async with trio.open_nursery() as requests:
            agent = FakeAgent(options, Wire(stdout), requests)
            async for line in read_lines(stdin):
                if line.strip():
                    agent.dispatch(line)
            if options.ignore_stdin_eof:
                log("stdin closed; staying alive (--ignore-stdin-eof), stop me with a signal")
                await trio.sleep_forever()
            log("stdin closed; exiting")
            agent.cancel_all_turns()
            requests.cancel_scope.deadline = trio.current_time() + EOF_GRACE
        background.cancel_scope.cancel()


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line; ``--help`` lists every flag."""
    p = argparse.ArgumentParser(
        prog="python -m broker.testing.fake_agent",
        description="A scriptable ACP agent for tests and demos (see docs/fake-agent.md).",
    )
    p.add_argument("--name", default="fake-agent", help="agentInfo.name and the log prefix")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="session files (default $FAKE_AGENT_STATE_DIR or ./.fake-agent-sessions)",
    )
    p.add_argument("--init-delay", type=float, default=0.0, metavar="SECS")
    p.add_argument("--new-delay", type=float, default=0.0, metavar="SECS")
    p.add_argument(
        "--load-delay",
        type=float,
        default=0.0,
        metavar="SECS",
        help="delay of session/load and session/resume",
    )
    p.add_argument(
        "--no-load-session",
        action="store_true",
        help="advertise loadSession: false and reject session/load",
    )
    p.add_argument(
        "--no-images", action="store_true", help="advertise image: false and reject image blocks"
    )
    p.add_argument(
        "--no-message-ids",
        action="store_true",
        help="send agent_message_chunks without an ACP messageId (as older agents do)",
    )
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument(
        "--ignore-stdin-eof",
        action="store_true",
        help="keep running when stdin closes (like old agents)",
    )
    p.add_argument(
        "--stderr-noise",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="SECS",
        help="write a noise line to stderr every SECS (default 1)",
    )
    p.add_argument(
        "--crash-on-start",
        type=int,
        default=None,
        metavar="CODE",
        help="exit with CODE at once, before reading anything",
    )
    p.add_argument(
        "--auth-required",
        action="store_true",
        help="answer session/new and session/load -32000 until authenticate succeeds",
    )
    p.add_argument(
        "--auth-method",
        action="append",
        default=[],
        metavar="ID[=VAR,...]",
        help="advertise an auth method: ID alone is a login, ID=VAR,... an env_var method",
    )
    p.add_argument(
        "--session-id",
        default=None,
        metavar="ID",
        help="answer every session/new with this id (like agents that reuse id 0)",
    )
    p.add_argument(
        "--permission-timings",
        type=Path,
        default=None,
        metavar="FILE",
        help="append {sent, received} (time.perf_counter) per permission request to FILE",
    )
    a = p.parse_args(argv)
    return Options(
        name=a.name,
        state_dir=a.state_dir or store.default_state_dir(),
        init_delay=a.init_delay,
        new_delay=a.new_delay,
        load_delay=a.load_delay,
        load_session=not a.no_load_session,
        images=not a.no_images,
        message_ids=not a.no_message_ids,
        ignore_sigterm=a.ignore_sigterm,
        ignore_stdin_eof=a.ignore_stdin_eof,
        stderr_noise=a.stderr_noise,
        crash_on_start=a.crash_on_start,
        auth_required=a.auth_required,
        auth_methods=tuple(a.auth_method),
        session_id=a.session_id,
        permission_timings=a.permission_timings,
    )


def _mcp_names(params: dict[str, Any]) -> tuple[str, ...]:
    """The names of the ``mcpServers`` of a session/new or session/load."""
    servers = params.get("mcpServers")
    if not isinstance(servers, list):
        return ()
    return tuple(str(s.get("name", "")) for s in servers if isinstance(s, dict))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    options = parse_args(argv)
    set_log_name(options.name)
    if options.crash_on_start is not None:
        log(f"fatal: simulated crash on start (exit code {options.crash_on_start})")
        return options.crash_on_start
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("ignoring SIGTERM")
    log(f"ready (pid {os.getpid()}, state dir {options.state_dir})")
    code = 0
    try:
        trio.run(serve, options)
    except* KeyboardInterrupt:
        code = 130
    except* trio.BrokenResourceError:
        log("stdout closed by the client; exiting")
    return code


if __name__ == "__main__":
    sys.exit(main())
