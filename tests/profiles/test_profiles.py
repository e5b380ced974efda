"""Two fake-agent profiles behind real routes: which agent a thread gets, /agent, MCP servers."""

from __future__ import annotations

from pathlib import Path

import trio

from broker import sentences
from broker.chat.commands import CommandContext, parse_command, run_command
from broker.chat.routes import RouteChoice
from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.store import open_store
from tests.profiles.helpers import profiles_config


def reply_lines(text: str) -> dict[str, str]:
    """The ``key: value`` notes of a ``@whereami`` reply."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


async def test_each_profile_runs_its_own_agent_and_the_route_chooses_it(tmp_path: Path) -> None:
    config = profiles_config(tmp_path, {"claude": {}, "codex": {}})
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            claude = await pool.submit("t:1", Prompt("@whereami")).result()
            codex = await pool.submit("t:2", Prompt("@whereami"), profile="codex").result()
            assert reply_lines(claude.text)["process cwd"] == str(tmp_path / "claude")
            assert reply_lines(codex.text)["process cwd"] == str(tmp_path / "codex")
            assert pool.session_snapshot("t:2") is not None
            assert pool.session_snapshot("t:2").profile == "codex"  # type: ignore[union-attr]
            # a live session keeps its profile whatever the next route says
            again = await pool.submit("t:2", Prompt("@whereami"), profile="claude").result()
            assert reply_lines(again.text)["process cwd"] == str(tmp_path / "codex")


async def test_agent_switches_the_thread_with_a_note_and_the_choice_survives_a_restart(
    tmp_path: Path,
) -> None:
    config = profiles_config(tmp_path, {"claude": {}, "codex": {}})
    context = CommandContext(RouteChoice("claude"))
    agent = parse_command("/agent")
    switch = parse_command("/agent codex")
    assert agent is not None and switch is not None
    with trio.fail_after(60):
        async with open_store(config.state.path) as store, open_pool(config, store=store) as pool:
            first = await pool.submit("t:1", Prompt("remember me")).result()
            assert first.ok
            listing = await run_command(agent, pool, "t:1", context)
            assert "this thread: claude" in listing and "• codex — " in listing
            answer = await run_command(switch, pool, "t:1", context)
            assert answer.startswith("🔀 This thread now talks to codex")
            after = await pool.submit("t:1", Prompt("@whereami"), profile="claude").result()
            assert reply_lines(after.text)["process cwd"] == str(tmp_path / "codex")
            assert "remember me" not in after.text  # a fresh conversation
            again = await run_command(switch, pool, "t:1", context)
            assert again == "🤖 This thread already talks to codex."
            unknown = parse_command("/agent gemini")
            assert unknown is not None
            assert "There is no agent “gemini”" in await run_command(unknown, pool, "t:1", context)
        async with open_store(config.state.path) as store, open_pool(config, store=store) as pool:
            resumed = await pool.submit("t:1", Prompt("@whereami"), profile="claude").result()
            assert reply_lines(resumed.text)["process cwd"] == str(tmp_path / "codex")


async def test_a_refused_switch_changes_nothing(tmp_path: Path) -> None:
    config = profiles_config(tmp_path, {"claude": {}, "codex": {}})
    switch = parse_command("/agent codex")
    assert switch is not None
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            assert (await pool.submit("t:1", Prompt("hello")).result()).ok
            pinned = CommandContext(RouteChoice("claude", False), "pinned by the routes")
            assert await run_command(switch, pool, "t:1", pinned) == "pinned by the routes"
            assert pool.thread_profile("t:1") == "claude"
            assert pool.session_snapshot("t:1") is not None


async def test_mcp_servers_reach_session_new_and_http_ones_only_when_the_agent_takes_them(
    tmp_path: Path,
) -> None:
    servers = {
        "files": {"command": "mcp-files", "args": ["--root", "/srv"], "env": {"A": "1"}},
        "remote": {"type": "http", "url": "https://mcp.example.org/"},
    }
    config = profiles_config(tmp_path, {"claude": {"mcp_servers": servers}, "bare": {}})
    with trio.fail_after(60):
        async with open_store(config.state.path) as store, open_pool(config, store=store) as pool:
            given = await pool.submit("t:1", Prompt("@whereami")).result()
            bare = await pool.submit("t:2", Prompt("@whereami"), profile="bare").result()
            # the fake agent advertises no mcpCapabilities: the http server is left out
            assert reply_lines(given.text)["mcp servers"] == "files"
            assert reply_lines(bare.text)["mcp servers"] == "(none)"
        async with open_store(config.state.path) as store, open_pool(config, store=store) as pool:
            loaded = await pool.submit("t:1", Prompt("@whereami")).result()
            assert pool.counters.resumed == 1  # by session/load, which passes them too
            assert reply_lines(loaded.text)["mcp servers"] == "files"


def test_mcp_payload_has_acp_shapes_and_http_needs_the_capability() -> None:
    from broker.acp.client import mcp_servers_payload
    from broker.acp.schema import McpCapabilities
    from broker.config import McpServerConfig

    servers = {
        "files": McpServerConfig(command="mcp-files", args=("-v",), env={"A": "1"}),
        "gh": McpServerConfig(type="http", url="https://x/", headers={"Authorization": "B t"}),
        "events": McpServerConfig(type="sse", url="https://y/"),
    }
    payload, left_out = mcp_servers_payload(servers, McpCapabilities(http=True))
    assert payload == [
        {
            "name": "files",
            "command": "mcp-files",
            "args": ["-v"],
            "env": [{"name": "A", "value": "1"}],
        },
        {
            "type": "http",
            "name": "gh",
            "url": "https://x/",
            "headers": [{"name": "Authorization", "value": "B t"}],
        },
    ]
    assert left_out == ["events"]


async def test_a_removed_profile_finishes_its_turn_and_its_threads_fall_back_with_a_note(
    tmp_path: Path,
) -> None:
    config = profiles_config(tmp_path, {"claude": {}, "codex": {}})
    reloaded = profiles_config(tmp_path, {"claude": {}})
    note = sentences.profile_removed_note("codex", "claude")
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            assert (await pool.submit("t:idle", Prompt("hello"), profile="codex").result()).ok
            running = pool.submit("t:busy", Prompt("@delay 1\n@whereami"), profile="codex")
            while not running.transcript.started:
                await running.wait_changed(running.transcript.version)
            queued = pool.submit("t:busy", Prompt("@whereami"), profile="codex")
            assert sentences.profiles_removed_log(["codex"], "claude") in pool.update_config(
                reloaded
            )
            assert pool.session_snapshot("t:idle") is None  # stopped at once: it was idle
            first = await running.result()
            assert first.ok and note not in first.text
            assert reply_lines(first.text)["process cwd"] == str(tmp_path / "codex")
            second = await queued.result()
            assert reply_lines(second.text)["process cwd"] == str(tmp_path / "claude")
            assert queued.transcript.notes == (note,)
            idle = pool.submit("t:idle", Prompt("@whereami"), profile="codex")
            after = await idle.result()
            assert reply_lines(after.text)["process cwd"] == str(tmp_path / "claude")
            assert "hello" not in after.text and idle.transcript.notes == (note,)
            again = pool.submit("t:idle", Prompt("@whereami"))
            assert (await again.result()).ok and again.transcript.notes == ()
            assert {s.profile for s in pool.snapshot().sessions} == {"claude"}


async def test_a_reload_replaces_the_warm_spares_of_a_changed_profile(tmp_path: Path) -> None:
    config = profiles_config(tmp_path, {"claude": {"warm_spares": 1}})
    moved = tmp_path / "moved"
    moved.mkdir()
    reloaded = profiles_config(tmp_path, {"claude": {"warm_spares": 1, "working_dir": str(moved)}})
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            while pool.snapshot().spares_ready < 1:
                await pool.wait_changed(pool.version)
            pool.update_config(reloaded)
            answer = await pool.submit("t:1", Prompt("@whereami")).result()
            assert reply_lines(answer.text)["process cwd"] == str(moved)
