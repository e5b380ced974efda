"""The SQLite state store: real files, reopened as a restarted broker would."""

import sqlite3
from pathlib import Path

import pytest
import trio

from broker.store import (
    EX_CANTCREAT,
    EX_IOERR,
    EX_TEMPFAIL,
    AgentRecord,
    StoreError,
    open_store,
)
from tests.disk import corrupt_copies, lock_held, release, save_a_thread, saved_threads, tmpfs


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


async def test_outbox_changes_are_one_write_and_its_size_a_counter(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(10):
        async with open_store(path) as store:
            store.push_outbox("gateway", "g1")
            first, second = store.new_outbox_id(), store.new_outbox_id()
            store.change_outbox("server", [(first, "a"), (second, "b")], [])
            await store.flush()
            writes = store.writes
            store.change_outbox("server", [(store.new_outbox_id(), "c")], [first])
            await store.flush()
            assert store.writes == writes + 1 and store.outbox_rows == 3
        async with open_store(path) as store:
            assert store.outbox_rows == 3
            assert [i.frame for i in await store.outbox("server")] == ["b", "c"]
            assert [i.frame for i in await store.outbox("gateway")] == ["g1"]


async def test_a_record_that_cannot_be_written_is_skipped_counted_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(10):
        async with open_store(path) as store:
            store.save_thread("cli:1", "s1")
            store.save_thread("cli:\ud800", "s2")  # text SQLite cannot encode
            store.save_thread("cli:3", "s3")
            assert await store.threads() == {"cli:1": "s1", "cli:3": "s3"}
            snapshot = store.snapshot()
            assert (snapshot.skipped, snapshot.writes, snapshot.retrying) == (1, 2, False)
            assert "UnicodeEncodeError" in (snapshot.last_error or "")


async def test_a_store_locked_by_another_process_is_waited_for_then_refused_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(30):
        await save_a_thread(path)
        with lock_held(path):
            with pytest.raises(StoreError) as caught:
                async with open_store(path, lock_wait=1.0):
                    raise AssertionError("opened a locked store")
        assert caught.value.exit_code == EX_TEMPFAIL == 75
        assert str(path) in str(caught.value) and "locked by another process" in str(caught.value)
        assert "is locked by another process" in caplog.text
        assert corrupt_copies(tmp_path) == []
        assert await saved_threads(path) == {"telegram:kept": "sess-kept"}


async def test_a_lock_released_while_the_broker_waits_lets_the_store_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite3"
    with trio.fail_after(30):
        await save_a_thread(path)
        with lock_held(path) as holder:
            async with trio.open_nursery() as nursery:
                opened: list[dict[str, str]] = []

                async def open_it() -> None:
                    async with open_store(path, lock_wait=20.0) as store:
                        opened.append(await store.threads())

                nursery.start_soon(open_it)
                while "is locked by another process" not in caplog.text:
                    await trio.sleep(0.05)
                release(holder)
        assert opened == [{"telegram:kept": "sess-kept"}]
        assert corrupt_copies(tmp_path) == []


async def test_a_full_disk_at_start_is_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "256k") as disk, trio.fail_after(30):
        disk.fill()
        path = disk.path / "state" / "s.sqlite3"
        with pytest.raises(StoreError) as caught:
            async with open_store(path):
                raise AssertionError("opened a store on a full disk")
        assert caught.value.exit_code == EX_IOERR == 74
        assert str(path) in str(caught.value) and "full" in str(caught.value)


async def test_a_read_only_store_at_start_is_a_clear_error_and_is_not_moved_aside(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk") as disk, trio.fail_after(30):
        path = disk.path / "s.sqlite3"
        await save_a_thread(path)
        disk.read_only()
        with pytest.raises(StoreError) as caught:
            async with open_store(path):
                raise AssertionError("opened a read-only store")
        assert caught.value.exit_code == EX_CANTCREAT == 73
        assert str(path) in str(caught.value)
        disk.read_only(False)
        assert corrupt_copies(disk.path) == []
        assert await saved_threads(path) == {"telegram:kept": "sess-kept"}


async def test_writes_failing_on_a_full_disk_are_retried_shown_and_land_once_there_is_room(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "1m") as disk, trio.fail_after(30):
        path = disk.path / "s.sqlite3"
        async with open_store(path) as store:
            await store.flush()
            disk.fill()
            big = "x" * 200_000  # needs new pages in the WAL
            store.save_thread("cli:big", big)
            while not store.snapshot().retrying:
                await trio.sleep(0.01)
            failing = store.snapshot()
            assert failing.write_failures >= 1 and failing.queued == 0
            assert "full" in (failing.last_error or "")
            disk.free()
            await store.flush()
            assert not store.snapshot().retrying
            assert (await store.threads())["cli:big"] == big
        assert await saved_threads(path) == {"cli:big": big}
