"""Throughput and pool scenarios: relay, scale, churn and shutdown. Each is
``async def scenario(ctx) -> Result``."""

from __future__ import annotations

import functools
import re
import signal
from pathlib import Path
from typing import Any

import attrs
import trio

from bench.agent import claimed_pids, write_role
from bench.client import Exchange, ask_within, open_chat, open_direct, text_contains, text_is
from bench.harness import (
    SEPARATE,
    BrokerProcess,
    Context,
    Result,
    broker_sections,
    descendants,
    get_status,
    proc_exists,
    run_broker,
    summary_ms,
    wall,
)
from bench.latency import agent_argv, fmt_ms, short_turn

MIB = 1024 * 1024


# -- 3. relay throughput ---------------------------------------------------------------------


def update_starts(times: list[float], gap: float = 0.05) -> list[float]:
    """The start times of bursts of frames (one streaming update may be several
    frames: an edit per changed message and a request per new one)."""
    starts: list[float] = []
    last = None
    for t in sorted(times):
        if last is None or t - last > gap:
            starts.append(t)
        last = t
    return starts


@attrs.frozen
class Flood:
    """One flood through the broker: the exchange and the broker's costs."""

    count: int
    exchange: Exchange
    cpu_secs: float
    rss_before: int
    peak_rss: int

    @property
    def rate(self) -> float:
        """Chunks per second from sending the prompt to the complete final text."""
        latency = self.exchange.latency
        return 0.0 if latency is None else self.count / latency


async def _flood_through_broker(
    root: Path, sections: dict[str, dict[str, Any]], label: str, count: int, expected: str
) -> Flood:
    async with (
        run_broker(root, sections, label=label) as broker,
        open_chat(broker.url) as client,
    ):
        await ask_within(client, 60, "flood", "@flood 100\n@empty", done_when=text_contains("99"))
        rss_before = broker.rss_bytes()
        cpu_before = broker.cpu_secs()
        exchange = await ask_within(
            client, 600, "flood", f"@flood {count}\n@empty", done_when=text_is(expected)
        )
        return Flood(
            count, exchange, broker.cpu_secs() - cpu_before, rss_before, broker.peak_rss_bytes()
        )


async def relay(ctx: Context) -> Result:
    """One agent floods chunks; the broker relays them to the client, streamed
    (edits paced by the interval) and plain; a direct ACP client is the baseline."""
    result = Result("relay", SEPARATE)
    count = ctx.size(200_000, 20_000)
    interval_ms = 1500
    # The final render strips the reply's trailing whitespace; the flood ends in a space.
    expected = "".join(f"{i} " for i in range(count)).rstrip()
    root = ctx.fresh("relay")
    streaming = broker_sections(
        root / "streamed", server={"streaming": True}, render={"edit_interval_ms": interval_ms}
    )
    streamed = await _flood_through_broker(
        root / "streamed", streaming, "relay-streamed", count, expected
    )
    plain_sections = broker_sections(root / "plain", timeouts={"drain_ms": 0})
    plain = await _flood_through_broker(
        root / "plain", plain_sections, "relay-plain", count, expected
    )
    argv = agent_argv(broker_sections(root / "direct"))
    async with open_direct(argv, root / "direct") as direct:
        with trio.fail_after(600):
            await direct.turn("@flood 100\n@empty", "0 ")
            baseline = await direct.turn(f"@flood {count}\n@empty", "0 ")
    direct_rate = count / baseline.final
    exchange = streamed.exchange
    starts = update_starts(exchange.frame_times)
    min_gap = exchange.min_edit_gap()
    interval = interval_ms / 1000
    result.metrics.update(
        chunks=count,
        reply_chars=len(expected),
        direct_seconds=round(baseline.final, 3),
        direct_chunks_per_sec=round(direct_rate),
        plain=_flood_metrics(plain),
        streamed=_flood_metrics(streamed)
        | {
            "messages": len(exchange.messages),
            "edit_interval_ms": interval_ms,
            "update_bursts": len(starts),
            "edit_frames": exchange.edits,
            "request_frames": exchange.requests,
            "min_gap_between_versions_of_a_message_ms": None
            if min_gap is None
            else round(min_gap * 1000, 1),
        },
    )
    result.check(
        "chunks relayed per second (plain)",
        ">= 50,000",
        f"{plain.rate:,.0f}/s (direct: {direct_rate:,.0f}/s)",
        plain.rate >= 50_000,
        "streaming off, drain_ms 0: the relay itself",
    )
    result.check(
        "chunks relayed per second (streamed)",
        ">= 50,000",
        f"{streamed.rate:,.0f}/s",
        streamed.rate >= 50_000,
        f"includes the wait for the next {interval_ms} ms edit slot",
    )
    for name, flood in (("plain", plain), ("streamed", streamed)):
        done = flood.exchange.done_at is not None
        result.check(
            f"final text byte-exact ({name})", "equal", "equal" if done else "different", done
        )
    result.check(
        "edits of a message no more often than the interval",
        f">= {interval_ms} ms apart",
        "no edits"
        if min_gap is None
        else f"min {min_gap * 1000:.0f} ms "
        f"({exchange.edits} edits of {len(exchange.messages)} messages)",
        min_gap is None or min_gap >= interval - 0.02,
        "20 ms allowed for delivery jitter",
    )
    result.check(
        "broker CPU per chunk",
        "(reported)",
        f"{plain.cpu_secs / count * 1e6:.1f} us plain, "
        f"{streamed.cpu_secs / count * 1e6:.1f} us streamed",
        None,
    )
    direct_ok = baseline.text.rstrip() == expected
    result.check("direct agent text", "equal", "equal" if direct_ok else "different", direct_ok)
    result.notes.append(
        "Per message, the gap between its versions (sent, then each edit) is checked. "
        "The final streamed text also waits for its edit slot, so for a flood shorter than a "
        "few intervals the streamed rate is bounded by the interval, not by the relay."
    )
    return result


