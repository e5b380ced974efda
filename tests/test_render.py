import pytest

from broker.chat.render import render, render_end
from broker.reply import (
    Outcome,
    PlanEntry,
    PlanUpdate,
    Queued,
    TextChunk,
    ThoughtChunk,
    ToolStatus,
    ToolUpdate,
    Transcript,
    TurnEnd,
    TurnStarted,
)
from broker.sentences import (
    agent_died_reason,
    busy_reason,
    duration_phrase,
    error_reason,
    pool_full_reason,
    start_failed_reason,
    timeout_reason,
)


def started(*events: object) -> Transcript:
    transcript = Transcript()
    transcript.apply(TurnStarted())
    for event in events:
        transcript.apply(event)  # type: ignore[arg-type]
    return transcript


def with_tools(
    count: int, *, failed: tuple[int, ...] = (), running: tuple[int, ...] = ()
) -> Transcript:
    transcript = started()
    for i in range(count):
        transcript.apply(ToolUpdate(f"t{i}", ToolStatus.RUNNING, title=f"Read file f{i}.py"))
        if i in failed:
            transcript.apply(ToolUpdate(f"t{i}", ToolStatus.FAILED))
        elif i not in running:
            transcript.apply(ToolUpdate(f"t{i}", ToolStatus.COMPLETED))
    return transcript


def test_streaming_before_start_shows_a_starting_indicator() -> None:
    assert render(Transcript(), final=False) == "⏳ Starting…"


def test_queued_turn_says_how_many_messages_are_ahead() -> None:
    transcript = Transcript()
    transcript.apply(Queued(2))
    assert render(transcript, final=False) == (
        "⏳ Queued behind 2 messages; it starts when they are done."
    )
    transcript.apply(Queued(1))
    assert render(transcript, final=False) == (
        "⏳ Queued behind 1 message; it starts when that one is done."
    )
    transcript.apply(TurnStarted())
    assert render(transcript, final=False) == "⚙️ Working…"


def test_thinking_indicator_while_only_thoughts_arrived() -> None:
    assert render(started(ThoughtChunk("let me see")), final=False) == "💭 Thinking…"


def test_text_replaces_the_indicator_and_is_shown_as_written() -> None:
    transcript = started(TextChunk("Hello "), TextChunk("**world**\n"))
    assert render(transcript, final=False) == "Hello **world**"
    assert render(transcript, final=True) == "Hello **world**"


def test_zero_tools_render_no_tool_lines() -> None:
    assert render(started(TextChunk("hi")), final=True) == "hi"


def test_one_running_tool_shows_above_the_indicator() -> None:
    transcript = started(ToolUpdate("t1", ToolStatus.RUNNING, title="Read file\nsrc/a.py"))
    assert render(transcript, final=False) == "🔧 Read file src/a.py … running\n\n⚙️ Working…"
    transcript.apply(ToolUpdate("t1", ToolStatus.COMPLETED))
    transcript.apply(TextChunk("Done."))
    assert render(transcript, final=False) == "✅ Read file src/a.py\n\nDone."


def test_pending_and_failed_tools_read_plainly() -> None:
    transcript = started(
        ToolUpdate("t1", ToolStatus.PENDING, title="Edit config"),
        ToolUpdate("t2", ToolStatus.RUNNING, title="Run tests"),
        ToolUpdate("t2", ToolStatus.FAILED),
        TextChunk("x"),
    )
    assert render(transcript, final=False) == "🔧 Edit config … waiting\n❌ Run tests failed\n\nx"
    assert render(transcript, final=True) == "⏹️ Edit config (unfinished)\n❌ Run tests failed\n\nx"


def test_thirty_tools_collapse_into_a_count_keeping_the_last_four() -> None:
    transcript = with_tools(30, failed=(5,))
    transcript.apply(TextChunk("ok"))
    assert render(transcript, final=True).split("\n") == (
        [
            "✅ 25 more tools done, ❌ 1 failed",
            "✅ Read file f26.py",
            "✅ Read file f27.py",
            "✅ Read file f28.py",
            "✅ Read file f29.py",
            "",
            "ok",
        ]
    )


