"""A thread's own workspace: a directory, or a git worktree on a branch of its own.

A profile's ``workspace`` is ``"shared"`` (no module here: every thread in
``working_dir``), ``"per-thread"`` (``working_dir/<slug>``) or
``"git-worktree"`` (``git worktree add`` of ``repo`` at ``working_dir/<slug>``
on the branch ``agent/<slug>``, from ``base_ref`` or the repository's HEAD).
The slug (:func:`thread_slug`) is a pure function of the thread key: safe as
one path component and as a branch name, bounded, and unique by a hash.

Each workspace has a record, ``working_dir/.agent-broker/<slug>.json``, whose
modification time is the thread's last use; the TTL reaper reads these. The
workspace lives as long as that record: ``/reset`` keeps both, ``/reset
--clean`` and the reaper remove them.

:class:`Workspaces` does the I/O (mkdir, git) and holds one lock per thread
key, so a removal and a creation of one thread's workspace never overlap and
no other thread ever waits on them. Every failure (not a git repository, a
branch that is not this thread's, a dirty worktree, git missing) raises
:class:`WorkspaceError` carrying the sentence a person reads; nothing falls
back silently. Waits are bounded by the caller's cancel scope.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager

import attrs
import trio

from broker import sentences

__all__ = [
    "RECORDS_DIR",
    "Removal",
    "Workspace",
    "WorkspaceError",
    "WorkspacePlan",
    "Workspaces",
    "stale_workspaces",
    "thread_slug",
    "touch",
    "workspace_for",
]

log = logging.getLogger(__name__)

RECORDS_DIR = ".agent-broker"
_SLUG_TEXT_CHARS = 40
_SLUG_HASH_CHARS = 10


class WorkspaceError(Exception):
    """A workspace could not be made, shown or removed; ``str()`` is the sentence."""


@attrs.frozen
class WorkspacePlan:
    """How a profile's threads get their workspaces."""

    mode: str  # "per-thread" | "git-worktree"
    root: str  # the profile's working_dir: workspaces and their records live here
    repo: str = ""
    base_ref: str = ""  # "": the repository's HEAD


@attrs.frozen
class Workspace:
    """One thread's workspace (it may not exist yet)."""

    thread_key: str
    path: str
    branch: str  # "" for a per-thread directory
    plan: WorkspacePlan

    @property
    def record_path(self) -> str:
        return os.path.join(self.plan.root, RECORDS_DIR, os.path.basename(self.path) + ".json")


@attrs.frozen
class Removal:
    """What a removal did: ``removed`` the directory, ``branch_deleted``, and
    ``kept`` (why the branch or the whole workspace stays, or "")."""

    removed: bool
    branch_deleted: bool
    kept: str = ""


# --- pure --------------------------------------------------------------------------------------


