"""The session pool: thread key -> session, changed only by synchronous code.

Every change to the pool's state — the live map, the suspended ids, the
sessions on their way out, the warm spares, the crash-loop records — happens
in plain synchronous methods with no checkpoint inside. Trio runs one task at
a time, so that needs no lock at all, and nothing that awaits (spawning,
``initialize``, a stop, a cancel) can ever hold up another thread, the status
snapshot, the idle reaper or eviction. Decisions are pure functions over the
state (:func:`decide_admission`, :func:`idle_expired`) that return what to
do; the awaiting happens afterwards, in each session's own task.

The per-thread creation gate is the map entry itself: :meth:`Pool.submit`
inserts a session in the ``starting`` state synchronously, so a second
message for the same thread finds it and queues behind the first — one agent,
one ``session/load``. Entries are removed by identity when a session ends, so
a successor created meanwhile is never removed by mistake, and a failed start
leaves nothing behind.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from broker import sentences
from broker.acp.client import ClientOptions
from broker.acp.policy import PermissionPolicy
from broker.acp.schema import ConfigOption
from broker.config import BrokerConfig, agent_environment, resolve_command
from broker.logs import RepeatLimiter
from broker.pulse import Pulse
from broker.reply import Outcome, Prompt, Settled, TurnEnd, TurnHandle
from broker.sentences import wall_clock
from broker.sessions.decide import Refuse, StopReason, decide_admission, idle_expired
from broker.sessions.questions import (
    ANSWER_SECONDS_BUCKETS,
    Accepted,
    Answer,
    Answerer,
    Decision,
    QuestionBook,
    QuestionStats,
    decide_answer,
)
from broker.sessions.session import (
    AgentProcess,
    Session,
    SessionEnd,
    SessionFailure,
    SessionSettings,
    SessionSnapshot,
    SessionState,
    Turn,
)
from broker.sessions.snapshot import (
    LISTED_THREADS,
    BlockedThread,
    Histogram,
    PoolCounters,
    PoolEvent,
    PoolSnapshot,
)
from broker.sessions.workspace import (
    Removal,
    Workspace,
    WorkspaceError,
    WorkspacePlan,
    Workspaces,
    workspace_for,
)
from broker.store import AgentRecord, Store
from supervisor.leftovers import start_ticks, stop_leftover_group
from supervisor.process import ChildSpec
from supervisor.restart import RestartPolicy, RestartTracker

__all__ = [
    "SPARES_KEY",
    "Histogram",
    "NoLiveSession",
    "Pool",
    "PoolCounters",
    "PoolEvent",
    "PoolSnapshot",
    "open_pool",
    "session_settings",
]

log = logging.getLogger(__name__)

SPARES_KEY = "(warm spares)"


def session_settings(
    config: BrokerConfig,
    environ: dict[str, str] | None = None,
    *,
    profile: str | None = None,
    workspaces: Workspaces | None = None,
) -> SessionSettings:
    """How the agents of ``profile`` (default: the default profile) are started,
    from the broker's config; ``workspaces`` makes the threads' own directories."""
    name = profile or config.default_profile()
    agent = config.agent_profiles()[name]
    cwd = os.path.abspath(agent.working_dir)
    env = agent_environment(
        agent, os.environ if environ is None else environ, secrets=config.secret_values()
    )
    spec = ChildSpec(
        argv=(resolve_command(agent.command, cwd=cwd), *agent.args),
        env=env,
        cwd=cwd,
        name=os.path.basename(agent.command),
        max_line_bytes=agent.max_line_bytes,
    )
    permissions = config.permissions
    policy = PermissionPolicy(
        agent.permissions_default or permissions.default,
        {**permissions.by_kind, **agent.permissions_by_kind},
    )
    options = ClientOptions(
        cwd=cwd, fs_read=agent.fs_read, fs_write=agent.fs_write, permissions=policy
    )
    plan = None
    if agent.workspace != "shared":
        plan = WorkspacePlan(agent.workspace, cwd, agent.repo, agent.base_ref)
    return SessionSettings(
        spec,
        cwd,
        options,
        config.timeouts,
        config.pool.queue_depth,
        agent.restart_after_cancel,
        agent.auth_method,
        ask_timeout_secs=config.permissions.ask_timeout_secs,
        profile=name,
        mcp_servers=agent.mcp_servers,
        workspace=plan,
        workspaces=workspaces if plan is not None else None,
        dispatch=config.pool.dispatch,
        max_batch_bytes=config.pool.max_batch_bytes,
    )


@attrs.frozen
class _Block:
    until: float  # trio clock
    wall_until: float  # the same moment, wall clock
    reason: str
    detail: str


def _spares_wanted(config: BrokerConfig, profile: str) -> int:
    """Warm spares of ``profile``: its own, plus ``[pool] warm_spares`` for the default."""
    agent = config.agent_profiles()[profile]
    extra = config.pool.warm_spares if profile == config.default_profile() else 0
    return agent.warm_spares + extra if agent.workspace == "shared" else 0


class NoLiveSession(LookupError):
    """The thread has no running agent to ask (send it a message first)."""


class Pool:
    """Thread key -> :class:`Session`. Open it with :func:`open_pool`."""

    def __init__(
        self,
        config: BrokerConfig,
        nursery: trio.Nursery,
        *,
        store: Store | None = None,
        settings: SessionSettings | None = None,
    ) -> None:
        self.config = config
        self.counters = PoolCounters()
        self.version = 0
        self.workspaces = Workspaces()
        self._given_settings = settings  # a test's settings for the default profile
        self._profiles = self._profile_settings(config)
        self._nursery = nursery
        self._store = store
        self._sessions: dict[str, Session] = {}
        self._suspended: dict[str, str] = {}
        self._suspended_profile: dict[str, str] = {}  # the profile a suspended id belongs to
        self._chosen: dict[str, str] = {}  # thread key -> profile chosen with /agent
        self._fallbacks: dict[str, str] = {}  # thread key -> its profile a reload removed
        self._stopping: set[Session] = set()
        self._spares: list[Session] = []
        # key -> (tracker, last failure); ordered by last failure, pruned from the front
        self._trackers: dict[str, tuple[RestartTracker, float]] = {}
        self._blocked: dict[str, _Block] = {}
        self._retry_at: dict[str, float] = {}  # key -> no start before (the backoff)
        self._changed = Pulse()
        self._reaper_wake = Pulse()
        self._closing = False
        self._pool_full = RepeatLimiter(log)  # a flood would repeat it for every message
        self._spare_delay = 0.0
        self.turn_seconds = Histogram()
        self.answer_seconds = Histogram(
            ANSWER_SECONDS_BUCKETS, [0] * len(ANSWER_SECONDS_BUCKETS), 0.0, 0
        )
        self._question_stats = QuestionStats(answer_seconds=self.answer_seconds)
        self._books: dict[str, QuestionBook] = {}  # thread key -> its questions
        self.recent: deque[PoolEvent] = deque(maxlen=100)
        self._policy = RestartPolicy(
            max_restarts=config.pool.max_restarts,
            window_secs=config.pool.restart_window_secs,
            backoff_initial=0.5,
            backoff_max=10.0,
        )

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for session in self._sessions.values():
            states[session.state.value] = states.get(session.state.value, 0) + 1
        detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return (
            f"<Pool {len(self._sessions)}/{self.config.pool.max_sessions} sessions"
            f"{f' ({detail})' if detail else ''}, {len(self._suspended)} suspended, "
            f"{len(self._spares)} spares{', closing' if self._closing else ''}>"
        )

    def _profile_settings(self, config: BrokerConfig) -> dict[str, SessionSettings]:
        settings = {
            name: session_settings(config, profile=name, workspaces=self.workspaces)
            for name in config.agent_profiles()
        }
        if self._given_settings is not None:
            settings[config.default_profile()] = self._given_settings
        return settings

    @property
    def _settings(self) -> SessionSettings:
        """The default profile's settings."""
        return self._profiles[self.config.default_profile()]

    # -- the public, synchronous side ------------------------------------------

    def thread_profile(self, thread_key: str, routed: str | None = None) -> str:
        """The profile that serves ``thread_key``: its live session's, else the one
        chosen with ``/agent``, else ``routed`` (the routes' choice), else the
        default. A profile a reload removed gives way to the default."""
        session = self._sessions.get(thread_key)
        if session is not None:
            return session.profile
        name = self._chosen.get(thread_key) or routed or self.config.default_profile()
        return name if name in self._profiles else self.config.default_profile()

    def submit(self, thread_key: str, prompt: Prompt, *, profile: str | None = None) -> TurnHandle:
        """Hand ``prompt`` to the thread's session; never waits.

        A new session runs :meth:`thread_profile` (``profile`` is what the
        routes chose). Busy, pool-full, crash-loop and shutdown refusals arrive
        as the handle's :class:`TurnEnd`, never as exceptions.
        """
        handle = TurnHandle(thread_key, on_end=self._count_end)
        turn = Turn(prompt, handle, trio.current_time())
        self.counters.turns_submitted += 1
        if self._closing:
            handle.push(TurnEnd(Outcome.SHUTDOWN, reason=sentences.SHUTDOWN))
            return handle
        session = self._sessions.get(thread_key)
        if session is None:
            refusal = self._admit(thread_key, self.thread_profile(thread_key, profile))
            if refusal is not None:
                handle.push(refusal)
                return handle
            session = self._sessions[thread_key]
        if not session.enqueue(turn):
            self.counters.refused_busy += 1
        self._bump()
        return handle

    def _count_end(self, end: TurnEnd) -> None:
        """Every submitted turn ends once (the handle calls this once): its outcome."""
        self.counters.turns_ended[end.outcome.value] += 1

    def snapshot(self) -> PoolSnapshot:
        sessions = [s.snapshot() for s in self._sessions.values()]
        sessions += [s.snapshot() for s in self._stopping if s.key is not None]
        ready = sum(1 for s in self._spares if s.state is SessionState.SPARE)
        now = trio.current_time()
        return PoolSnapshot(
            tuple(sessions),
            self.config.pool.max_sessions,
            len(self._suspended),
            len(self._spares),
            ready,
            self.counters.copy(),
            self._closing,
            self.version,
            self.turn_seconds.copy(),
            tuple(self.recent),
            self._question_stats.counters.copy(),
            self.answer_seconds.copy(),
            tuple(sorted(self._suspended)[:LISTED_THREADS]),
            tuple(
                BlockedThread(key, block.until - now, block.reason, block.wall_until, block.detail)
                for key, block in sorted(self._blocked.items())
                if block.until > now
            ),
            tuple((name, a.max_sessions) for name, a in self.config.agent_profiles().items()),
        )

    def update_config(self, config: BrokerConfig) -> list[str]:
        """Apply a reloaded config: limits, timeouts and the agent command hold
        for sessions started from now on (running sessions keep theirs; warm
        spares of a changed profile are replaced); ``[permissions]`` and a
        profile's permission keys apply to running sessions too, from their next
        permission request. A removed profile's threads move to the default
        (:meth:`_retire_profiles`). Returns sentences about what did not apply at once."""
        notes = []
        before, after = self.config.agent_profiles(), config.agent_profiles()
        changed = {name for name, agent in before.items() if after.get(name) != agent}
        if config.timeouts != self.config.timeouts:
            changed = set(before)
        if changed or before.keys() != after.keys():
            notes.append("[agent] and [timeouts] changes apply to sessions started from now on")
        removed = set(before) - set(after)
        if removed:
            notes.append(sentences.profiles_removed_log(sorted(removed), config.default_profile()))
        self.config = config
        self._profiles = self._profile_settings(config)
        for spare in [s for s in self._spares if s.profile in changed]:
            self._spares.remove(spare)  # started with the old settings: replaced below
            self._stopping.add(spare)
            spare.request_stop(StopReason.RETIRED)
        if removed:
            self._retire_profiles(removed)
        for session in (*self._sessions.values(), *self._spares):
            settings = self._profiles.get(session.profile)
            if settings is not None:
                session.apply_permissions(settings.client_options.permissions)
        self._reaper_wake.fire()
        self._replenish_spares()
        self._bump()
        return notes

    def _retire_profiles(self, removed: set[str]) -> None:
        """Move the threads of ``removed`` profiles to the default: an idle session
        stops now, a busy one after its running turn (its queued turns go to the
        successor); each thread's next reply carries a note saying so."""
        threads = {key: p for key, p in self._chosen.items() if p in removed}
        threads |= {key: p for key, p in self._suspended_profile.items() if p in removed}
        threads |= {k: s.profile for k, s in self._sessions.items() if s.profile in removed}
        for key, profile in threads.items():
            self._fallbacks[key] = profile
            self._chosen.pop(key, None)  # a stored choice of it gives way after a restart too
            self._note("profile_removed", key, profile)
        for session in [s for s in self._sessions.values() if s.profile in removed]:
            if session.current is None:
                self._retire(session)

    def _retire(self, session: Session) -> None:
        """Stop a session of a removed profile between turns; its conversation is
        forgotten (no other agent can load it)."""
        if session.key is not None and self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        self._stopping.add(session)
        session.request_stop(StopReason.RETIRED, forget=True)

    def _note(self, kind: str, thread_key: str | None, detail: str = "") -> None:
        self.recent.append(PoolEvent(time.time(), kind, thread_key or SPARES_KEY, detail))

    def session_snapshot(self, thread_key: str) -> SessionSnapshot | None:
        session = self._sessions.get(thread_key)
        return session.snapshot() if session else None

    def answer(self, thread_key: str, answer: Answer, answerer: Answerer) -> Decision:
        """Settle an open question of the thread with ``answer``, if
        ``answerer`` may give it (see :func:`decide_answer`). Synchronous: the
        agent is answered by the task that asked, right after."""
        book = self._books.get(thread_key)
        decision = decide_answer(book, answer, answerer, self.config.permissions.approvers)
        if isinstance(decision, Accepted) and book is not None:
            book.settle(decision.entry, Settled.ANSWERED, decision.option, answerer.person)
            self._bump()
        return decision

    def _question_book(self, thread_key: str) -> QuestionBook:
        book = self._books.get(thread_key)
        if book is None:
            book = self._books[thread_key] = QuestionBook(thread_key, self._question_stats)
        return book

    def is_suspended(self, thread_key: str) -> bool:
        return thread_key in self._suspended

    async def wait_changed(self, seen_version: int) -> None:
        """Return once the pool's version is past ``seen_version``."""
        while self.version <= seen_version:
            await self._changed.wait()

    # -- the public, awaiting side ----------------------------------------------

    async def cancel(self, thread_key: str) -> bool:
        """Send ``session/cancel`` for the thread's running turn now.

        Waits only for that one write; False when nothing runs."""
        session = self._sessions.get(thread_key)
        return await session.cancel_turn() if session else False

    def drop_held(self, thread_key: str, command: str) -> int:
        """Dispatch ``batch``: end the thread's held messages, each with a reply
        saying ``command`` dropped it; how many. Queue mode drops nothing."""
        session = self._sessions.get(thread_key)
        dropped = session.drop_held(command) if session else 0
        if dropped:
            self._note("dropped", thread_key, f"{dropped} held by {command}")
            self._bump()
        return dropped

    async def reset(self, thread_key: str) -> bool:
        """Cancel the thread's turn, stop its agent and forget its ACP session.

        Queued messages end as cancelled. Returns at once (the stop goes on in
        the session's task); a next message starts a fresh session after the
        old agent is gone. False when there was nothing to reset.
        """
        forgot = self._suspended.pop(thread_key, None) is not None
        self._suspended_profile.pop(thread_key, None)
        self._blocked.pop(thread_key, None)
        self._trackers.pop(thread_key, None)
        self._retry_at.pop(thread_key, None)
        if self._store is not None:
            self._store.forget_thread(thread_key)
        session = self._sessions.pop(thread_key, None)
        self._note("reset", thread_key)
        if session is None:
            self._bump()
            return forgot
        self._stopping.add(session)
        session.request_stop(StopReason.RESET, forget=True)  # its queued turns end cancelled
        self._bump()
        await trio.lowlevel.checkpoint()
        return True

    async def switch_profile(self, thread_key: str, profile: str) -> None:
        """Serve the thread with ``profile`` from its next message: its session
        is reset (the conversation belongs to the old agent); its workspace stays."""
        if profile not in self._profiles:
            raise KeyError(profile)
        self._chosen[thread_key] = profile
        if self._store is not None:
            self._store.choose_agent(thread_key, profile)
        self._note("switched", thread_key, profile)
        await self.reset(thread_key)

    def thread_workspace(self, thread_key: str, routed: str | None = None) -> Workspace | None:
        """The thread's own workspace (made or not), None when its profile's is shared."""
        session = self._sessions.get(thread_key)
        if session is not None and session.workspace is not None:
            return session.workspace
        plan = self._profiles[self.thread_profile(thread_key, routed)].workspace
        return None if plan is None else workspace_for(plan, thread_key)

    def thread_cwd(self, thread_key: str, routed: str | None = None) -> str:
        """The directory the thread's agent works in (its profile's working_dir when shared)."""
        return self._profiles[self.thread_profile(thread_key, routed)].cwd

    async def clean_workspace(self, workspace: Workspace) -> Removal:
        """Remove a thread's workspace once its agent is gone (``/reset --clean``:
        call :meth:`reset` first). Waits for the thread's stopping sessions to end,
        bounded by the stop budget; raises WorkspaceError saying what stayed."""
        key = workspace.thread_key
        timeouts = self.config.timeouts
        with trio.move_on_after(timeouts.cancel_grace_secs + timeouts.stop_grace_secs + 2.0):
            for session in [s for s in self._stopping if s.key == key]:
                await session.ended.wait()
        if self._is_live(key):
            raise WorkspaceError(sentences.WORKSPACE_IN_USE)
        return await self.workspaces.remove(
            workspace, prune_unmerged=self.config.state.prune_unmerged, unless=self._is_live
        )

    def _is_live(self, thread_key: str) -> bool:
        """Whether a session (starting, serving or stopping) runs for the thread."""
        return thread_key in self._sessions or any(s.key == thread_key for s in self._stopping)

    async def config_options(self, thread_key: str) -> list[ConfigOption]:
        return list(self._live(thread_key).config_options)

    async def set_config_option(
        self, thread_key: str, config_id: str, value: str
    ) -> list[ConfigOption]:
        session = self._live(thread_key)
        assert session.client is not None and session.acp_session_id is not None
        return await session.client.set_config_option(session.acp_session_id, config_id, value)

    async def set_mode(self, thread_key: str, mode_id: str) -> None:
        session = self._live(thread_key)
        assert session.client is not None and session.acp_session_id is not None
        await session.client.set_mode(session.acp_session_id, mode_id)

    def _live(self, thread_key: str) -> Session:
        session = self._sessions.get(thread_key)
        if session is None or session.client is None or session.acp_session_id is None:
            raise NoLiveSession(f"no running agent for {thread_key}")
        return session

    async def aclose(self) -> None:
        """Graceful stop: running turns are cancelled with their grace (their
        callers get the partial text and a SHUTDOWN end), queued ones end
        SHUTDOWN, every session is suspended and every agent stopped. Bounded
        by the cancel grace plus the stop grace; then the pool's tasks are
        cancelled (which still stops every agent, see the supervisor)."""
        self._closing = True
        for spare in self._spares:
            spare.request_stop(StopReason.SHUTDOWN)
        for session in list(self._sessions.values()):
            self._suspend(session, StopReason.SHUTDOWN)
        timeouts = self.config.timeouts
        budget = timeouts.cancel_grace_secs + timeouts.stop_grace_secs + 2.0
        with trio.move_on_after(budget):
            for session in list(self._stopping) + list(self._spares):
                await session.ended.wait()
        if self._store is not None:
            await self._store.flush()
        self._nursery.cancel_scope.cancel()

    # -- synchronous state changes -------------------------------------------

    def _bump(self) -> None:
        self.version += 1
        self._changed.fire()

    def _admit(
        self, thread_key: str, profile: str, *, delay: float = 0.0, restarts: int = 0
    ) -> TurnEnd | None:
        """Start a session for ``thread_key`` (a new thread, or the successor of
        one that ended with turns left), or say why not: the one admission path,
        decide -> evict -> start."""
        self._forget_old_failures()
        now = trio.current_time()
        block = self._blocked.get(thread_key)
        if block is not None:
            if now < block.until:
                return TurnEnd(Outcome.START_FAILED, reason=block.reason, detail=block.detail)
            del self._blocked[thread_key]
        # a start right after a failure waits out its backoff, however it was asked for
        delay = max(delay, self._retry_at.get(thread_key, now) - now)
        shares = {name: a.max_sessions for name, a in self.config.agent_profiles().items()}
        decision = decide_admission(self._sessions.values(), self.config.pool.max_sessions, shares)
        if isinstance(decision, Refuse):
            self.counters.refused_pool_full += 1
            self._pool_full.warning(
                "pool full (%d busy sessions): refusing %s", decision.busy, thread_key
            )
            return TurnEnd(Outcome.POOL_FULL, reason=sentences.pool_full_reason(decision.busy))
        if decision.evict is not None:
            self.counters.evicted += 1
            log.info("pool full: suspending %s for %s", decision.evict.key, thread_key)
            self._note("evicted", decision.evict.key, f"for {thread_key}")
            self._suspend(decision.evict, StopReason.EVICTED)
        self._start_session(thread_key, profile, delay=delay, restarts=restarts)
        return None

    def _start_session(
        self, thread_key: str, profile: str, *, delay: float = 0.0, restarts: int = 0
    ) -> Session:
        saved = self._suspended.pop(thread_key, None)
        if self._suspended_profile.pop(thread_key, profile) != profile:
            saved = None  # another agent's conversation: it cannot load it
        predecessor = next((s for s in self._stopping if s.key == thread_key), None)
        spare = self._take_spare(profile) if predecessor is None and delay == 0 else None
        if spare is not None:
            spare.assign(thread_key, saved)
            session = spare
        else:
            session = Session(
                thread_key,
                self._profiles[profile],
                self,
                saved_session_id=saved,
                predecessor=predecessor,
                start_delay=delay,
                restarts=restarts,
            )
            self._nursery.start_soon(session.run)
        self._sessions[thread_key] = session
        session.questions = self._question_book(thread_key)
        removed = self._fallbacks.pop(thread_key, None)
        if removed is not None and removed != profile:
            session.pending_notes.append(sentences.profile_removed_note(removed, profile))
        # a taken spare is replaced once a session goes idle (session_changed), so
        # the replacement's spawn does not compete with this thread's first turn
        return session

    def _suspend(self, session: Session, reason: StopReason) -> None:
        key = session.key
        if key is not None and self._sessions.get(key) is session:
            del self._sessions[key]
        if key is not None and session.acp_session_id:
            self._suspended[key] = session.acp_session_id
            self._suspended_profile[key] = session.profile
        self._stopping.add(session)
        session.request_stop(reason)
        self._bump()

    def _take_spare(self, profile: str) -> Session | None:
        mine = [s for s in self._spares if s.profile == profile]
        if not mine:
            return None
        ready = [s for s in mine if s.state is SessionState.SPARE]
        spare = ready[0] if ready else mine[0]
        self._spares.remove(spare)
        return spare

    def _replenish_spares(self) -> None:
        if self._closing:
            return
        blocked = self._blocked.get(SPARES_KEY)
        if blocked is not None and trio.current_time() < blocked.until:
            return
        for profile, settings in self._profiles.items():
            wanted = _spares_wanted(self.config, profile)
            while sum(1 for s in self._spares if s.profile == profile) < wanted:
                spare = Session(None, settings, self, start_delay=self._spare_delay)
                self._spares.append(spare)
                self._nursery.start_soon(spare.run)

    # -- the observer side: what sessions report, synchronously ---------------

    def agent_started(self, session: Session, process: AgentProcess) -> None:
        self.counters.spawned += 1
        if self._store is not None:
            record = AgentRecord(
                session.key or SPARES_KEY,
                process.pid,
                process.pgid,
                start_ticks(process.pid) or 0,
                os.getpid(),
            )
            self._store.record_agent(record)
        self._bump()

    def agent_exited(self, session: Session, process: AgentProcess) -> None:
        if self._store is not None:
            self._store.clear_agent(session.key or SPARES_KEY, process.pid)

    def session_established(self, session: Session) -> None:
        assert session.key is not None and session.acp_session_id is not None
        if session.loaded:
            self.counters.resumed += 1
            self._note("resumed", session.key, f"pid {session.pid}")
        else:
            self._note("started", session.key, f"pid {session.pid}")
        if self._store is not None:
            self._store.save_thread(session.key, session.acp_session_id)
        self._bump()

    def session_changed(self, session: Session) -> None:
        if session.state is SessionState.SPARE:
            self._spare_delay = 0.0
        elif session.state is SessionState.IDLE:
            self._replenish_spares()
        self._bump()

    def turn_ended(self, session: Session, turn: Turn, end: TurnEnd) -> None:
        if turn.started_at is not None:
            self.turn_seconds.observe(trio.current_time() - turn.started_at)
        if end.outcome is Outcome.COMPLETED:
            self.counters.turns_completed += 1
        elif end.outcome is Outcome.TIMED_OUT:
            self.counters.timed_out += 1
            self._note("timed_out", session.key, end.reason)
        elif end.outcome is Outcome.CANCELLED:
            self.counters.cancelled += 1
        if session.profile not in self._profiles and session.key is not None:
            self._retire(session)  # a reload removed its profile: the turn is over

    def session_ended(self, session: Session, end: SessionEnd) -> None:
        """A session's task is over: drop it by identity, keep what can be resumed,
        and give its unstarted turns a successor (or their end)."""
        key = end.thread_key
        self._stopping.discard(session)
        if session in self._spares:
            self._spares.remove(session)
        if key is not None and self._sessions.get(key) is session:
            del self._sessions[key]
        if key is not None and end.resumable_id and key not in self._sessions:
            self._suspended[key] = end.resumable_id
            self._suspended_profile[key] = session.profile
        delay = 0.0
        if end.failure is not None:
            if end.failure is SessionFailure.START_FAILED:
                self.counters.start_failed += 1
            else:
                self.counters.crashed += 1
            self._note(end.failure.value, key, end.reason)
            delay = self._record_failure(key or SPARES_KEY, end.reason, end.detail)
            if key is None:
                self._spare_delay = delay
        for turn in end.leftovers:
            self._place_leftover(end, session.profile, turn, delay)
        if key is None:
            self._replenish_spares()
        self._bump()

    def _forget_old_failures(self) -> None:
        horizon = trio.current_time() - self._policy.window_secs
        while self._trackers:
            key, (_, last_failure) = next(iter(self._trackers.items()))
            if last_failure >= horizon:
                break
            del self._trackers[key]
            self._retry_at.pop(key, None)

    def _record_failure(self, key: str, reason: str, detail: str) -> float:
        """Count a failure of ``key``'s agent (a failed start or a crash, mid-turn
        or idle); the backoff before its next start, or ``inf`` when the thread
        is now blocked for the restart window."""
        now = trio.current_time()
        self._forget_old_failures()
        entry = self._trackers.pop(key, None)
        tracker = entry[0] if entry else RestartTracker(self._policy)
        self._trackers[key] = (tracker, now)
        decision = tracker.record_failure(now)
        if decision.fatal is not None:
            wall_until = time.time() + self._policy.window_secs
            sentence = sentences.crash_loop_reason(decision.fatal, reason, wall_clock(wall_until))
            self._blocked[key] = _Block(
                now + self._policy.window_secs, wall_until, sentence, detail
            )
            self.counters.crash_loops += 1
            self._note("blocked", key, sentence)
            log.error("%s: crash loop: %s", key, decision.fatal)
            del self._trackers[key]
            self._retry_at.pop(key, None)
            return math.inf
        delay = decision.delay or 0.0
        self._retry_at[key] = now + delay
        return delay

    def blocked_thread(self, thread_key: str) -> BlockedThread | None:
        """The block on ``thread_key`` after its agent kept failing, if any."""
        now = trio.current_time()
        block = self._blocked.get(thread_key)
        if block is None or block.until <= now:
            return None
        return BlockedThread(
            thread_key, block.until - now, block.reason, block.wall_until, block.detail
        )

    def _place_leftover(self, ended: SessionEnd, profile: str, turn: Turn, delay: float) -> None:
        key = turn.handle.thread_key
        if ended.start_end is not None:
            turn.handle.push(ended.start_end)
        elif self._closing:
            turn.handle.push(TurnEnd(Outcome.SHUTDOWN, reason=sentences.SHUTDOWN))
        elif math.isinf(delay):
            block = self._blocked.get(key)
            reason, detail = (block.reason, block.detail) if block else ("", "")
            turn.handle.push(TurnEnd(Outcome.START_FAILED, reason=reason, detail=detail))
        else:
            successor = self._sessions.get(key)
            if successor is None:
                profile = profile if profile in self._profiles else self.thread_profile(key)
                refusal = self._admit(key, profile, delay=delay, restarts=ended.restarts + 1)
                if refusal is not None:
                    turn.handle.push(refusal)
                    return
                successor = self._sessions[key]
            successor.enqueue(turn)

    # -- background work -----------------------------------------------------

    async def _reap_idle(self) -> None:
        """Suspend sessions idle longer than ``idle_ttl_secs``; never waits on one."""
        ttl = self.config.pool.idle_ttl_secs
        if ttl <= 0:
            return
        while True:
            expired, next_check = idle_expired(self._sessions.values(), trio.current_time(), ttl)
            for session in expired:
                self.counters.idle_suspended += 1
                self._note("idle", session.key, "suspended after idling")
                self._suspend(session, StopReason.IDLE)
            with trio.move_on_at(next_check):
                await self._reaper_wake.wait()
            ttl = self.config.pool.idle_ttl_secs
            if ttl <= 0:
                return

    async def _reap_workspaces(self) -> None:
        """Remove the workspaces unused for ``[state] workspace_ttl_days`` whose
        thread has no live session; looks again every tenth of the TTL (at most
        hourly). A failure is logged and the reaper goes on."""
        while True:
            days = self.config.state.workspace_ttl_days
            if days <= 0:
                return
            await self.reap_workspaces()
            await trio.sleep(min(days * 86400 / 10, 3600.0))

    async def reap_workspaces(self) -> int:
        """One pass of the workspace reaper over every profile; how many went."""
        ttl = self.config.state.workspace_ttl_days * 86400
        gone = 0
        plans = {s.workspace for s in self._profiles.values() if s.workspace is not None}
        for plan in sorted(plans, key=lambda p: p.root):
            try:
                gone += await self.workspaces.reap(
                    plan, self._is_live, ttl, prune_unmerged=self.config.state.prune_unmerged
                )
            except (OSError, WorkspaceError) as exc:
                log.warning("workspace reaper: %s: %s", plan.root, exc)
        return gone

    async def _recover(self, store: Store) -> None:
        """Stop agents a killed broker left behind; remember its resumable threads."""
        for record in await store.agents():
            if record.broker_pid != os.getpid() and _alive(record.broker_pid):
                log.warning(
                    "agent %d belongs to running broker %d; leaving it",
                    record.pid,
                    record.broker_pid,
                )
                continue
            stopped = await trio.to_thread.run_sync(
                stop_leftover_group, record.pgid, record.start_ticks
            )
            if stopped:
                self.counters.leftovers_stopped += len(stopped)
                log.warning(
                    "stopped %d leftover agent process(es) of %s: %s",
                    len(stopped),
                    record.thread_key,
                    stopped,
                )
            store.clear_agent(record.thread_key, record.pid)
        self._suspended.update(await store.threads())
        self._chosen.update(await store.chosen_agents())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@asynccontextmanager
async def open_pool(
    config: BrokerConfig, *, store: Store | None = None, settings: SessionSettings | None = None
) -> AsyncIterator[Pool]:
    """Run a pool for the duration of the block.

    With a store, leftover agents of a killed broker are stopped first and
    every saved thread becomes resumable. Leaving the block (normally, by an
    exception or by cancellation) runs :meth:`Pool.aclose`, shielded and
    bounded by its own deadline.
    """
    async with trio.open_nursery() as nursery:
        pool = Pool(config, nursery, store=store, settings=settings)
        if store is not None:
            await pool._recover(store)
        nursery.start_soon(pool._reap_idle)
        nursery.start_soon(pool._reap_workspaces)
        pool._replenish_spares()
        try:
            yield pool
        finally:
            with trio.CancelScope(shield=True):
                await pool.aclose()
