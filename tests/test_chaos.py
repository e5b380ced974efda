"""A short chaos soak of a real broker process: python -m chaos and its invariants.

The run lasts ``CHAOS_SECS`` seconds (default 60, what CI runs); set it lower
to try it during development, e.g. ``CHAOS_SECS=15``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

SECS = float(os.environ.get("CHAOS_SECS", "60"))
INVARIANTS = {
    "one_reply_per_event",
    "no_misrouted_replies",
    "replies_well_formed",
    "no_process_outlives_the_broker",
    "no_zombie_children",
    "rss_stable",
    "store_consistent",
    "clean_stops",
    "oversize_frames_closed_1009",
    "gateway_protocol_clean",
    "malformed_frames_answered_with_errors",
}


async def test_chaos_soak_keeps_every_invariant(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "chaos",
        "--duration",
        str(SECS),
        "--json",
        "--workdir",
        str(tmp_path),
    ]
    with trio.fail_after(SECS + 240):  # the soak, the settling, two broker starts and stops
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert done.stdout, done.stderr.decode()[-3000:]
    report = json.loads(done.stdout)
    failed = {
        name: check["detail"] for name, check in report["invariants"].items() if not check["ok"]
    }
    assert not failed, (failed, report["figures"])
    assert set(report["invariants"]) == INVARIANTS
    assert done.returncode == 0 and report["ok"]

    figures = report["figures"]
    kinds = figures["events_by_kind"]
    # every event is answered but those sent into a stopping broker (named in the report);
    # queue notes are counted apart, not as replies
    answered = figures["events_sent"] - figures["unanswered_sent_during_a_stop"]
    assert figures["events_sent"] > 0 and figures["replies"] >= answered
    assert kinds.get("normal", 0) > 0
    assert figures["broker_runs"] >= 2 and len(figures["stops"]) >= 2  # a restart and the end
    assert all(stop["exit_code"] == 0 for stop in figures["stops"])
    assert figures["oversize_frames"] > 0 and figures["closed_1009"] == figures["oversize_frames"]
    assert figures["bad_frames"] > 0 and figures["error_frames"] >= figures["bad_frames"]
    assert figures["events_by_kind"].keys() >= {"normal", "crash", "cancel"}
    assert figures["agents_seen_max"] > 0  # the leftover scan does see this run's agents
