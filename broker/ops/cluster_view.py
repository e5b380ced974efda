"""``agent-broker status --cluster``: every member's ``/status``, side by side.

Each member of ``[cluster] members`` is asked for its document (``GET
/status`` on the address listed, with ``[server] token``), one after the
other, each bounded by a short timeout. :func:`cluster_rows` turns the
answers into one row per member (pure); :func:`print_cluster` prints them, or
the documents themselves as JSON. A member that does not answer is a row that
says why; the exit code is then 69, so a probe can alert.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs
from rich.console import Console
from rich.table import Table

from broker.config import BrokerConfig
from broker.ops.dashboard import EX_OK, EX_UNAVAILABLE, StatusError, fetch_status

MEMBER_TIMEOUT_SECS = 3.0

Answer = dict[str, Any] | StatusError  # a member's document, or why it gave none


@attrs.frozen
class MemberRow:
    name: str
    reachable: bool
    sessions: int = 0
    busy: int = 0
    suspended: int = 0
    turns: int = 0
    handled_here: int = 0
    forwarded: int = 0
    unreachable_peers: tuple[str, ...] = ()  # the peers this member cannot reach now
    problem: str = ""


def member_url(address: str, token: str) -> str:
    """The WebSocket URL of a member's server (``fetch_status`` turns it into HTTP)."""
    url = f"ws://{address}"
    return url + ("?token=" + quote(token, safe="") if token else "")


def cluster_rows(members: Mapping[str, str], answers: Mapping[str, Answer]) -> list[MemberRow]:
    """One row per member, in the order of ``members``. Pure."""
    rows = []
    for name in members:
        answer = answers[name]
        if isinstance(answer, StatusError):
            rows.append(MemberRow(name, False, problem=str(answer)))
            continue
        pool, cluster = answer["pool"], answer.get("cluster") or {}
        peers = cluster.get("peers", [])
        rows.append(
            MemberRow(
                name,
                True,
                sessions=pool["active"],
                busy=pool["by_state"].get("busy", 0),
                suspended=pool["suspended"],
                turns=answer["counters"]["turns_submitted"],
                handled_here=cluster.get("handled_here", 0),
                forwarded=cluster.get("forwarded", 0),
                unreachable_peers=tuple(p["name"] for p in peers if p["last_error"]),
                problem=""
                if cluster.get("replica") == name
                else f"answers as {cluster.get('replica')!r}",
            )
        )
    return rows


def ask_members(config: BrokerConfig) -> dict[str, Answer]:
    """Every member's document or error (blocking; each bounded by the timeout)."""
    answers: dict[str, Answer] = {}
    for name, address in config.cluster.members.items():
        try:
            url = member_url(address, config.server.token)
            answers[name] = fetch_status(url, timeout=MEMBER_TIMEOUT_SECS)
        except StatusError as exc:
            answers[name] = exc
    return answers


def cluster_table(rows: list[MemberRow]) -> Table:
    table = Table(title="cluster", title_justify="left")
    for column in ("member", "sessions", "busy", "suspended", "turns", "here", "forwarded"):
        table.add_column(column, justify="left" if column == "member" else "right")
    table.add_column("notes")
    for row in rows:
        if not row.reachable:
            table.add_row(row.name, "", "", "", "", "", "", f"[red]unreachable[/]: {row.problem}")
            continue
        notes = [row.problem] if row.problem else []
        if row.unreachable_peers:
            notes.append("cannot reach " + ", ".join(row.unreachable_peers))
        numbers = (
            row.sessions,
            row.busy,
            row.suspended,
            row.turns,
            row.handled_here,
            row.forwarded,
        )
        table.add_row(row.name, *map(str, numbers), "; ".join(notes))
    return table


def print_cluster(config: BrokerConfig, as_json: bool) -> int:
    """Print the cluster view; 0 when every member answered, else 69."""
    answers = ask_members(config)
    rows = cluster_rows(config.cluster.members, answers)
    if as_json:
        documents = {
            name: {"error": str(answer)} if isinstance(answer, StatusError) else answer
            for name, answer in answers.items()
        }
        print(json.dumps({"members": documents}, indent=2))
    else:
        console = Console()
        if not console.is_terminal:
            console.width = 160
        console.print(cluster_table(rows))
    return EX_OK if all(row.reachable for row in rows) else EX_UNAVAILABLE
