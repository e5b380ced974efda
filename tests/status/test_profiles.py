"""Each session's profile and the per-profile gauges in /status, /metrics and the dashboard,
from a real pool of two fake-agent profiles behind a real server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from broker.ops.dashboard import render_dashboard
from broker.ops.status import status_document
from broker.reply import Prompt
from broker.sessions.pool import open_pool
from tests.profiles.helpers import profiles_config
from tests.status import prometheus
from tests.status.conftest import get_json, http_get, started, status_server
from tests.status.samples import busy_session, pool_snapshot


async def test_status_and_metrics_show_each_sessions_profile_and_per_profile_gauges(
    tmp_path: Path,
) -> None:
    config = profiles_config(
        tmp_path,
        {"claude": {}, "codex": {"max_sessions": 3}, "reviewer": {"max_sessions": 1}},
    )
    with trio.fail_after(60):
        async with open_pool(config) as pool, status_server(pool) as server:
            assert (await pool.submit("t:idle", Prompt("hello")).result()).ok
            busy = pool.submit("t:busy", Prompt("@silent-tool 30"), profile="codex")
            await started(busy)
            doc = await get_json(server.port, "/status")
            status, _, body = await http_get(server.port, "/metrics")
            await pool.cancel("t:busy")
            await busy.result()
    assert {s["thread_key"]: s["profile"] for s in doc["sessions"]} == {
        "t:idle": "claude",
        "t:busy": "codex",
    }
    assert doc["pool"]["profiles"] == {
        "claude": {"sessions": 1, "busy": 0, "share": 0},
        "codex": {"sessions": 1, "busy": 1, "share": 3},
        "reviewer": {"sessions": 0, "busy": 0, "share": 1},
    }
    assert status == 200
    families = prometheus.parse(body.decode())
    for metric, values in {
        "agent_broker_profile_sessions": {"claude": 1, "codex": 1, "reviewer": 0},
        "agent_broker_profile_busy": {"claude": 0, "codex": 1, "reviewer": 0},
        "agent_broker_profile_share": {"claude": 0, "codex": 3, "reviewer": 1},
    }.items():
        assert families[metric].kind == "gauge"
        seen = {
            dict(labels)["profile"]: value
            for (_, labels), value in families[metric].samples.items()
        }
        assert seen == values, metric


def test_a_removed_profile_with_sessions_left_is_still_counted() -> None:
    snapshot = pool_snapshot(
        busy_session("t:1", profile="gone"),
        busy_session("t:2", state="stopping", profile="default"),
        shares=(("default", 2),),
    )
    doc = status_document(snapshot, None, now=1.0, started_at=0.0)
    assert doc["pool"]["profiles"] == {
        "default": {"sessions": 0, "busy": 0, "share": 2},  # a stopping session is not live
        "gone": {"sessions": 1, "busy": 1, "share": 0},
    }


def screen(doc: dict[str, Any], width: int = 120) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(render_dashboard(doc, error=None))
    return console.export_text()


def row_of(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if key in line)
    return [cell.strip() for cell in re.split("[│┃]", line.strip("│┃ "))]


def test_the_dashboard_shows_profiles_only_when_there_are_several() -> None:
    sessions = (busy_session("t:a", profile="claude"), busy_session("t:b", profile="codex"))
    several = pool_snapshot(*sessions, shares=(("claude", 0), ("codex", 3)))
    text = screen(status_document(several, None, now=1.0, started_at=0.0))
    assert row_of(text, "ceiling in")[:3] == ["thread", "state", "profile"]
    assert row_of(text, "t:b")[:3] == ["t:b", "busy", "codex"]
    assert "claude 1 (1 busy), codex 1/3 (1 busy)" in text
    alone = pool_snapshot(busy_session("t:a"))
    text = screen(status_document(alone, None, now=1.0, started_at=0.0))
    assert "profile" not in text
