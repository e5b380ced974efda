"""JSON-RPC 2.0 framing for the fake agent: newline-delimited JSON on stdin/stdout.

One :class:`Wire` owns stdout. Every write holds the write lock for exactly one ``send_all`` of
whole lines, so lines from concurrent tasks never interleave. Requests the agent sends (e.g.
``session/request_permission``) wait on a per-id slot that the stdin reader fills synchronously.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

JSON = Any
_log_prefix = "fake-agent"
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INVALID_REQUEST = -32600
PARSE_ERROR = -32700
INTERNAL_ERROR = -32603
AUTH_REQUIRED = -32000


def set_log_name(name: str) -> None:
    """Prefix of every stderr log line (``--name``)."""
    global _log_prefix
    _log_prefix = name


def log(message: str) -> None:
    """One log line on stderr, written whole before returning (the parent drains stderr).

    stderr may share its open file with stdout (``2>&1``), which the event loop puts in
    non-blocking mode, so a full pipe is waited out with ``select`` instead of failing.
    """
    data = f"{_log_prefix}[{os.getpid()}]: {message}\n".encode(errors="replace")
    while data:
        try:
            data = data[os.write(2, data) :]
        except BlockingIOError:
            select.select([], [2], [])


class RpcError(Exception):
    """A JSON-RPC error, raised by handlers and by :meth:`Wire.request` for error responses."""

    def __init__(self, code: int, message: str, data: JSON = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> JSON:
        error: dict[str, JSON] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def encode(message: JSON) -> bytes:
    """One compact JSON line (the newline included)."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Slot:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.message: JSON = None
        self.received_at = 0.0  # time.perf_counter() when the response was read


class Wire:
    """The agent's side of the connection: serialised writes plus outgoing-request bookkeeping."""

    def __init__(self, out: trio.abc.SendStream) -> None:
        self._out = out
        self._lock = trio.Lock()
        self._next_id = 0
        self._pending: dict[int, _Slot] = {}

    async def write(self, data: bytes) -> None:
        """Write whole lines at once; the lock is held for this one write only."""
        async with self._lock:
            await self._out.send_all(data)

    async def send(self, message: JSON) -> None:
        await self.write(encode(message))

    async def notify(self, method: str, params: JSON) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    async def respond(self, request_id: JSON, result: JSON) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    async def respond_error(self, request_id: JSON, error: RpcError) -> None:
        await self.send({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})

    async def request(
        self, method: str, params: JSON, *, timing: list[float] | None = None
    ) -> JSON:
        """Send a request and wait for its response; return ``result`` or raise :class:`RpcError`.

        If the caller is cancelled (e.g. session/cancel while a permission request is open), the
        request is abandoned: its slot is dropped and a late answer is ignored. ``timing`` gets
        two ``time.perf_counter()`` values: just before the request was written, and when its
        response was read.
        """
        self._next_id += 1
        request_id = self._next_id
        slot = _Slot()
        self._pending[request_id] = slot
        try:
            sent_at = time.perf_counter()
            await self.send(
                {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            )
            await slot.done.wait()
        finally:
            del self._pending[request_id]
        if timing is not None:
            timing += [sent_at, slot.received_at]
        if "error" in slot.message:
            error = slot.message["error"] or {}
            raise RpcError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "")))
        return slot.message.get("result")

    def deliver_response(self, message: JSON) -> bool:
        """Hand a response to the waiting request (synchronous); False if nobody waits for it."""
        slot = self._pending.get(message.get("id")) if isinstance(message.get("id"), int) else None
        if slot is None or slot.done.is_set():
            return False
        slot.message = message
        slot.received_at = time.perf_counter()
        slot.done.set()
        return True


async def read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    """Lines of ``stream`` without the newline; a final unterminated line is yielded too."""
    buffer = bytearray()
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            break
        buffer += data
        if b"\n" not in data:
            continue
        lines = bytes(buffer).split(b"\n")
        buffer = bytearray(lines.pop())
        for line in lines:
            yield line
    if buffer.strip():
        yield bytes(buffer)
