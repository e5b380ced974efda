"""The broker's status: one JSON document, a live feed of it, health and metrics.

Everything here is built from :meth:`Pool.snapshot` and
:meth:`WebSocketServer.snapshot`, both synchronous, so every endpoint answers
at once however busy, slow or stuck the agents are.

Routes, for :func:`broker.frontends.server.serve_websocket`:

* ``/status`` (WebSocket): the document at once, then again after every pool
  change (coalesced: at most ``max_per_sec`` documents a second) and at least
  every ``heartbeat_secs``;
* ``GET /status``: one document (``curl``, ``agent-broker status``);
* ``GET /healthz``: ``200 ok`` while serving, ``503 closing`` once shutdown
  began (the server serves it without a token);
* ``GET /metrics``: Prometheus text exposition format 0.0.4.

Secrets never appear: neither snapshot carries a token or the agent's
environment, URLs lose their user info and query, and free text is masked with
the configured secrets. docs/status.md describes the document and the metric
names.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio
import trio_websocket

import broker
from broker.chat.scheduler import Scheduler
from broker.chat.schedules import ScheduleStatus
from broker.cluster.forward import ClusterSnapshot
from broker.config import mask_secrets
from broker.frontends.discord.adapter import DiscordSnapshot
from broker.frontends.gateway import GatewaySnapshot
from broker.frontends.http import HttpHandler, HttpRequest, HttpResponse
from broker.frontends.server import ServerSnapshot, WebSocketHandler
from broker.frontends.slack.adapter import SlackSnapshot
from broker.reply import Settled
from broker.sessions.pool import Histogram, Pool, PoolSnapshot
from broker.sessions.session import SessionState
from broker.store import StoreSnapshot

log = logging.getLogger(__name__)

STATUS_SCHEMA = "agent-broker.status.v1"
STATUS_PATH = "/status"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
HEARTBEAT_SECS = 2.0
MAX_DOCUMENTS_PER_SEC = 10.0
SEND_TIMEOUT_SECS = 10.0
RECENT_EVENTS = 50
SUSPENDED = "suspended"
#: The states counted by the document and ``/metrics``: a session's, plus ``suspended``.
SESSION_STATES = (*(state.value for state in SessionState), SUSPENDED)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

ServerSnapshotSource = Callable[[], ServerSnapshot | None]
GatewaySnapshotSource = Callable[[], GatewaySnapshot | None]
StoreSnapshotSource = Callable[[], StoreSnapshot]


def _secs(value: float | None) -> float | None:
    """Seconds rounded to milliseconds; None for unknown or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 3)


def state_counts(snapshot: PoolSnapshot) -> dict[str, int]:
    """How many agents or threads are in each of :data:`SESSION_STATES`
    (``spare``: warm spares; ``suspended``: threads resumable without an agent)."""
    counts = {state: snapshot.count(state) for state in SESSION_STATES}
    counts[SessionState.SPARE.value] = snapshot.spares
    counts[SUSPENDED] = snapshot.suspended
    return counts


