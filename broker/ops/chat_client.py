"""``agent-broker chat``: talk to the agent of a running broker from a terminal.

A small client of the WebSocket server's ``/ws`` endpoint, speaking the same
openab protocol v1 as any gateway. Each run is a conversation thread (thread
key ``cli:<id>``): a fresh one, or the one named with ``--thread ID``. The id
is printed at start and at exit, so a later run can continue the thread.

* A message is sent with Enter. A pasted block is one message (bracketed
  paste), and so is a block typed between two lines of ``\"\"\"``; Alt-Enter
  starts a new line in the same message. Lines starting with ``/`` go to the
  broker too: it answers its own commands (``/status``, ``/cancel``,
  ``/reset``, ``/model``, ``/mode``, ``/help``) and passes any other to the
  agent. ``/quit`` and ``/exit`` end the chat.
* With streaming on (``[server] streaming``, the default) the broker's first
  message of a reply carries a ``request_id``: the chat answers with a
  message id of its own and shows the text growing as ``edit_message``
  frames arrive. Without streaming each reply is printed when it comes.
  Code blocks are highlighted. Replies and notes keep the order they came in.
* Ctrl-C sends ``/cancel`` (the running turn stops and its reply says so);
  a second Ctrl-C within :data:`QUIT_WINDOW_SECS`, or Ctrl-D, quits.
* A question of the agent (a permission it asks for) is a prompt answered
  with one key: the option's number sends the command that picks it
  (``/allow 3``, ...). Esc leaves the prompt to type instead. Without a
  terminal, a line holding just the number does the same.
* Input that is not a terminal (``printf 'hi\\n' | agent-broker chat``) is
  sent line by line; at its end the chat waits for every reply, then exits.
* When the broker goes away (a restart), the chat reconnects by itself for
  ``reconnect_secs`` and the thread resumes; what is typed meanwhile is sent
  once it is back.

Exit status: 0 when the user quits; 69 (EX_UNAVAILABLE) when the broker
cannot be reached (or stays away longer than ``reconnect_secs``); 77
(EX_NOPERM) when it refuses the token.
"""

from __future__ import annotations

import datetime
import getpass
import itertools
import json
import math
import os
import signal
import sys
import termios
import time
import tty
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio
import trio_websocket
from rich.console import Console, Group, RenderableType
from rich.syntax import Syntax
from rich.text import Text

from broker import sentences
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
RECONNECT_SECS = 300.0
HEADER = Text("agent ›", style="bold cyan")
PROMPT = "you › "
LOCAL_QUIT = frozenset({"/quit", "/exit"})
BLOCK_FENCE = '"""'
PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"
# Lines of a reply still in progress (the broker's indicators): such a reply is not settled.
_IN_PROGRESS = ("⏳ ", "⚙️ ", "💭 ", "🔧 ")


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
    def local(cls, platform: str, thread: str | None = None) -> Identity:
        """The local user, in ``thread`` (a channel id, or a whole ``platform:id``
        thread key) or a fresh one."""
        name = _user_name()
        channel = thread.removeprefix(f"{platform}:") if thread else None
        channel = channel or f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(platform, channel, str(os.getuid()), name, name)

    @property
    def thread_key(self) -> str:
        return f"{self.platform}:{self.channel_id}"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


# --- reading input ----------------------------------------------------------------------------


