"""The ``discord`` scenario: many threads at once through the native Discord front-end.

The broker runs as its own process with ``[discord]`` pointed at a fake Discord
(:mod:`broker.testing.fake_discord`, here in the benchmark's process, on
loopback) and its WebSocket server on. ``threads`` users each mention the bot
in a guild channel at once (the broker starts one thread per message), then
talk in their threads ``rounds - 1`` more times, all threads at once. The same
turns then go through the WebSocket server (streamed, the same edit
interval), so the Discord path is measured against it in the same run.

Reported: end-to-end latency per round (post -> the final text shown in the
thread) against the server's, 429s Discord answered (target 0: the broker
stays inside the buckets), requests on an exhausted bucket (a rule the fake
records), and heartbeat lateness under the load (target: never more than 1 s
late), as the broker reports it (how long after it was due a beat went out)
and as the fake saw it (the gaps between beats, less the interval). The fake's
buckets are 5 requests per second per route and channel, and 50 requests a
second in all (Discord's global limit for bots); heartbeats every 5 s.
"""

from __future__ import annotations

import itertools
from typing import Any

import trio

from bench.client import Exchange, ask_within, open_chat, text_is
from bench.harness import (
    SEPARATE,
    Context,
    Result,
    broker_sections,
    get_status,
    percentile,
    run_broker,
    summary_ms,
    wall,
)
from bench.latency import TURN_TIMEOUT, fmt_ms, short_turn
from broker.testing.fake_discord import CHANNEL_ID, FakeDiscord, fake_discord

HEARTBEAT_MS = 5000
EDIT_INTERVAL_MS = 500
LATE_LIMIT_SECS = 1.0


async def _discord_round(
    fake: FakeDiscord, threads: list[str | None], round_no: int
) -> list[float]:
    """One turn in every thread at once; ``None`` threads start with a mention.
    Fills ``threads`` with the thread ids; returns the latencies in seconds."""
    latencies: list[float] = []

    async def one(index: int) -> None:
        prompt, reply, _ = short_turn(f"d{index}r{round_no}")
        sent = wall()
        thread = threads[index]
        if thread is None:
            message = await fake.post_message(CHANNEL_ID, prompt, mention_bot=True)
            thread = threads[index] = message["id"]
        else:
            await fake.post_message(thread, prompt)

        def shown() -> bool:
            messages = fake.bot_messages(thread)
            return bool(messages) and messages[-1]["content"] == reply

        with trio.fail_after(TURN_TIMEOUT):
            await fake.wait_for(shown)
        latencies.append(wall() - sent)

    async with trio.open_nursery() as nursery:
        for index in range(len(threads)):
            nursery.start_soon(one, index)
    return latencies


async def _server_round(url: str, count: int, round_no: int) -> list[float]:
    latencies: list[float] = []
    async with open_chat(url, "discord-baseline") as client:

        async def one(index: int) -> None:
            prompt, reply, marker = short_turn(f"s{index}r{round_no}")
            exchange: Exchange = await ask_within(
                client,
                TURN_TIMEOUT,
                f"thread-{index}",
                prompt,
                done_when=text_is(reply),
                first_marker=marker,
            )
            if exchange.latency is not None:
                latencies.append(exchange.latency)

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index)
    return latencies


def _heartbeat_lateness(fake: FakeDiscord) -> float:
    """The most a heartbeat came after its interval (the first, jittered, not counted)."""
    times = [at for at, _ in fake.heartbeats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return max((gap - HEARTBEAT_MS / 1000 for gap in gaps), default=0.0)


async def discord(ctx: Context) -> Result:
    """See the module docstring."""
    result = Result("discord", SEPARATE)
    count, rounds = ctx.size(50, 10), ctx.size(3, 2)
    root = ctx.fresh("discord")
    options: dict[str, Any] = {
        "heartbeat_interval_ms": HEARTBEAT_MS,
        "route_limit": 5,
        "route_window": 1.0,
        "global_per_second": 50,
    }
    async with fake_discord(**options) as fake:
        sections = broker_sections(
            root,
            server={"streaming": True},
            render={"edit_interval_ms": EDIT_INTERVAL_MS},
            pool={"max_sessions": count * 2 + 2},
            discord={"enabled": True, "token": fake.token, "api_base_url": fake.api_base_url},
        )
        async with run_broker(root, sections, label="discord") as broker:
            with trio.fail_after(30):
                await fake.wait_identified()
            threads: list[str | None] = [None] * count
            discord_rounds = [await _discord_round(fake, threads, r) for r in range(rounds)]
            server_rounds = [await _server_round(broker.url, count, r) for r in range(rounds)]
            reported = (await get_status(broker.port))["frontends"]["discord"]
    late = _heartbeat_lateness(fake)
    broker_late = float(reported["heartbeat_lateness_secs"])
    exhausted = [v for v in fake.violations if "exhausted bucket" in v]
    result.metrics.update(
        threads=count,
        rounds=rounds,
        edit_interval_ms=EDIT_INTERVAL_MS,
        discord={f"round_{r}": summary_ms(s) for r, s in enumerate(discord_rounds)},
        server={f"round_{r}": summary_ms(s) for r, s in enumerate(server_rounds)},
        rest_requests=len(fake.requests),
        rate_limited=fake.rate_limited,
        heartbeats=len(fake.heartbeats),
        heartbeat_lateness_secs={"broker": broker_late, "seen_by_the_fake": round(late, 3)},
        broker_discord_status=reported,
        gateway_connections=fake.connections,
        violations=fake.violations[:10],
    )
    for r, (ours, theirs) in enumerate(zip(discord_rounds, server_rounds, strict=True)):
        what = "first turn (starts the thread)" if r == 0 else f"round {r} (in the thread)"
        for q in (0.50, 0.99):
            ours_q, theirs_q = percentile(ours, q), percentile(theirs, q)
            result.check(
                f"{what}: p{int(q * 100)} over the server",
                "reported",
                f"+{fmt_ms(ours_q - theirs_q)} ({fmt_ms(ours_q)} vs {fmt_ms(theirs_q)})",
                None,
            )
        result.check(f"{what}: replies", str(count), f"{len(ours)} / {len(theirs)}", None)
    result.check("429s received", "0", str(fake.rate_limited), fake.rate_limited == 0)
    result.check("requests on an exhausted bucket", "0", str(len(exhausted)), not exhausted)
    result.check(
        "heartbeat lateness under load (broker)",
        f"<= {LATE_LIMIT_SECS:.0f} s",
        f"{broker_late * 1000:.0f} ms",
        broker_late <= LATE_LIMIT_SECS,
    )
    result.check(
        "heartbeat lateness under load (seen by the fake)",
        f"<= {LATE_LIMIT_SECS:.0f} s",
        f"{late * 1000:.0f} ms",
        late <= LATE_LIMIT_SECS,
    )
    result.check(
        "gateway connections (no reconnects)", "1", str(fake.connections), fake.connections == 1
    )
    return result
