"""pytest fixtures for trio test suites that run a broker pool with the fake agent.

Load them with ``pytest_plugins = ["broker.testing.fixtures"]`` in a conftest.py
(pytest-trio in ``trio_mode``). Every fixture starts real agent processes:

- ``make_config(agent_args=(), **sections)`` -> a :class:`~broker.config.BrokerConfig`
  running the fake agent under the test's tmp_path with short timeouts;
- ``pool`` -> an open :class:`~broker.sessions.pool.Pool` on the default of ``make_config``,
  closed (every agent stopped) when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.reply import Prompt, TurnEnd
from broker.sessions.pool import Pool, open_pool
from broker.testing.harness import fake_agent_config

ConfigFactory = Callable[..., BrokerConfig]


@pytest.fixture
def make_config(tmp_path: Path) -> ConfigFactory:
    def make(agent_args: Sequence[str] = (), **sections: Any) -> BrokerConfig:
        return fake_agent_config(tmp_path, agent_args=agent_args, **sections)

    return make


@pytest.fixture
async def pool(make_config: ConfigFactory) -> AsyncIterator[Pool]:
    async with open_pool(make_config()) as opened:
        yield opened


async def ask(pool: Pool, key: str, text: str) -> TurnEnd:
    """Submit ``text`` to thread ``key`` and wait for the end of the turn."""
    return await pool.submit(key, Prompt(text)).result()
