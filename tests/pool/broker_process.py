"""A minimal broker process for the kill -9 test: two threads, each agent with a grandchild.

Prints one JSON line with the agents' pids and the replies, then waits to be killed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.store import open_store
from broker.testing.harness import fake_agent_config

KEYS = ("cli:0", "cli:1")


async def main(root: Path) -> None:
    config = fake_agent_config(root)
    async with open_store(config.state.path) as store, open_pool(config, store=store) as pool:
        handles = [pool.submit(key, Prompt("@grandchild\n@reply ready")) for key in KEYS]
        ends = [await handle.result() for handle in handles]
        await store.flush()
        pids = [pool.session_snapshot(key).pid for key in KEYS]  # type: ignore[union-attr]
        print(json.dumps({"agents": pids, "texts": [end.text for end in ends]}), flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