class InputAssembler:
    """Turns what the terminal sends into messages; pure, fed any chunks.

    A message ends at a newline, except inside a bracketed paste
    (``ESC[200~`` … ``ESC[201~``: its newlines are part of the message, which
    ends at the next newline after it), after Alt-Enter (an ``ESC`` right
    before the newline) and between two lines that are exactly ``\"\"\"``.
    """

    def __init__(self) -> None:
        self._pending = ""  # received, not yet taken apart
        self._message: list[str] = []  # lines of the message being typed
        self._line = ""
        self._pasting = False
        self._block = False

    def feed(self, data: str) -> list[str]:
        """The messages that ``data`` completes, in order."""
        self._pending += data.replace("\r\n", "\n").replace("\r", "\n")
        done: list[str] = []
        while self._pending:
            if self._pasting:
                end = self._pending.find(PASTE_END)
                if end < 0:
                    keep = _partial_marker(self._pending, PASTE_END)
                    self._line += self._pending[: len(self._pending) - keep]
                    self._pending = self._pending[len(self._pending) - keep :]
                    break
                self._line += self._pending[:end]
                self._pending = self._pending[end + len(PASTE_END) :]
                self._pasting = False
                continue
            start = self._pending.find(PASTE_START)
            newline = self._pending.find("\n")
            if start >= 0 and (newline < 0 or start < newline):
                self._line += self._pending[:start]
                self._pending = self._pending[start + len(PASTE_START) :]
                self._pasting = True
                continue
            if newline < 0:
                keep = _partial_marker(self._pending, PASTE_START)
                self._line += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep :]
                break
            self._line += self._pending[:newline]
            self._pending = self._pending[newline + 1 :]
            message = self._end_line()
            if message is not None:
                done.append(message)
        return done

    def _end_line(self) -> str | None:
        line, self._line = self._line, ""
        if line.strip() == BLOCK_FENCE:
            if self._block:
                self._block = False
                return self._take()
            self._block = True
            return None
        if self._block:
            self._message.append(line)
            return None
        if line.endswith("\x1b"):  # Alt-Enter
            self._message.append(line[:-1])
            return None
        self._message.append(line)
        return self._take()

    def _take(self) -> str:
        message = "\n".join(self._message)
        self._message = []
        return message

    def finish(self) -> str | None:
        """At the end of input: what was typed but not yet sent, if anything."""
        self._line += self._pending
        self._pending = ""
        if self._line:
            self._message.append(self._line)
            self._line = ""
        message = self._take()
        return message if message.strip() else None


