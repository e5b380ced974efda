"""Router tests run the real stack: fake-agent pool, router, WebSocket server, WebSocket clients."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.testing.harness import fake_agent_config


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., BrokerConfig]:
    """A fake-agent config; ``server.streaming`` is off unless a test turns it on."""

    def make(agent_args: Sequence[str] = (), **sections: Any) -> BrokerConfig:
        sections["server"] = {"streaming": False, **sections.get("server", {})}
        return fake_agent_config(tmp_path, agent_args=agent_args, **sections)

    return make