def status_document(
    snapshot: PoolSnapshot,
    server: ServerSnapshot | None,
    *,
    now: float,
    started_at: float,
    version: str = broker.__version__,
    pid: int | None = None,
    gateway: GatewaySnapshot | None = None,
    discord: DiscordSnapshot | None = None,
    slack: SlackSnapshot | None = None,
    secrets: Iterable[str] = (),
    closing: bool = False,
    store: StoreSnapshot | None = None,
    schedules: Sequence[ScheduleStatus] = (),
    cluster: ClusterSnapshot | None = None,
) -> dict[str, Any]:
    """The status document (schema ``agent-broker.status.v1``) as plain JSON data.

    Pure: ``now`` and ``started_at`` are wall-clock seconds since the epoch
    (``time.time()``), ``pid`` defaults to this process. Sessions are sorted
    by thread key; ``recent`` holds the last events, oldest first. Infinite or
    unknown durations are ``null``. A front-end that is not running is
    ``null``. ``closing`` says shutdown began before the pool knows it.
    ``schedules`` are the scheduler's states (next run, last run and result).
    No snapshot holds a token, but free text (event details, tool titles, the
    gateway's last error) is still masked with ``secrets``.
    """
    by_state = state_counts(snapshot)
    sessions = sorted(snapshot.sessions, key=lambda s: (s.thread_key or "", s.state))
    document = {
        "schema": STATUS_SCHEMA,
        "generated_at": round(now, 3),
        "broker": {
            "version": version,
            "pid": os.getpid() if pid is None else pid,
            "started_at": round(started_at, 3),
            "uptime_secs": _secs(max(0.0, now - started_at)),
            "closing": closing or snapshot.closing,
        },
        "pool": {
            "active": snapshot.active,
            "max_sessions": snapshot.max_sessions,
            "by_state": by_state,
            "suspended": snapshot.suspended,
            "suspended_threads": list(snapshot.suspended_threads),
            "blocked_threads": [
                {
                    "thread_key": b.thread_key,
                    "secs_left": _secs(b.secs_left),
                    "until": round(b.until, 3),
                    "reason": mask_secrets(b.reason, secrets),
                    "detail": mask_secrets(b.detail, secrets),
                }
                for b in snapshot.blocked_threads
            ],
            "profiles": {
                gauge.profile: {
                    "sessions": gauge.sessions,
                    "busy": gauge.busy,
                    "share": gauge.share,
                }
                for gauge in snapshot.profiles()
            },
            "spares": snapshot.spares,
            "spares_ready": snapshot.spares_ready,
            "queued": sum(s.queue_length for s in snapshot.sessions),
            "closing": snapshot.closing,
            "version": snapshot.version,
            "summary": snapshot.summary(),
        },
        "counters": attrs.asdict(snapshot.counters),
        "turn_seconds": _histogram_part(snapshot.turn_seconds),
        "questions": {
            **attrs.asdict(snapshot.questions),
            "open": sum(1 for s in snapshot.sessions if s.waiting_for is not None),
            "answer_seconds": _histogram_part(snapshot.answer_seconds),
        },
        "sessions": [
            {
                "thread_key": s.thread_key,
                "state": s.state,
                "pid": s.pid,
                "agent": s.agent,
                "profile": s.profile,
                "age_secs": _secs(s.age_secs),
                "idle_secs": _secs(s.idle_secs),
                "turn_elapsed_secs": _secs(s.turn_elapsed_secs),
                "turn_deadline_in_secs": _secs(s.turn_deadline_in_secs),
                "queue_length": s.queue_length,
                "current_tool": s.current_tool,
                "waiting_for_approval": s.waiting_for,
                "waiting_secs": _secs(s.waiting_secs),
                "turns_done": s.turns_done,
                "restarts": s.restarts,
            }
            for s in sessions
        ],
        "store": None if store is None else attrs.asdict(store),
        "cluster": None if cluster is None else attrs.asdict(cluster),
        "frontends": {
            "server": None if server is None else _server_part(server),
            "gateway": None if gateway is None else _gateway_part(gateway),
            "discord": None if discord is None else attrs.asdict(discord),
            "slack": None if slack is None else attrs.asdict(slack),
        },
        "recent": [
            {
                "at": round(event.at, 3),
                "age_secs": _secs(max(0.0, now - event.at)),
                "kind": event.kind,
                "thread_key": event.thread_key,
                "detail": event.detail,
            }
            for event in snapshot.recent[-RECENT_EVENTS:]
        ],
        "schedules": [
            {
                "name": status.name,
                "cron": status.cron,
                "tz": status.tz,
                "target": status.target,
                "next_run": _secs(status.next_run),
                "last_run": _secs(status.last_run),
                "last_result": status.last_result or None,
                "last_detail": status.last_detail or None,
                "running": status.running,
            }
            for status in schedules
        ],
    }
    secrets = tuple(secret for secret in secrets if secret)
    return _masked(document, secrets) if secrets else document


