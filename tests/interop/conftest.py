"""Locating the real agents that scripts/install-interop-agents.sh installs into .interop/."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from .claude_world import Claude, ScriptedModel
from .fake_anthropic import FakeAnthropic

ROOT = Path(__file__).resolve().parents[2]
INTEROP_PREFIX = ROOT / ".interop"
CLAUDE_AGENT_PACKAGE = "@zed-industries/claude-agent-acp"
CLAUDE_AGENT_VERSION = "0.23.1"
CODEX_AGENT_PACKAGE = "@zed-industries/codex-acp"
CODEX_AGENT_VERSION = "0.16.0"

NODE_MISSING = (
    "!!! NODE IS NOT ON PATH: the interop tests against the real claude-agent-acp are SKIPPED. "
    "Install Node.js 20+ with npm, run scripts/install-interop-agents.sh, then run them again."
)


def node_available() -> bool:
    return shutil.which("node") is not None


def installed_entry(package_name: str, version: str, command: str) -> Path:
    """An agent's entry script (its package.json ``bin``), installed at the pinned version.

    Fails (does not skip) when node is present but the package is missing or
    at another version: that is a broken setup, not a missing prerequisite.
    """
    package_dir = INTEROP_PREFIX / "node_modules" / package_name
    manifest = package_dir / "package.json"
    if not manifest.is_file():
        pytest.fail(
            f"{package_name} is not installed in {INTEROP_PREFIX}: "
            "run scripts/install-interop-agents.sh",
            pytrace=False,
        )
    package = json.loads(manifest.read_text())
    if package.get("version") != version:
        pytest.fail(
            f"{package_name} in {INTEROP_PREFIX} is at {package.get('version')}, "
            f"the tests need {version}: run scripts/install-interop-agents.sh",
            pytrace=False,
        )
    bin_field = package["bin"]
    relative = bin_field if isinstance(bin_field, str) else bin_field[command]
    return (package_dir / relative).resolve()


@pytest.fixture(scope="session")
def claude_agent_entry() -> Path:
    return installed_entry(CLAUDE_AGENT_PACKAGE, CLAUDE_AGENT_VERSION, "claude-agent-acp")


@pytest.fixture(scope="session")
def codex_agent_entry() -> Path:
    """codex-acp's launcher script, which starts the platform binary npm installed."""
    return installed_entry(CODEX_AGENT_PACKAGE, CODEX_AGENT_VERSION, "codex-acp")


@pytest.fixture
async def claude(tmp_path: Path, claude_agent_entry: Path) -> AsyncIterator[Claude]:
    """A private world with the fake API serving; checks after the test that the
    agent called only endpoints the fake knows."""
    home, cwd = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    cwd.mkdir()
    model = ScriptedModel(cwd)
    api = FakeAnthropic(model)
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        world = Claude(home, cwd, api, model, claude_agent_entry)
        yield world
        nursery.cancel_scope.cancel()
    world.assert_only_known_endpoints()
