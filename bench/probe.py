"""Time ``GET /status`` from a process of its own, so the measurement does not
include the delays of the benchmark's busy event loop.

    python -m bench.probe PORT SECS [INTERVAL]

Requests ``/status`` on ``127.0.0.1:PORT`` (a new connection each time, as
``curl`` would) every INTERVAL seconds (default 0.02) for SECS seconds, then
prints a JSON list of the latencies in seconds. A request that fails or does
not answer 200 within 10 s is printed as ``null``.
"""

from __future__ import annotations

import http.client
import json
import sys
import time


def probe(port: int, secs: float, interval: float) -> list[float | None]:
    latencies: list[float | None] = []
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/status")
            response = connection.getresponse()
            response.read()
            connection.close()
            ok = response.status == 200
        except OSError:
            ok = False
        latencies.append(time.perf_counter() - started if ok else None)
        time.sleep(interval)
    return latencies


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    interval = float(argv[2]) if len(argv) == 3 else 0.02
    print(json.dumps(probe(int(argv[0]), float(argv[1]), interval)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
