"""Slash commands answered by the broker, through the real stack and fake agents."""

from __future__ import annotations

import os
from collections.abc import Callable

import trio

from broker.config import BrokerConfig
from broker.sentences import HELP_TEXT
from tests.router.stack import connect, running_broker


async def test_status_model_and_mode_before_and_after_the_agent_runs(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config()
    agent = os.path.basename(config.agent.command)  # what the broker calls the agent
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            assert await client.ask("/help") == HELP_TEXT
            status = await client.ask("/status")
            assert status.startswith("📊 No running agent for this thread; your next message")
            no_agent = await client.ask("/model")
            assert no_agent.startswith("No agent is running in this thread")
            assert (await client.ask("@reply warm")) == "warm"
            status = await client.ask("/status")
            assert status.startswith(f"📊 Agent {agent} (pid ") and ": idle, up " in status
            assert "turns done: 1" in status
            models = await client.ask("/model list")
            assert "• fast" in models and "(current)" in models and "• smart" in models
            assert await client.ask("/model set Smart") == "🧠 Model set to smart."
            unknown = await client.ask("/model set huge")
            assert unknown == "Unknown model “huge”. Choose one of: fast, smart."
            assert await client.ask("/mode code") == "🎛️ Mode set to code."
            assert "• code — Code (current)" in await client.ask("/mode")
            reply = await client.ask("hello")
            assert "model smart, mode code" in reply
            # an unknown /word is the agent's business
            assert "You said: “/compact now”" in await client.ask("/compact now")


async def test_cancel_stops_the_running_turn_whose_reply_says_so(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(server={"streaming": True}, render={"edit_interval_ms": 100})
    with trio.fail_after(60):
        async with running_broker(config) as stack, connect(stack) as client:
            assert (await client.ask("/cancel")).startswith("Nothing is running")
            long_turn = await client.send("@say working on it\n@tool Long job 60 execute")

            def shown() -> str:
                return "".join(f.reply.text for f in client.for_event(long_turn.event_id)[-1:])

            await client.wait_for(lambda: "🔧 Long job … running" in shown())
            status = await client.ask("/status")
            assert "Turn running for" in status and "tool: Long job" in status
            assert (await client.ask("/cancel")).startswith("🛑 Cancelling the running turn")
            await client.wait_for(lambda: "🛑 Cancelled." in shown())
            assert shown().startswith("⏹️ Long job (unfinished)\n\nworking on it")
            frames = await client.settle(stack, long_turn)
            assert [f.reply.command for f in frames[:1]] == [None]  # the first message
            assert "🛑 Cancelled." in frames[-1].reply.text  # the final text is the last frame


async def test_reset_forgets_the_conversation(make_config: Callable[..., BrokerConfig]) -> None:
    with trio.fail_after(60):
        async with running_broker(make_config()) as stack, connect(stack) as client:
            assert (await client.ask("/reset")).startswith("Nothing to reset")
            assert "turn 1 of this session" in await client.ask("one")
            assert "turn 2 of this session" in await client.ask("two")
            assert (await client.ask("/reset")).startswith("🔄 Reset")
            assert "turn 1 of this session" in await client.ask("three")
            assert stack.pool.counters.spawned == 2
