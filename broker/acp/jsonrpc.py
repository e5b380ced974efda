"""A JSON-RPC 2.0 peer over newline-delimited JSON, on trio.

One :class:`JsonRpcPeer` speaks to one agent process. It has exactly one
reader, :meth:`JsonRpcPeer.serve`, which consumes the agent's stdout lines in
order:

* a response resolves the pending request with that id (an id nobody waits
  for is logged and dropped);
* a notification is handed to ``on_notification`` synchronously, in stdout
  order, so an update sent before a response is always delivered before the
  requester wakes up;
* a request runs as its own task in a nursery the peer owns, so a slow
  handler never holds up the reader; its answer is written when it is ready.

A line that is not a JSON-RPC message (not JSON, nested too deeply, a response
to an id nobody waits for) is logged and counted; the connection goes on.
Lone UTF-16 surrogates in the agent's strings are replaced with U+FFFD as the
line is read, so no text from an agent can fail to encode further on. When the
line source ends (EOF, or it raises, e.g. a line over the length limit) every
pending request fails at once with :class:`PeerClosed` carrying
``closed_detail()`` (typically the agent's stderr tail).

Writes are serialised by a lock held for one write only, so a notification
(``session/cancel``) can be sent while a long request is in flight.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import attrs
import trio

from broker.text import may_hold_surrogates, valid_json

log = logging.getLogger(__name__)

JsonId = int | str

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
AUTH_REQUIRED = -32000
RESOURCE_NOT_FOUND = -32002
REQUEST_CANCELLED = -32800


class RpcError(Exception):
    """A JSON-RPC error: raised by :meth:`JsonRpcPeer.request` when the agent
    answers with an error, and raised by request handlers to answer with one."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} ({code})" + (f": {data!r}" if data is not None else ""))
        self.code = code
        self.message = message
        self.data = data

    @classmethod
    def method_not_found(cls, method: str) -> RpcError:
        return cls(METHOD_NOT_FOUND, "Method not found", {"method": method})

    @classmethod
    def invalid_params(cls, detail: str) -> RpcError:
        return cls(INVALID_PARAMS, f"Invalid params: {detail}")

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class PeerClosed(Exception):
    """The connection to the agent is gone (stdout ended or stdin broke).

    ``detail`` is evidence such as the tail of the agent's stderr."""

    def __init__(self, detail: str = "", reason: str = "agent exited") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


RequestHandler = Callable[[str, Any], Awaitable[Any]]
NotificationHandler = Callable[[str, Any], None]
SendFn = Callable[[bytes], Awaitable[None]]


async def _no_requests(method: str, params: Any) -> Any:
    raise RpcError.method_not_found(method)


def _ignore_notification(method: str, params: Any) -> None:
    pass


@attrs.define(eq=False)
class _Pending:
    method: str
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


