"""Permission questions through the real stack: the fake agent asks, the person
in the thread answers over a real WebSocket connection (policy ``ask``)."""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

from broker.chat.router import Router
from broker.config import BrokerConfig
from broker.frontends.base import ReplyChannel
from broker.frontends.server import serve_websocket
from broker.frontends.wire import Command, InboundEvent
from broker.sessions.pool import open_pool
from broker.testing.fake_gateway import make_event
from tests.router.stack import Client, Frame, Stack, connect, running_broker

KEY = "cli:1001"


def ask_config(
    make_config: Callable[..., BrokerConfig],
    sections: dict[str, Any] | None = None,
    **permissions: Any,
) -> BrokerConfig:
    return make_config(permissions={"default": "ask", **permissions}, **(sections or {}))


def questions(client: Client, event: InboundEvent) -> list[Frame]:
    """The question messages of ``event``'s turn (protocol v1 carries no
    buttons: the text says how to answer)."""
    return [
        f
        for f in client.for_event(event.event_id)
        if f.reply.request_id and f.reply.text.startswith("❓ Question")
    ]


async def wait_questions(client: Client, event: InboundEvent, count: int = 1) -> list[Frame]:
    await client.wait_for(lambda: len(questions(client, event)) >= count)
    return questions(client, event)


def edits_of(client: Client, frame: Frame) -> list[str]:
    assert frame.reply.request_id is not None
    message_id = client.request_message[frame.reply.request_id]
    return [
        f.reply.text
        for f in client.frames
        if f.reply.command is Command.EDIT_MESSAGE and f.reply.reply_to == message_id
    ]


async def wait_edit(client: Client, frame: Frame) -> str:
    await client.wait_for(lambda: bool(edits_of(client, frame)))
    return edits_of(client, frame)[-1]


async def final_text(client: Client, stack: Stack, event: InboundEvent) -> str:
    """The turn's final reply, once the event's task has ended (a queued
    message's reply replaces its "⏳ Queued" note: the note's last edit)."""
    frames = await client.settle(stack, event)
    asked = questions(client, event)
    texts = [f.reply.text for f in frames if f.reply.command is None and f not in asked]
    if texts[-1].startswith("⏳ Queued"):
        return [f.reply.text for f in frames if f.reply.command is Command.EDIT_MESSAGE][-1]
    return texts[-1]


