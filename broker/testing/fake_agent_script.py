"""The fake agent's prompt directives: parsing prompt text into a :class:`Script`.

A prompt line whose first character is ``@`` and whose first word is a known directive is a
directive; every other line is the user message. Directives come in two sorts:

* **actions** (``@say``, ``@delay``, ``@tool``, ``@crash`` ...) run one after another, in the order
  they appear, before the reply is streamed;
* **settings** (``@reply``, ``@chunks``, ``@chunk-delay``, ``@late``, ``@stop``, ``@error``,
  ``@empty``) shape the final reply; when given twice the last one wins.

A line starting with ``@`` whose word is not a directive (``@alice thanks``, a chat mention) stays
part of the message, so the demo never trips over mentions. ``@@text`` is the literal line
``@text``. A known directive with bad arguments raises :class:`ScriptError`, which the agent turns
into a JSON-RPC ``-32602`` error naming the line. docs/fake-agent.md is the user-facing reference.

Parsing is pure: no I/O, no clock, so it is tested directly.
"""

from __future__ import annotations

import itertools
import math

import attrs

TOOL_KINDS = frozenset(
    {
        "read",
        "edit",
        "delete",
        "move",
        "search",
        "execute",
        "think",
        "fetch",
        "switch_mode",
        "other",
    }
)
STOP_REASONS = frozenset({"end_turn", "max_tokens", "max_turn_requests", "refusal", "cancelled"})


class ScriptError(ValueError):
    """A directive has bad arguments; the message names the line and what was expected."""


@attrs.frozen
class Say:
    """Stream ``text`` as one agent_message_chunk right now (partial output before a crash/hang)."""

    text: str


@attrs.frozen
class Delay:
    """Sleep ``secs`` (honours session/cancel)."""

    secs: float


@attrs.frozen
class Tool:
    """A visible tool call: pending -> in_progress -> completed (or failed), lasting ``secs``."""

    title: str
    secs: float
    kind: str
    fail: bool = False


@attrs.frozen
class SilentTool:
    """A tool call that runs ``secs`` with no notification at all while it runs."""

    secs: float


@attrs.frozen
class Plan:
    """A plan update with these entries (all pending)."""

    entries: tuple[str, ...]


@attrs.frozen
class Crash:
    """Write ``fatal: simulated crash`` to stderr and exit at once with ``code``."""

    code: int


@attrs.frozen
class Hang:
    """Stay silent forever; ``hard`` also ignores session/cancel (only EOF/signals end it)."""

    hard: bool


@attrs.frozen
class Flood:
    """Send ``count`` tiny agent_message_chunks (texts ``"0 "``, ``"1 "`` ...) as fast as
    possible."""

    count: int


@attrs.frozen
class Malformed:
    """Write one line that is not JSON to stdout, then go on normally."""


@attrs.frozen
class LongLine:
    """Write one valid agent_message_chunk line of exactly ``size`` bytes (newline excluded)."""

    size: int


@attrs.frozen
class Permission:
    """Ask session/request_permission for a ``kind`` tool call titled ``title``; obey the answer.

    ``count`` requests are asked at once (titled ``title 1``, ``title 2`` ... when more than one);
    ``options`` is ``standard`` (the four ACP kinds), ``none`` or ``duplicate`` (two share an id).
    """

    kind: str
    title: str
    count: int = 1
    options: str = "standard"


@attrs.frozen
class Grandchild:
    """Spawn a long-lived ``sleep`` grandchild (same process group) and report its pid."""


@attrs.frozen
class WhereAmI:
    """Add the session's cwd, the process's cwd and the MCP servers it was given to the reply."""


@attrs.frozen
class Write:
    """Append the line ``text`` to ``path``, relative to the session's cwd."""

    path: str
    text: str


@attrs.frozen
class Stderr:
    """Write ``lines`` lines of noise to stderr."""

    lines: int


@attrs.frozen
class Thought:
    """Send an agent_thought_chunk."""

    text: str


@attrs.frozen
class Usage:
    """Send a usage_update with ``used: null`` (as real agents do)."""


@attrs.frozen
class Ext:
    """Send the extension notification ``_fake/status`` carrying ``text``."""

    text: str


Action = (
    Say
    | Delay
    | Tool
    | SilentTool
    | Plan
    | WhereAmI
    | Write
    | Crash
    | Hang
    | Flood
    | Malformed
    | LongLine
    | Permission
    | Grandchild
    | Stderr
    | Thought
    | Usage
    | Ext
)


