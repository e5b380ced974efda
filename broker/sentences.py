"""Every sentence a person reads: replies, reasons, notes, command answers.

One module, so the broker speaks with one voice and a wording is changed in
one place. It sits at the root, below the sessions and the chat layer, and
imports nothing of the broker: the session and the pool build their
:class:`~broker.reply.TurnEnd` reasons here, the chat layer its commands'
answers and the words around a reply, the terminal dashboard its durations.

Functions take plain values (seconds, counts, descriptions) and return text;
nothing here does I/O. The emoji that start a reply are part of its
sentence.
"""

from __future__ import annotations

import re
import time

# --- small phrasing helpers -------------------------------------------------------------------

_SPACE = re.compile(r"\s+")


def one_line(text: str, limit: int) -> str:
    """``text`` on one line, cut with an ellipsis to at most ``limit`` characters."""
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def count_phrase(n: int, noun: str, *, verb: bool = True) -> str:
    """``count_phrase(1, "message")`` -> "1 message is"; ``verb=False`` leaves the verb out."""
    plural = n != 1
    words = f"{n} {noun}{'s' if plural else ''}"
    if verb:
        words += " are" if plural else " is"
    return words


def as_sentence(text: str) -> str:
    """Capitalise and end with a full stop, so a bare clause reads as a sentence."""
    flat = text.strip()
    if not flat:
        return ""
    flat = flat[0].upper() + flat[1:]
    return flat if flat[-1] in ".!?…" else flat + "."


def _body(text: str) -> str:
    return one_line(text, 300).rstrip(".") or "no reason given"


def duration(secs: float | None) -> str:
    """``45s``, ``3m05s``, ``2h07m``, ``3d04h``; ``-`` for unknown. The one way
    the broker writes an elapsed time (``/status``, the dashboard)."""
    if secs is None:
        return "-"
    whole = int(max(0.0, secs))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def wall_clock(epoch_secs: float) -> str:
    """``1764590709.2`` -> ``"12:05:09 UTC"``: a moment today, as people read it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(epoch_secs))


def duration_phrase(secs: float) -> str:
    """``1800`` -> ``"30-minute"``, ``90`` -> ``"90-second"``, ``7200`` -> ``"2-hour"``."""
    if secs >= 3600 and secs % 3600 == 0:
        return f"{int(secs // 3600)}-hour"
    if secs >= 60 and secs % 60 == 0:
        return f"{int(secs // 60)}-minute"
    return f"{secs:g}-second"


def size_phrase(n: int) -> str:
    """``2048`` -> ``2 KiB``; ``5242880`` -> ``5 MiB``; ``300`` -> ``300 bytes``."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.3g} MiB"
    if n >= 1024:
        return f"{n / 1024:.3g} KiB"
    return f"{n} bytes"


# --- why a turn ended (TurnEnd.reason), built by the session and the pool -----------------------

SHUTDOWN = (
    "The broker is restarting, so this message was not finished; send it again once it is back."
)
# A cluster: the replica that owns the thread cannot be reached (docs/scaling.md).
HOST_RESTARTING = (
    "⏳ This conversation's host is restarting, so this message was not answered; "
    "send it again in a minute."
)
CANCELLED = "Cancelled."
RESET = "The conversation was reset."
RESET_QUEUED = "The conversation was reset before this message ran."


def timeout_reason(limit_secs: float) -> str:
    return f"Stopped after the {duration_phrase(limit_secs)} limit."


def agent_died_reason(exit_description: str) -> str:
    """``exit_description`` as from ``ExitStatus.describe()``: "killed by SIGKILL"."""
    return f"The agent process exited unexpectedly ({exit_description})."


def unreadable_reason(why: str) -> str:
    return (
        f"The agent's output could not be read ({why}), so it was stopped."
        " Your next message starts it again."
    )


def ignored_cancel_reason(reason: str, grace_secs: float) -> str:
    """``reason`` for a turn whose agent ignored the cancel for ``grace_secs``."""
    return (
        f"{reason} The agent did not stop within {grace_secs:g} s of being asked to, so it was"
        " stopped; the conversation resumes with the next message."
    )


