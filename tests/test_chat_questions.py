"""Questions in the terminal chat: a real chat process on a pseudo-terminal
answers the agent's permission questions with one key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from broker.testing.harness import fake_agent_config
from tests.router.stack import running_broker
from tests.test_chat import Terminal, chat_terminal, screen_lines


@asynccontextmanager
async def asking_chat(tmp_path: Path, **permissions: object) -> AsyncIterator[Terminal]:
    config = fake_agent_config(tmp_path, permissions={"default": "ask", **permissions})
    async with running_broker(config) as stack, chat_terminal(stack.server.url, tmp_path) as t:
        await t.expect("connected to ws://127.0.0.1:")
        yield t


async def test_one_key_answers_a_question_in_the_terminal(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with asking_chat(tmp_path) as t:
            await t.type("@permission execute make build\n")
            await t.expect("❓ Question 1 — press a key: 1 Allow once · 2 Always allow")
            await t.type("1")  # one key, no Enter
            await t.expect("Permission for “make build”: selected allow_once.")
            await t.expect("✅ allowed once by @")
            await t.type("/status\n")  # lines again once nothing is asked
            await t.expect("📊 ")
            await t.type("\x04")
            assert await t.exit_status() == 0
    screen = screen_lines(t.raw.decode())
    assert screen.count("you › /allow 1") == 1


async def test_two_questions_are_prompted_in_turn_and_a_wrong_key_is_explained(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with asking_chat(tmp_path) as t:
            await t.type("@permissions 2 execute job\n")
            await t.expect("❓ Question 1 — press a key")
            await t.type("9")
            await t.expect("Press an option's number, or Esc to type instead.")
            await t.type("3")
            await t.expect("❓ Question 2 — press a key")
            await t.type("1")
            await t.expect("selected allow_once")
            await t.type("\x04")
            assert await t.exit_status() == 0
    shown = t.shown
    assert "you › /deny 1" in shown and "you › /allow 2" in shown
    assert "selected reject_once" in shown


async def test_escape_leaves_the_prompt_to_type_and_a_typed_command_answers(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with asking_chat(tmp_path) as t:
            await t.type("@permission edit notes.txt\n")
            await t.expect("❓ Question 1 — press a key")
            await t.type("\x1b")
            await t.expect("Type your message; the question stays open.")
            await t.type("/deny always 1\n")
            await t.expect("selected reject_always")
            await t.type("\x04")
            assert await t.exit_status() == 0


async def test_ctrl_c_while_asked_cancels_and_the_prompt_goes(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with asking_chat(tmp_path) as t:
            await t.type("@permission execute deploy\n")
            await t.expect("❓ Question 1 — press a key")
            await t.type("\x03")
            await t.expect("🛑 Cancelled with /cancel")
            await t.expect("🛑 Cancelled.")
            await t.type("@reply typed again\n")  # lines, not keys, once it is closed
            await t.expect("you › @reply typed again")
            await t.expect("typed again")
            await t.type("\x04")
            assert await t.exit_status() == 0


async def test_a_question_nobody_answers_times_out_and_the_terminal_types_again(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with asking_chat(tmp_path, ask_timeout_secs=1) as t:
            await t.type("@permission execute deploy\n")
            await t.expect("❓ Question 1 — press a key")
            await t.expect("⏱️ No answer within 1s: the agent was told “Reject”.")
            await t.expect("selected reject_once")
            await t.type("/status\n")
            await t.expect("you › /status")
            await t.type("\x04")
            assert await t.exit_status() == 0
