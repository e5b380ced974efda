"""Replies through the real stack: plain, streamed, split, reactions, and the
failures that must still end in exactly one final reply."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable

import trio

from broker import sentences
from broker.chat.split import platform_limit
from broker.config import BrokerConfig
from broker.frontends.wire import Command, InboundEvent
from broker.sentences import pool_full_reason
from tests.router.stack import Frame, connect, edits, running_broker


def code_reply(lines: int) -> str:
    """A fake-agent script whose reply is one long python code block."""
    body = "\\n".join(f"print({n})  # a line of code that takes some room" for n in range(lines))
    return f"@reply Here:\\n```python\\n{body}\\n```\\nDone.\n@chunks 1"


async def test_a_plain_message_gets_exactly_one_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            event = await client.send("hello there")
            frames = await client.settle(stack, event)
    assert len(frames) == 1 and frames[0].reply.command is None
    text = frames[0].reply.text
    assert text.startswith("✅ Reading the conversation\n\nHello! You said: “hello there”.")


async def test_streaming_sends_one_request_then_throttled_edits_then_the_final_text(
    make_config: Callable[..., BrokerConfig],
) -> None:
    interval = 0.3
    config = make_config(server={"streaming": True}, render={"edit_interval_ms": 300})
    words = " ".join(f"w{n}" for n in range(40))
    script = f"@tool Prepare 0.3 read\n@reply {words}\n@chunks 20\n@chunk-delay 0.1"
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send(script)
            frames = await client.settle(stack, event)
    first, rest = frames[0], frames[1:]
    assert first.reply.request_id is not None and first.reply.reply_to == event.event_id
    assert rest == edits(frames) and rest  # everything after the first frame edits it
    assert {f.reply.reply_to for f in rest} == {client_message_id(client.message_event, event)}
    texts = [f.reply.text for f in frames]
    assert len(set(texts)) == len(texts), "an unchanged text was sent again"
    assert texts[-1] == f"✅ Prepare\n\n{words}"
    assert any(words[:20] in t and t != texts[-1] for t in texts), "no partial text was shown"
    gaps = [b.at - a.at for a, b in itertools.pairwise(frames[:-1])]
    # two seconds of chunks: about 2 / 0.3 edits, never two within the interval
    # (halved as slack for delivery jitter on a loaded machine); the final
    # edit goes as soon as the turn ends, whatever the interval
    assert min(gaps) >= interval / 2, gaps
    assert len(frames) <= (frames[-1].at - frames[0].at) / interval + 2


def client_message_id(message_event: dict[str, str], event: InboundEvent) -> str:
    (message_id,) = [m for m, e in message_event.items() if e == event.event_id]
    return message_id


async def test_no_response_to_the_first_message_falls_back_to_one_plain_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(server={"streaming": True}, render={"edit_interval_ms": 50})
    with trio.fail_after(60):
        async with (
            running_broker(config, response_timeout=0.5) as stack,
            connect(stack, answer_requests=False) as client,
        ):
            event = await client.send("@reply streamed or not\n@chunks 5\n@chunk-delay 0.3")
            frames = await client.settle(stack, event)
    assert [f.reply.request_id is not None for f in frames] == [True, False]
    assert frames[1].reply.command is None and frames[1].reply.reply_to == event.event_id
    assert frames[1].reply.text == "streamed or not"


async def test_long_replies_are_split_at_the_platform_limit_with_fences_reopened(
    make_config: Callable[..., BrokerConfig],
) -> None:
    limit = platform_limit("discord")
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            event = await client.send(code_reply(120), platform="discord")
            frames = await client.settle(stack, event)
    texts = [f.reply.text for f in frames]
    assert len(texts) >= 3 and all(len(t) <= limit for t in texts)
    assert texts[0].startswith("Here:\n```python\n") and texts[0].endswith("\n```")
    for middle in texts[1:-1]:
        assert middle.startswith("```python\n") and middle.endswith("\n```")
    assert texts[-1].startswith("```python\n") and texts[-1].endswith("```\nDone.")
    joined = "".join(texts)
    assert all(f"print({n})" in joined for n in range(120))


async def test_a_streamed_reply_that_outgrows_a_message_continues_in_new_messages(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(server={"streaming": True}, render={"edit_interval_ms": 50})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send(code_reply(120), platform="discord")
            frames = await client.settle(stack, event)
    requests = [f for f in frames if f.reply.request_id]
    assert len(requests) >= 3  # the first message and each continuation asked for an id
    final: dict[str, str] = {}
    for frame in frames:
        key = frame.reply.reply_to if frame.reply.command else frame.reply.request_id
        assert key is not None
        final[key] = frame.reply.text
    assert all(len(t) <= platform_limit("discord") for t in final.values())
    assert "Done." in frames[-1].reply.text or any(t.endswith("Done.") for t in final.values())


async def test_reactions_follow_the_turn_on_the_users_message(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(reactions={"enabled": True}, render={"edit_interval_ms": 50})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send("@tool Build 0.5 execute\n@reply built")
            frames = await client.settle(stack, event)
            reactions = [f.reply for f in client.frames if f.reply.reply_to == event.message_id]
    assert [f.reply.text for f in frames if f.reply.command is None] == ["✅ Build\n\nbuilt"]
    assert all(r.command in (Command.ADD_REACTION, Command.REMOVE_REACTION) for r in reactions)
    added = [r.text for r in reactions if r.command is Command.ADD_REACTION]
    assert "👨‍💻" in added and added[-1] == "🆗"
    shown: set[str] = set()
    for r in reactions:  # each removal takes away what is shown
        if r.command is Command.ADD_REACTION:
            shown.add(r.text)
        else:
            shown.remove(r.text)
    assert shown == {"🆗"}


def single_text(frames: list[Frame]) -> str:
    assert len(frames) == 1, [f.reply.text for f in frames]
    return frames[0].reply.text


async def test_agent_crash_and_hard_timeout_each_end_in_one_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(timeouts={"turn_hard_secs": 2, "cancel_grace_secs": 1})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            crash = await client.send("@say partial\n@crash 3", channel_id="a")
            text = single_text(await client.settle(stack, crash))
            assert text.startswith("partial\n\n💥 The agent process exited unexpectedly")
            assert "exited with code 3" in text and "simulated crash" in text
            slow = await client.send("@say begun\n@hang-hard", channel_id="b")
            text = single_text(await client.settle(stack, slow))
            assert text.startswith("begun\n\n⏱️ Stopped after the 2-second limit.")


async def test_pool_full_and_shutdown_each_end_in_one_reply(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(server={"streaming": True}, pool={"max_sessions": 1})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            busy = await client.send("@say on it\n@tool Long 60", channel_id="a")
            await client.wait_for(lambda: any("on it" in f.reply.text for f in client.frames))
            refused = await client.send("hello", channel_id="b")
            text = single_text(await client.settle(stack, refused))
            assert pool_full_reason(1) in text
            await stack.pool.aclose()
            frames = await client.settle(stack, busy)
            assert frames[0].reply.request_id and frames[1:] == edits(frames)
            assert f"🔌 {sentences.SHUTDOWN}" in frames[-1].reply.text
            after = await client.send("hello again", channel_id="c")
            assert sentences.SHUTDOWN in single_text(await client.settle(stack, after))


async def test_a_slow_turn_holds_up_no_other_thread(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            slow = await client.send("@silent-tool 60", channel_id="a")
            with trio.fail_after(10):
                assert await client.ask("@reply quick", channel_id="b") == "quick"
                assert (await client.ask("/status", channel_id="a")).startswith("📊 Agent")
            assert client.for_event(slow.event_id) == []


async def test_a_client_that_disconnects_mid_turn_gets_the_reply_when_it_reconnects_for_the_thread(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack:
            async with connect(stack) as client:
                event = await client.send("@delay 1\n@reply kept for you")
            await stack.tracked.wait_ended(event.event_id)
            async with connect(stack, url=stack.server.url + "?threads=cli:1001") as again:
                assert await again.reply_to(event) == ["kept for you"]


async def test_a_queued_message_is_answered_at_once_with_its_place_and_the_reply_replaces_it(
    make_config: Callable[..., BrokerConfig],
) -> None:
    """Streaming off (the gateway's default): the note comes at once, while
    the first turn still runs, and becomes the reply where it can be edited."""
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            first = await client.send("@delay 1.5\n@reply first done")
            second = await client.send("@reply second done")
            await client.wait_for(lambda: bool(client.for_event(second.event_id)))
            assert client.texts(first.event_id) == []  # the first is still running
            frames = await client.settle(stack, second)
    note, rest = frames[0], frames[1:]
    assert note.reply.request_id and note.reply.reply_to == second.event_id
    assert note.reply.text.startswith("⏳ Queued behind 1 message")
    assert rest and rest == edits(frames)  # the note is edited, never followed
    assert rest[-1].reply.text.endswith("second done")


async def test_where_the_note_cannot_be_edited_the_reply_follows_it(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with (
            running_broker(make_config()) as stack,
            connect(stack, answer_requests=False) as client,
        ):
            await client.send("@delay 1.5\n@reply first done")
            second = await client.send("@reply second done")
            frames = await client.settle(stack, second)
    assert [f.reply.command for f in frames] == [None, None]
    assert frames[0].reply.text.startswith("⏳ Queued behind 1 message")
    assert frames[1].reply.request_id is None and frames[1].reply.text.endswith("second done")


async def test_the_queue_note_follows_the_queue_as_it_moves(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            await client.send("@delay 1\n@reply first done")
            await client.send("@delay 0.5\n@reply second done")
            third = await client.send("@reply third done")
            frames = await client.settle(stack, third)
    texts = [f.reply.text for f in frames]
    assert texts[0].startswith("⏳ Queued behind 2 messages")
    assert any(t.startswith("⏳ Queued behind 1 message;") for t in texts[1:])
    assert texts[-1].endswith("third done") and frames[-1].reply.command is Command.EDIT_MESSAGE


async def test_late_chunks_join_their_own_reply_never_the_next_turns(
    make_config: Callable[..., BrokerConfig],
) -> None:
    """``@late 100 2``: the last two chunks come 100 ms after the agent's
    answer (within the drain window, before the queued next prompt goes).
    Streamed, they show as an edit of that reply; the next turn's reply in
    the same thread has none of them."""
    config = make_config(
        server={"streaming": True}, render={"edit_interval_ms": 50}, timeouts={"drain_ms": 400}
    )
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            first = await client.send("@reply AAA BBB CCC\n@chunks 3\n@late 100 2")
            second = await client.send("@reply next one")
            second_frames = await client.settle(stack, second)
            first_frames = await client.settle(stack, first)
    assert first_frames[-1].reply.text.endswith("AAA BBB CCC"), [f.reply for f in first_frames]
    assert first_frames[-1].reply.command is Command.EDIT_MESSAGE
    assert all("BBB" not in f.reply.text and "CCC" not in f.reply.text for f in second_frames)
    assert second_frames[-1].reply.text.endswith("next one")


async def test_an_agent_killed_mid_drain_loses_no_reply_and_mixes_no_turns(
    make_config: Callable[..., BrokerConfig],
) -> None:
    """The agent answers, then is killed while its late text is still to come
    and the next message waits: the first reply stands as it was, once; the
    next message gets exactly one reply of its own."""
    config = make_config(timeouts={"drain_ms": 1000})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            first = await client.send("@reply AAA BBB\n@chunks 2\n@late 800 1")
            await client.reply_to(first)
            snap = stack.pool.session_snapshot("cli:1001")
            assert snap is not None and snap.pid is not None
            second = await client.send("@reply the second")
            os.kill(snap.pid, signal.SIGKILL)  # in the drain window: BBB never comes
            second_frames = await client.settle(stack, second)
            first_frames = await client.settle(stack, first)
    assert [f.reply.text for f in first_frames] == ["AAA"]
    assert len(second_frames) == 1 and "AAA" not in second_frames[0].reply.text
    assert "BBB" not in second_frames[0].reply.text
