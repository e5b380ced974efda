"""Questions without any process: what a question says, who may answer it,
and the ask timeout under trio's autojump clock with exact virtual times."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker.acp.policy import PermissionPolicy
from broker.acp.schema import PermissionOption, PermissionRequest, ToolCall
from broker.chat.commands import SlashCommand, parse_command
from broker.chat.questions import (
    answer_text,
    buttons,
    closed_text,
    parse_answer,
    question_text,
)
from broker.frontends.wire import ButtonStyle
from broker.reply import Person, QuestionLine, Settled, TurnHandle
from broker.sessions.questions import (
    Accepted,
    Answer,
    Answerer,
    QuestionBook,
    Refusal,
    Refused,
    WaitTally,
    ask_person,
    decide_answer,
    tool_details,
)

ALICE = Person("42", "alice")
BOB = Person("7", "bob")
OPTIONS = [
    PermissionOption("allow", "Allow", "allow_once"),
    PermissionOption("allow_always", "Always Allow", "allow_always"),
    PermissionOption("reject", "Reject", "reject_once"),
]


def request(options: list[PermissionOption] = OPTIONS, **call: object) -> PermissionRequest:
    tool = ToolCall(tool_call_id="t1", title="Write out.txt", kind="edit", **call)  # type: ignore[arg-type]
    return PermissionRequest("s1", tool, options)


def never_cancelled() -> Settled:
    raise AssertionError("not cancelled")


async def test_the_question_says_what_the_tool_will_do_and_how_to_answer() -> None:
    diff = {"type": "diff", "path": "/w/out.txt", "oldText": "a\n", "newText": "a\nb\nc\n"}
    book = QuestionBook("cli:1")
    entry = book.ask(
        TurnHandle("cli:1"),
        request(content=[diff], raw_input={"file_path": "/w/out.txt"}),
        initiator=ALICE,
        timeout_secs=300,
    )
    text = question_text(entry.question)
    assert text == (
        "❓ Question 1: may the agent use this tool?\n"
        "🔧 Write out.txt (edit)\n"
        "    diff /w/out.txt: +3 -1 lines\n"
        "1. Allow — /allow 1\n"
        "2. Always Allow — /allow always 1\n"
        "3. Reject — /deny 1\n"
        "@alice or an approver can answer. With no answer within 5m00s the agent is told “Reject”."
    )
    assert [(b.label, b.command, b.style) for b in buttons(entry.question)] == [
        ("Allow", "/allow 1", ButtonStyle.SUCCESS),
        ("Always Allow", "/allow always 1", ButtonStyle.PRIMARY),
        ("Reject", "/deny 1", ButtonStyle.DANGER),
    ]


def test_tool_details_show_the_command_line_the_paths_and_the_url() -> None:
    bash = ToolCall(
        "t", "Bash", "execute", raw_input={"command": "rm -rf build", "description": "x"}
    )
    assert tool_details(bash) == ("$ rm -rf build",)
    argv = ToolCall("t", "run", "execute", raw_input={"command": ["git", "push", "--force"]})
    assert tool_details(argv) == ("$ git push --force",)
    new = ToolCall("t", "Write", "edit", content=[{"type": "diff", "path": "/a", "newText": "x\n"}])
    assert tool_details(new) == ("new file /a: +1 -0 lines",)
    moved = ToolCall("t", "mv", "move", locations=[{"path": "/b"}], raw_input={"path": "/a"})
    assert tool_details(moved) == ("file: /a", "file: /b")
    fetch = ToolCall("t", "Fetch", "fetch", raw_input={"url": "https://example.org"})
    assert tool_details(fetch) == ("url: https://example.org",)
    assert tool_details(ToolCall("t", "odd", raw_input=["not", "a", "dict"])) == ()


async def test_other_options_are_answered_by_number_and_repeated_kinds_too() -> None:
    options = [
        PermissionOption("a", "Allow", "allow_once"),
        PermissionOption("b", "Allow in this folder", "allow_once"),
        PermissionOption("c", "Ask the admin", "other"),
    ]
    entry = QuestionBook("k").ask(
        TurnHandle("k"), request(options), initiator=None, timeout_secs=60
    )
    assert [b.command for b in buttons(entry.question)] == [
        "/allow 1",
        "/answer 1 2",
        "/answer 1 3",
    ]
    assert (
        "Anyone here can answer. With no answer within 1m00s the agent is told that the request"
        in (question_text(entry.question))
    )


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/allow", Answer(None, kind="allow_once")),
        ("/allow 3", Answer(3, kind="allow_once")),
        ("/allow once 3", Answer(3, kind="allow_once")),
        ("/allow always 3", Answer(3, kind="allow_always")),
        ("/deny 12", Answer(12, kind="reject_once")),
        ("/deny always", Answer(None, kind="reject_always")),
        ("/answer 3 2", Answer(3, index=2)),
        ("/answer 2", Answer(None, index=2)),
        ("/allow@mybot 3", Answer(3, kind="allow_once")),
    ],
)
def test_typed_answers_are_read(typed: str, expected: Answer) -> None:
    command = parse_command(typed)
    assert command is not None and parse_answer(command) == expected


def test_unreadable_answers_say_how_to_write_them() -> None:
    assert str(parse_answer(SlashCommand("allow", ("three",)))).startswith(
        "“three” is not a question number. Answer a question with /allow N"
    )
    assert str(parse_answer(SlashCommand("answer", ("3",)))) != ""
    assert str(parse_answer(SlashCommand("answer", ()))).startswith("/answer takes the question")
    assert str(parse_answer(SlashCommand("deny", ("1", "2")))).startswith("“1 2” is not")


async def test_who_may_answer_is_the_initiator_or_an_approver_never_a_bot() -> None:
    book = QuestionBook("cli:1")
    entry = book.ask(TurnHandle("cli:1"), request(), initiator=ALICE, timeout_secs=300)
    allow = Answer(1, kind="allow_once")
    assert decide_answer(book, allow, Answerer(ALICE, "cli"), ()) == Accepted(
        entry, entry.question.options[0]
    )
    stranger = decide_answer(book, allow, Answerer(BOB, "cli"), ())
    assert isinstance(stranger, Refused) and stranger.why is Refusal.NOT_ALLOWED
    assert answer_text(stranger) == "Only @alice or an approver can answer this."
    for approvers in (["7"], ["cli:7"]):
        assert isinstance(decide_answer(book, allow, Answerer(BOB, "cli"), approvers), Accepted)
    assert isinstance(decide_answer(book, allow, Answerer(BOB, "slack"), ["cli:7"]), Refused)
    bot = decide_answer(book, allow, Answerer(ALICE, "cli", is_bot=True), ["42"])
    assert isinstance(bot, Refused) and bot.why is Refusal.BOT
    assert book.open == {1: entry}  # deciding changes nothing


async def test_first_answer_wins_and_a_second_is_told_the_question_is_closed() -> None:
    handle = TurnHandle("cli:1")
    book = QuestionBook("cli:1")
    entry = book.ask(handle, request(), initiator=ALICE, timeout_secs=300)
    first = decide_answer(book, Answer(1, kind="reject_once"), Answerer(ALICE, "cli"), ())
    assert isinstance(first, Accepted)
    assert book.settle(entry, Settled.ANSWERED, first.option, ALICE)
    assert not book.settle(entry, Settled.TIMED_OUT)
    second = decide_answer(book, Answer(1, kind="allow_once"), Answerer(ALICE, "cli"), ())
    assert isinstance(second, Refused) and second.why is Refusal.NOT_OPEN
    assert answer_text(second).startswith(
        "This question is no longer open: question 1 was settled (🚫 rejected by @alice at "
    )
    line = handle.transcript.questions[1]
    assert line.closed is not None and line.closed.option == first.option
    assert closed_text(line).endswith(decision_line_of(line))


def decision_line_of(line: QuestionLine) -> str:
    return closed_text(line).rsplit("\n", 1)[1]


async def test_answers_naming_no_open_question_or_option_are_refused() -> None:
    book = QuestionBook("cli:1")
    none = decide_answer(book, Answer(None, kind="allow_once"), Answerer(ALICE, "cli"), ())
    assert answer_text(none) == "There is no open question in this thread to answer."
    handle = TurnHandle("cli:1")
    book.ask(handle, request(), initiator=ALICE, timeout_secs=300)
    book.ask(handle, request(), initiator=ALICE, timeout_secs=300)
    which = decide_answer(book, Answer(None, kind="allow_once"), Answerer(ALICE, "cli"), ())
    assert answer_text(which) == (
        "Several questions are open here (1, 2): say which one, e.g. /allow 1 or /deny 1."
    )
    missing = decide_answer(book, Answer(5, kind="allow_once"), Answerer(ALICE, "cli"), ())
    assert answer_text(missing) == (
        "This question is no longer open: there is no open question 5 in this thread. "
        "Open here now: 1, 2."
    )
    always = decide_answer(book, Answer(1, kind="reject_always"), Answerer(ALICE, "cli"), ())
    assert answer_text(always) == (
        "Question 1 has no “reject always” option. Choose one of: Allow: /allow 1; "
        "Always Allow: /allow always 1; Reject: /deny 1."
    )
    ninth = decide_answer(book, Answer(1, index=9), Answerer(ALICE, "cli"), ())
    assert isinstance(ninth, Refused) and ninth.why is Refusal.NO_SUCH_OPTION
    assert decide_answer(None, Answer(1, index=1), Answerer(ALICE, "cli"), ()) == Refused(
        Refusal.NOT_OPEN, asked_for=Answer(1, index=1)
    )


async def test_no_options_or_duplicate_ids_are_settled_at_once() -> None:
    book = QuestionBook("k")
    handle = TurnHandle("k")
    empty = book.ask(handle, request([]), initiator=ALICE, timeout_secs=300)
    twice = [OPTIONS[0], PermissionOption("allow", "Reject", "reject_once")]
    dup = book.ask(handle, request(twice), initiator=ALICE, timeout_secs=300)
    assert empty.closed is not None and empty.closed.settled is Settled.NO_OPTIONS
    assert dup.closed is not None and dup.closed.settled is Settled.DUPLICATE_OPTIONS
    assert book.open == {}
    assert closed_text(handle.transcript.questions[1]).endswith(
        "⚠️ The agent offered nothing to choose from, so the request was refused."
    )


async def test_an_unanswered_question_times_out_to_the_reject_option_at_exactly_its_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = QuestionBook("k")
    handle = TurnHandle("k")
    start = trio.current_time()
    choice = await ask_person(
        book, handle, request(), initiator=ALICE, timeout_secs=300, why_cancelled=never_cancelled
    )
    assert choice == "reject"
    assert trio.current_time() - start == 300
    closed = handle.transcript.questions[1].closed
    assert closed is not None and closed.settled is Settled.TIMED_OUT and closed.waited_secs == 300
    assert closed_text(handle.transcript.questions[1]).endswith(
        "⏱️ No answer within 5m00s: the agent was told “Reject”."
    )
    assert book.stats.counters.timed_out == 1


async def test_without_a_reject_option_the_timeout_answers_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    choice = await ask_person(
        QuestionBook("k"),
        TurnHandle("k"),
        request(OPTIONS[:2]),
        initiator=ALICE,
        timeout_secs=5,
        why_cancelled=never_cancelled,
    )
    assert choice is None


async def test_an_answer_before_the_limit_is_what_the_agent_gets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = QuestionBook("k")
    handle = TurnHandle("k")
    async with trio.open_nursery() as nursery:

        async def answer_later() -> None:
            await trio.sleep(299)
            decision = decide_answer(book, Answer(1, kind="allow_always"), Answerer(ALICE, "k"), ())
            assert isinstance(decision, Accepted)
            book.settle(decision.entry, Settled.ANSWERED, decision.option, ALICE)

        nursery.start_soon(answer_later)
        start = trio.current_time()
        choice = await ask_person(
            book,
            handle,
            request(),
            initiator=ALICE,
            timeout_secs=300,
            why_cancelled=never_cancelled,
        )
    assert choice == "allow_always" and trio.current_time() - start == 299
    assert book.stats.counters.answered == {"allow_always": 1}


async def test_a_cancelled_wait_closes_the_question_with_the_reason_given(
    autojump_clock: trio.testing.MockClock,
) -> None:
    book = QuestionBook("k")
    handle = TurnHandle("k")
    with trio.move_on_after(10):
        await ask_person(
            book,
            handle,
            request(),
            initiator=ALICE,
            timeout_secs=300,
            why_cancelled=lambda: Settled.SHUTDOWN,
        )
    closed = handle.transcript.questions[1].closed
    assert closed is not None and closed.settled is Settled.SHUTDOWN and closed.waited_secs == 10
    assert book.open == {}


async def test_overlapping_questions_pause_the_ceiling_once_for_their_union(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tally = WaitTally()
    tally.begin(10.0)
    tally.begin(15.0)
    assert tally.end(20.0) == 0.0  # one is still open
    assert tally.end(40.0) == 30.0  # from the first opened to the last closed
    tally.begin(50.0)
    assert tally.end(51.5) == 1.5


def test_the_ask_policy_asks_and_without_anyone_to_ask_rejects() -> None:
    policy = PermissionPolicy(default="allow_once", by_kind={"execute": "ask"})
    assert policy.asks("execute") and not policy.asks("read")
    assert policy.choose(OPTIONS, "execute") == "reject"
    assert policy.choose(OPTIONS[:2], "execute") is None  # never an allow option
