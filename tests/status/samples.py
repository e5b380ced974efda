"""Status data as a busy broker would have it, for the pure rendering tests."""

from __future__ import annotations

from broker.frontends.gateway import GatewaySnapshot
from broker.frontends.server import ServerSnapshot
from broker.reply import Outcome
from broker.sessions.pool import Histogram, PoolCounters, PoolEvent, PoolSnapshot
from broker.sessions.session import SessionSnapshot
from broker.sessions.snapshot import BlockedThread

SERVER = ServerSnapshot("127.0.0.1", 8765, ("ws-1", "ws-3"), 17, 2)
GATEWAY = GatewaySnapshot(
    "wss://bot:pw@gw.example:8443/ws?key=k", False, 3, 40, 5, "refused with HTTP 502"
)


ENDED = {"completed": 7, "timed_out": 2}


def busy_session(key: str, **changes: object) -> SessionSnapshot:
    values: dict[str, object] = {
        "thread_key": key,
        "state": "busy",
        "pid": 4242,
        "age_secs": 125.5,
        "idle_secs": None,
        "queue_length": 2,
        "current_tool": "Run tests",
        "turn_elapsed_secs": 61.25,
        "turn_deadline_in_secs": 1738.75,
        "turns_done": 3,
        "restarts": 1,
        "agent": "claude-agent-acp",
    }
    values.update(changes)
    return SessionSnapshot(**values)  # type: ignore[arg-type]


def pool_snapshot(
    *sessions: SessionSnapshot,
    closing: bool = False,
    shares: tuple[tuple[str, int], ...] = (("default", 0),),
) -> PoolSnapshot:
    histogram = Histogram()
    for secs in (0.05, 2.0, 70.0):
        histogram.observe(secs)
    return PoolSnapshot(
        sessions=sessions,
        max_sessions=20,
        suspended=4,
        spares=2,
        spares_ready=1,
        counters=PoolCounters(
            spawned=9,
            crashed=1,
            timed_out=2,
            turns_completed=7,
            turns_submitted=9,
            turns_ended={
                o.value: {"completed": 7, "timed_out": 2}.get(o.value, 0) for o in Outcome
            },
        ),
        closing=closing,
        version=33,
        turn_seconds=histogram,
        recent=(PoolEvent(1_700_000_000.0, "crashed", "discord:9", "exited with code 3"),),
        suspended_threads=("cli:old-1", "slack:C1"),
        blocked_threads=(BlockedThread("discord:9", 42.0, "The agent keeps failing."),),
        shares=shares,
    )
