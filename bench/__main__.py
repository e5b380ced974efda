"""The benchmark suite: speed and memory of the broker, measured through the real path.

    python -m bench [SCENARIO ...] [--quick] [--json OUT.json] [--markdown OUT.md]
                       [--keep DIR]

Every figure goes through a WebSocket client on loopback to a broker running
as its own process (``python -m broker run --config FILE``, so its CPU time
and RSS come from /proc) to fake agent subprocesses. Each scenario measures
its baseline in the same run (a direct ACP client on the same agent, the
same load without the slow agents, a warm thread, ...) and reports ratios
against it. Results are printed as a table and written as JSON.

``--quick`` uses tiny sizes (seconds per scenario) for development and the
smoke test; the numbers in docs/benchmarks.md come from a full run. With
``BENCH_PROFILE=DIR`` every broker runs under cProfile and writes
``DIR/<label>.prof``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.table import Table

import bench.cluster
import bench.discord
import bench.latency
import bench.platforms
import bench.pool
import bench.questions
from bench.harness import Context, Result, machine

Scenario = Callable[[Context], Awaitable[Result]]

EXIT_OK = 0
EXIT_MISSED = 1  # every scenario ran; some target was missed
EXIT_FAILED = 3  # a scenario could not run (an error: see its traceback); 2 is a usage error

SCENARIOS: dict[str, Scenario] = {
    "overhead": bench.latency.overhead,
    "isolation": bench.latency.isolation,
    "relay": bench.pool.relay,
    "scale": bench.pool.scale,
    "churn": bench.pool.churn,
    "crash": bench.latency.crash,
    "coldstart": bench.latency.cold_start,
    "shutdown": bench.pool.shutdown,
    "slack": bench.platforms.slack,
    "questions": bench.questions.questions,
    "discord": bench.discord.discord,
    "cluster": bench.cluster.cluster,
}


async def run_all(names: list[str], ctx: Context, console: Console) -> list[Result]:
    """Run the scenarios one after another; a scenario that fails is reported
    as a failed check and the others still run."""
    results = []
    for name in names:
        console.print(f"[bold]{name}[/bold] ...")
        started = time.monotonic()
        try:
            result = await SCENARIOS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the rest
            console.print_exception()
            result = Result(name, "n/a", failed=True)
            result.check("scenario ran", "no error", f"{type(exc).__name__}: {exc}", False)
        result.metrics["seconds"] = round(time.monotonic() - started, 1)
        results.append(result)
        console.print(table([result]))
    return results


def verdict(met: bool | None) -> str:
    return {True: "[green]met[/green]", False: "[red]MISSED[/red]", None: "n/a"}[met]


def table(results: list[Result]) -> Table:
    out = Table(show_lines=False)
    for column in ("scenario", "check", "target", "measured", ""):
        out.add_column(column)
    for result in results:
        for index, check in enumerate(result.checks):
            out.add_row(
                result.scenario if index == 0 else "",
                check.name,
                check.target,
                check.value,
                verdict(check.met),
            )
    return out


def markdown(results: list[Result]) -> str:
    """The results table in Markdown, for docs/benchmarks.md."""
    words = {True: "met", False: "**missed**", None: "—"}
    lines = [
        "| scenario | check | target | measured | |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        for index, check in enumerate(result.checks):
            name = f"{result.scenario}" if index == 0 else ""
            lines.append(
                f"| {name} | {check.name} | {check.target} | {check.value} | {words[check.met]} |"
            )
    return "\n".join(lines) + "\n"


def report(
    results: list[Result], argv: list[str], quick: bool, host: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document: the command, the machine as it was at the start, every result."""
    return {
        "command": "python -m bench " + shlex.join(argv),
        "quick": quick,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": host,
        "scenarios": {r.scenario: attrs.asdict(r) for r in results},
        "all_met": all(c.met is not False for r in results for c in r.checks),
    }


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"any of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results here")
    parser.add_argument(
        "--markdown", type=Path, metavar="OUT", help="write the results table in Markdown here"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR and keep it (broker logs, configs)"
    )
    args = parser.parse_args(args_list)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    names = args.scenarios or list(SCENARIOS)
    console = Console(width=max(120, Console().width))
    host = machine() | {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as temp:
        root = args.keep or Path(temp)
        root.mkdir(parents=True, exist_ok=True)
        ctx = Context(root.resolve(), args.quick)
        results = trio.run(run_all, names, ctx, console)
    data = report(results, args_list, args.quick, host)
    console.rule("results")
    console.print(table(results))
    for result in results:
        for note in result.notes:
            console.print(f"[dim]{result.scenario}: {note}[/dim]")
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(results))
        console.print(f"wrote {args.markdown}")
    if any(result.failed for result in results):
        return EXIT_FAILED
    return EXIT_OK if data["all_met"] else EXIT_MISSED


if __name__ == "__main__":
    sys.exit(main())
