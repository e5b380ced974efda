"""A fake OpenAI Responses API on loopback, for driving codex-acp offline.

:class:`FakeOpenAI` is a small HTTP/1.1 server (trio + h11) that answers
``POST /v1/responses`` with whatever a test's *responder* decides: a
:class:`ModelReply` of output text and function calls, streamed as the
server-sent events codex reads (``response.created``, then per item
``response.output_item.added``, ``response.output_text.delta`` for text and
``response.output_item.done``, then ``response.completed`` with the response
id and usage). A reply can stream slowly (``chunk_delay``) so that a test can
cancel in the middle of it.

``GET /v1/models`` answers an empty list, and a WebSocket upgrade of
``/v1/responses`` (codex tries the Responses WebSocket transport first) is
answered ``426``, which makes codex use HTTPS. Every request is recorded
(:attr:`FakeOpenAI.requests`); any other request is logged, recorded in
:attr:`FakeOpenAI.unknown` and answered ``404`` with an API-shaped error, so
a test sees what the agent asked for instead of hanging on it.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import h11
import trio

from .fake_http import FakeHttpServer, RecordedRequest, send_json

log = logging.getLogger(__name__)

_ids = itertools.count(1)


@attrs.frozen
class Say:
    """An assistant message, streamed in ``chunk_size`` character deltas."""

    text: str


@attrs.frozen
class Call:
    """A function call: the model asks codex to run tool ``name``."""

    name: str
    arguments: dict[str, Any]
    call_id: str = attrs.field(factory=lambda: f"call_{next(_ids):06d}")


Item = Say | Call


@attrs.frozen
class ModelReply:
    items: tuple[Item, ...]
    chunk_size: int = 12
    chunk_delay: float = 0.0


Responder = Callable[[dict[str, Any]], ModelReply]


def say(text: str, **kwargs: Any) -> ModelReply:
    return ModelReply(items=(Say(text),), **kwargs)


def input_items(request: dict[str, Any]) -> list[dict[str, Any]]:
    items = request.get("input")
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def last_user_text(request: dict[str, Any]) -> str:
    """The text of the newest user message of the request's ``input``."""
    for item in reversed(input_items(request)):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "\n".join(
                c.get("text", "") for c in content or [] if c.get("type") == "input_text"
            )
    return ""


def call_outputs(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function_call_output`` items that follow the newest user message."""
    outputs: list[dict[str, Any]] = []
    for item in reversed(input_items(request)):
        if item.get("type", "message") == "message" and item.get("role") == "user":
            break
        if item.get("type") == "function_call_output":
            outputs.insert(0, item)
    return outputs


def tool_names(request: dict[str, Any]) -> list[str]:
    """The names of the function tools the request offers the model."""
    names = []
    for tool in request.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            names.append(tool["name"])
    return names


def _events(reply: ModelReply, response_id: str) -> Iterator[tuple[dict[str, Any], float]]:
    """(SSE payload, delay before it) in order, as the Responses API streams them."""
    yield {"type": "response.created", "response": {"id": response_id}}, 0.0
    for index, item in enumerate(reply.items):
        if isinstance(item, Say):
            item_id = f"msg_{next(_ids):06d}"
            added = {"type": "message", "role": "assistant", "id": item_id, "content": []}
            yield {"type": "response.output_item.added", "output_index": index, "item": added}, 0.0
            text = item.text
            for start in range(0, len(text), reply.chunk_size):
                delta = {
                    "type": "response.output_text.delta",
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "delta": text[start : start + reply.chunk_size],
                }
                yield delta, reply.chunk_delay
            done = dict(added, content=[{"type": "output_text", "text": text, "annotations": []}])
            yield {"type": "response.output_item.done", "output_index": index, "item": done}, 0.0
        else:
            call = {
                "type": "function_call",
                "id": f"fc_{next(_ids):06d}",
                "call_id": item.call_id,
                "name": item.name,
                "arguments": json.dumps(item.arguments),
            }
            yield {"type": "response.output_item.added", "output_index": index, "item": call}, 0.0
            yield {"type": "response.output_item.done", "output_index": index, "item": call}, 0.0
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }
    completed = {"id": response_id, "status": "completed", "usage": usage}
    yield {"type": "response.completed", "response": completed}, 0.0


class FakeOpenAI(FakeHttpServer):
    """The server. Start it with ``port = await nursery.start(fake.serve)``.

    ``responder`` is called synchronously for each ``/v1/responses`` request
    with the parsed body; an exception in it is answered as a ``500`` API
    error (and recorded in :attr:`errors`), so the agent sees a failure
    instead of the test hanging.
    """

    name = "fake openai"

    def __init__(self, responder: Responder) -> None:
        super().__init__()
        self.responder = responder
        self.upgrades_refused = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def response_requests(self) -> list[dict[str, Any]]:
        """Bodies of every ``POST /v1/responses`` so far, oldest first."""
        return self.bodies("/v1/responses")

    async def respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> None:
        path = request.path.split("?")[0]
        upgrade = request.headers.get("upgrade", "").lower() == "websocket"
        if path == "/v1/responses" and upgrade:
            # No Responses WebSocket transport here: 426 sends codex to HTTPS (its own tests
            # answer the upgrade the same way).
            self.upgrades_refused += 1
            await send_json(conn, stream, 426, _api_error("use HTTPS for /v1/responses"))
        elif request.method == "POST" and path == "/v1/responses":
            await self._responses(conn, stream, request)
        elif request.method == "GET" and path == "/v1/models":
            await send_json(conn, stream, 200, {"object": "list", "data": [], "models": []})
        else:
            self.unknown_request(request)
            await send_json(conn, stream, 404, _api_error(f"no such endpoint: {path}"))

    async def _responses(
        self, conn: h11.Connection, stream: trio.SocketStream, request: RecordedRequest
    ) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        reply = await self.scripted(conn, stream, self.responder, body, _api_error)
        if reply is None:
            return
        events = _events(reply, f"resp_{next(_ids):06d}")
        await self.stream_events(conn, stream, ((p["type"], p, delay) for p, delay in events))


def _api_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}
