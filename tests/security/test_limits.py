"""Frame, line, attachment and queue limits hold under attack, against a real broker process.

Memory is measured where the kernel keeps it (/proc/<broker pid>/status,
VmRSS) and asserted as a bound on the growth, never as a timing.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import attrs
import trio
import trio_websocket

from broker.frontends.wire import Attachment, encode_event
from broker.testing.fake_gateway import make_event
from broker.testing.harness import free_port
from tests.security.clients import RAW_AGENT, rss_bytes, stop, turns_submitted
from tests.service.broker_process import (
    Chat,
    broker_process,
    chat,
    write_config,
)

MB = 1024 * 1024


async def test_a_huge_frame_closes_with_1009_and_the_next_connection_is_served(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port, server={"max_frame_bytes": 64 * 1024})
    async with broker_process(config) as broker:
        with trio.fail_after(60):
            url = f"ws://127.0.0.1:{port}/ws"
            async with trio_websocket.open_websocket_url(url) as ws:
                try:  # the close may come while the frame is still being sent
                    await ws.send_message(encode_event(make_event("x" * (4 * MB))))
                    while True:
                        await ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    assert exc.reason is not None and exc.reason.code == 1009, exc.reason
            async with chat(port) as client:
                assert "hello after the big one" in await client.ask(
                    "hello after the big one", "t1"
                )
        await stop(broker)


async def test_ten_thousand_messages_to_one_thread_get_busy_replies_at_once_in_bounded_memory(
    tmp_path: Path,
) -> None:
    port = free_port()
    depth = 5
    flood = 10_000
    config = write_config(tmp_path, port, pool={"queue_depth": depth})
    async with broker_process(config) as broker, chat(port) as client:
        with trio.fail_after(180):
            assert "warm" in await client.ask("@reply warm", "other", "warm")
            before = rss_bytes(broker.pid)
            first = await client.send("@delay 120\n@reply first done", "t1")
            growth, sent = [], []
            for queue_room in (depth, 0):  # the second flood shows what the first left behind
                ids = [await client.send(f"message {n}", "t1") for n in range(flood)]
                sent += ids

                def busy(ids: list[str] = ids) -> list[str]:
                    return [e for e in ids if any("busy" in t for t in client.replies.get(e, []))]

                while len(busy()) < flood - queue_room:
                    await trio.sleep(0.05)
                after = rss_bytes(broker.pid)
                growth.append(after - before)
                before = after
                print(f"RSS {after / MB:.1f} MB after {flood} more messages")

                # every refusal came while the first turn was still running...
                assert first not in client.replies
                assert all(len(client.replies[e]) == 1 for e in busy())
            # ...and only the first and the queue's worth are waiting (a queued
            # message has its "⏳ Queued" note, not its reply)
            waiting = [
                e
                for e in [first, *sent]
                if all(t.startswith("⏳ Queued") for t in client.replies.get(e, []))
            ]
            assert len(waiting) == depth + 1
            assert growth[0] < 64 * MB, f"RSS grew by {growth[0] / MB:.1f} MB for {flood} messages"
            assert growth[1] < 16 * MB, f"RSS grew by {growth[1] / MB:.1f} MB more the second time"
        await stop(broker)


def raw_agent_broker(tmp_path: Path, port: int) -> Path:
    """broker.toml running raw_agent.py with a 1 MiB stdout line limit."""
    work = tmp_path / "work"
    work.mkdir()
    agent = {
        "command": sys.executable,
        "args": [str(RAW_AGENT)],
        "working_dir": str(work),
        "max_line_bytes": MB,
    }
    return write_config(tmp_path, port, agent=agent)


async def test_an_endless_agent_line_fails_that_turn_clearly_while_another_thread_is_served(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with broker_process(raw_agent_broker(tmp_path, port)) as broker, chat(port) as client:
        with trio.fail_after(120):
            assert "pong: before" in await client.ask("before", "other", "pong")
            before = rss_bytes(broker.pid)
            endless = await client.send(f"endless-line {1000 * MB}", "t1")
            assert "pong: meanwhile" in await client.ask("meanwhile", "other", "pong")
            text = await client.reply(endless)
            growth = rss_bytes(broker.pid) - before
            assert growth < 32 * MB, f"RSS grew by {growth / MB:.1f} MB"
            # the reply says what happened: an over-long line, not an exit
            assert "line" in text.lower() and "exited" not in text.lower(), text
        await stop(broker)


async def test_after_an_endless_agent_line_the_threads_next_message_gets_a_fresh_agent(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with broker_process(raw_agent_broker(tmp_path, port)) as broker, chat(port) as client:
        with trio.fail_after(120):
            await client.reply(await client.send(f"endless-line {1000 * MB}", "t1"))
            again = await client.reply(await client.send("again", "t1"))
            assert "pong: again" in again, again
        await stop(broker)


async def test_an_agent_that_closes_its_output_but_lives_on_is_replaced_for_the_next_message(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with broker_process(raw_agent_broker(tmp_path, port)) as broker, chat(port) as client:
        with trio.fail_after(60):
            await client.reply(await client.send("close-stdout", "t1"))
            again = await client.reply(await client.send("again", "t1"))
            assert "pong: again" in again, again
        await stop(broker)


async def test_oversize_attachments_get_a_clear_reply_and_the_rest_still_reaches_the_agent(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(
        tmp_path, port, prompt={"max_attachment_bytes": 10_000, "max_message_bytes": 50_000}
    )

    async def send_with_files(client: Chat, text: str, *sizes: int, kind: str = "text_file") -> str:
        """Send ``text`` with attachments of ``sizes`` bytes; returns the reply."""
        files = tuple(
            Attachment(kind, base64.b64encode(b"a" * size).decode(), f"f{n}.txt")
            for n, size in enumerate(sizes)
        )
        event = make_event(text, channel_id="t1")
        event = attrs.evolve(event, content=attrs.evolve(event.content, attachments=files))
        await client.ws.send_message(encode_event(event))
        reply = await client.reply(event.event_id)
        assert len(client.replies[event.event_id]) == 1
        return reply

    async with broker_process(config) as broker, chat(port) as client:
        with trio.fail_after(60):
            text = await send_with_files(client, "@reply got it", 20_000, 100)
            assert "got it" in text
            assert "f0.txt was not passed to the agent" in text and "over the limit" in text

            text = await send_with_files(client, "@reply no picture", 20_000, kind="image")
            assert "no picture" in text and "f0.txt was not passed to the agent" in text

            text = await send_with_files(client, "@reply never", *[9_000] * 6)
            assert "This message is too large" in text and "never" not in text
        await stop(broker)


async def test_a_stalled_or_oversized_request_head_is_cut_off_and_holds_up_no_one(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with broker_process(write_config(tmp_path, port)) as broker, chat(port) as client:
        with trio.fail_after(60):
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the end
            huge = await trio.open_tcp_stream("127.0.0.1", port)
            await huge.send_all(b"GET /status HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (64 * 1024))
            assert "You said" in await client.ask("hello while they hang", "t1")
            assert (await huge.receive_some(1024)).startswith(b"HTTP/1.1 431")
            # the stalled one is answered 400 and closed after the head timeout (10 s)
            answer = b""
            while chunk := await stalled.receive_some(1024):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400"), answer
        await stop(broker)


async def test_a_client_that_never_reads_is_capped_holds_up_no_one_and_the_stop_keeps_its_budget(
    tmp_path: Path,
) -> None:
    """20,000 events from a connection that reads nothing: at most
    MAX_EVENTS_IN_FLIGHT of them are taken in, the rest are refused ("slow
    down") until even that cannot be written and the connection is closed;
    memory stays bounded, another client is answered as usual, the log does
    not repeat itself, and SIGTERM ends the broker with exit 0 (a stop cut
    short by its deadline exits 1)."""
    port = free_port()
    flood = 20_000
    async with broker_process(write_config(tmp_path, port)) as broker, chat(port) as client:
        with trio.fail_after(120):
            url = f"ws://127.0.0.1:{port}/ws"
            before = rss_bytes(broker.pid)
            sent = 0
            async with trio_websocket.open_websocket_url(url, message_queue_size=0) as deaf:
                try:
                    await deaf.send_message(encode_event(make_event("@delay 60", channel_id="d")))
                    for n in range(flood):
                        event = make_event(f"m{n}", channel_id=f"d{n % 50}")
                        await deaf.send_message(encode_event(event))
                        sent += 1
                except trio_websocket.ConnectionClosed:
                    pass
            assert sent < flood, "the broker kept reading a connection that reads nothing"
            # What it sent before its buffers filled was taken, the rest never: bounded.
            assert await turns_submitted(port) < flood // 10
            assert "You said" in await client.ask("hello beside a deaf client", "t1")
            growth = rss_bytes(broker.pid) - before
            assert growth < 64 * MB, f"RSS grew by {growth / MB:.1f} MB"
        await stop(broker)
    log = broker.log()
    assert log.count("events in flight, refusing") <= 3, log[-3000:]
    assert log.count("pool full (") <= 3 and log.count("outbox full") <= 3, log[-3000:]
