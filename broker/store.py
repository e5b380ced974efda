"""Persisted broker state in SQLite: thread -> ACP session id, running agents, the reply outbox,
the journal of accepted events, each schedule's last run and where each thread's replies go.

The store is written by one writer task that takes operations from an
unbounded in-memory queue and applies them in a worker thread, in order. So
the pool can record a change from plain synchronous code (:meth:`Store.put`
never waits) and still no await sits inside its critical sections;
:meth:`Store.flush` waits until everything recorded so far is on disk.

The database uses WAL and ``synchronous=NORMAL``: a broker killed with
SIGKILL loses at most the last few writes, never the file.

Nothing durable is thrown away on a transient error:

* Only real corruption (SQLite's ``SQLITE_CORRUPT`` / ``SQLITE_NOTADB``, or a
  failed ``PRAGMA quick_check``) moves a file aside (``<name>.corrupt-<time>``,
  with an error in the log); the broker then starts from an empty store.
* A store locked by another process is retried, with a log line, for
  ``lock_wait`` seconds; then :func:`open_store` raises :class:`StoreError`
  with exit code 75 (EX_TEMPFAIL: try again later).
* A full disk (74, EX_IOERR) or a read-only file or directory (73,
  EX_CANTCREAT) at start is a :class:`StoreError` naming the path: the
  broker never starts without a store it can write.
* While running, a write that fails for such a reason is retried, with a
  growing delay, until it succeeds; :meth:`Store.snapshot` shows it. A record
  that can never be written (e.g. text that is not valid UTF-8) is logged,
  skipped and counted; it never stops the writer.
"""

from __future__ import annotations

import errno
import itertools
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

EX_DATAERR = 65  # the file is a store of a newer broker
EX_CANTCREAT = 73  # the store cannot be written (read-only file, directory or mount)
EX_IOERR = 74  # the disk is full, or another I/O error
EX_TEMPFAIL = 75  # locked by another process: systemd may restart us later

LOCK_WAIT_SECS = 30.0
OPEN_BUSY_TIMEOUT_MS = 1000  # one attempt at start; the retries are ours, logged
BUSY_TIMEOUT_MS = 5000
RETRY_FIRST_SECS = 0.1
RETRY_MAX_SECS = 5.0
CLOSE_RETRY_SECS = 3.0  # at the close, a failing write is retried this long, then given up

# SQLite primary result codes (https://www.sqlite.org/rescode.html)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_NOMEM, _SQLITE_READONLY = 5, 6, 7, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN = 10, 11, 13, 14
_SQLITE_PROTOCOL, _SQLITE_PERM, _SQLITE_NOTADB = 15, 3, 26
_CORRUPT = frozenset({_SQLITE_CORRUPT, _SQLITE_NOTADB})
_BUSY = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED})
_TRANSIENT = _BUSY | {
    _SQLITE_NOMEM,
    _SQLITE_READONLY,
    _SQLITE_IOERR,
    _SQLITE_FULL,
    _SQLITE_CANTOPEN,
    _SQLITE_PROTOCOL,
    _SQLITE_PERM,
}


class StoreError(Exception):
    """The store cannot be opened now. The message names the path and the
    cause; ``exit_code`` is the sysexits code the broker exits with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Corrupt(Exception):
    """The file is not a sound store of ours: it may be moved aside."""


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed when tried again (locked, full, read-only, I/O)."""
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) in _TRANSIENT


