"""Latency scenarios: overhead against a direct ACP client, isolation, crash
detection and cold start. Each is ``async def scenario(ctx) -> Result``."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from bench.agent import claimed_pids, write_role
from bench.client import (
    ChatClient,
    Exchange,
    ask_within,
    open_chat,
    open_direct,
    text_contains,
    text_is,
)
from bench.harness import (
    SEPARATE,
    BrokerProcess,
    Context,
    Result,
    broker_sections,
    get_status,
    percentile,
    run_broker,
    summary_ms,
    wall,
)

TURN_TIMEOUT = 60.0
REPLY = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"


def short_turn(tag: str) -> tuple[str, str, str]:
    """A prompt whose reply is known: (prompt, expected reply, first-chunk marker).
    Three chunks sent without delay; the tag is in the first one."""
    reply = f"{tag} {REPLY}"
    return f"@reply {reply}\n@chunks 3", reply, f"{tag} "


def agent_argv(sections: dict[str, dict[str, Any]]) -> list[str]:
    agent = sections["agent"]
    return [agent["command"], *agent["args"]]


def fmt_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.2f} ms"


async def ask_ok(client: ChatClient, thread: str, tag: str) -> Exchange:
    prompt, reply, marker = short_turn(tag)
    return await ask_within(
        client, TURN_TIMEOUT, thread, prompt, done_when=text_is(reply), first_marker=marker
    )


# -- 1. overhead -----------------------------------------------------------------------------


@attrs.define
class Samples:
    """Latencies of one path, in seconds."""

    first: list[float] = attrs.field(factory=list)  # to the first chunk's text
    final: list[float] = attrs.field(factory=list)  # to the complete final reply
    frame: list[float] = attrs.field(factory=list)  # to the first frame of any kind

    def take(self, exchange: Exchange) -> bool:
        if exchange.latency is None or exchange.first_latency is None:
            return False
        assert exchange.first_frame_at is not None
        self.first.append(exchange.first_latency)
        self.final.append(exchange.latency)
        self.frame.append(exchange.first_frame_at - exchange.sent_at)
        return True


async def overhead(ctx: Context) -> Result:
    """Time to first chunk and to the final reply through the broker (streamed
    and plain), against a direct ACP client driving the same agent, interleaved."""
    result = Result("overhead", SEPARATE)
    turns, warmup, block = ctx.size(400, 40), ctx.size(30, 5), ctx.size(25, 10)
    root = ctx.fresh("overhead")
    streamed_config = broker_sections(
        root / "streamed",
        server={"streaming": True},
        render={"edit_interval_ms": 0},
        timeouts={"drain_ms": 0},
    )
    plain_config = broker_sections(root / "plain", timeouts={"drain_ms": 0})
    streamed, plain, direct_samples = Samples(), Samples(), Samples()
    wrong = 0
    async with (
        run_broker(root / "streamed", streamed_config, label="overhead-streamed") as broker,
        run_broker(root / "plain", plain_config, label="overhead-plain") as plain_broker,
        open_chat(broker.url) as client,
        open_chat(plain_broker.url) as plain_client,
        open_direct(agent_argv(streamed_config), root / "direct") as direct,
    ):
        for i in range(warmup):
            await ask_ok(client, "warm", f"w{i}")
            await ask_ok(plain_client, "warm", f"w{i}")
            with trio.fail_after(TURN_TIMEOUT):
                await direct.turn(short_turn(f"w{i}")[0], f"w{i} ")
        cpu0 = broker.cpu_times(), plain_broker.cpu_times()
        # Alternate blocks so that load from elsewhere hits every path alike.
        for start in range(0, turns, block):
            tags = [f"t{i}" for i in range(start, min(turns, start + block))]
            for tag in tags:
                wrong += not streamed.take(await ask_ok(client, "warm", tag))
            for tag in tags:
                wrong += not plain.take(await ask_ok(plain_client, "warm", tag))
            for tag in tags:
                prompt, reply, marker = short_turn(tag)
                with trio.fail_after(TURN_TIMEOUT):
                    turn = await direct.turn(prompt, marker)
                wrong += turn.text != reply
                direct_samples.first.append(turn.first_chunk)
                direct_samples.final.append(turn.final)
        cpu = (
            _per_turn(broker.cpu_times(), cpu0[0], turns),
            _per_turn(plain_broker.cpu_times(), cpu0[1], turns),
        )
    result.metrics.update(
        turns=turns,
        drain_ms=0,
        streamed={
            "edit_interval_ms": 0,
            "first_frame": summary_ms(streamed.frame),
            "first_chunk": summary_ms(streamed.first),
            "final": summary_ms(streamed.final),
            "broker_cpu_ms_per_turn": cpu[0],
        },
        plain={
            "final": summary_ms(plain.final),
            "broker_cpu_ms_per_turn": cpu[1],
        },
        direct={
            "first_chunk": summary_ms(direct_samples.first),
            "final": summary_ms(direct_samples.final),
        },
        wrong_or_lost=wrong,
    )
    for what, ours, theirs in (
        ("first chunk, streamed", streamed.first, direct_samples.first),
        ("final reply, streamed", streamed.final, direct_samples.final),
        ("final reply, plain", plain.final, direct_samples.final),
    ):
        for q, limit in ((0.50, 0.001), (0.99, 0.005)):
            ours_q, theirs_q = percentile(ours, q), percentile(theirs, q)
            result.check(
                f"{what}: p{int(q * 100)} added",
                f"<= {limit * 1000:.0f} ms",
                f"+{fmt_ms(ours_q - theirs_q)} ({ours_q / theirs_q:.1f}x: {fmt_ms(ours_q)} vs "
                f"{fmt_ms(theirs_q)})",
                ours_q - theirs_q <= limit,
            )
    result.check("lost or wrong replies", "0", str(wrong), wrong == 0)
    result.metrics["default_drain"] = await _default_drain(ctx, root, turns=ctx.size(60, 10))
    shipped = await _shipped_defaults(root, turns=ctx.size(200, 50))
    result.metrics["shipped_defaults"] = {
        "streaming": True,
        "edit_interval_ms": 1500,
        "drain_ms": 200,
        "final": summary_ms(shipped),
        "direct_final": summary_ms(direct_samples.final),
    }
    for q, limit in ((0.50, 0.005), (0.99, 0.020)):
        after = percentile(shipped, q) - percentile(direct_samples.final, q)
        result.check(
            f"final text after the agent's response, shipped defaults: p{int(q * 100)}",
            f"<= {limit * 1000:.0f} ms",
            fmt_ms(after),
            after <= limit,
        )
    result.notes.append(
        "Measured with timeouts.drain_ms = 0; streamed with render.edit_interval_ms = 0. A "
        "streamed reply's first message is sent as a request and edited once its message_id "
        "is back, so the first chunk needs one more round trip to the chat client than a plain "
        "reply. The default drain window (200 ms) deliberately holds every final reply after "
        "the agent's response, to keep chunks sent after it; 'default_drain' shows its cost."
    )
    return result


def _per_turn(
    now: tuple[float, float], before: tuple[float, float], turns: int
) -> dict[str, float]:
    """CPU milliseconds per turn between two (user, system) readings."""
    user, system = ((a - b) / turns * 1000 for a, b in zip(now, before, strict=True))
    return {"user": round(user, 3), "system": round(system, 3), "total": round(user + system, 3)}


async def _default_drain(ctx: Context, parent: Path, *, turns: int) -> dict[str, Any]:
    """Final-reply latency with the default drain window, streaming off."""
    root = parent / "default-drain"
    sections = broker_sections(root, timeouts={"drain_ms": 200})
    finals = []
    async with (
        run_broker(root, sections, label="default-drain") as broker,
        open_chat(broker.url) as client,
    ):
        await ask_ok(client, "warm", "w")
        for i in range(turns):
            exchange = await ask_ok(client, "warm", f"d{i}")
            if exchange.latency is not None:
                finals.append(exchange.latency)
    return {"drain_ms": 200, "streaming": False, "final": summary_ms(finals)}


async def _shipped_defaults(parent: Path, *, turns: int) -> list[float]:
    """Final-text latencies (seconds) with the shipped defaults: streaming on,
    ``edit_interval_ms = 1500``, ``drain_ms = 200``. Less the direct client's
    final latency (the agent's own time), it is the time from the agent's
    prompt response to the final text on the socket."""
    root = parent / "shipped-defaults"
    sections = broker_sections(
        root,
        server={"streaming": True},
        render={"edit_interval_ms": 1500},
        timeouts={"drain_ms": 200},
    )
    finals = []
    async with (
        run_broker(root, sections, label="shipped-defaults") as broker,
        open_chat(broker.url) as client,
    ):
        await ask_ok(client, "warm", "w")
        for i in range(turns):
            # The session holds a thread's next prompt until drain_ms after the
            # previous answer (late text goes to its own reply): wait that out, so
            # each sample is this turn's own time.
            await trio.sleep(0.2 + 0.05)
            exchange = await ask_ok(client, "warm", f"s{i}")
            if exchange.latency is not None:
                finals.append(exchange.latency)
    return finals


# -- 2. isolation ----------------------------------------------------------------------------


async def _probe_status(port: int, secs: float, into: list[float]) -> None:
    """Time GET /status for ``secs`` from a separate process (bench/probe.py),
    so the figures are the broker's, not this busy event loop's. Failures count as
    an hour, so they cannot hide in a percentile."""
    done = await trio.run_process(
        [sys.executable, "-m", "bench.probe", str(port), str(secs)],
        capture_stdout=True,
    )
    into.extend(3600.0 if value is None else value for value in json.loads(done.stdout))


THINK_SECS = 0.5  # a thread's next message follows its previous reply after this


async def _short_turn_load(
    client: ChatClient, threads: Sequence[str], secs: float, phase: str
) -> tuple[list[float], int]:
    """Every thread does short turns for ``secs``, each :data:`THINK_SECS` after
    the previous reply (a busy chat, not a saturating loop): latencies, failures."""
    latencies: list[float] = []
    failures = 0
    deadline = trio.current_time() + secs

    async def worker(index: int, thread: str) -> None:
        nonlocal failures
        await trio.sleep(THINK_SECS * index / len(threads))  # spread the threads' phases
        turn = 0
        while trio.current_time() < deadline:
            exchange = await ask_ok(client, thread, f"{phase}-{thread}-{turn}")
            turn += 1
            if exchange.latency is None:
                failures += 1
            else:
                latencies.append(exchange.latency)
            await trio.sleep(THINK_SECS)

    async with trio.open_nursery() as nursery:
        for index, thread in enumerate(threads):
            nursery.start_soon(worker, index, thread)
    return latencies, failures


async def _session(broker: BrokerProcess, thread: str) -> dict[str, Any] | None:
    """The thread's session in the broker's /status document, if it has one."""
    key = f"bench:{thread}"
    for session in (await get_status(broker.port))["sessions"]:
        if session["thread_key"] == key:
            return dict(session)
    return None


async def _wait_session(broker: BrokerProcess, thread: str, states: set[str]) -> dict[str, Any]:
    """Poll /status until the thread's session is in one of ``states`` (at most 60 s)."""
    with trio.fail_after(60):
        while True:
            session = await _session(broker, thread)
            if session is not None and session["state"] in states:
                return session
            await trio.sleep(0.05)


async def isolation(ctx: Context) -> Result:
    """50 threads of short turns without, with, and again without one 60 s silent
    tool call and one agent taking 20 s to initialize; /status polled all along."""
    result = Result("isolation", SEPARATE)
    threads = [f"iso{i}" for i in range(ctx.size(50, 8))]
    silent_secs = ctx.secs(60, 8)
    init_secs = ctx.secs(20, 5)
    phase_secs = ctx.secs(15, 2.5)  # shorter than the slow start, so it overlaps all of it
    root = ctx.fresh("isolation")
    sections = broker_sections(
        root, pool={"max_sessions": len(threads) + 5}, timeouts={"drain_ms": 0}
    )
    status: dict[str, list[float]] = {"quiet": [], "slow": [], "after": []}
    async with (
        run_broker(root, sections, label="isolation") as broker,
        open_chat(broker.url) as client,
    ):
        async with trio.open_nursery() as nursery:
            for thread in threads:
                nursery.start_soon(ask_ok, client, thread, "warm")
        cpu0 = broker.cpu_secs()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe_status, broker.port, phase_secs, status["quiet"])
            quiet, quiet_failed = await _short_turn_load(client, threads, phase_secs, "quiet")
        quiet_cpu = (broker.cpu_secs() - cpu0) / phase_secs
        silent = await client.send(
            "silent", f"@say start\n@silent-tool {silent_secs}", done_when=text_contains("start")
        )
        await _wait_session(broker, "silent", {"busy"})
        write_role(broker.roles, "slow-init", ["--init-delay", str(init_secs)])
        slow_prompt, slow_reply, _ = short_turn("slow")
        slow = await client.send("slow", slow_prompt, done_when=text_is(slow_reply))
        await _wait_session(broker, "slow", {"starting"})
        with trio.fail_after(60):
            while not claimed_pids(broker.roles):  # imports done: it now sits in initialize
                await trio.sleep(0.05)
        slow_started = wall()
        cpu0 = broker.cpu_secs()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe_status, broker.port, phase_secs, status["slow"])
            loaded, loaded_failed = await _short_turn_load(client, threads, phase_secs, "slow")
        loaded_cpu = (broker.cpu_secs() - cpu0) / phase_secs
        overlapped = not slow.done.is_set() and not silent.done.is_set()
        with trio.move_on_after(init_secs + 30):
            await slow.done.wait()
        slow_latency = slow.latency
        silent_session = await _session(broker, "silent")
        still_busy = silent_session is not None and silent_session["state"] == "busy"
        # The same load once more without the slow ones, so drift in the machine's
        # load during the run weighs on both sides of the comparison.
        await ask_within(client, 60, "silent", "/cancel")
        with trio.fail_after(60):
            await silent.done.wait()
        with trio.fail_after(60):  # idle again, or suspended: nothing of it runs
            while (session := await _session(broker, "silent")) is not None and session[
                "state"
            ] != "idle":
                await trio.sleep(0.05)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_probe_status, broker.port, phase_secs, status["after"])
            after, after_failed = await _short_turn_load(client, threads, phase_secs, "after")
    baseline = quiet + after
    q99, l99 = percentile(baseline, 0.99), percentile(loaded, 0.99)
    result.metrics.update(
        threads=len(threads),
        phase_secs=phase_secs,
        silent_tool_secs=silent_secs,
        init_delay_secs=init_secs,
        drain_ms=0,
        think_secs=THINK_SECS,
        without_slow_before=summary_ms(quiet),
        with_slow=summary_ms(loaded),
        without_slow_after=summary_ms(after),
        broker_cpu_share_without_slow=round(quiet_cpu, 3),
        broker_cpu_share_with_slow=round(loaded_cpu, 3),
        failed_turns=quiet_failed + loaded_failed + after_failed,
        status_without_slow=summary_ms(status["quiet"] + status["after"]),
        status_with_slow=summary_ms(status["slow"]),
        slow_thread_first_reply_secs=None if slow_latency is None else round(slow_latency, 2),
        slow_thread_started_to_reply_secs=None
        if slow.done_at is None
        else round(slow.done_at - slow_started, 2),
        silent_tool_still_running_at_end=still_busy,
    )
    result.check(
        "others' p99 with slow ones",
        "<= 1.2x without",
        f"{l99 / q99:.2f}x ({fmt_ms(l99)} vs {fmt_ms(q99)})",
        l99 <= 1.2 * q99,
    )
    status_all = status["quiet"] + status["slow"] + status["after"]
    s99 = percentile(status_all, 0.99)
    result.check(
        "/status p99 throughout", "< 10 ms", fmt_ms(s99), s99 < 0.010, f"{len(status_all)} requests"
    )
    result.check("slow ones overlapped the load", "yes", "yes" if overlapped else "no", overlapped)
    failed = quiet_failed + loaded_failed + after_failed
    result.check("short turns failed", "0", str(failed), failed == 0)
    result.notes.append(
        "drain_ms = 0 so the comparison is of the broker's work, not of a fixed 200 ms wait; "
        f"each phase runs {phase_secs:g} s of short turns on every thread, each "
        f"{THINK_SECS:g} s after the thread's previous reply. The phase with the slow ones is "
        "compared with the phases before and after it taken together (the silent call is "
        "cancelled with /cancel and the slow agent has answered before the last one)."
    )
    return result


