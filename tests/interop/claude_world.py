"""The private world a claude-agent-acp test runs in: HOME, working dir, fake model.

:class:`ScriptedModel` decides the fake Anthropic API's replies from a
marker in the user's text; :class:`Claude` holds one test's paths, the fake
API and the agent's entry point, and builds the agent's exact environment.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.acp.client import ClientOptions
from supervisor.process import ChildSpec

from .fake_anthropic import (
    FakeAnthropic,
    ModelReply,
    Text,
    Thinking,
    ToolUse,
    last_user_text,
    text_reply,
    tool_results,
)
from .harness import RunningAgent, exact_env, running_agent

HELLO = "Hello from the fake model, streamed in several pieces."
WRITTEN = "written by the agent\n"
THOUGHT = "The user wants a greeting; keep it short."
COMMAND = "echo ran > bash.txt"


@attrs.define
class ScriptedModel:
    """Decides the fake model's replies from the last marker in the newest user text.

    ``[hello]``: :data:`HELLO`; ``[say] X``: ``X``; ``[write]``: a ``Write``
    tool_use creating ``out.txt`` in ``cwd``, then (on the tool result) a text
    quoting the result; ``[bash]``: a ``Bash`` tool_use running :data:`COMMAND`
    (which would create ``bash.txt``), then the same; ``[slow]``: 30 s of text in
    5-character deltas every 50 ms; ``[think]``: a thinking block
    (:data:`THOUGHT`), then :data:`HELLO`. Requests without tools (the agent's
    side calls) get a short text.
    """

    cwd: Path
    tool_result_texts: list[str] = attrs.field(factory=list)

    def __call__(self, request: dict[str, Any]) -> ModelReply:
        if not request.get("tools"):
            return text_reply("ok")
        results = tool_results(request)
        if results:
            said = _result_text(results[0])
            self.tool_result_texts.append(said)
            return text_reply(f"The tool said: {said}")
        text = last_user_text(request)
        marker = max(("[hello]", "[say]", "[write]", "[bash]", "[slow]", "[think]"), key=text.rfind)
        if marker == "[write]":
            write = ToolUse("Write", {"file_path": str(self.cwd / "out.txt"), "content": WRITTEN})
            return ModelReply(blocks=(Text("Writing the file."), write), stop_reason="tool_use")
        if marker == "[bash]":
            bash = ToolUse("Bash", {"command": COMMAND, "description": "Create bash.txt"})
            return ModelReply(blocks=(Text("Running it."), bash), stop_reason="tool_use")
        if marker == "[think]":
            return ModelReply(blocks=(Thinking(THOUGHT), Text(HELLO)), chunk_size=8)
        if marker == "[slow]":
            return ModelReply(blocks=(Text("z" * 3000),), chunk_size=5, chunk_delay=0.05)
        if marker == "[say]":
            return text_reply(text[text.rfind("[say]") + 5 :].strip())
        if marker == "[hello]" and marker in text:
            return text_reply(HELLO, chunk_size=8)
        raise AssertionError(f"the script has no reply for {text[-200:]!r}")


def _result_text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content)
    return str(content)


@attrs.frozen
class Claude:
    """One test's private world: HOME, working dir, fake API, agent entry."""

    home: Path
    cwd: Path
    api: FakeAnthropic
    model: ScriptedModel
    entry: Path

    def spec(self) -> ChildSpec:
        return ChildSpec(
            argv=("node", str(self.entry)),
            env=self.env(),
            cwd=str(self.cwd),
            name="claude-agent-acp",
        )

    def options(self, **kwargs: Any) -> ClientOptions:
        return ClientOptions(cwd=str(self.cwd), **kwargs)

    def env(self) -> dict[str, str]:
        """The agent's complete environment: PATH, the private HOME, the fake API."""
        return exact_env(
            HOME=str(self.home),
            ANTHROPIC_BASE_URL=self.api.base_url,
            ANTHROPIC_API_KEY="fake",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_AUTOUPDATER="1",
        )

    def agent(self, **kwargs: Any) -> AbstractAsyncContextManager[RunningAgent]:
        """``async with claude.agent(...) as agent``: the agent with a client attached."""
        return running_agent(self.spec(), self.options(**kwargs))

    def assert_only_known_endpoints(self) -> None:
        unknown = [(r.method, r.path) for r in self.api.unknown]
        assert unknown == [], f"the agent called endpoints the fake does not know: {unknown}"
        assert self.api.errors == [], self.api.errors

    def transcript(self, session_id: str) -> list[dict[str, Any]]:
        """The agent's saved session: ``$HOME/.claude/projects/*/<id>.jsonl`` entries."""
        entries = []
        for path in (self.home / ".claude" / "projects").glob(f"*/{session_id}.jsonl"):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line]
        return entries

    async def saved_reply(self, session_id: str, text: str) -> None:
        """Wait (unbounded: wrap it) until an assistant entry with ``text`` is saved.

        There is no event for a file append, so this re-reads every 10 ms.
        """

        def saved() -> bool:
            return any(
                e.get("type") == "assistant" and text in json.dumps(e.get("message"))
                for e in self.transcript(session_id)
            )

        while not saved():
            await trio.sleep(0.01)
