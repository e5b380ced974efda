"""Slash commands the broker answers itself, never sent to the agent.

``/reset``, ``/cancel``, ``/status``, ``/model [list|set X]``,
``/mode [list|set X]`` and ``/help``. Each answers with exactly one sentence
or short block of text. Any other ``/word`` is not a broker command: the
router sends it to the agent as ordinary text, because agents have slash
commands of their own (``/compact``, ``/clear``...).

A command may be written ``/status@botname`` (Telegram's form in groups) and
may follow a leading mention of the bot (``@bot /status``); the router strips
the mention first.

``/model`` and ``/mode`` work on the config options the running agent
advertised (the option whose ``category`` or ``id`` is ``model`` or
``mode``). With no running agent there is nothing to ask: the answer says so.
Requests to the agent are bounded by ``timeout`` seconds.
"""

from __future__ import annotations

import re

import attrs
import trio

from broker.acp.client import AcpError
from broker.acp.jsonrpc import PeerClosed, RequestTimeout, RpcError
from broker.acp.schema import ConfigOption
from broker.sessions.pool import NoLiveSession, Pool
from broker.sessions.session import SessionSnapshot

COMMANDS = ("reset", "cancel", "status", "model", "mode", "help", "allow", "deny", "answer")
_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:@(\S+))?(?:\s+(.*))?$", re.DOTALL)
_AGENT_ERRORS = (AcpError, RpcError, RequestTimeout, PeerClosed)

HELP_TEXT = """\
Commands answered by the broker:
/status — this thread's agent: state, uptime, queue, current tool
/cancel — stop the running turn (queued messages still run)
/reset — stop the agent and forget this thread's conversation
/model [list | set NAME] — show or switch the agent's model
/mode [list | set NAME] — show or switch the agent's mode
/allow N, /allow always N — allow what question N asks (once, or from now on)
/deny N, /deny always N — refuse it; /answer N K — pick its K-th option
/help — this list
Any other /command goes to the agent as text."""


@attrs.frozen
class SlashCommand:
    name: str  # one of COMMANDS
    args: tuple[str, ...] = ()


def parse_command(text: str) -> SlashCommand | None:
    """The broker command ``text`` is, or None (plain text, or a ``/word``
    that is not a broker command and goes to the agent)."""
    match = _COMMAND.match(text.strip())
    if match is None or match.group(1).lower() not in COMMANDS:
        return None
    return SlashCommand(match.group(1).lower(), tuple((match.group(3) or "").split()))


async def run_command(command: SlashCommand, pool: Pool, key: str, *, timeout: float) -> str:
    """Carry out ``command`` for thread ``key``; the text of the one reply.

    Never raises for what the agent does (errors, no answer within
    ``timeout``, exit): the reply says what happened.
    """
    if command.name == "help":
        return HELP_TEXT
    if command.name == "status":
        return status_text(pool, key)
    if command.name == "cancel":
        if await pool.cancel(key):
            return "🛑 Cancelling the running turn; its reply says when it has stopped."
        return "Nothing is running in this thread, so there is nothing to cancel."
    if command.name == "reset":
        if await pool.reset(key):
            return (
                "🔄 Reset: this thread's agent is stopped and its conversation forgotten. "
                "Your next message starts a fresh one."
            )
        return "Nothing to reset: this thread has no conversation yet."
    return await _option_command(command, pool, key, timeout)


# --- /status -------------------------------------------------------------------------------


def status_text(pool: Pool, key: str) -> str:
    """What ``/status`` answers: synchronous, never waits."""
    snap = pool.session_snapshot(key)
    if snap is None:
        if pool.is_suspended(key):
            state = "the conversation is suspended and resumes with your next message"
        else:
            state = "your next message starts a new conversation"
        return f"📊 No running agent for this thread; {state}.\n{pool.snapshot().summary()}."
    return _session_lines(snap)