# -- 6. crash detection ----------------------------------------------------------------------


async def crash(ctx: Context) -> Result:
    """SIGKILL agents mid-turn (pid from /status); time until the error reply."""
    result = Result("crash", SEPARATE)
    rounds, batch = ctx.size(8, 2), ctx.size(5, 2)
    root = ctx.fresh("crash")
    sections = broker_sections(root, pool={"max_sessions": batch + 2})
    latencies: list[float] = []
    lost = 0
    async with run_broker(root, sections, label="crash") as broker, open_chat(broker.url) as client:
        for r in range(rounds):
            names = [f"crash{r}-{i}" for i in range(batch)]
            exchanges = [
                await client.send(
                    name,
                    "@tool Compiling 600 execute",
                    done_when=text_contains("exited unexpectedly"),
                )
                for name in names
            ]
            pids = []
            for name in names:
                session = await _until_tool(broker, name)
                pids.append(int(session["pid"]))
            killed_at = wall()
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            with trio.move_on_after(10):
                for exchange in exchanges:
                    await exchange.done.wait()
            for exchange in exchanges:
                if exchange.done_at is None:
                    lost += 1
                else:
                    latencies.append(exchange.done_at - killed_at)
    p99 = percentile(latencies, 0.99)
    result.metrics.update(
        kills=rounds * batch,
        simultaneous=batch,
        error_reply_after_kill=summary_ms(latencies),
        lost=lost,
    )
    result.check(
        "error reply p99 after SIGKILL",
        "< 200 ms",
        fmt_ms(p99),
        p99 < 0.200,
        f"{rounds} rounds of {batch} agents killed at once",
    )
    result.check("kills without an error reply", "0", str(lost), lost == 0)
    result.notes.append(
        "Each agent is mid-turn in a 600 s tool call (seen as current_tool in /status) "
        "when it is killed; the latency runs from the kill to the error reply on the socket."
    )
    return result


