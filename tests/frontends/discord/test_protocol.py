"""The gateway's timers and decisions, under trio's virtual clock (no process, no socket)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from broker.frontends.discord import protocol
from broker.frontends.discord.gateway import keep_heartbeat, with_query
from broker.frontends.discord.protocol import Heartbeat, IdentifyPacer, Next, Session


async def _beats(
    interval_ms: int, jitter: float, ack: bool, until: float
) -> tuple[list[tuple[float, Any]], list[float]]:
    """Run keep_heartbeat from t=0; ACK every beat at once when ``ack``."""
    start = trio.current_time()
    beat = Heartbeat.after_hello(start, interval_ms, jitter)
    sent: list[tuple[float, Any]] = []
    zombies: list[float] = []

    async def send(payload: dict[str, Any]) -> None:
        sent.append((trio.current_time() - start, payload["d"]))
        if ack:
            beat.ack()

    async def on_zombie() -> None:
        zombies.append(trio.current_time() - start)

    with trio.move_on_after(until):
        await keep_heartbeat(beat, send, lambda: 7, on_zombie)
    return sent, zombies


async def test_first_heartbeat_is_jittered_then_every_interval_with_the_last_sequence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, zombies = await _beats(40000, 0.25, ack=True, until=125)
    assert sent == [(10.0, 7), (50.0, 7), (90.0, 7)]
    assert zombies == []


async def test_a_beat_without_ack_is_a_zombie_at_the_next_due_beat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, zombies = await _beats(40000, 0.5, ack=False, until=500)
    # One unanswered beat at 20 s; at 60 s the next one is due: a zombie,
    # found within two intervals of HELLO.
    assert sent == [(20.0, 7)]
    assert zombies == [60.0]


def test_heartbeat_lateness_is_the_worst_delay_after_due() -> None:
    beat = Heartbeat.after_hello(0.0, 1000, 0.0)
    beat.beat(0.0)
    beat.ack()
    beat.beat(1.4)
    assert beat.lateness == pytest.approx(0.4)
    assert beat.next_at == 2.0


@pytest.mark.parametrize(
    ("code", "resumable", "expected"),
    [
        (4004, True, Next.STOP),
        (4010, True, Next.STOP),
        (4011, True, Next.STOP),
        (4012, True, Next.STOP),
        (4013, True, Next.STOP),
        (4014, True, Next.STOP),
        (4000, True, Next.RESUME),
        (None, True, Next.RESUME),
        (4000, False, Next.IDENTIFY),
        (4007, True, Next.IDENTIFY),
        (4009, True, Next.IDENTIFY),
        (1000, True, Next.IDENTIFY),
    ],
)
def test_close_codes_decide_resume_identify_or_stop(
    code: int | None, resumable: bool, expected: Next
) -> None:
    assert protocol.after_close(code, resumable_session=resumable) is expected


def test_fatal_close_reason_names_what_to_fix() -> None:
    assert "Message Content intent" in protocol.close_reason(4014)
    assert "token" in protocol.close_reason(4004)


def test_identify_is_paced_by_max_concurrency_per_five_seconds() -> None:
    pacer = IdentifyPacer()
    pacer.update(0.0, {"remaining": 10, "reset_after": 60000, "max_concurrency": 2})
    assert pacer.wait(0.0) == 0.0
    pacer.sent(0.0)
    pacer.sent(1.0)
    assert pacer.wait(1.0) == 4.0  # two in the window: the first leaves it at 5 s
    assert pacer.wait(5.0) == 0.0


def test_identify_waits_for_the_session_start_reset_when_none_remain() -> None:
    pacer = IdentifyPacer()
    pacer.update(100.0, {"remaining": 0, "reset_after": 30000, "max_concurrency": 1})
    assert pacer.wait(100.0) == 30.0
    assert pacer.wait(130.0) == 0.0


def test_a_replayed_sequence_is_not_new() -> None:
    session = Session()
    assert session.saw(1) and session.saw(2)
    assert not session.saw(2)
    assert not session.saw(1)
    assert session.saw(3) and session.seq == 3


def test_identify_asks_for_exactly_the_intents_it_needs() -> None:
    d = protocol.identify("T")["d"]
    assert d["intents"] == (1 << 0) | (1 << 9) | (1 << 10) | (1 << 12) | (1 << 15)
    assert set(d["properties"]) == {"os", "browser", "device"}


def test_gateway_url_gets_version_and_encoding() -> None:
    assert with_query("wss://gateway.discord.gg") == "wss://gateway.discord.gg/?v=10&encoding=json"
    assert with_query("ws://127.0.0.1:5/resume") == "ws://127.0.0.1:5/resume?v=10&encoding=json"


def test_a_replica_of_a_cluster_identifies_as_the_shard_of_its_ordinal() -> None:
    assert "shard" not in protocol.identify("T")["d"]
    assert protocol.identify("T", shard=(2, 3))["d"]["shard"] == [2, 3]