def test_collapsed_list_keeps_an_older_running_tool_visible_while_streaming() -> None:
    transcript = with_tools(10, running=(1,))
    lines = render(transcript, final=False).split("\n")
    assert lines[:2] == ["✅ 5 more tools done", "🔧 Read file f1.py … running"]
    assert lines[2:6] == [f"✅ Read file f{i}.py" for i in range(6, 10)]


def test_long_tool_titles_are_shortened() -> None:
    transcript = started(ToolUpdate("t", ToolStatus.COMPLETED, title="x" * 200), TextChunk("y"))
    first = render(transcript, final=True).split("\n")[0]
    assert first == "✅ " + "x" * 79 + "…"


def test_plan_renders_as_checkbox_lines_with_progress() -> None:
    plan = PlanUpdate(
        (
            PlanEntry("Read the code", "completed"),
            PlanEntry("Fix the bug", "in_progress"),
            PlanEntry("Run tests"),
        )
    )
    assert render(started(plan, TextChunk("On it.")), final=False) == (
        "📋 Plan (1/3 done)\n☑ Read the code\n▶ Fix the bug\n☐ Run tests\n\nOn it."
    )


def test_context_reset_note_comes_first() -> None:
    transcript = Transcript()
    transcript.apply(TurnStarted(context_reset=True))
    transcript.apply(TextChunk("Hi"))
    assert render(transcript, final=True) == (
        "ℹ️ The earlier conversation of this thread could not be restored; "
        "the agent starts fresh.\n\nHi"
    )


def test_completed_turn_ends_with_its_text_only() -> None:
    transcript = started(TextChunk("The answer is 42."))
    end = TurnEnd(Outcome.COMPLETED, text="The answer is 42.", stop_reason="end_turn")
    assert render_end(end, transcript) == "The answer is 42."


def test_end_text_wins_over_streamed_text_when_late_chunks_arrived() -> None:
    transcript = started(TextChunk("The answer"))
    end = TurnEnd(Outcome.COMPLETED, text="The answer is 42.", stop_reason="end_turn")
    assert render_end(end, transcript) == "The answer is 42."


def test_empty_turn_says_what_it_did_instead_of_an_empty_message() -> None:
    transcript = with_tools(3, failed=(2,))
    end = TurnEnd(Outcome.COMPLETED, stop_reason="end_turn")
    assert render_end(end, transcript).endswith(
        "\n\nThe agent finished without writing any text (ran 3 tools, 1 failed; "
        "stop reason: end_turn)."
    )
    assert render_end(TurnEnd(Outcome.COMPLETED), Transcript()) == (
        "The agent finished without writing any text (ran no tools; stop reason: none given)."
    )


@pytest.mark.parametrize(
    ("stop_reason", "note"),
    [
        ("max_tokens", "✂️ The agent stopped early: its answer reached the output length limit."),
        (
            "max_turn_requests",
            "✂️ The agent stopped early: it reached its limit of steps for one turn.",
        ),
        ("refusal", "🚫 The agent declined to continue."),
    ],
)
def test_unusual_stop_reason_is_explained_below_the_text(stop_reason: str, note: str) -> None:
    end = TurnEnd(Outcome.COMPLETED, text="partial", stop_reason=stop_reason)
    assert render_end(end, started()) == f"partial\n\n{note}"


def test_timeout_keeps_partial_text_above_the_reason() -> None:
    end = TurnEnd(Outcome.TIMED_OUT, text="Half done", reason=timeout_reason(1800))
    assert render_end(end, started()) == (
        "Half done\n\n⏱️ Stopped after the 30-minute limit. "
        "The text above is what the agent wrote so far."
    )


def test_cancel_without_text_says_so() -> None:
    assert render_end(TurnEnd(Outcome.CANCELLED), started()) == "🛑 The turn was cancelled."
    end = TurnEnd(Outcome.CANCELLED, text="Started", reason="cancelled with /cancel")
    assert render_end(end, started()) == (
        "Started\n\n🛑 Cancelled with /cancel. The text above is what the agent wrote so far."
    )