def busy_reason(waiting: int) -> str:
    return f"This thread is busy: {count_phrase(waiting, 'message')} already waiting."


def pool_full_reason(busy_sessions: int) -> str:
    if busy_sessions == 1:
        subject = "The only agent session is"
    else:
        subject = f"All {busy_sessions} agent sessions are"
    return f"{subject} busy (pool full), so no agent can start for this thread right now."


def start_failed_reason(error: str) -> str:
    """Kept whole: the error names what the operator must change."""
    return f"The agent could not be started: {error.strip().rstrip('.') or 'no reason given'}."


def refused_reason(tool: str, kind: str | None, rule: str) -> str:
    """A tool the broker did not allow, and the rule that said no."""
    what = f"“{one_line(tool, 80)}”" + (f" (kind {kind})" if kind else "")
    return f"The broker refused the tool {what} by the rule {rule}."


def error_reason(error: str) -> str:
    return f"The agent answered with an error: {_body(error)}."


def session_ended_reason(why: str) -> str:
    return f"The session ended: {why or 'stopped'}."


def crash_loop_reason(fatal: str, last: str, until: str) -> str:
    """The thread is blocked after its agent failed too often; ``until`` is a
    wall-clock time ("14:05:09 UTC")."""
    return (
        f"The agent keeps failing ({fatal}; last: {last}). New messages are refused until"
        f" {until}; /reset lifts this at once."
    )


# --- what the agent reads of a batch (broker.sessions.batch) ------------------------------------


def batch_intro(count: int) -> str:
    return f"[{count} messages arrived while you were busy; here they are in order.]"


def batch_part_header(number: int, count: int, sent_at: str, images: int) -> str:
    when = f", sent {sent_at}" if sent_at else ""
    attached = ""
    if images:
        attached = f", with {count_phrase(images, 'image', verb=False)} (after the text)"
    return f"--- message {number} of {count}{when}{attached} ---"


def batch_sender(name: str, person_id: str) -> str:
    """The sender line of a batched message whose prompt carries no sender context."""
    return f"[Message from {name} (id {person_id})]"


# --- how the chat shows a turn (broker.chat.render) ---------------------------------------------

CONTEXT_RESET = (
    "ℹ️ The earlier conversation of this thread could not be restored; the agent starts fresh."
)
PARTIAL_TEXT = "The text above is what the agent wrote so far."
STARTING = "⏳ Starting…"
THINKING = "💭 Thinking…"
WORKING = "⚙️ Working…"


def queued_note(position: int) -> str:
    if position <= 0:
        return "⏳ Queued; it starts in a moment."
    if position == 1:
        return "⏳ Queued behind 1 message; it starts when that one is done."
    return f"⏳ Queued behind {position} messages; it starts when they are done."


def batched_note(batched: int) -> str:
    """A held message (dispatch ``batch``): it goes with the agent's next turn."""
    if batched <= 1:
        return "⏳ The agent is busy; your message goes with its next turn."
    others = count_phrase(batched - 1, "other message", verb=False)
    return f"⏳ The agent is busy; your message goes with its next turn, together with {others}."


def answered_together(batched: int) -> str:
    """The final reply of a batched message other than the last: the answer is there."""
    others = count_phrase(batched - 1, "other message", verb=False)
    return (
        f"↩️ Answered together with {others} that arrived while the agent was busy: "
        "the reply is on the last of them."
    )


def failed_together(batched: int, reason: str) -> str:
    """The end of a batched message other than the last, when the batch's turn failed."""
    others = count_phrase(batched - 1, "other message", verb=False)
    return f"{as_sentence(reason)} This message went to the agent together with {others}."


def batch_dropped(command: str) -> str:
    """The end of a held message that ``/cancel`` or ``/reset`` dropped."""
    return f"Dropped by {command} before it went to the agent; send it again if it still matters."


