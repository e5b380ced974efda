"""Lenient parsing of what real agents send, and the permission choice."""

from __future__ import annotations

import pytest

from broker.acp.policy import PermissionPolicy
from broker.acp.schema import (
    AgentMessageChunk,
    ConfigOptionUpdate,
    ImageContent,
    InitializeResult,
    PermissionOption,
    PlanEntry,
    PlanUpdate,
    ResourceLink,
    TextContent,
    ToolCallUpdate,
    UnknownContent,
    UnknownUpdate,
    UsageUpdate,
    content_to_wire,
    parse_update,
    structure,
)


def test_initialize_result_tolerates_nulls_and_extra_fields() -> None:
    result = structure(
        {
            "protocolVersion": 1,
            "agentCapabilities": {
                "loadSession": None,
                "promptCapabilities": {"image": True, "audio": None},
                "sessionCapabilities": {"resume": None, "close": {}, "list": {}, "fork": {}},
                "mcpCapabilities": {"http": True},
            },
            "authMethods": None,
            "agentInfo": {"name": "codex-acp", "version": "0.9", "title": None},
            "_meta": {"vendor": 1},
        },
        InitializeResult,
    )
    caps = result.agent_capabilities
    assert not caps.load_session and caps.prompt_capabilities.image
    assert not caps.session_capabilities.resume
    assert caps.session_capabilities.close and caps.session_capabilities.list
    assert result.auth_methods == []
    assert result.agent_info is not None and result.agent_info.name == "codex-acp"


def test_missing_capabilities_mean_unsupported() -> None:
    caps = structure({"protocolVersion": 1}, InitializeResult).agent_capabilities
    assert not (
        caps.load_session or caps.prompt_capabilities.image or caps.session_capabilities.resume
    )


def test_null_required_field_falls_back_to_default() -> None:
    assert parse_update(
        {"sessionUpdate": "usage_update", "used": None, "size": 200000}
    ) == UsageUpdate(used=None, size=200000)
    update = parse_update(
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "t",
            "title": None,
            "status": "completed",
            "content": None,
        }
    )
    assert update == ToolCallUpdate(tool_call_id="t", status="completed")


def test_unknown_update_kind_and_content_type_are_kept_raw() -> None:
    raw = {"sessionUpdate": "plan_update", "items": [1]}
    assert parse_update(raw) == UnknownUpdate("plan_update", raw)
    chunk = parse_update(
        {
            "sessionUpdate": "agent_message_chunk",
            "content": {"type": "audio", "data": "AA", "mimeType": "audio/wav"},
        }
    )
    assert isinstance(chunk, AgentMessageChunk)
    assert chunk.content == UnknownContent(
        "audio", {"type": "audio", "data": "AA", "mimeType": "audio/wav"}
    )


def test_known_kind_with_wrong_shape_is_kept_raw_with_the_reason() -> None:
    update = parse_update({"sessionUpdate": "plan", "entries": "not a list of entries"})
    assert isinstance(update, UnknownUpdate) and update.kind == "plan" and update.error
    assert isinstance(parse_update(None), UnknownUpdate)
    assert parse_update(
        {
            "sessionUpdate": "plan",
            "entries": [{"content": "step", "priority": "high", "status": "in_progress"}],
        }
    ) == PlanUpdate(entries=[PlanEntry(content="step", priority="high", status="in_progress")])


def test_grouped_config_option_values_are_flattened() -> None:
    update = parse_update(
        {
            "sessionUpdate": "config_option_update",
            "configOptions": [
                {
                    "id": "model",
                    "name": "Model",
                    "type": "select",
                    "currentValue": "b",
                    "options": [
                        {"group": "fast", "name": "Fast", "options": [{"value": "a", "name": "A"}]},
                        {"group": "deep", "name": "Deep", "options": [{"value": "b", "name": "B"}]},
                    ],
                },
                {"id": "think", "name": "Thinking", "type": "boolean", "currentValue": False},
            ],
        }
    )
    assert isinstance(update, ConfigOptionUpdate)
    model, think = update.config_options
    assert [(v.value, v.group) for v in model.options] == [("a", "fast"), ("b", "deep")]
    assert model.current_value == "b" and think.current_value is False


def test_content_blocks_serialise_camel_case_without_nulls() -> None:
    assert content_to_wire(TextContent("hi")) == {"type": "text", "text": "hi"}
    assert content_to_wire(ImageContent(data="QUJD", mime_type="image/png")) == {
        "type": "image",
        "data": "QUJD",
        "mimeType": "image/png",
    }
    assert content_to_wire(ResourceLink(uri="file:///w/a.py", name="a.py")) == {
        "type": "resource_link",
        "uri": "file:///w/a.py",
        "name": "a.py",
    }


OPTIONS = [
    PermissionOption("1", "Always", "allow_always"),
    PermissionOption("2", "Once", "allow_once"),
    PermissionOption("3", "No", "reject_once"),
    PermissionOption("4", "Never", "reject_always"),
]


@pytest.mark.parametrize(
    ("mode", "options", "expected"),
    [
        ("allow_always", OPTIONS, "1"),
        ("allow_once", OPTIONS, "2"),
        ("reject", OPTIONS, "3"),
        ("allow_once", [OPTIONS[0], OPTIONS[3]], "1"),  # no allow_once: the other allow kind
        ("reject", [OPTIONS[0], OPTIONS[3]], "4"),  # no reject_once: reject_always
        ("allow_once", [OPTIONS[2]], "3"),  # nothing to allow with: reject
        ("reject", [OPTIONS[0], OPTIONS[1]], None),  # never allow on reject: cancelled
        ("allow_always", [], None),
    ],
)
def test_permission_choice_falls_back_sensibly(
    mode: str, options: list[PermissionOption], expected: str | None
) -> None:
    assert PermissionPolicy(default=mode).choose(options, "edit") == expected


def test_permission_mode_per_tool_kind_overrides_default() -> None:
    policy = PermissionPolicy(default="reject", by_kind={"read": "allow_always"})
    assert policy.choose(OPTIONS, "read") == "1"
    assert policy.choose(OPTIONS, "execute") == "3"
    assert policy.choose(OPTIONS, None) == "3"


def test_invalid_permission_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_sometimes"):
        PermissionPolicy(by_kind={"edit": "allow_sometimes"})
