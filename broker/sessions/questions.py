"""Asking the person in the thread: the open questions of a thread and their decisions.

A permission request whose tool kind has the policy ``ask`` becomes a
:class:`~broker.reply.Question` on the turn's handle (:func:`ask_person`)
and waits, bounded by ``[permissions] ask_timeout_secs``, until it is
settled. Everything that settles one is synchronous and happens in one
place, :meth:`QuestionBook.settle`: an answer accepted by
:func:`decide_answer` (who may answer, is it still open, is the option the
agent's), the timeout (the agent's reject option), ``/cancel`` (the agent
is told ``cancelled``), the end of the turn, the agent or the broker. The
first settlement wins; the I/O (the answer on the agent's stdin, the edit
of the question in the chat) happens after, in the tasks that wait.

Nothing here has a sentence for people: :mod:`broker.chat.questions` words
what these values mean.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
import trio

from broker.acp.schema import PermissionOption, PermissionRequest, ToolCall
from broker.reply import (
    Person,
    Question,
    QuestionClosed,
    QuestionOption,
    Settled,
    TurnHandle,
)

log = logging.getLogger(__name__)

ANSWER_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, float("inf"))
_KEPT_CLOSED = 50  # settled questions remembered per thread, to tell "no longer open"
_MAX_DETAIL_CHARS = 300


# --- what the tool will do ----------------------------------------------------------------


def _short(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= _MAX_DETAIL_CHARS else one[: _MAX_DETAIL_CHARS - 1] + "…"


def _lines(text: Any) -> int:
    return len(text.splitlines()) if isinstance(text, str) and text else 0


def tool_details(call: ToolCall) -> tuple[str, ...]:
    """What the tool call will do, from its ``rawInput`` and ``content``: the
    command line (``$ ...``), the file paths, a short diff summary
    (``diff out.txt: +3 -1 lines``), the URL. Unknown shapes give nothing."""
    details: list[str] = []
    raw = call.raw_input if isinstance(call.raw_input, dict) else {}
    command = raw.get("command") or raw.get("cmd")
    if isinstance(command, list):
        command = " ".join(str(part) for part in command)
    if isinstance(command, str) and command.strip():
        details.append("$ " + _short(command))
    paths: list[str] = []
    for key in ("file_path", "path", "notebook_path", "source", "destination"):
        value = raw.get(key)
        if isinstance(value, str) and value and value not in paths:
            paths.append(value)
    for location in call.locations or []:
        value = location.get("path") if isinstance(location, dict) else None
        if isinstance(value, str) and value and value not in paths:
            paths.append(value)
    diffs = [c for c in call.content or [] if isinstance(c, dict) and c.get("type") == "diff"]
    diff_paths = {d.get("path") for d in diffs}
    details.extend(f"file: {_short(p)}" for p in paths if p not in diff_paths)
    for diff in diffs:
        added, removed = _lines(diff.get("newText")), _lines(diff.get("oldText"))
        what = "new file" if diff.get("oldText") is None else "diff"
        details.append(f"{what} {_short(str(diff.get('path') or ''))}: +{added} -{removed} lines")
    url = raw.get("url")
    if isinstance(url, str) and url:
        details.append("url: " + _short(url))
    return tuple(details)


def option_problem(options: Sequence[PermissionOption]) -> Settled | None:
    """Why these options cannot be put to a person, or None when they can."""
    if not options:
        return Settled.NO_OPTIONS
    ids = [o.option_id for o in options]
    if len(set(ids)) != len(ids) or not all(ids):
        return Settled.DUPLICATE_OPTIONS
    return None


# --- the open questions of one thread -----------------------------------------------------


@attrs.define(eq=False)
class OpenQuestion:
    """A question waiting for its answer; :attr:`settled` is set once."""

    question: Question
    handle: TurnHandle
    asked_at: float  # trio clock
    reject: QuestionOption | None  # the agent's reject option (the timeout's answer)
    closed: QuestionClosed | None = None
    settled: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class QuestionCounters:
    asked: int = 0
    answered: dict[str, int] = attrs.field(factory=dict)  # option kind -> count
    timed_out: int = 0
    closed: dict[str, int] = attrs.field(factory=dict)  # Settled value -> count

    def copy(self) -> QuestionCounters:
        return QuestionCounters(self.asked, dict(self.answered), self.timed_out, dict(self.closed))


class Observes(Protocol):
    def observe(self, value: float) -> None: ...


class _Discard:
    def observe(self, value: float) -> None:
        pass


@attrs.define
class QuestionStats:
    """What the pool counts of all questions, for /metrics; ``answer_seconds``
    is the pool's histogram of time to answer."""

    counters: QuestionCounters = attrs.field(factory=QuestionCounters)
    answer_seconds: Observes = attrs.field(factory=_Discard)


