#!/usr/bin/env python3
"""Chaos soak: a real broker process under a random mix of abuse, with its invariants checked.

Starts ``python -m broker run --config FILE`` with the fake agent (a small pool
so sessions are evicted all the time, a short hard turn ceiling), then for
``--duration`` seconds several WebSocket clients on loopback send a random mix
to many threads: normal prompts, ``@crash``, ``@hang`` / ``@hang-hard`` (hard
timeouts), ``@grandchild``, ``@malformed``, ``/cancel``, ``/reset``, and they
disconnect and reconnect. A separate connection sends oversize and malformed
frames. A fake gateway, which the broker's gateway client dials, sends events
too and drops the connection now and then. Now and then the broker gets
SIGTERM and is started again on the same store.

Checked, and reported as figures at the end (exit code 1 when one fails):

* every event sent got exactly one reply (``reply_to`` = its event id;
  streaming is off), and only the client that sent it got it: two clients
  share each platform, each with threads of its own, and a reply received by
  another client is counted as misrouted. Clients and the fake gateway
  acknowledge replies (``client_hello`` / ``hello`` with ``send_ack``). An
  event whose send failed was never received and is only counted. One sent
  while a stop was under way and never answered is reported apart (the
  protocol has no acknowledgement for a frame the server never read);
* no process outlives the broker: after every stop, no process (zombies
  aside: this container's init does not reap orphans) carries this run's
  marker in its environment, grandchildren included;
* no zombie child of the broker stays unreaped (seen in 3 samples running);
* broker RSS is stable: linear fit over each run after a warm-up, fail when
  the fitted growth of the longest run exceeds ``--rss-growth-mb``;
* the store matches the pool: after a clean stop the agents table is empty,
  and every thread the store lists with a session id got a reply;
* every stop is clean: exit code 0 within the stop budget;
* every frame the gateway received follows protocol v1; oversize frames are
  closed with 1009 and the next connection is served; every malformed frame
  gets an error frame and the connection keeps serving.

Usage: ``python -m chaos --duration 60 [--json]``. See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from broker.frontends.wire import GatewayHello, PlatformCapabilities
from broker.testing.fake_gateway import FakeGateway, open_fake_gateway
from broker.testing.harness import free_port
from chaos.broker_process import (
    CANCEL_GRACE_SECS,
    GATEWAY_TOKEN,
    STOP_GRACE_SECS,
    TURN_HARD_SECS,
    BrokerRunner,
    Figures,
    slope,
    write_config,
)
from chaos.clients import Chaos

WARMUP_SECS = 10.0  # RSS samples of a run's first seconds are not fitted

# How a reply reads, for the figures: first matching phrase wins.
REPLY_CLASSES = [
    ("shutdown", ("restarting", "stopped before this message", "shutting down")),
    ("timed_out", ("limit",)),
    ("agent_died", ("exited unexpectedly",)),
    ("busy", ("thread is busy",)),
    ("pool_full", ("capacity", "pool full")),
    ("start_failed", ("keeps failing", "could not be started")),
    ("reset", ("reset",)),
    ("cancelled", ("cancel",)),
    ("agent_error", ("answered with an error",)),
]


async def soak(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run the whole soak in ``root``; returns the report."""
    marker = f"{os.getpid()}-{random.randrange(1 << 30):x}"
    port = free_port()
    figures = Figures()
    began = time.monotonic()
    acked = GatewayHello(1, {"gw": PlatformCapabilities(send_ack=True, edit_ack=True)})
    async with open_fake_gateway(token=GATEWAY_TOKEN, hello=acked) as gateway:
        config = write_config(root, port, marker, args, gateway.url if args.gateway else "")
        runner = BrokerRunner(config, port, root, marker, figures)
        chaos = Chaos(args, runner, figures)
        await run_chaos(args, chaos, runner, gateway)
        figures.gateway_violations = list(gateway.violations)
    return report(args, chaos, figures, time.monotonic() - began)


