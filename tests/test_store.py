"""The SQLite state store: real files, reopened as a restarted broker would."""

import sqlite3
from pathlib import Path

import trio

from broker.store import AgentRecord, open_store


async def test_thread_sessions_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "broker.sqlite3"
    with trio.fail_after(10):
        async with open_store(path) as store:
            store.save_thread("telegram:1", "sess-a")
            store.save_thread("telegram:2", "sess-b")
            store.save_thread("telegram:1", "sess-c")
            store.forget_thread("telegram:2")
        async with open_store(path) as store:
            assert await store.threads() == {"telegram:1": "sess-c"}
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_writes_recorded_before_cancellation_are_persisted(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with open_store(path) as store:
                for i in range(500):
                    store.save_thread(f"cli:{i}", f"s{i}")
                scope.cancel()
                await trio.sleep_forever()
        async with open_store(path) as store:
            assert len(await store.threads()) == 500


async def test_corrupt_store_is_moved_aside_and_the_broker_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "broker.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with trio.fail_after(10):
        async with open_store(path) as store:
            assert await store.threads() == {}
            store.save_thread("cli:1", "s1")
    aside = list(tmp_path.glob("broker.sqlite3.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not a database")


async def test_agent_records_are_kept_until_cleared(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(10):
        async with open_store(path) as store:
            store.record_agent(AgentRecord("cli:1", 100, 100, 5555, 1))
            store.record_agent(AgentRecord("cli:2", 200, 200, 6666, 1))
            store.clear_agent("cli:1", 100)
            store.clear_agent("cli:2", 999)  # a different pid: not this agent's record
        async with open_store(path) as store:
            assert [r.pid for r in await store.agents()] == [200]


async def test_outbox_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "s.sqlite3", outbox_limit=3) as store:
            for i in range(5):
                store.push_outbox("telegram", f"frame-{i}")
            store.push_outbox("discord", "other")
            items = await store.outbox("telegram")
            # 6 frames over a limit of 3: the three oldest went, all of them telegram's
            assert [item.frame for item in items] == ["frame-3", "frame-4"]
            assert [item.frame for item in await store.outbox("discord")] == ["other"]
            store.ack_outbox([items[0].id])
            assert [item.frame for item in await store.outbox("telegram")] == ["frame-4"]


async def test_replacing_an_outbox_keeps_other_destinations_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(10):
        async with open_store(path) as store:
            store.push_outbox("gateway", "g1")
            store.replace_outbox("server", ["a", "b"])
            store.replace_outbox("server", ["b", "c"])
        async with open_store(path) as store:
            assert [i.frame for i in await store.outbox("server")] == ["b", "c"]
            assert [i.frame for i in await store.outbox("gateway")] == ["g1"]
