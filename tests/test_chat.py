"""``agent-broker chat`` as a user runs it: a real process on a pseudo-terminal,
talking to a real broker (pool of fake agents, router, WebSocket server)."""

from __future__ import annotations

import fcntl
import functools
import io
import os
import re
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from rich.console import Console

from broker.chat.router import Router
from broker.config import BrokerConfig, server_url
from broker.frontends.server import WebSocketServer, serve_websocket
from broker.ops.chat_client import InputAssembler, render_message, ws_url
from broker.sessions.pool import Pool, open_pool
from broker.store import open_store
from broker.testing.harness import fake_agent_config, free_port
from tests.router.stack import running_broker

REPO = Path(__file__).resolve().parent.parent
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]|\r")


def _chat_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=str(REPO))
    return env


def _take_terminal() -> None:  # runs in the child: the pty becomes its controlling terminal
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


_TOKEN = re.compile(r"\x1b\[([0-9;?]*)([@-~])|\x1b[()][0-9A-B]|\x1b\][^\x07]*\x07|(.)", re.DOTALL)


def screen_lines(raw: str) -> list[str]:
    """What a terminal would show after ``raw`` (the escapes the chat uses:
    cursor up, erase below, erase line; colours ignored; no scrolling limit)."""
    lines, row, col = [""], 0, 0
    for match in _TOKEN.finditer(raw):
        args, code, char = match.groups()
        if code == "A":
            row = max(0, row - int(args or 1))
        elif code == "J":
            lines[row] = lines[row][:col]
            del lines[row + 1 :]
        elif code == "K":
            lines[row] = "" if args == "2" else lines[row][:col]
        elif char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            lines.extend([""] * (row + 1 - len(lines)))
        elif char is not None and char.isprintable():
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1 :]
            col += 1
    return [line.rstrip() for line in lines]


class Terminal:
    """The user's side of the pty: what was shown (ANSI removed) and typing."""

    def __init__(self, master: int, process: trio.Process) -> None:
        self.stream = trio.lowlevel.FdStream(master)
        self.process = process
        self.raw = b""
        self.mark = 0

    @property
    def shown(self) -> str:
        return _ANSI.sub("", self.raw.decode(errors="replace"))

    async def expect(self, text: str) -> None:
        """Wait until ``text`` is shown after the previous match."""
        while (found := self.shown.find(text, self.mark)) < 0:
            try:
                chunk = await self.stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError):  # EIO: the chat exited
                chunk = b""
            if not chunk:
                raise AssertionError(f"{text!r} never shown; the screen:\n{self.shown}")
            self.raw += chunk
        self.mark = found + len(text)

    async def type(self, keys: str) -> None:
        await self.stream.send_all(keys.encode())

    async def exit_status(self) -> int:
        while True:  # drain the screen so the chat is never blocked writing
            try:
                chunk = await self.stream.receive_some(65536)
            except (OSError, trio.BrokenResourceError):
                chunk = b""
            if not chunk:
                break
            self.raw += chunk
        return await self.process.wait()


