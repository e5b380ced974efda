"""A tiny MCP server over stdio, owned by the interop tests: one tool, ``shout``.

MCP's stdio transport: one JSON-RPC 2.0 message per line on stdin and stdout.
It answers ``initialize`` (echoing the client's protocol version, with the
``tools`` capability), ``ping``, ``tools/list`` and ``tools/call``; other
requests get -32601; notifications are read and not answered. Every message
received is appended to the file named by ``--record`` (one JSON object a line),
so a test sees what the agent asked.

Usage: python tiny_mcp.py --record PATH
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SERVER_INFO = {"name": "tiny", "version": "1.0.0"}
TOOL = {
    "name": "shout",
    "description": "Repeat the given words in capitals.",
    "inputSchema": {
        "type": "object",
        "properties": {"words": {"type": "string", "description": "What to shout."}},
        "required": ["words"],
    },
}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The result or error for one request."""
    method, params = request.get("method"), request.get("params") or {}
    if method == "initialize":
        return {
            "result": {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": SERVER_INFO,
            }
        }
    if method == "ping":
        return {"result": {}}
    if method == "tools/list":
        return {"result": {"tools": [TOOL]}}
    if method == "tools/call" and params.get("name") == TOOL["name"]:
        words = str((params.get("arguments") or {}).get("words", ""))
        return {"result": {"content": [{"type": "text", "text": words.upper()}], "isError": False}}
    return {"error": {"code": -32601, "message": f"method not found: {method}"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    args = parser.parse_args()
    with open(args.record, "a", encoding="utf-8") as record:
        for line in sys.stdin:
            if not line.strip():
                continue
            message = json.loads(line)
            record.write(json.dumps(message) + "\n")
            record.flush()
            if "id" in message and "method" in message:
                reply = {"jsonrpc": "2.0", "id": message["id"], **answer(message)}
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
