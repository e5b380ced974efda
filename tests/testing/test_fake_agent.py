"""The fake agent as a real subprocess, driven with raw JSON lines (no broker ACP client)."""

from __future__ import annotations

import os
import re
import signal
import uuid
from pathlib import Path

import pytest
import trio

from tests.testing.agent_process import AgentProcess, is_text_chunk, open_agent, open_session


async def test_initialize_new_and_plain_prompt_get_a_friendly_echo(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--name", "demo") as agent:
            init = await agent.request("initialize", {"protocolVersion": 1})
            assert init["protocolVersion"] == 1
            caps = init["agentCapabilities"]
            assert caps["loadSession"] is True and caps["promptCapabilities"]["image"] is True
            assert caps["sessionCapabilities"]["resume"] == {}
            assert init["agentInfo"]["name"] == "demo"
            new = await agent.request("session/new", {"cwd": str(tmp_path), "mcpServers": []})
            uuid.UUID(new["sessionId"])
            model = next(o for o in new["configOptions"] if o["id"] == "model")
            assert {v["value"] for v in model["options"]} == {"fast", "smart"}
            assert new["modes"]["currentModeId"] == "ask"
            answer = await agent.response(await agent.prompt(new["sessionId"], "hello there"))
            assert answer["result"] == {"stopReason": "end_turn"}
            assert "“hello there”" in agent.text()
            assert len(agent.updates("agent_message_chunk")) == 3
            tool = agent.updates("tool_call")[0]
            assert tool["title"] == "Reading the conversation"
            statuses = [u["status"] for u in agent.updates("tool_call_update")]
            assert statuses == ["in_progress", "completed"]


async def test_chunks_arrive_in_order_before_the_response(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt(sid, "@reply abcdefghij\n@chunks 5\n@chunk-delay 0.01")
            await agent.response(request)
            before = agent.index_of_response(request)
            texts = [u["content"]["text"] for u in agent.updates("agent_message_chunk", before)]
            assert texts == ["ab", "cd", "ef", "gh", "ij"]
            assert agent.text() == "abcdefghij"


async def test_cancel_ends_a_hanging_prompt_with_stop_reason_cancelled(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt_until_text(sid, "@say working\n@hang", "working")
            await agent.notify("session/cancel", {"sessionId": sid})
            with trio.fail_after(1):
                answer = await agent.response(request)
            assert answer["result"] == {"stopReason": "cancelled"}


async def test_hang_hard_ignores_cancel_but_keeps_serving(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt_until_text(sid, "@say working\n@hang-hard", "working")
            await agent.notify("session/cancel", {"sessionId": sid})
            # Handled in order: this answer proves the cancel was read (and ignored).
            await agent.request(
                "session/set_config_option",
                {"sessionId": sid, "configId": "model", "value": "smart"},
            )
            await agent.wait_for_stderr("session/cancel ignored (@hang-hard)")
            assert all(m.get("id") != request for m in agent.messages if isinstance(m, dict))


async def test_crash_exits_with_the_code_after_writing_stderr(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            await agent.prompt(sid, "@say partial output\n@crash 3")
            assert await agent.process.wait() == 3
            await agent.wait_for_stderr("fatal: simulated crash")
            await agent.wait_for(is_text_chunk("partial output"))


async def test_late_chunks_arrive_after_the_response(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt_until_text(
                sid, "@reply abcdef\n@chunks 3\n@late 100", "ef"
            )
            before = agent.index_of_response(request)
            assert agent.text(before) == "abcd"
            assert agent.text() == "abcdef"


async def test_flood_delivers_exactly_n_chunks_in_order(tmp_path: Path) -> None:
    count = 20_000
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt(sid, f"@flood {count}\n@empty")
            await agent.response(request)
            texts = [u["content"]["text"] for u in agent.updates("agent_message_chunk")]
            assert texts == [f"{i} " for i in range(count)]


async def _answer_permission(agent: AgentProcess, outcome: dict[str, str]) -> dict[str, object]:
    ask = await agent.wait_for(
        lambda m: isinstance(m, dict) and m.get("method") == "session/request_permission"
    )
    assert isinstance(ask, dict)
    await agent.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"outcome": outcome}})
    return ask


async def test_permission_request_round_trip_obeys_the_selected_option(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt(sid, "@permission execute Run rm -rf build")
            ask = await _answer_permission(
                agent, {"outcome": "selected", "optionId": "reject_once"}
            )
            params = ask["params"]
            assert isinstance(params, dict)
            assert params["toolCall"]["kind"] == "execute"
            assert {o["kind"] for o in params["options"]} >= {"allow_once", "reject_once"}
            assert (await agent.response(request))["result"] == {"stopReason": "end_turn"}
            assert "selected reject_once" in agent.text()
            assert agent.updates("tool_call_update")[-1]["status"] == "failed"


async def test_cancel_abandons_a_pending_permission_request(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt(sid, "@permission")
            ask = await agent.wait_for(
                lambda m: isinstance(m, dict) and m.get("method") == "session/request_permission"
            )
            await agent.notify("session/cancel", {"sessionId": sid})
            assert (await agent.response(request))["result"] == {"stopReason": "cancelled"}
            assert isinstance(ask, dict)
            await agent.send(
                {"jsonrpc": "2.0", "id": ask["id"], "result": {"outcome": {"outcome": "cancelled"}}}
            )
            await agent.wait_for_stderr("abandoned request")
            await agent.request("authenticate", {"methodId": "none"})


async def test_load_after_restart_replays_the_history(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path) as first:
            sid = await first.new_session()
            await first.response(await first.prompt(sid, "remember me\n@reply I will\n@chunks 1"))
            await first.close_stdin()
            assert await first.process.wait() == 0
        async with open_agent(tmp_path) as second:
            await second.request("initialize", {"protocolVersion": 1})
            request = await second.start_request(
                "session/load", {"sessionId": sid, "cwd": str(tmp_path), "mcpServers": []}
            )
            result = (await second.response(request))["result"]
            assert result["modes"]["currentModeId"] == "ask"
            before = second.index_of_response(request)
            assert [u["content"]["text"] for u in second.updates("user_message_chunk", before)] == [
                "remember me"
            ]
            assert second.text(before) == "I will"


async def test_no_load_session_advertises_false_and_rejects_load(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--no-load-session", "--no-images") as agent:
            init = await agent.request("initialize", {"protocolVersion": 1})
            assert init["agentCapabilities"]["loadSession"] is False
            assert init["agentCapabilities"]["promptCapabilities"]["image"] is False
            request = await agent.start_request(
                "session/load", {"sessionId": "x", "cwd": "/", "mcpServers": []}
            )
            assert (await agent.response(request))["error"]["code"] == -32601


async def test_malformed_line_is_emitted_and_the_turn_continues(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt(sid, "@malformed\n@reply still here")
            assert (await agent.response(request))["result"] == {"stopReason": "end_turn"}
            assert any(isinstance(m, bytes) for m in agent.messages)
            assert agent.text() == "still here"


async def test_longline_is_one_valid_line_of_exactly_that_size(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            await agent.response(await agent.prompt(sid, "@longline 100000\n@empty"))
            (chunk,) = agent.updates("agent_message_chunk")
            index = next(
                i
                for i, m in enumerate(agent.messages)
                if isinstance(m, dict) and m.get("params", {}).get("update") is chunk
            )
            assert agent.line_sizes[index] == 100_000


async def test_grandchild_pid_is_a_real_process(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            await agent.response(await agent.prompt(sid, "@grandchild\n@reply ok"))
            found = re.search(r"pid (\d+)", agent.text())
            assert found is not None
            pid = int(found.group(1))
            assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0")
            assert os.getpgid(pid) == agent.pid  # in the agent's group: killed with it on exit


async def test_ignore_sigterm_survives_sigterm_and_still_answers(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--ignore-sigterm") as agent:
            await agent.wait_for_stderr("ignoring SIGTERM")
            agent.process.send_signal(signal.SIGTERM)
            await agent.request("initialize", {"protocolVersion": 1})
            assert agent.process.poll() is None
            await agent.close_stdin()
            assert await agent.process.wait() == 0


async def test_ignore_stdin_eof_keeps_running_after_stdin_closes(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--ignore-stdin-eof") as agent:
            await agent.close_stdin()
            await agent.wait_for_stderr("staying alive")
            assert agent.process.poll() is None
            agent.process.send_signal(signal.SIGTERM)
            assert await agent.process.wait() == -signal.SIGTERM


async def test_stdin_eof_cancels_the_running_turn_and_exits(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt_until_text(sid, "@say busy\n@hang", "busy")
            await agent.close_stdin()
            assert await agent.process.wait() == 0
            assert (await agent.response(request))["result"] == {"stopReason": "cancelled"}


async def test_crash_on_start_exits_before_answering(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--crash-on-start", "7") as agent:
            assert await agent.process.wait() == 7
            await agent.wait_for_stderr("fatal: simulated crash on start")


async def test_unknown_request_gets_method_not_found_and_notifications_are_ignored(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path) as agent:
            await agent.notify("_vendor/whatever", {})
            await agent.notify("some/notification", {})
            request = await agent.start_request("terminal/create", {})
            assert (await agent.response(request))["error"]["code"] == -32601
            await agent.request("initialize", {"protocolVersion": 1})


async def test_bad_directive_and_scripted_error_are_json_rpc_errors(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            bad = await agent.response(await agent.prompt(sid, "@chunks many"))
            assert bad["error"]["code"] == -32602 and "@chunks" in bad["error"]["message"]
            scripted = await agent.response(await agent.prompt(sid, "@error -32603 model down"))
            assert scripted["error"] == {"code": -32603, "message": "model down"}


async def test_config_option_and_mode_changes_are_returned_and_persisted(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            result = await agent.request(
                "session/set_config_option",
                {"sessionId": sid, "configId": "model", "value": "smart"},
            )
            assert [o["currentValue"] for o in result["configOptions"]] == ["smart", "ask"]
            await agent.request("session/set_mode", {"sessionId": sid, "modeId": "code"})
            assert agent.updates("current_mode_update")[0]["currentModeId"] == "code"
            resumed = await agent.request(
                "session/resume", {"sessionId": sid, "cwd": "/", "mcpServers": []}
            )
            assert [o["currentValue"] for o in resumed["configOptions"]] == ["smart", "code"]
            bad = await agent.response(
                await agent.start_request("session/set_mode", {"sessionId": sid, "modeId": "yolo"})
            )
            assert bad["error"]["code"] == -32602


@pytest.mark.parametrize(
    ("directive", "kind"),
    [("@thought hmm", "agent_thought_chunk"), ("@usage", "usage_update"), ("@plan a; b", "plan")],
)
async def test_thought_usage_and_plan_directives_send_their_update(
    tmp_path: Path, directive: str, kind: str
) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            await agent.response(await agent.prompt(sid, f"{directive}\n@empty"))
            (update,) = agent.updates(kind)
            if kind == "usage_update":
                assert update["used"] is None
            if kind == "plan":
                assert [e["content"] for e in update["entries"]] == ["a", "b"]


async def test_stdin_eof_ends_even_a_hang_hard_turn_after_the_grace(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            await agent.prompt_until_text(sid, "@say stuck\n@hang-hard", "stuck")
            await agent.close_stdin()
            assert await agent.process.wait() == 0


async def test_session_close_cancels_the_turn_and_the_session_stays_loadable(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            request = await agent.prompt_until_text(sid, "@say stuck\n@hang-hard", "stuck")
            await agent.request("session/close", {"sessionId": sid})
            assert (await agent.response(request))["result"] == {"stopReason": "cancelled"}
            await agent.request("session/load", {"sessionId": sid, "cwd": "/", "mcpServers": []})
            assert [u["content"]["text"] for u in agent.updates("user_message_chunk")] == [""]


async def test_a_slow_session_new_does_not_hold_up_other_requests(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--new-delay", "30") as agent:
            slow = await agent.start_request("session/new", {"cwd": "/", "mcpServers": []})
            await agent.request("initialize", {"protocolVersion": 1})
            assert all(m.get("id") != slow for m in agent.messages if isinstance(m, dict))


async def test_a_second_prompt_waits_for_the_running_one(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            first = await agent.prompt(sid, "@delay 0.2\n@reply first\n@chunks 1")
            second = await agent.prompt(sid, "@reply second\n@chunks 1")
            await agent.response(second)
            assert agent.index_of_response(first) < agent.index_of_response(second)
            assert agent.text() == "firstsecond"


async def test_ext_stop_stderr_and_failing_tool_directives(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            text = "@ext indexing\n@stderr 3\n@tool-fail Deploy 0 execute\n@stop max_tokens\n@empty"
            answer = await agent.response(await agent.prompt(sid, text))
            assert answer["result"] == {"stopReason": "max_tokens"}
            ext = await agent.wait_for(
                lambda m: isinstance(m, dict) and m.get("method") == "_fake/status"
            )
            assert isinstance(ext, dict) and ext["params"] == {
                "sessionId": sid,
                "status": "indexing",
            }
            await agent.wait_for_stderr("noise 3/3")
            assert agent.updates("tool_call_update")[-1]["status"] == "failed"
            assert agent.text() == ""


async def test_stderr_noise_flag_writes_periodic_lines(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_agent(tmp_path, "--stderr-noise", "0.05") as agent:
            await agent.wait_for_stderr("noise 3:")


async def test_cancel_right_after_prompts_cancels_the_running_and_the_queued_one(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        async with open_session(tmp_path) as (agent, sid):
            running = await agent.prompt(sid, "@hang")
            queued = await agent.prompt(sid, "@reply never sent")
            await agent.notify("session/cancel", {"sessionId": sid})
            for request in (running, queued):
                assert (await agent.response(request))["result"] == {"stopReason": "cancelled"}
            assert agent.text() == ""
            after = await agent.response(await agent.prompt(sid, "@reply next\n@chunks 1"))
            assert after["result"] == {"stopReason": "end_turn"}
            assert agent.text() == "next"