DEFAULT_REASONS = {
    "cancelled": "The turn was cancelled.",
    "timed_out": "Stopped at the time limit for one turn.",
    "agent_died": "The agent process exited unexpectedly.",
    "busy": "This thread is busy.",
    "pool_full": "Every agent session is busy, so no agent can start right now.",
    "start_failed": "The agent could not be started.",
    "shutdown": SHUTDOWN,
    "error": "The agent answered with an error.",
}
HINTS = {
    "busy": "Try again when the current turn finishes, or /cancel it.",
    "pool_full": "Try again when one of them finishes.",
    "agent_died": "Your next message starts it again.",
}
DETAIL_LABELS = {"agent_died": "Last lines it logged:", "start_failed": "Last lines it logged:"}
DETAIL_LABEL = "Details:"
STOP_NOTES = {
    "max_tokens": "✂️ The agent stopped early: its answer reached the output length limit.",
    "max_turn_requests": "✂️ The agent stopped early: it reached its limit of steps for one turn.",
    "refusal": "🚫 The agent declined to continue.",
    "cancelled": "🛑 The turn was cancelled.",
}


def empty_turn_sentence(tools: int, failed: int, stop_reason: str | None) -> str:
    ran = f"ran {count_phrase(tools, 'tool', verb=False)}" if tools else "ran no tools"
    if failed:
        ran += f", {failed} failed"
    return (
        "The agent finished without writing any text"
        f" ({ran}; stop reason: {stop_reason or 'none given'})."
    )


# --- the prompt (broker.chat.prompt, broker.sessions.translate) ---------------------------------


def attachment_unsupported(name: str, kind: str) -> str:
    return f"{name} was not passed to the agent: {kind} attachments are not supported."


def attachment_unavailable(name: str) -> str:
    return f"{name} was not passed to the agent: it could not be downloaded."


def attachment_not_base64(name: str) -> str:
    return f"{name} was not passed to the agent: its data is not valid base64."


def attachment_too_large(name: str, size: int, limit: int) -> str:
    return (
        f"{name} was not passed to the agent: it is {size_phrase(size)}, over the "
        f"limit of {size_phrase(limit)} per attachment."
    )


def message_too_large(size: int, limit: int) -> str:
    return (
        f"⚠️ This message is too large: {size_phrase(size)} with its attachments, over the "
        f"limit of {size_phrase(limit)}. Nothing was sent to the agent; "
        "send smaller or fewer files."
    )


def nothing_to_send(notes: list[str]) -> str:
    why = " ".join(notes) if notes else "It has no text and no attachments."
    return f"⚠️ Nothing to send to the agent. {why}"


def image_not_accepted(name: str) -> str:
    return f"{name} was not sent: this agent does not accept images."


# --- the router ---------------------------------------------------------------------------------

SHUTDOWN_REPLY = f"🔌 {SHUTDOWN}"
#: The reply, after a restart, to an event a killed broker had accepted and never answered.
RESTARTED_REPLY = "🔌 The broker restarted before finishing this message; please send it again."


def internal_error(error_name: str) -> str:
    return (
        f"⚠️ Internal error while handling this message ({error_name}). "
        "It was logged; please try again."
    )


# --- questions: a permission asked of the person in the thread (broker.chat.questions) ----------

QUESTION_DECIDED = {  # option kind -> what choosing it did
    "allow_once": "✅ allowed once",
    "allow_always": "✅ always allowed",
    "reject_once": "🚫 rejected",
    "reject_always": "🚫 always rejected",
}
QUESTION_CLOSED = {  # reply.Settled value -> how a question closed without an answer
    "cancelled": "🛑 Cancelled with /cancel: the agent was told the request is cancelled.",
    "agent_gone": "⚠️ Closed without an answer: the agent's turn ended or the agent stopped.",
    "evicted": "⏹️ Closed without an answer: the conversation was suspended.",
    "shutdown": (
        "🔌 Closed without an answer: the broker is restarting. "
        "Send your message again once it is back."
    ),
    "reset": "🔄 Closed without an answer: the conversation was reset.",
    "no_options": "⚠️ The agent offered nothing to choose from, so the request was refused.",
    "duplicate_options": (
        "⚠️ The agent offered options with the same id, so the request was refused."
    ),
}
ANSWER_USAGE = (
    "Answer a question with /allow N, /allow always N, /deny N, /deny always N "
    "or /answer N K (the K-th option); N is the question's number."
)
ANSWER_TAKES_NUMBERS = (
    f"/answer takes the question's number and the option's: /answer 3 2. {ANSWER_USAGE}"
)
NO_OPEN_QUESTION = "There is no open question in this thread to answer."
BOTS_CANNOT_ANSWER = "Bots cannot answer questions."
QUESTION_KEYS_HELP = "Press an option's number, or Esc to type instead."
QUESTION_TYPING = "Type your message; the question stays open."
CANCELLED_REQUEST = "that the request is cancelled"


