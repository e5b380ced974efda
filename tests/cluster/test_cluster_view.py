"""``agent-broker status --cluster``: every member's counts, and which are unreachable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import trio

from broker.cluster.ownership import owner
from broker.ops.cluster_view import MemberRow, cluster_rows
from broker.ops.dashboard import StatusError
from broker.sentences import HOST_RESTARTING
from broker.testing.harness import free_port
from tests.security.clients import stop
from tests.service.broker_process import ROOT, broker_process, chat, write_config

NAMES = ["agent-broker-0", "agent-broker-1"]


def document(replica: str, *, active: int, unreachable: list[str]) -> dict[str, object]:
    peers = [{"name": name, "last_error": "OSError: refused"} for name in unreachable]
    return {
        "pool": {"active": active, "by_state": {"busy": 1}, "suspended": 2},
        "counters": {"turns_submitted": 7},
        "cluster": {"replica": replica, "handled_here": 5, "forwarded": 3, "peers": peers},
    }


def test_each_member_is_a_row_and_one_that_did_not_answer_says_why() -> None:
    members = {"a": "127.0.0.1:1", "b": "127.0.0.1:2", "c": "127.0.0.1:3"}
    answers = {
        "a": document("a", active=4, unreachable=["b"]),
        "b": StatusError("broker not reachable at http://127.0.0.1:2/status (refused)"),
        "c": document("a", active=0, unreachable=[]),  # c's address answers as another member
    }
    rows = cluster_rows(members, answers)  # type: ignore[arg-type]
    assert rows[0] == MemberRow("a", True, 4, 1, 2, 7, 5, 3, ("b",))
    assert rows[1] == MemberRow("b", False, problem=str(answers["b"]))
    assert rows[2].problem == "answers as 'a'"


def documents_row(out: str, name: str) -> list[str]:
    """The numbers of ``name``'s row in the printed table."""
    line = next(line for line in out.splitlines() if name in line and "│" in line)
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    return cells[1:7]


async def test_status_cluster_shows_the_live_members_counts_and_the_unreachable_one(
    tmp_path: Path,
) -> None:
    port = free_port()
    members = {NAMES[0]: f"127.0.0.1:{port}", NAMES[1]: f"127.0.0.1:{free_port()}"}
    cluster = {"members": members, "replica": NAMES[0], "peer_token": "peer-token-for-tests"}
    config = write_config(tmp_path, port, cluster=cluster)
    here, elsewhere = (
        next(n for n in range(100) if owner(f"telegram:room-{n}", NAMES) == name) for name in NAMES
    )
    async with broker_process(config) as running:
        with trio.fail_after(60):
            async with chat(port) as client:
                assert await client.ask("@reply mine", f"room-{here}", "") == "mine"
                assert await client.ask("hi", f"room-{elsewhere}", "") == HOST_RESTARTING
            command = [sys.executable, "-m", "broker", "status", "--cluster", "--config"]
            shown = await trio.run_process(
                [*command, str(config)], cwd=ROOT, capture_stdout=True, check=False
            )
            as_json = await trio.run_process(
                [*command, str(config), "--json"], cwd=ROOT, capture_stdout=True, check=False
            )
        await stop(running)
    out = shown.stdout.decode()
    assert shown.returncode == 69, out
    assert f"cannot reach {NAMES[1]}" in out and "unreachable" in out
    assert documents_row(out, NAMES[0]) == ["1", "0", "0", "1", "1", "0"]  # none got through
    documents = json.loads(as_json.stdout)["members"]
    assert documents[NAMES[0]]["cluster"]["peers"][0]["unreachable"] == 1
    assert "not reachable" in documents[NAMES[1]]["error"]
