"""Security tests run real agent processes, real sockets and real broker processes.

Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.testing.harness import fake_agent_config
from tests.security.clients import RAW_AGENT


@pytest.fixture
def raw_agent_config(tmp_path: Path) -> Callable[..., BrokerConfig]:
    """A config whose agent is ``raw_agent.py`` running in ``tmp_path / "work"``."""

    def make(**sections: Any) -> BrokerConfig:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        agent = {"command": sys.executable, "args": [str(RAW_AGENT)], "working_dir": str(work)}
        agent.update(sections.pop("agent", {}))
        return fake_agent_config(tmp_path, agent=agent, **sections)

    return make