@asynccontextmanager
async def chat_terminal(url: str, cwd: Path, *args: str) -> AsyncIterator[Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "broker", "chat", "--url", url, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=str(cwd),
        env=_chat_env(),
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    terminal = Terminal(master, process)
    try:
        yield terminal
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await terminal.stream.aclose()


@asynccontextmanager
async def chat_with_broker(tmp_path: Path, *, streaming: bool) -> AsyncIterator[Terminal]:
    """A broker and a chat connected to it, the chat's banner already shown."""
    config = fake_agent_config(
        tmp_path, server={"streaming": streaming}, render={"edit_interval_ms": 100}
    )
    async with running_broker(config) as stack, chat_terminal(stack.server.url, tmp_path) as t:
        await t.expect("connected to ws://127.0.0.1:")
        yield t


async def test_chat_shows_replies_and_ctrl_c_cancels_a_long_turn(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with chat_with_broker(tmp_path, streaming=True) as t:
            await t.type("hello from the terminal\n")
            await t.expect("You said: “hello from the terminal”")
            await t.expect("docs/fake-agent.md).")  # the end of the reply
            await t.type("@tool Long job 60 execute\n")
            await t.expect("Long job … running")
            with trio.fail_after(15):  # the tool would run 60 s
                await t.type("\x03")
                await t.expect("cancelling the running turn")
                await t.expect("🛑 Cancelled.")
            await t.type("/status\n")
            await t.expect("📊 ")
            await t.type("\x04")  # Ctrl-D on an empty line: end of input
            assert await t.exit_status() == 0
    # the screen reads as a transcript: each line once, no stale progress
    screen = screen_lines(t.raw.decode())
    assert screen.count("you › hello from the terminal") == 1
    assert sum("You said: “hello from the terminal”" in line for line in screen) == 1
    assert screen.count("⏹️ Long job (unfinished)") == 1
    assert not any("Starting…" in line or "… running" in line for line in screen)
    assert screen.index("you › /status") > screen.index("🛑 Cancelled.")
    note = next(i for i, line in enumerate(screen) if "cancelling the running turn" in line)
    assert note > screen.index("⏹️ Long job (unfinished)"), "the note is below the earlier reply"


async def test_two_ctrl_c_quit_the_chat(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with chat_with_broker(tmp_path, streaming=False) as t:
            await t.type("@reply plain and simple\n")
            await t.expect("you › @reply plain and simple")
            await t.expect("plain and simple")
            await t.type("\x03")
            await t.expect("Ctrl-C again")
            await t.type("\x03")
            assert await t.exit_status() == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_chat_without_a_broker_says_so_and_exits_69(tmp_path: Path) -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "broker", "chat", "--url", f"ws://127.0.0.1:{_closed_port()}"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(tmp_path),
            env=_chat_env(),
        )
    assert result.returncode == 69
    out = " ".join(result.stdout.decode().split())
    assert "Could not reach the broker at ws://127.0.0.1:" in out
    assert "Is it running? Start it with `agent-broker run`" in out


async def test_chat_with_a_wrong_token_exits_77(tmp_path: Path) -> None:
    config = fake_agent_config(tmp_path, server={"token": "s3cret"})
    with trio.fail_after(30):
        async with running_broker(config) as stack:
            result = await trio.run_process(
                [sys.executable, "-m", "broker", "chat", "--url", stack.server.url + "?token=no"],
                capture_stdout=True,
                check=False,
                cwd=str(tmp_path),
                env=_chat_env(),
            )
    assert result.returncode == 77
    assert "refused the connection (HTTP 403)" in " ".join(result.stdout.decode().split())


@asynccontextmanager
async def broker_on(config: BrokerConfig) -> AsyncIterator[tuple[WebSocketServer, Pool]]:
    """Store, pool, router and server of ``config``, as ``agent-broker run`` has them."""
    async with (
        open_store(config.state.path) as store,
        open_pool(config, store=store) as pool,
        trio.open_nursery() as nursery,
    ):
        server: WebSocketServer = await nursery.start(
            functools.partial(serve_websocket, config.server, Router(pool, config))
        )
        yield server, pool
        await pool.aclose()
        nursery.cancel_scope.cancel()


async def test_chat_exits_69_when_the_broker_stays_away_longer_than_it_waits(
    tmp_path: Path,
) -> None:
    config = fake_agent_config(tmp_path)
    with trio.fail_after(60):
        async with broker_on(config) as (server, _):
            url = server.url
            terminal = chat_terminal(url, tmp_path, "--reconnect-secs", "1")
            t = await terminal.__aenter__()
            await t.expect("connected to")
        try:
            await t.expect("The broker closed the connection")
            await t.expect("reconnecting…")
            await t.expect("did not come back within 1 s")
            assert await t.exit_status() == 69
        finally:
            await terminal.__aexit__(None, None, None)


async def test_after_a_broker_restart_the_chat_reconnects_and_the_thread_resumes(
    tmp_path: Path,
) -> None:
    config = fake_agent_config(tmp_path, server={"listen": f"127.0.0.1:{free_port()}"})
    url = server_url(config)
    with trio.fail_after(90):
        async with broker_on(config):
            terminal = chat_terminal(url, tmp_path, "--thread", "t-restart")
            t = await terminal.__aenter__()
            await t.expect("(thread t-restart)")
            await t.type("@reply before\\nthe restart\n")
            await t.expect("before\nthe restart")  # the reply, not the echo of the line
        try:
            await t.expect("reconnecting…")
            await t.type("@reply after\\nthe restart\n")  # sent once the broker is back
            async with broker_on(config) as (_, pool):
                await t.expect("Reconnected")
                await t.expect("after\nthe restart")
                resumed = pool.counters.resumed
                await t.type("/quit\n")
                assert await t.exit_status() == 0
        finally:
            await terminal.__aexit__(None, None, None)
    assert resumed == 1
    assert "could not be restored" not in t.shown
    assert "agent-broker chat --thread t-restart" in t.shown


async def test_a_thread_named_with_thread_continues_and_its_id_is_printed_at_start_and_exit(
    tmp_path: Path,
) -> None:
    config = fake_agent_config(tmp_path)
    with trio.fail_after(60):
        async with broker_on(config) as (server, _):
            for text in ("@reply first", "@reply second"):
                async with chat_terminal(server.url, tmp_path, "--thread", "t-1") as t:
                    await t.expect("as cli:t-1 (thread t-1)")
                    await t.type(text + "\n")
                    await t.expect(text.removeprefix("@reply "))
                    await t.type("\x04")
                    assert await t.exit_status() == 0
                assert "continue it with: agent-broker chat --thread t-1" in t.shown
            async with chat_terminal(server.url, tmp_path, "--thread", "t-1") as t:
                await t.type("/status\n")
                await t.expect("📊 ")
                await t.expect("turns")
                await t.type("\x04")
                await t.exit_status()
    assert "turns done: 2" in t.shown, t.shown


async def test_a_pasted_block_an_alt_enter_line_and_a_quoted_block_are_one_message_each(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with chat_with_broker(tmp_path, streaming=True) as t:
            await t.type("\x1b[200~@reply pasted as one\n@chunks 1\x1b[201~\r")
            await t.expect("pasted as one")
            await t.type("@reply alt enter\x1b\r@chunks 1\r")
            await t.expect("alt enter")
            await t.type('"""\r@reply a quoted block\r@chunks 1\r"""\r')
            await t.expect("a quoted block")
            await t.type("\x04")
            assert await t.exit_status() == 0
    screen = screen_lines(t.raw.decode())
    assert not any("You said" in line for line in screen), "each block was one prompt"
    assert not any("200~" in line or "^[" in line for line in screen)


async def test_piped_input_waits_for_every_reply_before_the_chat_exits(tmp_path: Path) -> None:
    config = fake_agent_config(tmp_path, render={"edit_interval_ms": 100})
    with trio.fail_after(60):
        async with running_broker(config) as stack:
            result = await trio.run_process(
                [sys.executable, "-m", "broker", "chat", "--url", stack.server.url],
                stdin=b"@reply one\n@delay 1\n",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=str(tmp_path),
                env=_chat_env(),
            )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "one" in out and "You sent no text" in out, out  # both replies, the slow one too
    assert out.count("agent ›") == 2, out


def test_code_blocks_are_highlighted_and_text_kept_as_written() -> None:
    console = Console(
        file=io.StringIO(), record=True, width=60, color_system="truecolor", force_terminal=True
    )
    console.print(render_message("Result:\n- one\n- two\n```python\nprint('hi')\n```\nDone."))
    text = console.export_text(clear=False)
    assert text.splitlines() == ["Result:", "- one", "- two", "print('hi')", "Done."]
    assert "\x1b[" in console.export_text(styles=True)  # the code is coloured


def test_the_ws_path_is_added_to_a_bare_server_url() -> None:
    assert ws_url("ws://127.0.0.1:8765?token=a%20b") == "ws://127.0.0.1:8765/ws?token=a%20b"
    assert ws_url("ws://[::1]:9001") == "ws://[::1]:9001/ws"
    assert ws_url("ws://h:1/custom") == "ws://h:1/custom"


def test_input_is_assembled_into_messages_whatever_the_chunks() -> None:
    typed = (
        'one\n\x1b[200~pasted\nblock\x1b[201~ tail\ntwo\x1b\nlines\n"""\nquoted\n\nblock\n"""\nlast'
    )
    expected = ["one", "pasted\nblock tail", "two\nlines", "quoted\n\nblock"]
    for size in (1, 2, 3, 5, len(typed)):
        assembler = InputAssembler()
        messages = [
            m for i in range(0, len(typed), size) for m in assembler.feed(typed[i : i + size])
        ]
        assert messages == expected, size
        assert assembler.finish() == "last"
