"""The fake OpenAI API speaks the Responses wire format codex reads."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from .fake_openai import Call, FakeOpenAI, ModelReply, Say, call_outputs, last_user_text
from .test_fake_anthropic import BOUND, http, sse_events


def script(request: dict[str, Any]) -> ModelReply:
    if request.get("input") == "boom":
        raise ValueError("no reply scripted")
    return ModelReply((Say("Hello there"), Call("exec_command", {"cmd": "ls"}, "call_1")), 4)


@pytest.fixture
async def api() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(script)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


async def test_stream_frames_text_and_a_function_call_like_the_responses_api(
    api: FakeOpenAI,
) -> None:
    with trio.fail_after(BOUND):
        status, body = await http(api.port, "POST", "/v1/responses", {"stream": True})
    assert status == 200
    events = sse_events(body)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.output_item.added") == names.count("response.output_item.done")
    done = [data["item"] for name, data in events if name == "response.output_item.done"]
    assert done[0]["content"] == [{"type": "output_text", "text": "Hello there", "annotations": []}]
    assert (done[1]["type"], done[1]["name"], done[1]["call_id"]) == (
        "function_call",
        "exec_command",
        "call_1",
    )
    assert json.loads(done[1]["arguments"]) == {"cmd": "ls"}
    deltas = [data["delta"] for name, data in events if name == "response.output_text.delta"]
    assert deltas == ["Hell", "o th", "ere"]
    assert events[-1][1]["response"]["usage"]["total_tokens"] == 15


async def test_unknown_paths_are_listed_and_a_failing_script_is_answered_500(
    api: FakeOpenAI,
) -> None:
    with trio.fail_after(BOUND):
        status, _ = await http(api.port, "POST", "/v1/chat/completions", {})
        failing, _ = await http(api.port, "POST", "/v1/responses", {"input": "boom"})
    assert status == 404 and [r.path for r in api.unknown] == ["/v1/chat/completions"]
    assert failing == 500 and api.errors


def test_the_newest_user_text_and_the_call_outputs_after_it_are_found() -> None:
    request = {
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]},
            {"type": "function_call_output", "call_id": "c0", "output": "old"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "new"},
        ]
    }
    assert last_user_text(request) == "b"
    assert [o["output"] for o in call_outputs(request)] == ["new"]
