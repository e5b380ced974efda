"""An in-process ACP agent behind the session's transport seam, for timing tests.

:class:`MemoryTransport` is a :class:`~broker.sessions.session.RunAgent`: put it
in :class:`~broker.sessions.session.SessionSettings` (``run_agent=``) and every
agent the pool starts is a :class:`MemoryAgent` task speaking real ACP JSON
lines over in-memory channels to the broker's real :class:`~broker.acp.AcpClient`.
No process, no thread and no file is involved, so pool and session tests can
run under trio's ``autojump_clock`` and assert exact virtual times; the
subprocess fake agent (:mod:`broker.testing.fake_agent`) stays the
integration layer.

Prompts are scripted with the fake agent's directives
(:mod:`broker.testing.fake_agent_script`); this agent understands ``@say``,
``@delay``, ``@tool`` (and the tool a prompt without directives gets),
``@silent-tool``, ``@crash``, ``@hang`` / ``@hang-hard``, ``@reply``,
``@chunks``, ``@late``, ``@stop`` and ``@error``. A ``@crash`` ends the agent
as a process exit would (stdout closes, the exit status is the code); a stop
is a SIGTERM the agent does not survive. Each agent keeps a log of what it
received and when (:attr:`MemoryAgent.received`) and the content blocks of
every prompt (:attr:`MemoryAgent.prompts`).
"""

from __future__ import annotations

import itertools
import json
import math
import signal
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from broker.testing import fake_agent_script as fs
from supervisor.process import ChildSpec, ExitStatus

JSON = Any
_pids = itertools.count(900_001)


@attrs.frozen
class MemoryAgentOptions:
    """How every agent of a :class:`MemoryTransport` behaves."""

    init_delay: float = 0.0  # seconds before answering initialize
    crash_on_start: int | None = None  # exit with this code right after starting
    load_session: bool = True
    images: bool = False  # advertise image prompts
    message_ids: bool = False  # tag agent_message_chunks with an ACP messageId per turn


