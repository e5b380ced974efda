"""Authentication, cancel restarts, refused tools, reloaded permissions and what the log says,
against real fake-agent processes."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import trio

from broker.config import BrokerConfig
from broker.reply import Outcome, Prompt
from broker.sessions.pool import Pool, open_pool
from tests.pool.conftest import ask

CODEX_LIKE = [
    "--auth-required",
    "--auth-method",
    "chatgpt",
    "--auth-method",
    "codex-api-key=CODEX_API_KEY",
    "--auth-method",
    "openai-api-key=OPENAI_API_KEY",
]


def _messages(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


async def test_a_configured_auth_method_is_sent_after_initialize(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(
        ["--auth-required", "--auth-method", "login"], agent={"auth_method": "login"}
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await ask(pool, "cli:1", "@reply in")
            assert end.ok and end.text == "in"
    assert "authenticated with method login" in _messages(caplog)


async def test_without_auth_method_the_one_env_var_method_whose_variables_are_set_is_used(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(CODEX_LIKE, agent={"env": {"OPENAI_API_KEY": "sk-test"}})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await ask(pool, "cli:1", "@reply in")
            assert end.ok and end.text == "in"
    assert "authenticated with method openai-api-key" in _messages(caplog)


async def test_a_loaded_session_is_authenticated_too_and_resumes(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        CODEX_LIKE, agent={"env": {"CODEX_API_KEY": "k"}}, pool={"max_sessions": 1}
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            assert (await ask(pool, "cli:A", "@reply a")).ok
            assert (await ask(pool, "cli:B", "@reply b")).ok  # suspends A
            back = pool.submit("cli:A", Prompt("@reply a again"))
            assert (await back.result()).ok
            assert not back.transcript.context_reset
            assert pool.counters.resumed == 1


async def test_without_a_usable_auth_method_the_start_fails_naming_the_methods_and_variables(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with open_pool(make_config(CODEX_LIKE)) as pool:
            end = await ask(pool, "cli:1", "hello")
    assert end.outcome is Outcome.START_FAILED
    for word in ("chatgpt", "codex-api-key", "CODEX_API_KEY", "OPENAI_API_KEY", "auth_method"):
        assert word in end.reason, end.reason


async def test_by_default_a_cancelled_turn_keeps_the_same_agent(pool: Pool) -> None:
    with trio.fail_after(30):
        handle = pool.submit("cli:1", Prompt("@say working\n@hang"))
        while not handle.transcript.text:  # the agent runs the prompt: a cancel reaches it
            await handle.wait_changed(handle.transcript.version)
        pid = pool.session_snapshot("cli:1").pid  # type: ignore[union-attr]
        assert await pool.cancel("cli:1")
        assert (await handle.result()).outcome is Outcome.CANCELLED
        assert (await ask(pool, "cli:1", "@reply same")).text == "same"
        assert pool.session_snapshot("cli:1").pid == pid  # type: ignore[union-attr]
        assert pool.counters.spawned == 1


async def test_a_tool_the_policy_refused_is_named_with_its_rule_when_the_agent_cancels(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(permissions={"by_kind": {"execute": "reject"}})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await ask(pool, "cli:1", "@permission execute rm -rf build\n@stop cancelled")
    assert end.outcome is Outcome.CANCELLED
    assert "rm -rf build" in end.reason and "by_kind.execute" in end.reason, end.reason
    assert "reject" in end.reason
    logged = [m for m in _messages(caplog, logging.INFO) if m.startswith("permission")]
    assert logged == [
        "permission refused for 'rm -rf build' (kind execute): reject_once,"
        ' by [permissions] by_kind.execute = "reject"'
    ]


async def test_a_completed_turn_after_a_refusal_says_so_and_an_allowed_tool_is_logged(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(permissions={"default": "reject", "by_kind": {"read": "allow_once"}})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            refused = await ask(pool, "cli:1", "@permission edit notes.txt")
            allowed = await ask(pool, "cli:1", "@permission read notes.txt")
    assert refused.ok and "notes.txt" in refused.reason and "default" in refused.reason
    assert allowed.ok and allowed.reason == ""
    logged = [m for m in _messages(caplog, logging.INFO) if m.startswith("permission")]
    assert len(logged) == 2 and logged[1].startswith("permission granted for 'notes.txt'")


async def test_reloaded_permissions_reach_a_running_session(
    make_config: Callable[..., BrokerConfig],
) -> None:
    loose = make_config(permissions={"default": "allow_once"})
    strict = make_config(permissions={"default": "allow_once", "by_kind": {"execute": "reject"}})
    with trio.fail_after(30):
        async with open_pool(loose) as pool:
            first = await ask(pool, "cli:1", "@permission execute make")
            assert first.ok and first.reason == ""
            pid = pool.session_snapshot("cli:1").pid  # type: ignore[union-attr]
            assert pool.update_config(strict) == []
            second = await ask(pool, "cli:1", "@permission execute make")
            assert "by_kind.execute" in second.reason
            assert pool.session_snapshot("cli:1").pid == pid  # type: ignore[union-attr]


async def test_a_new_session_that_reuses_the_saved_id_is_logged_as_started_not_resumed(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(["--no-load-session", "--session-id", "0"], pool={"max_sessions": 1})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            assert (await ask(pool, "cli:A", "@reply a")).ok
            assert (await ask(pool, "cli:B", "@reply b")).ok  # suspends A (its id: 0)
            back = pool.submit("cli:A", Prompt("@reply a again"))
            assert (await back.result()).ok and back.transcript.context_reset
            assert pool.counters.resumed == 0
    established = [m for m in _messages(caplog) if "ACP session" in m]
    assert established == ["started ACP session 0"] * 3


async def test_planned_stops_are_logged_at_info_with_their_reason(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(pool={"max_sessions": 1})
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            assert (await ask(pool, "cli:A", "@reply a")).ok
            assert (await ask(pool, "cli:B", "@reply b")).ok  # evicts A
            assert await pool.reset("cli:B")
    warnings = _messages(caplog, logging.WARNING)
    assert warnings == [], warnings
    infos = _messages(caplog, logging.INFO)
    assert "stopping the agent (evicted)" in infos and "stopping the agent (reset)" in infos
    assert sum("stopped as asked (killed by SIGTERM)" in m for m in infos) >= 2
