"""The benchmark script still runs: its smallest scenario, end to end, at tiny sizes.

Only the report's shape and correctness are asserted (every key present, no
reply lost or wrong); timings are the benchmark's business, never a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

EXIT_OK, EXIT_MISSED = 0, 1  # python -m bench: 3 means a scenario raised, 2 a usage error


async def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[bytes], Any]:
    out = tmp_path / "bench.json"
    with trio.fail_after(180):
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "bench",
                *args,
                "--quick",
                "--json",
                str(out),
                "--keep",
                str(tmp_path / "work"),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    report = json.loads(out.read_text()) if out.exists() else None
    return done, report


async def test_overhead_scenario_runs_end_to_end_and_reports_every_figure(
    tmp_path: Path,
) -> None:
    done, report = await run_bench(tmp_path, "overhead")
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode in (EXIT_OK, EXIT_MISSED), output
    assert report is not None, output

    assert report["command"].startswith("python -m bench overhead")
    assert {"nproc", "cpu_model", "memory_gib", "python"} <= report["machine"].keys()
    overhead = report["scenarios"]["overhead"]
    assert overhead["failed"] is False
    assert overhead["where"].startswith("broker process")
    metrics = overhead["metrics"]
    assert metrics["wrong_or_lost"] == 0
    for path, key in (
        ("streamed", "first_chunk"),
        ("streamed", "final"),
        ("plain", "final"),
        ("direct", "first_chunk"),
        ("direct", "final"),
    ):
        summary = metrics[path][key]
        assert summary["n"] == metrics["turns"], (path, key)
        assert {"p50_ms", "p99_ms", "max_ms"} <= summary.keys()
    assert metrics["default_drain"]["final"]["n"] > 0
    checks = {check["name"]: check for check in overhead["checks"]}
    assert checks["lost or wrong replies"]["met"] is True
    for name in ("first chunk, streamed: p50 added", "final reply, plain: p99 added"):
        assert checks[name]["met"] in (True, False)  # measured; the verdict is not tested
    assert "overhead" in done.stdout.decode()  # the table was printed


async def test_questions_scenario_measures_both_spans_of_every_question(tmp_path: Path) -> None:
    done, report = await run_bench(tmp_path, "questions")
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode in (EXIT_OK, EXIT_MISSED), output
    assert report is not None, output
    questions = report["scenarios"]["questions"]
    assert questions["failed"] is False
    metrics = questions["metrics"]
    for span in ("asked", "answered"):
        assert metrics[span]["n"] == metrics["rounds"]
        assert 0 < metrics[span]["p50_ms"] <= metrics[span]["max_ms"]
    assert len(questions["checks"]) == 3  # two spans and the CPU per turn
    assert metrics["broker_cpu_ms_per_turn"]["total"] > 0


async def test_unknown_scenario_is_refused_with_the_list_of_names(tmp_path: Path) -> None:
    done, report = await run_bench(tmp_path, "nonsense")
    assert done.returncode == 2
    assert report is None
    assert b"unknown scenario nonsense" in done.stderr
    assert b"overhead" in done.stderr


async def test_cluster_scenario_measures_direct_and_forwarded_turns_on_three_replicas(
    tmp_path: Path,
) -> None:
    done, report = await run_bench(tmp_path, "cluster")
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode in (EXIT_OK, EXIT_MISSED), output
    assert report is not None, output
    cluster = report["scenarios"]["cluster"]
    assert cluster["failed"] is False
    metrics = cluster["metrics"]
    assert metrics["direct_ms"]["n"] == metrics["forwarded_ms"]["n"] > 0
    assert round(sum(metrics["share_of_10000_keys"].values()), 6) == 1
    checks = {check["name"]: check for check in cluster["checks"]}
    assert checks["replies as expected"]["met"] is True
    assert checks["every turn ran on its thread's owner"]["met"] is True
    assert checks["forwarding hop, added p50 per turn"]["met"] in (True, False)
