"""The benchmark's agent: the fake agent, some of whose processes take a role.

``python -m bench.agent --roles DIR -- FAKE-AGENT-ARGS...`` runs
``broker.testing.fake_agent`` with ``FAKE-AGENT-ARGS``. Before that it tries
to claim one *role* file in ``DIR``: a JSON list of extra fake-agent flags
(``["--init-delay", "20"]``, ``["--ignore-sigterm"]``). Claiming is an
atomic rename, so each role file is taken by exactly one agent process, the
next one the broker spawns after the benchmark wrote it. That is how a
scenario makes *one* agent out of many slow to start, or ten of a hundred
deaf to SIGTERM, while every agent runs from the same broker config.

A claimed role is renamed to ``claimed-<pid>.json``, so the benchmark can see
which process took it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROLE_PREFIX = "role-"


def write_role(roles_dir: Path, name: str, flags: list[str]) -> Path:
    """Offer one role (extra fake-agent flags) to the next agent that starts."""
    roles_dir.mkdir(parents=True, exist_ok=True)
    path = roles_dir / f"{ROLE_PREFIX}{name}.json"
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps(flags))
    temp.rename(path)
    return path


def claimed_pids(roles_dir: Path) -> list[int]:
    """The pids of agents that took a role so far."""
    return sorted(int(p.stem.removeprefix("claimed-")) for p in roles_dir.glob("claimed-*.json"))


def claim_role(roles_dir: Path) -> list[str]:
    """Take one offered role, if any; its flags (empty when none was left)."""
    try:
        offered = sorted(p for p in roles_dir.iterdir() if p.name.startswith(ROLE_PREFIX))
    except FileNotFoundError:
        return []
    for path in offered:
        mine = roles_dir / f"claimed-{os.getpid()}.json"
        try:
            path.rename(mine)
        except FileNotFoundError:
            continue  # another agent took it first
        flags = json.loads(mine.read_text())
        return [str(flag) for flag in flags]
    return []


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--roles":
        print("usage: bench.agent.py --roles DIR [--] FAKE-AGENT-ARGS...", file=sys.stderr)
        return 2
    roles_dir, rest = Path(argv[1]), argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    from broker.testing import fake_agent

    return fake_agent.main([*rest, *claim_role(roles_dir)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
