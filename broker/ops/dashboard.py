"""Watching a running broker: ``agent-broker dashboard`` and ``agent-broker status``.

The dashboard is a rich ``Live`` view fed by the broker's ``/status``
WebSocket (see :mod:`broker.ops.status` and docs/status.md). Everything on screen
is built by :func:`render_dashboard`, a pure function of the last status
document and the connection error, if any. The feed reconnects by itself
with backoff and says so while the broker is down; Ctrl-C quits with 0.

``status`` fetches one document with ``GET /status`` and prints it as JSON
or as a short table.

The URL given (``ws://HOST:PORT``, with ``?token=`` when the server has a
token) has no path or ``/ws``; ``/status`` is put in its place. The token is
never printed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import trio
import trio_websocket
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from broker import sentences
from broker.ops.status import STATUS_PATH, STATUS_SCHEMA
from broker.sentences import duration

EX_OK = 0
EX_UNAVAILABLE = 69  # the broker is not reachable
EX_NOPERM = 77  # the broker refused the token
CONNECT_TIMEOUT_SECS = 5.0
SILENCE_TIMEOUT_SECS = 15.0  # the broker sends at least every 2 s; this much silence is death
BACKOFF_INITIAL_SECS = 1.0
BACKOFF_MAX_SECS = 10.0
EVENTS_SHOWN = 12

STATE_STYLES = {
    "busy": "bold yellow",
    "idle": "green",
    "starting": "cyan",
    "spare": "blue",
    "stopping": "magenta",
    "dead": "bold red",
}
EVENT_STYLES = {
    "started": "green",
    "resumed": "cyan",
    "evicted": "yellow",
    "idle": "dim",
    "crashed": "bold red",
    "start_failed": "red",
    "blocked": "bold red",
    "timed_out": "bold magenta",
    "reset": "blue",
    "dropped": "yellow",
}
RESULT_STYLES = {
    "completed": "green",
    "skipped": "yellow",
    "missed": "yellow",
    "failed": "bold red",
    "interrupted": "magenta",
}


class StatusError(Exception):
    """The broker could not be asked; the message says why (the token is never in it)."""

    def __init__(self, message: str, exit_code: int = EX_UNAVAILABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- URLs -------------------------------------------------------------------------


def status_url(url: str, *, http: bool = False) -> str:
    """``url`` with the path ``/status``; ``http=True`` gives the http(s):// form.

    A path of ``""``, ``/`` or ``/ws`` is replaced; one already ending in
    ``/status`` is kept. The query (``?token=``) is kept.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme
    if http:
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    else:
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
    path = parts.path.rstrip("/")
    if not path.endswith(STATUS_PATH):
        path = path.removesuffix("/ws") + STATUS_PATH
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def shown_url(url: str) -> str:
    """``url`` without its query, so a token never reaches the screen."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _refusal(status: int) -> str:
    if status == 401:
        return "it requires a token (set [server] token in broker.toml or pass --url ...?token=)"
    if status == 403:
        return "it refused the token"
    return f"it answered HTTP {status}"


def _cause(exc: BaseException) -> str:
    """The most telling sentence in an exception chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno or 0) > 0:
            return os.strerror(seen.errno or 0).lower()
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        if isinstance(seen, trio_websocket.ConnectionClosed):
            return "the connection closed"
        if isinstance(seen, trio.TooSlowError):
            return "no answer in time"
        if isinstance(seen, BaseExceptionGroup) and seen.exceptions:
            seen = seen.exceptions[0]  # e.g. every address refused: the first says why
        else:
            seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


# -- formatting -------------------------------------------------------------------


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def header(doc: dict[str, Any]) -> Text:
    b = doc["broker"]
    line = Text.assemble(
        ("agent-broker ", "bold"),
        (b["version"], "bold"),
        f"  pid {b['pid']}  up {duration(b['uptime_secs'])}",
    )
    server = doc["frontends"]["server"]
    if server is not None:
        line.append(f"  listening on {server['listen']}")
    if b["closing"]:
        line.append("  SHUTTING DOWN", style="bold red")
    return line


