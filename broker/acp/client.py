"""The ACP client: the broker's side of one agent connection.

:class:`AcpClient` wraps a :class:`~broker.acp.jsonrpc.JsonRpcPeer` and knows
the ACP methods the broker uses. It keeps a small synchronous state per
session (config options, mode, commands, usage, who consumes its updates)
and answers the agent's requests (permissions, confined file access) without
ever letting one of them end a turn.

Routing of ``session/update`` for a session, decided synchronously in stdout
order:

1. while ``session/load`` runs, updates are the replayed history: kept in
   the load's result and counted, never delivered to anyone else;
2. while ``prompt`` runs, they go to that prompt's ``on_update``;
3. otherwise to the watcher set with :meth:`AcpClient.watch` (for a drain
   window after the prompt response), else they are only counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import trio

from broker import sentences
from broker.config import McpServerConfig

from .jsonrpc import JsonRpcPeer, RpcError, SendFn
from .policy import FsAccess, PermissionPolicy, selected_outcome
from .schema import (
    AgentCapabilities,
    AuthMethod,
    AvailableCommand,
    AvailableCommandsUpdate,
    ConfigOption,
    ConfigOptionUpdate,
    ContentBlock,
    CurrentModeUpdate,
    InitializeResult,
    McpCapabilities,
    PermissionRequest,
    SessionModeState,
    SessionSetup,
    SessionUpdate,
    ToolCall,
    UsageUpdate,
    content_to_wire,
    parse_update,
    structure,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
McpServers = Sequence[Mapping[str, Any]]  # ACP McpServer objects, as sent
PROTOCOL_VERSION = 1

UpdateConsumer = Callable[[SessionUpdate], None]
Approver = Callable[[PermissionRequest, "str | None"], Awaitable["str | None"]]
"""Asks someone about a permission request: gets the request and the option
the policy would pick; returns the ``optionId`` to select (None: cancelled)."""


ASKED_RULE = "a person in the chat"  # the rule of a decision an approver made


def mcp_servers_payload(
    servers: Mapping[str, McpServerConfig], capabilities: McpCapabilities
) -> tuple[list[dict[str, Any]], list[str]]:
    """ACP ``mcpServers`` for ``session/new`` and ``session/load``: every stdio
    server, and the http/sse ones the agent's ``capabilities`` take. Returns the
    servers and the names of those left out (for a log line)."""
    payload: list[dict[str, Any]] = []
    left_out: list[str] = []
    for name, server in servers.items():
        if server.type == "stdio":
            env = [{"name": k, "value": v} for k, v in server.env.items()]
            payload.append(
                {"name": name, "command": server.command, "args": list(server.args), "env": env}
            )
        elif getattr(capabilities, server.type, False):
            headers = [{"name": k, "value": v} for k, v in server.headers.items()]
            payload.append(
                {"type": server.type, "name": name, "url": server.url, "headers": headers}
            )
        else:
            left_out.append(name)
    return payload, left_out


class AcpError(Exception):
    """The agent cannot do what was asked (capability not advertised,
    unsupported protocol version, a prompt already running, no usable
    authentication method)."""


@attrs.frozen
class PermissionDecision:
    """How one ``session/request_permission`` was answered, and why.

    ``option_id``/``option_kind`` are None when the answer was ``cancelled``;
    ``rule`` names what decided (``[permissions] by_kind.execute = "reject"``)."""

    session_id: str
    title: str
    kind: str | None
    option_id: str | None
    option_kind: str | None
    rule: str

    @property
    def refused(self) -> bool:
        """Whether the tool was not allowed (a reject option, or cancelled)."""
        return self.option_kind is None or self.option_kind.startswith("reject")


PermissionObserver = Callable[[PermissionDecision], None]
"""Told every permission decision, synchronously, as it is answered."""


def choose_auth_method(methods: Sequence[AuthMethod], env: Mapping[str, str]) -> str | None:
    """The id of the one ``env_var`` method whose variables are all set in
    ``env`` (the agent's environment), or None when there is none or more
    than one (then the user has to name one: ``[agent] auth_method``)."""
    usable = _usable_methods(methods, env)
    return usable[0] if len(usable) == 1 else None


def _usable_methods(methods: Sequence[AuthMethod], env: Mapping[str, str]) -> list[str]:
    return [
        m.id
        for m in methods
        if m.type == "env_var" and m.var_names and all(env.get(n) for n in m.var_names)
    ]


def auth_methods_sentence(methods: Sequence[AuthMethod], env: Mapping[str, str]) -> str:
    """Why the broker could not authenticate by itself: the methods the agent
    offers and what each needs."""
    offers = [
        (
            m.id,
            m.name,
            m.var_names if m.type == "env_var" else None,
            all(env.get(n) for n in m.var_names),
        )
        for m in methods
    ]
    return sentences.auth_offers(offers, len(_usable_methods(methods, env)) > 1)


@attrs.frozen
class ClientOptions:
    """``cwd`` is the root for file access; ``approver`` (optional) is asked
    about permission requests instead of deciding by ``permissions`` alone."""

    name: str = "agent-broker"
    version: str = "0.1.0"
    cwd: str = "."
    fs_read: bool = False
    fs_write: bool = False
    permissions: PermissionPolicy = attrs.field(factory=PermissionPolicy)
    approver: Approver | None = None


@attrs.define(eq=False)
class AcpSession:
    """What the client knows about one ACP session, updated in stdout order."""

    session_id: str
    config_options: list[ConfigOption] = attrs.field(factory=list)
    modes: SessionModeState | None = None
    current_mode_id: str | None = None
    available_commands: list[AvailableCommand] = attrs.field(factory=list)
    usage: UsageUpdate | None = None
    replayed_count: int = 0
    unrouted_count: int = 0
    prompting: bool = False
    cancelling: bool = False
    replay: list[SessionUpdate] | None = None
    consumer: UpdateConsumer | None = None
    watcher: UpdateConsumer | None = None
    permission_scopes: set[trio.CancelScope] = attrs.field(factory=set)
    tool_calls: dict[str, ToolCall] = attrs.field(factory=dict)  # of the running prompt

    def absorb(self, update: SessionUpdate) -> None:
        if isinstance(update, ToolCall) and update.tool_call_id and self.replay is None:
            self.tool_calls[update.tool_call_id] = merged_tool_call(
                self.tool_calls.get(update.tool_call_id), update
            )
            if len(self.tool_calls) > _MAX_TOOL_CALLS:
                del self.tool_calls[next(iter(self.tool_calls))]
        elif isinstance(update, ConfigOptionUpdate):
            self.config_options = update.config_options
        elif isinstance(update, CurrentModeUpdate):
            self.current_mode_id = update.current_mode_id
        elif isinstance(update, AvailableCommandsUpdate):
            self.available_commands = update.available_commands
        elif isinstance(update, UsageUpdate):
            self.usage = update

    def route(self, update: SessionUpdate) -> None:
        if self.replay is not None:
            self.replay.append(update)
            self.replayed_count += 1
        elif self.consumer is not None:
            self.consumer(update)
        elif self.watcher is not None:
            self.watcher(update)
        else:
            self.unrouted_count += 1


@attrs.frozen
class LoadedSession:
    """The result of ``session/load``: the setup and the replayed history."""

    setup: SessionSetup
    replayed: tuple[SessionUpdate, ...]


def _parse(params: Any, cls: type[T]) -> T:
    try:
        return structure(params, cls)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the agent's bad params
        raise RpcError.invalid_params(f"{cls.__name__}: {exc}") from None


class AcpClient:
    """One ACP connection. Run :meth:`serve` in a task; call the rest from
    others. Every request method raises :class:`RpcError` (the agent said
    no) or :class:`~broker.acp.jsonrpc.PeerClosed` (the agent exited); none
    sets a deadline of its own (bound them with the caller's cancel scope)."""

    def __init__(
        self,
        send: SendFn,
        options: ClientOptions = ClientOptions(),
        *,
        on_permission: PermissionObserver | None = None,
    ) -> None:
        self.options = options
        self.on_permission = on_permission
        self.fs = FsAccess(os.path.abspath(options.cwd), options.fs_read, options.fs_write)
        self.peer = JsonRpcPeer(
            send,
            on_request=self._on_request,
            on_notification=self._on_notification,
            name=options.name,
        )
        self.init_result: InitializeResult | None = None
        self._sessions: dict[str, AcpSession] = {}
        self.foreign_updates = 0  # updates for sessions this client never used

    @property
    def agent_capabilities(self) -> AgentCapabilities:
        """What the agent advertised (all false before :meth:`initialize`)."""
        return self.init_result.agent_capabilities if self.init_result else AgentCapabilities()

    def session(self, session_id: str) -> AcpSession:
        """The state of a session (created empty on first use)."""
        state = self._sessions.get(session_id)
        if state is None:
            state = self._sessions[session_id] = AcpSession(session_id)
        return state

    async def serve(self, lines: AsyncIterable[bytes], closed_detail: Callable[[], str]) -> None:
        """The one reader of the agent's stdout; see JsonRpcPeer.serve."""
        await self.peer.serve(lines, closed_detail)

    # --- client -> agent ---------------------------------------------------

    async def initialize(self) -> InitializeResult:
        """Advertises fs only as enabled, no terminal. Raises AcpError if the
        agent answers with a protocol version other than 1."""
        result = await self.peer.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "clientCapabilities": {
                    "fs": {
                        "readTextFile": self.options.fs_read,
                        "writeTextFile": self.options.fs_write,
                    },
                    "terminal": False,
                },
                "clientInfo": {"name": self.options.name, "version": self.options.version},
            },
        )
        init = _parse(result, InitializeResult)
        if init.protocol_version != PROTOCOL_VERSION:
            raise AcpError(
                f"agent speaks ACP protocol version {init.protocol_version}, "
                f"this broker speaks {PROTOCOL_VERSION}"
            )
        self.init_result = init
        return init

    async def authenticate(self, method_id: str) -> None:
        """``authenticate {methodId}``; before ``session/new``."""
        await self.peer.request("authenticate", {"methodId": method_id})

    async def new_session(self, cwd: str, mcp_servers: McpServers = ()) -> SessionSetup:
        """``session/new`` in ``cwd`` with ``mcp_servers`` (ACP ``McpServer`` objects)."""
        result = await self.peer.request(
            "session/new", {"cwd": _absolute(cwd), "mcpServers": list(mcp_servers)}
        )
        return self._setup(_parse(result, SessionSetup), None)

    async def load_session(
        self, session_id: str, cwd: str, mcp_servers: McpServers = ()
    ) -> LoadedSession:
        """``session/load``. The history the agent replays before answering is
        returned in ``replayed`` and counted in the session's
        ``replayed_count``; no prompt consumer or watcher sees it."""
        if not self.agent_capabilities.load_session:
            raise AcpError("the agent does not advertise loadSession")
        state = self.session(session_id)
        replay: list[SessionUpdate] = []
        state.replay = replay
        try:
            result = await self.peer.request(
                "session/load",
                {"sessionId": session_id, "cwd": _absolute(cwd), "mcpServers": list(mcp_servers)},
            )
        finally:
            state.replay = None
        return LoadedSession(
            self._setup(_parse(result or {}, SessionSetup), session_id), tuple(replay)
        )

    async def resume_session(self, session_id: str, cwd: str) -> SessionSetup:
        """``session/resume`` (no replay); needs sessionCapabilities.resume."""
        if not self.agent_capabilities.session_capabilities.resume:
            raise AcpError("the agent does not advertise sessionCapabilities.resume")
        result = await self.peer.request(
            "session/resume",
            {"sessionId": session_id, "cwd": _absolute(cwd), "mcpServers": []},
        )
        return self._setup(_parse(result or {}, SessionSetup), session_id)

    def _setup(self, setup: SessionSetup, session_id: str | None) -> SessionSetup:
        if session_id is not None:
            setup = attrs.evolve(setup, session_id=session_id)
        if not setup.session_id:
            raise RpcError.invalid_params("the agent returned no sessionId")
        state = self.session(setup.session_id)
        if setup.config_options:
            state.config_options = setup.config_options
        if setup.modes is not None:
            state.modes = setup.modes
            state.current_mode_id = setup.modes.current_mode_id
        return setup

    async def prompt(
        self,
        session_id: str,
        blocks: Sequence[ContentBlock],
        on_update: UpdateConsumer,
    ) -> str:
        """Send ``session/prompt`` and return the stop reason.

        While it runs, this session's updates are passed to ``on_update``
        synchronously in stdout order; all of those sent before the response
        are delivered before this returns. ``on_update`` must not block.
        An answer without a stop reason counts as ``end_turn`` (logged).
        Raises AcpError if a prompt is already running for the session.
        """
        state = self.session(session_id)
        if state.prompting:
            raise AcpError(f"a prompt is already running in session {session_id}")
        state.prompting, state.cancelling, state.consumer = True, False, on_update
        state.tool_calls.clear()
        try:
            result = await self.peer.request(
                "session/prompt",
                {"sessionId": session_id, "prompt": [content_to_wire(b) for b in blocks]},
            )
        finally:
            state.prompting, state.cancelling, state.consumer = False, False, None
        stop = result.get("stopReason") if isinstance(result, dict) else None
        if not isinstance(stop, str):
            log.warning(
                "session %s: prompt answered without a stopReason: %.200r", session_id, result
            )
            return "end_turn"
        return stop

    async def cancel(self, session_id: str) -> None:
        """Send ``session/cancel`` now. First answers every permission request
        of the session still waiting for an approver with ``cancelled``, and
        marks the running prompt so later ones are answered ``cancelled``
        too. Waits only for the send lock and one write."""
        state = self.session(session_id)
        state.cancelling = state.prompting
        for scope in state.permission_scopes:
            scope.cancel()
        await self.peer.notify("session/cancel", {"sessionId": session_id})

    @contextmanager
    def watch(self, session_id: str, on_update: UpdateConsumer) -> Iterator[None]:
        """Route the session's updates outside any prompt (and outside a
        load's replay) to ``on_update`` while the block runs."""
        state = self.session(session_id)
        previous, state.watcher = state.watcher, on_update
        try:
            yield
        finally:
            state.watcher = previous

    async def set_config_option(
        self, session_id: str, config_id: str, value: str | bool
    ) -> list[ConfigOption]:
        """Returns the full set of options the agent answers with."""
        result = await self.peer.request(
            "session/set_config_option",
            {"sessionId": session_id, "configId": config_id, "value": value},
        )
        options = _parse(result or {}, ConfigOptionUpdate).config_options
        self.session(session_id).config_options = options
        return options

    async def set_mode(self, session_id: str, mode_id: str) -> None:
        await self.peer.request("session/set_mode", {"sessionId": session_id, "modeId": mode_id})
        self.session(session_id).current_mode_id = mode_id

    async def close_session(self, session_id: str) -> None:
        """``session/close`` (needs sessionCapabilities.close); forgets the
        session's state either way."""
        try:
            if not self.agent_capabilities.session_capabilities.close:
                raise AcpError("the agent does not advertise sessionCapabilities.close")
            await self.peer.request("session/close", {"sessionId": session_id})
        finally:
            self._sessions.pop(session_id, None)

    # --- agent -> client ---------------------------------------------------

    def _on_notification(self, method: str, params: Any) -> None:
        if method != "session/update" or not isinstance(params, dict):
            log.debug("ignoring notification %s", method)
            return
        session_id = params.get("sessionId")
        if not isinstance(session_id, str):
            log.warning("session/update without a sessionId: %.200r", params)
            return
        state = self._sessions.get(session_id)
        if state is None:  # not created, loaded or prompted here: count, do not grow the map
            self.foreign_updates += 1
            log.debug("session/update for unknown session %.80r", session_id)
            return
        update = parse_update(params.get("update"))
        state.absorb(update)
        state.route(update)

    async def _on_request(self, method: str, params: Any) -> Any:
        if method == "session/request_permission":
            return await self._request_permission(_parse(params, PermissionRequest))
        if method == "fs/read_text_file":
            return await self.fs.read_text_file(params)
        if method == "fs/write_text_file":
            return await self.fs.write_text_file(params)
        raise RpcError.method_not_found(method)

    async def _request_permission(self, request: PermissionRequest) -> dict[str, Any]:
        """The policy's choice, or the approver's. The request's tool call is
        completed with what earlier ``tool_call`` updates said of it (agents
        send the title, kind and input there and only the id here)."""
        state = self.session(request.session_id)
        if state.cancelling:
            return self._decided(request, None, "the turn was being cancelled")
        known = state.tool_calls.get(request.tool_call.tool_call_id)
        if known is not None:
            request = attrs.evolve(request, tool_call=merged_tool_call(known, request.tool_call))
        policy = self.options.permissions
        kind = request.tool_call.kind
        choice = policy.choose(request.options, kind)
        approver = self.options.approver
        if approver is None:
            return self._decided(request, choice, policy.rule_for(kind))
        with trio.CancelScope() as scope:
            state.permission_scopes.add(scope)
            try:
                choice = await approver(request, choice)
            finally:
                state.permission_scopes.discard(scope)
        if scope.cancelled_caught:
            return self._decided(request, None, "the turn was cancelled")
        return self._decided(
            request, choice, ASKED_RULE if policy.asks(kind) else policy.rule_for(kind)
        )

    def _decided(
        self, request: PermissionRequest, option_id: str | None, rule: str
    ) -> dict[str, Any]:
        if self.on_permission is not None:
            kinds = {o.option_id: o.kind for o in request.options}
            tool = request.tool_call
            self.on_permission(
                PermissionDecision(
                    request.session_id,
                    tool.title or tool.tool_call_id or "tool",
                    tool.kind,
                    option_id,
                    kinds.get(option_id) if option_id is not None else None,
                    rule,
                )
            )
        return selected_outcome(option_id)


_MAX_TOOL_CALLS = 1000


def merged_tool_call(known: ToolCall | None, patch: ToolCall) -> ToolCall:
    """``known`` with the fields ``patch`` sets (None means unchanged)."""
    if known is None:
        return ToolCall(
            patch.tool_call_id,
            patch.title,
            patch.kind,
            patch.status,
            patch.content,
            patch.locations,
            patch.raw_input,
            patch.raw_output,
        )
    changes = {
        field.name: getattr(patch, field.name)
        for field in attrs.fields(ToolCall)
        if getattr(patch, field.name) not in (None, "", {})
    }
    return attrs.evolve(known, **changes)


def _absolute(path: str) -> str:
    """ACP wants absolute paths; the pool passes them already, a caller may not."""
    return os.path.abspath(path)
