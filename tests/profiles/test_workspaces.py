"""A workspace per thread: per-thread directories and git worktrees in a real repository."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from broker.chat.commands import CommandContext, parse_command, run_command
from broker.chat.routes import RouteChoice
from broker.reply import Outcome, Prompt
from broker.sessions.pool import Pool, open_pool
from broker.sessions.workspace import WorkspacePlan, thread_slug, workspace_for
from tests.profiles.helpers import git, make_repo, profiles_config

CONTEXT = CommandContext(RouteChoice("dev"))


def worktree_config(tmp_path: Path, **state: object) -> tuple[Path, object]:
    repo = make_repo(tmp_path / "repo")
    profile = {"workspace": "git-worktree", "repo": str(repo)}
    return repo, profiles_config(tmp_path, {"dev": profile}, state=dict(state))


async def command(pool: Pool, key: str, text: str) -> str:
    parsed = parse_command(text)
    assert parsed is not None
    return await run_command(parsed, pool, key, CONTEXT)


def test_thread_slugs_are_one_safe_bounded_path_component_and_unique() -> None:
    keys = ["discord:123", "gw:../../etc", "slack:C1:1712.5", "x/y\\z", "é" * 300, "", "..", "a"]
    slugs = [thread_slug(k) for k in keys]
    assert len(set(slugs)) == len(keys)
    for slug in slugs:
        assert slug not in (".", "..") and "/" not in slug and "\\" not in slug
        assert ".." not in slug and len(slug) <= 51
        assert slug == slug.lower() and all(c.isalnum() or c == "-" for c in slug)
    assert thread_slug("Discord:123") != thread_slug("discord:123")
    plan = WorkspacePlan("per-thread", "/srv/work")
    assert os.path.dirname(workspace_for(plan, "gw:../../etc").path) == "/srv/work"


async def test_two_threads_edit_the_same_file_in_their_own_worktrees(tmp_path: Path) -> None:
    repo, config = worktree_config(tmp_path)
    with trio.fail_after(60):
        async with open_pool(config) as pool:  # type: ignore[arg-type]
            async with trio.open_nursery() as nursery:
                for key in ("t:alice", "t:bob"):
                    text = f"@write notes.txt changed by {key}"
                    nursery.start_soon(pool.submit(key, Prompt(text)).result)
            for key in ("t:alice", "t:bob"):
                workspace = pool.thread_workspace(key)
                assert workspace is not None
                path = Path(workspace.path)
                assert path.parent == tmp_path / "dev"
                assert (path / "notes.txt").read_text() == f"first line\nchanged by {key}\n"
                shown = await command(pool, key, "/workspace")
                assert shown.splitlines()[:4] == [
                    f"📁 {path}",
                    f"🌿 agent/{thread_slug(key)}",
                    "1 changed file:",
                    " M notes.txt",
                ]
                git("commit", "-qam", f"{key} edits", cwd=path)
    for key in ("t:alice", "t:bob"):
        branch = f"agent/{thread_slug(key)}"
        assert git("show", f"{branch}:notes.txt", cwd=repo) == f"first line\nchanged by {key}"
    assert (repo / "notes.txt").read_text() == "first line\n"
    assert git("status", "--porcelain", cwd=repo) == ""
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo) == "main"


async def test_per_thread_directories_hold_each_threads_files_and_fs_access(
    tmp_path: Path,
) -> None:
    config = profiles_config(tmp_path, {"dev": {"workspace": "per-thread"}})
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            end = await pool.submit("gw:../../etc", Prompt("@whereami\n@write a.txt hi")).result()
            workspace = pool.thread_workspace("gw:../../etc")
            assert workspace is not None
            assert f"process cwd: {workspace.path}" in end.text
            assert f"cwd: {workspace.path}" in end.text
            assert Path(workspace.path, "a.txt").read_text() == "hi\n"
            session = pool._sessions["gw:../../etc"]
            assert session.client is not None and session.client.fs.root == workspace.path
            assert await command(pool, "gw:../../etc", "/workspace") == (
                f"📁 {workspace.path} (a directory of this thread's own)"
            )
            # /reset keeps the workspace, /reset --clean removes it
            await command(pool, "gw:../../etc", "/reset")
            assert Path(workspace.path, "a.txt").exists()
            cleaned = await command(pool, "gw:../../etc", "/reset --clean")
            assert cleaned.endswith(f"🧹 Removed the workspace {workspace.path}.")
            assert not Path(workspace.path).exists()


async def test_reset_clean_refuses_a_dirty_worktree_and_keeps_an_unmerged_branch(
    tmp_path: Path,
) -> None:
    repo, config = worktree_config(tmp_path)
    branch = f"agent/{thread_slug('t:1')}"
    with trio.fail_after(60):
        async with open_pool(config) as pool:  # type: ignore[arg-type]
            assert (await pool.submit("t:1", Prompt("@write notes.txt mine")).result()).ok
            workspace = pool.thread_workspace("t:1")
            assert workspace is not None
            dirty = await command(pool, "t:1", "/reset --clean")
            assert dirty.splitlines()[-1] == (
                f"⚠️ the worktree {workspace.path} has uncommitted changes (1 file); "
                "commit or discard them first."
            )
            assert Path(workspace.path, "notes.txt").exists()
            git("commit", "-qam", "mine", cwd=workspace.path)
            kept = await command(pool, "t:1", "/reset --clean")
            assert kept.splitlines()[-1] == (
                f"🧹 Removed the workspace {workspace.path}. Kept: the branch {branch} is not "
                "merged into HEAD, so it is kept ([state] prune_unmerged)."
            )
            assert not Path(workspace.path).exists()
            assert git("branch", "--list", branch, cwd=repo) != ""
            # the thread's next message checks its kept branch out again
            again = await pool.submit("t:1", Prompt("@whereami")).result()
            assert (
                again.ok and Path(workspace.path, "notes.txt").read_text() == "first line\nmine\n"
            )


async def test_unused_worktrees_are_reaped_by_ttl_but_never_a_live_sessions(
    tmp_path: Path,
) -> None:
    repo, config = worktree_config(tmp_path, workspace_ttl_days=1)
    with trio.fail_after(60):
        async with open_pool(config) as pool:  # type: ignore[arg-type]
            for key in ("t:old", "t:live", "t:unmerged"):
                assert (await pool.submit(key, Prompt("hello")).result()).ok
            unmerged = pool.thread_workspace("t:unmerged")
            assert unmerged is not None
            Path(unmerged.path, "new.txt").write_text("x\n")
            git("add", "new.txt", cwd=unmerged.path)
            git("commit", "-qm", "work", cwd=unmerged.path)
            await pool.reset("t:old")
            await pool.reset("t:unmerged")
            workspaces = {k: pool.thread_workspace(k) for k in ("t:old", "t:live", "t:unmerged")}
            two_days_ago = time.time() - 2 * 86400
            for workspace in workspaces.values():
                assert workspace is not None
                os.utime(workspace.record_path, (two_days_ago, two_days_ago))
            for session in list(pool._stopping):
                await session.ended.wait()
            assert await pool.reap_workspaces() == 1
            old, live, kept = (workspaces[k] for k in ("t:old", "t:live", "t:unmerged"))
            assert old is not None and live is not None and kept is not None
            assert not Path(old.path).exists()
            assert git("branch", "--list", old.branch, cwd=repo) == ""
            assert Path(live.path).exists()  # its session is live: never touched
            assert Path(kept.path, "new.txt").exists()  # unmerged: kept whole
            assert (await pool.submit("t:live", Prompt("still here")).result()).ok
    assert git("status", "--porcelain", cwd=repo) == ""


async def test_a_repo_that_is_not_git_is_a_clear_start_failure(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    config = profiles_config(tmp_path, {"dev": {"workspace": "git-worktree", "repo": str(plain)}})
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            end = await pool.submit("t:1", Prompt("hello")).result()
            assert end.outcome is Outcome.START_FAILED
            assert end.reason.startswith(
                f"The agent could not be started: {plain} is not a git repository (fatal: not a "
                "git repository"
            )
            assert not (tmp_path / "dev" / thread_slug("t:1")).exists()


async def test_a_branch_that_is_not_the_threads_is_a_clear_start_failure(
    tmp_path: Path,
) -> None:
    repo, config = worktree_config(tmp_path)
    branch = f"agent/{thread_slug('t:1')}"
    git("branch", branch, cwd=repo)
    with trio.fail_after(60):
        async with open_pool(config) as pool:  # type: ignore[arg-type]
            end = await pool.submit("t:1", Prompt("hello")).result()
            assert end.outcome is Outcome.START_FAILED
            assert end.reason == (
                f"The agent could not be started: the branch {branch} already exists in {repo} "
                "and is not this thread's workspace; rename or delete it."
            )
            other = await pool.submit("t:2", Prompt("hello")).result()
            assert other.ok  # one thread's failure stays in it


async def test_git_missing_is_a_clear_start_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, config = worktree_config(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with trio.fail_after(60):
        async with open_pool(config) as pool:  # type: ignore[arg-type]
            end = await pool.submit("t:1", Prompt("hello")).result()
            assert end.outcome is Outcome.START_FAILED
            assert end.reason == (
                "The agent could not be started: git is not installed (not found on PATH), "
                "so no worktree can be made for this thread."
            )
            shown = await command(pool, "t:1", "/workspace")
            path = tmp_path / "dev" / thread_slug("t:1")
            assert shown == f"📁 This thread's workspace {path} is made with its next message."
