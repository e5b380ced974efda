"""Warm spares: agents initialised ahead of need, and no spin when they cannot start."""

from __future__ import annotations

from collections.abc import Callable

import trio

from broker.config import BrokerConfig
from broker.reply import Prompt
from broker.sessions.pool import SPARES_KEY, open_pool


async def test_a_new_thread_takes_an_initialised_spare_and_the_spare_is_replaced(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(pool={"warm_spares": 2}, agent_args=["--init-delay", "0.5"])
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            while pool.snapshot().spares_ready < 2:
                await pool.wait_changed(pool.version)
            spare_pids = {spare.pid for spare in pool._spares}
            handle = pool.submit("cli:new", Prompt("@reply from a spare"))
            assert (await handle.result()).text == "from a spare"
            assert pool.session_snapshot("cli:new").pid in spare_pids  # type: ignore[union-attr]
            while pool.snapshot().spares_ready < 2:
                await pool.wait_changed(pool.version)
            assert pool.counters.spawned == 3
            assert "spares" in pool.snapshot().summary()


async def test_spares_that_cannot_start_back_off_then_stop_instead_of_spinning(
    make_config: Callable[..., BrokerConfig],
) -> None:
    config = make_config(
        pool={"warm_spares": 1, "max_restarts": 2, "restart_window_secs": 60},
        agent_args=["--crash-on-start", "1"],
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            while SPARES_KEY not in pool._blocked:
                await pool.wait_changed(pool.version)
            spawned = pool.counters.spawned
            assert spawned == 3  # the first try and two restarts, with backoff between
            await trio.sleep(1.5)  # long enough for several more tries if it were spinning
            assert pool.counters.spawned == spawned
            assert pool._spares == []
