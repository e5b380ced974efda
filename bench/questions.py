"""The cost of asking a person: the broker's latency around a permission question.

One thread, the policy ``ask`` for every kind, the fake agent asking one
``session/request_permission`` per turn and writing, with
``--permission-timings``, ``time.perf_counter()`` when it wrote the request
and when it read the answer. The chat client reads the question from the
socket and answers at once with ``/allow N``. Both sides read the same clock
(``CLOCK_MONOTONIC``), so the two spans are the broker's alone:

* asked: the agent's request written -> the question read off the socket;
* answered: the answer written to the socket -> the agent read its response.
"""

from __future__ import annotations

import json
import re

import trio

from bench.client import open_chat, text_contains, until
from bench.harness import (
    SEPARATE,
    Context,
    Result,
    broker_sections,
    percentile,
    run_broker,
    summary_ms,
)
from bench.latency import _per_turn, fmt_ms

TURN_TIMEOUT = 60.0
TARGET_P99 = 0.010
_NUMBER = re.compile(r"❓ Question (\d+):")


async def questions(ctx: Context) -> Result:
    result = Result("questions", SEPARATE)
    rounds, warmup = ctx.size(300, 20), ctx.size(20, 3)
    root = ctx.fresh("questions")
    timings = root / "permission-timings.jsonl"
    sections = broker_sections(
        root,
        agent_args=["--permission-timings", str(timings)],
        permissions={"default": "ask", "by_kind": {}},
        timeouts={"drain_ms": 0},
    )
    asked_at: list[float] = []  # the question read off the socket
    answer_sent: list[float] = []
    async with (
        run_broker(root, sections, label="questions") as broker,
        open_chat(broker.url) as client,
    ):
        cpu0 = broker.cpu_times()
        for i in range(warmup + rounds):
            if i == warmup:
                cpu0 = broker.cpu_times()
            with trio.fail_after(TURN_TIMEOUT):
                turn = await client.send(
                    "q",
                    f"@permission execute job {i}\n@reply done {i}",
                    done_when=text_contains("❓ Question"),
                )
                await turn.done.wait()
                match = _NUMBER.search(turn.text)
                assert match is not None and turn.done_at is not None, turn.text
                answer = await client.send("q", f"/allow {match.group(1)}")
                await until(turn, text_contains(f"done {i}"))
                await answer.done.wait()
            asked_at.append(turn.done_at)
            answer_sent.append(answer.sent_at)
        cpu = _per_turn(broker.cpu_times(), cpu0, rounds)
    lines = [json.loads(line) for line in timings.read_text().splitlines()]
    assert len(lines) == warmup + rounds, len(lines)
    asked = [at - line["sent"] for at, line in zip(asked_at, lines, strict=True)][warmup:]
    answered = [line["received"] - at for at, line in zip(answer_sent, lines, strict=True)][warmup:]
    result.metrics.update(
        rounds=rounds,
        asked=summary_ms(asked),
        answered=summary_ms(answered),
        broker_cpu_ms_per_turn=cpu,
    )
    result.check("broker CPU per asked turn", "(reported)", f"{cpu['total']:.2f} ms", None)
    for what, samples in (
        ("agent's request -> question on the socket", asked),
        ("answer on the socket -> agent's stdin", answered),
    ):
        p99 = percentile(samples, 0.99)
        result.check(
            f"{what}: p99",
            f"< {TARGET_P99 * 1000:.0f} ms",
            f"{fmt_ms(p99)} (p50 {fmt_ms(percentile(samples, 0.5))})",
            p99 < TARGET_P99,
        )
    result.notes.append(
        "One thread, one question per turn, answered as soon as it is read; timeouts.drain_ms = 0."
        " Both spans use CLOCK_MONOTONIC read by the fake agent and by the chat client, so they"
        " include the two pipe or socket hops and the broker's work, nothing of the person."
    )
    return result
