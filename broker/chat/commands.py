"""Slash commands the broker answers itself, never sent to the agent.

``/reset``, ``/cancel``, ``/status``, ``/model [list|set X]``,
``/mode [list|set X]``, ``/schedules`` and ``/help``. Each answers with exactly one sentence
or short block of text. Any other ``/word`` is not a broker command: the
router sends it to the agent as ordinary text, because agents have slash
commands of their own (``/compact``, ``/clear``...).

A command may be written ``/status@botname`` (Telegram's form in groups) and
may follow a leading mention of the bot (``@bot /status``); the router strips
the mention first.

``/model`` and ``/mode`` work on the config options the running agent
advertised (the option whose ``category`` or ``id`` is ``model`` or
``mode``). With no running agent there is nothing to ask: the answer says so.
Requests to the agent are bounded by the caller's cancel scope.
"""

from __future__ import annotations

import logging
import re
import time

import attrs

from broker import sentences
from broker.acp.client import AcpError
from broker.acp.jsonrpc import PeerClosed, RpcError
from broker.acp.schema import ConfigOption
from broker.chat.routes import RouteChoice
from broker.chat.schedules import ScheduleSource, schedules_text
from broker.config import DEFAULT_PROFILE
from broker.sentences import HELP_TEXT
from broker.sessions.pool import NoLiveSession, Pool
from broker.sessions.session import SessionSnapshot
from broker.sessions.workspace import WorkspaceError

log = logging.getLogger(__name__)

COMMANDS = (
    "reset",
    "cancel",
    "status",
    "model",
    "mode",
    "schedules",
    "help",
    "allow",
    "deny",
    "answer",
    "agent",
    "workspace",
)
_COMMAND = re.compile(r"^/([A-Za-z][\w-]*)(?:@(\S+))?(?:\s+(.*))?$", re.DOTALL)
_AGENT_ERRORS = (AcpError, RpcError, PeerClosed)


@attrs.frozen
class CommandContext:
    """What a command knows of its event: the routes' choice for the thread and,
    when the sender may not switch its agent, why not."""

    route: RouteChoice = attrs.field(factory=lambda: RouteChoice(DEFAULT_PROFILE))
    switch_refusal: str | None = None


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


async def run_command(
    command: SlashCommand,
    pool: Pool,
    key: str,
    context: CommandContext | None = None,
    *,
    schedules: ScheduleSource | None = None,
) -> str:
    """Carry out ``command`` for thread ``key``; the text of the one reply.

    Never raises for what the agent does (errors, exit): the reply says what
    happened. It sets no deadline: the caller bounds a slow agent's answer
    with its cancel scope (:func:`sentences.command_timed_out` says so).
    """
    context = context or CommandContext(RouteChoice(pool.config.default_profile()))
    if command.name == "help":
        return HELP_TEXT
    if command.name == "agent":
        return await agent_command(command, pool, key, context)
    if command.name == "workspace":
        return await workspace_text(pool, key, context.route.profile)
    if command.name == "status":
        return status_text(pool, key)
    if command.name == "schedules":
        return schedules_text(schedules.snapshot() if schedules else (), time.time())
    if command.name == "cancel":
        dropped = pool.drop_held(key, "/cancel")  # first: the batch must not start next
        return sentences.cancel_answer(await pool.cancel(key), dropped)
    if command.name == "reset":
        if "--clean" in command.args:
            return await clean_reset(pool, key, context.route.profile)
        return sentences.RESET_DONE if await pool.reset(key) else sentences.NOTHING_TO_RESET
    return await _option_command(command, pool, key)


# --- /agent, /workspace, /reset --clean --------------------------------------------------------


async def agent_command(
    command: SlashCommand, pool: Pool, key: str, context: CommandContext
) -> str:
    """``/agent``: the profiles and the thread's; ``/agent NAME``: switch to NAME."""
    profiles = pool.config.agent_profiles()
    current = pool.thread_profile(key, context.route.profile)
    if not command.args:
        listed = [(name, " ".join([a.command, *a.args])) for name, a in profiles.items()]
        return sentences.agent_list(listed, current)
    wanted = command.args[0]
    if wanted not in profiles:
        return sentences.agent_unknown(wanted, list(profiles))
    if context.switch_refusal is not None:
        return context.switch_refusal
    if wanted == current:
        return sentences.agent_already(wanted)
    await pool.switch_profile(key, wanted)
    return sentences.agent_switched(wanted)


