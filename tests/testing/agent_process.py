"""A minimal raw-JSON-lines driver for the fake agent subprocess, used by these tests only.

It deliberately does not use the broker's ACP client: it writes JSON lines to the agent's stdin
and records every stdout line (parsed JSON, or the raw bytes of a non-JSON line) in arrival order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

Message = dict[str, Any]


def is_text_chunk(text: str) -> Callable[[Message | bytes], bool]:
    """A predicate for an agent_message_chunk whose text contains ``text``."""

    def match(m: Message | bytes) -> bool:
        return (
            isinstance(m, dict)
            and m.get("method") == "session/update"
            and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            and text in m["params"]["update"]["content"]["text"]
        )

    return match


class AgentProcess:
    """One running fake agent; ``messages`` holds stdout in order (dicts, or bytes if not JSON)."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.messages: list[Message | bytes] = []
        self.line_sizes: list[int] = []  # byte length of each stdout line, newline excluded
        self.stderr = bytearray()
        self._changed = trio.Event()
        self._next_id = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while data := await self.process.stdout.receive_some(1 << 20):
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                self.line_sizes.append(len(line))
                try:
                    self.messages.append(json.loads(line))
                except ValueError:
                    self.messages.append(line)
            self._changed.set()
            self._changed = trio.Event()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while data := await self.process.stderr.receive_some(1 << 16):
            self.stderr += data
            self._changed.set()
            self._changed = trio.Event()

    async def send(self, message: Message) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(json.dumps(message).encode() + b"\n")

    async def notify(self, method: str, params: Message) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def start_request(self, method: str, params: Message) -> int:
        """Send a request and return its id without waiting for the answer."""
        self._next_id += 1
        await self.send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    async def wait_for(self, predicate: Callable[[Message | bytes], bool]) -> Message | bytes:
        """The first received message satisfying ``predicate``, waiting for it if need be."""
        seen = 0
        while True:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            await self._changed.wait()

    async def wait_for_stderr(self, text: str) -> None:
        while text.encode() not in self.stderr:
            await self._changed.wait()

    async def response(self, request_id: int) -> Message:
        message = await self.wait_for(
            lambda m: isinstance(m, dict) and m.get("id") == request_id and "method" not in m
        )
        assert isinstance(message, dict)
        return message

    async def request(self, method: str, params: Message) -> Any:
        """Send a request and return its ``result``; fail the test on an error response."""
        answer = await self.response(await self.start_request(method, params))
        assert "error" not in answer, answer
        return answer["result"]

    async def new_session(self) -> str:
        await self.request("initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        result = await self.request("session/new", {"cwd": os.getcwd(), "mcpServers": []})
        return str(result["sessionId"])

    async def prompt_until_text(self, session_id: str, text: str, marker: str) -> int:
        """Start a prompt and wait until an agent_message_chunk containing ``marker`` arrives."""
        request = await self.prompt(session_id, text)
        await self.wait_for(is_text_chunk(marker))
        return request

    async def prompt(self, session_id: str, text: str) -> int:
        return await self.start_request(
            "session/prompt", {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}
        )

    def updates(self, kind: str, before: int | None = None) -> list[Message]:
        """session/update payloads of ``kind`` (among the first ``before`` messages)."""
        return [
            m["params"]["update"]
            for m in self.messages[:before]
            if isinstance(m, dict)
            and m.get("method") == "session/update"
            and m["params"]["update"]["sessionUpdate"] == kind
        ]

    def text(self, before: int | None = None) -> str:
        return "".join(u["content"]["text"] for u in self.updates("agent_message_chunk", before))

    def index_of_response(self, request_id: int) -> int:
        return next(
            i
            for i, m in enumerate(self.messages)
            if isinstance(m, dict) and m.get("id") == request_id and "method" not in m
        )

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()


@asynccontextmanager
async def open_agent(state_dir: Path, *flags: str) -> AsyncIterator[AgentProcess]:
    """Start ``python -m broker.testing.fake_agent`` with ``flags`` in its own process group;
    on the way out SIGKILL the whole group, so grandchildren die too."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker.testing.fake_agent", "--state-dir", str(state_dir), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    agent = AgentProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent._read_stdout)
            nursery.start_soon(agent._read_stderr)
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5) as cleanup:
            cleanup.shield = True
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


@asynccontextmanager
async def open_session(state_dir: Path, *flags: str) -> AsyncIterator[tuple[AgentProcess, str]]:
    """:func:`open_agent`, initialized, with one new session: yields ``(agent, session_id)``."""
    async with open_agent(state_dir, *flags) as agent:
        yield agent, await agent.new_session()