SCHEMA_VERSION = 2  # 2: the events journal
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS threads (
    thread_key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS thread_agents (
    thread_key TEXT PRIMARY KEY,
    profile TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    thread_key TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    pgid INTEGER NOT NULL,
    start_ticks INTEGER NOT NULL,
    broker_pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    event_key TEXT PRIMARY KEY,
    frontend TEXT NOT NULL,
    platform TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    thread_id TEXT,
    event_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    done_at REAL,
    final TEXT
);
CREATE INDEX IF NOT EXISTS events_received ON events (received_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    frame TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    name TEXT PRIMARY KEY,
    run_time REAL NOT NULL,
    result TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS places (
    thread_key TEXT PRIMARY KEY,
    frontend TEXT NOT NULL,
    platform TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    thread_id TEXT,
    updated_at REAL NOT NULL
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
class StoreSnapshot:
    """The writer's state for ``/status``; see docs/status.md."""

    path: str
    writes: int  # operations committed
    skipped: int  # records that could never be written: logged and dropped
    write_failures: int  # failed attempts of writes that were then retried
    retrying: bool  # a write is failing right now and being retried
    last_error: str | None
    queued: int  # operations recorded, not yet committed


@attrs.frozen
class EventRecord:
    """An accepted event as the journal keeps it: where its reply goes, and
    whether it was answered (``done``)."""

    event_key: str
    frontend: str
    platform: str
    channel_id: str
    thread_id: str | None
    event_id: str
    received_at: float
    done: bool


@attrs.frozen
class OutboxItem:
    id: int
    destination: str
    frame: str


@attrs.frozen
class ScheduleRun:
    """The newest run time of a schedule that was dealt with (run, skipped or
    missed; seconds since the epoch) and how it went."""

    run_time: float
    result: str


@attrs.frozen
class Place:
    """Where a thread's replies go: the front-end its last message came through
    and the platform channel (and thread) it was in."""

    frontend: str
    platform: str
    channel_id: str
    thread_id: str | None = None


Operation = Callable[[sqlite3.Connection], object]


class Store:
    """The broker's SQLite state. Open it with :func:`open_store`."""

    def __init__(self, path: Path, connection: sqlite3.Connection, outbox_limit: int) -> None:
        self.path = path
        self._db = connection
        self._db_lock = threading.Lock()
        self._outbox_limit = outbox_limit
        # The outbox's size and next row id, counted here rather than asked of
        # the table on every write (read once when the store opens).
        rows, last = connection.execute(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM outbox"
        ).fetchone()
        self.outbox_rows = int(rows)
        self._outbox_ids = itertools.count(int(last) + 1)
        self._send, self._receive = trio.open_memory_channel[Operation | trio.Event](math.inf)
        self.writes = 0
        self.skipped = 0
        self.write_failures = 0
        self.retrying = False
        self.last_error: str | None = None
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"<Store {self.path} writes={self.writes} skipped={self.skipped}"
            f" failures={self.write_failures}{' retrying' if self.retrying else ''}>"
        )

    def snapshot(self) -> StoreSnapshot:
        """Synchronous, never waits."""
        return StoreSnapshot(
            str(self.path),
            self.writes,
            self.skipped,
            self.write_failures,
            self.retrying,
            self.last_error,
            self._receive.statistics().current_buffer_used,
        )

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

    def choose_agent(self, thread_key: str, profile: str) -> None:
        """Remember the agent profile chosen for a thread (``/agent NAME``)."""
        self.put(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO thread_agents VALUES (?, ?)", (thread_key, profile)
            )
        )

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

    def new_outbox_id(self) -> int:
        """A row id for :meth:`change_outbox`, above every id in the table."""
        return next(self._outbox_ids)

    def record_event(self, record: EventRecord) -> None:
        """Journal an accepted event before work on it begins (a second record
        of the same key changes nothing)."""
        self.put(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO events (event_key, frontend, platform, channel_id,"
                " thread_id, event_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.event_key,
                    record.frontend,
                    record.platform,
                    record.channel_id,
                    record.thread_id,
                    record.event_id,
                    record.received_at,
                ),
            )
        )

    def finish_event(self, event_key: str, final: str) -> None:
        """The event was answered with ``final``."""
        now = time.time()
        self.put(
            lambda db: db.execute(
                "UPDATE events SET done_at = ?, final = ? WHERE event_key = ?",
                (now, final, event_key),
            )
        )

    def forget_events(self, before: float) -> None:
        """Drop the answered events received before ``before`` (epoch seconds)."""
        self.put(
            lambda db: db.execute(
                "DELETE FROM events WHERE received_at < ? AND done_at IS NOT NULL", (before,)
            )
        )

    def push_outbox(self, destination: str, frame: str) -> None:
        """Keep a reply for a destination that is not connected (see :meth:`change_outbox`)."""
        self.change_outbox(destination, [(self.new_outbox_id(), frame)], [])

    def change_outbox(
        self, destination: str, added: list[tuple[int, str]], removed: list[int]
    ) -> None:
        """Add ``added`` (row id from :meth:`new_outbox_id`, frame), then delete
        the rows ``removed`` (added ones too), in one transaction. The oldest
        rows go first when more than ``outbox_limit`` would wait (with an error
        in the log); the size is a counter, so no write counts the table."""
        now, limit = time.time(), self._outbox_limit
        self.outbox_rows += len(added) - len(removed)
        excess = max(0, self.outbox_rows - limit)
        self.outbox_rows -= excess

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT INTO outbox (id, destination, frame, created_at) VALUES (?, ?, ?, ?)",
                [(i, destination, frame, now) for i, frame in added],
            )
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in removed])
            if excess:
                log.error("outbox over its limit of %d: dropping %d oldest", limit, excess)
                db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (excess,),
                )

        self.put(write)

    def ack_outbox(self, ids: list[int]) -> None:
        self.outbox_rows -= len(ids)
        self.put(lambda db: db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids]))

    def save_schedule_run(self, name: str, run: ScheduleRun) -> None:
        now = time.time()
        self.put(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO schedule_runs VALUES (?, ?, ?, ?)",
                (name, run.run_time, run.result, now),
            )
        )

    def save_place(self, thread_key: str, place: Place) -> None:
        now = time.time()
        self.put(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO places VALUES (?, ?, ?, ?, ?, ?)",
                (
                    thread_key,
                    place.frontend,
                    place.platform,
                    place.channel_id,
                    place.thread_id,
                    now,
                ),
            )
        )

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

    async def chosen_agents(self) -> dict[str, str]:
        """thread key -> the agent profile chosen for it with ``/agent``."""
        rows = await self._read("SELECT thread_key, profile FROM thread_agents")
        return {str(key): str(profile) for key, profile in rows}

    async def agents(self) -> list[AgentRecord]:
        rows = await self._read("SELECT thread_key, pid, pgid, start_ticks, broker_pid FROM agents")
        return [AgentRecord(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def outbox(self, destination: str) -> list[OutboxItem]:
        rows = await self._read(
            "SELECT id, destination, frame FROM outbox WHERE destination = ? ORDER BY id",
            (destination,),
        )
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def events(self, since: float) -> list[EventRecord]:
        """The journal: every event received since ``since`` and every one not
        answered yet, oldest first."""
        rows = await self._read(
            "SELECT event_key, frontend, platform, channel_id, thread_id, event_id, received_at,"
            " done_at IS NOT NULL FROM events WHERE received_at >= ? OR done_at IS NULL"
            " ORDER BY received_at",
            (since,),
        )
        return [
            EventRecord(
                str(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], str(r[5]), float(r[6]), bool(r[7])
            )
            for r in rows
        ]

    async def event_final(self, event_key: str) -> str | None:
        """The final reply an answered event got (None: not answered, or unknown)."""
        rows = await self._read("SELECT final FROM events WHERE event_key = ?", (event_key,))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    async def schedule_runs(self) -> dict[str, ScheduleRun]:
        """schedule name -> its last run, for every schedule that ever ran."""
        rows = await self._read("SELECT name, run_time, result FROM schedule_runs")
        return {str(r[0]): ScheduleRun(float(r[1]), str(r[2])) for r in rows}

    async def places(self) -> dict[str, Place]:
        """thread key -> where its replies go, for every thread a message came from."""
        rows = await self._read(
            "SELECT thread_key, frontend, platform, channel_id, thread_id FROM places"
        )
        return {
            str(r[0]): Place(str(r[1]), str(r[2]), str(r[3]), None if r[4] is None else str(r[4]))
            for r in rows
        }

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
                try:
                    await self._apply_until_done(
                        [op for op in batch if not isinstance(op, trio.Event)]
                    )
                finally:
                    for item in batch:
                        if isinstance(item, trio.Event):
                            item.set()

    async def _apply_until_done(self, operations: list[Operation]) -> None:
        """Apply ``operations``; while a transient error stops them, wait and go on
        from the one that failed (at the close, for :data:`CLOSE_RETRY_SECS` at most)."""
        delay = RETRY_FIRST_SECS
        give_up_at = math.inf
        while operations:
            operations = await trio.to_thread.run_sync(self._apply, operations)
            if not operations:
                break
            if self._closing and give_up_at == math.inf:
                give_up_at = trio.current_time() + CLOSE_RETRY_SECS
            if trio.current_time() >= give_up_at:
                log.error(
                    "state store %s: %d writes not recorded at the close: %s",
                    self.path,
                    len(operations),
                    self.last_error,
                )
                break
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECS)
        if self.retrying and not operations:
            log.warning("state store %s: writing again after a failure", self.path)
        self.retrying = False

    def _apply(self, operations: list[Operation]) -> list[Operation]:
        """Apply in order; returns the operations left when a transient error
        stopped them (the failed one first), else []."""
        with self._db_lock:
            for index, operation in enumerate(operations):
                try:
                    with self._db:
                        operation(self._db)
                    self.writes += 1
                except Exception as exc:  # noqa: BLE001 - no record may end the writer
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if is_transient(exc):
                        self.write_failures += 1
                        if not self.retrying:
                            log.error(
                                "state store %s: a write failed (%s); retrying until it succeeds",
                                self.path,
                                self.last_error,
                            )
                        self.retrying = True
                        return operations[index:]
                    self.skipped += 1
                    log.error(
                        "state store %s: skipped a record that cannot be written (%s)",
                        self.path,
                        self.last_error,
                    )
        return []

    def _close(self) -> None:
        with self._db_lock:
            self._db.close()


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise _Corrupt("PRAGMA quick_check failed")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or (row[0].isdecimal() and int(row[0]) < SCHEMA_VERSION):
            # new, or older: the script above added what is missing
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif not row[0].isdecimal() or int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"state store {path} has schema version {row[0]}, newer than this broker's"
                f" {SCHEMA_VERSION}; run the newer broker or move the file",
                EX_DATAERR,
            )
        # A write at once: a read-only or full store is found now, not at the first turn.
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (repr(time.time()),))
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except BaseException:
        db.close()
        raise
    return db


