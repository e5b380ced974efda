"""The Slack front-end against the fake Slack, with a recording sink."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from broker.frontends.base import InboundSink, ReplyChannel
from broker.frontends.gateway import BackoffPolicy
from broker.frontends.slack.adapter import SlackFrontend
from broker.frontends.wire import InboundEvent, OutboundReply
from broker.testing.fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack, open_fake_slack

FAST = BackoffPolicy(initial_secs=0.05, max_secs=0.2)


@attrs.frozen
class Settings:
    app_token: str = APP_TOKEN
    bot_token: str = BOT_TOKEN
    api_base_url: str = ""
    mention_required: bool = True


class Recorder:
    """A sink that records each event and answers ``echo: <text>`` (unless
    ``answer`` is False); ``hold`` events wait for :attr:`release`."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.events: list[InboundEvent] = []
        self.release = trio.Event()
        self._changed = trio.Event()

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()
        if event.content.text == "hold":
            await self.release.wait()
        if self.answer:
            await channel.send_reply(OutboundReply.to_event(event, f"echo: {event.content.text}"))

    async def wait_events(self, count: int) -> list[InboundEvent]:
        while len(self.events) < count:
            await self._changed.wait()
        return self.events


@attrs.define
class SlackStack:
    fake: FakeSlack
    frontend: SlackFrontend


@asynccontextmanager
async def running_slack(
    sink: InboundSink,
    *,
    mention_required: bool = True,
    commands: tuple[str, ...] = ("cancel", "status", "reset", "help", "model", "mode"),
    fake_setup: Callable[[FakeSlack], None] | None = None,
    **options: Any,
) -> AsyncIterator[SlackStack]:
    """A fake Slack and the front-end connected to it (after ``hello``)."""
    async with open_fake_slack() as fake, trio.open_nursery() as nursery:
        if fake_setup is not None:
            fake_setup(fake)
        settings = Settings(api_base_url=fake.api_url, mention_required=mention_required)
        options.setdefault("backoff", FAST)
        frontend = SlackFrontend(settings, sink, commands=commands, **options)
        await nursery.start(frontend.run)
        yield SlackStack(fake, frontend)
        nursery.cancel_scope.cancel()


async def wait_connected(stack: SlackStack, count: int = 1) -> None:
    await stack.fake.wait_for(lambda: stack.fake.open_sockets >= count)
    while stack.frontend.socket.open_connections < count:
        await stack.frontend.socket.wait_changed()


async def first_mention(
    stack: SlackStack, sink: Recorder, text: str = "go"
) -> tuple[dict[str, Any], InboundEvent]:
    """Once connected, a mention in C0CHAN: its Slack event and the inbound event it became."""
    await wait_connected(stack)
    mention = stack.fake.user_message(text, mention=True)
    await stack.fake.send_event(mention)
    events = await sink.wait_events(1)
    return mention, events[0]
