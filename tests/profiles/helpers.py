"""Configs with several fake-agent profiles, and a real git repository to work in."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from broker.config import BrokerConfig, structure_config
from broker.testing.harness import FAST_TIMEOUTS, fake_agent_argv


def fake_profile(root: Path, name: str, **keys: Any) -> dict[str, Any]:
    """An ``[agents.NAME]`` table running the fake agent in ``root/name``."""
    argv = fake_agent_argv(root, "--name", name)
    working_dir = root / name
    working_dir.mkdir(parents=True, exist_ok=True)
    return {"command": argv[0], "args": argv[1:], "working_dir": str(working_dir), **keys}


def profiles_config(
    root: Path,
    profiles: dict[str, dict[str, Any]],
    *,
    routes: list[dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> BrokerConfig:
    """A config whose ``[agents.NAME]`` are ``profiles`` (fake agents; the first is the
    default unless ``agents`` says otherwise), with the harness's short timeouts."""
    agents: dict[str, Any] = {"default": next(iter(profiles))}
    agents.update({name: fake_profile(root, name, **keys) for name, keys in profiles.items()})
    agents.update(sections.pop("agents", {}))
    data: dict[str, Any] = {
        "agents": agents,
        "routes": routes or [],
        "timeouts": dict(FAST_TIMEOUTS),
        "state": {"path": str(root / "state" / "broker.sqlite3"), **sections.pop("state", {})},
        "server": {"listen": "127.0.0.1:0"},
        "permissions": {"default": "allow_once"},
        **sections,
    }
    return structure_config(data, file="<test config>", environ={})


def git(*args: str, cwd: Path | str) -> str:
    """Run git in ``cwd``; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def make_repo(path: Path) -> Path:
    """A git repository with one commit holding ``notes.txt``."""
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path)
    git("config", "user.email", "dev@example.org", cwd=path)
    git("config", "user.name", "Dev", cwd=path)
    (path / "notes.txt").write_text("first line\n")
    git("add", "notes.txt", cwd=path)
    git("commit", "-q", "-m", "notes", cwd=path)
    return path