def _flood_metrics(flood: Flood) -> dict[str, Any]:
    latency = flood.exchange.latency
    return {
        "seconds": None if latency is None else round(latency, 3),
        "chunks_per_sec": round(flood.rate),
        "broker_cpu_secs": round(flood.cpu_secs, 3),
        "broker_cpu_us_per_chunk": round(flood.cpu_secs / flood.count * 1e6, 2),
        "broker_rss_mib_before": round(flood.rss_before / MIB, 1),
        "broker_peak_rss_mib": round(flood.peak_rss / MIB, 1),
    }


# -- 4. scale --------------------------------------------------------------------------------


def tally(exchanges: list[Exchange]) -> tuple[int, int]:
    """(lost, duplicated): never done; more than one final frame or frames after done."""
    lost = sum(1 for e in exchanges if e.done_at is None)
    duplicated = sum(1 for e in exchanges if e.plain_frames > 1 or e.frames_after_done)
    return lost, duplicated


async def scale(ctx: Context) -> Result:
    """200 concurrent threads, 1,000 turns, max_sessions 200: nothing lost, RSS bounded."""
    result = Result("scale", SEPARATE)
    threads, per_thread = ctx.size(200, 12), ctx.size(5, 2)
    root = ctx.fresh("scale")
    sections = broker_sections(
        root,
        pool={"max_sessions": threads},
        timeouts={"initialize_secs": 300, "session_new_secs": 300},
    )
    exchanges: list[Exchange] = []
    async with run_broker(root, sections, label="scale") as broker, open_chat(broker.url) as client:
        rss_idle = broker.rss_bytes()
        cpu0 = broker.cpu_secs()
        started = wall()

        async def converse(thread: str) -> None:
            for k in range(per_thread):
                prompt, reply, _ = short_turn(f"{thread}-{k}")
                exchange = await ask_within(client, 600, thread, prompt, done_when=text_is(reply))
                exchanges.append(exchange)

        async with trio.open_nursery() as nursery:
            for i in range(threads):
                nursery.start_soon(converse, f"scale{i}")
        elapsed = wall() - started
        await trio.sleep(1.0)  # let any stray duplicate arrive before counting
        cpu = broker.cpu_secs() - cpu0
        rss_live = broker.rss_bytes()
        peak = broker.peak_rss_bytes()
        document = await get_status(broker.port)
    lost, duplicated = tally(exchanges)
    per_session = (rss_live - rss_idle) / threads
    result.metrics.update(
        threads=threads,
        turns=threads * per_thread,
        seconds=round(elapsed, 1),
        turn_latency=summary_ms([e.latency for e in exchanges if e.latency is not None]),
        broker_cpu_secs=round(cpu, 2),
        broker_rss_mib_idle=round(rss_idle / MIB, 1),
        broker_rss_mib_live=round(rss_live / MIB, 1),
        broker_peak_rss_mib=round(peak / MIB, 1),
        broker_kib_per_session=round(per_session / 1024, 1),
        live_sessions=document["pool"]["active"],
        unmatched_frames=len(client.unmatched),
        lost=lost,
        duplicated=duplicated,
    )
    result.check("lost replies", "0", str(lost), lost == 0)
    result.check(
        "duplicated replies",
        "0",
        str(duplicated + len(client.unmatched)),
        duplicated + len(client.unmatched) == 0,
    )
    result.check(
        "broker RSS",
        "< 150 MB",
        f"{peak / MIB:.1f} MiB peak, {per_session / 1024:.0f} KiB per session",
        peak < 150 * MIB,
    )
    result.notes.append(
        f"{threads} threads talk at once, {per_thread} turns each in sequence; every reply "
        "text is unique, so a misrouted reply counts as lost. RSS per session = (RSS with "
        "every session live - RSS before the first) / sessions."
    )
    return result


