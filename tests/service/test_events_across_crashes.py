"""Each event is answered once, and none is forgotten: duplicates on one
connection, after a reconnect and after a restart, and kill -9 with turns in
flight, against real broker processes."""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from broker.frontends.wire import encode_event
from broker.testing.fake_gateway import make_event
from broker.testing.harness import free_port
from tests.security.clients import stop, turns_submitted
from tests.service.broker_process import broker_process, chat, status_until, write_config

RESTARTED = "The broker restarted before finishing this message"


async def test_an_event_sent_twice_is_answered_once_on_a_connection_and_after_a_reconnect(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with broker_process(write_config(tmp_path, port)) as broker:
        with trio.fail_after(60):
            quick = make_event("@reply first answer", channel_id="t1")
            slow = make_event("@delay 1\n@reply slow answer", channel_id="t2")
            async with chat(port) as client:
                await client.ws.send_message(encode_event(quick))
                assert "first answer" in await client.reply(quick.event_id)
                await client.ws.send_message(encode_event(quick))  # done: its reply again
                while len(client.replies[quick.event_id]) < 2:
                    await trio.sleep(0.05)
                await client.ws.send_message(encode_event(slow))
                await status_until(port, lambda d: d["pool"]["by_state"]["busy"] == 1)
            async with chat(port) as client:  # a reconnect, as a gateway that is unsure
                await client.ws.send_message(encode_event(slow))  # in flight: nothing new
                assert "slow answer" in await client.reply(slow.event_id)
                await client.ws.send_message(encode_event(quick))
                assert "first answer" in await client.reply(quick.event_id)
                assert await client.ask("@reply a fresh one", "t3", "fresh")
                assert client.replies[slow.event_id] == ["slow answer"]
            assert await turns_submitted(port) == 3  # quick, slow and the fresh one
        await stop(broker)
    assert broker.log().count("again while in flight: nothing new") == 1


async def test_the_dedup_window_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    event = make_event("@reply only once", channel_id="t1")
    async with broker_process(config, name="first") as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                await client.ws.send_message(encode_event(event))
                assert "only once" in await client.reply(event.event_id)
        await stop(broker)
    async with broker_process(config, name="second") as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                await client.ws.send_message(encode_event(event))
                assert "only once" in await client.reply(event.event_id)
                assert await turns_submitted(port) == 0
        await stop(broker)


async def test_turns_in_flight_when_the_broker_is_killed_get_an_explicit_reply_after_the_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    events = [make_event("@delay 60", channel_id=f"room-{n}") for n in range(10)]
    async with broker_process(config, name="killed") as broker:
        with trio.fail_after(60):
            async with chat(port) as client:
                for event in events:
                    await client.ws.send_message(encode_event(event))
                await status_until(port, lambda d: d["pool"]["by_state"]["busy"] == 10)
                broker.signal(signal.SIGKILL)
                assert await broker.wait() == -signal.SIGKILL
    async with broker_process(config, name="restarted") as broker:
        with trio.fail_after(60):
            async with chat(port, "?platforms=telegram") as client:  # serves those threads
                for event in events:
                    assert RESTARTED in await client.reply(event.event_id)
                assert all(len(client.replies[event.event_id]) == 1 for event in events)
                # redelivered (the gateway was unsure): its reply again, no turn
                await client.ws.send_message(encode_event(events[0]))
                while len(client.replies[events[0].event_id]) < 2:
                    await trio.sleep(0.05)
                assert RESTARTED in client.replies[events[0].event_id][1]
                assert await turns_submitted(port) == 0
        await stop(broker)