def encode(message: dict[str, Any]) -> bytes:
    """One compact JSON line. JSON escapes newlines inside strings, so the
    only newline is the terminator. Lone surrogates become U+FFFD, so the
    line is always valid UTF-8."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        return encode(valid_json(message)[0])


def _normalise_id(raw: Any) -> JsonId | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str):
        # isdecimal alone admits "²" and other digits int() refuses; ASCII only
        return int(raw) if raw.isascii() and raw.isdecimal() else raw
    return None


class JsonRpcPeer:
    """See the module docstring. ``name`` appears in log lines;
    ``write_timeout`` bounds one write to the agent's stdin."""

    def __init__(
        self,
        send: SendFn,
        *,
        on_request: RequestHandler = _no_requests,
        on_notification: NotificationHandler = _ignore_notification,
        name: str = "agent",
        write_timeout: float = 30.0,
    ) -> None:
        self._send = send
        self._on_request = on_request
        self._on_notification = on_notification
        self.name = name
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closed: PeerClosed | None = None
        self._stdin_broken: str | None = None
        self._serving = False
        self.write_timeout = write_timeout
        self.malformed_lines = 0
        self.dropped_responses = 0
        self.invalid_text = 0  # strings from the agent whose lone surrogates were replaced

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def _write(self, message: dict[str, Any]) -> None:
        """Write one line whole. Waiting for the lock is cancellable; the write
        itself is shielded (a half-written line would corrupt the stream) but
        bounded by ``write_timeout``, after which stdin counts as broken."""
        data = encode(message)
        async with self._send_lock:
            if self._closed is not None:
                raise self._closed_error()
            if self._stdin_broken is not None:
                raise PeerClosed(self._stdin_broken, "agent stdin unusable")
            try:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + self.write_timeout
                    await self._send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, BrokenPipeError) as exc:
                self._stdin_broken = str(exc) or type(exc).__name__
                raise PeerClosed(self._stdin_broken, "agent stdin closed") from exc
            if scope.cancelled_caught:
                self._stdin_broken = f"a write blocked for {self.write_timeout:g} s"
                log.error(
                    "%s: %s; the agent is not reading its stdin", self.name, self._stdin_broken
                )
                raise PeerClosed(self._stdin_broken, "agent stdin unusable")

    async def notify(self, method: str, params: Any = None) -> None:
        """Send a notification. Waits only for the send lock and one write.
        Raises :class:`PeerClosed` if the agent is gone."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._write(message)

    async def request(self, method: str, params: Any = None) -> Any:
        """Send a request and wait for its response; return its ``result``.

        Raises :class:`RpcError` if the agent answers with an error,
        :class:`PeerClosed` if the agent exits first. It sets no deadline of
        its own: bound it with the caller's cancel scope (``trio.fail_after``).
        If the caller is cancelled, the request is forgotten (a late response
        is logged and dropped).
        """
        request_id = next(self._ids)
        pending = _Pending(method)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self._pending[request_id] = pending
        try:
            await self._write(message)
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def serve(self, lines: AsyncIterable[bytes], closed_detail: Callable[[], str]) -> None:
        """Read ``lines`` until they end, dispatching each message.

        Returns at EOF after failing every pending request with
        :class:`PeerClosed` and cancelling request handlers still running
        (their answers would have nowhere to go). If the line source raises,
        the same happens and its error is named in the detail. Call once.
        """
        if self._serving:
            raise RuntimeError(f"{self.name}: serve() is already running or has run")
        self._serving = True
        reason = "agent exited"
        try:
            async with trio.open_nursery() as nursery:
                try:
                    async for line in lines:
                        self._dispatch_line(line, nursery)
                except Exception as exc:  # noqa: BLE001 - any line-source failure ends the connection
                    log.error("%s: stdout unusable: %r", self.name, exc)
                    reason = f"agent output unusable ({type(exc).__name__}: {exc})"
                self._close(PeerClosed(closed_detail(), reason))
                nursery.cancel_scope.cancel()
        finally:
            self._close(PeerClosed(closed_detail(), "connection closed"))

    def _closed_error(self) -> PeerClosed:
        assert self._closed is not None
        return PeerClosed(self._closed.detail, self._closed.reason)

    def _close(self, error: PeerClosed) -> None:
        if self._closed is None:
            self._closed = error
        for pending in self._pending.values():
            pending.resolve(error=self._closed_error())

    def _dispatch_line(self, line: bytes, nursery: trio.Nursery) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except ValueError as exc:
            self._malformed(line, f"not JSON ({exc})")
            return
        except RecursionError:
            self._malformed(line, "nested too deeply")
            return
        if not isinstance(message, dict):
            self._malformed(line, "not a JSON object")
            return
        if may_hold_surrogates(line):
            message, changed = valid_json(message)
            if changed:
                self.invalid_text += changed
                log.warning(
                    "%s: %d strings held lone UTF-16 surrogates; replaced with U+FFFD",
                    self.name,
                    changed,
                )
        method = message.get("method")
        has_id = message.get("id") is not None
        if method is not None:
            if not isinstance(method, str):
                self._malformed(line, "method is not a string")
                if has_id:
                    nursery.start_soon(
                        self._answer_error,
                        message["id"],
                        RpcError(INVALID_REQUEST, "Invalid request: method must be a string"),
                    )
                return
            if has_id:
                nursery.start_soon(
                    self._handle_request, message["id"], method, message.get("params")
                )
            else:
                self._handle_notification(method, message.get("params"))
        elif "result" in message or "error" in message:
            self._handle_response(message)
        else:
            self._malformed(line, "neither request, notification nor response")

    def _malformed(self, line: bytes, why: str) -> None:
        self.malformed_lines += 1
        log.warning("%s: ignoring malformed line (%s): %.200r", self.name, why, line)

    def _handle_notification(self, method: str, params: Any) -> None:
        if method.startswith("_"):
            log.debug("%s: ignoring extension notification %s", self.name, method)
            return
        try:
            self._on_notification(method, params)
        except Exception:
            log.exception("%s: notification handler failed for %s", self.name, method)

    def _handle_response(self, message: dict[str, Any]) -> None:
        response_id = _normalise_id(message.get("id"))
        pending = self._pending.get(response_id) if isinstance(response_id, int) else None
        if pending is None:
            self.dropped_responses += 1
            log.warning("%s: dropping response to unknown id %r", self.name, message.get("id"))
            return
        error = message.get("error")
        if error is None:
            pending.resolve(result=message.get("result"))
            return
        if isinstance(error, dict):
            code = error.get("code")
            pending.resolve(
                error=RpcError(
                    code if isinstance(code, int) else INTERNAL_ERROR,
                    str(error.get("message") or "error without message"),
                    error.get("data"),
                )
            )
        else:
            pending.resolve(error=RpcError(INTERNAL_ERROR, f"malformed error: {error!r}"))

    async def _handle_request(self, request_id: Any, method: str, params: Any) -> None:
        try:
            result = await self._on_request(method, params)
        except RpcError as exc:
            await self._answer_error(request_id, exc)
            return
        except Exception as exc:
            log.exception("%s: handler for %s failed", self.name, method)
            await self._answer_error(
                request_id, RpcError(INTERNAL_ERROR, "Internal error", str(exc))
            )
            return
        await self._answer(request_id, {"result": result})

    async def _answer_error(self, request_id: Any, error: RpcError) -> None:
        await self._answer(request_id, {"error": error.to_wire()})

    async def _answer(self, request_id: Any, body: dict[str, Any]) -> None:
        try:
            await self._write({"jsonrpc": "2.0", "id": request_id, **body})
        except PeerClosed:
            log.info("%s: agent gone before the answer to request %r", self.name, request_id)