@attrs.frozen
class RpcFailure:
    """Answer the prompt with this JSON-RPC error instead of a stop reason."""

    code: int
    message: str


@attrs.frozen
class Script:
    """What one prompt asks the agent to do. ``message`` is the text without directive lines."""

    message: str
    actions: tuple[Action, ...] = ()
    reply: str | None = None
    chunks: int = 3
    chunk_delay: float = 0.0
    late_ms: float | None = None
    late_chunks: int = 1
    stop_reason: str = "end_turn"
    error: RpcFailure | None = None
    empty: bool = False
    is_demo: bool = False


def _secs(value: str, what: str, unit: str = "seconds") -> float:
    try:
        secs = float(value)
    except ValueError:
        raise ScriptError(f"{what}: expected {unit}, got {value!r}") from None
    if not math.isfinite(secs) or secs < 0:
        raise ScriptError(f"{what}: {unit} must be a finite number >= 0, got {value!r}")
    return secs


def _count(value: str, what: str, minimum: int = 0) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ScriptError(f"{what}: expected an integer, got {value!r}") from None
    if n < minimum:
        raise ScriptError(f"{what}: must be >= {minimum}, got {n}")
    return n


def _tool(arg: str, fail: bool) -> Tool:
    """``TITLE [SECS] [KIND]``, read from the right so titles may contain spaces."""
    words = arg.split()
    kind = "other"
    secs = 0.5
    if len(words) > 1 and words[-1] in TOOL_KINDS:
        kind = words.pop()
    if len(words) > 1:
        try:
            secs = _secs(words[-1], "@tool")
            words.pop()
        except ScriptError:
            pass
    title = " ".join(words) or ("Failing step" if fail else "Working")
    return Tool(title=title, secs=secs, kind=kind, fail=fail)


def _permission(arg: str, *, count: int = 1, options: str = "standard") -> Permission:
    words = arg.split()
    kind = "edit"
    if words and words[0] in TOOL_KINDS:
        kind = words.pop(0)
    title = " ".join(words) or f"{kind} demo.txt"
    return Permission(kind=kind, title=title, count=count, options=options)


def _permissions(arg: str, at: str) -> Permission:
    count, _, rest = _one_arg(arg, at).partition(" ")
    return _permission(rest, count=_count(count, at, minimum=1))


def _permission_bad(arg: str, at: str) -> Permission:
    options, _, rest = _one_arg(arg, at).partition(" ")
    if options not in ("none", "duplicate"):
        raise ScriptError(f"{at}: expected none or duplicate")
    return _permission(rest, options=options)


def _one_arg(arg: str, what: str) -> str:
    if not arg:
        raise ScriptError(f"{what}: missing argument")
    return arg


def _action(name: str, arg: str) -> Action | None:
    """The action for directive ``name`` or None if ``name`` is not an action."""
    at = f"@{name}"
    match name:
        case "say":
            return Say(_one_arg(arg, at))
        case "delay":
            return Delay(_secs(_one_arg(arg, at), at))
        case "tool" | "tool-fail":
            return _tool(arg, fail=name == "tool-fail")
        case "silent-tool":
            return SilentTool(_secs(_one_arg(arg, at), at))
        case "plan":
            entries = tuple(e.strip() for e in arg.split(";") if e.strip())
            if not entries:
                raise ScriptError("@plan: expected entries separated by ';'")
            return Plan(entries)
        case "crash":
            return Crash(_count(arg, at) if arg else 1)
        case "hang" | "hang-hard":
            return Hang(hard=name == "hang-hard")
        case "flood":
            return Flood(_count(_one_arg(arg, at), at, minimum=1))
        case "malformed":
            return Malformed()
        case "longline":
            return LongLine(_count(_one_arg(arg, at), at, minimum=1))
        case "permission":
            return _permission(arg)
        case "permissions":
            return _permissions(arg, at)
        case "permission-bad":
            return _permission_bad(arg, at)
        case "grandchild":
            return Grandchild()
        case "whereami":
            return WhereAmI()
        case "write":
            path, _, text = _one_arg(arg, at).partition(" ")
            return Write(path, text)
        case "stderr":
            return Stderr(_count(arg, at) if arg else 10)
        case "thought":
            return Thought(arg or "Thinking about it...")
        case "usage":
            return Usage()
        case "ext":
            return Ext(arg or "working")
    return None