def _partial_marker(text: str, marker: str) -> int:
    """How many characters at the end of ``text`` may start ``marker``."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


@contextmanager
def terminal_input(fd: int) -> Iterator[None]:
    """On a terminal: bracketed paste on, and control characters echoed as
    they are (so the paste markers draw nothing); both undone at exit."""
    if not (os.isatty(fd) and sys.stdout.isatty()):
        yield
        return
    saved = termios.tcgetattr(fd)
    changed = list(saved)
    changed[3] &= ~termios.ECHOCTL
    termios.tcsetattr(fd, termios.TCSANOW, changed)
    os.write(sys.stdout.fileno(), b"\x1b[?2004h")
    try:
        yield
    finally:
        os.write(sys.stdout.fileno(), b"\x1b[?2004l")
        termios.tcsetattr(fd, termios.TCSANOW, saved)


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
    printed once settled), with the input prompt below them. Everything is
    shown in the order it came: a plain reply or a note that arrives while
    the live area shows a reply is added below it, not printed above it. The
    live area is settled — printed for good — when the user sends a message
    (replies still in progress stay), when a reply in it has not changed for
    ``hold_secs``, and at exit; an edit that arrives later for a settled reply
    (a tool that ran for minutes) shows it again.
    """

    def __init__(
        self, console: Console, *, echo: bool = True, hold_secs: float = LIVE_HOLD_SECS
    ) -> None:
        self.console = console
        self.interactive = console.is_terminal
        self.echo = echo  # the terminal echoes what the user types
        self.hold_secs = hold_secs
        self._height = 0  # lines of the live area on screen (the prompt's included)
        self._active: dict[str, float] = {}  # item -> last change: the live area, in order
        self._owner: dict[str, str] = {}  # message id -> event id, of every streamed message
        self._texts: dict[str, str] = {}  # message id -> text
        self._notes: dict[str, RenderableType] = {}  # item -> a note or plain reply shown live
        self._numbers = itertools.count(1)
        self._ended = False

    def note(self, text: str, style: str = "dim") -> None:
        self._add(Text(text, style=style))

    def plain(self, reply: OutboundReply) -> None:
        self._add(Group(HEADER, render_message(reply.text)))

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

    def user_line(self, message: str, *, echoed: bool = True) -> None:
        """The user sent ``message``: settle the live area but replies still in
        progress, and show the message below what was settled. ``echoed``: the
        terminal has shown what was typed (not for a key)."""
        typed = 0
        if echoed and self.echo and self.interactive:
            width = max(self.console.width, 1)
            lines = (PROMPT + message).split("\n")
            typed = sum(len(line) // width + 1 for line in lines)
        self._erase(typed)
        self._print_settled([item for item in self._active if not self._in_progress(item)])
        first, *rest = message.split("\n")
        self.console.print(Text.assemble((PROMPT, "bold green"), first))
        for line in rest:
            self.console.print(Text(" " * len(PROMPT) + line))
        self._draw()

    def prompt(self) -> None:
        """Draw the input prompt (and the live area) now."""
        self._erase()
        self._draw()

    def settle(self) -> None:
        """Print everything of the live area for good and empty it; no prompt
        is drawn from now on (the chat ends)."""
        self._erase()
        self._print_settled(list(self._active))
        self._ended = True

    def _add(self, renderable: RenderableType) -> None:
        if not self.interactive or not self._active or self._ended:
            self._erase()
            self.console.print(renderable)
            self._draw()
            return
        item = f"note-{next(self._numbers)}"
        self._notes[item] = renderable
        self._touch(item)

    def _in_progress(self, item: str) -> bool:
        """Whether a reply still shows the broker's progress lines (or nothing yet)."""
        if item in self._notes:
            return False
        texts = [t for m, t in self._texts.items() if self._owner[m] == item]
        return not texts or any(line.startswith(_IN_PROGRESS) for line in texts[-1].splitlines())

    def _render(self, item: str) -> RenderableType:
        note = self._notes.get(item)
        if note is not None:
            return note
        texts = [t for m, t in self._texts.items() if self._owner[m] == item]
        return Group(HEADER, *(render_message(t) for t in texts))

    def _print_settled(self, items: list[str]) -> None:
        for item in items:
            del self._active[item]
            self.console.print(self._render(item))
            self._notes.pop(item, None)

    def _touch(self, item: str) -> None:
        now = time.monotonic()
        self._active[item] = now  # a new item goes last; a changed one keeps its place
        self._erase()
        self._print_settled([e for e, at in self._active.items() if now - at > self.hold_secs])
        self._draw()

    def _write(self, text: str) -> None:
        self.console.file.write(text)
        self.console.file.flush()

    def _erase(self, extra_lines: int = 0) -> None:
        """Clear the live area and the prompt (and ``extra_lines`` below); the
        cursor goes to the live area's top."""
        if not self.interactive:
            return
        up = max(self._height - 1, 0) + extra_lines  # the cursor is on the prompt's line
        self._write(f"\r\x1b[{up}A\x1b[J" if up else "\r\x1b[J")
        self._height = 0

    def _draw(self) -> None:
        """Draw the live area (what fits on the screen) and the prompt below it."""
        if not self.interactive or self._ended:
            return
        lines: list[str] = []
        if self._active:
            with self.console.capture() as capture:
                self.console.print(*(self._render(e) for e in self._active))
            lines = capture.get().split("\n")[:-1]
            room = max(self.console.height - 3, 3)
            if len(lines) > room:  # the top is cut; it is printed in full when settled
                lines = ["…", *lines[-(room - 1) :]]
        self._write("".join(line + "\n" for line in lines) + PROMPT)
        self._height = len(lines) + 1


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
    keys = [f"{n} {o.label}" for n, o in enumerate(question.options, start=1)]
    return sentences.question_prompt(question.number, keys)


# --- the session ----------------------------------------------------------------------------


class ChatSession:
    """One conversation: its connections to the broker (one at a time), its
    input and its output."""

    def __init__(self, view: ChatView, identity: Identity, *, interactive: bool) -> None:
        self.view = view
        self.identity = identity
        self.interactive = interactive  # input from a terminal (else: piped)
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.quit = False
        self.keys = KeyMode(sys.stdin.fileno())
        self.questions: dict[str, ShownQuestion] = {}  # message id -> open question, oldest first
        self._typing = False  # Esc: lines, not keys, until the next question
        self.input_done = False
        self.unanswered: set[str] = set()  # event ids still waiting for their reply
        self._run = uuid.uuid4().hex[:6]  # event ids stay unique across runs of one thread
        self._numbers = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._last_interrupt: float | None = None
        self._watch: trio.CancelScope | None = None  # the reader's wait for a frame
        send, self._outgoing = trio.open_memory_channel[InboundEvent](math.inf)
        self._send = send

    def event(self, text: str) -> InboundEvent:
        number = next(self._numbers)
        me = self.identity
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        return InboundEvent(
            event_id=f"{me.channel_id}-{self._run}-e{number}",
            timestamp=now.replace("+00:00", "Z"),
            platform=me.platform,
            channel=Channel(me.channel_id, "direct", None),
            sender=Sender(me.user_id, me.name, me.display_name, False),
            content=Content("text", text),
            message_id=f"{me.channel_id}-{self._run}-u{number}",
        )

    def submit(self, text: str) -> None:
        """Queue ``text`` to be sent now, or once the broker is back; it waits
        for its reply from now on."""
        event = self.event(text)
        self.unanswered.add(event.event_id)
        self._send.send_nowait(event)

    async def serve(self, ws: trio_websocket.WebSocketConnection) -> str | None:
        """Use ``ws`` until the user quits (None) or it closes (its reason)."""
        self.ws = ws
        closed = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_queued, ws)
            try:
                await self.read_frames(ws, nursery.cancel_scope)
            except trio_websocket.ConnectionClosed as exc:
                closed = str(exc.reason)
            nursery.cancel_scope.cancel()
        self.ws = None
        return closed

    async def _send_queued(self, ws: trio_websocket.WebSocketConnection) -> None:
        async for event in self._outgoing:
            try:
                await ws.send_message(encode_event(event))
            except trio_websocket.ConnectionClosed:
                self._send.send_nowait(event)  # sent again on the next connection
                return

    async def read_frames(
        self, ws: trio_websocket.WebSocketConnection, done: trio.CancelScope
    ) -> None:
        """Show every frame; returns when the user quits or, with piped input,
        when it has ended and every message has its reply."""
        while not self.quit and not (self.input_done and not self.unanswered):
            with trio.CancelScope() as wait:
                self._watch = wait
                message = await ws.get_message()
            if wait.cancelled_caught:
                continue
            await self.on_frame(ws, message)
        done.cancel()

    def _wake_reader(self) -> None:
        if self._watch is not None:
            self._watch.cancel()

    async def on_frame(self, ws: trio_websocket.WebSocketConnection, message: str | bytes) -> None:
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
            await self.answer_request(ws, reply)
        elif reply.command is Command.EDIT_MESSAGE:
            self.view.edit(reply)
            if reply.reply_to in self.questions and read_question(reply.text) is None:
                del self.questions[reply.reply_to]  # settled
                self._ask_next()
        elif reply.command is None:
            self.unanswered.discard(reply.reply_to)
            self.view.plain(reply)
        # reactions (add/remove) have no place in a terminal transcript

    async def answer_request(
        self, ws: trio_websocket.WebSocketConnection, reply: OutboundReply
    ) -> None:
        assert reply.request_id is not None
        if reply.command is None and self.interactive:
            message_id = f"{self.identity.channel_id}-{self._run}-m{next(self._message_ids)}"
            response = GatewayResponse(reply.request_id, True, message_id=message_id)
            await ws.send_message(encode_response(response))
            self.view.streamed(reply, message_id)
            question = read_question(reply.text)
            if question is not None:
                self.questions[message_id] = question
                self._typing = False
                self._ask_next()
            return
        # Piped input takes whole replies: refusing the stream makes the broker send
        # the final text as plain replies, so the chat knows when a reply is complete.
        what = "streaming" if reply.command is None else reply.command.value
        refusal = GatewayResponse(reply.request_id, False, error=f"{what} is not used here")
        await ws.send_message(encode_response(refusal))

    def _ask_next(self) -> None:
        """Prompt for the oldest open question (keys on), or go back to lines."""
        question = next(iter(self.questions.values()), None)
        if question is not None and not self._typing:
            self.view.note(question_prompt(question), "bold yellow")
        self.keys.set(question is not None and not self._typing)

    def answer_key(self, key: str) -> bool:
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
        self.submit(command)
        self._ask_next()
        return True

    async def read_input(self, done: trio.CancelScope) -> None:
        """Send each message typed, or answer a question with one key; Ctrl-D
        (end of input) or /quit ends the chat (piped input: once every message
        has its reply)."""
        assembler = InputAssembler()
        fd = sys.stdin.fileno()
        try:
            while True:
                data = await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
                if self.keys.on:
                    key = data.decode(errors="replace")
                    if not data or key == KEY_EOF:
                        data = b""
                    elif key == KEY_ESCAPE:
                        self._typing = True
                        self._ask_next()
                        self.view.note(sentences.QUESTION_TYPING)
                        continue
                    elif not self.answer_key(key.strip()):
                        self.view.note(sentences.QUESTION_KEYS_HELP)
                        continue
                    else:
                        continue
                messages = assembler.feed(data.decode(errors="replace")) if data else []
                if not data:
                    last = assembler.finish()
                    messages = [last] if last is not None else []
                for message in messages:
                    if message.strip() in LOCAL_QUIT:
                        self.quit = True
                        done.cancel()
                        return
                    if message.strip() and not self.answer_key(message.strip()):
                        self.view.user_line(message)
                        self.submit(message)
                if not data:
                    if self.interactive or not self.unanswered:
                        self.quit = True
                        done.cancel()
                        return
                    self.input_done = True
                    self._wake_reader()
                    return
        finally:
            self.keys.set(False)

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
            self.submit("/cancel")


