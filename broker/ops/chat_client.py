"""``agent-broker chat``: talk to the agent of a running broker from a terminal.

A small client of the WebSocket server's ``/ws`` endpoint, speaking the same
openab protocol v1 as any gateway. Each run is its own conversation: the
channel id is fresh per run (thread key ``cli:<user>-<random>``), the sender
is the local user.

* A line typed and sent with Enter goes to the broker as one event. Lines
  starting with ``/`` go too: the broker answers its own commands
  (``/status``, ``/cancel``, ``/reset``, ``/model``, ``/mode``, ``/help``) and
  passes any other to the agent. ``/quit`` and ``/exit`` end the chat.
* With streaming on (``[server] streaming``, the default) the broker's first
  message of a reply carries a ``request_id``: the chat answers with a
  message id of its own and shows the text growing as ``edit_message``
  frames arrive. Without streaming each reply is printed when it comes.
  Code blocks are highlighted.
* Ctrl-C sends ``/cancel`` (the running turn stops and its reply says so);
  a second Ctrl-C within :data:`QUIT_WINDOW_SECS`, or Ctrl-D, quits.
* A question of the agent (a permission it asks for) is a prompt answered
  with one key: the option's number sends the command that picks it
  (``/allow 3``, ...). Esc leaves the prompt to type instead. Without a
  terminal, a line holding just the number does the same.

Exit status: 0 when the user quits; 69 (EX_UNAVAILABLE) when the broker
cannot be reached or closes the connection; 77 (EX_NOPERM) when it refuses
the token. There is no reconnect: run the command again.
"""

from __future__ import annotations

import datetime
import getpass
import itertools
import json
import os
import signal
import sys
import termios
import time
import tty
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio
import trio_websocket
from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.text import Text

from broker.chat.questions import ShownQuestion, read_question
from broker.chat.split import Fence, fence_after
from broker.frontends.wire import (
    ERROR_SCHEMA,
    Channel,
    Command,
    Content,
    GatewayResponse,
    InboundEvent,
    OutboundReply,
    Sender,
    WireError,
    encode_event,
    encode_response,
    parse_reply,
)

EX_OK = 0
EX_UNAVAILABLE = 69
EX_NOPERM = 77
CONNECT_TIMEOUT_SECS = 10.0
QUIT_WINDOW_SECS = 3.0
LIVE_HOLD_SECS = 30.0
HEADER = Text("agent ›", style="bold cyan")
LOCAL_QUIT = frozenset({"/quit", "/exit"})
HELLO = (
    "Type a message and press Enter. /help lists the broker's commands. "
    "Ctrl-C cancels the running turn; Ctrl-C twice, Ctrl-D or /quit quits."
)


def ws_url(url: str) -> str:
    """``url`` with the ``/ws`` path when it has none (``server_url`` gives
    ``ws://host:port?token=T``), query kept."""
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        parts = parts._replace(path="/ws")
    return urlunsplit(parts)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="token=…" if "token=" in parts.query else parts.query))


@attrs.frozen
class Identity:
    """Who this terminal is, in the events it sends."""

    platform: str
    channel_id: str
    user_id: str
    name: str
    display_name: str

    @classmethod
    def local(cls, platform: str) -> Identity:
        name = _user_name()
        return cls(platform, f"{name}-{uuid.uuid4().hex[:8]}", str(os.getuid()), name, name)

    @property
    def thread_key(self) -> str:
        return f"{self.platform}:{self.channel_id}"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


# --- showing replies ------------------------------------------------------------------------


def render_message(text: str) -> RenderableType:
    """``text`` for the terminal: plain lines as they are, fenced code blocks
    highlighted by their language."""
    parts: list[RenderableType] = []
    plain: list[str] = []
    code: list[str] = []
    fence: Fence | None = None
    for line in text.split("\n"):
        after = fence_after(fence, line)
        if fence is None and after is not None:
            if plain:
                parts.append(Text("\n".join(plain)))
                plain = []
            fence, code = after, []
        elif fence is not None and after is None:
            parts.append(_code(fence, code))
            fence = None
        elif fence is not None:
            code.append(line)
        else:
            plain.append(line)
    if fence is not None:
        parts.append(_code(fence, code))
    if plain:
        parts.append(Text("\n".join(plain)))
    return Group(*parts)