def _move_aside(path: Path, why: str) -> None:
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    log.error("state store %s is corrupt (%s); moved it to %s and started afresh", path, why, aside)
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            os.replace(source, Path(str(aside) + suffix))


def _unusable(path: Path, exc: BaseException) -> StoreError:
    """The StoreError for a store that cannot be written (not locked, not corrupt)."""
    code = _primary_code(exc)
    errno_ = exc.errno if isinstance(exc, OSError) else None
    if code == _SQLITE_FULL or errno_ in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"state store {path}: the disk is full ({exc})", EX_IOERR)
    if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM) or errno_ in (
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    ):
        return StoreError(
            f"state store {path} cannot be written ({exc}): check that the file, its"
            " directory and the mount are writable",
            EX_CANTCREAT,
        )
    return StoreError(f"state store {path} cannot be used ({exc})", EX_IOERR)


def _open_once(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    """One attempt: connect, moving a corrupt file aside (once). Raises
    sqlite3.Error for a busy store, StoreError for anything else."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unusable(path, exc) from None
    for attempt in range(2):
        try:
            return _connect(path, busy_timeout_ms)
        except _Corrupt as exc:
            why = str(exc)
        except sqlite3.Error as exc:
            code = _primary_code(exc)
            if code in _BUSY:
                raise
            if code not in _CORRUPT:
                raise _unusable(path, exc) from None
            why = f"{exc}"
        except OSError as exc:
            raise _unusable(path, exc) from None
        if attempt == 0:
            _move_aside(path, why)
    raise StoreError(f"state store {path} is corrupt even after starting afresh", EX_IOERR)


async def _open(path: Path, lock_wait: float) -> sqlite3.Connection:
    """Open the store, waiting up to ``lock_wait`` seconds while another process holds a lock."""
    give_up_at = trio.current_time() + lock_wait
    delay = RETRY_FIRST_SECS
    busy_timeout_ms = int(min(OPEN_BUSY_TIMEOUT_MS, lock_wait * 250))  # a few tries at least
    while True:
        try:
            return await trio.to_thread.run_sync(_open_once, path, busy_timeout_ms)
        except sqlite3.Error as exc:
            left = give_up_at - trio.current_time()
            if left <= 0 or lock_wait <= 0:
                raise StoreError(
                    f"state store {path} is locked by another process ({exc}); gave up after"
                    f" {lock_wait:g} s",
                    EX_TEMPFAIL,
                ) from None
            log.warning(
                "state store %s is locked by another process (%s); retrying for %.1f s more",
                path,
                exc,
                left,
            )
            await trio.sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_SECS)


@asynccontextmanager
async def open_store(
    path: str | os.PathLike[str],
    *,
    outbox_limit: int = 1000,
    lock_wait: float = LOCK_WAIT_SECS,
) -> AsyncIterator[Store]:
    """Open (or create) the store at ``path`` and run its writer until the block exits.

    Raises :class:`StoreError` (with its exit code) when the store is locked
    for longer than ``lock_wait`` seconds, or cannot be written at all. On
    exit every recorded write is applied (even when the caller is being
    cancelled; a write that keeps failing is given up after
    :data:`CLOSE_RETRY_SECS`) and the database is closed.
    """
    resolved = Path(path)
    connection = await _open(resolved, lock_wait)
    store = Store(resolved, connection, outbox_limit)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._run_writer)
            try:
                yield store
            finally:
                store._closing = True
                store._send.close()
    finally:
        store._close()
