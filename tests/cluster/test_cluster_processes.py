"""Three broker processes on loopback as one cluster, all events entering through one of them.

Each thread's agent runs on its owner, each event is answered once; a replica killed with
SIGKILL leaves its threads a clear reply and the others untouched, and, restarted, resumes them.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import trio

from broker.cluster.ownership import owner
from broker.frontends.wire import encode_event
from broker.sentences import HOST_RESTARTING
from broker.testing.fake_gateway import make_event
from broker.testing.harness import free_port, http_get
from tests.security.clients import stop
from tests.service.broker_process import Chat, broker_process, chat, write_config

NAMES = ["agent-broker-0", "agent-broker-1", "agent-broker-2"]
PEER_TOKEN = "peer-token-for-tests"
THREADS = 300
WAVE = 50  # events in flight at once on the one client connection (its limit is 64)


def cluster_configs(tmp_path: Path) -> tuple[list[int], list[Path]]:
    ports = [free_port() for _ in NAMES]
    members = {name: f"127.0.0.1:{port}" for name, port in zip(NAMES, ports, strict=True)}
    paths = []
    for name, port in zip(NAMES, ports, strict=True):
        root = tmp_path / name
        root.mkdir()
        cluster = {"members": members, "replica": name, "peer_token": PEER_TOKEN}
        paths.append(write_config(root, port, cluster=cluster, pool={"max_sessions": WAVE + 10}))
    return ports, paths


def channel(n: int) -> str:
    return f"room-{n}"


def key(n: int) -> str:
    return f"telegram:{channel(n)}"


async def ask_all(client: Chat, threads: list[int], text: str) -> dict[int, str]:
    """Send ``text n`` in each thread (``WAVE`` at a time); thread -> event id."""
    events: dict[int, str] = {}
    for start in range(0, len(threads), WAVE):
        wave = [(n, make_event(f"@reply {text} {n}", channel_id=channel(n))) for n in threads]
        wave = wave[start : start + WAVE]
        for n, event in wave:
            await client.ws.send_message(encode_event(event))
            events[n] = event.event_id
        for _n, event in wave:
            await client.reply(event.event_id)
    return events


async def status(port: int) -> dict[str, Any]:
    code, body = await http_get(port, "/status")
    assert code == 200
    document: dict[str, Any] = json.loads(body)
    return document


def held_threads(document: dict[str, Any]) -> set[str]:
    """The thread keys a replica's pool has agents (or suspended sessions) for."""
    live = {s["thread_key"] for s in document["sessions"] if s["thread_key"]}
    return live | set(document["pool"]["suspended_threads"])


async def test_threads_sent_through_one_replica_run_on_their_owners_and_survive_a_killed_replica(
    tmp_path: Path,
) -> None:
    ports, configs = cluster_configs(tmp_path)
    threads = list(range(THREADS))
    owners = {n: owner(key(n), NAMES) for n in threads}
    owned = {name: [n for n in threads if owners[n] == name] for name in NAMES}
    assert all(len(owned[name]) > 60 for name in NAMES)  # the keys do spread
    killed = NAMES[2]
    async with (
        broker_process(configs[0], name=NAMES[0]) as entry,
        broker_process(configs[1], name=NAMES[1]) as second,
    ):
        async with broker_process(configs[2], name=f"{killed}-first") as third:
            with trio.fail_after(240):
                async with chat(ports[0]) as client:
                    first = await ask_all(client, threads, "first")
                    assert all(client.replies[first[n]] == [f"first {n}"] for n in threads)
                    documents = [await status(port) for port in ports]
                for name, document in zip(NAMES, documents, strict=True):
                    assert document["cluster"]["replica"] == name
                    assert document["counters"]["turns_submitted"] == len(owned[name])
                    assert held_threads(document) <= {key(n) for n in owned[name]}
                    assert document["cluster"]["not_owned"] == 0
                entry_view = documents[0]["cluster"]
                assert entry_view["forwarded"] == THREADS - len(owned[NAMES[0]])
                peers = {p["name"]: p for p in entry_view["peers"]}
                assert {name: peers[name]["forwarded"] for name in NAMES[1:]} == {
                    name: len(owned[name]) for name in NAMES[1:]
                }
                assert [d["cluster"]["from_peers"] for d in documents[1:]] == [
                    len(owned[name]) for name in NAMES[1:]
                ]
                third.signal(signal.SIGKILL)
                assert await third.wait() == -signal.SIGKILL
        with trio.fail_after(120):
            async with chat(ports[0]) as client:
                sample = owned[NAMES[0]][:30] + owned[NAMES[1]][:30]
                second_round = await ask_all(client, owned[killed] + sample, "second")
                for n in owned[killed]:
                    assert client.replies[second_round[n]] == [HOST_RESTARTING]
                for n in sample:
                    assert client.replies[second_round[n]] == [f"second {n}"]
            assert (await status(ports[1]))["counters"]["crashed"] == 0
        async with broker_process(configs[2], name=f"{killed}-restarted") as third:
            with trio.fail_after(120):
                async with chat(ports[0]) as client:
                    third_round = await ask_all(client, owned[killed], "third")
                    for n in owned[killed]:
                        assert client.replies[third_round[n]] == [f"third {n}"]
                document = await status(ports[2])
                assert document["counters"]["resumed"] == len(owned[killed])
                assert document["counters"]["turns_submitted"] == len(owned[killed])
                peers = {p["name"]: p for p in (await status(ports[0]))["cluster"]["peers"]}
                assert peers[killed]["unreachable"] == len(owned[killed])
                assert peers[NAMES[1]]["unreachable"] == 0
            await stop(third)
        await stop(second)
        await stop(entry)
