"""The native platforms under load: a broker process against a fake platform on loopback.

``slack``: some threads sit in a silent tool call (every agent busy) while a
stream of Socket Mode envelopes arrives: broker commands in new threads, status
questions in the busy threads, chatter the broker ignores, and redeliveries of
events already sent. Measured, in the fake Slack: the time from an envelope
going out to its ``envelope_id`` coming back (the ack Slack wants within 3 s),
and that every redelivered event was answered once.
"""

from __future__ import annotations

from typing import Any

import trio

from bench.harness import SEPARATE, Context, Result, broker_sections, run_broker, summary_ms
from broker.testing.fake_slack import APP_TOKEN, BOT_TOKEN, Delivery, FakeSlack, open_fake_slack

ACK_TARGET_SECS = 0.050
SLACK_DEADLINE_SECS = 3.0


def _busy(fake: FakeSlack, thread_ts: str) -> bool:
    """The thread's reply shows its turn working (the silent tool call runs)."""
    return any("Working" in t for m in fake.bot_messages("C0CHAN", thread_ts) for t in m.texts)


async def slack(ctx: Context) -> Result:
    """Envelope ack latency while every agent is busy; redeliveries answered once."""
    result = Result("slack", SEPARATE)
    busy_threads = ctx.size(10, 3)
    envelopes = ctx.size(600, 60)
    gap = ctx.secs(0.01, 0.02)  # between envelopes: 100 a second in the full run
    silent_secs = ctx.secs(120, 30)
    root = ctx.fresh("slack")
    async with open_fake_slack() as fake:
        slack_section = {
            "enabled": True,
            "app_token": APP_TOKEN,
            "bot_token": BOT_TOKEN,
            "api_base_url": fake.api_url,
        }
        sections = broker_sections(
            root, slack=slack_section, pool={"max_sessions": busy_threads + 5}
        )
        async with run_broker(root, sections, label="slack"):
            with trio.fail_after(60):
                await fake.wait_for(lambda: fake.open_sockets == 1)
                busy = [
                    fake.user_message(f"@silent-tool {silent_secs}", mention=True)
                    for _ in range(busy_threads)
                ]
                for mention in busy:
                    await fake.send_event(mention)
                await fake.wait_for(lambda: all(_busy(fake, m["ts"]) for m in busy))
            sent: list[Delivery] = []
            commands: list[dict[str, Any]] = []
            redelivered: list[dict[str, Any]] = []
            for n in range(envelopes):
                kind = n % 4
                if kind == 0:
                    event = fake.user_message(f"!help {n}", mention=True)
                    commands.append(event)
                elif kind == 1:
                    event = fake.user_message("!status", thread_ts=busy[n % len(busy)]["ts"])
                elif kind == 2:
                    event = fake.user_message(f"chatter {n}")
                else:
                    sent.append(await fake.redeliver(sent[-3]))  # the last !help again
                    redelivered.append(commands[-1])
                    await trio.sleep(gap)
                    continue
                sent.append(await fake.send_event(event))
                await trio.sleep(gap)
            with trio.fail_after(60):
                await fake.wait_for(lambda: all(d.envelope_id in fake.acks for d in sent))
                await fake.wait_for(
                    lambda: all(fake.bot_messages("C0CHAN", c["ts"]) for c in commands)
                )
                for event in busy:
                    await fake.send_event(fake.user_message("!cancel", thread_ts=event["ts"]))
    latencies = [fake.acks[d.envelope_id] for d in sent]
    stats = summary_ms(latencies)
    answered_twice = [c for c in redelivered if len(fake.bot_messages("C0CHAN", c["ts"])) != 1]
    late = [s for s in latencies if s > SLACK_DEADLINE_SECS]
    result.metrics.update(
        busy_threads=busy_threads,
        envelopes=len(sent),
        envelopes_per_sec=round(1 / gap),
        ack=stats,
        violations=fake.violations[:10],
    )
    result.check(
        "envelope ack p99, every agent busy",
        f"< {ACK_TARGET_SECS * 1000:g} ms",
        f"{stats['p99_ms']:.1f} ms (p50 {stats['p50_ms']:.1f}, max {stats['max_ms']:.1f})",
        stats["p99_ms"] < ACK_TARGET_SECS * 1000,
    )
    result.check(
        "envelopes acked within Slack's 3 s",
        "all",
        f"{len(latencies) - len(late)}/{len(latencies)}",
        not late,
    )
    result.check(
        "redelivered events answered once",
        "all",
        f"{len(redelivered) - len(answered_twice)}/{len(redelivered)}",
        not answered_twice,
    )
    return result
