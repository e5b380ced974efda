"""The broker's session pool against the real codex-acp, offline.

codex-acp (npm ``@zed-industries/codex-acp``, its platform binary installed by npm beside it)
runs in a private world: its own HOME whose ``.codex/config.toml`` points the built-in OpenAI
provider at :class:`~tests.interop.fake_openai.FakeOpenAI` on loopback, a working directory, and
``OPENAI_API_KEY`` in its environment. The agent answers ``session/new`` with -32000 until it is
authenticated; the broker authenticates it by itself (no ``auth_method`` is configured), as a
user following docs/acp.md would run it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from broker.config import BrokerConfig, structure_config
from broker.reply import Outcome, Prompt, TurnEnd
from broker.sessions.pool import Pool, open_pool, session_settings
from broker.sessions.session import SessionSettings
from broker.store import open_store

from .conftest import NODE_MISSING, node_available
from .fake_openai import Call, FakeOpenAI, ModelReply, Say, call_outputs, last_user_text, say
from .harness import exact_env

pytestmark = pytest.mark.skipif(not node_available(), reason=NODE_MISSING)
STARTS = 120.0  # generous: an agent start takes ~1 s on an idle machine
API_KEY = "sk-fake-codex-key"
COMMAND = "echo ran > made-by-codex.txt && echo done"


@attrs.define
class CodexModel:
    """The fake model's replies, from the marker in the newest user text.

    ``[say] X``: ``X``; ``[exec]``: an ``exec_command`` call running :data:`COMMAND` outside
    the sandbox (which codex must ask permission for), then, once the call's output comes
    back, a text quoting it; ``[slow]``: 30 s of text in 5-character deltas every 50 ms.
    Requests without tools (codex's side calls) get a short text.
    """

    outputs: list[str] = attrs.field(factory=list)

    def __call__(self, request: dict[str, Any]) -> ModelReply:
        if not request.get("tools"):
            return say("ok")
        outputs = call_outputs(request)
        if outputs:
            said = str(outputs[-1].get("output"))
            self.outputs.append(said)
            return say(f"The command said: {said}")
        text = last_user_text(request)
        if "[exec]" in text:
            arguments = {
                "cmd": COMMAND,
                "sandbox_permissions": "require_escalated",
                "justification": "Create a file to show that tools work",
            }
            return ModelReply((Call("exec_command", arguments),))
        if "[slow]" in text:
            return ModelReply((Say("tick " * 1200),), chunk_size=5, chunk_delay=0.05)
        if "[say]" in text:
            return say(text.split("[say]", 1)[1].strip())
        return say("ok")


@attrs.frozen
class Codex:
    home: Path
    cwd: Path
    api: FakeOpenAI
    model: CodexModel
    entry: Path

    def setup(self, **sections: dict[str, Any]) -> tuple[BrokerConfig, SessionSettings]:
        """A broker config running codex-acp here, with the broker's environment
        holding only PATH (the key reaches the agent through ``[agent].env``)."""
        data: dict[str, dict[str, Any]] = {
            "agent": {
                "command": "node",
                "args": [str(self.entry)],
                "working_dir": str(self.cwd),
                "env": {"HOME": str(self.home), "OPENAI_API_KEY": API_KEY},
            },
            "state": {"path": str(self.home.parent / "state" / "broker.sqlite3")},
            "server": {"listen": "127.0.0.1:0"},
            "timeouts": {"turn_hard_secs": 90, "cancel_grace_secs": 10},
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        config = structure_config(data, file="<interop config>")
        return config, session_settings(config, environ=exact_env())


@pytest.fixture
async def codex(tmp_path: Path, codex_agent_entry: Path) -> AsyncIterator[Codex]:
    home, cwd = tmp_path / "home", tmp_path / "work"
    (home / ".codex").mkdir(parents=True)
    cwd.mkdir()
    model = CodexModel()
    api = FakeOpenAI(model)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        config_toml = f'openai_base_url = "{api.base_url}"\n'
        (home / ".codex" / "config.toml").write_text(config_toml)
        yield Codex(home, cwd, api, model, codex_agent_entry)
        nursery.cancel_scope.cancel()
    assert api.unknown == [], [f"{r.method} {r.path}" for r in api.unknown]
    assert api.errors == []


async def ask(pool: Pool, key: str, text: str) -> TurnEnd:
    return await pool.submit(key, Prompt(text)).result()


async def test_a_full_turn_once_the_broker_authenticated_the_agent(
    codex: Codex, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config, settings = codex.setup()
    with trio.fail_after(STARTS):
        async with open_pool(config, settings=settings) as pool:
            end = await ask(pool, "cli:1", "[say] hello from codex, through the broker")
    assert (end.outcome, end.text) == (Outcome.COMPLETED, "hello from codex, through the broker")
    assert "authenticated with method openai-api-key" in [r.getMessage() for r in caplog.records]
    posts = [r for r in codex.api.requests if r.method == "POST"]
    assert posts and all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in posts)


async def test_a_tool_call_asks_permission_and_the_policy_decides(codex: Codex) -> None:
    config, settings = codex.setup(permissions={"by_kind": {"execute": "allow_once"}})
    with trio.fail_after(STARTS):
        async with open_pool(config, settings=settings) as pool:
            allowed = await ask(pool, "cli:1", "[exec]")
    assert allowed.outcome is Outcome.COMPLETED, allowed
    assert (codex.cwd / "made-by-codex.txt").read_text() == "ran\n"
    assert "done" in allowed.text and codex.model.outputs


async def test_a_refused_tool_does_not_run_and_the_reply_names_it_and_the_rule(
    codex: Codex,
) -> None:
    config, settings = codex.setup(permissions={"by_kind": {"execute": "reject"}})
    with trio.fail_after(STARTS):
        async with open_pool(config, settings=settings) as pool:
            refused = await ask(pool, "cli:1", "[exec]")
    # codex ends the turn with stopReason cancelled; the reply still says what happened
    assert (refused.outcome, refused.stop_reason) == (Outcome.CANCELLED, "cancelled")
    assert not (codex.cwd / "made-by-codex.txt").exists()
    assert 'by_kind.execute = "reject"' in refused.reason, refused
    assert "made-by-codex.txt" in refused.reason


async def test_cancel_stops_a_streaming_turn_and_the_next_prompt_gets_its_own_reply(
    codex: Codex,
) -> None:
    config, settings = codex.setup()
    with trio.fail_after(STARTS):
        async with open_pool(config, settings=settings) as pool:
            handle = pool.submit("cli:1", Prompt("[slow]"))
            while "tick" not in handle.transcript.text:
                await handle.wait_changed(handle.transcript.version)
            assert await pool.cancel("cli:1")
            cancelled = await handle.result()
            assert cancelled.outcome is Outcome.CANCELLED
            assert 0 < len(cancelled.text) < len("tick " * 1200)
            for text in ("first after the cancel", "second after the cancel"):
                end = await ask(pool, "cli:1", f"[say] {text}")
                assert (end.outcome, end.text) == (Outcome.COMPLETED, text)
            assert pool.counters.spawned == 1  # restart_after_cancel is off: the same agent


async def test_a_thread_resumes_after_a_broker_restart_with_its_history(codex: Codex) -> None:
    config, settings = codex.setup()
    with trio.fail_after(2 * STARTS):
        async with open_store(config.state.path) as store:
            async with open_pool(config, store=store, settings=settings) as pool:
                assert (await ask(pool, "cli:1", "[say] alpha")).text == "alpha"
        async with open_store(config.state.path) as store:  # the next broker
            async with open_pool(config, store=store, settings=settings) as pool:
                back = pool.submit("cli:1", Prompt("[say] beta"))
                end = await back.result()
                assert (end.outcome, end.text) == (Outcome.COMPLETED, "beta")
                assert not back.transcript.context_reset
                assert pool.counters.resumed == 1
    history = str(codex.api.response_requests()[-1]["input"])
    assert "alpha" in history, "the resumed session carries the earlier turn"