async def test_allow_once_answers_the_agent_and_edits_the_question(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute make build")
            (question,) = await wait_questions(client, event)
            answer = await client.ask("/allow 1")
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
    text = question.reply.text
    assert "❓ Question 1" in text and "make build (execute)" in text and "$ make build" in text
    for command in ("/allow 1", "/allow always 1", "/deny 1", "/deny always 1"):
        assert command in text
    assert "@alice or an approver can answer" in text
    assert answer.startswith("Question 1 (make build): ✅ allowed once by @alice at ")
    assert "Permission for “make build”: selected allow_once." in final
    assert "✅ make build" in final
    assert "make build (execute)" in edited and "✅ allowed once by @alice at " in edited
    assert "/allow 1" not in edited


async def test_allow_always_without_a_number_answers_the_only_open_question(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission edit notes.txt")
            (question,) = await wait_questions(client, event)
            answer = await client.ask("/allow always")
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
    assert "✅ always allowed by @alice" in answer
    assert "selected allow_always" in final
    assert "✅ always allowed by @alice" in edited


async def test_deny_rejects_and_the_tool_fails(make_config: Callable[..., BrokerConfig]) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute rm -rf build")
            (question,) = await wait_questions(client, event)
            answer = await client.ask("/deny 1")
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
    assert "🚫 rejected by @alice" in answer and "🚫 rejected by @alice" in edited
    assert "Permission for “rm -rf build”: selected reject_once." in final
    assert "❌ rm -rf build failed" in final


async def test_no_answer_in_time_gives_the_agent_its_reject_option_and_says_so(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = ask_config(make_config, ask_timeout_secs=0.5)
    with trio.fail_after(30):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send("@permission execute deploy")
            (question,) = await wait_questions(client, event)
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
            late = await client.ask("/allow 1")
    assert "⏱️ No answer within" in edited and "the agent was told “Reject”" in edited
    assert "selected reject_once" in final
    assert late.startswith("This question is no longer open: question 1 was settled (⏱️")
    assert stack.pool.snapshot().questions.timed_out == 1


async def test_cancel_while_asked_answers_cancelled_and_closes_the_question(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute long job\n@reply done")
            (question,) = await wait_questions(client, event)
            cancel = await client.ask("/cancel")
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
            late = await client.ask("/allow 1")
    assert cancel.startswith("🛑 Cancelling")
    assert "🛑 Cancelled with /cancel" in edited
    assert "Cancelled." in final
    assert "This question is no longer open" in late


async def test_agent_death_while_asked_closes_the_question_with_a_note(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute build")
            (question,) = await wait_questions(client, event)
            snap = stack.pool.session_snapshot(KEY)
            assert snap is not None and snap.pid is not None
            os.kill(snap.pid, signal.SIGKILL)
            final = await final_text(client, stack, event)
            edited = await wait_edit(client, question)
            after = await client.ask("hello again")
    assert "⚠️ Closed without an answer: the agent's turn ended or the agent stopped." in edited
    assert "killed by SIGKILL" in final or "exited" in final
    assert "You said: “hello again”" in after  # the thread goes on with a new agent


async def test_a_stranger_is_refused_and_an_approver_may_answer(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = ask_config(make_config, approvers=["cli:7"])
    with trio.fail_after(30):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send("@permission execute make")
            await wait_questions(client, event)
            stranger = await client.ask("/allow 1", sender_id="99")
            still_open = stack.pool.session_snapshot(KEY)
            approver = await client.ask("/deny 1", sender_id="7")
            final = await final_text(client, stack, event)
    assert stranger == "Only @alice or an approver can answer this."
    assert still_open is not None and still_open.waiting_for == "make"
    assert "🚫 rejected by @alice" in approver  # make_event names every sender alice
    assert "selected reject_once" in final


async def test_bots_never_answer(make_config: Callable[..., BrokerConfig]) -> None:
    config = ask_config(make_config, sections={"router": {"allow_bots": True}})
    with trio.fail_after(30):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send("@permission execute make")
            await wait_questions(client, event)
            bot = await client.ask("/allow 1", is_bot=True)
            answer = await client.ask("/allow 1")
            await final_text(client, stack, event)
    assert bot == "Bots cannot answer questions."
    assert "✅ allowed once" in answer


async def test_two_questions_at_once_are_numbered_and_answered_separately(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permissions 2 execute job")
            first, second = await wait_questions(client, event, 2)
            which = await client.ask("/allow")
            status = await client.ask("/status")
            deny = await client.ask("/deny 2")
            allow = await client.ask("/answer 1 1")
            final = await final_text(client, stack, event)
            edits = [await wait_edit(client, first), await wait_edit(client, second)]
    numbers = sorted(f.reply.text.split(":")[0] for f in (first, second))
    assert numbers == ["❓ Question 1", "❓ Question 2"]
    assert (
        which == "Several questions are open here (1, 2): say which one, e.g. /allow 1 or /deny 1."
    )
    assert "⏸️ Waiting for approval: job " in status
    assert "🚫 rejected" in deny and "✅ allowed once" in allow
    by_number = {f.reply.text.split(":")[0]: e for f, e in zip((first, second), edits, strict=True)}
    assert "✅ allowed once" in by_number["❓ Question 1"]
    assert "🚫 rejected" in by_number["❓ Question 2"]
    assert final.count("selected allow_once") == 1 and final.count("selected reject_once") == 1


class SwappableSink:
    """The server's sink, pointing at the router of the pool running now, so a
    client stays connected while the pool behind it stops and a new one starts."""

    def __init__(self) -> None:
        self.router: Router | None = None

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        assert self.router is not None
        await self.router.handle_event(event, channel)


async def test_a_question_open_at_shutdown_is_closed_and_no_longer_open_after_restart(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = ask_config(make_config)
    sink = SwappableSink()
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(functools.partial(serve_websocket, config.server, sink))
            async with trio_websocket.open_websocket_url(server.url) as ws:
                client = Client(ws, answer_requests=True)
                nursery.start_soon(client.run)
                async with open_pool(config) as pool:
                    sink.router = Router(pool, config)
                    event = await client.send("@permission execute migrate")
                    (question,) = await wait_questions(client, event)
                edited = await wait_edit(client, question)
                (final,) = [t for t in await client.reply_to(event) if "❓" not in t]
                async with open_pool(config) as pool:
                    sink.router = Router(pool, config)
                    late = await client.ask("/allow 1")
                    status = await client.ask("/status")
            nursery.cancel_scope.cancel()
    assert "🔌 Closed without an answer: the broker is restarting." in edited
    assert "restarting" in final
    assert late.startswith("This question is no longer open: there is no open question 1")
    assert "Waiting for approval" not in status


async def test_bad_answers_get_clear_replies_and_block_nothing(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            nothing = await client.ask("/allow")
            event = await client.send("@permission execute make")
            (question,) = await wait_questions(client, event)
            unknown = await client.ask("/answer 1 9")
            typo = await client.ask("/allow first")
            elsewhere = await client.ask("/allow 1", channel_id="2002")
            other_thread = await client.ask("hello from elsewhere", channel_id="2002")
            assert question.reply.request_id is not None
            message_id = client.request_message[question.reply.request_id]
            click = attrs.evolve(
                make_event("/allow 1", platform="cli"), event_type="button", message_id=message_id
            )
            again = attrs.evolve(click, event_id="evt_click_again")
            stale = attrs.evolve(click, event_id="evt_stale", message_id="an-older-message")
            await client.send_event(stale)
            old_button = (await client.reply_to(stale))[0]
            await client.send_event(click)
            await client.send_event(again)
            second = (await client.reply_to(again))[0]
            final = await final_text(client, stack, event)
            first = client.texts(click.event_id)
    assert nothing == "There is no open question in this thread to answer."
    assert unknown.startswith("Question 1 has no option 9. Choose one of: Allow once: /allow 1;")
    assert typo.startswith("“first” is not a question number.")
    assert elsewhere.startswith("This question is no longer open: there is no open question 1")
    assert "You said: “hello from elsewhere”" in other_thread
    assert old_button.startswith("This question is no longer open: there is no open question 1")
    assert first == []  # the first click is shown by the question's edit
    assert second.startswith("This question is no longer open: question 1 was settled (✅ allowed")
    assert "selected allow_once" in final


async def test_questions_without_options_or_with_duplicate_ids_are_refused_with_a_note(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send(
                "@permission-bad none execute a\n@permission-bad duplicate execute b\n@reply ok"
            )
            final = await final_text(client, stack, event)
            notes = [
                f.reply.text
                for f in client.for_event(event.event_id)
                if "❓ Question" in f.reply.text
            ]
            after = await client.ask("still here?")
    assert len(notes) == 2
    assert "offered nothing to choose from" in notes[0]
    assert "offered options with the same id" in notes[1]
    assert "Permission for “a” was cancelled." in final
    assert "Permission for “b” was cancelled." in final
    assert "You said: “still here?”" in after


async def test_time_waiting_for_a_person_does_not_count_toward_the_hard_ceiling(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = ask_config(make_config, sections={"timeouts": {"turn_hard_secs": 1}})
    with trio.fail_after(30):
        async with running_broker(config) as stack, connect(stack) as client:
            event = await client.send("@permission execute slow approval\n@reply finished")
            await wait_questions(client, event)
            await trio.sleep(1.5)  # past the ceiling while the question is open
            await client.ask("/allow 1")
            final = await final_text(client, stack, event)
    assert final.startswith("✅ slow approval\n\nfinished")


async def test_reset_while_asked_closes_the_question_with_a_note(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute build")
            (question,) = await wait_questions(client, event)
            reset = await client.ask("/reset")
            edited = await wait_edit(client, question)
            await final_text(client, stack, event)
    assert reset.startswith("🔄 Reset")
    assert "🔄 Closed without an answer: the conversation was reset." in edited


async def test_a_message_behind_an_open_question_is_queued_visibly_and_runs_after_it(
    make_config: Callable[..., BrokerConfig],
) -> None:
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute build\n@reply built")
            await wait_questions(client, event)
            behind = await client.send("@reply next")
            status = await client.ask("/status")
            await client.ask("/allow 1")
            first = await final_text(client, stack, event)
            second = await final_text(client, stack, behind)
    assert "⏸️ Waiting for approval: build" in status and "Queue: 1 waiting" in status
    assert first.startswith("✅ build\n\nbuilt") and second == "next"


async def test_every_question_and_decision_is_logged_with_thread_tool_kind_who_and_latency(
    make_config: Callable[..., BrokerConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="broker.sessions.questions")
    with trio.fail_after(30):
        async with running_broker(ask_config(make_config)) as stack, connect(stack) as client:
            event = await client.send("@permission execute make")
            await wait_questions(client, event)
            await client.ask("/deny 1")
            await final_text(client, stack, event)
    lines = [r.getMessage() for r in caplog.records if r.name == "broker.sessions.questions"]
    assert lines[0] == "cli:1001: question 1 asked: tool 'make' kind execute, options " + (
        "['allow_once', 'allow_always', 'reject_once', 'reject_always']"
    )
    assert lines[1].startswith(
        "cli:1001: question 1 (make, kind execute) answered: option reject_once by alice after "
    )
    assert lines[1].endswith(" s")
