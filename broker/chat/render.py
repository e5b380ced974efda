"""Turning a turn's :class:`~broker.reply.Transcript` into text people like to read.

Pure functions, no I/O. :func:`render` shows a turn in progress (or its final
state): notes, the plan, the tool lines, then the agent's text.
:func:`render_end` is the final message of a turn, whatever its outcome: it
keeps the partial text above a plain sentence that says what happened and what
to do, and never returns an empty string.

The ``reason`` of a :class:`~broker.reply.TurnEnd` is a plain sentence; the
``*_reason`` helpers below phrase it the same way everywhere, so the session
and the pool should build their reasons with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from broker.chat.split import close_open_fence
from broker.reply import Outcome, PlanEntry, ToolLine, ToolStatus, Transcript, TurnEnd

MAX_TOOL_LINES = 6  # more than this collapse into a count ...
KEEP_TOOL_LINES = 4  # ... keeping this many of the latest visible
MAX_TITLE_CHARS = 80
MAX_PLAN_ENTRIES = 12
MAX_DETAIL_LINES = 20
MAX_DETAIL_CHARS = 1500

_SPACE = re.compile(r"\s+")
# A reason that already tells the user what to do gets no second hint.
_ADVICE = re.compile(r"\bagain\b|/cancel|\btry\b", re.IGNORECASE)
_ACTIVE = (ToolStatus.PENDING, ToolStatus.RUNNING)


# --- reasons (sentences for TurnEnd.reason) ---------------------------------------------------


def duration_phrase(secs: float) -> str:
    """``1800`` -> ``"30-minute"``, ``90`` -> ``"90-second"``, ``7200`` -> ``"2-hour"``."""
    if secs >= 3600 and secs % 3600 == 0:
        return f"{int(secs // 3600)}-hour"
    if secs >= 60 and secs % 60 == 0:
        return f"{int(secs // 60)}-minute"
    return f"{secs:g}-second"


def timeout_reason(limit_secs: float) -> str:
    return f"Stopped after the {duration_phrase(limit_secs)} limit."


def agent_died_reason(exit_description: str) -> str:
    """``exit_description`` as from ``ExitStatus.describe()``: "killed by SIGKILL"."""
    return f"The agent process exited unexpectedly ({exit_description})."


def busy_reason(waiting: int) -> str:
    return f"This thread is busy: {_count(waiting, 'message')} already waiting."


def pool_full_reason(busy_sessions: int) -> str:
    if busy_sessions == 1:
        subject = "The only agent session is"
    else:
        subject = f"All {busy_sessions} agent sessions are"
    return f"{subject} busy, so no agent can start for this thread right now."


def start_failed_reason(error: str) -> str:
    return f"The agent could not be started: {_sentence_body(error)}."


def refused_reason(tool: str, kind: str | None, rule: str) -> str:
    """A tool the broker did not allow, and the rule that said no."""
    what = f"“{_one_line(tool, MAX_TITLE_CHARS)}”" + (f" (kind {kind})" if kind else "")
    return f"The broker refused the tool {what} by the rule {rule}."


def error_reason(error: str) -> str:
    return f"The agent answered with an error: {_sentence_body(error)}."


_DEFAULT_REASONS = {
    Outcome.CANCELLED: "The turn was cancelled.",
    Outcome.TIMED_OUT: "Stopped at the time limit for one turn.",
    Outcome.AGENT_DIED: "The agent process exited unexpectedly.",
    Outcome.BUSY: "This thread is busy.",
    Outcome.POOL_FULL: "Every agent session is busy, so no agent can start right now.",
    Outcome.START_FAILED: "The agent could not be started.",
    Outcome.SHUTDOWN: (
        "The broker is shutting down, so this turn was stopped; "
        "send your message again once it is back."
    ),
    Outcome.ERROR: "The agent answered with an error.",
}
_EMOJI = {
    Outcome.CANCELLED: "🛑",
    Outcome.TIMED_OUT: "⏱️",
    Outcome.AGENT_DIED: "💥",
    Outcome.BUSY: "⏳",
    Outcome.POOL_FULL: "⏳",
    Outcome.START_FAILED: "❌",
    Outcome.SHUTDOWN: "🔌",
    Outcome.ERROR: "❌",
}
_HINTS = {
    Outcome.BUSY: "Try again when the current turn finishes, or /cancel it.",
    Outcome.POOL_FULL: "Try again when one of them finishes.",
    Outcome.AGENT_DIED: "Your next message starts it again.",
}
_PARTIAL_TEXT_OUTCOMES = (Outcome.CANCELLED, Outcome.TIMED_OUT, Outcome.AGENT_DIED, Outcome.ERROR)
_DETAIL_LABELS = {
    Outcome.AGENT_DIED: "Last lines it logged:",
    Outcome.START_FAILED: "Last lines it logged:",
}
_STOP_NOTES = {
    "max_tokens": "✂️ The agent stopped early: its answer reached the output length limit.",
    "max_turn_requests": "✂️ The agent stopped early: it reached its limit of steps for one turn.",
    "refusal": "🚫 The agent declined to continue.",
    "cancelled": "🛑 The turn was cancelled.",
}


# --- the turn in progress ---------------------------------------------------------------------


def render(transcript: Transcript, *, final: bool) -> str:
    """The text of a turn: notes, plan, tool lines, then the agent's text.

    While streaming (``final=False``) a short indicator stands in for the text
    until there is some ("⏳ Queued behind 2 messages…", "💭 Thinking…").
    With ``final=True`` no indicator is shown and tools that never reported
    an end are marked unfinished; the result may then be empty when the turn
    produced nothing at all (use :func:`render_end` for the last message,
    which never is). A code block the text leaves open is closed, so every
    state shown is well-formed markdown.
    """
    sections = [
        _notes(transcript, final=final),
        _plan(transcript.plan),
        _tools(list(transcript.tools.values()), final=final),
    ]
    text = close_open_fence(transcript.text.strip())
    if text:
        sections.append(text)
    elif not final and transcript.queued_position is None:
        sections.append(_indicator(transcript))
    return _join(sections)


def _notes(transcript: Transcript, *, final: bool) -> str:
    notes = []
    if transcript.queued_position is not None and not transcript.started and not final:
        notes.append(_queued_note(transcript.queued_position))
    if transcript.context_reset:
        notes.append(
            "ℹ️ The earlier conversation of this thread could not be restored; "
            "the agent starts fresh."
        )
    return "\n".join(notes)


def _queued_note(position: int) -> str:
    if position <= 0:
        return "⏳ Queued; it starts in a moment."
    if position == 1:
        return "⏳ Queued behind 1 message; it starts when that one is done."
    return f"⏳ Queued behind {position} messages; it starts when they are done."


def _indicator(transcript: Transcript) -> str:
    if not transcript.started:
        return "⏳ Starting…"
    if transcript.current_tool is None and transcript.thought_chars:
        return "💭 Thinking…"
    return "⚙️ Working…"


def _plan(entries: tuple[PlanEntry, ...]) -> str:
    if not entries:
        return ""
    done = sum(1 for e in entries if e.status == "completed")
    lines = [f"📋 Plan ({done}/{len(entries)} done)"]
    marks = {"completed": "☑", "in_progress": "▶"}
    for entry in entries[:MAX_PLAN_ENTRIES]:
        lines.append(f"{marks.get(entry.status, '☐')} {_one_line(entry.content, 120)}")
    if len(entries) > MAX_PLAN_ENTRIES:
        lines.append(f"… {len(entries) - MAX_PLAN_ENTRIES} more steps")
    return "\n".join(lines)


def _tools(tools: list[ToolLine], *, final: bool) -> str:
    if len(tools) > MAX_TOOL_LINES:
        older = tools[:-KEEP_TOOL_LINES]
        hidden = [t for t in older if final or t.status not in _ACTIVE]
        active = [] if final else [t for t in older if t.status in _ACTIVE]
        shown = active + tools[-KEEP_TOOL_LINES:]
        lines = [_hidden_summary(hidden)]
    else:
        shown, lines = tools, []
    lines.extend(_tool_line(t, final=final) for t in shown)
    return "\n".join(lines)


def _tool_line(tool: ToolLine, *, final: bool) -> str:
    title = _one_line(tool.title, MAX_TITLE_CHARS) or "tool"
    if tool.status is ToolStatus.COMPLETED:
        return f"✅ {title}"
    if tool.status is ToolStatus.FAILED:
        return f"❌ {title} failed"
    if final:
        return f"⏹️ {title} (unfinished)"
    return f"🔧 {title} … {'running' if tool.status is ToolStatus.RUNNING else 'waiting'}"


def _hidden_summary(hidden: list[ToolLine]) -> str:
    done = sum(1 for t in hidden if t.status is ToolStatus.COMPLETED)
    failed = sum(1 for t in hidden if t.status is ToolStatus.FAILED)
    counts = [
        ("✅", done, "done"),
        ("❌", failed, "failed"),
        ("⏹️", len(hidden) - done - failed, "unfinished"),
    ]
    parts: list[str] = []
    for emoji, n, word in counts:
        if n:
            what = str(n) if parts else _count(n, "more tool", verb=False)
            parts.append(f"{emoji} {what} {word}")
    return ", ".join(parts)


# --- the end of a turn ------------------------------------------------------------------------


def render_end(end: TurnEnd, transcript: Transcript) -> str:
    """The final message of a turn: never empty, whatever the outcome.

    The agent's text (``end.text``, else the transcript's) stays on top with
    the plan and tool lines; below it one paragraph says how the turn ended:
    for COMPLETED only when something is unusual (no text at all, or a stop
    reason other than ``end_turn``), for every other outcome ``end.reason``
    (or a default sentence) plus what to do next, unless the reason already
    says so (mentions "again", "try" or "/cancel"). ``end.detail`` (the agent's
    stderr tail, say) is shown last in a fenced block, trimmed to its last
    lines.
    """
    text = close_open_fence((end.text or transcript.text).strip())
    body = _join(
        [
            _notes(transcript, final=True),
            _plan(transcript.plan),
            _tools(list(transcript.tools.values()), final=True),
            text,
        ]
    )
    tail = _ending(end, transcript, has_text=bool(text))
    detail = _detail_block(end) if end.detail.strip() else ""
    return _join([body, tail, detail])


def _ending(end: TurnEnd, transcript: Transcript, *, has_text: bool) -> str:
    if end.outcome is Outcome.COMPLETED:
        note = _empty_turn_sentence(end, transcript) if not has_text else ""
        note = note or _STOP_NOTES.get(end.stop_reason or "end_turn", "")
        return " ".join(w for w in (note, f"🚫 {end.reason}" if end.reason else "") if w)
    sentence = _as_sentence(end.reason) or _DEFAULT_REASONS[end.outcome]
    words = [f"{_EMOJI[end.outcome]} {sentence}"]
    if has_text and end.outcome in _PARTIAL_TEXT_OUTCOMES:
        words.append("The text above is what the agent wrote so far.")
    hint = _HINTS.get(end.outcome)
    if hint and not _ADVICE.search(sentence):
        words.append(hint)
    return " ".join(words)


def _empty_turn_sentence(end: TurnEnd, transcript: Transcript) -> str:
    tools = list(transcript.tools.values())
    failed = sum(1 for t in tools if t.status is ToolStatus.FAILED)
    ran = f"ran {_count(len(tools), 'tool', verb=False)}" if tools else "ran no tools"
    if failed:
        ran += f", {failed} failed"
    stop = end.stop_reason or "none given"
    return f"The agent finished without writing any text ({ran}; stop reason: {stop})."


def _detail_block(end: TurnEnd) -> str:
    lines = end.detail.strip("\n").splitlines()[-MAX_DETAIL_LINES:]
    detail = "\n".join(lines)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = "…" + detail[-MAX_DETAIL_CHARS:]
    fence = "```"
    while fence in detail:
        fence += "`"
    label = _DETAIL_LABELS.get(end.outcome, "Details:")
    return f"{label}\n{fence}\n{detail}\n{fence}"


# --- small text helpers -----------------------------------------------------------------------


def _join(sections: Iterable[str]) -> str:
    return "\n\n".join(s for s in sections if s)


def _one_line(text: str, limit: int) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _count(n: int, noun: str, *, verb: bool = True) -> str:
    """``_count(1, "message")`` -> "1 message is"; ``verb=False`` leaves the verb out."""
    plural = n != 1
    words = f"{n} {noun}{'s' if plural else ''}"
    if verb:
        words += " are" if plural else " is"
    return words


def _sentence_body(text: str) -> str:
    return _one_line(text, 300).rstrip(".") or "no reason given"


def _as_sentence(text: str) -> str:
    """Capitalise and end with a full stop, so a bare clause reads as a sentence."""
    flat = text.strip()
    if not flat:
        return ""
    flat = flat[0].upper() + flat[1:]
    return flat if flat[-1] in ".!?…" else flat + "."