class QuestionBook:
    """The open questions of one thread, numbered from 1 for as long as the
    broker runs, and the last few settled ones. Every method is synchronous."""

    def __init__(self, thread_key: str, stats: QuestionStats | None = None) -> None:
        self.thread_key = thread_key
        self.stats = stats or QuestionStats()
        self.open: dict[int, OpenQuestion] = {}
        self.closed: deque[QuestionClosed] = deque(maxlen=_KEPT_CLOSED)
        self._last_number = 0

    def ask(
        self,
        handle: TurnHandle,
        request: PermissionRequest,
        *,
        initiator: Person | None,
        timeout_secs: float,
    ) -> OpenQuestion:
        """Open a question for ``request`` and show it on ``handle``. A request
        that cannot be put to a person (no options, duplicate ids) is opened
        and settled at once."""
        self._last_number += 1
        call = request.tool_call
        options = tuple(QuestionOption(o.option_id, o.name, o.kind) for o in request.options)
        question = Question(
            self._last_number,
            call.tool_call_id,
            call.title or "a tool",
            call.kind,
            tool_details(call),
            options,
            initiator,
            timeout_secs,
        )
        reject = next(
            (o for kind in ("reject_once", "reject_always") for o in options if o.kind == kind),
            None,
        )
        entry = OpenQuestion(question, handle, trio.current_time(), reject)
        self.open[question.number] = entry
        self.stats.counters.asked += 1
        handle.push(question)
        log.info(
            "%s: question %d asked: tool %r kind %s, options %s",
            self.thread_key,
            question.number,
            question.title,
            question.kind,
            [o.option_id for o in options],
        )
        problem = option_problem(request.options)
        if problem is not None:
            self.settle(entry, problem)
        return entry

    def settle(
        self,
        entry: OpenQuestion,
        settled: Settled,
        option: QuestionOption | None = None,
        by: Person | None = None,
    ) -> bool:
        """Close ``entry`` with what the agent is told (``option``; None:
        ``cancelled``). The first call wins; later ones return False."""
        if entry.closed is not None:
            return False
        waited = trio.current_time() - entry.asked_at
        closed = QuestionClosed(entry.question.number, settled, option, by, time.time(), waited)
        entry.closed = closed
        if self.open.get(entry.question.number) is entry:
            del self.open[entry.question.number]
        self.closed.append(closed)
        counters = self.stats.counters
        counters.closed[settled.value] = counters.closed.get(settled.value, 0) + 1
        if settled is Settled.ANSWERED and option is not None:
            counters.answered[option.kind] = counters.answered.get(option.kind, 0) + 1
            self.stats.answer_seconds.observe(waited)
        elif settled is Settled.TIMED_OUT:
            counters.timed_out += 1
        entry.handle.push(closed)
        entry.settled.set()
        log.info(
            "%s: question %d (%s, kind %s) %s: option %s by %s after %.3f s",
            self.thread_key,
            entry.question.number,
            entry.question.title,
            entry.question.kind,
            settled.value,
            option.option_id if option else "cancelled",
            by.name if by else "-",
            waited,
        )
        return True

    def settle_all(self, handle: TurnHandle | None, settled: Settled) -> None:
        """Close every open question (of ``handle``'s turn only, unless None)."""
        for entry in list(self.open.values()):
            if handle is None or entry.handle is handle:
                self.settle(entry, settled)

    def waiting(self, handle: TurnHandle) -> OpenQuestion | None:
        """The oldest open question of ``handle``'s turn."""
        return next((e for e in self.open.values() if e.handle is handle), None)

    def closed_question(self, number: int) -> QuestionClosed | None:
        return next((c for c in reversed(self.closed) if c.number == number), None)


# --- an answer and its decision ------------------------------------------------------------


@attrs.frozen
class Answer:
    """What a person answered: question ``number`` (None: the only open one)
    with an option of ``kind``, or the ``index``-th option (1-based).
    ``message_id`` is the message whose button was clicked, if any."""

    number: int | None
    kind: str | None = None
    index: int | None = None
    message_id: str | None = None


@attrs.frozen
class Answerer:
    person: Person
    platform: str
    is_bot: bool = False


class Refusal(enum.Enum):
    NONE_OPEN = "none_open"  # the thread has no open question
    WHICH = "which"  # several are open and the answer names none
    NOT_OPEN = "not_open"  # no open question has that number (here)
    NO_SUCH_OPTION = "no_such_option"  # the agent did not offer that answer
    NOT_ALLOWED = "not_allowed"  # neither the turn's initiator nor an approver
    BOT = "bot"  # bots never answer


