"""The directive grammar of the fake agent, tested as the pure parser it is."""

from __future__ import annotations

import pytest

from broker.testing import fake_agent_script as fs


def test_plain_text_is_the_demo_turn_with_a_short_tool_call() -> None:
    script = fs.parse_script("hello\nworld")
    assert script.is_demo and script.message == "hello\nworld"
    assert script.actions == (fs.Tool("Reading the conversation", 0.3, "read"),)
    assert script.chunk_delay > 0


def test_actions_keep_their_order_and_settings_shape_the_reply() -> None:
    script = fs.parse_script(
        "fix the build\n@tool Run tests 1.5 execute\n@say partial\n@chunks 4\n"
        "@reply done\n@late 250 2\n@crash 9"
    )
    assert script.message == "fix the build" and not script.is_demo
    assert script.actions == (
        fs.Tool("Run tests", 1.5, "execute"),
        fs.Say("partial"),
        fs.Crash(9),
    )
    assert (script.chunks, script.reply, script.late_ms, script.late_chunks) == (4, "done", 250, 2)


@pytest.mark.parametrize(
    ("line", "tool"),
    [
        ("@tool Build", fs.Tool("Build", 0.5, "other")),
        ("@tool Build 3", fs.Tool("Build", 3.0, "other")),
        ("@tool Build the thing read", fs.Tool("Build the thing", 0.5, "read")),
        ("@tool-fail Deploy 0 execute", fs.Tool("Deploy", 0.0, "execute", fail=True)),
    ],
)
def test_tool_arguments_are_read_from_the_right(line: str, tool: fs.Tool) -> None:
    assert fs.parse_script(line).actions == (tool,)


def test_mentions_stay_message_text_and_double_at_escapes() -> None:
    script = fs.parse_script("@alice can you look?\n@@reply literally\n@empty")
    assert script.message == "@alice can you look?\n@reply literally"
    assert script.empty and script.actions == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("@chunks 0", "@chunks"),
        ("@delay soon", "@delay"),
        ("@delay -1", "@delay"),
        ("@stop maybe", "@stop"),
        ("@plan ;;", "@plan"),
        ("ok\n@flood", "line 2"),
    ],
)
def test_bad_arguments_raise_a_script_error_naming_the_line(text: str, needle: str) -> None:
    with pytest.raises(fs.ScriptError, match=needle):
        fs.parse_script(text)


def test_error_directive_parses_negative_codes_and_message() -> None:
    assert fs.parse_script("@error -32000 auth required").error == fs.RpcFailure(
        -32000, "auth required"
    )


def test_several_permissions_at_once_and_unusable_options() -> None:
    assert fs.parse_script("@permissions 3 execute job").actions == (
        fs.Permission("execute", "job", count=3),
    )
    assert fs.parse_script("@permission-bad none").actions == (
        fs.Permission("edit", "edit demo.txt", options="none"),
    )
    assert fs.parse_script("@permission-bad duplicate fetch url").actions == (
        fs.Permission("fetch", "url", options="duplicate"),
    )
    for bad in ("@permissions", "@permissions 0", "@permission-bad odd", "@permission-bad"):
        with pytest.raises(fs.ScriptError):
            fs.parse_script(bad)


def test_permission_defaults_and_explicit_kind() -> None:
    assert fs.parse_script("@permission").actions == (fs.Permission("edit", "edit demo.txt"),)
    assert fs.parse_script("@permission execute make").actions == (
        fs.Permission("execute", "make"),
    )


@pytest.mark.parametrize(("text", "parts"), [("abcdefghij", 3), ("ab", 5), ("x", 1), ("", 3)])
def test_split_text_keeps_all_text_in_order(text: str, parts: int) -> None:
    pieces = fs.split_text(text, parts)
    assert "".join(pieces) == text
    assert len(pieces) == min(parts, len(text))
    assert all(pieces)


def test_split_text_cuts_after_spaces_when_it_can() -> None:
    assert fs.split_text("one two three four five six", 3) == [
        "one two ",
        "three four ",
        "five six",
    ]
