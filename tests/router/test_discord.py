"""The router, the pool with fake agents, and the Discord front-end against the fake Discord."""

from __future__ import annotations

from collections.abc import Callable

import trio

from broker.chat.router import Router
from broker.config import BrokerConfig
from broker.sessions.pool import open_pool
from broker.testing.fake_discord import ALICE, BOB, CHANNEL_ID, FakeDiscord
from tests.frontends.discord.harness import running


def question(fake: FakeDiscord, thread: str) -> dict[str, object] | None:
    return next((m for m in fake.bot_messages(thread) if m["components"]), None)


def texts(fake: FakeDiscord, thread: str) -> list[str]:
    return [m["content"] for m in fake.bot_messages(thread)]


async def test_a_mention_is_answered_by_an_agent_in_a_new_thread_streamed_by_edits(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(render={"edit_interval_ms": 50})
    async with open_pool(config) as pool, running(Router(pool, config)) as (fake, _):
        with trio.fail_after(20):
            message = await fake.post_message(
                CHANNEL_ID,
                "@reply one two three four\n@chunks 4\n@chunk-delay 0.1",
                mention_bot=True,
            )
            thread = message["id"]
            await fake.wait_for(lambda: texts(fake, thread) == ["one two three four"])
        [reply] = fake.bot_messages(thread)
        assert reply["edits"] >= 1  # streamed: a first message, then edits
        assert pool.snapshot().sessions[0].thread_key == f"discord:{thread}"
        fake.assert_clean()


async def test_a_permission_question_is_answered_with_its_buttons(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(permissions={"default": "ask"})
    async with open_pool(config) as pool, running(Router(pool, config)) as (fake, _):
        with trio.fail_after(30):
            message = await fake.post_message(
                CHANNEL_ID, "@permission execute make build", mention_bot=True, author=ALICE
            )
            thread = message["id"]
            await fake.wait_for(lambda: question(fake, thread) is not None)
            asked = question(fake, thread)
            assert asked is not None
            buttons = [b for row in asked["components"] for b in row["components"]]  # type: ignore[attr-defined]
            by_command = {b["custom_id"].removeprefix("cmd:"): b["custom_id"] for b in buttons}
            assert "/allow 1" in by_command and "/deny 1" in by_command
            stranger = await fake.click(asked["id"], by_command["/allow 1"], clicker=BOB)  # type: ignore[arg-type]
            await fake.wait_for(lambda: bool(fake.followups))
            assert asked["components"]  # still open
            await fake.click(asked["id"], by_command["/allow 1"], clicker=ALICE)  # type: ignore[arg-type]
            await fake.wait_for(lambda: not asked["components"])
            await fake.wait_for(
                lambda: any("selected allow_once" in t for t in texts(fake, thread))
            )
        assert fake.interactions[stranger]["callback"] == {"type": 6}
        [note] = fake.followups
        assert note["flags"] == 64
        assert "allowed once by @alice" in str(asked["content"])
        fake.assert_clean()
