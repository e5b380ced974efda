"""A re-arming wake-up: "something changed, look again".

``trio.Event`` fires once. State that changes many times (a transcript, the
pool, a session's queue) wakes its watchers with a :class:`Pulse`: every task
waiting in :meth:`Pulse.wait` wakes at the next :meth:`Pulse.fire`, and the
pulse is ready for the one after at once.

Watchers check the state and then wait, with no checkpoint in between (trio
runs one task at a time), so a change is never missed::

    while not ready():
        await pulse.wait()
"""

from __future__ import annotations

import trio


class Pulse:
    """Wakes every current waiter on each :meth:`fire`; never stays set."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def fire(self) -> None:
        """Wake everyone waiting now; later waiters wait for the next fire."""
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Wait for the next :meth:`fire`. Cancellable; raises nothing else."""
        await self._event.wait()
