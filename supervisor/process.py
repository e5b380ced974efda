"""Run one child process under a trio nursery, with guarantees.

A child runs in its own session and process group, with exactly the
environment it is given, and (on Linux) dies with the broker through
``PR_SET_PDEATHSIG``. Its exit is noticed the moment it happens (a pidfd
becomes readable), its stderr is drained all the time into a bounded ring
buffer and a rate-limited log, its stdout is read as bounded lines, and
stopping it always finishes: close stdin, SIGTERM the group, wait the grace,
SIGKILL the group, reap.

Ordering rule: the process group is signalled only while its leader is not
yet reaped (alive or a zombie), because a reaped pid may be reused as a new
process group id. Exit is therefore detected without reaping (pidfd
readability, or ``waitid(WNOWAIT)`` where pidfds are missing), then the whole
group gets SIGKILL (grandchildren die with it), and only then is the leader
reaped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, NoReturn

import attrs
import trio

from supervisor import reaper
from supervisor.cgroups import ChildCgroup, delegated_cgroup
from supervisor.leftovers import start_ticks
from supervisor.reaper import PR_SET_CHILD_SUBREAPER, become_subreaper

logger = logging.getLogger("supervisor")

READ_CHUNK = 64 * 1024
STDERR_EOF_WAIT = 0.25  # after the exit: how long the last stderr bytes may take to arrive
KILL_WAIT = 10.0  # after SIGKILL: how long the kernel may take before we give up
LOG_LINE_MAX = 500  # stderr log lines are cut to this many bytes
LOG_BURST = 100  # stderr log lines logged at once before rate limiting starts
LOG_RATE = 20.0  # stderr log lines per second after the burst

_PR_SET_PDEATHSIG = 1


def _to_argv(argv: Iterable[str]) -> tuple[str, ...]:
    return tuple(argv)


@attrs.frozen
class ChildSpec:
    """What to run and how.

    ``argv[0]`` is an executable path (relative paths resolve against
    ``cwd``) or a bare name looked up on ``env["PATH"]``. ``env`` is the
    complete environment: nothing is inherited from the parent.
    """

    argv: tuple[str, ...] = attrs.field(converter=_to_argv)
    env: Mapping[str, str]
    cwd: str | None = None
    name: str = "child"
    max_line_bytes: int = 8 * 1024 * 1024
    stderr_tail_bytes: int = 16 * 1024
    parent_death_signal: bool = True
    #: The cgroup v2 directory to make the child's own cgroup in (see
    #: :mod:`supervisor.cgroups`); None: this process's delegated cgroup, if it
    #: has one; "": no cgroup.
    cgroup_parent: str | None = None


@attrs.frozen
class ExitStatus:
    """How a child ended: an exit code, or the signal that killed it."""

    returncode: int | None
    signal: int | None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(returncode=None, signal=os.WTERMSIG(status))
        return cls(returncode=os.waitstatus_to_exitcode(status), signal=None)

    def describe(self) -> str:
        """``"exited with code 3"`` or ``"killed by SIGKILL"``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        if self.returncode is None:
            return "exited (status lost: reaped elsewhere)"
        return f"exited with code {self.returncode}"


class SpawnError(Exception):
    """The command could not be started (missing, not executable, bad cwd)."""


class LineTooLong(Exception):
    """A stdout line exceeded ``max_line_bytes``; the stdout stream is unusable after."""


class StopTimeout(Exception):
    """The child did not go away even ``KILL_WAIT`` seconds after SIGKILL."""


class _ChildLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes messages with ``name[pid]`` and adds ``child``/``pid`` to the record."""

    def __init__(self, name: str, pid: int) -> None:
        super().__init__(logger, {"child": name, "pid": pid})
        self._prefix = f"{name}[{pid}] "

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", self.extra)
        return self._prefix + str(msg), kwargs


# --- spawning -------------------------------------------------------------------------


def resolve_executable(argv0: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Return the path that will be executed for ``argv0``, or raise SpawnError."""
    if not argv0:
        raise SpawnError("cannot start a child: empty command")
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) or cwd is None else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise SpawnError(f"command not found: {argv0!r}")
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise SpawnError(f"command is not executable: {argv0!r}")
        return path
    search = env.get("PATH", os.defpath)
    found = shutil.which(argv0, path=search)
    if found is not None:
        return found
    for directory in search.split(os.pathsep):
        if os.path.isfile(os.path.join(directory or ".", argv0)):
            raise SpawnError(f"command is not executable: {argv0!r} (in {directory})")
    raise SpawnError(f"command not found: {argv0!r} (PATH={search})")