async def workspace_text(pool: Pool, key: str, routed: str) -> str:
    """``/workspace``: the thread's directory, branch and ``git status --short`` summary."""
    workspace = pool.thread_workspace(key, routed)
    if workspace is None:
        return sentences.workspace_shared(pool.thread_cwd(key, routed))
    try:
        return await pool.workspaces.describe(workspace)
    except WorkspaceError as exc:
        log.warning("%s: /workspace: %s", key, exc)
        return sentences.workspace_failed(str(exc))


async def clean_reset(pool: Pool, key: str, routed: str) -> str:
    """``/reset --clean``: reset, then remove the thread's workspace (what stays is said)."""
    workspace = pool.thread_workspace(key, routed)
    await pool.reset(key)
    if workspace is None:
        return sentences.RESET_DONE + "\n" + sentences.NO_WORKSPACE
    try:
        removal = await pool.clean_workspace(workspace)
    except WorkspaceError as exc:
        log.warning("%s: /reset --clean: %s", key, exc)
        return sentences.RESET_DONE + "\n" + sentences.workspace_failed(str(exc))
    log.info("%s: workspace %s removed (%s)", key, workspace.path, removal.kept or "whole")
    cleaned = sentences.workspace_cleaned(
        workspace.path, workspace.branch, removal.branch_deleted, removal.kept
    )
    return sentences.RESET_DONE + "\n" + cleaned


# --- /status -------------------------------------------------------------------------------


def status_text(pool: Pool, key: str) -> str:
    """What ``/status`` answers: synchronous, never waits."""
    snap = pool.session_snapshot(key)
    blocked = pool.blocked_thread(key)
    if blocked is not None and snap is None:
        until = sentences.wall_clock(blocked.until)
        return sentences.status_blocked(blocked.reason, until, blocked.detail)
    if snap is None:
        state = sentences.STATUS_SUSPENDED if pool.is_suspended(key) else sentences.STATUS_NEW
        return sentences.status_no_agent(state, pool.snapshot().summary())
    return _session_lines(snap)


def _session_lines(snap: SessionSnapshot) -> str:
    lines = [sentences.status_agent(snap.agent, snap.pid, snap.state, snap.age_secs)]
    if snap.turn_elapsed_secs is not None:
        lines.append(
            sentences.status_turn(
                snap.turn_elapsed_secs, snap.turn_deadline_in_secs, snap.current_tool
            )
        )
        if snap.waiting_for is not None:
            lines.append(sentences.status_waiting(snap.waiting_for, snap.waiting_secs or 0))
    elif snap.idle_secs is not None:
        lines.append(sentences.status_idle(snap.idle_secs))
    lines.append(sentences.status_counts(snap.queue_length, snap.turns_done, snap.restarts))
    return "\n".join(lines)


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
    lines = [f"{sentences.option_icon(kind)} {option.name or kind.title()}:"]
    for value in option.options:
        mark = " (current)" if value.value == option.current_value else ""
        name = f" — {value.name}" if value.name and value.name != value.value else ""
        lines.append(f"• {value.value}{name}{mark}")
    lines.append(sentences.option_switch_hint(kind))
    return "\n".join(lines)


async def _option_command(command: SlashCommand, pool: Pool, key: str) -> str:
    kind = command.name
    args = command.args
    if args and args[0].lower() == "set":
        args = args[1:]
        if not args:
            return sentences.option_set_usage(kind)
    elif args and args[0].lower() == "list":
        args = ()
    try:
        options = await pool.config_options(key)
        option = find_option(options, kind)
        if not args:
            return sentences.option_missing(kind) if option is None else list_text(option, kind)
        wanted = " ".join(args)
        if option is None:
            if kind == "mode":
                await pool.set_mode(key, wanted)
                return sentences.option_set(kind, wanted)
            return sentences.option_missing(kind)
        value = match_value(option, wanted)
        if value is None:
            return sentences.option_unknown(kind, wanted, [v.value for v in option.options])
        await pool.set_config_option(key, option.id, value)
        return sentences.option_set(kind, value)
    except NoLiveSession:
        return sentences.option_no_agent(kind)
    except _AGENT_ERRORS as exc:
        return sentences.option_failed(kind, str(exc))
