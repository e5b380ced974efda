"""The standing checks (scripts/check: ruff, ruff format, mypy --strict) pass over every package."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]


async def test_lint_format_and_types_pass_over_every_package() -> None:
    with trio.fail_after(600):
        done = await trio.run_process(
            ["bash", str(ROOT / "scripts" / "check")],
            cwd=ROOT,
            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()[-5000:]
