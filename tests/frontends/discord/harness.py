"""The fake Discord and the real Discord front-end, started together for a test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from broker.frontends.base import InboundSink, ReplyChannel
from broker.frontends.discord.adapter import DiscordFrontend
from broker.frontends.gateway import BackoffPolicy
from broker.frontends.wire import Button, ButtonStyle, InboundEvent, OutboundReply
from broker.testing.fake_discord import FakeDiscord, fake_discord

WAIT_SECS = 10.0
FAST_RETRY = BackoffPolicy(initial_secs=0.05, max_secs=0.2, jitter=0.0)


@attrs.frozen
class Settings:
    token: str
    api_base_url: str
    mention_required: bool = True
    allowed_guilds: tuple[str, ...] = ()


class Recorder:
    """A sink that records events and answers ``echo: <text>``.

    ``question`` posts a message with buttons (with ``request``);
    ``hold`` waits for :attr:`release` before answering; a ``button`` event
    is answered by ``answer_button`` (default: a note to the clicker).
    """

    def __init__(self) -> None:
        self.events: list[InboundEvent] = []
        self.release = trio.Event()
        self.question_id: str | None = None
        self.answer_button: Callable[[InboundEvent, ReplyChannel], Any] | None = None
        self._changed = trio.Event()

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()
        text = event.content.text
        if event.event_type == "button":
            if self.answer_button is not None:
                await self.answer_button(event, channel)
            return
        if text == "hold":
            await self.release.wait()
        if text == "question":
            buttons = (
                Button("Allow once", "/allow 3", ButtonStyle.SUCCESS),
                Button("Deny", "/deny 3", ButtonStyle.DANGER),
            )
            reply = attrs.evolve(
                OutboundReply.to_event(event, "Allow `ls`? /allow 3 or /deny 3"), buttons=buttons
            )
            response = await channel.request(reply)
            self.question_id = response.message_id if response else None
            return
        await channel.send_reply(OutboundReply.to_event(event, f"echo: {text}"))

    async def wait_events(self, count: int) -> list[InboundEvent]:
        with trio.fail_after(WAIT_SECS):
            while len(self.events) < count:
                await self._changed.wait()
        return self.events


@asynccontextmanager
async def running(
    sink: InboundSink | None = None,
    *,
    fake_options: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    wait_ready: bool = True,
    **frontend_options: Any,
) -> AsyncIterator[tuple[FakeDiscord, DiscordFrontend]]:
    """A fake Discord on loopback and a :class:`DiscordFrontend` connected to it."""
    async with fake_discord(**(fake_options or {})) as fake:
        config = Settings(
            **{"token": fake.token, "api_base_url": fake.api_base_url, **(settings or {})}
        )
        frontend_options.setdefault("retry", FAST_RETRY)
        gateway_options = frontend_options.setdefault("gateway_options", {})
        gateway_options.setdefault("backoff", FAST_RETRY)
        frontend = DiscordFrontend(config, sink or Recorder(), **frontend_options)
        async with trio.open_nursery() as nursery:
            await nursery.start(frontend.run)
            if wait_ready:
                with trio.fail_after(WAIT_SECS):
                    await frontend.gateway.wait_ready()
            yield fake, frontend
            nursery.cancel_scope.cancel()


async def wait_until(fake: FakeDiscord, predicate: Callable[[], bool]) -> None:
    """Wait (bounded) until ``predicate()`` holds; it is checked whenever the fake
    sees a request or a frame, and every 10 ms for state the front-end keeps."""
    with trio.fail_after(WAIT_SECS):
        while not predicate():
            with trio.move_on_after(0.01):
                await fake.wait_for(predicate)