async def run_chaos(
    args: argparse.Namespace, chaos: Chaos, runner: BrokerRunner, gateway: FakeGateway
) -> None:
    """The soak itself: start the broker, let every actor loose for the duration,
    stop sending, wait for the last replies (bounded), stop the broker."""
    await runner.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.sample)
            if args.gateway:
                nursery.start_soon(chaos.gateway_chat, gateway)
                nursery.start_soon(chaos.gateway_replies, gateway)
            now = trio.current_time()
            gap = args.duration / (args.restarts + 1)
            times = [
                now + gap * (k + 1) + chaos.rng.uniform(-gap / 4, gap / 4)
                for k in range(args.restarts)
            ]
            nursery.start_soon(chaos.restarts, times)
            for index in range(args.clients):
                nursery.start_soon(chaos.client, index)
            nursery.start_soon(chaos.abuse)
            nursery.start_soon(chaos.listen, "abuse")
            await trio.sleep_until(now + args.duration)
            chaos.sending = False
            while runner.state != "up":  # a restart in progress finishes first
                await trio.sleep(0.1)
            await chaos.settle(TURN_HARD_SECS + CANCEL_GRACE_SECS + STOP_GRACE_SECS + 20)
            await runner.stop()
            await chaos.settle(2)
            chaos.done = True
            nursery.cancel_scope.cancel()
    finally:
        runner.kill()


def report(args: argparse.Namespace, chaos: Chaos, figures: Figures, wall: float) -> dict[str, Any]:
    ledger = chaos.ledger
    unanswered = ledger.unanswered()
    lost_in_stop = [e for e in unanswered if ledger.sent[e].broker_state != "up"]
    missing = [e for e in unanswered if ledger.sent[e].broker_state == "up"]
    duplicates = {e: texts for e, texts in ledger.replies.items() if len(texts) > 1}
    slopes = [slope([p for p in run if p[0] >= WARMUP_SECS]) for run in figures.rss]
    longest = max(figures.rss, key=len) if figures.rss else []
    fitted = [p for p in longest if p[0] >= WARMUP_SECS]
    growth_mb = slope(fitted) * (fitted[-1][0] - fitted[0][0]) / 1024 if len(fitted) > 2 else 0.0
    unanswered_threads = figures.store_threads - ledger.answered_threads()
    unclean_stops = [
        s for s in figures.stops if s["exit_code"] != 0 or s["secs"] > chaos.runner.budget
    ]
    by_kind = Counter(s.kind for s in ledger.sent.values())
    invariants = {
        "one_reply_per_event": _check(
            not missing and not duplicates,
            f"{len(missing)} unanswered, {len(duplicates)} answered more than once"
            + "".join(f"; {e}: {attrs.asdict(ledger.sent[e])}" for e in missing[:5])
            + "".join(f"; {e} got {texts}" for e, texts in list(duplicates.items())[:3]),
        ),
        "no_misrouted_replies": _check(
            not ledger.misrouted,
            f"{len(ledger.misrouted)} replies reached a client that did not send in that "
            f"thread: {ledger.misrouted[:5]}",
        ),
        "replies_well_formed": _check(
            not ledger.bad_replies, f"{len(ledger.bad_replies)} bad: {ledger.bad_replies[:3]}"
        ),
        "no_process_outlives_the_broker": _check(not figures.leftovers, f"{figures.leftovers[:5]}"),
        "no_zombie_children": _check(not figures.zombies, f"{sorted(figures.zombies)[:10]}"),
        "rss_stable": _check(
            growth_mb <= args.rss_growth_mb,
            f"fitted growth {growth_mb:.1f} MB over the longest run",
        ),
        "store_consistent": _check(
            figures.agents_rows_after_stop == 0 and not unanswered_threads,
            f"{figures.agents_rows_after_stop} agents rows after stops; threads in the store "
            f"never answered: {sorted(unanswered_threads)[:5]}",
        ),
        "clean_stops": _check(
            not unclean_stops,
            f"{unclean_stops} (budget {chaos.runner.budget:g} s)",
        ),
        "oversize_frames_closed_1009": _check(
            figures.oversize_closed_1009 == figures.oversize_sent
            and figures.served_after_oversize == figures.oversize_sent,
            f"{figures.oversize_closed_1009}/{figures.oversize_sent} closed with 1009, "
            f"{figures.served_after_oversize} next connections served",
        ),
        "gateway_protocol_clean": _check(
            not figures.gateway_violations, f"{figures.gateway_violations[:3]}"
        ),
        "malformed_frames_answered_with_errors": _check(
            figures.malformed_rounds_all_errors == figures.malformed_rounds,
            f"{figures.malformed_rounds_all_errors}/{figures.malformed_rounds} rounds got"
            " one error frame per bad frame and kept serving",
        ),
    }
    rss_all = [kb for run in figures.rss for _, kb in run]
    figures_out = {
        "duration_secs": args.duration,
        "seed": args.seed,
        "wall_secs": round(wall, 1),
        "events_sent": len(ledger.sent),
        "events_by_kind": dict(sorted(by_kind.items())),
        "replies": sum(len(t) for t in ledger.replies.values()),
        "replies_by_kind": dict(
            Counter(classify(t) for texts in ledger.replies.values() for t in texts).most_common()
        ),
        "unanswered": len(missing),
        "unanswered_sent_during_a_stop": len(lost_in_stop),
        "unanswered_sent_during_a_stop_detail": {
            e: attrs.asdict(ledger.sent[e]) for e in lost_in_stop[:5]
        },
        "answered_more_than_once": len(duplicates),
        "misrouted": len(ledger.misrouted),
        "send_failed": sum(ledger.send_failed.values()),
        "stray_replies": ledger.stray_replies,
        "queue_notes": ledger.queue_notes,
        "connections": figures.clients_connected,
        "client_disconnects": figures.disconnects,
        "abrupt_disconnects": figures.abrupt_disconnects,
        "connect_failures": figures.connect_failures,
        "oversize_frames": figures.oversize_sent,
        "closed_1009": figures.oversize_closed_1009,
        "bad_frames": figures.bad_frames_sent,
        "error_frames": figures.error_frames,
        "gateway_drops": figures.gateway_drops,
        "broker_runs": len(figures.rss),
        "pool_counters": dict(sorted(figures.pool_counters.items())),
        "stops": figures.stops,
        "rss_mb_min": round(min(rss_all) / 1024, 1) if rss_all else None,
        "rss_mb_max": round(max(rss_all) / 1024, 1) if rss_all else None,
        "rss_slope_kb_per_min": [round(s * 60, 1) for s in slopes],
        "rss_growth_mb_longest_run": round(growth_mb, 2),
        "agents_seen_max": figures.agents_seen_max,
        "store_threads": len(figures.store_threads),
        "outbox_rows_at_end": figures.outbox_rows_at_end,
    }
    return {
        "ok": all(v["ok"] for v in invariants.values()),
        "invariants": invariants,
        "figures": figures_out,
    }