# -- 5. churn --------------------------------------------------------------------------------

_TURN_NUMBER = re.compile(r"turn (\d+) of this session")


async def churn(ctx: Context) -> Result:
    """100 threads over max_sessions 10: every turn evicts one session and
    resumes another with session/load."""
    result = Result("churn", SEPARATE)
    threads, max_sessions, rounds = ctx.size(100, 12), ctx.size(10, 3), ctx.size(3, 2)
    root = ctx.fresh("churn")
    sections = broker_sections(root, pool={"max_sessions": max_sessions})
    answered = wrong_turn = revisits = 0
    refused: list[str] = []
    async with run_broker(root, sections, label="churn") as broker, open_chat(broker.url) as client:
        started = wall()

        async def worker(w: int) -> None:
            nonlocal answered, wrong_turn, revisits
            # A worker owns its threads, so no thread has two turns at once and at most
            # max_sessions sessions are busy: there is always an idle one to evict.
            mine = [f"churn{t}" for t in range(w, threads, max_sessions)]
            for visit in range(1, rounds + 1):
                for thread in mine:
                    exchange = await ask_within(
                        client,
                        300,
                        thread,
                        "visit\n@chunks 1",
                        done_when=text_contains("of this session)"),
                    )
                    match = _TURN_NUMBER.search(exchange.text)
                    if match is None:
                        refused.append(exchange.text[:200])
                        continue
                    answered += 1
                    revisits += visit > 1
                    wrong_turn += int(match.group(1)) != visit

        async with trio.open_nursery() as nursery:
            for w in range(max_sessions):
                nursery.start_soon(worker, w)
        elapsed = wall() - started
        counters = (await get_status(broker.port))["counters"]
    total = threads * rounds
    resumed_ok = revisits - wrong_turn
    rate = resumed_ok / revisits if revisits else 0.0
    result.metrics.update(
        threads=threads,
        max_sessions=max_sessions,
        rounds=rounds,
        turns=total,
        seconds=round(elapsed, 1),
        answered=answered,
        not_answered=len(refused),
        examples_not_answered=refused[:3],
        revisits=revisits,
        revisits_with_history=resumed_ok,
        counters=counters,
    )
    result.check("turns answered", f"{total}", str(answered), answered == total)
    result.check(
        "resume rate",
        "100 %",
        f"{rate:.1%} ({resumed_ok}/{revisits})",
        rate == 1.0,
        "the agent's reply counts the turns of the restored session",
    )
    result.notes.append(
        f"{max_sessions} clients at once, each owning {threads // max_sessions} threads and "
        "visiting them in turn, so every turn evicts the least recently used session. A "
        "revisit is resumed when the agent's echo says 'turn N of this session' with N = visit."
    )
    return result


# -- 8. shutdown -----------------------------------------------------------------------------


@attrs.frozen
class Stop:
    """What one SIGTERM did: seconds until the broker exited and until every
    process that was below it was reaped."""

    live: int
    deaf: int
    processes: int
    broker_exit: float
    agents_reaped: float
    exit_code: int | None
    deaf_alive_after_1s: int | None

    @property
    def all_gone(self) -> float:
        return max(self.broker_exit, self.agents_reaped)


