"""Questions in the chat: how a permission question reads, how it is answered.

The session puts a :class:`~broker.reply.Question` on the turn's handle
(policy ``ask``); :func:`show_questions` sends each one as its own message
with :meth:`~broker.frontends.base.ReplyChannel.request`, so its platform
message id is known, with one :class:`~broker.frontends.wire.Button` per
agent option; when it is settled the message is edited to say how, by whom
and when ("✅ allowed once by @alice at 09:58:12 UTC"), without buttons. A
front-end that gives no message id gets the decision as a new message.

Answers are typed commands (buttons send the same text):

- ``/allow N``, ``/allow always N``, ``/deny N``, ``/deny always N``: the
  agent's option of that kind (allow_once, allow_always, reject_once,
  reject_always);
- ``/answer N K``: the agent's K-th option, for any other;
- ``N`` may be left out while the thread has one open question.

:func:`parse_answer` reads them, the pool decides
(:meth:`~broker.sessions.pool.Pool.answer`), :func:`answer_text` says what
happened. Their sentences are in :mod:`broker.sentences`.
"""

from __future__ import annotations

import logging
import re

import attrs
import trio

from broker import sentences
from broker.chat.commands import SlashCommand
from broker.frontends.base import ReplyChannel
from broker.frontends.wire import (
    Button,
    ButtonStyle,
    Command,
    InboundEvent,
    OutboundReply,
    reply_target,
)
from broker.reply import Question, QuestionClosed, QuestionLine, Settled, TurnHandle
from broker.sessions.questions import Accepted, Answer, Decision, Refusal, Refused

log = logging.getLogger(__name__)

ANSWER_COMMANDS = frozenset({"allow", "deny", "answer"})
# option kind -> the command words that pick it
_KIND_WORDS = {
    "allow_once": "allow",
    "allow_always": "allow always",
    "reject_once": "deny",
    "reject_always": "deny always",
}
_WORDS_KIND = {words: kind for kind, words in _KIND_WORDS.items()}
_STYLES = {
    "allow_once": ButtonStyle.SUCCESS,
    "allow_always": ButtonStyle.PRIMARY,
    "reject_once": ButtonStyle.DANGER,
    "reject_always": ButtonStyle.DANGER,
}


# --- reading an answer -----------------------------------------------------------------------


def _number(word: str) -> int | None:
    return int(word) if word.isdigit() and 0 < len(word) < 10 else None


def parse_answer(command: SlashCommand) -> Answer | str:
    """The answer ``command`` (/allow, /deny, /answer) gives, or the sentence
    saying how to write it."""
    args = [a.lower() for a in command.args]
    if command.name == "answer":
        numbers = [_number(a) for a in args]
        if len(args) == 2 and numbers[0] and numbers[1]:
            return Answer(numbers[0], index=numbers[1])
        if len(args) == 1 and numbers[0]:
            return Answer(None, index=numbers[0])
        return sentences.ANSWER_TAKES_NUMBERS
    words = [command.name]
    if args and args[0] in ("always", "once"):
        if args[0] == "always":
            words.append("always")
        args = args[1:]
    kind = _WORDS_KIND[" ".join(words)]
    if not args:
        return Answer(None, kind=kind)
    if len(args) == 1 and _number(args[0]):
        return Answer(_number(args[0]), kind=kind)
    return sentences.not_a_question_number(" ".join(command.args))


# --- how a question reads -------------------------------------------------------------------


def option_commands(question: Question) -> list[str]:
    """The command that picks each option, in the agent's order: the kind's
    words for the first option of a known kind, ``/answer N K`` otherwise."""
    seen: set[str] = set()
    commands = []
    for index, option in enumerate(question.options, start=1):
        words = _KIND_WORDS.get(option.kind)
        if words is not None and option.kind not in seen:
            seen.add(option.kind)
            commands.append(f"/{words} {question.number}")
        else:
            commands.append(f"/answer {question.number} {index}")
    return commands


def buttons(question: Question) -> tuple[Button, ...]:
    return tuple(
        Button(
            option.name or option.option_id,
            command,
            _STYLES.get(option.kind, ButtonStyle.SECONDARY),
        )
        for option, command in zip(question.options, option_commands(question), strict=True)
    )


def _head(question: Question) -> list[str]:
    lines = sentences.question_head(question.number, question.title, question.kind)
    lines.extend(f"    {detail}" for detail in question.details)
    return lines


def question_text(question: Question) -> str:
    """The whole open question as text: tool, what it will do, the options
    with the commands that answer them, who may answer, the time limit."""
    lines = _head(question)
    for index, (option, command) in enumerate(
        zip(question.options, option_commands(question), strict=True), start=1
    ):
        lines.append(sentences.question_option(index, option.name or option.option_id, command))
    reject = next((o for o in question.options if o.kind.startswith("reject")), None)
    fallback = f"“{reject.name}”" if reject else sentences.CANCELLED_REQUEST
    initiator = question.initiator.name if question.initiator else None
    lines.append(sentences.who_may_answer(initiator, question.timeout_secs, fallback))
    return "\n".join(lines)


