"""The status document and the metrics text, built from real snapshots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import attrs
import pytest
import trio

from broker.config import BrokerConfig
from broker.ops.status import SESSION_STATES, STATUS_SCHEMA, metrics_text, status_document
from broker.reply import Prompt
from broker.sessions.pool import Histogram, open_pool
from broker.sessions.questions import ANSWER_SECONDS_BUCKETS, QuestionCounters
from tests.status import prometheus
from tests.status.conftest import started
from tests.status.samples import GATEWAY, SERVER, busy_session, pool_snapshot


def test_document_has_broker_pool_sessions_frontends_and_events() -> None:
    snapshot = pool_snapshot(
        busy_session("discord:1"),
        busy_session(
            "cli:a",
            state="idle",
            idle_secs=30.0,
            current_tool=None,
            turn_elapsed_secs=None,
            turn_deadline_in_secs=None,
            queue_length=0,
        ),
    )
    doc = status_document(
        snapshot, SERVER, now=1_700_000_100.0, started_at=1_700_000_000.0, version="9.9", pid=7
    )
    json.dumps(doc, allow_nan=False)  # plain JSON, no NaN/Infinity
    assert doc["schema"] == STATUS_SCHEMA
    assert doc["broker"] == {
        "version": "9.9",
        "pid": 7,
        "started_at": 1_700_000_000.0,
        "uptime_secs": 100.0,
        "closing": False,
    }
    pool = doc["pool"]
    assert (pool["active"], pool["max_sessions"], pool["suspended"]) == (2, 20, 4)
    assert (pool["spares"], pool["spares_ready"], pool["queued"]) == (2, 1, 2)
    assert pool["by_state"] == {
        "starting": 0,
        "spare": 2,
        "idle": 1,
        "busy": 1,
        "stopping": 0,
        "dead": 0,
        "suspended": 4,
    }
    assert [s["thread_key"] for s in doc["sessions"]] == ["cli:a", "discord:1"]
    assert doc["sessions"][1] == {
        "thread_key": "discord:1",
        "state": "busy",
        "pid": 4242,
        "agent": "claude-agent-acp",
        "profile": "default",
        "age_secs": 125.5,
        "idle_secs": None,
        "turn_elapsed_secs": 61.25,
        "turn_deadline_in_secs": 1738.75,
        "queue_length": 2,
        "current_tool": "Run tests",
        "waiting_for_approval": None,
        "waiting_secs": None,
        "turns_done": 3,
        "restarts": 1,
    }
    assert doc["counters"]["spawned"] == 9 and doc["counters"]["crashed"] == 1
    assert doc["turn_seconds"]["count"] == 3 and doc["turn_seconds"]["buckets"][-1] == ["+Inf", 3]
    assert doc["frontends"]["server"] == {
        "listen": "127.0.0.1:8765",
        "clients": ["ws-1", "ws-3"],
        "events_received": 17,
        "outbox_waiting": 2,
    }
    assert doc["recent"] == [
        {
            "at": 1_700_000_000.0,
            "age_secs": 100.0,
            "kind": "crashed",
            "thread_key": "discord:9",
            "detail": "exited with code 3",
        }
    ]


def test_gateway_part_hides_credentials_in_its_url_and_masks_secrets_in_free_text() -> None:
    snapshot = pool_snapshot(busy_session("cli:a", current_tool="curl -H 'token: hunter2'"))
    doc = status_document(
        snapshot, None, now=10.0, started_at=0.0, gateway=GATEWAY, secrets=("hunter2", "")
    )
    assert doc["frontends"]["gateway"] == {
        "url": "wss://gw.example:8443/ws",
        "connected": False,
        "connects": 3,
        "events_received": 40,
        "outbox_waiting": 5,
        "last_error": "refused with HTTP 502",
    }
    assert doc["sessions"][0]["current_tool"] == "curl -H 'token: ***'"


def test_metrics_of_a_broker_without_front_ends_still_parse() -> None:
    text = metrics_text(pool_snapshot(), None, now=1.0, started_at=0.0)
    families = prometheus.parse(text)
    assert "agent_broker_clients" not in families
    assert "agent_broker_events_received_total" not in families


def test_infinite_ceiling_is_null_and_missing_server_is_null() -> None:
    doc = status_document(
        pool_snapshot(busy_session("cli:a", turn_deadline_in_secs=math.inf)),
        None,
        now=10.0,
        started_at=0.0,
    )
    json.dumps(doc, allow_nan=False)
    assert doc["sessions"][0]["turn_deadline_in_secs"] is None
    assert doc["frontends"] == {"server": None, "gateway": None, "discord": None, "slack": None}


def test_metrics_have_every_state_turn_outcomes_histogram_and_clients() -> None:
    snapshot = pool_snapshot(busy_session("cli:a"), busy_session("cli:b", queue_length=1))
    text = metrics_text(snapshot, SERVER, now=50.0, started_at=0.0, version="9.9", gateway=GATEWAY)
    families = prometheus.parse(text)
    sessions = families["agent_broker_sessions"]
    assert sessions.kind == "gauge"
    assert {state: sessions.value(state=state) for state in SESSION_STATES} == {
        "starting": 0,
        "spare": 2,
        "idle": 0,
        "busy": 2,
        "stopping": 0,
        "dead": 0,
        "suspended": 4,
    }
    turns = families["agent_broker_turns_total"]
    assert turns.kind == "counter"
    assert turns.value(outcome="completed") == 7 and turns.value(outcome="timed_out") == 2
    duration = families["agent_broker_turn_duration_seconds"]
    assert duration.kind == "histogram"
    assert duration.value("agent_broker_turn_duration_seconds_bucket", le="0.1") == 1
    assert duration.value("agent_broker_turn_duration_seconds_bucket", le="+Inf") == 3
    assert duration.value("agent_broker_turn_duration_seconds_sum") == pytest.approx(72.05)
    single = {
        name: value
        for name, f in families.items()
        for (_, labels), value in f.samples.items()
        if not labels and f.kind != "histogram"
    }
    assert single["agent_broker_spawns_total"] == 9
    assert single["agent_broker_crashes_total"] == 1
    assert single["agent_broker_timeouts_total"] == 2
    assert single["agent_broker_evictions_total"] == 0
    assert single["agent_broker_queue_length"] == 3
    assert single["agent_broker_clients"] == 2
    assert single["agent_broker_gateway_connected"] == 0
    assert single["agent_broker_gateway_connects_total"] == 3
    events = families["agent_broker_events_received_total"]
    assert (events.value(frontend="server"), events.value(frontend="gateway")) == (17, 40)
    outbox = families["agent_broker_outbox_waiting"]
    assert (outbox.value(frontend="server"), outbox.value(frontend="gateway")) == (2, 5)
    assert single["agent_broker_uptime_seconds"] == 50
    assert families["agent_broker_info"].value(version="9.9") == 1


def test_strict_metrics_reader_rejects_what_prometheus_would() -> None:
    for bad in (
        "agent_broker_x 1\n",  # no HELP/TYPE
        '# HELP a_total h\n# TYPE a_total counter\na_total{l="x} 1\n',  # broken label
        "# HELP a h\n# TYPE a gauge\na 1",  # no final newline
        "# HELP a h\n# TYPE a gauge\na one\n",  # not a number
    ):
        with pytest.raises(AssertionError):
            prometheus.parse(bad)


async def test_no_secret_reaches_the_document_or_the_metrics(
    make_config: Callable[..., BrokerConfig],
) -> None:
    secrets = {"server": "srv-TOKEN-31337", "gateway": "gw-TOKEN-4711", "env": "agent-KEY-999"}
    config = make_config(
        server={"token": secrets["server"]},
        gateway={"token": secrets["gateway"]},
        agent={"env": {"SOME_KEY": secrets["env"]}},
    )
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            handle = pool.submit("cli:secret", Prompt("@silent-tool 30"))
            await started(handle)
            snapshot = pool.snapshot()
            doc = status_document(snapshot, SERVER, now=1.0, started_at=0.0)
            metrics = metrics_text(snapshot, SERVER, now=1.0, started_at=0.0)
    assert doc["sessions"][0]["thread_key"] == "cli:secret"
    for exposed in (json.dumps(doc), metrics):
        for secret in secrets.values():
            assert secret not in exposed


def test_questions_are_in_the_document_and_the_metrics() -> None:
    snapshot = attrs.evolve(
        pool_snapshot(busy_session("cli:asked", waiting_for="Bash", waiting_secs=12.5)),
        questions=QuestionCounters(
            asked=5,
            answered={"allow_once": 2, "reject_once": 1},
            timed_out=1,
            closed={"answered": 3, "timed_out": 1},
        ),
        answer_seconds=answer_histogram(3.0, 40.0, 200.0),
    )
    doc = status_document(snapshot, SERVER, now=50.0, started_at=0.0)
    (session,) = doc["sessions"]
    assert (session["waiting_for_approval"], session["waiting_secs"]) == ("Bash", 12.5)
    assert doc["questions"]["asked"] == 5 and doc["questions"]["open"] == 1
    assert doc["questions"]["answer_seconds"]["count"] == 3
    families = prometheus.parse(metrics_text(snapshot, SERVER, now=50.0, started_at=0.0))
    single = {
        name: value
        for name, f in families.items()
        for (_, labels), value in f.samples.items()
        if not labels and f.kind != "histogram"
    }
    assert single["agent_broker_questions_asked_total"] == 5
    assert single["agent_broker_questions_timed_out_total"] == 1
    assert single["agent_broker_questions_waiting"] == 1
    answered = families["agent_broker_questions_answered_total"]
    assert (
        answered.value(option_kind="allow_once"),
        answered.value(option_kind="reject_once"),
    ) == (
        2,
        1,
    )
    assert families["agent_broker_questions_closed_total"].value(how="timed_out") == 1
    wait = families["agent_broker_question_answer_seconds"]
    assert wait.kind == "histogram"
    assert wait.value("agent_broker_question_answer_seconds_bucket", le="5.0") == 1
    assert wait.value("agent_broker_question_answer_seconds_bucket", le="+Inf") == 3


def answer_histogram(*values: float) -> Histogram:
    histogram = Histogram(ANSWER_SECONDS_BUCKETS, [0] * len(ANSWER_SECONDS_BUCKETS))
    for value in values:
        histogram.observe(value)
    return histogram
