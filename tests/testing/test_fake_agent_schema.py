"""Everything the fake agent sends must be valid ACP by the official schema models.

Except ``@usage``: its ``used: null`` breaks the schema on purpose, as real agents do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from acp import schema
from pydantic import BaseModel

from tests.testing.agent_process import open_session

RESULT_MODELS: dict[str, type[BaseModel]] = {
    "initialize": schema.InitializeResponse,
    "session/new": schema.NewSessionResponse,
    "session/load": schema.LoadSessionResponse,
    "session/resume": schema.ResumeSessionResponse,
    "session/prompt": schema.PromptResponse,
    "session/set_config_option": schema.SetSessionConfigOptionResponse,
    "session/set_mode": schema.SetSessionModeResponse,
    "session/close": schema.CloseSessionResponse,
}


def _round_trip(model: type[BaseModel], data: Any) -> Any:
    """Validate ``data``; the schema models salvage bad fields, so compare the round trip too."""
    parsed = model.model_validate(data)
    return parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)


async def test_every_message_of_a_busy_session_validates_against_the_acp_schema(
    tmp_path: Path,
) -> None:
    script = (
        "check everything\n@plan Read; Write\n@thought hmm\n@tool Build 0 execute\n"
        "@tool-fail Deploy 0\n@permission\n@grandchild\n@longline 300\n@flood 3"
    )
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            methods = {1: "initialize", 2: "session/new"}
            request = await agent.prompt(sid, script)
            methods[request] = "session/prompt"
            ask = await agent.wait_for(
                lambda m: isinstance(m, dict) and m.get("method") == "session/request_permission"
            )
            assert isinstance(ask, dict)
            assert _round_trip(schema.RequestPermissionRequest, ask["params"]) == ask["params"]
            await agent.send(
                {
                    "jsonrpc": "2.0",
                    "id": ask["id"],
                    "result": {"outcome": {"outcome": "selected", "optionId": "allow_once"}},
                }
            )
            await agent.response(request)
            followups: list[tuple[str, dict[str, Any]]] = [
                (
                    "session/set_config_option",
                    {"sessionId": sid, "configId": "model", "value": "smart"},
                ),
                ("session/set_mode", {"sessionId": sid, "modeId": "code"}),
                ("session/load", {"sessionId": sid, "cwd": "/", "mcpServers": []}),
                ("session/resume", {"sessionId": sid, "cwd": "/", "mcpServers": []}),
                ("session/close", {"sessionId": sid}),
            ]
            for method, params in followups:  # one at a time: they run concurrently otherwise
                request_id = await agent.start_request(method, params)
                methods[request_id] = method
                assert "result" in await agent.response(request_id)
    notifications = 0
    for message in agent.messages:
        assert isinstance(message, dict)
        if message.get("method") == "session/update":
            notifications += 1
            params = message["params"]
            assert _round_trip(schema.SessionNotification, params) == params
        elif "result" in message:
            result = message["result"]
            assert _round_trip(RESULT_MODELS[methods[message["id"]]], result) == result
    assert notifications > 10