def gauges(doc: dict[str, Any], width: int | None = None) -> Table:
    pool = doc["pool"]
    states = pool["by_state"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    narrow = width is not None and width < 100
    bar = ProgressBar(
        total=max(1, pool["max_sessions"]), completed=pool["active"], width=16 if narrow else 30
    )
    detail = ", ".join(
        f"{states.get(state, 0)} {state}" for state in ("busy", "idle", "starting", "stopping")
    )
    active = Table.grid(padding=(0, 1))
    active.add_row(bar, f"{pool['active']}/{pool['max_sessions']} ({detail})")
    grid.add_row("active", active)
    grid.add_row("suspended", str(pool["suspended"]))
    profiles = pool.get("profiles", {})
    if len(profiles) > 1:
        grid.add_row("profiles", profile_gauges(profiles))
    grid.add_row("spares", f"{pool['spares_ready']}/{pool['spares']} ready")
    grid.add_row("queued", str(pool["queued"]))
    counters = doc["counters"]
    grid.add_row(
        "turns",
        f"{counters['turns_submitted']} submitted, {counters['turns_completed']} completed, "
        f"{counters['timed_out']} timed out, {counters['cancelled']} cancelled, "
        f"{counters['refused_busy'] + counters['refused_pool_full']} refused",
    )
    grid.add_row(
        "agents",
        f"{counters['spawned']} spawned, {counters['resumed']} resumed, "
        f"{counters['evicted']} evicted, {counters['crashed']} crashed",
    )
    return grid


def profile_gauges(profiles: dict[str, Any]) -> str:
    """Each profile's sessions (out of its share, when it has one) and busy ones,
    e.g. ``default 3 (1 busy), reviewer 1/2 (0 busy)``."""
    parts = []
    for name, gauge in profiles.items():
        share = f"/{gauge['share']}" if gauge["share"] else ""
        parts.append(f"{name} {gauge['sessions']}{share} ({gauge['busy']} busy)")
    return ", ".join(parts)


def _tool(session: dict[str, Any]) -> str | Text:
    """The running tool, or the approval a person is asked for (highlighted)."""
    waiting = session.get("waiting_for_approval")
    if waiting is None:
        return _text(session["current_tool"])
    # the thread waits on a person, not on the agent
    text = sentences.waiting_for_approval(waiting, session.get("waiting_secs"))
    return Text(text, style="bold black on yellow")


# The sessions table's columns: (name, justify, the cell of a session), in display order.
_COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], str | Text]], ...] = (
    ("thread", "left", lambda s: _text(s["thread_key"])),
    ("state", "left", lambda s: _state(s["state"])),
    ("profile", "left", lambda s: _text(s.get("profile"))),
    ("pid", "right", lambda s: _text(s["pid"])),
    ("up", "right", lambda s: duration(s["age_secs"])),
    ("idle", "right", lambda s: duration(s["idle_secs"])),
    ("turn", "right", lambda s: duration(s["turn_elapsed_secs"])),
    ("ceiling in", "right", lambda s: duration(s["turn_deadline_in_secs"])),
    ("queue", "right", lambda s: str(s["queue_length"])),
    ("tool", "left", lambda s: _tool(s)),
    ("restarts", "right", lambda s: str(s["restarts"])),
)
# Which columns stay when the screen is narrow, most wanted first.
_PRIORITY = (
    "thread",
    "state",
    "tool",
    "profile",
    "up",
    "turn",
    "idle",
    "queue",
    "pid",
    "ceiling in",
)
# Thread and tool get this many characters before lower columns are added (and never fewer),
# then what is left; longer values are cut with "…".
_SHRINKING = {"thread": 24, "tool": 16}


def table_columns(doc: dict[str, Any], width: int | None) -> dict[str, int | None]:
    """The columns that fit in ``width`` characters, in display order, each
    with its width (None: as wide as it needs; all of them when ``width`` is
    None). Columns are taken by priority; thread and state always. Thread
    and tool share what is left, cut with "…" but never below their minimum.
    The profile column is there only when the broker has several profiles."""
    several = len(doc["pool"].get("profiles", {})) > 1
    names = [name for name, _, _ in _COLUMNS if several or name != "profile"]
    cells = {name: cell for name, _, cell in _COLUMNS}
    if width is None:
        return dict.fromkeys(names)

    def content(name: str) -> int:
        return max([len(name)] + [len(str(cells[name](s))) for s in doc["sessions"]])

    def need(name: str) -> int:
        return min(content(name), _SHRINKING.get(name, content(name))) + 3  # padding, border

    chosen: list[str] = []
    used = 1
    for name in (*(n for n in _PRIORITY if n in names), *(n for n in names if n not in _PRIORITY)):
        if len(chosen) < 2 or used + need(name) <= width:
            chosen.append(name)
            used += need(name)
    widths: dict[str, int | None] = {n: need(n) - 3 for n in names if n in chosen}
    spare = width - used
    for name in ("thread", "tool"):  # the rest goes to the thread, then to the tool
        if name in widths:
            grow = max(min(content(name) - (widths[name] or 0), spare), 0)
            widths[name] = (widths[name] or 0) + grow
            spare -= grow
    return widths


