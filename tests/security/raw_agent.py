"""A deliberately hostile ACP agent, stdlib only, for the security tests.

It answers ``initialize`` and ``session/new`` like any agent and then does
what the prompt text asks:

* ``fs [[METHOD, PARAMS], ...]`` (JSON after the word ``fs``): sends each
  request to the client in turn (``sessionId`` is filled in), waits for its
  answer, and replies with one chunk holding the JSON list of the answers
  (each ``{"result": ...}`` or ``{"error": ...}``);
* ``fs-parallel [[METHOD, PARAMS], ...]``: the same, but sends every request
  at once and then collects the answers (in request order);
* ``endless-line BYTES``: starts a ``session/update`` line and writes ``x``
  without ever ending the line, up to ``BYTES`` bytes (the client is expected
  to give up long before), then waits for stdin to close;
* ``close-stdout``: closes its stdout and lives on until stdin closes;
* ``surrogate SECS``: after ``SECS`` seconds, replies with a chunk holding a
  lone UTF-16 surrogate (the JSON escape ``\\ud800``);
* ``daemon``: daemonises a grandchild (fork, ``setsid()``, fork) that sleeps,
  and replies ``daemon: PID``;
* ``bad-id``: sends a response with the id ``"²"`` (a digit ``int()``
  refuses), then replies ``pong`` as usual;
* anything else: replies ``pong: TEXT``.

Run as ``python raw_agent.py [--surrogate-session]``; it exits when stdin
closes. With ``--surrogate-session`` its session id holds a lone surrogate.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

OUT = sys.stdout.buffer
CHUNK = 1 << 20
_next_id = 0


def send(message: dict[str, Any]) -> None:
    OUT.write(json.dumps(message).encode() + b"\n")
    OUT.flush()


def read() -> dict[str, Any] | None:
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    message: dict[str, Any] = json.loads(line)
    return message


def chunk(session_id: str, text: str) -> None:
    update = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    send(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {"sessionId": session_id, "update": update},
        }
    )


def ask_client(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Send one request and return its answer (other lines meanwhile are dropped)."""
    global _next_id
    _next_id += 1
    send({"jsonrpc": "2.0", "id": _next_id, "method": method, "params": params})
    while (message := read()) is not None:
        if message.get("id") == _next_id and "method" not in message:
            return {k: message[k] for k in ("result", "error") if k in message}
    sys.exit(0)


def ask_client_at_once(requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Send every request, then collect their answers in request order."""
    global _next_id
    first = _next_id + 1
    for method, params in requests:
        _next_id += 1
        send({"jsonrpc": "2.0", "id": _next_id, "method": method, "params": params})
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < len(requests) and (message := read()) is not None:
        if "method" not in message and isinstance(message.get("id"), int):
            answers[message["id"]] = {k: message[k] for k in ("result", "error") if k in message}
    return [answers[n] for n in range(first, _next_id + 1)]


def daemonise() -> int:
    """Fork a grandchild in a session of its own (it sleeps); return its pid."""
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, b"%d" % os.getpid())
            for fd in (0, 1, 2):
                os.close(fd)
            time.sleep(600)
        os._exit(0)
    os.wait()
    return int(os.read(r, 64))


def endless_line(session_id: str, size: int) -> None:
    head = json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "session/update",
            "params": {
                "sessionId": session_id,
                "update": {
                    "sessionUpdate": "agent_message_chunk",
                    "content": {"type": "text", "text": ""},
                },
            },
        }
    )
    OUT.write(head[: head.rindex('""') + 1].encode())
    block = b"x" * CHUNK
    written = 0
    try:
        while written < size:
            OUT.write(block)
            written += CHUNK
        OUT.flush()
    except BrokenPipeError:
        pass
    while read() is not None:
        pass
    sys.exit(0)


def prompt(request_id: Any, params: dict[str, Any]) -> None:
    session_id = params["sessionId"]
    text = "".join(b.get("text", "") for b in params["prompt"] if b.get("type") == "text")
    word, _, rest = text.partition(" ")
    if word == "fs":
        answers = [
            ask_client(method, {"sessionId": session_id, **args})
            for method, args in json.loads(rest)
        ]
        chunk(session_id, json.dumps(answers))
    elif word == "fs-parallel":
        requests = [
            (method, {"sessionId": session_id, **args}) for method, args in json.loads(rest)
        ]
        chunk(session_id, json.dumps(ask_client_at_once(requests)))
    elif word == "endless-line":
        endless_line(session_id, int(rest))
    elif word == "surrogate":
        time.sleep(float(rest))
        chunk(session_id, "before \ud800 after")
    elif word == "daemon":
        chunk(session_id, f"daemon: {daemonise()}")
    elif word == "bad-id":
        send({"jsonrpc": "2.0", "id": "\u00b2", "result": {}})
        chunk(session_id, "pong: after a bad id")
    elif word == "close-stdout":
        os.close(1)
        while read() is not None:
            pass
        sys.exit(0)
    else:
        chunk(session_id, f"pong: {text}")
    send({"jsonrpc": "2.0", "id": request_id, "result": {"stopReason": "end_turn"}})


def main() -> None:
    while (message := read()) is not None:
        method, request_id = message.get("method"), message.get("id")
        if method == "initialize":
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "result": {
                        "protocolVersion": 1,
                        "authMethods": [],
                        "agentCapabilities": {"loadSession": False, "promptCapabilities": {}},
                    },
                }
            )
        elif method == "session/new":
            session_id = "raw-\ud800" if "--surrogate-session" in sys.argv else "raw-1"
            send({"jsonrpc": "2.0", "id": request_id, "result": {"sessionId": session_id}})
        elif method == "session/prompt":
            prompt(request_id, message["params"])
        elif request_id is not None and method is not None:
            send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "error": {"code": -32601, "message": f"no {method}"},
                }
            )


if __name__ == "__main__":
    main()