def not_a_question_number(text: str) -> str:
    return f"“{text}” is not a question number. {ANSWER_USAGE}"


def question_head(number: int, title: str, kind: str | None) -> list[str]:
    return [
        f"❓ Question {number}: may the agent use this tool?",
        f"🔧 {title}" + (f" ({kind})" if kind else ""),
    ]


def question_option(index: int, name: str, command: str) -> str:
    return f"{index}. {name} — {command}"


def who_may_answer(initiator: str | None, timeout_secs: float, fallback: str) -> str:
    """The last line of a question: who answers, and what happens without an answer."""
    who = f"@{initiator} or an approver" if initiator else "Anyone here"
    return (
        f"{who} can answer. With no answer within {duration(timeout_secs)} "
        f"the agent is told {fallback}."
    )


def question_answered(kind: str, name: str, by: str, at: float) -> str:
    decided = QUESTION_DECIDED.get(kind, f"☑️ “{name}” chosen")
    return f"{decided} by @{by} at {wall_clock(at)}"


def question_timed_out(limit_secs: float | None, told: str) -> str:
    limit = duration(limit_secs) if limit_secs is not None else "the time limit"
    return f"⏱️ No answer within {limit}: the agent was told {told}."


def answer_accepted(number: int, title: str, decision: str) -> str:
    return f"Question {number} ({title}): {decision}."


def several_open(numbers: list[int]) -> str:
    first = numbers[0]
    return (
        f"Several questions are open here ({', '.join(map(str, numbers))}): "
        f"say which one, e.g. /allow {first} or /deny {first}."
    )


def question_settled_already(number: int | None, decision: str) -> str:
    return f"This question is no longer open: question {number} was settled ({decision})."


def question_not_open(number: int | None, open_numbers: list[int]) -> str:
    now = (
        "Open here now: " + ", ".join(map(str, open_numbers)) + "."
        if open_numbers
        else "No question is open here now."
    )
    return (
        f"This question is no longer open: there is no open question {number} in this thread. {now}"
    )


def only_initiator(initiator: str | None) -> str:
    return f"Only @{initiator or 'someone'} or an approver can answer this."


def no_such_option(number: int, wanted: str, choices: list[str]) -> str:
    return f"Question {number} has no {wanted}. Choose one of: {'; '.join(choices)}."


def question_prompt(number: int, keys: list[str]) -> str:
    """The terminal chat's prompt for a question: one key answers."""
    return f"❓ Question {number} — press a key: {' · '.join(keys)} (Esc: type instead)"


def waiting_for_approval(tool: str, waiting_secs: float | None) -> str:
    """The dashboard's cell for a thread that waits for a person."""
    return f"waiting for approval: {tool} ({duration(waiting_secs)})"


# --- broker commands (broker.chat.commands) -----------------------------------------------------

HELP_TEXT = """\
Commands answered by the broker:
/status — this thread's agent: state, uptime, queue, current tool
/cancel — stop the running turn (queued messages still run)
/reset — stop the agent and forget this thread's conversation (--clean: its workspace too)
/agent [NAME] — list the agents and this thread's, or switch to NAME
/workspace — this thread's directory, branch and changes
/model [list | set NAME] — show or switch the agent's model
/mode [list | set NAME] — show or switch the agent's mode
/schedules — the scheduled prompts, their next and last runs
/allow N, /allow always N — allow what question N asks (once, or from now on)
/deny N, /deny always N — refuse it; /answer N K — pick its K-th option
/help — this list
Any other /command goes to the agent as text."""
CANCELLING = "🛑 Cancelling the running turn; its reply says when it has stopped."
NOTHING_TO_CANCEL = "Nothing is running in this thread, so there is nothing to cancel."