async def run_chat(
    url: str,
    platform: str,
    console: Console,
    thread: str | None = None,
    reconnect_secs: float = RECONNECT_SECS,
) -> int:
    """Connect, chat until the user quits or the broker stays away; the exit status."""
    identity = Identity.local(platform, thread)
    interactive = sys.stdin.isatty()
    view = ChatView(console, echo=interactive)
    status = EX_OK
    with terminal_input(sys.stdin.fileno()), trio.open_signal_receiver(signal.SIGINT) as signals:
        session = ChatSession(view, identity, interactive=interactive)  # keys restore our tty
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.on_interrupts, signals, nursery.cancel_scope)
            status = await _connect_and_chat(url, session, console, reconnect_secs, nursery)
            nursery.cancel_scope.cancel()
        view.settle()
    if status != EX_NOPERM:
        view.note(sentences.chat_thread_hint(identity.channel_id))
    return status


async def _connect_and_chat(
    url: str,
    session: ChatSession,
    console: Console,
    reconnect_secs: float,
    nursery: trio.Nursery,
) -> int:
    """Connect (again after the broker went away, for ``reconnect_secs``) and chat."""
    view, identity = session.view, session.identity
    connected_once = False
    away_since: float | None = None
    delay = 0.5
    while True:
        closed: str | None = None
        try:
            async with trio_websocket.open_websocket_url(
                url, connect_timeout=CONNECT_TIMEOUT_SECS
            ) as ws:
                if not connected_once:
                    console.print(
                        Text.assemble(
                            ("agent-broker chat", "bold"),
                            f" — connected to {_redacted(url)} as {identity.thread_key}"
                            f" (thread {identity.channel_id})\n",
                            (sentences.CHAT_HELLO, "dim"),
                        )
                    )
                    view.prompt()
                    nursery.start_soon(session.read_input, nursery.cancel_scope)
                else:
                    view.note(sentences.CHAT_RECONNECTED, "green")
                connected_once, away_since, delay = True, None, 0.5
                closed = await session.serve(ws)
        except trio_websocket.ConnectionRejected as exc:
            view.note(_rejected(url, exc.status_code), "bold red")
            return EX_NOPERM if exc.status_code in (401, 403) else EX_UNAVAILABLE
        except (OSError, trio_websocket.HandshakeError) as exc:
            if not connected_once:
                view.note(
                    f"Could not reach the broker at {_redacted(url)}: {_cause(exc)}. "
                    "Is it running? Start it with `agent-broker run`, or pass --url.",
                    "bold red",
                )
                return EX_UNAVAILABLE
            closed = _cause(exc)
        except trio_websocket.ConnectionClosed as exc:
            closed = str(exc.reason)
        if session.quit or (session.input_done and not session.unanswered):
            return EX_OK
        now = trio.current_time()
        if away_since is None:
            away_since = now
            view.note(sentences.chat_reconnecting(closed), "yellow")
        if now - away_since >= reconnect_secs:
            view.note(sentences.chat_gone(closed, reconnect_secs), "bold red")
            return EX_UNAVAILABLE
        await trio.sleep(min(delay, max(reconnect_secs - (now - away_since), 0)))
        delay = min(delay * 2, 5.0)


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


def main(
    url: str,
    platform: str = "cli",
    thread: str | None = None,
    reconnect_secs: float = RECONNECT_SECS,
) -> int:
    """Run the terminal chat against the broker at ``url`` (``/ws`` is added
    when the URL has no path); returns the exit status."""
    console = Console(highlight=False)
    try:
        return trio.run(run_chat, ws_url(url), platform, console, thread, reconnect_secs)
    except KeyboardInterrupt:
        return 130