def thread_slug(thread_key: str) -> str:
    """A name for ``thread_key`` usable as one path component and in a branch
    name: lower-case letters, digits and ``-`` only (so never ``..`` nor a
    separator), at most 51 characters, and unique by a hash of the whole key."""
    text = re.sub(r"[^a-z0-9]+", "-", thread_key.lower()).strip("-")[:_SLUG_TEXT_CHARS].strip("-")
    digest = hashlib.sha256(thread_key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{text or 'thread'}-{digest[:_SLUG_HASH_CHARS]}"


def workspace_for(plan: WorkspacePlan, thread_key: str) -> Workspace:
    """Where ``thread_key``'s workspace is under ``plan``, and its branch."""
    slug = thread_slug(thread_key)
    branch = f"agent/{slug}" if plan.mode == "git-worktree" else ""
    return Workspace(thread_key, os.path.join(os.path.abspath(plan.root), slug), branch, plan)


@attrs.frozen
class Record:
    """A workspace's record as read back: the workspace and its last use (epoch seconds)."""

    workspace: Workspace
    last_used: float


def stale_workspaces(
    records: Iterable[Record], live: set[str], now: float, ttl_secs: float
) -> list[Workspace]:
    """The workspaces unused for ``ttl_secs`` whose thread has no live session."""
    return [
        r.workspace
        for r in records
        if r.workspace.thread_key not in live and now - r.last_used >= ttl_secs
    ]


def touch(workspace: Workspace) -> None:
    """Mark the workspace used now (its record's mtime); a missing record is rewritten."""
    try:
        os.utime(workspace.record_path)
    except FileNotFoundError:
        _write_record(workspace)
    except OSError as exc:
        log.warning("cannot mark workspace %s used: %s", workspace.path, exc)


def _write_record(workspace: Workspace) -> None:
    os.makedirs(os.path.dirname(workspace.record_path), exist_ok=True)
    data = {"thread_key": workspace.thread_key, "path": workspace.path, "branch": workspace.branch}
    with open(workspace.record_path, "w", encoding="utf-8") as file:
        json.dump(data, file)


def read_records(plan: WorkspacePlan) -> Iterator[Record]:
    """Every workspace record under ``plan.root`` (unreadable ones are skipped, logged)."""
    directory = os.path.join(plan.root, RECORDS_DIR)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            mtime = os.stat(path).st_mtime
            key = str(data["thread_key"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping workspace record %s: %s", path, exc)
            continue
        yield Record(workspace_for(plan, key), mtime)


# --- git ---------------------------------------------------------------------------------------


async def _git(*args: str, cwd: str) -> tuple[int, str, str]:
    """Run ``git args`` in ``cwd``: exit code, stdout, stderr. Git missing is a WorkspaceError."""
    try:
        result = await trio.run_process(
            ["git", *args], cwd=cwd, capture_stdout=True, capture_stderr=True, check=False
        )
    except FileNotFoundError:
        raise WorkspaceError(sentences.GIT_MISSING) from None
    out = result.stdout.decode("utf-8", "replace").rstrip("\n")
    err = result.stderr.decode("utf-8", "replace").strip()
    return result.returncode, out, err


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


async def _check_repo(repo: str) -> None:
    if not await trio.Path(repo).is_dir():
        raise WorkspaceError(sentences.not_a_repo(repo, "no such directory"))
    code, _, err = await _git("rev-parse", "--git-dir", cwd=repo)
    if code != 0:
        raise WorkspaceError(sentences.not_a_repo(repo, _last_line(err)))


async def _branch_exists(repo: str, branch: str) -> bool:
    code, _, _ = await _git("show-ref", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo)
    return code == 0


async def _is_merged(workspace: Workspace) -> bool:
    plan = workspace.plan
    base = plan.base_ref or "HEAD"
    code, _, _ = await _git("merge-base", "--is-ancestor", workspace.branch, base, cwd=plan.repo)
    return code == 0


async def _status_lines(path: str) -> list[str]:
    code, out, err = await _git("status", "--short", cwd=path)
    if code != 0:
        raise WorkspaceError(sentences.git_failed("git status", _last_line(err)))
    return [line for line in out.splitlines() if line.strip()]


# --- the I/O -----------------------------------------------------------------------------------


class Workspaces:
    """Makes, shows and removes workspaces; one lock per thread key, none shared."""

    def __init__(self) -> None:
        self._locks: dict[str, trio.Lock] = {}

    @asynccontextmanager
    async def _held(self, thread_key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(thread_key, trio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                if self._locks.get(thread_key) is lock:
                    del self._locks[thread_key]

    async def prepare(self, plan: WorkspacePlan, thread_key: str) -> Workspace:
        """The thread's workspace, made if missing (a directory, or a worktree on
        its own branch); marked used. Raises WorkspaceError with the reason."""
        workspace = workspace_for(plan, thread_key)
        async with self._held(thread_key):
            if plan.mode == "git-worktree":
                await self._prepare_worktree(workspace)
            else:
                await trio.to_thread.run_sync(lambda: os.makedirs(workspace.path, exist_ok=True))
            await trio.to_thread.run_sync(touch, workspace)
        return workspace

    async def _prepare_worktree(self, workspace: Workspace) -> None:
        plan, branch, path = workspace.plan, workspace.branch, workspace.path
        await _check_repo(plan.repo)
        if await trio.Path(path).exists():
            code, head, _ = await _git("rev-parse", "--abbrev-ref", "HEAD", cwd=path)
            if code == 0 and head == branch:
                return  # this thread's worktree, from before
            raise WorkspaceError(sentences.workspace_path_taken(path, branch))
        await trio.Path(plan.root).mkdir(parents=True, exist_ok=True)
        if await _branch_exists(plan.repo, branch):
            if not await trio.Path(workspace.record_path).exists():
                raise WorkspaceError(sentences.branch_exists(branch, plan.repo))
            args = ["worktree", "add", path, branch]  # the thread's own branch, kept
        else:
            args = ["worktree", "add", "-b", branch, path, plan.base_ref or "HEAD"]
        code, _, err = await _git(*args, cwd=plan.repo)
        if code != 0:
            raise WorkspaceError(sentences.git_failed("git worktree add", _last_line(err)))
        log.info("%s: worktree %s on branch %s", workspace.thread_key, path, branch)

    async def remove(
        self,
        workspace: Workspace,
        *,
        prune_unmerged: bool,
        keep_unmerged: bool = False,
        unless: Callable[[str], bool] | None = None,
    ) -> Removal:
        """Remove the workspace and its record, holding the thread's lock.

        A worktree with uncommitted changes stays (WorkspaceError says so). Its
        branch is deleted only when merged into ``base_ref`` or with
        ``prune_unmerged``; else the branch and the record stay (a later message
        checks it out again), and with ``keep_unmerged`` the worktree too.
        ``unless(thread_key)``, asked once the lock is held, leaves it all alone
        when true (the thread came alive meanwhile)."""
        async with self._held(workspace.thread_key):
            if unless is not None and unless(workspace.thread_key):
                return Removal(False, False, "in use")
            if workspace.plan.mode != "git-worktree":
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(workspace.path, ignore_errors=True)
                )
                _remove_record(workspace)
                return Removal(removed=True, branch_deleted=False)
            return await self._remove_worktree(workspace, prune_unmerged, keep_unmerged)

    async def _remove_worktree(
        self, workspace: Workspace, prune_unmerged: bool, keep_unmerged: bool
    ) -> Removal:
        plan, branch, path = workspace.plan, workspace.branch, workspace.path
        await _check_repo(plan.repo)
        has_branch = await _branch_exists(plan.repo, branch)
        merged = not has_branch or prune_unmerged or await _is_merged(workspace)
        kept = "" if merged else sentences.branch_kept(branch, plan.base_ref or "HEAD")
        if kept and keep_unmerged:
            return Removal(False, False, kept)
        removed = False
        if await trio.Path(path).exists():
            changes = await _status_lines(path)
            if changes:
                raise WorkspaceError(sentences.workspace_dirty(path, len(changes)))
            code, _, err = await _git("worktree", "remove", path, cwd=plan.repo)
            if code != 0:
                raise WorkspaceError(sentences.git_failed("git worktree remove", _last_line(err)))
            removed = True
        if kept:
            return Removal(removed, False, kept)
        if has_branch:
            code, _, err = await _git("branch", "-D", branch, cwd=plan.repo)
            if code != 0:
                raise WorkspaceError(sentences.git_failed("git branch -D", _last_line(err)))
        _remove_record(workspace)
        return Removal(removed=removed, branch_deleted=has_branch)

    async def reap(
        self,
        plan: WorkspacePlan,
        is_live: Callable[[str], bool],
        ttl_secs: float,
        *,
        prune_unmerged: bool,
    ) -> int:
        """Remove the workspaces of ``plan`` unused for ``ttl_secs`` whose thread
        has no live session (asked again once the thread's lock is held). An
        unmerged worktree stays whole unless ``prune_unmerged``. Failures are
        logged, never raised; returns how many were removed."""
        records = await trio.to_thread.run_sync(lambda: list(read_records(plan)))
        live = {r.workspace.thread_key for r in records if is_live(r.workspace.thread_key)}
        gone = 0
        for workspace in stale_workspaces(records, live, time.time(), ttl_secs):
            try:
                result = await self.remove(
                    workspace, prune_unmerged=prune_unmerged, keep_unmerged=True, unless=is_live
                )
            except WorkspaceError as exc:
                log.warning("workspace %s kept: %s", workspace.path, exc)
                continue
            if result.kept:
                log.info("workspace %s kept: %s", workspace.path, result.kept)
                continue
            gone += 1
            log.info("workspace %s of %s removed: unused", workspace.path, workspace.thread_key)
        return gone

    async def describe(self, workspace: Workspace) -> str:
        """What ``/workspace`` shows: path, branch, the ``git status --short`` summary."""
        if not await trio.Path(workspace.path).is_dir():
            return sentences.workspace_not_made(workspace.path)
        if workspace.plan.mode != "git-worktree":
            return sentences.workspace_directory(workspace.path)
        changes = await _status_lines(workspace.path)
        return sentences.workspace_worktree(workspace.path, workspace.branch, changes)


def _remove_record(workspace: Workspace) -> None:
    try:
        os.remove(workspace.record_path)
    except FileNotFoundError:
        pass
