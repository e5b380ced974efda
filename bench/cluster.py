"""The ``cluster`` scenario: what the forwarding hop adds to a turn, and how threads spread.

Three broker processes on loopback form a cluster; one client connects to the first. Its
threads are of two kinds, by the ownership function: owned by the first replica (a *direct*
turn) or by another (a *forwarded* turn: client -> replica 0 -> owner -> replica 0 -> client).
Warm turns of both kinds alternate in blocks, one at a time, so the p50 of the added latency is
measured against the direct turn in the same run and under the same load. The share of threads
per replica is read from each replica's ``/status`` (the turns its pool ran) and, over 10,000
keys, from the ownership function itself.
"""

from __future__ import annotations

import statistics
from collections import Counter

from bench.client import PLATFORM as BENCH_PLATFORM
from bench.client import Exchange, open_chat
from bench.harness import (
    SEPARATE,
    BrokerProcess,
    Context,
    Result,
    broker_sections,
    get_status,
    percentile,
    run_broker,
    summary_ms,
)
from bench.latency import ask_ok, fmt_ms
from broker.cluster.ownership import owner

NAMES = ["agent-broker-0", "agent-broker-1", "agent-broker-2"]
PEER_TOKEN = "bench-peer-token"
ADDED_P50_TARGET_SECS = 0.002
SHARE_TOLERANCE = 0.10  # per replica, over 10,000 keys


def threads_of(name: str, count: int) -> list[str]:
    """``count`` bench thread ids that ``name`` owns."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        thread = f"room-{n}"
        if _owner(thread) == name:
            found.append(thread)
        n += 1
    return found


async def cluster(ctx: Context) -> Result:
    result = Result("cluster", SEPARATE + ", 3 replicas")
    per_kind, turns, block = ctx.size(10, 3), ctx.size(300, 30), ctx.size(25, 10)
    root = ctx.fresh("cluster")
    sections = [broker_sections(root / name, timeouts={"drain_ms": 0}) for name in NAMES]
    members = {name: s["server"]["listen"] for name, s in zip(NAMES, sections, strict=True)}
    for name, section in zip(NAMES, sections, strict=True):
        section["cluster"] = {"members": members, "replica": name, "peer_token": PEER_TOKEN}
    direct_threads = threads_of(NAMES[0], per_kind)
    forwarded_threads = [t for name in NAMES[1:] for t in threads_of(name, per_kind)]
    direct: list[float] = []
    forwarded: list[float] = []
    wrong = 0
    async with (
        run_broker(root / NAMES[0], sections[0], label=NAMES[0]) as entry,
        run_broker(root / NAMES[1], sections[1], label=NAMES[1]) as second,
        run_broker(root / NAMES[2], sections[2], label=NAMES[2]) as third,
        open_chat(entry.url) as client,
    ):
        replicas: list[BrokerProcess] = [entry, second, third]
        for thread in direct_threads + forwarded_threads:  # start every agent: warm turns only
            wrong += not _done(await ask_ok(client, thread, f"warm-{thread}"))
        cpu = {"d": 0.0, "f": 0.0}  # every replica's CPU seconds, by kind of turn
        for start in range(0, turns, block):
            for kind, threads, samples in (
                ("d", direct_threads, direct),
                ("f", forwarded_threads, forwarded),
            ):
                before = sum(broker.cpu_secs() for broker in replicas)
                for i in range(start, min(turns, start + block)):
                    exchange = await ask_ok(client, threads[i % len(threads)], f"{kind}{i}")
                    if _done(exchange) and exchange.latency is not None:
                        samples.append(exchange.latency)
                    else:
                        wrong += 1
                cpu[kind] += sum(broker.cpu_secs() for broker in replicas) - before
        documents = [await get_status(broker.port) for broker in replicas]
    added = percentile(forwarded, 0.5) - percentile(direct, 0.5)
    result.metrics["direct_ms"] = summary_ms(direct)
    result.metrics["forwarded_ms"] = summary_ms(forwarded)
    result.metrics["added_p50_ms"] = round(added * 1000, 3)
    added_cpu = (cpu["f"] - cpu["d"]) / turns
    result.metrics["added_cpu_ms_per_turn"] = round(added_cpu * 1000, 3)
    result.check(
        "forwarding hop, added p50 per turn",
        f"<= {ADDED_P50_TARGET_SECS * 1000:.0f} ms over a direct turn",
        f"{fmt_ms(added)} (direct p50 {fmt_ms(percentile(direct, 0.5))}, "
        f"forwarded p50 {fmt_ms(percentile(forwarded, 0.5))})",
        added <= ADDED_P50_TARGET_SECS,
    )
    ran = {
        name: doc["counters"]["turns_submitted"] for name, doc in zip(NAMES, documents, strict=True)
    }
    expected = Counter(_owner(t) for t in direct_threads + forwarded_threads)  # the warm turns
    for i in range(turns):
        expected[NAMES[0]] += 1
        expected[_owner(forwarded_threads[i % len(forwarded_threads)])] += 1
    result.metrics["turns_per_replica"] = ran
    result.check(
        "every turn ran on its thread's owner",
        "turns per replica as the ownership function says",
        ", ".join(f"{name}: {count}" for name, count in ran.items()),
        ran == dict(expected),
    )
    shares = Counter(owner(f"{BENCH_PLATFORM}:key-{n}", NAMES) for n in range(10_000))
    spread = max(abs(count / 10_000 - 1 / len(NAMES)) * len(NAMES) for count in shares.values())
    result.metrics["share_of_10000_keys"] = {name: shares[name] / 10_000 for name in NAMES}
    result.check(
        "share of threads per replica (10,000 keys)",
        f"within {SHARE_TOLERANCE:.0%} of 1/{len(NAMES)}",
        ", ".join(f"{name}: {shares[name] / 100:.1f} %" for name in NAMES),
        spread <= SHARE_TOLERANCE,
    )
    result.check(
        "forwarding hop, added broker CPU per turn",
        "reported (all three brokers)",
        fmt_ms(added_cpu),
        None,
    )
    result.check("replies as expected", "0 wrong", str(wrong), wrong == 0)
    result.notes.append(
        f"{len(direct)} direct and {len(forwarded)} forwarded warm turns, one at a time, "
        f"in blocks of {block}; p90 direct {fmt_ms(percentile(direct, 0.9))}, forwarded "
        f"{fmt_ms(percentile(forwarded, 0.9))}; stdev forwarded "
        f"{fmt_ms(statistics.pstdev(forwarded) if forwarded else float('nan'))}"
    )
    return result


def _owner(thread: str) -> str:
    return owner(f"{BENCH_PLATFORM}:{thread}", NAMES)


def _done(exchange: Exchange) -> bool:
    return exchange.done.is_set()