def _code(fence: Fence, lines: list[str]) -> Syntax:
    info = fence.line.strip().lstrip("`~").split()
    return Syntax(
        "\n".join(lines),
        info[0] if info else "text",
        theme="ansi_dark",
        background_color="default",
        word_wrap=True,
    )


class ChatView:
    """The terminal side.

    Streamed replies are drawn in a live area at the bottom of the screen and
    redrawn in place as their edits arrive (on a terminal; elsewhere they are
    printed once settled). Plain replies and notes are printed above the live
    area. The live area is settled — printed for good — when the user sends a
    line (which is then shown as ``you › ...`` below it), when a reply in it
    has not changed for ``hold_secs``, and at exit; an edit that arrives later
    for a settled reply (a tool that ran for minutes) shows it again.
    """

    def __init__(
        self, console: Console, *, echo: bool = True, hold_secs: float = LIVE_HOLD_SECS
    ) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self.echo = echo  # the terminal echoes what the user types
        self.hold_secs = hold_secs
        self._height = 0  # lines of the live area on screen; the cursor is below it
        self._active: dict[str, float] = {}  # event id -> last change, in the live area
        self._owner: dict[str, str] = {}  # message id -> event id, of every streamed message
        self._texts: dict[str, str] = {}  # message id -> text

    def note(self, text: str, style: str = "dim") -> None:
        self._above(Text(text, style=style))

    def plain(self, reply: OutboundReply) -> None:
        self._above(HEADER, render_message(reply.text))

    def streamed(self, reply: OutboundReply, message_id: str) -> None:
        """A new message of a streamed reply (the first, or a continuation)."""
        self._owner[message_id] = reply.reply_to
        self._texts[message_id] = reply.text
        self._touch(reply.reply_to)

    def edit(self, reply: OutboundReply) -> None:
        event_id = self._owner.get(reply.reply_to)
        if event_id is not None:
            self._texts[reply.reply_to] = reply.text
            self._touch(event_id)

    def user_line(self, line: str, *, echoed: bool = True) -> None:
        """The user sent ``line``: settle the live area and show the line below it.
        ``echoed``: the terminal has shown what was typed (not for a key)."""
        typed = 0
        if echoed and self.echo and self.interactive:
            typed = 1 + len(line) // max(self.console.width, 1)
        self._erase(typed)
        self._print_settled(list(self._active))
        self.console.print(Text.assemble(("you › ", "bold green"), line))

    def settle(self) -> None:
        """Print every reply of the live area for good and empty it."""
        self._erase()
        self._print_settled(list(self._active))

    def _reply(self, event_id: str) -> RenderableType:
        texts = [t for m, t in self._texts.items() if self._owner[m] == event_id]
        return Group(HEADER, *(render_message(t) for t in texts))

    def _print_settled(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            del self._active[event_id]
            self.console.print(self._reply(event_id))

    def _touch(self, event_id: str) -> None:
        now = time.monotonic()
        self._active.pop(event_id, None)
        self._active[event_id] = now
        self._erase()
        self._print_settled([e for e, at in self._active.items() if now - at > self.hold_secs])
        self._draw()

    def _above(self, *renderables: RenderableType) -> None:
        self._erase()
        self.console.print(*renderables)
        self._draw()

    def _write(self, text: str) -> None:
        self.console.file.write(text)
        self.console.file.flush()

    def _erase(self, extra_lines: int = 0) -> None:
        """Clear the live area (and ``extra_lines`` below it); the cursor goes to its top."""
        up = self._height + extra_lines
        if self.interactive and up:
            self._write(f"\r\x1b[{up}A\x1b[J")
        self._height = 0

    def _draw(self) -> None:
        if not self.interactive or not self._active:
            return
        with self.console.capture() as capture:
            self.console.print(*(self._reply(e) for e in self._active))
        lines = capture.get().split("\n")[:-1]
        room = max(self.console.height - 2, 3)
        if len(lines) > room:  # the top scrolls away; it is printed in full when settled
            lines = ["…", *lines[-(room - 1) :]]
        self._write("".join(line + "\n" for line in lines))
        self._height = len(lines)


# --- questions: one key answers --------------------------------------------------------------

KEY_ESCAPE = "\x1b"
KEY_EOF = "\x04"


class KeyMode:
    """The terminal reads single keys (no echo, no line editing) while a
    question waits, and whole lines otherwise. Does nothing when ``fd`` is
    not a terminal."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.on = False
        self._saved = termios.tcgetattr(fd) if os.isatty(fd) else None

    def set(self, on: bool) -> None:
        if self._saved is None or on == self.on:
            return
        if on:
            tty.setcbreak(self.fd, termios.TCSANOW)
        else:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        self.on = on


def question_prompt(question: ShownQuestion) -> str:
    keys = " · ".join(f"{n} {o.label}" for n, o in enumerate(question.options, start=1))
    return f"❓ Question {question.number} — press a key: {keys} (Esc: type instead)"


# --- the session ----------------------------------------------------------------------------


class ChatSession:
    """One connection to the broker, its input and its output."""

    def __init__(
        self, ws: trio_websocket.WebSocketConnection, view: ChatView, identity: Identity
    ) -> None:
        self.ws = ws
        self.view = view
        self.identity = identity
        self.quit = False
        self.keys = KeyMode(sys.stdin.fileno())
        self.questions: dict[str, ShownQuestion] = {}  # message id -> open question, oldest first
        self._typing = False  # Esc: lines, not keys, until the next question
        self._numbers = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._last_interrupt: float | None = None

    def event(self, text: str) -> InboundEvent:
        number = next(self._numbers)
        me = self.identity
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return InboundEvent(
            event_id=f"{me.channel_id}-e{number}",
            timestamp=now.replace("+00:00", "Z"),
            platform=me.platform,
            channel=Channel(me.channel_id, "direct", None),
            sender=Sender(me.user_id, me.name, me.display_name, False),
            content=Content("text", text),
            message_id=f"{me.channel_id}-u{number}",
        )

    async def send_text(self, text: str) -> None:
        """Send ``text`` as an event; a closed connection is noticed by the reader."""
        try:
            await self.ws.send_message(encode_event(self.event(text)))
        except trio_websocket.ConnectionClosed:
            pass

    async def run(self, signals: AsyncIterator[int]) -> str | None:
        """Chat until the user quits (None) or the connection closes (its reason)."""
        closed = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.read_input, nursery.cancel_scope)
                nursery.start_soon(self.on_interrupts, signals, nursery.cancel_scope)
                try:
                    await self.read_frames()
                except trio_websocket.ConnectionClosed as exc:
                    closed = str(exc.reason)
                nursery.cancel_scope.cancel()
        finally:
            self.keys.set(False)
        return closed

    async def read_frames(self) -> None:
        """Show every frame; returns when the connection closes."""
        while True:
            message = await self.ws.get_message()
            await self.on_frame(message)

    async def on_frame(self, message: str | bytes) -> None:
        try:
            raw = json.loads(message)
        except ValueError:
            raw = None
        if isinstance(raw, dict) and raw.get("schema") == ERROR_SCHEMA:
            self.view.note(f"⚠️ The broker could not read a message: {raw.get('error')}", "red")
            return
        try:
            reply = parse_reply(message)
        except WireError as exc:
            self.view.note(f"(an unreadable frame from the broker was skipped: {exc})")
            return
        if reply.request_id:
            await self.answer_request(reply)
        elif reply.command is Command.EDIT_MESSAGE:
            self.view.edit(reply)
            if reply.reply_to in self.questions and read_question(reply.text) is None:
                del self.questions[reply.reply_to]  # settled
                self._ask_next()
        elif reply.command is None:
            self.view.plain(reply)
        # reactions (add/remove) have no place in a terminal transcript

    async def answer_request(self, reply: OutboundReply) -> None:
        assert reply.request_id is not None
        if reply.command is None:
            message_id = f"{self.identity.channel_id}-m{next(self._message_ids)}"
            response = GatewayResponse(reply.request_id, True, message_id=message_id)
            await self.ws.send_message(encode_response(response))
            self.view.streamed(reply, message_id)
            question = read_question(reply.text)
            if question is not None:
                self.questions[message_id] = question
                self._typing = False
                self._ask_next()
            return
        refusal = GatewayResponse(
            reply.request_id, False, error=f"{reply.command.value} is not supported in a terminal"
        )
        await self.ws.send_message(encode_response(refusal))

    def _ask_next(self) -> None:
        """Prompt for the oldest open question (keys on), or go back to lines."""
        question = next(iter(self.questions.values()), None)
        if question is not None and not self._typing:
            self.view.note(question_prompt(question), "bold yellow")
        self.keys.set(question is not None and not self._typing)

    async def answer_key(self, key: str) -> bool:
        """Answer the oldest open question with option ``key`` (its number);
        False when ``key`` is no such number."""
        if not self.questions:
            return False
        message_id, question = next(iter(self.questions.items()))
        if not (key.isdigit() and 1 <= int(key) <= len(question.options)):
            return False
        command = question.options[int(key) - 1].command
        del self.questions[message_id]
        self.view.user_line(command, echoed=False)
        await self.send_text(command)
        self._ask_next()
        return True

    async def read_input(self, done: trio.CancelScope) -> None:
        """Send each line typed, or answer a question with one key; Ctrl-D
        (end of input) or /quit ends the chat."""
        fd = sys.stdin.fileno()
        pending = b""
        while True:
            chunk = await trio.to_thread.run_sync(os.read, fd, 4096, abandon_on_cancel=True)
            if self.keys.on:
                key = chunk.decode(errors="replace")
                if not chunk or key == KEY_EOF:
                    break
                if key == KEY_ESCAPE:
                    self._typing = True
                    self._ask_next()
                    self.view.note("Type your message; the question stays open.")
                elif not await self.answer_key(key.strip()):
                    self.view.note("Press an option's number, or Esc to type instead.")
                continue
            if not chunk:
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.strip() in LOCAL_QUIT:
                    self.quit = True
                    done.cancel()
                    return
                if text.strip() and not await self.answer_key(text.strip()):
                    self.view.user_line(text)
                    await self.send_text(text)
        self.quit = True
        done.cancel()

    async def on_interrupts(self, signals: AsyncIterator[int], done: trio.CancelScope) -> None:
        """Ctrl-C: send /cancel; a second one within the quit window quits."""
        async for _ in signals:
            now = trio.current_time()
            if self._last_interrupt is not None and now - self._last_interrupt < QUIT_WINDOW_SECS:
                self.quit = True
                done.cancel()
                return
            self._last_interrupt = now
            self.view.note(
                f"^C — cancelling the running turn (Ctrl-C again within "
                f"{QUIT_WINDOW_SECS:g} s to quit)"
            )
            await self.send_text("/cancel")


async def run_chat(url: str, platform: str, console: Console) -> int:
    """Connect, chat until the user quits or the broker goes; the exit status."""
    identity = Identity.local(platform)
    view = ChatView(console, echo=sys.stdin.isatty())
    session: ChatSession | None = None
    closed: str | None = None
    try:
        async with trio_websocket.open_websocket_url(
            url, connect_timeout=CONNECT_TIMEOUT_SECS
        ) as ws:
            session = ChatSession(ws, view, identity)
            # Ctrl-C is ours from before the banner, which tells the user we are ready.
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                console.print(
                    Text.assemble(
                        ("agent-broker chat", "bold"),
                        f" — connected to {_redacted(url)} as {identity.thread_key}\n",
                        (HELLO, "dim"),
                    )
                )
                closed = await session.run(signals)
    except trio_websocket.ConnectionRejected as exc:
        view.note(_rejected(url, exc.status_code), "bold red")
        return EX_NOPERM if exc.status_code in (401, 403) else EX_UNAVAILABLE
    except (OSError, trio_websocket.HandshakeError) as exc:
        view.note(
            f"Could not reach the broker at {_redacted(url)}: {_cause(exc)}. Is it running? "
            "Start it with `agent-broker run`, or pass --url.",
            "bold red",
        )
        return EX_UNAVAILABLE
    finally:
        view.settle()
    if closed is not None and not (session is not None and session.quit):
        view.note(f"The broker closed the connection ({closed}).", "bold red")
        return EX_UNAVAILABLE
    return EX_OK


def _cause(exc: BaseException) -> str:
    """The first helpful message in ``exc``'s chain (trio-websocket wraps the OSError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def _rejected(url: str, status: int) -> str:
    if status in (401, 403):
        return (
            f"The broker at {_redacted(url)} refused the connection (HTTP {status}): "
            "a token is required or wrong. Use the [server] token of its broker.toml "
            "(--config) or pass --url 'ws://HOST:PORT/ws?token=…'."
        )
    return f"The broker at {_redacted(url)} refused the connection (HTTP {status})."


def main(url: str, platform: str = "cli") -> int:
    """Run the terminal chat against the broker at ``url`` (``/ws`` is added
    when the URL has no path); returns the exit status."""
    console = Console(highlight=False)
    try:
        return trio.run(run_chat, ws_url(url), platform, console)
    except KeyboardInterrupt:
        return 130
