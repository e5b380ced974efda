"""Test plumbing: a connected pair of in-memory byte streams and an in-test
agent end that reads and writes real JSON lines."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio
import trio.testing


async def iter_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """Split a byte stream into lines without the newline; ends at EOF."""
    buffer = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            if buffer:
                yield buffer
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line


class AgentEnd:
    """The agent's side of the wire: receive the client's messages, send
    raw lines or JSON messages back."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._lines = iter_lines(stream)

    async def receive(self) -> dict[str, Any]:
        line = await self._lines.__anext__()
        message = json.loads(line)
        assert isinstance(message, dict)
        return message

    async def receive_method(self, method: str) -> dict[str, Any]:
        """Next message with this method, skipping others."""
        while True:
            message = await self.receive()
            if message.get("method") == method:
                return message

    async def send_raw(self, line: bytes) -> None:
        await self.stream.send_all(line + b"\n")

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_raw(json.dumps({"jsonrpc": "2.0", **message}).encode())

    async def respond(self, request: dict[str, Any], result: Any) -> None:
        await self.send({"id": request["id"], "result": result})

    async def update(self, session_id: str, update: dict[str, Any]) -> None:
        await self.send(
            {"method": "session/update", "params": {"sessionId": session_id, "update": update}}
        )

    async def close(self) -> None:
        await self.stream.aclose()


def stream_pair() -> tuple[trio.abc.Stream, AgentEnd]:
    """(client stream, agent end) connected in memory."""
    client, agent = trio.testing.memory_stream_pair()
    return client, AgentEnd(agent)
