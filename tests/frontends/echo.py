"""A test double of the router: answers each event on the channel it came with."""

from __future__ import annotations

import trio

from broker.frontends.base import ReplyChannel
from broker.frontends.wire import Command, GatewayResponse, InboundEvent, OutboundReply


class EchoSink:
    """Answers each event with ``echo: <text>``. ``slow`` events wait for
    :attr:`release`; ``ask`` events first request a message id and edit it."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.replied: list[str] = []  # event ids whose reply was handed to the channel
        self.replied_changed = trio.Event()
        self.responses: list[GatewayResponse | None] = []
        self.channels: dict[str, tuple[str, str]] = {}  # event id -> (frontend, connection id)

    async def handle_event(self, event: InboundEvent, channel: ReplyChannel) -> None:
        text = event.content.text
        self.channels[event.event_id] = (channel.frontend, channel.connection_id)
        if text == "boom":
            raise RuntimeError("sink failure")
        if text == "slow":
            await self.release.wait()
        if text == "ask":
            response = None
            with trio.move_on_after(1.0):
                response = await channel.request(OutboundReply.to_event(event, "..."))
            self.responses.append(response)
            if response is not None and response.message_id:
                edit = OutboundReply.to_event(event, "echo: ask")
                await channel.send_reply(
                    OutboundReply(
                        response.message_id,
                        edit.platform,
                        edit.channel,
                        edit.text,
                        Command.EDIT_MESSAGE,
                    )
                )
                return
        await channel.send_reply(OutboundReply.to_event(event, f"echo: {text}"))
        self.replied.append(event.event_id)
        self.replied_changed.set()
        self.replied_changed = trio.Event()

    async def wait_replied(self, event_id: str) -> None:
        """Wait until the reply to ``event_id`` was handed to its channel."""
        while event_id not in self.replied:
            await self.replied_changed.wait()
