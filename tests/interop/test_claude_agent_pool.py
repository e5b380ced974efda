"""The broker's session pool against the real claude-agent-acp, offline.

The same private world as test_claude_agent_acp.py (fake model on loopback,
private HOME), but the agent is started, evicted and resumed by
:func:`broker.sessions.pool.open_pool` from a broker config, as in production. The
agent's environment is built by the broker from an environment holding only
PATH, plus ``[agent].env``.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from broker.config import BrokerConfig, structure_config
from broker.reply import Outcome, Prompt, TurnEnd
from broker.sessions.pool import Pool, open_pool, session_settings
from broker.sessions.session import SessionSettings

from .claude_world import Claude
from .conftest import NODE_MISSING, node_available
from .fake_anthropic import last_user_text
from .harness import exact_env

pytestmark = pytest.mark.skipif(not node_available(), reason=NODE_MISSING)
THREE_STARTS = 120.0  # generous: each agent start takes ~2 s on an idle machine


def pool_setup(claude: Claude, **sections: dict[str, Any]) -> tuple[BrokerConfig, SessionSettings]:
    """A broker config running claude-agent-acp in ``claude``'s world."""
    agent_env = {k: v for k, v in claude.env().items() if k != "PATH"}
    data: dict[str, dict[str, Any]] = {
        "agent": {
            "command": "node",
            "args": [str(claude.entry)],
            "working_dir": str(claude.cwd),
            "env": agent_env,
        },
        "state": {"path": str(claude.home.parent / "state" / "broker.sqlite3")},
        "server": {"listen": "127.0.0.1:0"},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    config = structure_config(data, file="<interop config>")
    return config, session_settings(config, environ=exact_env())


async def ask(pool: Pool, key: str, text: str) -> TurnEnd:
    return await pool.submit(key, Prompt(text)).result()


async def test_evicted_thread_resumes_by_session_load_with_its_context(claude: Claude) -> None:
    config, settings = pool_setup(claude, pool={"max_sessions": 1})
    with trio.fail_after(THREE_STARTS):
        async with open_pool(config, settings=settings) as pool:
            first = await ask(pool, "cli:A", "[say] alpha")
            assert (first.outcome, first.text) == (Outcome.COMPLETED, "alpha")
            # claude saves the reply tens of ms after answering (see README)
            await claude.saved_reply("*", "alpha")

            other = await ask(pool, "cli:B", "[say] beta")  # evicts A: one agent at most
            assert (other.outcome, other.text) == (Outcome.COMPLETED, "beta")
            assert pool.is_suspended("cli:A")

            back = pool.submit("cli:A", Prompt("[say] back again"))
            end = await back.result()
            assert (end.outcome, end.text) == (Outcome.COMPLETED, "back again")
            assert not back.transcript.context_reset
            assert pool.counters.resumed == 1
    history = " ".join(
        last_user_text({"messages": [m]}) for m in claude.api.message_requests()[-1]["messages"]
    )
    assert "alpha" in history and "beta" not in history


async def cancel_slow_turn(pool: Pool, key: str) -> TurnEnd:
    """Start a 30 s reply in ``key``, cancel it after the first text, return its end."""
    slow = pool.submit(key, Prompt("[slow]"))
    while not slow.transcript.text:
        await slow.wait_changed(slow.transcript.version)
    assert await pool.cancel(key)
    return await slow.result()


async def test_cancel_ends_the_turn_at_once_with_the_partial_text(claude: Claude) -> None:
    config, settings = pool_setup(claude)
    with trio.fail_after(THREE_STARTS):
        async with open_pool(config, settings=settings) as pool:
            with trio.fail_after(10):  # the reply would stream for 30 s
                end = await cancel_slow_turn(pool, "cli:A")
            assert (end.outcome, end.stop_reason) == (Outcome.CANCELLED, "cancelled")
            assert 0 < len(end.text) < 3000 and set(end.text) == {"z"}
            await claude.api.wait_for(lambda: claude.api.aborted_streams == 1)


async def test_turns_after_a_cancelled_turn_get_their_own_replies(claude: Claude) -> None:
    # The pinned release answers each prompt after a cancel with the previous one's reply
    # until restarted (tests/interop/README.md): the case restart_after_cancel exists for.
    config, settings = pool_setup(claude, agent={"restart_after_cancel": True})
    with trio.fail_after(THREE_STARTS):
        async with open_pool(config, settings=settings) as pool:
            assert (await cancel_slow_turn(pool, "cli:A")).outcome is Outcome.CANCELLED
            replies = [
                (await ask(pool, "cli:A", f"[say] {words}")).text
                for words in ("one", "two", "three")
            ]
            assert replies == ["one", "two", "three"]


async def test_missing_api_key_is_an_authentication_error_at_the_first_prompt(
    claude: Claude,
) -> None:
    config, settings = pool_setup(claude)
    env = {k: v for k, v in settings.spec.env.items() if k != "ANTHROPIC_API_KEY"}
    settings = attrs.evolve(settings, spec=attrs.evolve(settings.spec, env=env))
    with trio.fail_after(THREE_STARTS):
        async with open_pool(config, settings=settings) as pool:
            end = await ask(pool, "cli:A", "[hello]")
    # session/new succeeded; the agent says so only when asked to prompt (-32000)
    assert end.outcome is Outcome.ERROR
    assert "Authentication required" in end.reason
    assert claude.api.message_requests() == []
