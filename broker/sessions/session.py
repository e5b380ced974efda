"""One session: an agent process, its ACP session and a FIFO queue of turns.

A :class:`Session` runs entirely inside its own task and nursery
(:meth:`Session.run`): the agent process (started by the settings'
:class:`RunAgent`, by default :func:`supervisor.process.run_child`), the ACP
reader, the start-up (spawn, ``initialize``, ``session/load`` or
``session/new``, each bounded by its own deadline) and the turn worker.
Nothing it does can raise into its caller: every failure ends the session
with a reason, and every turn it accepted ends with exactly one
:class:`~broker.reply.TurnEnd`.

What a turn does next and how it ended are decided by the pure functions of
:mod:`broker.sessions.decide` (:func:`~broker.sessions.decide.turn_step`,
:func:`~broker.sessions.decide.turn_end`); this module gathers their facts and
does the I/O they ask for.

The pool talks to a session through synchronous methods only
(:meth:`enqueue`, :meth:`request_stop`, :meth:`assign`, :meth:`snapshot`) and
one awaitable, :meth:`cancel_turn`, which sends ``session/cancel`` at once and
waits for nothing the turn holds. The session reports back through a
:class:`SessionObserver`, always synchronously, and ends with one frozen
:class:`SessionEnd`.

States: ``starting`` -> ``idle`` <-> ``busy`` -> ``stopping`` -> ``dead``;
a warm spare waits in ``spare`` between ``initialize`` and its first thread.
Suspension is not a state of this object: a suspended thread is just an ACP
session id the pool keeps, with no process.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import attrs
import trio

from broker import reply, sentences
from broker.acp import schema
from broker.acp.client import (
    ASKED_RULE,
    AcpClient,
    AcpError,
    ClientOptions,
    PermissionDecision,
    auth_methods_sentence,
    choose_auth_method,
    mcp_servers_payload,
)
from broker.acp.jsonrpc import AUTH_REQUIRED, PeerClosed, RpcError
from broker.acp.policy import PermissionPolicy
from broker.acp.schema import ConfigOption, InitializeResult, PermissionRequest, SessionUpdate
from broker.config import DEFAULT_PROFILE, McpServerConfig, TimeoutsConfig
from broker.logs import SessionLogger, session_logger
from broker.pulse import Pulse
from broker.reply import Outcome, Prompt, Settled, TurnEnd, TurnHandle
from broker.sessions.batch import may_hold, merge_prompts, prompt_bytes, together_end
from broker.sessions.decide import (
    Failure,
    SendCancel,
    StopAgent,
    StopReason,
    TurnFacts,
    TurnOutcomeFacts,
    TurnOver,
    turn_end,
    turn_step,
)
from broker.sessions.questions import QuestionBook, WaitTally, ask_person
from broker.sessions.translate import prompt_blocks, update_to_events
from broker.sessions.workspace import Workspace, WorkspaceError, WorkspacePlan, Workspaces, touch
from supervisor.process import ChildSpec, ExitStatus, SpawnError, run_child

__all__ = [
    "AgentProcess",
    "RunAgent",
    "Session",
    "SessionEnd",
    "SessionFailure",
    "SessionObserver",
    "SessionSettings",
    "SessionSnapshot",
    "SessionState",
    "StopReason",
    "Turn",
]


class SessionState(enum.Enum):
    STARTING = "starting"
    SPARE = "spare"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"


# --- the agent transport: the one seam between a session and its process ---------------------


class AgentProcess(Protocol):
    """What a session uses of its agent's process (:class:`supervisor.process.Child`
    is one; :mod:`broker.testing.memory_agent` is another, in-process)."""

    @property
    def pid(self) -> int: ...

    @property
    def pgid(self) -> int: ...

    async def send(self, data: bytes) -> None: ...

    def stdout_lines(self) -> AsyncIterator[bytes]: ...

    def stderr_tail(self, max_chars: int = 2000) -> str: ...

    async def stop(self, grace: float) -> ExitStatus: ...


class RunAgent(Protocol):
    """Runs one agent process for its whole life, as :func:`~supervisor.process.run_child`
    does: raises :class:`~supervisor.process.SpawnError` before ``started`` when it
    cannot start, hands the process to ``task_status``, returns its exit status,
    and stops it when cancelled."""

    async def __call__(
        self, spec: ChildSpec, *, stop_grace: float, task_status: trio.TaskStatus[AgentProcess]
    ) -> ExitStatus: ...


@attrs.frozen
class SessionSettings:
    """Everything a session needs to start and run its agent."""

    spec: ChildSpec
    cwd: str
    client_options: ClientOptions
    timeouts: TimeoutsConfig
    queue_depth: int
    restart_after_cancel: bool = False
    auth_method: str = ""
    ask_timeout_secs: float = 300.0
    run_agent: RunAgent = run_child
    profile: str = DEFAULT_PROFILE
    mcp_servers: Mapping[str, McpServerConfig] = attrs.field(factory=dict)
    workspace: WorkspacePlan | None = None  # None: every thread in ``cwd``
    workspaces: Workspaces | None = None  # makes them; one per pool
    dispatch: str = "queue"  # or "batch": see broker.sessions.batch
    max_batch_bytes: int = 10485760


# --- what a session reports ---------------------------------------------------------------------


class SessionFailure(enum.Enum):
    """Why a session ended that nobody asked to stop."""

    START_FAILED = "start_failed"  # the agent could not be started or resumed
    CRASHED = "crashed"  # the agent exited, or its session broke, while serving


@attrs.frozen
class SessionEnd:
    """The one report a session hands its pool when it is over.

    ``resumable_id`` is the ACP session a successor may load (None when the
    thread's conversation is to be forgotten, or there is none);
    ``failure`` is None for a stop the pool asked for. ``leftovers`` are the
    turns it accepted but never started, in order: the pool gives them a
    successor or their end. A failed start also carries ``start_end``, the
    end those turns get.
    """

    thread_key: str | None
    resumable_id: str | None
    failure: SessionFailure | None
    reason: str
    detail: str  # the agent's stderr tail, for a failure
    leftovers: tuple[Turn, ...]
    restarts: int
    start_end: TurnEnd | None = None


class SessionObserver(Protocol):
    """What a session tells its pool; every call is synchronous."""

    def agent_started(self, session: Session, process: AgentProcess) -> None: ...

    def agent_exited(self, session: Session, process: AgentProcess) -> None: ...

    def session_established(self, session: Session) -> None: ...

    def session_changed(self, session: Session) -> None: ...

    def turn_ended(self, session: Session, turn: Turn, end: TurnEnd) -> None: ...

    def session_ended(self, session: Session, end: SessionEnd) -> None: ...


@attrs.define(eq=False)
class Turn:
    """One prompt on its way through a session."""

    prompt: Prompt
    handle: TurnHandle
    submitted_at: float
    started_at: float | None = None
    hard_deadline: float = math.inf
    cancel_deadline: float | None = None  # set when session/cancel went out
    cancel_requested: bool = False  # by the user (/cancel), not by a refusal or a limit
    timed_out: bool = False
    settled: bool = False
    stop_reason: str | None = None
    error: Exception | None = None
    refused: PermissionDecision | None = None  # the last permission the broker refused
    waiting: WaitTally = attrs.field(factory=WaitTally)  # for a person's answer
    answered_at: float | None = None  # when the agent answered the prompt
    message_ids: set[str] = attrs.field(factory=set)  # ACP messageIds of its text
    together: tuple[Turn, ...] = ()  # batched turns whose prompts went with this one


@attrs.frozen
class SessionSnapshot:
    thread_key: str | None
    state: str
    pid: int | None
    age_secs: float
    idle_secs: float | None
    queue_length: int
    current_tool: str | None
    turn_elapsed_secs: float | None
    turn_deadline_in_secs: float | None
    turns_done: int
    restarts: int
    agent: str
    waiting_for: str | None = None  # the tool of the oldest open question
    waiting_secs: float | None = None
    profile: str = DEFAULT_PROFILE
    workspace: str | None = None  # the thread's own directory, when it has one


class _StartFailed(Exception):
    pass


_EXIT_AFTER_EOF_SECS = 1.0
_CLOSED_TURNS_KEPT = 8  # turns whose late text is recognised (by messageId) and dropped


class Session:
    """One agent process serving one thread (or waiting for one, as a spare)."""

    def __init__(
        self,
        key: str | None,
        settings: SessionSettings,
        observer: SessionObserver,
        *,
        saved_session_id: str | None = None,
        predecessor: Session | None = None,
        start_delay: float = 0.0,
        restarts: int = 0,
    ) -> None:
        self.key = key
        self.settings = settings
        self.saved_session_id = saved_session_id
        self.restarts = restarts
        self.state = SessionState.STARTING
        self.acp_session_id: str | None = None
        self.loaded = False  # the ACP session came from session/load
        self.process: AgentProcess | None = None
        self.client: AcpClient | None = None
        self.initialize_result: InitializeResult | None = None
        self.queue: deque[Turn] = deque()
        self.current: Turn | None = None
        self.created_at = trio.current_time()
        self.last_active = self.created_at
        self.turns_done = 0
        self.ended = trio.Event()
        self._observer = observer
        self._predecessor = predecessor
        self._start_delay = start_delay
        # how it ends (the SessionEnd is built from these, once)
        self._stop_requested: StopReason | None = None
        self._forget = False
        self._failure: SessionFailure | None = None
        self._end_reason = ""
        self._start_end: TurnEnd | None = None
        # what the agent did
        self._exit_status: ExitStatus | None = None
        self._reader_gone = False
        self._must_restart = False
        self._context_reset_pending = False
        self.pending_notes: list[str] = []  # sentences for the next turn's reply (the pool's)
        # wake-ups
        self._changed = Pulse()  # queue, stop, exit, reader, the running turn
        self._agent_gone = trio.Event()
        self._assigned = trio.Event() if key is None else None
        self._stop_event = trio.Event()
        self._start_scope: trio.CancelScope | None = None
        self._update_target: Turn | None = None
        self._previous: Turn | None = None  # answered; its reply still takes late text
        self._closed_ids: deque[set[str]] = deque(maxlen=_CLOSED_TURNS_KEPT)  # their messageIds
        self.questions: QuestionBook | None = None  # the thread's, set by the pool
        self.workspace: Workspace | None = None  # the thread's own, once made

    def __repr__(self) -> str:
        pid = self.pid if self.pid is not None else "-"
        return (
            f"<Session {self.key or 'spare'} {self.state.value} pid={pid} "
            f"queue={len(self.queue)} turns={self.turns_done}>"
        )

    # -- synchronous interface for the pool ---------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def profile(self) -> str:
        """The agent profile this session runs."""
        return self.settings.profile

    @property
    def log(self) -> SessionLogger:
        """Logs lines carrying this session's thread key and agent pid."""
        return session_logger(self.key or "(spare)", self.pid)

    @property
    def config_options(self) -> list[ConfigOption]:
        if self.client is None or self.acp_session_id is None:
            return []
        return self.client.session(self.acp_session_id).config_options

    @property
    def is_idle(self) -> bool:
        return self.state is SessionState.IDLE and not self.queue and self.current is None

    @property
    def batching(self) -> bool:
        return self.settings.dispatch == "batch"

    def enqueue(self, turn: Turn) -> bool:
        """Queue ``turn``; tell its caller where it stands. False if the queue is full
        (the turn then already carries its BUSY end).

        In batch mode the queued turns are held: each of them is told (again)
        how many go together as the next turn."""
        ahead = len(self.queue) + (1 if self.current is not None else 0)
        held = sum(prompt_bytes(t.prompt) for t in self.queue) if self.batching else 0
        if not may_hold(
            ahead,
            held,
            prompt_bytes(turn.prompt),
            queue_depth=self.settings.queue_depth,
            max_batch_bytes=self.settings.max_batch_bytes if self.batching else math.inf,
        ):
            turn.handle.push(TurnEnd(Outcome.BUSY, reason=sentences.busy_reason(len(self.queue))))
            return False
        self.queue.append(turn)
        if ahead and self.batching:
            running = 1 if self.current is not None else 0  # the batch waits for it alone
            for held_turn in self.queue:
                held_turn.handle.push(reply.Queued(running, batched=len(self.queue)))
        elif ahead:
            turn.handle.push(reply.Queued(ahead))
        self._changed.fire()
        return True

    def drop_held(self, command: str) -> int:
        """End every held turn (batch mode) as cancelled by ``command``; how many.
        In queue mode queued turns are not held and stay."""
        if not self.batching:
            return 0
        return self._drop_queue(sentences.batch_dropped(command))

    def _drop_queue(self, reason: str) -> int:
        dropped = len(self.queue)
        while self.queue:
            self.queue.popleft().handle.push(TurnEnd(Outcome.CANCELLED, reason=reason))
        if dropped:
            self._changed.fire()
        return dropped

    def assign(self, key: str, saved_session_id: str | None) -> None:
        """Give a warm spare its thread; it then opens or loads the ACP session."""
        assert self._assigned is not None and not self._assigned.is_set()
        self.key = key
        self.saved_session_id = saved_session_id
        self.state = SessionState.STARTING
        self._assigned.set()

    def request_stop(self, reason: StopReason, *, forget: bool = False) -> None:
        """Ask the session to end: a running turn is cancelled (with its grace),
        the agent is stopped. Returns at once; :attr:`ended` is set when done.

        A RESET also ends the queued turns here, as cancelled, so that none of
        them goes to a successor; with ``forget`` the ACP session is not
        resumable afterwards.
        """
        self._forget = self._forget or forget
        if reason is StopReason.RESET:
            dropped = sentences.batch_dropped("/reset") if self.batching else None
            self._drop_queue(dropped or sentences.RESET_QUEUED)
        if self._stop_requested is None:
            self._stop_requested = reason
            if self.state is not SessionState.DEAD:
                self.state = SessionState.STOPPING
        self._stop_event.set()
        if self._start_scope is not None:
            self._start_scope.cancel()
        self._changed.fire()

    def apply_permissions(self, policy: PermissionPolicy) -> None:
        """Answer the agent's next permission requests by ``policy`` (a reload)."""
        options = attrs.evolve(self.settings.client_options, permissions=policy)
        self.settings = attrs.evolve(self.settings, client_options=options)
        if self.client is not None:
            self.client.options = attrs.evolve(self.client.options, permissions=policy)

    async def cancel_turn(self) -> bool:
        """Send ``session/cancel`` for the running turn now. False when none runs.

        Waits only for the one write to the agent's stdin, never for the turn.
        """
        turn = self.current
        if turn is None or turn.settled:
            return False
        turn.cancel_requested = True
        if turn.cancel_deadline is None:
            await self._send_cancel(turn)
        return True

    def snapshot(self) -> SessionSnapshot:
        now = trio.current_time()
        turn = self.current
        tool = turn.handle.transcript.current_tool if turn else None
        asked = self.questions.waiting(turn.handle) if turn and self.questions else None
        return SessionSnapshot(
            thread_key=self.key,
            state=self.state.value,
            pid=self.pid,
            age_secs=now - self.created_at,
            idle_secs=None if turn else now - self.last_active,
            queue_length=len(self.queue),
            current_tool=tool.title if tool else None,
            turn_elapsed_secs=now - turn.started_at if turn and turn.started_at else None,
            turn_deadline_in_secs=(  # paused while a person is asked
                turn.hard_deadline - (turn.waiting.since or now)
                if turn and turn.started_at
                else None
            ),
            turns_done=self.turns_done,
            restarts=self.restarts,
            agent=self.settings.spec.name,
            waiting_for=asked.question.title if asked else None,
            waiting_secs=now - asked.asked_at if asked else None,
            profile=self.settings.profile,
            workspace=self.workspace.path if self.workspace else None,
        )

    def _report_changed(self) -> None:
        self._observer.session_changed(self)

    # -- the session's own task ---------------------------------------------

    async def run(self) -> None:
        """Run the session until it ends. Never raises but Cancelled.

        Cancelling it stops the agent (the supervisor's shielded stop) and
        ends every accepted turn.
        """
        try:
            async with trio.open_nursery() as nursery:
                await self._lifecycle(nursery)
                nursery.cancel_scope.cancel()
        except Exception as exc:  # the boundary: one session's bug stays in it
            self.log.exception("session failed")
            self._failure = SessionFailure.CRASHED
            self._end_reason = f"internal error: {exc!r}"
        finally:
            self._finish()

    async def _lifecycle(self, nursery: trio.Nursery) -> None:
        if self._predecessor is not None:
            with trio.move_on_after(self._stop_budget()):
                await self._predecessor.ended.wait()
        if self._start_delay:
            with trio.move_on_after(self._start_delay):
                await self._stop_event.wait()
        if self._stop_requested is not None:
            return
        try:
            await self._start(nursery)
        except _StartFailed as exc:
            if self._stop_requested is None:
                detail = self.process.stderr_tail() if self.process else ""
                self._start_end = TurnEnd(
                    Outcome.START_FAILED,
                    reason=sentences.start_failed_reason(str(exc)),
                    detail=detail,
                )
                self._failure = SessionFailure.START_FAILED
                self._end_reason = f"start failed: {exc}"
                self.log.warning("start failed: %s", exc)
            await self._stop_agent()
            return
        assert self.client is not None and self.acp_session_id is not None
        with self.client.watch(self.acp_session_id, self._on_update):
            await self._serve_turns()
        if self._reader_gone and self._exit_status is None:
            with trio.move_on_after(_EXIT_AFTER_EOF_SECS):
                await self._agent_gone.wait()
            if self._exit_status is None:  # alive but unreadable: replace it, not a crash
                self._must_restart = True
                self.log.warning("the agent's output cannot be read; stopping it")
        await self._stop_agent()

    def _stop_budget(self) -> float:
        timeouts = self.settings.timeouts
        return timeouts.cancel_grace_secs + timeouts.stop_grace_secs + 1.0

    async def _stop_agent(self) -> None:
        if self.process is not None and self._exit_status is None:
            self.state = SessionState.STOPPING
            self._report_changed()
            why = self._stop_requested.value if self._stop_requested else "restart"
            why = "start failed" if self._start_end is not None else why
            self.log.info("stopping the agent (%s)", why)
            await self.process.stop(self.settings.timeouts.stop_grace_secs)

    async def _run_agent(self, *, task_status: trio.TaskStatus[AgentProcess]) -> None:
        status = await self.settings.run_agent(
            self.settings.spec,
            stop_grace=self.settings.timeouts.stop_grace_secs,
            task_status=task_status,
        )
        self._agent_exited(status)

    def _agent_exited(self, status: ExitStatus) -> None:
        self._exit_status = status
        self._agent_gone.set()
        assert self.process is not None
        self._observer.agent_exited(self, self.process)
        if self._stop_requested is None and not self._must_restart:
            self._failure = self._failure or SessionFailure.CRASHED
            self._end_reason = self._end_reason or f"agent {status.describe()}"
            self.log.warning("agent %s", status.describe())
        if self._start_scope is not None:
            self._start_scope.cancel()
        self._changed.fire()

    async def _start(self, nursery: trio.Nursery) -> None:
        timeouts = self.settings.timeouts
        await self._prepare_workspace()
        try:
            self.process = await nursery.start(self._run_agent)
        except SpawnError as exc:
            raise _StartFailed(str(exc)) from None
        assert self.process is not None
        self._observer.agent_started(self, self.process)
        client = AcpClient(
            self.process.send,
            attrs.evolve(self.settings.client_options, approver=self._ask),
            on_permission=self._permission_decided,
        )
        self.client = client
        nursery.start_soon(self._read_agent, client, self.process)
        step = "initialize"
        try:
            with trio.CancelScope() as self._start_scope:
                with trio.fail_after(timeouts.initialize_secs or math.inf):
                    self.initialize_result = await client.initialize()
                if self.settings.auth_method:
                    step = "authenticate"
                    with trio.fail_after(timeouts.initialize_secs or math.inf):
                        await self._authenticate(client, self.settings.auth_method)
                if self._assigned is not None:
                    self.state = SessionState.SPARE
                    self._report_changed()
                    await self._wait_for_assignment()
                    if self.key is None:
                        return
                step = "session/new"
                with trio.fail_after(timeouts.session_new_secs or math.inf):
                    await self._open_acp_session(client)
        except trio.TooSlowError:
            limit = timeouts.session_new_secs if step == "session/new" else timeouts.initialize_secs
            raise _StartFailed(f"no answer to {step} within {limit:g} s") from None
        except (PeerClosed, RpcError, AcpError) as exc:
            raise _StartFailed(f"{step} failed: {exc}") from None
        finally:
            self._start_scope = None
        if self._exit_status is not None:
            raise _StartFailed(f"the agent {self._exit_status.describe()} during start")
        if self._stop_requested is not None or self.acp_session_id is None:
            raise _StartFailed("stopped during start")
        how = "resumed" if self.loaded else "started"
        self.log.info("%s ACP session %s", how, self.acp_session_id)
        self._observer.session_established(self)

    async def _prepare_workspace(self) -> None:
        """Make (or find) the thread's own workspace and run the agent in it: its
        process's cwd, the ACP session's cwd and the root of its file access."""
        plan, workspaces = self.settings.workspace, self.settings.workspaces
        if plan is None or workspaces is None or self.key is None:
            return
        try:
            workspace = await workspaces.prepare(plan, self.key)
        except WorkspaceError as exc:
            raise _StartFailed(str(exc)) from None
        except OSError as exc:
            raise _StartFailed(f"cannot make the workspace under {plan.root}: {exc}") from None
        self.workspace = workspace
        cwd = workspace.path
        self.settings = attrs.evolve(
            self.settings,
            spec=attrs.evolve(self.settings.spec, cwd=cwd),
            cwd=cwd,
            client_options=attrs.evolve(self.settings.client_options, cwd=cwd),
        )
        self.log.info("workspace %s%s", cwd, f" on {workspace.branch}" if workspace.branch else "")

    async def _read_agent(self, client: AcpClient, process: AgentProcess) -> None:
        """The one reader of the agent's stdout; when it ends (EOF, or output
        that cannot be read such as an endless line) the session is woken."""
        await client.serve(process.stdout_lines(), process.stderr_tail)
        self._reader_gone = True
        self._changed.fire()

    async def _wait_for_assignment(self) -> None:
        assert self._assigned is not None
        async with trio.open_nursery() as waiters:

            async def until(event: trio.Event) -> None:
                await event.wait()
                waiters.cancel_scope.cancel()

            waiters.start_soon(until, self._assigned)
            waiters.start_soon(until, self._stop_event)

    async def _authenticate(self, client: AcpClient, method_id: str) -> None:
        await client.authenticate(method_id)
        self.log.info("authenticated with method %s", method_id)

    async def _open_acp_session(self, client: AcpClient) -> None:
        """``session/load`` of the saved id, else ``session/new``. An agent that
        answers -32000 (authentication required) when no ``auth_method`` is
        configured is authenticated with its one usable ``env_var`` method,
        then asked again; without one, the start fails naming its methods."""
        try:
            await self._load_or_new(client)
        except RpcError as exc:
            if exc.code != AUTH_REQUIRED or self.settings.auth_method:
                raise
            assert self.initialize_result is not None
            methods = self.initialize_result.auth_methods
            env = self.settings.spec.env
            method_id = choose_auth_method(methods, env)
            if method_id is None:
                raise AcpError(auth_methods_sentence(methods, env)) from None
            await self._authenticate(client, method_id)
            await self._load_or_new(client)

    async def _load_or_new(self, client: AcpClient) -> None:
        cwd = self.settings.cwd
        assert self.initialize_result is not None
        capabilities = self.initialize_result.agent_capabilities
        saved = self.saved_session_id
        servers, left_out = mcp_servers_payload(
            self.settings.mcp_servers, capabilities.mcp_capabilities
        )
        if left_out:
            self.log.warning(
                "MCP servers %s left out: the agent takes no http/sse MCP servers",
                ", ".join(left_out),
            )
        if saved and capabilities.load_session:
            try:
                await client.load_session(saved, cwd, servers)
            except RpcError as exc:
                if exc.code == AUTH_REQUIRED:
                    raise
                self.log.warning("session/load of %s failed: %s", saved, exc)
            else:
                self.acp_session_id = saved
                self.loaded = True
                return
        setup = await client.new_session(cwd, servers)
        self.acp_session_id = setup.session_id
        self._context_reset_pending = saved is not None

    def _permission_decided(self, decision: PermissionDecision) -> None:
        """Log every permission decision; remember a refusal for the turn's reply."""
        chosen = decision.option_kind if decision.option_id else "cancelled"
        self.log.info(
            "permission %s for %r (kind %s): %s, by %s",
            "refused" if decision.refused else "granted",
            decision.title,
            decision.kind or "none",
            chosen,
            decision.rule,
        )
        turn = self.current
        asked = decision.rule == ASKED_RULE  # the question already shows who refused
        if decision.refused and not asked and turn is not None and not turn.cancel_requested:
            turn.refused = decision

    def _on_update(self, update: SessionUpdate) -> None:
        """Called by the ACP reader, synchronously and in stdout order, for the
        prompt's updates and (as the session's watcher) for late ones.

        Text belongs to the turn whose message it is part of (ACP ``messageId``)
        where the agent says so; otherwise to the running turn, or, between the
        previous turn's answer and the next prompt, to the previous turn, whose
        reply takes it as late text (:meth:`~broker.reply.TurnHandle.push_late`).
        Nothing ever goes to another turn's reply.
        """
        message_id = update.message_id if isinstance(update, schema.AgentMessageChunk) else None
        previous, target = self._previous, self._update_target
        if message_id is not None and previous is not None and message_id in previous.message_ids:
            self._push_late(previous, update)
        elif message_id is not None and any(message_id in ids for ids in self._closed_ids):
            self.log.info("text of an earlier, closed turn dropped (message %s)", message_id)
        elif target is not None:
            if message_id is not None:
                target.message_ids.add(message_id)
            for event in update_to_events(update):
                target.handle.push(event)
        elif previous is not None:
            self._push_late(previous, update)

    def _push_late(self, turn: Turn, update: SessionUpdate) -> None:
        for event in update_to_events(update):
            if isinstance(event, reply.TextChunk):
                self.log.info("late text for the previous turn: %d chars", len(event.text))
                turn.handle.push_late(event.text)

    async def _drain_previous(self) -> None:
        """Hold the next prompt until ``drain_ms`` after the previous answer (text
        the agent sends meanwhile goes to the previous reply), then close that
        reply to late text. A stop request cuts the wait short."""
        previous = self._previous
        if previous is None:
            return
        assert previous.answered_at is not None
        with trio.move_on_at(previous.answered_at + self.settings.timeouts.drain_ms / 1000):
            await self._stop_event.wait()
        self._close_previous()

    def _close_previous(self) -> None:
        if self._previous is not None:
            self._previous.handle.close()
            if self._previous.message_ids:
                self._closed_ids.append(self._previous.message_ids)
            self._previous = None

    def _serving(self) -> bool:
        return self._stop_requested is None and self._exit_status is None and not self._reader_gone

    async def _serve_turns(self) -> None:
        while self._serving():
            if self.queue and self._previous is not None:
                await self._drain_previous()
                continue  # look again: a stop may have come meanwhile
            if self.queue:
                turn = self._next_turn()
                for ahead, waiting in enumerate(self.queue, start=1):
                    waiting.handle.push(reply.Queued(ahead))  # the queue moved
                await self._run_turn(turn)
                if self._must_restart:
                    return
                continue
            self.state = SessionState.IDLE
            self._report_changed()
            await self._changed.wait()

    def _next_turn(self) -> Turn:
        """The next turn off the queue: in batch mode all held turns, folded into
        the last one (the others ride along in its ``together``)."""
        if not self.batching or len(self.queue) == 1:
            return self.queue.popleft()
        held = list(self.queue)
        self.queue.clear()
        last = held[-1]
        last.prompt = merge_prompts([t.prompt for t in held])
        last.together = tuple(held[:-1])
        last.submitted_at = held[0].submitted_at
        self.log.info("%d held messages go to the agent as one prompt", len(held))
        return last

    def _end_turn(self, turn: Turn, end: TurnEnd) -> None:
        """Push ``end`` to ``turn`` and restated to the turns batched with it."""
        turn.handle.push(end)
        for other in turn.together:
            other.handle.push(together_end(end, len(turn.together) + 1))

    async def _run_turn(self, turn: Turn) -> None:
        assert self.client is not None and self.acp_session_id is not None
        now = trio.current_time()
        self.current = turn
        self.state = SessionState.BUSY
        turn.started_at = now
        turn.hard_deadline = now + (self.settings.timeouts.turn_hard_secs or math.inf)
        blocks, notes = prompt_blocks(turn.prompt, images_supported=self._takes_images())
        notes = [*self.pending_notes, *notes]
        self.pending_notes.clear()
        turn.handle.push(reply.TurnStarted(self._context_reset_pending, tuple(notes)))
        for other in turn.together:
            other.handle.push(reply.TurnStarted())
        self._context_reset_pending = False
        self._update_target = turn
        self._report_changed()
        try:
            async with trio.open_nursery() as turn_nursery:
                turn_nursery.start_soon(self._send_prompt, turn, blocks)
                unresponsive = await self._drive(turn)
                if isinstance(turn.error, PeerClosed):
                    # stdout closed: the exit (and the rest of stderr) follows within moments
                    with trio.move_on_after(_EXIT_AFTER_EOF_SECS):
                        await self._agent_gone.wait()
                turn_nursery.cancel_scope.cancel()
            end, restart = turn_end(self._outcome_facts(turn, unresponsive))
            self._must_restart = self._must_restart or restart
        finally:
            self._update_target = None
            self.current = None
            self.turns_done += 1
            self.last_active = trio.current_time()
            if self.workspace is not None:
                touch(self.workspace)
        self._settle_questions(turn)
        self._end_turn(turn, end)  # at once: late text is added to the reply, not waited for
        if turn.answered_at is not None and self._exit_status is None:
            self._previous = turn
        else:
            turn.handle.close()
        self._observer.turn_ended(self, turn, end)
        self._report_changed()

    def _takes_images(self) -> bool:
        capabilities = self.initialize_result.agent_capabilities if self.initialize_result else None
        return bool(capabilities and capabilities.prompt_capabilities.image)

    async def _send_prompt(self, turn: Turn, blocks: list[schema.ContentBlock]) -> None:
        assert self.client is not None and self.acp_session_id is not None
        try:
            turn.stop_reason = await self.client.prompt(
                self.acp_session_id, blocks, self._on_update
            )
            turn.answered_at = trio.current_time()
        except Exception as exc:  # noqa: BLE001 - any failure ends this turn, not the session
            turn.error = exc
        finally:
            turn.settled = True
            self._changed.fire()

    async def _drive(self, turn: Turn) -> bool:
        """Do what :func:`turn_step` asks until the turn settles. True when the
        agent ignored a cancel for longer than the grace (it must be stopped)."""
        while True:
            step = turn_step(self._turn_facts(turn), trio.current_time())
            if isinstance(step, TurnOver):
                return False
            if isinstance(step, StopAgent):
                return True
            if isinstance(step, SendCancel):
                turn.timed_out = step.timed_out
                await self._send_cancel(turn)
                continue
            with trio.move_on_at(step.when):
                await self._changed.wait()

    def _turn_facts(self, turn: Turn) -> TurnFacts:
        return TurnFacts(
            hard_deadline=turn.hard_deadline,
            cancel_deadline=turn.cancel_deadline,
            settled=turn.settled,
            asking=turn.waiting.open > 0,
            agent_exited=self._exit_status is not None,
            stop_requested=self._stop_requested,
        )

    async def _send_cancel(self, turn: Turn) -> None:
        assert self.client is not None and self.acp_session_id is not None
        turn.cancel_deadline = trio.current_time() + self.settings.timeouts.cancel_grace_secs
        try:
            await self.client.cancel(self.acp_session_id)
        except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.log.info("cancel not delivered: %s", exc)
        self._changed.fire()

    def _outcome_facts(self, turn: Turn, unresponsive: bool) -> TurnOutcomeFacts:
        error, failure, error_text, error_detail = turn.error, Failure.NONE, "", ""
        if self._exit_status is not None and turn.stop_reason is None:
            failure = Failure.AGENT_EXITED
        elif isinstance(error, PeerClosed):
            failure, error_text = Failure.UNREADABLE, error.reason
        elif isinstance(error, RpcError):
            failure, error_text = Failure.AGENT_ERROR, error.message
            error_detail = "" if error.data is None else str(error.data)
        elif error is not None:
            failure, error_text = Failure.INTERNAL, repr(error)
        capabilities = self.initialize_result.agent_capabilities if self.initialize_result else None
        timeouts = self.settings.timeouts
        refused = turn.refused
        return TurnOutcomeFacts(
            text=turn.handle.transcript.text,
            stop_reason=turn.stop_reason,
            failure=failure,
            error=error_text,
            error_detail=error_detail,
            unresponsive=unresponsive,
            timed_out=turn.timed_out,
            stop_requested=self._stop_requested,
            exit_description=self._exit_status.describe() if self._exit_status else None,
            stderr_tail=self.process.stderr_tail() if self.process else "",
            turn_hard_secs=timeouts.turn_hard_secs,
            cancel_grace_secs=timeouts.cancel_grace_secs,
            restart_after_cancel=self.settings.restart_after_cancel
            and bool(capabilities and capabilities.load_session),
            cancel_requested=turn.cancel_requested,
            refusal=sentences.refused_reason(refused.title, refused.kind, refused.rule)
            if refused is not None
            else "",
        )

    # -- questions to the person in the thread (policy "ask") ----------------

    async def _ask(self, request: PermissionRequest, choice: str | None) -> str | None:
        """The client's approver: puts ``request`` to the thread when the policy
        says ``ask`` (else ``choice``, the policy's). The time it waits is not
        counted by the turn's hard ceiling."""
        turn, book = self.current, self.questions
        policy = self.settings.client_options.permissions
        if turn is None or book is None or turn.settled or not policy.asks(request.tool_call.kind):
            return choice
        turn.waiting.begin(trio.current_time())
        self._report_changed()
        try:
            return await ask_person(
                book,
                turn.handle,
                request,
                initiator=turn.prompt.author,
                timeout_secs=self.settings.ask_timeout_secs,
                why_cancelled=self._why_unasked,
            )
        finally:
            turn.hard_deadline += turn.waiting.end(trio.current_time())
            self._changed.fire()
            self._report_changed()

    def _why_unasked(self) -> Settled:
        """Why a question of this session closes without an answer."""
        stop = self._stop_requested
        if stop is StopReason.SHUTDOWN:
            return Settled.SHUTDOWN
        if stop is StopReason.RESET:
            return Settled.RESET
        if stop is not None:
            return Settled.EVICTED
        if self._exit_status is not None or self._reader_gone:
            return Settled.AGENT_GONE
        turn = self.current
        return Settled.CANCELLED if turn is None or turn.cancel_requested else Settled.AGENT_GONE

    def _settle_questions(self, turn: Turn) -> None:
        """Before a turn's end: no question of it stays open."""
        if self.questions is not None:
            self.questions.settle_all(turn.handle, self._why_unasked())

    def _finish(self) -> None:
        """End the session: no turn it accepted is left without its end, and the
        pool gets its one report."""
        self.state = SessionState.DEAD
        if self.current is not None:
            self._settle_questions(self.current)
            self._end_turn(
                self.current,
                TurnEnd(
                    Outcome.ERROR,
                    self.current.handle.transcript.text,
                    reason=sentences.session_ended_reason(self._end_reason),
                ),
            )
            self.current = None
        self._close_previous()
        leftovers = tuple(self.queue)
        self.queue.clear()
        self.ended.set()
        resumable = None if self._forget else (self.acp_session_id or self.saved_session_id)
        self._observer.session_ended(
            self,
            SessionEnd(
                thread_key=self.key,
                resumable_id=resumable,
                failure=self._failure,
                reason=self._end_reason,
                detail=self.process.stderr_tail() if self.process else "",
                leftovers=leftovers,
                restarts=self.restarts,
                start_end=self._start_end,
            ),
        )