class MemoryAgent:
    """One in-process agent; the :class:`~broker.sessions.session.AgentProcess` a
    session sees."""

    def __init__(self, options: MemoryAgentOptions) -> None:
        self.options = options
        self.pid = next(_pids)
        self.pgid = self.pid
        self.started_at = trio.current_time()
        self.exit_status: ExitStatus | None = None
        self.exited = trio.Event()
        self.received: list[tuple[float, str]] = []  # (virtual time, method) in arrival order
        self.prompts: list[list[JSON]] = []  # each session/prompt's content blocks, in order
        self._stdin_send, self._stdin = trio.open_memory_channel[bytes](math.inf)
        self._stdout, self._stdout_receive = trio.open_memory_channel[bytes](math.inf)
        self._stderr: list[str] = []
        self._sessions = itertools.count(1)
        self._turns = itertools.count(1)
        self._tools = itertools.count(1)
        self._prompt_scope: trio.CancelScope | None = None
        self._ignore_cancel = False
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    def __repr__(self) -> str:
        return f"<MemoryAgent pid={self.pid} {self.exit_status or 'running'}>"

    # -- the process side (AgentProcess) --------------------------------------------------

    async def send(self, data: bytes) -> None:
        if self.exit_status is not None:
            raise trio.BrokenResourceError("the agent exited")
        await self._stdin_send.send(data)

    async def stdout_lines(self) -> AsyncIterator[bytes]:
        async for line in self._stdout_receive:
            yield line

    def stderr_tail(self, max_chars: int = 2000) -> str:
        return "\n".join(self._stderr)[-max_chars:] if max_chars > 0 else ""

    async def stop(self, grace: float) -> ExitStatus:
        """A SIGTERM the agent does not survive; returns at once."""
        self.exit(ExitStatus(returncode=None, signal=signal.SIGTERM))
        await trio.lowlevel.checkpoint()
        assert self.exit_status is not None
        return self.exit_status

    def exit(self, status: ExitStatus) -> None:
        """End the agent now, as its process exiting would."""
        if self.exit_status is not None:
            return
        self.exit_status = status
        self._stdout.close()
        self._scope.cancel()
        self.exited.set()

    # -- the agent side ---------------------------------------------------------------------

    def log(self, line: str) -> None:
        self._stderr.append(line)

    async def serve(self) -> None:
        """Read requests until the agent exits; each request in its own task."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                buffer = b""
                async for data in self._stdin:
                    buffer += data
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._dispatch(json.loads(line), nursery)

    def _dispatch(self, message: JSON, nursery: trio.Nursery) -> None:
        method = message.get("method")
        if method is None:
            return  # a response: this agent asks nothing
        self.received.append((trio.current_time(), method))
        if "id" not in message:
            if method == "session/cancel" and self._prompt_scope and not self._ignore_cancel:
                self._prompt_scope.cancel()
            return
        nursery.start_soon(self._answer, message["id"], method, message.get("params") or {})

    async def _write(self, message: JSON) -> None:
        if self.exit_status is None:
            await self._stdout.send(json.dumps(message).encode())

    async def _answer(self, request_id: JSON, method: str, params: JSON) -> None:
        result: JSON
        if method == "initialize":
            await trio.sleep(self.options.init_delay)
            result = {
                "protocolVersion": 1,
                "agentCapabilities": {
                    "loadSession": self.options.load_session,
                    "promptCapabilities": {"image": self.options.images},
                },
                "authMethods": [],
            }
        elif method == "session/new":
            result = {"sessionId": f"mem-{self.pid}-{next(self._sessions)}"}
        elif method == "session/load" and self.options.load_session:
            result = None
        elif method == "session/prompt":
            try:
                result = await self._prompt(params)
            except _Failed as failed:
                error = {"code": failed.code, "message": failed.message}
                await self._write({"jsonrpc": "2.0", "id": request_id, "error": error})
                return
            if result is None:
                return  # crashed
        else:
            error = {"code": -32601, "message": f"method not found: {method}"}
            await self._write({"jsonrpc": "2.0", "id": request_id, "error": error})
            return
        await self._write({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def _tool(self, session_id: str, title: str, secs: float, kind: str, fail: bool) -> None:
        """A visible tool call (a prompt without directives has one): start, ``secs``, end."""
        call_id = f"tool-{next(self._tools)}"
        start = {"sessionUpdate": "tool_call", "toolCallId": call_id, "title": title}
        await self._update(session_id, {**start, "kind": kind, "status": "in_progress"})
        await trio.sleep(secs)
        status = "failed" if fail else "completed"
        await self._update(
            session_id,
            {"sessionUpdate": "tool_call_update", "toolCallId": call_id, "status": status},
        )

    async def _update(self, session_id: str, update: JSON) -> None:
        params = {"sessionId": session_id, "update": update}
        await self._write({"jsonrpc": "2.0", "method": "session/update", "params": params})

    async def _chunk(self, session_id: str, text: str, message_id: str | None) -> None:
        update: dict[str, JSON] = {
            "sessionUpdate": "agent_message_chunk",
            "content": {"type": "text", "text": text},
        }
        if message_id is not None:
            update["messageId"] = message_id
        await self._update(session_id, update)

    async def _prompt(self, params: JSON) -> JSON:
        session_id = params["sessionId"]
        self.prompts.append(params["prompt"])
        text = "\n".join(b.get("text", "") for b in params["prompt"] if b.get("type") == "text")
        script = fs.parse_script(text)
        turn = next(self._turns)
        message_id = f"msg-{turn}" if self.options.message_ids else None
        late: list[str] = []
        with trio.CancelScope() as scope:
            self._prompt_scope, self._ignore_cancel = scope, False
            for action in script.actions:
                match action:
                    case fs.Say(said):
                        await self._chunk(session_id, said, message_id)
                    case fs.Delay(secs) | fs.SilentTool(secs):
                        await trio.sleep(secs)
                    case fs.Tool(title, secs, kind, fail):
                        await self._tool(session_id, title, secs, kind, fail)
                    case fs.Crash(code):
                        self.log(f"fatal: simulated crash (exit code {code})")
                        self.exit(ExitStatus(returncode=code, signal=None))
                        return None
                    case fs.Hang(hard):
                        self._ignore_cancel = hard
                        await trio.sleep_forever()
                    case _:
                        raise NotImplementedError(f"the memory agent does not do {action!r}")
            reply = script.reply if script.reply is not None else f"echo: {script.message}"
            chunks = fs.split_text(reply, script.chunks)
            if script.late_ms is not None:
                keep = min(script.late_chunks, len(chunks))
                chunks, late = chunks[: len(chunks) - keep], chunks[len(chunks) - keep :]
            for chunk in chunks:
                await self._chunk(session_id, chunk, message_id)
        self._prompt_scope = None
        if scope.cancelled_caught:
            return {"stopReason": "cancelled"}
        if script.error is not None:
            raise _Failed(script.error.code, script.error.message)
        if late:
            assert self._nursery is not None
            self._nursery.start_soon(
                self._send_late, session_id, late, (script.late_ms or 0) / 1000, message_id
            )
        return {"stopReason": script.stop_reason}

    async def _send_late(
        self, session_id: str, chunks: list[str], delay: float, message_id: str | None
    ) -> None:
        await trio.sleep(delay)
        for chunk in chunks:
            await self._chunk(session_id, chunk, message_id)


class _Failed(Exception):
    """``@error CODE MESSAGE``: the prompt is answered with this JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MemoryTransport:
    """Starts :class:`MemoryAgent` s in place of processes; keeps every one it started.
    Each start reads :attr:`options` then, so a test may change them between starts."""

    def __init__(self, options: MemoryAgentOptions | None = None) -> None:
        self.options = options or MemoryAgentOptions()
        self.agents: list[MemoryAgent] = []

    async def __call__(
        self,
        spec: ChildSpec,
        *,
        stop_grace: float,
        task_status: trio.TaskStatus[MemoryAgent] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        agent = MemoryAgent(self.options)
        self.agents.append(agent)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve)
            try:
                task_status.started(agent)
                if self.options.crash_on_start is not None:
                    agent.log(f"fatal: simulated crash on start ({self.options.crash_on_start})")
                    agent.exit(ExitStatus(returncode=self.options.crash_on_start, signal=None))
                await agent.exited.wait()
            finally:
                agent.exit(ExitStatus(returncode=None, signal=signal.SIGTERM))
            nursery.cancel_scope.cancel()
        assert agent.exit_status is not None
        return agent.exit_status