async def _sigterm(broker: BrokerProcess, live: int) -> Stop:
    deaf_pids = claimed_pids(broker.roles)
    pids = descendants(broker.pid)
    signalled = wall()
    broker.process.send_signal(signal.SIGTERM)
    deaf_alive_1s: int | None = None
    broker_exit: float | None = None
    agents_gone: float | None = None
    with trio.fail_after(60):
        while broker_exit is None or agents_gone is None:
            await trio.sleep(0.005)  # sampling /proc: nothing can notify us of a reap
            now = wall() - signalled
            if deaf_alive_1s is None and now >= 1.0:
                deaf_alive_1s = sum(proc_exists(p) for p in deaf_pids)
            if broker_exit is None and broker.process.returncode is not None:
                broker_exit = now
            if agents_gone is None and not any(proc_exists(p) for p in pids):
                agents_gone = now
    return Stop(
        live,
        len(deaf_pids),
        len(pids),
        broker_exit,
        agents_gone,
        broker.process.returncode,
        deaf_alive_1s,
    )


async def _stop_with_sessions(
    root: Path, sessions: int, deaf: int, grace: float, *, client_stays: bool
) -> Stop:
    """Start ``sessions`` sessions (``deaf`` of whose agents ignore SIGTERM and stdin
    EOF), then SIGTERM the broker with the client still connected or gone."""
    sections = broker_sections(
        root,
        pool={"max_sessions": sessions + 5},
        timeouts={"stop_grace_secs": grace, "initialize_secs": 300, "session_new_secs": 300},
    )
    for i in range(deaf):
        write_role(root / "roles", f"deaf-{i}", ["--ignore-sigterm", "--ignore-stdin-eof"])
    async with run_broker(root, sections, label=root.name) as broker:
        async with open_chat(broker.url) as client:
            async with trio.open_nursery() as nursery:
                for i in range(sessions):
                    prompt, reply, _ = short_turn(f"s{i}")
                    nursery.start_soon(
                        functools.partial(
                            ask_within, client, 600, f"sd{i}", prompt, done_when=text_is(reply)
                        )
                    )
            live = (await get_status(broker.port))["pool"]["active"]
            if client_stays:
                return await _sigterm(broker, live)
        return await _sigterm(broker, live)


async def shutdown(ctx: Context) -> Result:
    """SIGTERM with 100 live sessions, 10 of whose agents ignore SIGTERM (and stdin
    EOF), the client still connected; again with the client gone first, for contrast."""
    result = Result("shutdown", SEPARATE)
    sessions, deaf = ctx.size(100, 8), ctx.size(10, 2)
    grace = 2.0
    stop = await _stop_with_sessions(
        ctx.fresh("shutdown"), sessions, deaf, grace, client_stays=True
    )
    alone = await _stop_with_sessions(
        ctx.fresh("shutdown-no-client"), sessions, deaf, grace, client_stays=False
    )
    limit = grace + 1.0
    for name, run in (("client_connected", stop), ("client_gone_first", alone)):
        result.metrics[name] = {
            "live_sessions": run.live,
            "deaf_agents": run.deaf,
            "processes": run.processes,
            "broker_exit_secs": round(run.broker_exit, 3),
            "agents_reaped_secs": round(run.agents_reaped, 3),
            "all_gone_secs": round(run.all_gone, 3),
            "exit_code": run.exit_code,
            "deaf_agents_alive_after_1s": run.deaf_alive_after_1s,
        }
    result.metrics["stop_grace_secs"] = grace
    result.check(
        "every process gone after SIGTERM",
        f"<= {limit:g} s",
        f"{stop.all_gone:.2f} s (agents reaped {stop.agents_reaped:.2f} s, broker exit "
        f"{stop.broker_exit:.2f} s, code {stop.exit_code})",
        stop.all_gone <= limit and stop.exit_code == 0,
        "the client stays connected, as a gateway would",
    )
    result.check(
        "the same with the client gone first",
        "(contrast)",
        f"{alone.all_gone:.2f} s (broker exit {alone.broker_exit:.2f} s, code {alone.exit_code})",
        None,
    )
    result.check(
        "live sessions / deaf agents",
        f"{sessions} / {deaf}",
        f"{stop.live} / {stop.deaf}",
        stop.live == sessions and stop.deaf == deaf,
    )
    result.notes.append(
        "The deaf agents ignore SIGTERM and stdin EOF, so only the SIGKILL after the stop grace "
        f"ends them; 'gone' means no /proc entry (reaped) for any of the {stop.processes} "
        "processes that were below the broker."
    )
    return result


__all__ = ["churn", "fmt_ms", "relay", "scale", "shutdown"]