def _masked(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return mask_secrets(value, secrets)
    if isinstance(value, dict):
        return {key: _masked(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, secrets) for item in value]
    return value


def _server_part(server: ServerSnapshot) -> dict[str, Any]:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return {
        "listen": f"{host}:{server.port}",
        "clients": list(server.connections),
        "events_received": server.events_received,
        "outbox_waiting": server.outbox_waiting,
    }


def _gateway_part(gateway: GatewaySnapshot) -> dict[str, Any]:
    return {
        "url": _bare_url(gateway.url),
        "connected": gateway.connected,
        "connects": gateway.connects,
        "events_received": gateway.events_received,
        "outbox_waiting": gateway.outbox_waiting,
        "last_error": gateway.last_error,
    }


def _bare_url(url: str) -> str:
    """``url`` without user info, query or fragment (where credentials could hide)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def encode_document(document: dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


# -- /metrics ------------------------------------------------------------------

_COUNTERS = (
    # (metric, PoolCounters attribute, help)
    ("agent_broker_spawns_total", "spawned", "Agent processes started."),
    ("agent_broker_resumes_total", "resumed", "Sessions resumed with session/load."),
    ("agent_broker_evictions_total", "evicted", "Idle sessions suspended to make room."),
    ("agent_broker_idle_suspensions_total", "idle_suspended", "Sessions suspended after idling."),
    ("agent_broker_crashes_total", "crashed", "Agents that ended unexpectedly."),
    ("agent_broker_start_failures_total", "start_failed", "Agents that failed to start."),
    ("agent_broker_timeouts_total", "timed_out", "Turns stopped at the hard ceiling."),
    ("agent_broker_turns_submitted_total", "turns_submitted", "Prompts handed to the pool."),
    ("agent_broker_leftovers_stopped_total", "leftovers_stopped", "Leftover agents stopped."),
    (
        "agent_broker_crash_loops_total",
        "crash_loops",
        "Threads blocked for a window after their agent failed too often.",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if isinstance(value, float) else str(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        text = ",".join(f'{key}="{_label(val)}"' for key, val in labels.items())
        self.lines.append(
            f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
        )

    def one(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def histogram(self, name: str, help_text: str, histogram: Histogram) -> None:
        self.family(name, "histogram", help_text)
        for bound, count in zip(histogram.bounds, histogram.counts, strict=True):
            self.sample(f"{name}_bucket", count, le=_number(float(bound)))
        self.sample(f"{name}_sum", float(histogram.total))
        self.sample(f"{name}_count", histogram.count)


def metrics_text(
    snapshot: PoolSnapshot,
    server: ServerSnapshot | None,
    *,
    now: float,
    started_at: float,
    version: str = broker.__version__,
    gateway: GatewaySnapshot | None = None,
    discord: DiscordSnapshot | None = None,
    slack: SlackSnapshot | None = None,
    schedule_runs: Mapping[tuple[str, str], int] | None = None,
    schedules: Sequence[ScheduleStatus] = (),
) -> str:
    """The Prometheus text exposition (format 0.0.4) of the snapshots. Pure.

    ``schedule_runs`` counts scheduled runs by (schedule, result)."""
    out = _Exposition()
    out.family("agent_broker_info", "gauge", "Always 1; the version is a label.")
    out.sample("agent_broker_info", 1, version=version)
    out.one("agent_broker_uptime_seconds", "gauge", "Seconds since start.", now - started_at)
    out.one("agent_broker_closing", "gauge", "1 once shutdown began.", int(snapshot.closing))
    out.family(
        "agent_broker_sessions",
        "gauge",
        "Agents and threads by state (spare: warm spares; suspended: no agent, resumable).",
    )
    for state, count in state_counts(snapshot).items():
        out.sample("agent_broker_sessions", count, state=state)
    out.one(
        "agent_broker_max_sessions",
        "gauge",
        "Configured [pool] max_sessions.",
        snapshot.max_sessions,
    )
    out.one("agent_broker_spares", "gauge", "Warm spare agents.", snapshot.spares)
    out.one(
        "agent_broker_spares_ready",
        "gauge",
        "Warm spares ready to take a thread.",
        snapshot.spares_ready,
    )
    out.one(
        "agent_broker_queue_length",
        "gauge",
        "Prompts waiting behind running turns.",
        sum(s.queue_length for s in snapshot.sessions),
    )
    _profile_metrics(out, snapshot)
    counters = snapshot.counters
    out.family(
        "agent_broker_turns_total",
        "counter",
        "Submitted turns by their one outcome; the outcomes sum to turns submitted.",
    )
    for outcome, count in counters.turns_ended.items():
        out.sample("agent_broker_turns_total", count, outcome=outcome)
    out.one(
        "agent_broker_blocked_threads",
        "gauge",
        "Threads refused for now because their agent kept failing.",
        len(snapshot.blocked_threads),
    )
    for name, attribute, help_text in _COUNTERS:
        out.one(name, "counter", help_text, getattr(counters, attribute))
    out.histogram(
        "agent_broker_turn_duration_seconds",
        "Duration of turns from start to end.",
        snapshot.turn_seconds,
    )
    _question_metrics(out, snapshot)
    _frontend_metrics(out, server, gateway, discord, slack)
    _schedule_metrics(out, schedule_runs or {}, schedules)
    return "\n".join(out.lines) + "\n"


_PROFILE_GAUGES = (
    # (metric, ProfileGauge attribute, help)
    ("agent_broker_profile_sessions", "sessions", "Live sessions by agent profile."),
    ("agent_broker_profile_busy", "busy", "Sessions running a turn, by agent profile."),
    (
        "agent_broker_profile_share",
        "share",
        "Each profile's share of the pool ([agents.NAME] max_sessions; 0: none of its own).",
    ),
)


def _profile_metrics(out: _Exposition, snapshot: PoolSnapshot) -> None:
    gauges = snapshot.profiles()
    for name, attribute, help_text in _PROFILE_GAUGES:
        out.family(name, "gauge", help_text)
        for gauge in gauges:
            out.sample(name, getattr(gauge, attribute), profile=gauge.profile)


OPTION_KINDS = ("allow_once", "allow_always", "reject_once", "reject_always")


def _question_metrics(out: _Exposition, snapshot: PoolSnapshot) -> None:
    questions = snapshot.questions
    out.one(
        "agent_broker_questions_asked_total",
        "counter",
        "Permission questions put to a person (policy ask).",
        questions.asked,
    )
    out.one(
        "agent_broker_questions_waiting",
        "gauge",
        "Sessions whose turn waits for a person's answer.",
        sum(1 for s in snapshot.sessions if s.waiting_for is not None),
    )
    name = "agent_broker_questions_answered_total"
    out.family(name, "counter", "Questions a person answered, by the kind of option chosen.")
    kinds = dict.fromkeys(OPTION_KINDS, 0) | questions.answered
    for kind, count in sorted(kinds.items()):
        out.sample(name, count, option_kind=kind)
    out.one(
        "agent_broker_questions_timed_out_total",
        "counter",
        "Questions nobody answered in time (the agent got its reject option).",
        questions.timed_out,
    )
    name = "agent_broker_questions_closed_total"
    out.family(name, "counter", "Questions settled, by how (answered, timed_out, cancelled, ...).")
    closed = {settled.value: 0 for settled in Settled} | questions.closed
    for how, count in sorted(closed.items()):
        out.sample(name, count, how=how)
    out.histogram(
        "agent_broker_question_answer_seconds",
        "Time from a question to a person's answer.",
        snapshot.answer_seconds,
    )


def _histogram_part(histogram: Histogram) -> dict[str, Any]:
    return {
        "buckets": [
            ["+Inf" if math.isinf(bound) else bound, count]
            for bound, count in zip(histogram.bounds, histogram.counts, strict=True)
        ],
        "sum": _secs(histogram.total),
        "count": histogram.count,
    }


def _schedule_metrics(
    out: _Exposition, runs: Mapping[tuple[str, str], int], schedules: Sequence[ScheduleStatus]
) -> None:
    """Scheduled runs by schedule and result, and each schedule's next run
    (families without samples are left out)."""
    name = "agent_broker_schedule_runs_total"
    if runs:
        out.family(
            name,
            "counter",
            "Scheduled runs by schedule and result (a turn outcome, skipped, missed or failed).",
        )
        for (schedule, result), count in sorted(runs.items()):
            out.sample(name, count, schedule=schedule, result=result)
    name = "agent_broker_schedule_next_run_timestamp_seconds"
    upcoming = [status for status in schedules if status.next_run is not None]
    if upcoming:
        out.family(name, "gauge", "When each schedule runs next, seconds since the epoch.")
        for status in upcoming:
            out.sample(name, status.next_run or 0.0, schedule=status.name)


def _frontend_metrics(
    out: _Exposition,
    server: ServerSnapshot | None,
    gateway: GatewaySnapshot | None,
    discord: DiscordSnapshot | None,
    slack: SlackSnapshot | None = None,
) -> None:
    running: list[tuple[str, int, int | None]] = []
    if server is not None:
        running.append(("server", server.events_received, server.outbox_waiting))
        out.one(
            "agent_broker_clients", "gauge", "Connected WebSocket clients.", len(server.connections)
        )
    if gateway is not None:
        running.append(("gateway", gateway.events_received, gateway.outbox_waiting))
        out.one(
            "agent_broker_gateway_connected",
            "gauge",
            "1 while connected to the gateway.",
            int(gateway.connected),
        )
        out.one(
            "agent_broker_gateway_connects_total",
            "counter",
            "Connections made to the gateway.",
            gateway.connects,
        )
    if discord is not None:
        running.append(("discord", discord.events_received, discord.outbox_waiting))
        out.one(
            "agent_broker_discord_connected",
            "gauge",
            "1 while the Discord gateway session is ready.",
            int(discord.connected),
        )
        out.one(
            "agent_broker_discord_rate_limited_total",
            "counter",
            "HTTP 429 answers from Discord's REST API.",
            discord.rate_limited,
        )
        out.one(
            "agent_broker_discord_heartbeat_lateness_seconds",
            "gauge",
            "The latest a Discord heartbeat went out after it was due.",
            discord.heartbeat_lateness_secs,
        )
    if slack is not None:
        running.append(("slack", slack.events_received, slack.outbox_waiting))
        out.one(
            "agent_broker_slack_connections",
            "gauge",
            "Open Slack Socket Mode connections (0 while reconnecting or stopped).",
            slack.connections,
        )
        out.one(
            "agent_broker_slack_rate_limited_total",
            "counter",
            "Slack Web API calls answered 429 and retried.",
            slack.rate_limited,
        )
    if not running:
        return
    out.family("agent_broker_events_received_total", "counter", "Events received, by front-end.")
    for frontend, events, _ in running:
        out.sample("agent_broker_events_received_total", events, frontend=frontend)
    waiting = [(frontend, count) for frontend, _, count in running if count is not None]
    if waiting:
        out.family(
            "agent_broker_outbox_waiting",
            "gauge",
            "Replies waiting for a connection, by front-end.",
        )
        for frontend, count in waiting:
            out.sample("agent_broker_outbox_waiting", count, frontend=frontend)


# -- the endpoints ----------------------------------------------------------------


class StatusEndpoints:
    """The status routes of one running broker.

    ``server_snapshot`` and ``gateway_snapshot`` may be set after
    construction (the server is started with these routes, so it exists only
    afterwards); while one is None its part of the document is null.
    ``secrets`` (``config.secret_values()``) are masked in every document.
    :attr:`closing` (or the pool's own closing flag) turns ``/healthz`` to 503.
    """

    def __init__(
        self,
        pool: Pool,
        server_snapshot: ServerSnapshotSource | None = None,
        *,
        started_at: float,
        version: str = broker.__version__,
        gateway_snapshot: GatewaySnapshotSource | None = None,
        secrets: Iterable[str] = (),
        store_snapshot: StoreSnapshotSource | None = None,
        heartbeat_secs: float = HEARTBEAT_SECS,
        max_per_sec: float = MAX_DOCUMENTS_PER_SEC,
        schedules: Scheduler | None = None,
    ) -> None:
        self.pool = pool
        self.schedules = schedules
        self.server_snapshot = server_snapshot
        self.gateway_snapshot = gateway_snapshot
        self.store_snapshot = store_snapshot
        self.discord_snapshot: Callable[[], DiscordSnapshot] | None = None
        self.slack_snapshot: Callable[[], SlackSnapshot] | None = None
        self.cluster_snapshot: Callable[[], ClusterSnapshot] | None = None
        self.secrets = tuple(secrets)
        self.started_at = started_at
        self.version = version
        self.heartbeat_secs = heartbeat_secs
        self.min_interval = 1.0 / max_per_sec
        self.closing = False
        self.feeds = 0  # live /status WebSocket feeds

    def _frontends(
        self,
    ) -> tuple[ServerSnapshot | None, GatewaySnapshot | None, DiscordSnapshot | None]:
        server = self.server_snapshot() if self.server_snapshot is not None else None
        gateway = self.gateway_snapshot() if self.gateway_snapshot is not None else None
        discord = self.discord_snapshot() if self.discord_snapshot is not None else None
        return server, gateway, discord

    def document(self) -> dict[str, Any]:
        """The document now; synchronous, never waits."""
        server, gateway, discord = self._frontends()
        return status_document(
            self.pool.snapshot(),
            server,
            now=time.time(),
            started_at=self.started_at,
            version=self.version,
            gateway=gateway,
            discord=discord,
            slack=self._slack(),
            secrets=self.secrets,
            closing=self.closing,
            store=None if self.store_snapshot is None else self.store_snapshot(),
            schedules=self.schedules.snapshot() if self.schedules is not None else (),
            cluster=None if self.cluster_snapshot is None else self.cluster_snapshot(),
        )

    def _slack(self) -> SlackSnapshot | None:
        return self.slack_snapshot() if self.slack_snapshot is not None else None

    def http_routes(self) -> dict[str, HttpHandler]:
        return {
            STATUS_PATH: self.get_status,
            HEALTH_PATH: self.get_health,
            METRICS_PATH: self.get_metrics,
        }

    def ws_routes(self) -> dict[str, WebSocketHandler]:
        return {STATUS_PATH: self.status_feed}

    async def get_status(self, request: HttpRequest) -> HttpResponse:
        await trio.lowlevel.checkpoint()
        return HttpResponse(200, (encode_document(self.document()) + "\n").encode())

    async def get_health(self, request: HttpRequest) -> HttpResponse:
        await trio.lowlevel.checkpoint()
        if self.closing or self.pool.snapshot().closing:
            return HttpResponse(503, b"closing\n", "text/plain")
        return HttpResponse(200, b"ok\n", "text/plain")

    async def get_metrics(self, request: HttpRequest) -> HttpResponse:
        await trio.lowlevel.checkpoint()
        server, gateway, discord = self._frontends()
        text = metrics_text(
            self.pool.snapshot(),
            server,
            now=time.time(),
            started_at=self.started_at,
            version=self.version,
            gateway=gateway,
            discord=discord,
            slack=self._slack(),
            schedule_runs=self.schedules.runs if self.schedules is not None else None,
            schedules=self.schedules.snapshot() if self.schedules is not None else (),
        )
        return HttpResponse(200, text.encode(), METRICS_CONTENT_TYPE)

    async def status_feed(self, request: trio_websocket.WebSocketRequest) -> None:
        """Serve one ``/status`` WebSocket until the client goes.

        Sends the document at once, then after each pool change, waiting out
        the rest of ``1 / max_per_sec`` since the previous document so that a
        flood of changes costs at most that rate (later changes are folded
        into the next document), and at least every ``heartbeat_secs``. A
        client that does not take a document within ``SEND_TIMEOUT_SECS`` is
        dropped. Whatever the client sends is read and ignored.
        """
        ws = await request.accept()
        self.feeds += 1
        log.debug("status feed opened (%d watching)", self.feeds)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_discard_incoming, ws, nursery.cancel_scope)
                try:
                    await self._push(ws)
                except (trio_websocket.ConnectionClosed, trio.TooSlowError):
                    nursery.cancel_scope.cancel()
        finally:
            self.feeds -= 1
            log.debug("status feed closed (%d watching)", self.feeds)
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                await ws.aclose()

    async def _push(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            document = self.document()
            seen = document["pool"]["version"]
            with trio.fail_after(SEND_TIMEOUT_SECS):
                await ws.send_message(encode_document(document))
            sent_at = trio.current_time()
            with trio.move_on_after(self.heartbeat_secs):
                await self.pool.wait_changed(seen)
                await trio.sleep_until(sent_at + self.min_interval)


async def _discard_incoming(
    ws: trio_websocket.WebSocketConnection, scope: trio.CancelScope
) -> None:
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        scope.cancel()


def status_routes(
    pool: Pool,
    server_snapshot: ServerSnapshotSource | None,
    *,
    started_at: float,
    version: str = broker.__version__,
    gateway_snapshot: GatewaySnapshotSource | None = None,
    secrets: Iterable[str] = (),
    heartbeat_secs: float = HEARTBEAT_SECS,
) -> tuple[dict[str, HttpHandler], dict[str, WebSocketHandler]]:
    """``(http_routes, ws_routes)`` for ``serve_websocket``; see :class:`StatusEndpoints`
    (use the class itself to set the snapshot sources or ``closing`` later)."""
    endpoints = StatusEndpoints(
        pool,
        server_snapshot,
        started_at=started_at,
        version=version,
        gateway_snapshot=gateway_snapshot,
        secrets=secrets,
        heartbeat_secs=heartbeat_secs,
    )
    return endpoints.http_routes(), endpoints.ws_routes()