def test_agent_death_shows_the_exit_and_its_last_log_lines_in_a_fence() -> None:
    detail = "\n".join(f"log {i}" for i in range(30)) + "\n"
    end = TurnEnd(Outcome.AGENT_DIED, reason=agent_died_reason("killed by SIGKILL"), detail=detail)
    expected_log = "\n".join(f"log {i}" for i in range(10, 30))
    assert render_end(end, started()) == (
        "💥 The agent process exited unexpectedly (killed by SIGKILL). "
        "Your next message starts it again.\n\n"
        f"Last lines it logged:\n```\n{expected_log}\n```"
    )


def test_detail_containing_a_fence_gets_a_longer_fence() -> None:
    end = TurnEnd(Outcome.ERROR, reason=error_reason("Internal error"), detail="```\nx\n```")
    assert render_end(end, started()) == (
        "❌ The agent answered with an error: Internal error.\n\nDetails:\n````\n```\nx\n```\n````"
    )


def test_busy_reply_says_how_many_wait_and_what_to_do() -> None:
    end = TurnEnd(Outcome.BUSY, reason=busy_reason(5))
    assert render_end(end, Transcript()) == (
        "⏳ This thread is busy: 5 messages are already waiting. "
        "Try again when the current turn finishes, or /cancel it."
    )


def test_pool_full_reply_names_the_busy_sessions() -> None:
    assert render_end(TurnEnd(Outcome.POOL_FULL, reason=pool_full_reason(20)), Transcript()) == (
        "⏳ All 20 agent sessions are busy (pool full), so no agent can start for this thread"
        " right now. "
        "Try again when one of them finishes."
    )
    assert pool_full_reason(1).startswith("The only agent session is busy")


def test_start_failure_gives_the_error() -> None:
    end = TurnEnd(
        Outcome.START_FAILED, reason=start_failed_reason("command 'codex-acp' not found.")
    )
    assert render_end(end, Transcript()) == (
        "❌ The agent could not be started: command 'codex-acp' not found."
    )


def test_shutdown_tells_the_user_to_send_again() -> None:
    assert render_end(TurnEnd(Outcome.SHUTDOWN), started()) == (
        "🔌 The broker is restarting, so this message was not finished; "
        "send it again once it is back."
    )


def test_bare_reason_clause_is_made_a_sentence() -> None:
    end = TurnEnd(Outcome.AGENT_DIED, reason="exited with code 3")
    assert render_end(end, started()).startswith("💥 Exited with code 3. ")


@pytest.mark.parametrize("outcome", list(Outcome))
def test_no_outcome_ever_renders_an_empty_message(outcome: Outcome) -> None:
    for transcript in (Transcript(), started()):
        assert render_end(TurnEnd(outcome), transcript).strip()


def test_durations_read_naturally() -> None:
    assert [duration_phrase(s) for s in (1800, 7200, 90, 2.5)] == [
        "30-minute",
        "2-hour",
        "90-second",
        "2.5-second",
    ]


def test_code_block_still_streaming_is_closed_in_every_shown_state() -> None:
    transcript = started(TextChunk("Run this:\n```sh\nmake te"))
    assert render(transcript, final=False) == "Run this:\n```sh\nmake te\n```"
    transcript.apply(TextChunk("st\n```\nThen look."))
    assert render(transcript, final=False) == "Run this:\n```sh\nmake test\n```\nThen look."


def test_reason_that_already_gives_advice_gets_no_second_hint() -> None:
    end = TurnEnd(
        Outcome.POOL_FULL,
        reason="The broker is at capacity: pool full (3 busy sessions). "
        "Try again when one of them finishes.",
    )
    assert render_end(end, Transcript()) == (
        "⏳ The broker is at capacity: pool full (3 busy sessions). "
        "Try again when one of them finishes."
    )
    shutdown = TurnEnd(Outcome.SHUTDOWN, reason="The broker is restarting; send it again soon.")
    assert render_end(shutdown, Transcript()) == (
        "🔌 The broker is restarting; send it again soon."
    )