def middle_cut(text: str, width: int) -> str:
    """``text`` in ``width`` characters, its middle replaced by "…" when too long."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def sessions_table(
    doc: dict[str, Any],
    *,
    expand: bool = True,
    width: int | None = None,
    max_rows: int | None = None,
) -> Table:
    """The live sessions, with the columns that fit ``width`` and at most
    ``max_rows`` rows (the rest counted in the caption)."""
    shown = table_columns(doc, width)
    table = Table(title="Sessions", title_justify="left", expand=expand and width is None)
    columns = [(name, justify, cell) for name, justify, cell in _COLUMNS if name in shown]
    for name, justify, _ in columns:
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=True,
            overflow="ellipsis",
            width=shown[name],
        )
    sessions = doc["sessions"]
    rows = sessions if max_rows is None else sessions[: max(max_rows, 1)]
    for s in rows:
        values = [cell(s) for _, _, cell in columns]
        thread_width = shown["thread"]
        if thread_width is not None and isinstance(values[0], str):
            values[0] = middle_cut(values[0], thread_width)  # thread keys differ at the end
        table.add_row(*values)
    if not sessions:
        table.caption = "no live sessions"
    elif len(rows) < len(sessions):
        table.caption = f"… {len(sessions) - len(rows)} more"
    return table


def threads_without_agent(doc: dict[str, Any]) -> Text:
    """The suspended and the blocked threads, by name."""
    pool = doc["pool"]
    lines = Text()
    suspended = pool.get("suspended_threads", [])
    if suspended:
        more = pool["suspended"] - len(suspended)
        lines.append("suspended: ", style="bold")
        lines.append(", ".join(suspended) + (f" and {more} more" if more > 0 else ""))
    for blocked in pool.get("blocked_threads", []):
        if lines:
            lines.append("\n")
        lines.append("blocked: ", style="bold red")
        lines.append(
            f"{blocked['thread_key']} for {duration(blocked['secs_left'])} ({blocked['reason']})"
        )
    lines.no_wrap = False
    return lines


def frontends(doc: dict[str, Any]) -> Text:
    server, gateway = doc["frontends"]["server"], doc["frontends"].get("gateway")
    lines = Text()
    if server is None:
        lines.append("server: not running", style="dim")
    else:
        clients, waiting = server["clients"], server["outbox_waiting"]
        lines.append(
            f"server: {len(clients)} client(s) connected"
            f"{' (' + ', '.join(clients) + ')' if clients else ''}, "
            f"{server['events_received']} events received"
            f"{f', {waiting} replies waiting in the outbox' if waiting else ''}"
        )
    if gateway is not None:
        waiting = gateway["outbox_waiting"]
        lines.append(f"\ngateway {gateway['url']}: ")
        if gateway["connected"]:
            lines.append("connected", style="green")
        else:
            lines.append("disconnected", style="bold red")
            if gateway["last_error"]:
                lines.append(f" ({gateway['last_error']})")
        lines.append(
            f", {gateway['connects']} connects, {gateway['events_received']} events"
            f"{f', {waiting} replies in the outbox' if waiting else ''}"
        )
    discord = doc["frontends"].get("discord")
    if discord is not None:
        lines.append(f"\ndiscord {discord['bot'] or 'bot'}: ")
        if discord["connected"]:
            lines.append("ready", style="green")
        elif discord["fatal"]:
            lines.append(f"stopped: {discord['fatal']}", style="bold red")
        else:
            lines.append(discord["state"], style="bold red")
            if discord["last_error"]:
                lines.append(f" ({discord['last_error']})")
        waiting = discord["outbox_waiting"]
        lines.append(
            f", {discord['events_received']} events, {discord['resumes']} resumes, "
            f"{discord['rate_limited']} rate-limited"
            f"{f', {waiting} replies in the outbox' if waiting else ''}"
        )
    slack = doc["frontends"].get("slack")
    if slack is not None:
        lines.append("\nslack: ")
        state = slack["state"]
        if state == "connected":
            lines.append(f"connected ({slack['connections']} socket(s))", style="green")
        elif state == "stopped":
            lines.append(f"stopped: {slack['fatal']}", style="bold red")
        else:
            lines.append(state, style="bold red")
            if slack["last_error"]:
                lines.append(f" ({slack['last_error']})")
        waiting = slack["outbox_waiting"]
        lines.append(
            f", {slack['events_received']} events, {slack['rate_limited']} rate limited"
            f"{f', {waiting} replies in the outbox' if waiting else ''}"
        )
    return lines


def schedules_table(doc: dict[str, Any], *, expand: bool = True) -> Table | None:
    """Each schedule's next run and last result; None when there are none."""
    schedules = doc.get("schedules") or []
    if not schedules:
        return None
    table = Table(title="Schedules", title_justify="left", expand=expand)
    for name in ("schedule", "cron", "target", "next run", "last run", "last result"):
        table.add_column(name, no_wrap=name != "last result")
    now = doc["generated_at"]
    for item in schedules:
        next_run = item["next_run"]
        last_run = item["last_run"]
        result = item["last_result"] or "never ran"
        if item["last_detail"]:
            result += f" ({item['last_detail']})"
        if item["running"]:
            result = f"running · {result}"
        table.add_row(
            item["name"],
            f"{item['cron']} {item['tz']}",
            item["target"],
            "-" if next_run is None else f"in {duration(next_run - now)}",
            "-" if last_run is None else f"{duration(now - last_run)} ago",
            Text(result, style=RESULT_STYLES.get(item["last_result"] or "", "")),
        )
    return table


