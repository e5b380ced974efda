"""The JSON-RPC peer over in-memory streams with a scripted agent end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from broker.acp.jsonrpc import JsonRpcPeer, PeerClosed, RpcError

from .wire import AgentEnd, iter_lines, stream_pair


class Recorder:
    def __init__(self) -> None:
        self.notifications: list[tuple[str, Any]] = []

    def __call__(self, method: str, params: Any) -> None:
        self.notifications.append((method, params))


async def start_peer(
    nursery: trio.Nursery, on_request: Any = None, detail: str = "stderr tail here"
) -> tuple[JsonRpcPeer, AgentEnd, Recorder]:
    client, agent = stream_pair()
    recorder = Recorder()
    kwargs: dict[str, Any] = {"on_notification": recorder, "name": "test"}
    if on_request is not None:
        kwargs["on_request"] = on_request
    peer = JsonRpcPeer(client.send_all, **kwargs)
    nursery.start_soon(peer.serve, iter_lines(client), lambda: detail)
    return peer, agent, recorder


@asynccontextmanager
async def in_flight(peer: JsonRpcPeer, method: str) -> AsyncIterator[list[Any]]:
    """Run ``peer.request(method)`` in a task; the yielded list gets its
    result or its RpcError/PeerClosed. Exiting waits for the request to end."""
    outcome: list[Any] = []

    async def call() -> None:
        try:
            outcome.append(await peer.request(method))
        except (RpcError, PeerClosed) as exc:
            outcome.append(exc)

    async with trio.open_nursery() as inner:
        inner.start_soon(call)
        yield outcome


async def test_malformed_line_is_counted_and_the_connection_goes_on(
    nursery: trio.Nursery,
) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "ping") as result:
            request = await agent.receive()
            await agent.send_raw(b"{not json")
            await agent.send_raw(b"[1, 2]")
            await agent.send_raw(b'{"jsonrpc": "2.0"}')
            await agent.respond(request, {"pong": True})
    assert result == [{"pong": True}]
    assert peer.malformed_lines == 3


async def test_response_to_unknown_id_is_dropped(nursery: trio.Nursery) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "ping") as result:
            request = await agent.receive()
            await agent.send({"id": 999, "result": "stray"})
            await agent.send({"id": "nope", "result": "stray"})
            await agent.respond(request, "mine")
    assert result == ["mine"]
    assert peer.dropped_responses == 2


async def test_eof_fails_every_pending_request_at_once_with_stderr_detail(
    nursery: trio.Nursery,
) -> None:
    peer, agent, _ = await start_peer(nursery, detail="panic: model server unreachable")
    errors: list[BaseException] = []

    async def call(method: str) -> None:
        try:
            await peer.request(method)
        except PeerClosed as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            for method in ("a", "b", "c"):
                inner.start_soon(call, method)
            for _ in range(3):
                await agent.receive()
            await agent.close()
    assert len(errors) == 3
    assert all("agent exited" in str(e) and "model server unreachable" in str(e) for e in errors)
    with pytest.raises(PeerClosed):
        await peer.request("after-close")


async def test_failing_line_source_fails_pending_requests() -> None:
    class LineTooLong(Exception):
        pass

    async def lines() -> Any:
        yield b'{"jsonrpc": "2.0", "method": "hello"}'
        await trio.sleep(0.01)
        raise LineTooLong("line over 8 bytes")

    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    peer = JsonRpcPeer(send)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.serve, lines(), lambda: "tail")
            with pytest.raises(PeerClosed, match="LineTooLong"):
                await peer.request("slow")


async def test_string_and_int_ids_from_the_agent_are_echoed() -> None:
    async def on_request(method: str, params: Any) -> Any:
        return {"echo": params}

    async with trio.open_nursery() as nursery:
        _, agent, _ = await start_peer(nursery, on_request)
        with trio.fail_after(5):
            await agent.send({"id": "req-a", "method": "x/echo", "params": 1})
            await agent.send({"id": 7, "method": "x/echo", "params": 2})
            answers = {(await agent.receive())["id"]: None for _ in range(2)}
        assert set(answers) == {"req-a", 7}
        nursery.cancel_scope.cancel()


async def test_string_id_in_response_resolves_our_int_request(nursery: trio.Nursery) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "ping") as result:
            request = await agent.receive()
            await agent.send({"id": str(request["id"]), "result": "ok"})
    assert result == ["ok"]


async def test_unknown_method_answers_method_not_found(nursery: trio.Nursery) -> None:
    _, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        await agent.send({"id": 1, "method": "terminal/create", "params": {}})
        answer = await agent.receive()
    assert answer["id"] == 1
    assert answer["error"]["code"] == -32601
    assert answer["error"]["data"] == {"method": "terminal/create"}


async def test_slow_request_handler_does_not_block_the_reader(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def on_request(method: str, params: Any) -> Any:
        if method == "slow":
            await release.wait()  # would hold the reader for ever if run inline
        return method

    _, agent, recorder = await start_peer(nursery, on_request)
    with trio.fail_after(5):
        await agent.send({"id": 1, "method": "slow"})
        await agent.send({"method": "note", "params": {"n": 1}})
        await agent.send({"id": 2, "method": "fast"})
        fast = await agent.receive()
        assert fast == {"jsonrpc": "2.0", "id": 2, "result": "fast"}
        assert recorder.notifications == [("note", {"n": 1})]
        release.set()
        slow = await agent.receive()
    assert slow["id"] == 1 and slow["result"] == "slow"


async def test_notifications_are_delivered_before_a_later_response(
    nursery: trio.Nursery,
) -> None:
    peer, agent, recorder = await start_peer(nursery)
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            seen_at_return: list[int] = []

            async def call() -> None:
                await peer.request("session/prompt")
                seen_at_return.append(len(recorder.notifications))

            inner.start_soon(call)
            request = await agent.receive()
            # One write with every update and the response right behind them.
            lines = [b'{"jsonrpc":"2.0","method":"u","params":%d}' % i for i in range(50)]
            lines.append(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % request["id"])
            await agent.stream.send_all(b"\n".join(lines) + b"\n")
    assert seen_at_return == [50]
    assert [p for _, p in recorder.notifications] == list(range(50))


async def test_extension_notifications_are_ignored(nursery: trio.Nursery) -> None:
    peer, agent, recorder = await start_peer(nursery)
    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            inner.start_soon(peer.request, "ping")
            request = await agent.receive()
            await agent.send({"method": "_auth/status_update", "params": {}})
            await agent.send({"method": "session/update", "params": {}})
            await agent.respond(request, None)
    assert recorder.notifications == [("session/update", {})]


async def test_error_response_raises_typed_rpc_error_with_data(nursery: trio.Nursery) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "session/prompt") as errors:
            request = await agent.receive()
            await agent.send(
                {
                    "id": request["id"],
                    "error": {
                        "code": -32603,
                        "message": "Internal error",
                        "data": {"details": "quota"},
                    },
                }
            )
    assert len(errors) == 1
    assert (errors[0].code, errors[0].message, errors[0].data) == (
        -32603,
        "Internal error",
        {"details": "quota"},
    )


async def test_handler_error_is_answered_and_reader_goes_on(nursery: trio.Nursery) -> None:
    async def on_request(method: str, params: Any) -> Any:
        if method == "bad":
            raise RpcError(-32602, "Invalid params", {"why": "no path"})
        raise ValueError("boom")

    _, agent, _ = await start_peer(nursery, on_request)
    with trio.fail_after(5):
        await agent.send({"id": 1, "method": "bad"})
        first = await agent.receive()
        await agent.send({"id": 2, "method": "crash"})
        second = await agent.receive()
    assert first["error"] == {
        "code": -32602,
        "message": "Invalid params",
        "data": {"why": "no path"},
    }
    assert second["error"]["code"] == -32603 and "boom" in second["error"]["data"]


async def test_a_request_cut_short_by_its_callers_deadline_is_forgotten(
    nursery: trio.Nursery,
) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        with trio.move_on_after(0.05) as scope:
            await peer.request("slow")
        assert scope.cancelled_caught
        request = await agent.receive()
        await agent.respond(request, "late")
        async with trio.open_nursery() as inner:
            # The reader is in order: once this answer arrives, "late" was read.
            inner.start_soon(peer.request, "after")
            await agent.respond(await agent.receive(), "ok")
    assert peer.dropped_responses == 1
    assert peer.pending_count == 0


async def test_messages_are_single_compact_lines() -> None:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    peer = JsonRpcPeer(send)
    await peer.notify("session/cancel", {"sessionId": "a\nb", "text": "line1\nline2 ü"})
    assert len(sent) == 1 and sent[0].endswith(b"\n") and sent[0].count(b"\n") == 1
    assert b" " not in sent[0].replace(b"line2 ", b"")


async def test_cancelled_caller_still_writes_its_line_whole() -> None:
    sent: list[bytes] = []
    writing = trio.Event()

    async def slow_send(data: bytes) -> None:
        writing.set()
        await trio.sleep(0.2)  # a pipe the agent drains slowly
        sent.append(data)

    peer = JsonRpcPeer(slow_send)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.notify, "session/cancel", {"sessionId": "s"})
            await writing.wait()
            nursery.cancel_scope.cancel()
        await peer.notify("after", None)
    assert [json.loads(line)["method"] for line in sent] == ["session/cancel", "after"]


async def test_write_blocked_past_the_bound_makes_stdin_unusable() -> None:
    async def stuck_send(data: bytes) -> None:
        await trio.sleep_forever()

    peer = JsonRpcPeer(stuck_send, write_timeout=0.1)
    with trio.fail_after(5):
        with pytest.raises(PeerClosed, match=r"blocked for 0\.1 s"):
            await peer.request("session/prompt", {})
        with pytest.raises(PeerClosed, match="stdin unusable"):
            await peer.notify("session/cancel", {})
    assert peer.pending_count == 0


async def test_a_line_nested_twenty_thousand_deep_is_counted_and_the_agent_stays(
    nursery: trio.Nursery,
) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "ping") as result:
            request = await agent.receive()
            await agent.send_raw(b'{"jsonrpc":"2.0","result":' + b"[" * 20_000 + b"]" * 20_000)
            await agent.respond(request, {"pong": True})
    assert result == [{"pong": True}]
    assert peer.malformed_lines == 1 and not peer.closed


async def test_a_response_id_that_only_looks_like_a_number_is_dropped_and_the_agent_stays(
    nursery: trio.Nursery,
) -> None:
    peer, agent, _ = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "ping") as result:
            request = await agent.receive()
            await agent.send({"id": "²", "result": {}})  # "²".isdigit(), int("²") raises
            await agent.send({"id": "١", "result": {}})  # an Arabic-Indic one
            await agent.respond(request, {"pong": True})
    assert result == [{"pong": True}]
    assert peer.dropped_responses == 2 and not peer.closed


async def test_lone_surrogates_from_the_agent_become_replacement_characters(
    nursery: trio.Nursery,
) -> None:
    peer, agent, recorder = await start_peer(nursery)
    with trio.fail_after(5):
        async with in_flight(peer, "session/new") as result:
            request = await agent.receive()
            await agent.send_raw(b'{"jsonrpc":"2.0","method":"n","params":{"t":"a\\udc00b"}}')
            await agent.send_raw(b'{"jsonrpc":"2.0","method":"n","params":{"t":"raw\xed\xa0\x80"}}')
            await agent.send_raw(
                b'{"jsonrpc":"2.0","id":%d,"result":{"sessionId":"s\\ud800"}}' % request["id"]
            )
    assert result == [{"sessionId": "s\ufffd"}]
    assert recorder.notifications == [("n", {"t": "a\ufffdb"}), ("n", {"t": "raw\ufffd"})]
    assert peer.invalid_text == 3
    # and what is sent back is valid UTF-8 whatever it holds
    await peer.notify("echo", {"sessionId": "s\ud800"})
    assert (await agent.receive())["params"] == {"sessionId": "s\ufffd"}