def cancel_answer(cancelling: bool, dropped: int) -> str:
    """What ``/cancel`` answers when it also dropped ``dropped`` held messages."""
    if not dropped:
        return CANCELLING if cancelling else NOTHING_TO_CANCEL
    held = f"🗑️ Dropped {count_phrase(dropped, 'held message', verb=False)}; each was told."
    return f"{CANCELLING} {held}" if cancelling else held


RESET_DONE = (
    "🔄 Reset: this thread's agent is stopped and its conversation forgotten. "
    "Your next message starts a fresh one."
)
NOTHING_TO_RESET = "Nothing to reset: this thread has no conversation yet."
STATUS_SUSPENDED = "the conversation is suspended and resumes with your next message"
STATUS_NEW = "your next message starts a new conversation"


def status_no_agent(state: str, pool_summary: str) -> str:
    return f"📊 No running agent for this thread; {state}.\n{pool_summary}."


def status_blocked(reason: str, until: str, detail: str) -> str:
    """``/status`` of a thread whose agent keeps failing: state, why, until when."""
    lines = [f"📊 Blocked until {until}: no agent starts for this thread.", reason]
    tail = "\n".join(detail.strip("\n").splitlines()[-10:])
    if tail.strip():
        fence = "```"
        while fence in tail:
            fence += "`"
        lines.append(f"Last lines it logged:\n{fence}\n{tail}\n{fence}")
    return "\n".join(lines)


def status_agent(agent: str, pid: int | None, state: str, age_secs: float) -> str:
    at = f" (pid {pid})" if pid else ""
    return f"📊 Agent {agent}{at}: {state}, up {duration(age_secs)}"


def status_turn(elapsed: float, deadline_in: float | None, tool: str | None) -> str:
    turn = f"Turn running for {duration(elapsed)}"
    if deadline_in is not None:
        turn += f" (time limit in {duration(deadline_in)})"
    if tool:
        turn += f"; tool: {tool}"
    return turn


def status_waiting(tool: str, waiting_secs: float) -> str:
    return f"⏸️ Waiting for approval: {tool} (asked {duration(waiting_secs)} ago)"


def status_idle(idle_secs: float) -> str:
    return f"Idle for {duration(idle_secs)}"


def status_counts(queue: int, turns: int, restarts: int) -> str:
    return f"Queue: {queue} waiting · turns done: {turns} · restarts: {restarts}"


def option_set_usage(kind: str) -> str:
    return f"Say which {kind} to use: /{kind} set NAME (see /{kind} list)."


def option_missing(kind: str) -> str:
    return f"This agent offers no {kind} choice."


def option_icon(kind: str) -> str:
    return "🧠" if kind == "model" else "🎛️"


def option_set(kind: str, value: str) -> str:
    return f"{option_icon(kind)} {kind.title()} set to {value}."


def option_unknown(kind: str, wanted: str, choices: list[str]) -> str:
    return f"Unknown {kind} “{wanted}”. Choose one of: {', '.join(choices)}."


def option_switch_hint(kind: str) -> str:
    return f"Switch with /{kind} set NAME."


def option_no_agent(kind: str) -> str:
    return (
        f"No agent is running in this thread, so there is no {kind} to show or set. "
        "Send a message first, then try again."
    )


def command_timed_out(name: str, secs: float) -> str:
    return f"The agent did not answer /{name} within {secs:g} s."


def option_failed(kind: str, error: str) -> str:
    return f"The agent could not change the {kind}: {error}."


# --- authenticating an agent --------------------------------------------------------------------


def auth_offers(offers: list[tuple[str, str, tuple[str, ...] | None, bool]], several: bool) -> str:
    """Why the broker could not authenticate an agent by itself. ``offers``:
    (method id, its name, the variables an env_var method needs or None for a
    login, whether they are all set); ``several``: more than one could be used."""
    if not offers:
        return (
            "the agent requires authentication but offers no method; "
            "see the agent's own documentation"
        )
    parts = []
    for method_id, name, names, ready in offers:
        if names is None:
            parts.append(f'"{method_id}" ({name or "a login the agent runs itself"})')
        else:
            need = " and ".join(names) or "variables it does not name"
            parts.append(f'"{method_id}" (needs {need}: {"set" if ready else "not set"})')
    advice = (
        "choose one with [agent] auth_method"
        if several
        else "pass the variables with [agent] env or inherit_env, or set [agent] auth_method"
    )
    return (
        "the agent requires authentication and the broker found no single method to use; "
        f"it offers {', '.join(parts)}: {advice}"
    )


