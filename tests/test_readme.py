"""The README's "In a trio program" examples run as written.

They are read from README.md itself, so the examples and this test cannot drift apart. Each runs
as a real process in a directory whose broker.toml is the demo setup on a free port.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def trio_program_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## In a trio program", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_two_trio_program_examples() -> None:
    assert len(trio_program_examples()) == 2


@pytest.mark.parametrize(("index", "expected"), [(0, r"^ws://127\.0\.0\.1:\d+/ws$"), (1, r"\S")])
def test_a_readme_trio_program_example_runs_as_written(
    tmp_path: Path, index: int, expected: str
) -> None:
    (tmp_path / "broker.toml").write_text('[server]\nlisten = "127.0.0.1:0"\n')
    (tmp_path / "example.py").write_text(trio_program_examples()[index])
    result = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(expected, result.stdout.strip()), result.stdout
