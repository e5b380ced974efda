"""A fake Anthropic Messages API on loopback, for driving real agents offline.

:class:`FakeAnthropic` is a small HTTP/1.1 server (trio + h11) that answers
``POST /v1/messages`` with whatever a test's *responder* decides: a
:class:`ModelReply` made of text and ``tool_use`` blocks, streamed as
server-sent events as the real API frames them (``message_start``,
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per
block, ``message_delta`` with the stop reason, ``message_stop``), or as one
JSON body when the request does not ask for a stream. A reply can stream
slowly (``chunk_delay``) so that a test can cancel in the middle of it.

It also answers ``POST /v1/messages/count_tokens``, ``GET /v1/models`` and
``HEAD /`` (a reachability probe).
Every request is recorded (:attr:`FakeAnthropic.requests`); a request for any
other endpoint is logged, recorded in :attr:`FakeAnthropic.unknown` and
answered ``404`` with an API-shaped error body, so a test sees what an agent
asked for instead of hanging on it.

Each connection is served in its own task; a client that drops a stream
half-way (an agent interrupting a turn) only ends that connection and is
counted in :attr:`FakeAnthropic.aborted_streams`.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import h11
import trio

from .fake_http import FakeHttpServer, RecordedRequest, send, send_json

log = logging.getLogger(__name__)

MODEL = "claude-sonnet-4-5"
_ids = itertools.count(1)


@attrs.frozen
class Text:
    """A text content block, streamed in ``chunk_size`` character pieces."""

    text: str


@attrs.frozen
class Thinking:
    """A ``thinking`` content block (extended thinking), streamed like text,
    then closed with a ``signature_delta``."""

    thinking: str
    signature: str = "fake-signature"


@attrs.frozen
class ToolUse:
    """A ``tool_use`` content block: the model asks the agent to run ``name``."""

    name: str
    input: dict[str, Any]
    id: str = attrs.field(factory=lambda: f"toolu_{next(_ids):08d}")


Block = Text | Thinking | ToolUse


@attrs.frozen
class ModelReply:
    """What the fake model answers to one ``/v1/messages`` request.

    ``chunk_delay`` seconds pass before every streamed delta; ``stop_reason``
    goes into ``message_delta`` (``tool_use`` when a block asks for a tool).
    """

    blocks: tuple[Block, ...]
    stop_reason: str = "end_turn"
    chunk_size: int = 12
    chunk_delay: float = 0.0


Responder = Callable[[dict[str, Any]], ModelReply]


def text_reply(text: str, **kwargs: Any) -> ModelReply:
    """A reply with one text block."""
    return ModelReply(blocks=(Text(text),), **kwargs)


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the newest user message's text blocks ("" if none)."""
    for message in reversed(request.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "\n".join(b.get("text", "") for b in content if b.get("type") == "text")
    return ""


def tool_results(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``tool_result`` blocks of the newest user message."""
    messages = request.get("messages", [])
    if not messages or not isinstance(messages[-1].get("content"), list):
        return []
    return [b for b in messages[-1]["content"] if b.get("type") == "tool_result"]


class FakeAnthropic(FakeHttpServer):
    """The server. Start it with ``port = await nursery.start(fake.serve)``.

    ``responder`` is called synchronously for each ``/v1/messages`` request
    with the parsed body and decides the reply; an exception in it is
    answered as a ``500`` API error (and recorded in :attr:`errors`) so the
    agent sees a failure instead of the test hanging.
    """

    name = "fake anthropic"

    def __init__(self, responder: Responder) -> None:
        super().__init__()
        self.responder = responder

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def message_requests(self) -> list[dict[str, Any]]:
        """Bodies of every ``POST /v1/messages`` so far, oldest first."""
        return self.bodies("/v1/messages")

    async def respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> None:
        path = request.path.split("?")[0]
        if request.method == "POST" and path == "/v1/messages":
            await self._messages(conn, stream, request)
        elif request.method == "POST" and path == "/v1/messages/count_tokens":
            tokens = max(1, len(json.dumps(request.body)) // 4)
            await send_json(conn, stream, 200, {"input_tokens": tokens})
        elif request.method == "HEAD" and path == "/":
            # claude-agent-acp probes the base URL this way at session/new.
            await send(
                conn, stream, h11.Response(status_code=200, headers=[(b"content-length", b"0")])
            )
            await send(conn, stream, h11.EndOfMessage())
        elif request.method == "GET" and path == "/v1/models":
            model = {
                "type": "model",
                "id": MODEL,
                "display_name": "Claude Sonnet 4.5",
                "created_at": "2025-09-29T00:00:00Z",
            }
            await send_json(
                conn,
                stream,
                200,
                {"data": [model], "has_more": False, "first_id": MODEL, "last_id": MODEL},
            )
        else:
            self.unknown_request(request)
            await send_json(
                conn, stream, 404, _api_error("not_found_error", f"no such endpoint: {path}")
            )

    async def _messages(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        reply = await self.scripted(
            conn, stream, self.responder, body, lambda why: _api_error("api_error", why)
        )
        if reply is None:
            return
        if not body.get("stream"):
            await send_json(conn, stream, 200, _whole_message(reply, body))
            return
        await self.stream_events(conn, stream, _sse_events(reply, body))


def _api_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _usage(output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": 10,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _message_id() -> str:
    return f"msg_{next(_ids):08d}"


def _block_json(block: Block) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def _whole_message(reply: ModelReply, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": request.get("model", MODEL),
        "content": [_block_json(b) for b in reply.blocks],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": _usage(5),
    }


def _pieces(text: str, size: int) -> Sequence[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse_events(
    reply: ModelReply, request: dict[str, Any]
) -> list[tuple[str, dict[str, Any], float]]:
    """The SSE frames of one streamed reply: (event name, data, delay before it)."""
    start = {
        "id": _message_id(),
        "type": "message",
        "role": "assistant",
        "model": request.get("model", MODEL),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(1),
    }
    events: list[tuple[str, dict[str, Any], float]] = [
        ("message_start", {"type": "message_start", "message": start}, 0.0),
        ("ping", {"type": "ping"}, 0.0),
    ]
    for index, block in enumerate(reply.blocks):
        if isinstance(block, Text):
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [
                {"type": "text_delta", "text": p} for p in _pieces(block.text, reply.chunk_size)
            ]
        elif isinstance(block, Thinking):
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": p}
                for p in _pieces(block.thinking, reply.chunk_size)
            ]
            deltas.append({"type": "signature_delta", "signature": block.signature})
        else:
            opening = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            raw = json.dumps(block.input)
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in _pieces(raw, reply.chunk_size)
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
                0.0,
            )
        )
        events += [
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": d},
                reply.chunk_delay,
            )
            for d in deltas
        ]
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}, 0.0))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
            0.0,
        )
    )
    events.append(("message_stop", {"type": "message_stop"}, 0.0))
    return events