# --- the terminal chat --------------------------------------------------------------------------

CHAT_HELLO = (
    "Type a message and press Enter; Alt-Enter starts a new line, and a pasted block or one "
    'between two """ lines is one message. /help lists the broker\'s commands. '
    "Ctrl-C cancels the running turn; Ctrl-C twice, Ctrl-D or /quit quits."
)
CHAT_RECONNECTED = "Reconnected; the conversation goes on."


def chat_thread_hint(thread: str) -> str:
    return f"Thread {thread} — continue it with: agent-broker chat --thread {thread}"


def chat_reconnecting(closed: str | None) -> str:
    return f"The broker closed the connection ({closed}); reconnecting…"


def chat_gone(closed: str | None, waited_secs: float) -> str:
    return (
        f"The broker closed the connection ({closed}) and did not come back within "
        f"{waited_secs:g} s."
    )


# --- schedules ([[schedules]]) ------------------------------------------------------------

NO_SCHEDULES = "No schedules are configured ([[schedules]] in broker.toml)."
SCHEDULE_PREVIOUS_RUN_GOING = "its previous run has not ended"
SCHEDULE_RUN_STOPPED = "the broker stopped during the run"


def schedule_run_title(name: str, run_label: str) -> str:
    """The first message of a run's thread on Discord or Slack."""
    return f"⏰ {name}: the run of {run_label}"


def schedule_target(thread: str, platform: str, channel: str) -> str:
    return f"thread {thread}" if thread else f"new thread in {platform}:{channel}"


def schedule_unknown_thread(thread: str) -> str:
    return f"thread {thread} is unknown: no message has come from it"


def schedule_no_thread(where: str, why: str) -> str:
    return f"no thread could be opened in {where}: {why}"


def schedule_no_frontend(frontend: str | None, platform: str) -> str:
    where = f"the {frontend} front-end" if frontend else "no front-end"
    return f"{where} serves {platform} in this broker"


def schedule_platform_refused(platform: str) -> str:
    return f"{platform} refused or is unreachable (see the log)"


def schedule_thread_busy(thread: str) -> str:
    return f"thread {thread} is busy"


def schedule_internal_error(kind: str) -> str:
    return f"internal error ({kind})"


def schedule_missed(count: int) -> str:
    return f"{count} missed while down"


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(at))


def schedule_next_run(at: float | None, now: float) -> str:
    """``2026-12-02 02:00 UTC (in 15h 4m)``; ``never again``."""
    if at is None:
        return "never again"
    hours, rest = divmod(int(max(at - now, 0.0)), 3600)
    soon = f"in {hours}h {rest // 60}m" if hours else f"in {rest // 60}m {rest % 60}s"
    return f"{_utc(at)} UTC ({soon})"


def schedule_entry(
    name: str,
    when: str,
    target: str,
    next_run: str,
    last_run: float | None,
    last_result: str,
    last_detail: str,
    running: int,
) -> str:
    """One schedule in ``/schedules``: ``when`` is its cron and time zone."""
    last = "never ran"
    if last_result:
        last = f"last {_utc(last_run) + ' UTC' if last_run else ''}: {last_result}"
        if last_detail:
            last += f" ({last_detail})"
    going = " · running now" if running else ""
    return f"⏰ {name} — {when} → {target}\n   next: {next_run} · {last}{going}"


def schedule_upcoming(
    name: str, when: str, target: str, overlap: str, catch_up: str, times: list[tuple[str, str]]
) -> str:
    """One schedule in ``agent-broker schedules``: its next ``(UTC, local)`` times."""
    lines = [f"{name}: {when} → {target}; overlap {overlap}, catch_up {catch_up}"]
    lines += [f"  {utc} UTC  ({local})" for utc, local in times] or ["  (no further runs)"]
    return "\n".join(lines)


# --- agent profiles (/agent) -------------------------------------------------------------------


