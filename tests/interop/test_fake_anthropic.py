"""The fake Anthropic API speaks the Messages wire format the agents expect."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
import trio

from .fake_anthropic import FakeAnthropic, ModelReply, Text, Thinking, ToolUse

BOUND = 10.0


def script(request: dict[str, Any]) -> ModelReply:
    if request.get("messages") == "boom":
        raise ValueError("no reply scripted")
    if request.get("slow"):
        return ModelReply(blocks=(Text("s" * 400),), chunk_size=1, chunk_delay=0.05)
    return ModelReply(
        blocks=(
            Thinking("Let me see", "sig"),
            Text("Hello there"),
            ToolUse("Read", {"file_path": "/w/a"}, "t1"),
        ),
        stop_reason="tool_use",
        chunk_size=4,
    )


@pytest.fixture
async def api() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(script)
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()


async def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; the status and the whole body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    data = b"" if body is None else json.dumps(body).encode()
    headers = [("host", "127.0.0.1"), ("content-length", str(len(data))), ("connection", "close")]
    await stream.send_all(conn.send(h11.Request(method=method, target=path, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
    status, received = 0, bytearray()
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, bytes(received)


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in body.decode().split("\n\n"):
        if frame.strip():
            name, data = frame.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            events.append((name[7:], json.loads(data[6:])))
    return events


async def test_stream_frames_thinking_text_and_tool_use_like_the_messages_api(
    api: FakeAnthropic,
) -> None:
    with trio.fail_after(BOUND):
        status, body = await http(
            api.port,
            "POST",
            "/v1/messages?beta=true",
            {"model": "m", "stream": True, "messages": []},
        )
    assert status == 200
    events = sse_events(body)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "t1", "name": "Read", "input": {}},
    ]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert "".join(d["thinking"] for d in deltas if d["type"] == "thinking_delta") == "Let me see"
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == ["sig"]
    assert "".join(d["text"] for d in deltas if d["type"] == "text_delta") == "Hello there"
    assert json.loads(
        "".join(d["partial_json"] for d in deltas if d["type"] == "input_json_delta")
    ) == {"file_path": "/w/a"}
    assert names.count("content_block_stop") == 3
    assert api.message_requests()[0]["model"] == "m"
    with trio.fail_after(BOUND):  # counted just after the last frame is sent
        await api.wait_for(lambda: api.completed_streams == 1)


async def test_plain_request_gets_one_json_message(api: FakeAnthropic) -> None:
    with trio.fail_after(BOUND):
        status, body = await http(api.port, "POST", "/v1/messages", {"messages": []})
    message = json.loads(body)
    assert status == 200 and message["type"] == "message"
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "Let me see",
        "signature": "sig",
    }
    assert message["content"][1] == {"type": "text", "text": "Hello there"}
    assert message["content"][2]["input"] == {"file_path": "/w/a"}


async def test_side_endpoints_answer_and_unknown_ones_are_listed(api: FakeAnthropic) -> None:
    with trio.fail_after(BOUND):
        tokens = await http(api.port, "POST", "/v1/messages/count_tokens", {"messages": []})
        models = await http(api.port, "GET", "/v1/models")
        probe = await http(api.port, "HEAD", "/")
        unknown = await http(api.port, "POST", "/api/event_logging/batch", {"events": []})
    assert tokens[0] == 200 and json.loads(tokens[1])["input_tokens"] > 0
    assert models[0] == 200 and json.loads(models[1])["data"][0]["type"] == "model"
    assert probe[0] == 200
    assert unknown[0] == 404 and json.loads(unknown[1])["error"]["type"] == "not_found_error"
    assert [(r.method, r.path) for r in api.unknown] == [("POST", "/api/event_logging/batch")]


async def test_a_failing_script_is_an_api_error_not_a_hang(api: FakeAnthropic) -> None:
    with trio.fail_after(BOUND):
        status, body = await http(api.port, "POST", "/v1/messages", {"messages": "boom"})
    assert status == 500 and json.loads(body)["error"]["type"] == "api_error"
    assert api.errors == ["ValueError('no reply scripted')"]


async def test_client_hanging_up_mid_stream_is_counted(api: FakeAnthropic) -> None:
    with trio.fail_after(BOUND):  # the stream would take 20 s
        stream = await trio.open_tcp_stream("127.0.0.1", api.port)
        conn = h11.Connection(h11.CLIENT)
        data = json.dumps({"stream": True, "slow": True}).encode()
        request = h11.Request(
            method="POST",
            target="/v1/messages",
            headers=[("host", "x"), ("content-length", str(len(data)))],
        )
        await stream.send_all(
            conn.send(request) + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage())
        )
        seen = b""
        while b"message_start" not in seen:
            seen += await stream.receive_some(65536)
        await stream.aclose()
        await api.wait_for(lambda: api.aborted_streams == 1)
    assert api.completed_streams == 0