def events(doc: dict[str, Any], limit: int = EVENTS_SHOWN) -> Table:
    table = Table.grid(padding=(0, 2))
    table.title = "Recent events"
    table.title_justify = "left"
    for event in reversed(doc["recent"][-limit:] if limit > 0 else []):
        table.add_row(
            _clock(event["at"]),
            Text(event["kind"], style=EVENT_STYLES.get(event["kind"], "")),
            Text(event["thread_key"], overflow="ellipsis", no_wrap=True),
            Text(event["detail"], overflow="ellipsis", no_wrap=True),
        )
    if not doc["recent"]:
        table.add_row(Text("nothing yet", style="dim"))
    return table


def _lines(renderable: RenderableType, width: int) -> int:
    """How many lines ``renderable`` takes at ``width`` (rendered in memory)."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    return len(console.render_lines(renderable, pad=False))


def render_dashboard(
    doc: dict[str, Any] | None,
    *,
    error: str | None,
    width: int | None = None,
    height: int | None = None,
) -> RenderableType:
    """The whole screen for the last status document ``doc`` (None before the
    first) and the connection problem ``error`` (None while connected).

    With both, the last known state is shown under the error, marked as such.
    Given the screen's ``width`` and ``height``, the sessions table keeps the
    columns that fit (by priority: thread, state, tool, age first) and the
    rows that fit, and the recent events take what height is left.
    """
    parts: list[RenderableType] = []
    if error is not None:
        parts.append(Panel(Text(error, style="bold red"), title="not connected", expand=True))
    if doc is None:
        if error is None:
            parts.append(Text("connecting…", style="dim"))
        return Group(*parts)
    if error is not None:
        parts.append(Text(f"last known state, as of {_clock(doc['generated_at'])}:", style="dim"))
    parts += [header(doc), gauges(doc, width), frontends(doc)]
    without_agent = threads_without_agent(doc)
    if without_agent:
        parts.append(without_agent)
    schedules = schedules_table(doc, expand=width is None)
    if height is None:
        parts.append(sessions_table(doc, width=width))
        parts += [schedules] if schedules is not None else []
        parts.append(events(doc))
        return Group(*parts)
    measure = width or 80
    left = height - _lines(Group(*parts), measure)
    rows = max(min(len(doc["sessions"]), left - 6), 1)  # title, borders, header, caption
    table = sessions_table(doc, width=width, max_rows=rows)
    left -= _lines(table, measure)
    parts.append(table)
    if schedules is not None and _lines(schedules, measure) <= left:
        parts.append(schedules)  # below the sessions, when it fits whole
        left -= _lines(schedules, measure)
    if left >= 3:
        parts.append(events(doc, limit=left - 1))
    return Group(*parts)


# -- the live dashboard -----------------------------------------------------------

Show = Callable[[dict[str, Any] | None, str | None], None]


def _parse(message: str | bytes) -> dict[str, Any]:
    doc = json.loads(message)
    if not isinstance(doc, dict) or doc.get("schema") != STATUS_SCHEMA:
        raise ValueError(f"not a {STATUS_SCHEMA} document")
    return doc


async def _read_feed(
    ws: trio_websocket.WebSocketConnection, show: Show
) -> tuple[dict[str, Any] | None, str]:
    """Show each document until the feed ends; returns (last document, why it ended)."""
    doc: dict[str, Any] | None = None
    try:
        while True:
            with trio.fail_after(SILENCE_TIMEOUT_SECS):
                message = await ws.get_message()
            doc = _parse(message)
            show(doc, None)
    except trio_websocket.ConnectionClosed:
        return doc, "the broker closed the connection"
    except trio.TooSlowError:
        return doc, f"no status for {SILENCE_TIMEOUT_SECS:g} s"
    except ValueError as exc:
        return doc, f"bad status document: {exc}"


async def follow(url: str, show: Show) -> None:
    """Show every document of the ``/status`` feed at ``url`` until cancelled.

    On failure the last document stays shown with the reason and the retry
    delay; reconnects back off from 1 s to 10 s, reset after a connection
    that delivered a document. Never raises but Cancelled.
    """
    ws_url, where = status_url(url), shown_url(status_url(url))
    delay, doc = BACKOFF_INITIAL_SECS, None
    while True:
        try:
            async with trio_websocket.open_websocket_url(
                ws_url, connect_timeout=CONNECT_TIMEOUT_SECS
            ) as ws:
                latest, why = await _read_feed(ws, show)
            if latest is not None:
                doc, delay = latest, BACKOFF_INITIAL_SECS
            problem = f"lost the broker at {where}: {why}"
        except trio_websocket.ConnectionRejected as exc:
            problem = f"the broker at {where} refused the dashboard: {_refusal(exc.status_code)}"
        except (OSError, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed) as exc:
            problem = f"broker not reachable at {where} ({_cause(exc)})"
        show(doc, f"{problem}, retrying in {delay:g} s")
        await trio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_SECS)


async def _dashboard(url: str, console: Console) -> None:
    with Live(
        render_dashboard(None, error=None),
        console=console,
        screen=console.is_terminal,
        refresh_per_second=4,
        vertical_overflow="crop",
    ) as live:

        def show(doc: dict[str, Any] | None, error: str | None) -> None:
            width, height = console.size
            screen = render_dashboard(doc, error=error, width=width, height=height)
            live.update(screen, refresh=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, url, show)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


def main(url: str) -> int:
    """``agent-broker dashboard``: run until Ctrl-C (or SIGTERM); returns 0."""
    try:
        trio.run(_dashboard, url, Console())
    except* KeyboardInterrupt:  # Ctrl-C before the signal receiver was in place
        pass
    return EX_OK


# -- agent-broker status --------------------------------------------------------


def fetch_status(url: str, *, timeout: float = CONNECT_TIMEOUT_SECS) -> dict[str, Any]:
    """One document by ``GET /status``; raises :class:`StatusError` (blocking call)."""
    http_url = status_url(url, http=True)
    where = shown_url(http_url)
    try:
        with urllib.request.urlopen(http_url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        code = EX_NOPERM if exc.code in (401, 403) else EX_UNAVAILABLE
        raise StatusError(f"the broker at {where} refused: {_refusal(exc.code)}", code) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        text = _cause(reason) if isinstance(reason, BaseException) else str(reason)
        raise StatusError(f"broker not reachable at {where} ({text})") from None
    try:
        return _parse(body)
    except ValueError as exc:
        raise StatusError(f"{where} answered something else: {exc}") from None


def print_status(url: str, as_json: bool) -> int:
    """``agent-broker status [--json]``: 0, or 69 (unreachable) / 77 (token
    refused) with one line on stderr."""
    try:
        doc = fetch_status(url)
    except StatusError as exc:
        print(f"agent-broker: {exc}", file=sys.stderr)
        return exc.exit_code
    if as_json:
        print(json.dumps(doc, indent=2))
        return EX_OK
    console = Console()
    if not console.is_terminal:
        console.width = 160  # a pipe or file: wide rows rather than wrapped cells
    console.print(header(doc))
    console.print(gauges(doc))
    console.print(frontends(doc))
    if doc["sessions"]:
        console.print(sessions_table(doc, expand=False))
    else:
        console.print("no live sessions")
    if (schedules := schedules_table(doc, expand=False)) is not None:
        console.print(schedules)
    return EX_OK
