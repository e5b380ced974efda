"""An ACP agent built on the official Python SDK that checks everything a client sends.

Run as a program (``python tests/interop/sdk_agent.py --record FILE --state DIR``);
it speaks ACP on stdin/stdout through the SDK (``acp.run_agent``)
and logs to stderr. It imports nothing from the broker.

Every incoming message is checked before the SDK sees it
(:class:`CheckingTransport`): the JSON-RPC envelope
(:func:`envelope_problems`), then the params of the methods below with the
SDK's pydantic models in *strict* mode and a round trip
(:func:`params_problems`: the validated model dumped back by alias must
equal what was sent), which catches unknown or misspelt keys, snake_case
aliases and values the SDK's lenient parsing would silently replace:

* requests ``initialize``, ``session/new``, ``session/load``,
  ``session/prompt``, ``session/set_mode``, ``authenticate``;
* the notification ``session/cancel``;
* the client's answers to ``session/request_permission``.

A request that fails the check is answered with JSON-RPC error -32602 whose
``data.problems`` lists what is wrong, and never reaches the agent; anything
else that fails is reported on stderr. Every message in both directions is
appended to the ``--record`` file as one JSON line ``{"dir": "in"|"out",
"message": ..., "problems": [...]}``. At EOF on stdin the agent exits with
status 3 if any problem was seen, else 0.

Behaviour, chosen by words in the prompt text:

* default: streams ``echo: <text>`` as several ``agent_message_chunk``\\ s,
  followed by ``[<kinds>]`` naming the non-text blocks of the prompt;
* ``slow``: streams ``tick N`` every 50 ms until ``session/cancel`` arrives
  (then stop reason ``cancelled``), at most 60 s;
* ``permission``: starts a tool call, asks ``session/request_permission``
  (allow once / reject once), completes or fails the tool call accordingly
  and says ``permission: <optionId or cancelled>``.

It advertises images and embedded context but not audio. A prompt block
the capabilities do not allow, and a ``session/cancel`` or
``session/prompt`` naming a session this process does not know, are
problems too (recorded as ``{"dir": "note", ...}``).

Sessions (cwd and history) are saved as JSON in ``--state`` so that
``session/load`` works after a restart; it replays the history as
``user_message_chunk`` / ``agent_message_chunk`` updates before answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import pydantic
from acp import PROTOCOL_VERSION, RequestError, run_agent
from acp.agent.connection import AgentSideConnection
from acp.helpers import (
    start_tool_call,
    update_agent_message_text,
    update_tool_call,
    update_user_message_text,
)
from acp.interfaces import Agent
from acp.schema import (
    AgentCapabilities,
    AllowedOutcome,
    AuthenticateRequest,
    CancelNotification,
    Implementation,
    InitializeRequest,
    InitializeResponse,
    LoadSessionRequest,
    LoadSessionResponse,
    NewSessionRequest,
    NewSessionResponse,
    PermissionOption,
    PromptCapabilities,
    PromptRequest,
    PromptResponse,
    RequestPermissionResponse,
    SetSessionModeRequest,
)
from acp.stdio import stdio_streams

log = logging.getLogger("sdk_agent")

REQUEST_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "initialize": InitializeRequest,
    "authenticate": AuthenticateRequest,
    "session/new": NewSessionRequest,
    "session/load": LoadSessionRequest,
    "session/prompt": PromptRequest,
    "session/set_mode": SetSessionModeRequest,
}
NOTIFICATION_MODELS: dict[str, type[pydantic.BaseModel]] = {"session/cancel": CancelNotification}
ANSWER_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "session/request_permission": RequestPermissionResponse,
}
# Content block types the initialize answer allows in prompts (audio is not advertised).
ADVERTISED_BLOCKS = {"text", "resource_link", "image", "resource"}
SLOW_TICK_SECS = 0.05
SLOW_LIMIT_SECS = 60.0


# --- checking -------------------------------------------------------------------------------


def _differences(sent: Any, kept: Any, path: str) -> list[str]:
    """Where ``kept`` (the validated model dumped back) differs from ``sent``."""
    if isinstance(sent, dict) and isinstance(kept, dict):
        out = [
            f"{path}.{k}: not a field of the schema (or its value was dropped)"
            for k in sent
            if k not in kept
        ]
        out += [f"{path}.{k}: added by validation" for k in kept if k not in sent]
        for key in sent.keys() & kept.keys():
            out += _differences(sent[key], kept[key], f"{path}.{key}")
        return out
    if isinstance(sent, list) and isinstance(kept, list) and len(sent) == len(kept):
        return [
            p
            for i, (s, k) in enumerate(zip(sent, kept, strict=True))
            for p in _differences(s, k, f"{path}[{i}]")
        ]
    if sent != kept or type(sent) is not type(kept):
        return [f"{path}: sent {sent!r}, the schema reads it as {kept!r}"]
    return []


def params_problems(model: type[pydantic.BaseModel], params: Any) -> list[str]:
    """Strict validation of ``params`` against ``model`` plus a lossless round trip."""
    try:
        parsed = model.model_validate_json(json.dumps(params), strict=True)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or '<params>'}: {e['msg']}" for e in exc.errors()]
    kept = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return _differences(params, kept, "params")


def envelope_problems(message: Any) -> list[str]:
    """JSON-RPC 2.0 envelope rules for one decoded line."""
    if not isinstance(message, dict):
        return [f"a message must be a JSON object, got {type(message).__name__}"]
    problems = []
    if message.get("jsonrpc") != "2.0":
        problems.append(f"jsonrpc must be '2.0', got {message.get('jsonrpc')!r}")
    if "id" in message and (
        isinstance(message["id"], bool) or not isinstance(message["id"], (int, str))
    ):
        problems.append(f"id must be a number or a string, got {message['id']!r}")
    if "method" in message:
        if not isinstance(message["method"], str):
            problems.append("method must be a string")
        if "params" in message and not isinstance(message["params"], (dict, list)):
            problems.append("params must be an object or an array")
        if "result" in message or "error" in message:
            problems.append("a request must not carry result or error")
    elif ("result" in message) == ("error" in message):
        problems.append("a response needs exactly one of result and error")
    elif "id" not in message:
        problems.append("a response needs an id")
    return problems


class CheckingTransport:
    """An ``acp`` Transport over stdio that checks and records each message.

    ``receive`` returns only messages that passed :func:`envelope_problems`
    and, for known methods, :func:`params_problems`; invalid requests are
    answered here with -32602 and skipped. Our own requests' ids are
    remembered so the client's answers are checked against the right model.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: Path
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._record = record.open("a", encoding="utf-8")
        self._lock = asyncio.Lock()
        self._asked: dict[Any, str] = {}
        self.problem_count = 0

    def note(self, problem: str) -> None:
        """Record a problem found by the agent itself (not by the schema check)."""
        self.problem_count += 1
        log.error("INVALID: %s", problem)
        self._log("note", None, [problem])

    def _log(self, direction: str, message: Any, problems: list[str]) -> None:
        self._record.write(
            json.dumps({"dir": direction, "message": message, "problems": problems}) + "\n"
        )
        self._record.flush()

    async def send(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            self._asked[message["id"]] = message["method"]
        self._log("out", message, [])
        async with self._lock:
            self._writer.write(json.dumps(message).encode() + b"\n")
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        while True:
            line = await self._reader.readline()
            if not line:
                return None
            if not line.strip():
                continue
            message, problems = self._check(line)
            self._log("in", message, problems)
            if not problems:
                assert isinstance(message, dict)
                return message
            self.problem_count += 1
            log.error("INVALID message from the client: %s: %s", problems, line[:2000])
            if isinstance(message, dict) and "method" in message and "id" in message:
                await self.send(
                    {
                        "jsonrpc": "2.0",
                        "id": message["id"],
                        "error": {
                            "code": -32602,
                            "message": "Invalid params (strict check)",
                            "data": {"problems": problems},
                        },
                    }
                )

    def _check(self, line: bytes) -> tuple[Any, list[str]]:
        try:
            message = json.loads(line)
        except ValueError as exc:
            return line.decode("utf-8", "replace"), [f"not JSON: {exc}"]
        problems = envelope_problems(message)
        if problems:
            return message, problems
        method = message.get("method")
        if method is not None:
            model = (
                REQUEST_MODELS.get(method) if "id" in message else NOTIFICATION_MODELS.get(method)
            )
            if model is None and not method.startswith("_"):
                return message, [f"unknown method {method!r}"]
        else:
            if message["id"] not in self._asked:
                return message, [f"an answer to id {message['id']!r}, which was never asked"]
            model = ANSWER_MODELS.get(self._asked.pop(message["id"]))
            if "error" in message:
                model = None
        if model is not None:
            return message, params_problems(model, message.get("params", message.get("result")))
        return message, []

    async def close(self) -> None:
        self._record.close()


# --- the agent ------------------------------------------------------------------------------


class Session:
    def __init__(self, path: Path, cwd: str, history: list[dict[str, str]]) -> None:
        self.path = path
        self.cwd = cwd
        self.history = history
        self.cancelled = asyncio.Event()

    def add(self, role: str, text: str) -> None:
        self.history.append({"role": role, "text": text})
        self.path.write_text(json.dumps({"cwd": self.cwd, "history": self.history}))


class CheckingAgent:
    """The agent behind the checks: see the module docstring for behaviour."""

    def __init__(self, state: Path, transport: CheckingTransport) -> None:
        self.state = state
        self.transport = transport
        self.sessions: dict[str, Session] = {}
        self.conn: AgentSideConnection | None = None

    def on_connect(self, conn: AgentSideConnection) -> None:
        self.conn = conn

    def _client(self) -> AgentSideConnection:
        assert self.conn is not None
        return self.conn

    def _session(self, session_id: str) -> Session:
        if session_id not in self.sessions:
            self.transport.note(f"session/prompt for an unknown session {session_id}")
            raise RequestError.invalid_params({"sessionId": session_id, "why": "unknown session"})
        return self.sessions[session_id]

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: Any = None,
        client_info: Any = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        return InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(image=True, embedded_context=True),
            ),
            agent_info=Implementation(
                name="sdk-interop-agent", version=version("agent-client-protocol")
            ),
            auth_methods=[],
        )

    async def new_session(
        self, cwd: str, mcp_servers: Any = None, **kwargs: Any
    ) -> NewSessionResponse:
        session_id = f"sdk-{uuid.uuid4().hex}"
        session = Session(self.state / f"{session_id}.json", cwd, [])
        session.path.write_text(json.dumps({"cwd": cwd, "history": []}))
        self.sessions[session_id] = session
        return NewSessionResponse(session_id=session_id)

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: Any = None, **kwargs: Any
    ) -> LoadSessionResponse:
        path = self.state / f"{session_id}.json"
        if not path.is_file():
            raise RequestError.resource_not_found(session_id)
        saved = json.loads(path.read_text())
        session = Session(path, cwd, saved["history"])
        self.sessions[session_id] = session
        for entry in session.history:
            update = (
                update_user_message_text(entry["text"])
                if entry["role"] == "user"
                else update_agent_message_text(entry["text"])
            )
            await self._client().session_update(session_id=session_id, update=update)
        return LoadSessionResponse()

    async def authenticate(self, method_id: str, **kwargs: Any) -> None:
        raise RequestError.invalid_params({"methodId": method_id, "why": "no auth methods"})

    async def set_session_mode(self, session_id: str, mode_id: str, **kwargs: Any) -> None:
        raise RequestError.invalid_params({"modeId": mode_id, "why": "this agent has no modes"})

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        if session_id not in self.sessions:
            self.transport.note(f"session/cancel for an unknown session {session_id}")
            return
        self.sessions[session_id].cancelled.set()

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        session = self._session(session_id)
        session.cancelled = asyncio.Event()
        text = " ".join(b.text for b in prompt if b.type == "text")
        kinds = [b.type for b in prompt if b.type != "text"]
        for kind in set(kinds) - ADVERTISED_BLOCKS:
            self.transport.note(f"session/prompt with a {kind} block, which is not advertised")
        session.add("user", text)
        if "permission" in text:
            reply = await self._with_permission(session_id, session)
        elif "slow" in text:
            reply = await self._slow(session_id, session)
        else:
            listed = f" [{' '.join(kinds)}]" if kinds else ""
            reply = await self._stream(session_id, f"echo: {text}{listed}")
        session.add("agent", reply)
        return PromptResponse(stop_reason="cancelled" if session.cancelled.is_set() else "end_turn")

    async def _say(self, session_id: str, text: str) -> None:
        await self._client().session_update(
            session_id=session_id, update=update_agent_message_text(text)
        )

    async def _stream(self, session_id: str, reply: str) -> str:
        words = reply.split(" ")
        for i, word in enumerate(words):
            await self._say(session_id, word if i == len(words) - 1 else word + " ")
        return reply

    async def _slow(self, session_id: str, session: Session) -> str:
        sent: list[str] = []
        deadline = asyncio.get_running_loop().time() + SLOW_LIMIT_SECS
        while not session.cancelled.is_set() and asyncio.get_running_loop().time() < deadline:
            sent.append(f"tick {len(sent)} ")
            await self._say(session_id, sent[-1])
            try:
                await asyncio.wait_for(session.cancelled.wait(), SLOW_TICK_SECS)
            except TimeoutError:
                pass
        return "".join(sent)

    async def _with_permission(self, session_id: str, session: Session) -> str:
        client = self._client()
        call_id = f"call-{uuid.uuid4().hex[:8]}"
        await client.session_update(
            session_id=session_id,
            update=start_tool_call(
                call_id, "Touch a file", kind="edit", status="pending", raw_input={"path": "x"}
            ),
        )
        options = [
            PermissionOption(option_id="yes", name="Allow", kind="allow_once"),
            PermissionOption(option_id="no", name="Reject", kind="reject_once"),
        ]
        answer = await client.request_permission(
            session_id=session_id,
            options=options,
            tool_call=update_tool_call(call_id, title="Touch a file", status="pending"),
        )
        outcome = answer.outcome
        chosen = outcome.option_id if isinstance(outcome, AllowedOutcome) else "cancelled"
        if chosen == "cancelled":  # only a session/cancel makes a client answer so
            session.cancelled.set()
        update = update_tool_call(call_id, status="completed" if chosen == "yes" else "failed")
        await client.session_update(session_id=session_id, update=update)
        reply = f"permission: {chosen}"
        await self._say(session_id, reply)
        return reply


async def amain(record: Path, state: Path) -> int:
    state.mkdir(parents=True, exist_ok=True)
    reader, writer = await stdio_streams(limit=64 * 1024 * 1024)
    transport = CheckingTransport(reader, writer, record)
    agent = CheckingAgent(state, transport)
    # Methods the agent lacks (fork, resume, ...) are answered -32601 by the SDK's router.
    await run_agent(cast(Agent, agent), transport)
    if transport.problem_count:
        log.error("exiting with status 3: %d invalid message(s) received", transport.problem_count)
        return 3
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", type=Path, required=True, help="JSON lines log of messages")
    parser.add_argument("--state", type=Path, required=True, help="directory for sessions")
    args = parser.parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="sdk_agent %(levelname)s %(message)s"
    )
    sys.exit(asyncio.run(amain(args.record, args.state)))


if __name__ == "__main__":
    main()
