"""Pool tests run real fake-agent processes; every wait is bounded."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.pool import Pool
from broker.reply import Prompt, TurnEnd
from broker.testing.harness import fake_agent_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., BrokerConfig]:
    def make(agent_args: Sequence[str] = (), **sections: Any) -> BrokerConfig:
        return fake_agent_config(tmp_path, agent_args=agent_args, **sections)

    return make


async def ask(pool: Pool, key: str, text: str) -> TurnEnd:
    """Submit ``text`` to ``key`` and wait for the end of the turn."""
    return await pool.submit(key, Prompt(text)).result()