def _session_lines(snap: SessionSnapshot) -> str:
    pid = f" (pid {snap.pid})" if snap.pid else ""
    lines = [f"📊 Agent {snap.agent}{pid}: {snap.state}, up {duration(snap.age_secs)}"]
    if snap.turn_elapsed_secs is not None:
        turn = f"Turn running for {duration(snap.turn_elapsed_secs)}"
        if snap.turn_deadline_in_secs is not None:
            turn += f" (time limit in {duration(snap.turn_deadline_in_secs)})"
        if snap.current_tool:
            turn += f"; tool: {snap.current_tool}"
        lines.append(turn)
        if snap.waiting_for is not None:
            since = duration(snap.waiting_secs or 0)
            lines.append(f"⏸️ Waiting for approval: {snap.waiting_for} (asked {since} ago)")
    elif snap.idle_secs is not None:
        lines.append(f"Idle for {duration(snap.idle_secs)}")
    lines.append(
        f"Queue: {snap.queue_length} waiting · turns done: {snap.turns_done}"
        f" · restarts: {snap.restarts}"
    )
    return "\n".join(lines)


def duration(secs: float) -> str:
    """``75`` -> ``1m 15s``; ``3700`` -> ``1h 1m``; ``4.2`` -> ``4s``."""
    total = max(int(secs), 0)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"


# --- /model and /mode ----------------------------------------------------------------------


def find_option(options: list[ConfigOption], kind: str) -> ConfigOption | None:
    """The option of ``kind`` ("model" or "mode"): by category first, then by id."""
    for option in options:
        if option.category == kind:
            return option
    return next((o for o in options if o.id == kind), None)


def match_value(option: ConfigOption, wanted: str) -> str | None:
    """The option value ``wanted`` names (its value, or its name ignoring case)."""
    for value in option.options:
        if value.value == wanted:
            return value.value
    lowered = wanted.lower()
    for value in option.options:
        if lowered in (value.value.lower(), value.name.lower()):
            return value.value
    return None


def list_text(option: ConfigOption, kind: str) -> str:
    lines = [f"{'🧠' if kind == 'model' else '🎛️'} {option.name or kind.title()}:"]
    for value in option.options:
        mark = " (current)" if value.value == option.current_value else ""
        name = f" — {value.name}" if value.name and value.name != value.value else ""
        lines.append(f"• {value.value}{name}{mark}")
    lines.append(f"Switch with /{kind} set NAME.")
    return "\n".join(lines)


async def _option_command(command: SlashCommand, pool: Pool, key: str, timeout: float) -> str:
    kind = command.name
    args = command.args
    if args and args[0].lower() == "set":
        args = args[1:]
        if not args:
            return f"Say which {kind} to use: /{kind} set NAME (see /{kind} list)."
    elif args and args[0].lower() == "list":
        args = ()
    try:
        with trio.fail_after(timeout):
            options = await pool.config_options(key)
            option = find_option(options, kind)
            if not args:
                if option is None:
                    return f"This agent offers no {kind} choice."
                return list_text(option, kind)
            wanted = " ".join(args)
            if option is None:
                if kind == "mode":
                    await pool.set_mode(key, wanted)
                    return f"🎛️ Mode set to {wanted}."
                return f"This agent offers no {kind} choice."
            value = match_value(option, wanted)
            if value is None:
                choices = ", ".join(v.value for v in option.options)
                return f"Unknown {kind} “{wanted}”. Choose one of: {choices}."
            await pool.set_config_option(key, option.id, value)
            return f"{'🧠' if kind == 'model' else '🎛️'} {kind.title()} set to {value}."
    except NoLiveSession:
        return (
            f"No agent is running in this thread, so there is no {kind} to show or set. "
            "Send a message first, then try again."
        )
    except trio.TooSlowError:
        return f"The agent did not answer the {kind} request within {timeout:g} s."
    except _AGENT_ERRORS as exc:
        return f"The agent could not change the {kind}: {exc}."