def classify(text: str) -> str:
    lowered = text.lower()
    for name, phrases in REPLY_CLASSES:
        if any(phrase in lowered for phrase in phrases):
            return name
    return "answer"


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": bool(ok), "detail": detail}


def print_table(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out("invariant                          result  detail")
    for name, check in result["invariants"].items():
        out(f"{name:<34} {'ok' if check['ok'] else 'FAIL':<7} {check['detail']}")
    out("")
    for name, value in result["figures"].items():
        out(f"{name:<34} {json.dumps(value) if isinstance(value, list | dict) else value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of chaos (600)")
    parser.add_argument("--clients", type=int, default=4, help="WebSocket chat clients (4)")
    parser.add_argument("--threads-per-client", type=int, default=4)
    parser.add_argument("--max-sessions", type=int, default=6, help="[pool] max_sessions (6)")
    parser.add_argument("--queue-depth", type=int, default=2, help="[pool] queue_depth (2)")
    parser.add_argument(
        "--pause", type=float, default=0.5, help="mean seconds between a client's actions (0.5)"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=None,
        help="broker SIGTERM+restarts (default: one per 2 minutes, at least 1)",
    )
    parser.add_argument(
        "--rss-growth-mb",
        type=float,
        default=32.0,
        help="fail when RSS grows more than this over the longest run (32)",
    )
    parser.add_argument(
        "--no-gateway",
        dest="gateway",
        action="store_false",
        help="no gateway client (by default a fake gateway also sends events "
        "and drops the broker's connection now and then)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", help="keep config, logs and store here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    if args.restarts is None:
        args.restarts = max(1, int(args.duration // 120))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result = trio.run(soak, args, root)
    finally:
        if args.workdir is None and not os.environ.get("CHAOS_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