def _preexec_hook(parent_death_signal: bool, cgroup_procs: str | None) -> Callable[[], None] | None:
    """A preexec function that moves the child into its cgroup (writing to
    ``cgroup_procs``), makes it a subreaper of its own tree (kept across exec:
    see :mod:`supervisor.reaper`) and, with ``parent_death_signal``, makes the
    kernel SIGKILL the child when we die."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = reaper.prctl()  # resolved here: the forked child only calls it
    parent = os.getpid()

    def hook() -> None:
        if cgroup_procs is not None:
            try:
                fd = os.open(cgroup_procs, os.O_WRONLY)
                try:
                    os.write(fd, b"0")
                finally:
                    os.close(fd)
            except OSError:
                pass  # it runs outside a cgroup of its own; the reaper still finds its tree
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if parent_death_signal:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


class _Spawner:
    """One long-lived daemon thread that forks every child.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits,
    not the process. trio's worker threads retire after idling, so forking
    there would kill children seconds later. This thread never returns from
    its loop, so it lives exactly as long as the process.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="supervisor-spawner", daemon=True)
        self.thread.start()
        self.pid = os.getpid()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException:  # this thread must never exit
                logger.exception("spawner job failed")

    async def run(self, popen: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        """Run ``popen`` on the spawner thread and return its result.

        The wait is shielded: once submitted, a fork cannot be taken back, so
        the caller gets the process (and must stop it) even when cancelled.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[subprocess.Popen[bytes]] = []
        failure: list[BaseException] = []

        def job() -> None:
            try:
                with reaper.spawn_lock:
                    proc = popen()
                    reaper.running(proc.pid)
                result.append(proc)
            except BaseException as exc:  # noqa: BLE001 - handed back to the trio task
                failure.append(exc)
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                for proc in result:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        if failure:
            raise failure[0]
        return result[0]


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def spawner_thread() -> threading.Thread:
    """The thread all children are forked from (started on first use)."""
    return _get_spawner().thread


def _get_spawner() -> _Spawner:
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():  # a forked copy has no threads
            _spawner = _Spawner()
            become_subreaper()
        return _spawner


async def _spawn(spec: ChildSpec) -> Child:
    executable = resolve_executable(spec.argv[0] if spec.argv else "", spec.env, spec.cwd)
    parent = delegated_cgroup() if spec.cgroup_parent is None else spec.cgroup_parent
    cgroup = ChildCgroup.create(Path(parent), spec.name) if parent else None
    hook = _preexec_hook(spec.parent_death_signal, cgroup.procs if cgroup else None)
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    child_ends = (stdin_r, stdout_w, stderr_w)
    parent_ends = (stdin_w, stdout_r, stderr_r)

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(spec.argv),
            executable=executable,
            env=dict(spec.env),
            cwd=spec.cwd,
            stdin=stdin_r,
            stdout=stdout_w,
            stderr=stderr_w,
            start_new_session=True,
            preexec_fn=hook,
            close_fds=True,
        )

    try:
        proc = await _get_spawner().run(popen)
    except BaseException as exc:
        for fd in parent_ends:
            os.close(fd)
        if cgroup is not None:
            with contextlib.suppress(OSError):
                cgroup.path.rmdir()
        if not isinstance(exc, (OSError, ValueError, subprocess.SubprocessError)):
            raise
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" in {spec.cwd!r}" if spec.cwd else ""
        raise SpawnError(f"cannot start {spec.name} {spec.argv[0]!r}{where}: {detail}") from exc
    finally:
        for fd in child_ends:
            os.close(fd)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    child = Child(spec, proc, pidfd, *parent_ends)
    child.cgroup = cgroup
    logger.info("started %s pid %d: %s", spec.name, proc.pid, shlex.join(spec.argv))
    return child


# --- stdout lines and stderr sink -----------------------------------------------------


class _LineReader:
    """Bounded line splitting over a byte stream: holds at most max_line + one chunk."""

    def __init__(self, stream: trio.lowlevel.FdStream, max_line: int) -> None:
        self._stream = stream
        self._max = max_line
        self._buf = bytearray()
        self._scanned = 0
        self._eof = False
        self._error: LineTooLong | None = None

    def __aiter__(self) -> _LineReader:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._error is not None:
                raise self._error
            newline = self._buf.find(b"\n", self._scanned)
            if newline >= 0:
                if newline > self._max:
                    self._fail(newline)
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self._max:
                self._fail(len(self._buf))
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                raise StopAsyncIteration
            chunk = await self._stream.receive_some(READ_CHUNK)
            if not chunk:
                self._eof = True
                await self._stream.aclose()
            self._buf += chunk

    def _fail(self, seen: int) -> NoReturn:
        self._buf = bytearray()
        self._error = LineTooLong(f"stdout line longer than {self._max} bytes (at least {seen})")
        raise self._error


class _StderrSink:
    """Keeps the last bytes of stderr and logs its lines, cut and rate-limited."""

    def __init__(self, log: _ChildLog, tail_bytes: int) -> None:
        self._log = log
        self._tail_max = tail_bytes
        self.tail = bytearray()
        self._partial = bytearray()
        self._partial_cut = False
        self._tokens = float(LOG_BURST)
        self._last = 0.0
        self._suppressed = 0

    def feed(self, data: bytes, now: float) -> None:
        self.tail += data
        if len(self.tail) > self._tail_max:
            del self.tail[: len(self.tail) - self._tail_max]
        self._tokens = min(float(LOG_BURST), self._tokens + (now - self._last) * LOG_RATE)
        self._last = now
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            if self._tokens < 1:
                # Out of log budget: count the rest of this chunk's lines without splitting.
                last = data.rfind(b"\n")
                self._suppressed += data.count(b"\n", start, last + 1)
                self._partial.clear()
                self._partial_cut = False
                start = last + 1
                break
            self._append_partial(data[start:newline])
            self._emit()
            start = newline + 1
        self._append_partial(data[start:])

    def finish(self) -> None:
        """At EOF: log a last unterminated line and what was suppressed."""
        if self._partial and self._tokens >= 1:
            self._emit()
        elif self._partial:
            self._suppressed += 1
        self._report_suppressed()

    def _report_suppressed(self) -> None:
        if self._suppressed:
            self._log.warning("stderr: %d lines not logged (rate limit)", self._suppressed)
            self._suppressed = 0

    def _append_partial(self, piece: bytes) -> None:
        room = LOG_LINE_MAX - len(self._partial)
        if len(piece) > room:
            self._partial_cut = True
            piece = piece[: max(room, 0)]
        self._partial += piece

    def _emit(self) -> None:
        self._tokens -= 1
        self._report_suppressed()
        text = self._partial.decode("utf-8", "replace") + (" [cut]" if self._partial_cut else "")
        self._log.info("stderr: %s", text)
        self._partial.clear()
        self._partial_cut = False


# --- the child ------------------------------------------------------------------------


class Child:
    """A running child process. Created by :func:`run_child`, never directly.

    Two tasks started by :func:`run_child` belong to it: the exit watcher and
    the stderr drain. Both run in shielded scopes: cancelling the owning
    nursery does not cut them off, they end when the child is gone (and
    :meth:`stop`, which the cancellation triggers, makes sure it goes).
    """

    def __init__(
        self,
        spec: ChildSpec,
        proc: subprocess.Popen[bytes],
        pidfd: int | None,
        stdin_fd: int,
        stdout_fd: int,
        stderr_fd: int,
    ) -> None:
        self.spec = spec
        self.pid = proc.pid
        self.pgid = proc.pid  # start_new_session: the child leads its own group
        self.start_ticks = start_ticks(proc.pid) or 0  # what its tree leaves started after
        self.exit_status: ExitStatus | None = None
        self.exited = trio.Event()
        self._proc = proc
        self._pidfd = pidfd
        self._stdin = trio.lowlevel.FdStream(stdin_fd)
        self._stdout = trio.lowlevel.FdStream(stdout_fd)
        self._stderr = trio.lowlevel.FdStream(stderr_fd)
        self._lines = _LineReader(self._stdout, spec.max_line_bytes)
        self._log = _ChildLog(spec.name, proc.pid)
        self._sink = _StderrSink(self._log, spec.stderr_tail_bytes)
        self._send_lock = trio.Lock()
        self._reaped = False
        self._watch_scope = trio.CancelScope(shield=True)
        self._drain_scope = trio.CancelScope(shield=True)
        self._stderr_done = trio.Event()
        self.orphans_stopped = trio.Event()  # after the exit: its tree's leftovers are gone
        self.cgroup: ChildCgroup | None = None
        self._stop_done: trio.Event | None = None

    def __repr__(self) -> str:
        state = self.exit_status.describe() if self.exit_status else "running"
        return f"<Child {self.spec.name} pid={self.pid} {state}>"

    async def wait(self) -> ExitStatus:
        """Wait until the child has exited and been reaped; return how it ended."""
        await self.exited.wait()
        assert self.exit_status is not None
        return self.exit_status

    def stderr_tail(self, max_chars: int = 2000) -> str:
        """The last ``max_chars`` characters of stderr (from a bounded ring buffer)."""
        text = bytes(self._sink.tail).decode("utf-8", "replace")
        return text[-max_chars:] if max_chars > 0 else ""

    async def send(self, data: bytes) -> None:
        """Write ``data`` to the child's stdin.

        Writes are serialised by a lock held for this one write only. Raises
        ``trio.BrokenResourceError`` if the child closed its stdin (or died)
        and ``trio.ClosedResourceError`` after :meth:`close_stdin`/:meth:`stop`.
        """
        async with self._send_lock:
            await self._stdin.send_all(data)

    def stdout_lines(self) -> AsyncIterator[bytes]:
        """Stdout as lines without the ``b"\\n"``; a last unterminated line is yielded too.

        Ends at EOF. Raises :class:`LineTooLong` for a line over
        ``spec.max_line_bytes`` (and again on every later call). There is one
        reader per child: every call returns the same iterator.
        """
        return self._lines

    async def close_stdin(self) -> None:
        """Close stdin (the child sees EOF). Idempotent; a blocked send gets ClosedResourceError."""
        self._stdin.close()
        await trio.lowlevel.checkpoint()

    async def stop(self, grace: float) -> ExitStatus:
        """Stop the child and its process group; return how it ended.

        Closes stdin, sends SIGTERM to the group, waits up to ``grace`` seconds
        for the exit, then sends SIGKILL to the group and waits for the reap,
        and for the descendants that left the group to be stopped and reaped
        (:mod:`supervisor.reaper`).
        Runs shielded with its own deadlines, so it finishes even when the
        caller is cancelled. Idempotent: concurrent and later callers share the
        one stop. Raises :class:`StopTimeout` if the child is still there
        ``KILL_WAIT`` seconds after SIGKILL (e.g. stuck in the kernel).
        """
        if self._stop_done is None:
            self._stop_done = trio.Event()
            try:
                await self._stop_once(grace)
            finally:
                self._stop_done.set()
        else:
            await self._stop_done.wait()
        if self.exit_status is None:
            raise StopTimeout(f"{self.spec.name} pid {self.pid} survived SIGKILL for {KILL_WAIT}s")
        return self.exit_status

    async def _stop_once(self, grace: float) -> None:
        with trio.CancelScope(shield=True):
            self._stdin.close()
            if not self.exited.is_set():
                self._kill_group(signal.SIGTERM)
                with trio.move_on_after(grace):
                    await self.exited.wait()
            if not self.exited.is_set():
                self._log.warning("still running %.1fs after SIGTERM: sending SIGKILL", grace)
                self._kill_group(signal.SIGKILL)
                with trio.move_on_after(KILL_WAIT):
                    await self.exited.wait()
            if not self.exited.is_set():
                self._log.error("did not exit after SIGKILL")
                self._watch_scope.cancel()
                self._drain_scope.cancel()
            else:
                with trio.move_on_after(KILL_WAIT):
                    await self.orphans_stopped.wait()

    def _kill_group(self, sig: int) -> None:
        if self._reaped:  # the pgid may belong to someone else by now
            return
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            self._log.warning("cannot signal group: %s", exc)

    async def _watch_exit(self) -> None:
        """Notice the exit, SIGKILL what is left of the group, reap, then set ``exited``."""
        with self._watch_scope:
            await self._wait_leader_exit()
            self._kill_group(signal.SIGKILL)
            status = await self._reap()
            reaper.reaped(self.pid)
            try:
                with trio.move_on_after(STDERR_EOF_WAIT):
                    await self._stderr_done.wait()
                self._drain_scope.cancel()
            finally:
                self._stdin.close()
                self.exit_status = status
                self.exited.set()
            if self._stop_done is not None:  # a stop we asked for: not news
                self._log.info("stopped as asked (%s)", status.describe())
            else:
                level = logging.INFO if status.returncode == 0 else logging.WARNING
                self._log.log(level, status.describe())
            # what left the group (setsid): killed with the cgroup, and once
            # re-parented to us, stopped (where there is no cgroup) and reaped
            with trio.move_on_after(KILL_WAIT) as scope:
                if self.cgroup is not None:
                    await self.cgroup.remove()
                await reaper.stop_orphans(self.start_ticks)
            if scope.cancelled_caught:
                self._log.error("what its tree left survived SIGKILL for %.0f s", KILL_WAIT)
            self.orphans_stopped.set()

    async def _wait_leader_exit(self) -> None:
        if self._pidfd is None:
            await trio.to_thread.run_sync(_wait_exited_not_reaped, self.pid, abandon_on_cancel=True)
            return
        try:
            await trio.lowlevel.wait_readable(self._pidfd)
        finally:
            os.close(self._pidfd)
            self._pidfd = None

    async def _reap(self) -> ExitStatus:
        while True:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222
            except ChildProcessError:
                self._reaped = True
                self._proc.returncode = -1
                self._log.error("was reaped elsewhere: exit status lost")
                return ExitStatus(returncode=None, signal=None)
            if pid:
                self._reaped = True
                self._proc.returncode = os.waitstatus_to_exitcode(status)
                return ExitStatus.from_wait_status(status)
            await trio.sleep(0.01)  # readable pidfd but not yet waitable: rare, brief

    async def _drain_stderr(self) -> None:
        with self._drain_scope:
            try:
                while chunk := await self._stderr.receive_some(READ_CHUNK):
                    self._sink.feed(chunk, trio.current_time())
            except trio.ClosedResourceError:
                pass
            finally:
                self._sink.finish()
                self._stderr.close()
                self._stderr_done.set()


def _wait_exited_not_reaped(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # _reap reports it
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


async def run_child(
    spec: ChildSpec,
    *,
    stop_grace: float,
    task_status: trio.TaskStatus[Child] = trio.TASK_STATUS_IGNORED,
) -> ExitStatus:
    """Run one child for its whole life.

    Use as ``child = await nursery.start(functools.partial(run_child, spec,
    stop_grace=5))`` (``nursery.start`` passes no keyword arguments).

    Spawns the child (raising :class:`SpawnError` before ``started`` if it
    cannot), hands the :class:`Child` to ``task_status``, drains its stderr
    and watches its exit. Returns the :class:`ExitStatus` once the child has
    exited and been reaped (its group is SIGKILLed first, so grandchildren go
    with it). If cancelled, it performs ``child.stop(stop_grace)`` before the
    cancellation propagates: cancelling the owning nursery stops the child.
    """
    child = await _spawn(spec)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(child._watch_exit)
        nursery.start_soon(child._drain_stderr)
        try:
            task_status.started(child)
            await child.exited.wait()
        finally:
            if not child.exited.is_set():
                # A StopTimeout is logged by stop(); the cancellation that got us here goes on.
                with contextlib.suppress(StopTimeout):
                    await child.stop(stop_grace)
    assert child.exit_status is not None
    return child.exit_status