SETTINGS = frozenset({"reply", "chunks", "chunk-delay", "late", "stop", "error", "empty"})


def _setting(script: Script, name: str, arg: str) -> Script:
    at = f"@{name}"
    match name:
        case "reply":
            return attrs.evolve(script, reply=_one_arg(arg, at).replace("\\n", "\n"))
        case "chunks":
            return attrs.evolve(script, chunks=_count(_one_arg(arg, at), at, minimum=1))
        case "chunk-delay":
            return attrs.evolve(script, chunk_delay=_secs(_one_arg(arg, at), at))
        case "late":
            words = _one_arg(arg, at).split()
            late_ms = _secs(words[0], at, unit="milliseconds")
            late_chunks = _count(words[1], at, minimum=1) if len(words) > 1 else 1
            return attrs.evolve(script, late_ms=late_ms, late_chunks=late_chunks)
        case "stop":
            if arg not in STOP_REASONS:
                raise ScriptError(f"@stop: expected one of {', '.join(sorted(STOP_REASONS))}")
            return attrs.evolve(script, stop_reason=arg)
        case "error":
            code_text, _, message = _one_arg(arg, at).partition(" ")
            code = _count(code_text.lstrip("-"), at) * (-1 if code_text.startswith("-") else 1)
            return attrs.evolve(
                script, error=RpcFailure(code, message.strip() or "simulated error")
            )
        case "empty":
            return attrs.evolve(script, empty=True)
    raise AssertionError(name)


def is_directive(line: str) -> bool:
    """True if ``line`` is a directive line (known ``@name`` at the start)."""
    if not line.startswith("@") or line.startswith("@@"):
        return False
    name = line[1:].split(maxsplit=1)[0] if len(line) > 1 and not line[1].isspace() else ""
    return name in SETTINGS or name in _ACTION_NAMES


_ACTION_NAMES = frozenset(
    {
        "say",
        "delay",
        "tool",
        "tool-fail",
        "silent-tool",
        "plan",
        "crash",
        "hang",
        "hang-hard",
        "flood",
        "malformed",
        "longline",
        "permission",
        "permissions",
        "permission-bad",
        "grandchild",
        "whereami",
        "write",
        "stderr",
        "thought",
        "usage",
        "ext",
    }
)


def parse_script(text: str) -> Script:
    """Split prompt ``text`` into directives and message; raise :class:`ScriptError` on bad args.

    A prompt without any directive is the demo turn (``is_demo``): a short simulated tool call and
    a reply streamed in a few paced chunks.
    """
    script = Script(message="")
    actions: list[Action] = []
    message: list[str] = []
    seen_directive = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not is_directive(line):
            message.append(raw[1:] if raw.startswith("@@") else raw)
            continue
        seen_directive = True
        name, _, arg = line[1:].partition(" ")
        try:
            action = _action(name, arg.strip())
            if action is not None:
                actions.append(action)
            else:
                script = _setting(script, name, arg.strip())
        except ScriptError as exc:
            raise ScriptError(f"line {number} ({line!r}): {exc}") from None
    if not seen_directive:
        actions.append(Tool(title="Reading the conversation", secs=0.3, kind="read"))
        script = attrs.evolve(script, chunk_delay=0.05, is_demo=True)
    return attrs.evolve(script, message="\n".join(message).strip(), actions=tuple(actions))


def split_text(text: str, parts: int) -> list[str]:
    """Split ``text`` into ``min(parts, len(text))`` non-empty pieces of near-equal length.

    Each cut moves to just after the nearest space that keeps every piece non-empty, so the demo
    streams whole words; without spaces the cuts are exact.
    """
    if not text:
        return []
    parts = max(1, min(parts, len(text)))
    even = [len(text) * i // parts for i in range(parts + 1)]
    cuts = [0]
    for target, next_target in itertools.pairwise(even[1:]):
        options = [target]
        if (back := text.rfind(" ", cuts[-1], target)) != -1:
            options.append(back + 1)
        if (ahead := text.find(" ", target, next_target - 1)) != -1:
            options.append(ahead + 1)
        cuts.append(min(options[1:] or options, key=lambda cut: abs(cut - target)))
    cuts.append(len(text))
    return [text[a:b] for a, b in itertools.pairwise(cuts)]
