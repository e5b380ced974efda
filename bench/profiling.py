"""The benchmark's profiling seam (``BENCH_PROFILE=DIR``) and a reader for its output.

``python -m bench.profiling OUT.prof [cpu|wall] -- ARGS...`` runs ``python -m broker ARGS``
under cProfile and writes OUT.prof when the broker exits (it exits normally on
SIGTERM). With ``cpu`` (the default) the profiler's clock is the process's CPU
time, so a function is charged for the CPU it used, not for the time the
process sat descheduled in a system call; ``wall`` charges elapsed time.
Profiling inflates every figure several times; read the shares, not the
absolute times.

``python -m bench.profiling --layers OUT.prof TURNS`` prints how the profiled time
splits over the broker's layers (cumulative time of each layer's entry point,
and per turn).
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

#: (layer, a "path:function" fragment of its entry point), in the order a turn crosses them.
LAYERS = (
    ("trio run loop: everything below, plus scheduling", "trio/_core/_run.py:unrolled_run"),
    ("WebSocket frames in (Link.read_frames)", "frontends/link.py:read_frames"),
    ("  event parsing (wire.parse_frame)", "frontends/wire.py:parse_frame"),
    ("router (Router._handle, incl. delivery)", "chat/router.py:_handle"),
    ("  delivery (deliver_turn)", "chat/delivery.py:deliver_turn"),
    ("  WebSocket frames out (Link.send)", "frontends/link.py:send"),
    ("session turn (Session._run_turn)", "broker/sessions/session.py:_run_turn"),
    ("ACP prompt request (AcpClient.prompt)", "acp/client.py:prompt"),
    ("  write to the agent (Child.send)", "supervisor/process.py:send"),
    ("agent stdout (JsonRpcPeer.serve)", "acp/jsonrpc.py:serve"),
    ("  one line (JsonRpcPeer._dispatch_line)", "acp/jsonrpc.py:_dispatch_line"),
)


def layers(path: str, turns: int) -> str:
    """The profiled time of each of :data:`LAYERS`, in total and per turn."""
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    out = [f"{'layer':52s} {'total s':>8s} {'ms/turn':>8s}"]
    for name, fragment in LAYERS:
        cumulative = max(
            (value[3] for (file, _, func), value in stats.items() if fragment in f"{file}:{func}"),
            default=0.0,
        )
        out.append(f"{name:52s} {cumulative:8.3f} {cumulative / turns * 1000:8.3f}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--layers"] and len(argv) == 3:
        print(layers(argv[1], int(argv[2])))
        return 0
    if "--" not in argv or argv.index("--") not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    out, clock = argv[0], (argv[1] if split == 2 else "cpu")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    from broker.ops.cli import main as broker_main

    profile = cProfile.Profile(timer)
    profile.enable()
    try:
        return broker_main(argv[split + 1 :])
    finally:
        profile.disable()
        profile.dump_stats(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