@attrs.frozen
class Accepted:
    entry: OpenQuestion
    option: QuestionOption


@attrs.frozen
class Refused:
    """``question`` is the one the answer was about (when known), ``closed``
    how it was settled (NOT_OPEN), ``open_numbers`` what is open now."""

    why: Refusal
    question: Question | None = None
    closed: QuestionClosed | None = None
    open_numbers: tuple[int, ...] = ()
    asked_for: Answer | None = None


Decision = Accepted | Refused


def is_approver(approvers: Iterable[str], answerer: Answerer) -> bool:
    """An entry of ``[permissions] approvers`` is a user id or ``platform:id``."""
    user = answerer.person.id
    return any(entry in (user, f"{answerer.platform}:{user}") for entry in approvers)


def decide_answer(
    book: QuestionBook | None, answer: Answer, answerer: Answerer, approvers: Iterable[str]
) -> Decision:
    """Whether ``answerer`` may give ``answer`` in this thread, and to what.
    Pure: changes nothing (the caller settles an :class:`Accepted`)."""
    open_now = dict(book.open) if book is not None else {}
    numbers = tuple(sorted(open_now))
    if answer.number is None:
        if not open_now:
            return Refused(Refusal.NONE_OPEN, asked_for=answer)
        if len(open_now) > 1:
            return Refused(Refusal.WHICH, open_numbers=numbers, asked_for=answer)
        entry = next(iter(open_now.values()))
    else:
        found = open_now.get(answer.number)
        if found is None:
            closed = book.closed_question(answer.number) if book is not None else None
            return Refused(Refusal.NOT_OPEN, closed=closed, open_numbers=numbers, asked_for=answer)
        entry = found
    shown = entry.handle.transcript.questions.get(entry.question.number)
    stale = shown is not None and shown.message_id not in (None, answer.message_id)
    if answer.message_id is not None and stale:  # a button of another, older message
        return Refused(Refusal.NOT_OPEN, open_numbers=numbers, asked_for=answer)
    question = entry.question
    if answerer.is_bot:
        return Refused(Refusal.BOT, question, asked_for=answer)
    initiator = question.initiator
    allowed = initiator is None or initiator.id == answerer.person.id
    if not allowed and not is_approver(approvers, answerer):
        return Refused(Refusal.NOT_ALLOWED, question, asked_for=answer)
    option: QuestionOption | None = None
    if answer.index is not None:
        if 1 <= answer.index <= len(question.options):
            option = question.options[answer.index - 1]
    else:
        option = next((o for o in question.options if o.kind == answer.kind), None)
    if option is None:
        return Refused(Refusal.NO_SUCH_OPTION, question, asked_for=answer)
    return Accepted(entry, option)


# --- waiting for the answer ------------------------------------------------------------------


@attrs.define
class WaitTally:
    """Time a turn spends waiting for people, which the hard ceiling does not
    count: :meth:`begin` and :meth:`end` bracket each question (they may
    overlap); :meth:`end` returns the time to add to the deadline once none
    is open."""

    open: int = 0
    since: float | None = None

    def begin(self, now: float) -> None:
        if self.open == 0:
            self.since = now
        self.open += 1

    def end(self, now: float) -> float:
        self.open -= 1
        if self.open or self.since is None:
            return 0.0
        paused, self.since = now - self.since, None
        return paused


async def ask_person(
    book: QuestionBook,
    handle: TurnHandle,
    request: PermissionRequest,
    *,
    initiator: Person | None,
    timeout_secs: float,
    why_cancelled: Callable[[], Settled],
) -> str | None:
    """Put ``request`` to the thread and return the ``optionId`` to answer
    the agent with (None: ``cancelled``).

    Waits until the question is settled (an answer, or another settlement
    from outside), at most ``timeout_secs``: then the agent's reject option
    is chosen (``cancelled`` when it offered none). Cancelled (``/cancel``
    cancels the client's permission scopes, a stop cancels the session's
    nursery), it settles the question with ``why_cancelled()`` and
    re-raises."""
    entry = book.ask(handle, request, initiator=initiator, timeout_secs=timeout_secs)
    try:
        with trio.move_on_after(timeout_secs):
            await entry.settled.wait()
        if entry.closed is None:
            book.settle(entry, Settled.TIMED_OUT, entry.reject)
    finally:
        if entry.closed is None:
            book.settle(entry, why_cancelled())
    assert entry.closed is not None
    return entry.closed.option.option_id if entry.closed.option else None
