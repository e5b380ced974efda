"""Slack end to end: the fake Slack, the Slack front-end, the router, a pool of fake agents."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from broker.chat.commands import COMMANDS
from broker.chat.router import Router
from broker.config import BrokerConfig
from broker.frontends.slack.adapter import SlackFrontend
from broker.sessions.pool import open_pool
from broker.testing.fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack, Message, open_fake_slack
from tests.frontends.slack.stack import FAST

SILENT_SECS = 20  # a tool call that says nothing for this long


@attrs.define
class SlackBroker:
    fake: FakeSlack
    frontend: SlackFrontend


@asynccontextmanager
async def slack_broker(config: BrokerConfig) -> AsyncIterator[SlackBroker]:
    """Pool, router and Slack front-end against a fake Slack, connected."""
    async with open_fake_slack() as fake, open_pool(config) as pool, trio.open_nursery() as nursery:
        slack = attrs.evolve(
            config.slack,
            enabled=True,
            app_token=APP_TOKEN,
            bot_token=BOT_TOKEN,
            api_base_url=fake.api_url,
        )
        config = attrs.evolve(config, slack=slack)
        router = Router(pool, config)
        frontend = SlackFrontend(
            config.slack,
            router,
            commands=COMMANDS,
            max_file_bytes=config.prompt.max_attachment_bytes,
            backoff=FAST,
            edit_interval=0.2,
        )
        await nursery.start(frontend.run)
        await fake.wait_for(lambda: fake.open_sockets == 1)
        yield SlackBroker(fake, frontend)
        await pool.aclose()
        nursery.cancel_scope.cancel()


def working(fake: FakeSlack, thread_ts: str) -> bool:
    return any("Working" in t for m in fake.bot_messages("C0CHAN", thread_ts) for t in m.texts)


def final_text(fake: FakeSlack, thread_ts: str) -> list[str]:
    return [m.text for m in fake.bot_messages("C0CHAN", thread_ts)]


async def test_mention_is_answered_in_its_thread_by_the_agent(
    make_config: Callable[..., BrokerConfig],
) -> None:
    async with slack_broker(make_config()) as broker:
        fake = broker.fake
        with trio.fail_after(20):
            mention = fake.user_message("hello agent", mention=True)
            await fake.send_event(mention)
            await fake.wait_for(lambda: "hello agent" in "".join(final_text(fake, mention["ts"])))
            follow = fake.user_message("and more", thread_ts=mention["ts"])
            await fake.send_event(follow)
            await fake.wait_for(
                lambda: any("and more" in t for t in final_text(fake, mention["ts"]))
            )
        fake.assert_clean()


async def test_every_envelope_is_acked_in_time_while_a_turn_sits_in_a_silent_tool_call(
    make_config: Callable[..., BrokerConfig],
) -> None:
    async with slack_broker(make_config()) as broker:
        fake = broker.fake
        with trio.fail_after(SILENT_SECS):  # the turn is cancelled long before its tool ends
            busy = fake.user_message(f"@silent-tool {SILENT_SECS}", mention=True)
            await fake.send_event(busy)
            await fake.wait_for(lambda: working(fake, busy["ts"]))  # the tool call runs
            others: list[dict[str, Any]] = []
            for n in range(10):
                question = fake.user_message(f"!help {n}", mention=True)
                others.append(question)
                await fake.send_event(question)
            status = fake.user_message("!status", thread_ts=busy["ts"])
            await fake.send_event(status)
            for question in others:
                await fake.wait_for(
                    functools.partial(
                        lambda ts: bool(fake.bot_messages("C0CHAN", ts)), question["ts"]
                    )
                )
            await fake.wait_for(
                lambda: any("Turn running" in t for t in final_text(fake, busy["ts"]))
            )
            cancel = fake.user_message("cancel", thread_ts=busy["ts"], mention=True)
            await fake.send_event(cancel)
            await fake.wait_for(lambda: len(fake.acks) == len(fake.deliveries))
            await fake.wait_for(
                lambda: any("Cancelling" in t for t in final_text(fake, busy["ts"]))
            )
        assert len(fake.acks) == 13
        fake.assert_clean()  # no ack later than 3 s, no Web API misuse


async def test_a_long_reply_is_split_under_slacks_limit_with_fences_closed_and_reopened(
    make_config: Callable[..., BrokerConfig],
) -> None:
    async with slack_broker(make_config()) as broker:
        fake = broker.fake
        code = "```python\\n" + "".join(f"value_{n} = {n}\\n" for n in range(600)) + "```"
        with trio.fail_after(20):
            mention = fake.user_message(f"@reply {code}\n@chunks 20", mention=True)
            await fake.send_event(mention)
            await fake.wait_for(lambda: "value_599" in "".join(final_text(fake, mention["ts"])))
            while broker.frontend.edits_pending:  # the last edits of the earlier parts
                await broker.frontend.wait_changed()
        parts = final_text(fake, mention["ts"])
        assert len(parts) >= 2
        for part in parts:
            assert len(part) <= 4000
            assert part.count("```") % 2 == 0, part[-80:]
        fake.assert_clean()


async def test_other_bots_are_ignored_unless_allowed(
    make_config: Callable[..., BrokerConfig],
) -> None:
    async with slack_broker(make_config()) as broker:
        fake = broker.fake
        with trio.fail_after(20):
            bot = fake.user_message("i am a bot", mention=True, user="U0OTHER")
            bot["bot_id"] = "B0OTHER"
            await fake.send_event(bot)
            person = fake.user_message("i am a person", mention=True)
            await fake.send_event(person)
            await fake.wait_for(lambda: bool(final_text(fake, person["ts"])))
            await fake.wait_for(lambda: "i am a person" in "".join(final_text(fake, person["ts"])))
        assert not final_text(fake, bot["ts"])


def question_message(fake: FakeSlack, thread_ts: str) -> Message | None:
    return next((m for m in fake.bot_messages("C0CHAN", thread_ts) if m.blocks), None)


async def test_a_permission_question_is_answered_with_its_buttons(
    make_config: Callable[..., BrokerConfig],
) -> None:
    async with slack_broker(make_config(permissions={"default": "ask"})) as broker:
        fake = broker.fake
        with trio.fail_after(30):
            mention = fake.user_message("@permission execute make build", mention=True)
            await fake.send_event(mention)
            await fake.wait_for(lambda: question_message(fake, mention["ts"]) is not None)
            question = question_message(fake, mention["ts"])
            assert question is not None
            values = [
                e["value"] for b in question.blocks if b["type"] == "actions" for e in b["elements"]
            ]
            assert "/allow 1" in values and "/deny 1" in values
            stranger = await fake.send(
                "interactive", fake.block_actions(question, "/allow 1", user="U0BOB")
            )
            await fake.wait_for(lambda: bool(fake.ephemeral))
            assert question.blocks  # still open
            await fake.send("interactive", fake.block_actions(question, "/allow 1"))
            await fake.wait_for(lambda: not question.blocks)
            await fake.wait_for(
                lambda: any("selected allow_once" in t for t in final_text(fake, mention["ts"]))
            )
        assert stranger.envelope_id in fake.acks
        (refusal,) = fake.ephemeral
        assert refusal["user"] == "U0BOB" and refusal["thread_ts"] == mention["ts"]
        assert "allowed once by @U0ALICE" in question.text
        fake.assert_clean()
