"""The Discord gateway (API v10) as data and synchronous decisions.

Nothing here does I/O. :class:`Heartbeat` says when the next heartbeat is due
and whether the connection is a zombie (no ACK for the last beat when the next
one is due); :class:`IdentifyPacer` says when the next IDENTIFY may go out
(``session_start_limit``: ``remaining`` starts per ``reset_after``, at most
``max_concurrency`` per 5 s); :func:`after_close` says what a close code calls
for (resume, identify anew, or stop for good).
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

API_VERSION = 10
GATEWAY_QUERY = "v=10&encoding=json"


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11


class Intent(enum.IntFlag):
    GUILDS = 1 << 0
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    DIRECT_MESSAGES = 1 << 12
    MESSAGE_CONTENT = 1 << 15  # privileged: enable it in the Developer Portal


INTENTS = (
    Intent.GUILDS
    | Intent.GUILD_MESSAGES
    | Intent.DIRECT_MESSAGES
    | Intent.MESSAGE_CONTENT
    | Intent.GUILD_MESSAGE_REACTIONS
)

# Close codes after which reconnecting cannot help; the text is what the
# operator sees in the log, /status and the dashboard.
FATAL_CLOSES = {
    4004: "authentication failed: [discord] token is wrong or was reset",
    4010: "invalid shard",
    4011: "sharding required: the bot is in too many guilds for one connection",
    4012: "invalid API version",
    4013: "invalid intents",
    4014: (
        "disallowed intents: enable the Message Content intent for the bot in the "
        "Discord Developer Portal (Bot -> Privileged Gateway Intents)"
    ),
}
# Closes after which the session is gone: reconnect, but IDENTIFY anew.
NEW_SESSION_CLOSES = frozenset({4007, 4009})
# A close the client sends itself to keep the session resumable (not 1000/1001).
CLOSE_RESUMABLE = 4000


class Next(enum.Enum):
    RESUME = "resume"
    IDENTIFY = "identify"
    STOP = "stop"


def after_close(code: int | None, *, resumable_session: bool) -> Next:
    """What to do after the connection closed with ``code`` (None: no close frame)."""
    if code in FATAL_CLOSES:
        return Next.STOP
    if code in NEW_SESSION_CLOSES or code in (1000, 1001) or not resumable_session:
        return Next.IDENTIFY
    return Next.RESUME


def close_reason(code: int) -> str:
    return f"closed with {code}: {FATAL_CLOSES.get(code, 'see Discord close codes')}"


def frame(op: Op, d: Any) -> dict[str, Any]:
    return {"op": int(op), "d": d}


def identify(
    token: str, intents: int = int(INTENTS), shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The IDENTIFY payload; ``shard`` is ``(shard_id, num_shards)`` when the bot
    is sharded (a cluster: each replica is the shard of its ordinal)."""
    properties = {"os": "linux", "browser": "agent-broker", "device": "agent-broker"}
    d: dict[str, Any] = {"token": token, "intents": intents, "properties": properties}
    if shard is not None:
        d["shard"] = list(shard)
    return frame(Op.IDENTIFY, d)


def resume(token: str, session_id: str, seq: int | None) -> dict[str, Any]:
    return frame(Op.RESUME, {"token": token, "session_id": session_id, "seq": seq})


def heartbeat(seq: int | None) -> dict[str, Any]:
    return frame(Op.HEARTBEAT, seq)


@attrs.define
class Session:
    """What survives a connection: the session to resume and the last sequence."""

    session_id: str | None = None
    resume_url: str | None = None
    seq: int | None = None

    @property
    def resumable(self) -> bool:
        return self.session_id is not None and self.resume_url is not None

    def forget(self) -> None:
        self.session_id = None
        self.resume_url = None
        self.seq = None

    def saw(self, seq: object) -> bool:
        """Record a dispatch's ``s``; False when it is not newer than the last (a replay)."""
        if not isinstance(seq, int) or isinstance(seq, bool):
            return True
        if self.seq is not None and seq <= self.seq:
            return False
        self.seq = seq
        return True


@attrs.define
class Heartbeat:
    """Heartbeat pacing for one connection (times in seconds, trio's clock).

    The first beat is due ``interval * jitter`` after HELLO, the next ones
    every ``interval``. When a beat is due and the previous one got no ACK,
    the connection is a zombie (:meth:`due` returns False): close and resume.
    """

    interval: float
    next_at: float
    acked: bool = True
    sent: int = 0
    last_sent_at: float | None = None
    lateness: float = 0.0  # the worst delay of a beat after it was due

    @classmethod
    def after_hello(cls, now: float, interval_ms: int, jitter: float) -> Heartbeat:
        interval = interval_ms / 1000
        return cls(interval, now + interval * jitter)

    @property
    def zombie(self) -> bool:
        """A beat is due and the last one got no ACK: close the connection and resume."""
        return not self.acked

    def beat(self, now: float) -> None:
        """A beat goes out at ``now`` (it was due at :attr:`next_at`)."""
        self.lateness = max(self.lateness, now - self.next_at)
        self.acked = False
        self.sent += 1
        self.last_sent_at = now
        self.next_at += self.interval
        if self.next_at <= now:
            self.next_at = now + self.interval

    def requested(self, now: float) -> None:
        """The gateway asked for a beat (op 1): one goes out now, the schedule stays."""
        self.acked = False
        self.last_sent_at = now

    def ack(self) -> None:
        self.acked = True


IDENTIFY_WINDOW_SECS = 5.0


@attrs.define
class IdentifyPacer:
    """When the next IDENTIFY may be sent.

    ``remaining`` session starts are left until ``reset_at``; at most
    ``max_concurrency`` IDENTIFYs go out per :data:`IDENTIFY_WINDOW_SECS`.
    """

    remaining: int = 1000
    reset_at: float = 0.0
    max_concurrency: int = 1
    sent_at: list[float] = attrs.field(factory=list)

    def update(self, now: float, limit: dict[str, Any]) -> None:
        """Take ``session_start_limit`` from GET /gateway/bot."""
        self.remaining = int(limit.get("remaining", self.remaining))
        self.reset_at = now + float(limit.get("reset_after", 0)) / 1000
        self.max_concurrency = max(1, int(limit.get("max_concurrency", 1)))

    def wait(self, now: float) -> float:
        """Seconds to wait before an IDENTIFY may go out (0: now)."""
        waits = [0.0]
        if self.remaining <= 0 and now < self.reset_at:
            waits.append(self.reset_at - now)
        recent = [t for t in self.sent_at if now - t < IDENTIFY_WINDOW_SECS]
        if len(recent) >= self.max_concurrency:
            waits.append(recent[-self.max_concurrency] + IDENTIFY_WINDOW_SECS - now)
        return max(waits)

    def sent(self, now: float) -> None:
        self.sent_at = [t for t in self.sent_at if now - t < IDENTIFY_WINDOW_SECS] + [now]
        if now >= self.reset_at and self.remaining <= 0:
            self.remaining = 1  # the window reset; GET /gateway/bot tells the real count
        self.remaining -= 1
