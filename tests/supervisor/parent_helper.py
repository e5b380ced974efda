"""A parent process for the parent-death test: runs one child under run_child, then waits.

Prints the child's pid on stdout, then sleeps until killed.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import trio

from supervisor.process import ChildSpec, run_child


async def main() -> None:
    spec = ChildSpec(
        argv=(sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"),
        env={"PATH": os.defpath},
        name="orphan-candidate",
    )
    async with trio.open_nursery() as nursery:
        child = await nursery.start(partial(run_child, spec, stop_grace=1.0))
        async for line in child.stdout_lines():
            if line == b"up":
                break
        print(child.pid, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main)
