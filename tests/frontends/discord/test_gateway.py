"""The gateway connection against the fake Discord: resume, zombies, invalid sessions, fatal
closes."""

from __future__ import annotations

import logging

import pytest
import trio

from broker.frontends.discord.gateway import State
from broker.testing.fake_discord import CHANNEL_ID

from .harness import WAIT_SECS, Recorder, running, wait_until


async def test_identify_then_ready_keeps_the_session_and_resume_url() -> None:
    async with running() as (fake, frontend):
        [identify] = fake.identifies
        assert identify["intents"] == 1 | 1 << 9 | 1 << 10 | 1 << 12 | 1 << 15
        assert frontend.gateway.session.session_id == fake.session.session_id  # type: ignore[union-attr]
        assert frontend.gateway.session.resume_url == fake.gateway_url + "/resume"
        assert fake.connection_paths == ["/?v=10&encoding=json"]
        assert frontend.snapshot().state == "ready"


async def test_reconnect_resumes_and_an_event_sent_in_the_gap_is_answered_once() -> None:
    sink = Recorder()
    async with running(sink, fake_options={"heartbeat_interval_ms": 60000}) as (fake, _):
        fake.replay_overlap = 1  # Discord may replay one the client saw: still handled once
        await fake.post_message(CHANNEL_ID, "before", mention_bot=True)
        await sink.wait_events(1)
        fake.hold_connections()
        await fake.reconnect()
        await wait_until(fake, lambda: not fake.connected)
        message = await fake.post_message(CHANNEL_ID, "in the gap", mention_bot=True)
        fake.release_connections()
        events = await sink.wait_events(2)
        await wait_until(fake, lambda: bool(fake.bot_messages(message["id"])))
        assert [e.content.text for e in events] == ["before", "in the gap"]
        assert [m["content"] for m in fake.bot_messages(message["id"])] == ["echo: in the gap"]
        [resume] = fake.resumes
        assert resume["session_id"] == fake.session.session_id  # type: ignore[union-attr]
        assert fake.connection_paths[-1] == "/resume?v=10&encoding=json"
        assert len(fake.identifies) == 1
        fake.assert_clean()


async def test_a_zombie_connection_is_closed_at_the_next_beat_and_resumed() -> None:
    async with running(fake_options={"heartbeat_interval_ms": 300}) as (fake, frontend):
        fake.ack_heartbeats = False
        beats_before = len(fake.heartbeats)
        await wait_until(fake, lambda: frontend.gateway.zombies == 1)
        # Exactly one unanswered beat, then the next due one finds it unanswered:
        # the zombie is found within two heartbeat intervals.
        assert len(fake.heartbeats) - beats_before <= 2
        fake.ack_heartbeats = True
        await wait_until(
            fake, lambda: len(fake.resumes) == 1 and frontend.gateway.state is State.READY
        )
        assert len(fake.identifies) == 1
        fake.assert_clean()


async def test_invalid_session_not_resumable_identifies_anew_after_a_pause() -> None:
    # rand 0: the 1-5 s pause is its minimum, 1 s; two IDENTIFYs per 5 s are
    # allowed, so the second does not wait for the window.
    async with running(
        fake_options={"max_concurrency": 2}, gateway_options={"rand": lambda: 0.0}
    ) as (fake, frontend):
        first = fake.session.session_id  # type: ignore[union-attr]
        await fake.invalid_session(False)
        await wait_until(fake, lambda: len(fake.identifies) == 2)
        await wait_until(fake, lambda: frontend.gateway.state is State.READY)
        assert frontend.gateway.session.session_id != first
        assert fake.resumes == []


async def test_invalid_session_resumable_resumes() -> None:
    async with running() as (fake, frontend):
        await fake.invalid_session(True)
        await wait_until(fake, lambda: len(fake.resumes) == 1)
        await wait_until(fake, lambda: frontend.gateway.state is State.READY)
        assert len(fake.identifies) == 1


@pytest.mark.parametrize(
    ("code", "words"), [(4004, "authentication failed"), (4014, "Message Content intent")]
)
async def test_a_fatal_close_stops_reconnecting_and_says_why(
    code: int, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(wait_ready=False, fake_options={"identify_close": code}) as (fake, frontend):
        with trio.fail_after(WAIT_SECS):
            await frontend.gateway.wait_state(State.STOPPED)
        assert fake.connections == 1 and len(fake.identifies) == 1
        assert words in frontend.snapshot().fatal
        assert words in caplog.text
        # Stopped for good: the gateway task sleeps; nothing dials again.
        with trio.move_on_after(0.5):
            await wait_until(fake, lambda: fake.connections > 1)
        assert fake.connections == 1
        assert fake.token not in caplog.text


async def test_a_wrong_token_stops_before_any_connection() -> None:
    # The bot's token was reset in the Developer Portal; the config has the old one.
    async with running(wait_ready=False, settings={"token": "old-token"}) as (fake, frontend):
        with trio.fail_after(WAIT_SECS):
            await frontend.gateway.wait_state(State.STOPPED)
        assert fake.connections == 0
        assert "HTTP 401" in frontend.snapshot().fatal


async def test_a_dropped_connection_without_a_close_code_resumes() -> None:
    async with running() as (fake, frontend):
        await fake.close(4000, "going away")
        await wait_until(fake, lambda: len(fake.resumes) == 1)
        await wait_until(fake, lambda: frontend.gateway.state is State.READY)
        assert len(fake.identifies) == 1


async def test_a_heartbeat_request_is_answered_at_once_with_the_last_sequence() -> None:
    async with running(fake_options={"heartbeat_interval_ms": 60000}) as (fake, frontend):
        before = len(fake.heartbeats)
        await fake.send_op(1)
        await wait_until(fake, lambda: len(fake.heartbeats) == before + 1)
        assert fake.heartbeats[-1][1] == frontend.gateway.session.seq
        fake.assert_clean()