def decision_line(closed: QuestionClosed, question: Question | None = None) -> str:
    """How a question was settled, in one line."""
    option = closed.option
    if closed.settled is Settled.ANSWERED and option is not None:
        by = closed.by.name if closed.by else "someone"
        return sentences.question_answered(
            option.kind, option.name or option.option_id, by, closed.at
        )
    if closed.settled is Settled.TIMED_OUT:
        told = f"“{option.name or option.option_id}”" if option else sentences.CANCELLED_REQUEST
        return sentences.question_timed_out(question.timeout_secs if question else None, told)
    return sentences.QUESTION_CLOSED[closed.settled.value]


def closed_text(line: QuestionLine) -> str:
    assert line.closed is not None
    return "\n".join([*_head(line.question), decision_line(line.closed, line.question)])


@attrs.frozen
class ShownOption:
    label: str
    command: str


@attrs.frozen
class ShownQuestion:
    """An open question as a client reads it back from :func:`question_text`."""

    number: int
    options: tuple[ShownOption, ...]


_HEAD_LINE = re.compile(r"❓ Question (\d+): ")
_OPTION_LINE = re.compile(r"(\d+)\. (.+) — (/\S.*)")


def read_question(text: str) -> ShownQuestion | None:
    """The open question ``text`` shows, or None (any other message, or a
    question already settled: it lists no commands then)."""
    lines = text.split("\n")
    head = _HEAD_LINE.match(lines[0]) if lines else None
    if head is None:
        return None
    options = tuple(
        ShownOption(m.group(2), m.group(3))
        for line in lines[1:]
        if (m := _OPTION_LINE.fullmatch(line))
    )
    return ShownQuestion(int(head.group(1)), options) if options else None


# --- what an answer gets --------------------------------------------------------------------


def answer_text(decision: Decision) -> str:
    """The reply to an answer: what it decided, or why it decided nothing."""
    if isinstance(decision, Accepted):
        question = decision.entry.question
        closed = decision.entry.closed
        line = decision_line(closed, question) if closed else ""
        return sentences.answer_accepted(question.number, question.title, line)
    return _refusal_text(decision)


def _refusal_text(refused: Refused) -> str:
    asked = refused.asked_for
    number = asked.number if asked else None
    match refused.why:
        case Refusal.NONE_OPEN:
            return sentences.NO_OPEN_QUESTION
        case Refusal.WHICH:
            return sentences.several_open(list(refused.open_numbers))
        case Refusal.NOT_OPEN:
            if refused.closed is not None:
                return sentences.question_settled_already(number, decision_line(refused.closed))
            return sentences.question_not_open(number, list(refused.open_numbers))
        case Refusal.BOT:
            return sentences.BOTS_CANNOT_ANSWER
        case Refusal.NOT_ALLOWED:
            assert refused.question is not None
            initiator = refused.question.initiator
            return sentences.only_initiator(initiator.name if initiator else None)
        case Refusal.NO_SUCH_OPTION:
            question = refused.question
            assert question is not None
            if asked is not None and asked.index is not None:
                wanted = f"option {asked.index}"
            else:
                kind = asked.kind if asked is not None else None
                wanted = f"“{(kind or 'such').replace('_', ' ')}” option"
            choices = [
                f"{o.name or o.option_id}: {c}"
                for o, c in zip(question.options, option_commands(question), strict=True)
            ]
            return sentences.no_such_option(question.number, wanted, choices)
    raise AssertionError(refused.why)


# --- showing the questions of a turn ----------------------------------------------------------


@attrs.define
class _Shown:
    message_id: str | None
    closed: bool


async def show_questions(
    handle: TurnHandle,
    channel: ReplyChannel,
    event: InboundEvent,
    *,
    response_timeout: float,
    ask_ids: bool = True,
) -> None:
    """Show each question of ``handle``'s turn as its own message and edit it
    once settled; returns after the turn's end, when every question shown
    has its decision shown. Waits only for the channel's sends.

    With ``ask_ids`` a question is sent as a request, so its message id is
    known (the gateway without streaming may not answer requests: then the
    decision goes out as a new message). A request that gets no response is
    sent again as a plain reply, which the outbox keeps if the connection is
    gone."""
    transcript = handle.transcript
    shown: dict[int, _Shown] = {}
    target = reply_target(event)
    while True:
        seen = transcript.version
        for number, line in list(transcript.questions.items()):
            state = shown.get(number)
            if state is None:
                closed = line.closed is not None
                text = closed_text(line) if closed else question_text(line.question)
                reply = OutboundReply(
                    event.event_id,
                    event.platform,
                    target,
                    text,
                    buttons=() if closed else buttons(line.question),
                )
                message_id = None
                if ask_ids:
                    response = None
                    with trio.move_on_after(response_timeout):
                        response = await channel.request(reply)
                    message_id = response.message_id if response and response.success else None
                if message_id is not None:
                    handle.question_shown(number, message_id)
                elif not ask_ids or response is None or not response.success:
                    await channel.send_reply(reply)
                shown[number] = _Shown(message_id, closed)
            elif not state.closed and line.closed is not None:
                text = closed_text(line)
                if state.message_id is not None:
                    edit = OutboundReply(
                        state.message_id, event.platform, target, text, Command.EDIT_MESSAGE
                    )
                else:
                    edit = OutboundReply.to_event(event, text)
                await channel.send_reply(edit)
                state.closed = True
        if transcript.end is not None and all(s.closed for s in shown.values()):
            if len(shown) == len(transcript.questions):
                return
        if seen == transcript.version:
            await handle.wait_changed(seen)
        else:
            await trio.lowlevel.checkpoint()