def agent_list(profiles: list[tuple[str, str]], current: str) -> str:
    """``/agent``: each profile with its command line; the thread's marked."""
    lines = [f"🤖 Agents (this thread: {current}):"]
    for name, command in profiles:
        mark = " (this thread)" if name == current else ""
        lines.append(f"• {name} — {one_line(command, 80)}{mark}")
    lines.append("Switch with /agent NAME.")
    return "\n".join(lines)


def agent_unknown(name: str, names: list[str]) -> str:
    return f"There is no agent “{name}”. Choose one of: {', '.join(names)}."


def agent_already(name: str) -> str:
    return f"🤖 This thread already talks to {name}."


def agent_switched(name: str) -> str:
    return (
        f"🔀 This thread now talks to {name}: the previous agent is stopped and its "
        "conversation forgotten. Your next message starts a fresh one (the workspace stays)."
    )


AGENT_SWITCH_NEVER = 'Switching agents is turned off here ([agents] switching = "never").'
AGENT_SWITCH_PINNED = "This channel's agent is fixed by the broker's routes; it cannot be switched."
AGENT_SWITCH_APPROVERS = (
    "Only an approver ([permissions] approvers) may switch this thread's agent."
)


def profile_removed_note(old: str, new: str) -> str:
    """The note on the first turn of a thread whose profile a reload removed."""
    return f"The agent profile “{old}” was removed; this thread now talks to {new}, afresh."


def profiles_removed_log(removed: list[str], default: str) -> str:
    """The reload's log line when it removed agent profiles."""
    names = ", ".join(removed)
    return f"agent profiles removed: {names}; their threads move to {default} after their turn"


# --- workspaces (/workspace, /reset --clean, failures) -----------------------------------------

GIT_MISSING = "git is not installed (not found on PATH), so no worktree can be made for this thread"


def not_a_repo(repo: str, why: str) -> str:
    return f"{repo} is not a git repository ({why}); check the profile's repo setting"


def git_failed(command: str, why: str) -> str:
    return f"{command} failed: {why}"


def workspace_path_taken(path: str, branch: str) -> str:
    return f"{path} exists and is not the worktree of {branch}; move it away"


def branch_exists(branch: str, repo: str) -> str:
    return (
        f"the branch {branch} already exists in {repo} and is not this thread's workspace; "
        "rename or delete it"
    )


def workspace_dirty(path: str, changes: int) -> str:
    return (
        f"the worktree {path} has uncommitted changes "
        f"({count_phrase(changes, 'file', verb=False)}); commit or discard them first"
    )


def branch_kept(branch: str, base: str) -> str:
    return f"the branch {branch} is not merged into {base}, so it is kept ([state] prune_unmerged)"


def workspace_shared(path: str) -> str:
    return f"📁 This thread works in the shared directory {path}."


def workspace_not_made(path: str) -> str:
    return f"📁 This thread's workspace {path} is made with its next message."


def workspace_directory(path: str) -> str:
    return f"📁 {path} (a directory of this thread's own)"


def workspace_worktree(path: str, branch: str, changes: list[str]) -> str:
    lines = [f"📁 {path}", f"🌿 {branch}"]
    if not changes:
        lines.append("No uncommitted changes.")
    else:
        lines.append(f"{count_phrase(len(changes), 'changed file', verb=False)}:")
        lines += changes[:10]
        if len(changes) > 10:
            lines.append(f"… and {len(changes) - 10} more")
    return "\n".join(lines)


def workspace_failed(why: str) -> str:
    return f"⚠️ {why.rstrip('.')}."


def workspace_cleaned(path: str, branch: str, branch_deleted: bool, kept: str) -> str:
    """``/reset --clean``: what went, and what stayed."""
    parts = [f"🧹 Removed the workspace {path}"]
    if branch and branch_deleted:
        parts.append(f" and the branch {branch}")
    text = "".join(parts) + "."
    return f"{text} Kept: {kept}." if kept else text


WORKSPACE_IN_USE = "the thread's agent is running again, so its workspace stays"
NO_WORKSPACE = (
    "This thread has no workspace of its own to clean (its agent works in a shared directory)."
)
