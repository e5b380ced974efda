"""Turning a turn's :class:`~broker.reply.Transcript` into text people like to read.

Pure functions, no I/O. :func:`render` shows a turn in progress (or its final
state): notes, the plan, the tool lines, then the agent's text.
:func:`render_end` is the final message of a turn, whatever its outcome: it
keeps the partial text above a plain sentence that says what happened and what
to do, and never returns an empty string.

The ``reason`` of a :class:`~broker.reply.TurnEnd` is a plain sentence built
by the session or the pool with :mod:`broker.sentences`, where every sentence
shown here lives too; this module only arranges them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from broker import sentences
from broker.chat.split import close_open_fence
from broker.reply import Outcome, PlanEntry, ToolLine, ToolStatus, Transcript, TurnEnd
from broker.sentences import count_phrase, one_line

MAX_TOOL_LINES = 6  # more than this collapse into a count ...
KEEP_TOOL_LINES = 4  # ... keeping this many of the latest visible
MAX_TITLE_CHARS = 80
MAX_PLAN_ENTRIES = 12
MAX_DETAIL_LINES = 20
MAX_DETAIL_CHARS = 1500

# A reason that already tells the user what to do gets no second hint.
_ADVICE = re.compile(r"\bagain\b|/cancel|\btry\b", re.IGNORECASE)
_ACTIVE = (ToolStatus.PENDING, ToolStatus.RUNNING)


# The sentences themselves live in broker.sentences; here, which goes with which outcome.
_DEFAULT_REASONS = {
    outcome: sentences.DEFAULT_REASONS[outcome.value]
    for outcome in Outcome
    if outcome is not Outcome.COMPLETED
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
_HINTS = {Outcome(name): hint for name, hint in sentences.HINTS.items()}
_PARTIAL_TEXT_OUTCOMES = (Outcome.CANCELLED, Outcome.TIMED_OUT, Outcome.AGENT_DIED, Outcome.ERROR)
_DETAIL_LABELS = {Outcome(name): label for name, label in sentences.DETAIL_LABELS.items()}


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
        if transcript.batched:
            notes.append(sentences.batched_note(transcript.batched))
        else:
            notes.append(sentences.queued_note(transcript.queued_position))
    if transcript.context_reset:
        notes.append(sentences.CONTEXT_RESET)
    return "\n".join(notes)


def _indicator(transcript: Transcript) -> str:
    if not transcript.started:
        return sentences.STARTING
    if transcript.current_tool is None and transcript.thought_chars:
        return sentences.THINKING
    return sentences.WORKING


def _plan(entries: tuple[PlanEntry, ...]) -> str:
    if not entries:
        return ""
    done = sum(1 for e in entries if e.status == "completed")
    lines = [f"📋 Plan ({done}/{len(entries)} done)"]
    marks = {"completed": "☑", "in_progress": "▶"}
    for entry in entries[:MAX_PLAN_ENTRIES]:
        lines.append(f"{marks.get(entry.status, '☐')} {one_line(entry.content, 120)}")
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
    title = one_line(tool.title, MAX_TITLE_CHARS) or "tool"
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
            what = str(n) if parts else count_phrase(n, "more tool", verb=False)
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
        note = note or sentences.STOP_NOTES.get(end.stop_reason or "end_turn", "")
        return " ".join(w for w in (note, f"🚫 {end.reason}" if end.reason else "") if w)
    sentence = sentences.as_sentence(end.reason) or _DEFAULT_REASONS[end.outcome]
    words = [f"{_EMOJI[end.outcome]} {sentence}"]
    if has_text and end.outcome in _PARTIAL_TEXT_OUTCOMES:
        words.append(sentences.PARTIAL_TEXT)
    hint = _HINTS.get(end.outcome)
    if hint and not _ADVICE.search(sentence):
        words.append(hint)
    return " ".join(words)


def _empty_turn_sentence(end: TurnEnd, transcript: Transcript) -> str:
    tools = list(transcript.tools.values())
    failed = sum(1 for t in tools if t.status is ToolStatus.FAILED)
    return sentences.empty_turn_sentence(len(tools), failed, end.stop_reason)


def _detail_block(end: TurnEnd) -> str:
    lines = end.detail.strip("\n").splitlines()[-MAX_DETAIL_LINES:]
    detail = "\n".join(lines)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = "…" + detail[-MAX_DETAIL_CHARS:]
    fence = "```"
    while fence in detail:
        fence += "`"
    label = _DETAIL_LABELS.get(end.outcome, sentences.DETAIL_LABEL)
    return f"{label}\n{fence}\n{detail}\n{fence}"


# --- small text helpers -----------------------------------------------------------------------


def _join(sections: Iterable[str]) -> str:
    return "\n\n".join(s for s in sections if s)