async def _until_tool(broker: BrokerProcess, thread: str) -> dict[str, Any]:
    """Poll /status until the thread's agent is inside a tool call (so: mid-turn)."""
    with trio.fail_after(60):
        while True:
            session = await _session(broker, thread)
            if session is not None and session["current_tool"] and session["pid"]:
                return session
            await trio.sleep(0.02)


# -- 7. cold start ---------------------------------------------------------------------------


async def cold_start(ctx: Context) -> Result:
    """First reply of a new thread on an agent with a 1 s initialize, with
    warm_spares 0 and 2, against a warm thread's reply."""
    result = Result("coldstart", SEPARATE)
    new_threads, warm_turns = ctx.size(8, 2), ctx.size(30, 5)
    measured: dict[int, dict[str, list[float]]] = {}
    for spares in (0, 2):
        root = ctx.fresh(f"coldstart-{spares}")
        sections = broker_sections(
            root,
            agent_args=["--init-delay", "1"],
            pool={"max_sessions": new_threads + 4, "warm_spares": spares},
            timeouts={"drain_ms": 0},
        )
        warm: list[float] = []
        new: list[float] = []
        async with (
            run_broker(root, sections, label=f"coldstart-{spares}") as broker,
            open_chat(broker.url) as client,
        ):
            await ask_ok(client, "warm", "first")
            for i in range(new_threads):
                for j in range(warm_turns // new_threads + 1):
                    exchange = await ask_ok(client, "warm", f"w{i}-{j}")
                    if exchange.latency is not None:
                        warm.append(exchange.latency)
                await _spares_ready(broker, spares)
                exchange = await ask_ok(client, f"new{i}", f"n{i}")
                if exchange.latency is not None:
                    new.append(exchange.latency)
        measured[spares] = {"warm": warm, "new": new}
        result.metrics[f"warm_spares_{spares}"] = {
            "warm_thread": summary_ms(warm),
            "new_thread": summary_ms(new),
        }
    # What a new session costs the agent itself: session/new plus a first turn, direct.
    direct_new: list[float] = []
    direct_warm: list[float] = []
    async with open_direct(agent_argv(sections), root / "direct") as direct:
        for i in range(new_threads):
            for j in range(warm_turns // new_threads + 1):
                with trio.fail_after(TURN_TIMEOUT):
                    direct_warm.append((await direct.turn(*_prompt_marker(f"w{i}-{j}"))).final)
            with trio.fail_after(TURN_TIMEOUT):
                opened = await direct.new_session()
                direct_new.append(opened + (await direct.turn(*_prompt_marker(f"n{i}"))).final)
    result.metrics["direct"] = {
        "warm_session": summary_ms(direct_warm),
        "new_session_and_turn": summary_ms(direct_new),
    }
    for spares in (0, 2):
        warm50 = percentile(measured[spares]["warm"], 0.5)
        new50 = percentile(measured[spares]["new"], 0.5)
        result.check(
            f"new thread p50, warm_spares {spares}",
            "<= 1.2x warm" if spares else "(contrast)",
            f"{new50 / warm50:.2f}x ({fmt_ms(new50)} vs {fmt_ms(warm50)})",
            new50 <= 1.2 * warm50 if spares else None,
        )
    result.notes.append(
        "Every agent takes 1 s to answer initialize. Before each new thread the bench waits "
        "until /status shows every spare ready; drain_ms = 0. 'direct' is the agent's own cost "
        "of a new session (session/new, then the first turn) without the broker."
    )
    return result


def _prompt_marker(tag: str) -> tuple[str, str]:
    prompt, _, marker = short_turn(tag)
    return prompt, marker


async def _spares_ready(broker: BrokerProcess, spares: int) -> None:
    with trio.fail_after(60):
        while (await get_status(broker.port))["pool"]["spares_ready"] < spares:
            await trio.sleep(0.05)
