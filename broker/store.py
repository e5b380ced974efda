"""Persisted broker state in SQLite: thread -> ACP session id, running agents, the reply outbox.

The store is written by one writer task that takes operations from an
unbounded in-memory queue and applies them in a worker thread, in order. So
the pool can record a change from plain synchronous code (:meth:`Store.put`
never waits) and still no await sits inside its critical sections;
:meth:`Store.flush` waits until everything recorded so far is on disk.

The database uses WAL and ``synchronous=NORMAL``: a broker killed with
SIGKILL loses at most the last few writes, never the file. A file that is not
a readable SQLite database of ours is moved aside (``<name>.corrupt-<time>``)
with an error in the log, and the broker starts from an empty store.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    thread_key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    thread_key TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    broker_pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    frame TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


@attrs.frozen
class AgentRecord:
    """A running agent as recorded for finding leftovers after a crash."""

    thread_key: str
    pid: int
    pgid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells a reused pid apart
    broker_pid: int


@attrs.frozen
class OutboxItem:
    id: int
    destination: str
    frame: str


Operation = Callable[[sqlite3.Connection], object]


class Store:
    """The broker's SQLite state. Open it with :func:`open_store`."""

    def __init__(self, path: Path, connection: sqlite3.Connection, outbox_limit: int) -> None:
        self.path = path
        self._db = connection
        self._db_lock = threading.Lock()
        self._outbox_limit = outbox_limit
        self._send, self._receive = trio.open_memory_channel[Operation | trio.Event](math.inf)
        self.writes = 0
        self.write_errors = 0

    def __repr__(self) -> str:
        return f"<Store {self.path} writes={self.writes} errors={self.write_errors}>"

    # -- synchronous recording (never waits) ---------------------------------

    def put(self, operation: Operation) -> None:
        """Queue a write; it is applied in order by the writer task."""
        try:
            self._send.send_nowait(operation)
        except trio.ClosedResourceError:
            log.error("state store is closed; a write was not recorded")

    def save_thread(self, thread_key: str, session_id: str) -> None:
        now = time.time()
        self.put(
            lambda db: db.execute(
                "INSERT INTO threads (thread_key, session_id, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(thread_key) DO UPDATE SET session_id = excluded.session_id,"
                " updated_at = excluded.updated_at",
                (thread_key, session_id, now),
            )
        )

    def forget_thread(self, thread_key: str) -> None:
        self.put(lambda db: db.execute("DELETE FROM threads WHERE thread_key = ?", (thread_key,)))

    def record_agent(self, record: AgentRecord) -> None:
        self.put(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, ?)",
                (record.thread_key, record.pid, record.pgid, record.start_ticks, record.broker_pid),
            )
        )

    def clear_agent(self, thread_key: str, pid: int) -> None:
        self.put(
            lambda db: db.execute(
                "DELETE FROM agents WHERE thread_key = ? AND pid = ?", (thread_key, pid)
            )
        )

    def push_outbox(self, destination: str, frame: str) -> None:
        """Keep a reply for a destination that is not connected; the oldest go first
        when more than ``outbox_limit`` wait (with an error in the log)."""
        now, limit = time.time(), self._outbox_limit

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO outbox (destination, frame, created_at) VALUES (?, ?, ?)",
                (destination, frame, now),
            )
            (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if count > limit:
                log.error("outbox over its limit of %d: dropping %d oldest", limit, count - limit)
                db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (count - limit,),
                )

        self.put(write)

    def replace_outbox(self, destination: str, frames: list[str]) -> None:
        """Make ``frames`` (oldest first) the whole outbox of ``destination``,
        for an in-memory outbox that mirrors itself here after every change."""
        now = time.time()

        def write(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM outbox WHERE destination = ?", (destination,))
            db.executemany(
                "INSERT INTO outbox (destination, frame, created_at) VALUES (?, ?, ?)",
                [(destination, frame, now) for frame in frames],
            )

        self.put(write)

    def ack_outbox(self, ids: list[int]) -> None:
        self.put(lambda db: db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids]))

    # -- awaited reads ----------------------------------------------------------

    async def flush(self) -> None:
        """Wait until every write recorded before this call is committed."""
        done = trio.Event()
        self._send.send_nowait(done)
        await done.wait()

    async def threads(self) -> dict[str, str]:
        """thread key -> ACP session id for every thread that can be resumed."""
        rows = await self._read("SELECT thread_key, session_id FROM threads")
        return {str(key): str(sid) for key, sid in rows}

    async def agents(self) -> list[AgentRecord]:
        rows = await self._read("SELECT thread_key, pid, pgid, start_ticks, broker_pid FROM agents")
        return [AgentRecord(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def outbox(self, destination: str) -> list[OutboxItem]:
        rows = await self._read(
            "SELECT id, destination, frame FROM outbox WHERE destination = ? ORDER BY id",
            (destination,),
        )
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        await self.flush()

        def query() -> list[tuple[Any, ...]]:
            with self._db_lock:
                return list(self._db.execute(sql, params).fetchall())

        return await trio.to_thread.run_sync(query)

    # -- the writer ---------------------------------------------------------------

    async def _run_writer(self) -> None:
        # Shielded: the writer ends only when the channel closes, after applying
        # everything queued, so a cancelled broker still persists what it recorded.
        with trio.CancelScope(shield=True):
            await self._write_until_closed()

    async def _write_until_closed(self) -> None:
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while True:  # take whatever else is queued: one transaction for all of it
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                operations = [op for op in batch if not isinstance(op, trio.Event)]
                if operations:
                    await trio.to_thread.run_sync(self._apply, operations)
                for item in batch:
                    if isinstance(item, trio.Event):
                        item.set()

    def _apply(self, operations: list[Operation]) -> None:
        with self._db_lock:
            for operation in operations:
                try:
                    with self._db:
                        operation(self._db)
                    self.writes += 1
                except sqlite3.Error as exc:
                    self.write_errors += 1
                    log.error("state store write failed: %s", exc)

    def _close(self) -> None:
        with self._db_lock:
            self._db.close()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif row[0] != str(SCHEMA_VERSION):
            raise sqlite3.DatabaseError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
        db.execute("BEGIN")
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _open_or_move_aside(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _connect(path)
    except sqlite3.Error as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error(
            "state store %s is unreadable (%s); moved it to %s and started afresh", path, exc, aside
        )
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        return _connect(path)


@asynccontextmanager
async def open_store(
    path: str | os.PathLike[str], *, outbox_limit: int = 1000
) -> AsyncIterator[Store]:
    """Open (or create) the store at ``path`` and run its writer until the block exits.

    On exit every recorded write is applied (even when the caller is being
    cancelled) and the database is closed.
    """
    resolved = Path(path)
    connection = await trio.to_thread.run_sync(_open_or_move_aside, resolved)
    store = Store(resolved, connection, outbox_limit)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._run_writer)
            try:
                yield store
            finally:
                store._send.close()
    finally:
        store._close()
