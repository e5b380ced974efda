import itertools
import random

import pytest

from broker.chat.present import (
    CLEARED_PART,
    EditThrottle,
    MessageUpdate,
    NothingChanged,
    ReactionAction,
    ReactionCommand,
    SendNow,
    WaitUntil,
    message_updates,
    reaction_changes,
    reaction_for,
    render,
    render_end,
    split_message,
)
from broker.reply import (
    Outcome,
    Queued,
    ReplyEvent,
    TextChunk,
    ToolStatus,
    ToolUpdate,
    Transcript,
    TurnEnd,
    TurnStarted,
)


def test_first_edit_goes_out_at_once() -> None:
    throttle = EditThrottle(1.5)
    assert throttle.decide(100.0, 1, "⏳ Starting…") == SendNow("⏳ Starting…")


def test_edit_within_the_interval_waits_until_the_interval_has_passed() -> None:
    throttle = EditThrottle(1.5)
    throttle.decide(100.0, 1, "a")
    assert throttle.decide(100.2, 2, "ab") == WaitUntil(101.5)
    assert throttle.decide(101.4, 3, "abc") == WaitUntil(101.5)
    assert throttle.decide(101.5, 3, "abc") == SendNow("abc")
    assert throttle.decide(101.6, 4, "abcd") == WaitUntil(103.0)


def test_unchanged_text_is_never_sent_again() -> None:
    throttle = EditThrottle(1.0)
    throttle.decide(0.0, 1, "same")
    assert throttle.decide(5.0, 1, "same") == NothingChanged()  # same version
    assert throttle.decide(6.0, 2, "same") == NothingChanged()  # new version, same text
    assert throttle.decide(7.0, 3, "new") == SendNow("new")


def test_empty_text_is_never_sent_while_streaming() -> None:
    throttle = EditThrottle(0.0)
    assert throttle.decide(0.0, 1, "  \n") == NothingChanged()
    assert throttle.sent_text is None


def test_final_text_is_never_held_back_by_the_interval_and_goes_last() -> None:
    throttle = EditThrottle(1.5)
    throttle.decide(10.0, 1, "partial")
    assert throttle.decide(10.5, 2, "more") == WaitUntil(11.5)  # streaming edits are paced
    assert throttle.decide(10.5, 2, "done", final=True) == SendNow("done", final=True)
    assert throttle.finished
    assert throttle.decide(20.0, 3, "anything later") == NothingChanged()
    assert throttle.decide(20.0, 4, "another final", final=True) == NothingChanged()
    assert throttle.sent_text == "done"


def test_final_text_equal_to_what_is_shown_finishes_without_an_edit() -> None:
    throttle = EditThrottle(1.5)
    throttle.decide(0.0, 1, "the answer")
    assert throttle.decide(0.1, 2, "the answer", final=True) == NothingChanged()
    assert throttle.finished


def test_empty_final_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        EditThrottle(1.0).decide(0.0, 1, "", final=True)


def test_negative_or_infinite_interval_is_refused() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="edit interval"):
            EditThrottle(bad)


def test_random_schedules_keep_the_interval_and_end_with_the_final_text() -> None:
    rng = random.Random(99)
    for _ in range(300):
        interval = rng.choice([0.0, 0.5, 1.5])
        throttle = EditThrottle(interval)
        now, version, text = 0.0, 0, ""
        sends: list[tuple[float, str, bool]] = []
        for step in range(rng.randint(1, 60)):
            now += rng.choice([0.0, 0.125, 0.75, 2.0])  # exact in binary
            if rng.random() < 0.7:
                version += 1
                text += rng.choice(["", "x", "y "])
            final = step == 59 or rng.random() < 0.03
            decision = throttle.decide(now, version, text or "…", final=final)
            if isinstance(decision, WaitUntil):
                assert decision.when > now
                now = decision.when
                decision = throttle.decide(now, version, text or "…", final=final)
                assert not isinstance(decision, WaitUntil)
            if isinstance(decision, SendNow):
                sends.append((now, decision.text, decision.final))
            if final:
                break
        times = [t for t, _, final in sends if not final]
        assert all(b - a >= interval for a, b in itertools.pairwise(times))
        texts = [s for _, s, _ in sends]
        assert all(a != b for a, b in itertools.pairwise(texts))
        assert all(not final for _, _, final in sends[:-1])
        if throttle.finished:
            assert throttle.sent_text == (text or "…")


def test_streamed_turn_through_render_ends_with_the_final_message() -> None:
    transcript = Transcript()
    throttle = EditThrottle(1.0)
    shown: list[str] = []
    events: list[ReplyEvent] = [
        TurnStarted(),
        ToolUpdate("t1", ToolStatus.RUNNING, title="Read file"),
        ToolUpdate("t1", ToolStatus.COMPLETED),
        TextChunk("Hello"),
        TextChunk(" world"),
    ]
    for second, event in enumerate(events):
        transcript.apply(event)
        decision = throttle.decide(
            second * 0.6, transcript.version, render(transcript, final=False)
        )
        if isinstance(decision, SendNow):
            shown.append(decision.text)
    end = TurnEnd(Outcome.COMPLETED, text="Hello world!", stop_reason="end_turn")  # late "!"
    transcript.apply(end)
    final = render_end(end, transcript)
    decision = throttle.decide(3.0, transcript.version, final, final=True)
    assert decision == SendNow("✅ Read file\n\nHello world!", final=True)
    assert throttle.finished
    assert shown == [
        "⚙️ Working…",
        "✅ Read file\n\n⚙️ Working…",
        "✅ Read file\n\nHello world",
    ]


def test_message_updates_edit_only_changed_parts_and_send_new_ones() -> None:
    assert message_updates([], ["a"]) == [MessageUpdate(0, "a")]
    assert message_updates(["a", "b"], ["a", "bc", "d"]) == [
        MessageUpdate(1, "bc"),
        MessageUpdate(2, "d"),
    ]
    assert message_updates(["a", "b"], ["a", "b"]) == []


def test_message_updates_clear_messages_the_reply_no_longer_needs() -> None:
    assert message_updates(["a", "b", CLEARED_PART], ["ab"]) == [
        MessageUpdate(0, "ab"),
        MessageUpdate(1, CLEARED_PART),
    ]


def test_long_streamed_reply_continues_in_a_second_message() -> None:
    first = split_message("line\n" * 500, 2000)  # a full first message and a second one
    second = split_message("line\n" * 700, 2000)
    updates = message_updates(first, second)
    assert len(first) == len(second) == 2
    assert [u.index for u in updates] == [1]
    assert all(len(u.text) <= 2000 for u in updates)


def test_reactions_follow_the_turn_from_queued_to_done() -> None:
    transcript = Transcript()
    assert reaction_for(transcript) is None
    transcript.apply(Queued(1))
    assert reaction_for(transcript) == "👀"
    transcript.apply(TurnStarted())
    assert reaction_for(transcript) == "🤔"
    transcript.apply(ToolUpdate("t1", ToolStatus.RUNNING, title="Read", kind="read"))
    assert reaction_for(transcript) == "🔥"
    transcript.apply(ToolUpdate("t2", ToolStatus.RUNNING, title="Run tests", kind="execute"))
    assert reaction_for(transcript) == "👨‍💻"
    transcript.apply(ToolUpdate("t3", ToolStatus.PENDING, title="Fetch", kind="fetch"))
    assert reaction_for(transcript) == "⚡"
    for tool in ("t1", "t2", "t3"):
        transcript.apply(ToolUpdate(tool, ToolStatus.COMPLETED))
    assert reaction_for(transcript) == "🤔"
    transcript.apply(TurnEnd(Outcome.COMPLETED, stop_reason="end_turn"))
    assert reaction_for(transcript) == "🆗"


@pytest.mark.parametrize(
    ("outcome", "emoji"),
    [
        (Outcome.CANCELLED, "👌"),
        (Outcome.TIMED_OUT, "😱"),
        (Outcome.AGENT_DIED, "😱"),
        (Outcome.BUSY, "😱"),
    ],
)
def test_reaction_for_ended_turns(outcome: Outcome, emoji: str) -> None:
    transcript = Transcript()
    transcript.apply(TurnEnd(outcome))
    assert reaction_for(transcript) == emoji


def test_reaction_change_removes_the_old_emoji_before_adding_the_new() -> None:
    assert reaction_changes("🤔", "🔥") == [
        ReactionCommand(ReactionAction.REMOVE, "🤔"),
        ReactionCommand(ReactionAction.ADD, "🔥"),
    ]
    assert reaction_changes(None, "👀") == [ReactionCommand(ReactionAction.ADD, "👀")]
    assert reaction_changes("🔥", None) == [ReactionCommand(ReactionAction.REMOVE, "🔥")]
    assert reaction_changes("🔥", "🔥") == []
    assert ReactionAction.ADD.value == "add_reaction"


def test_the_interval_runs_from_when_a_slow_send_finished() -> None:
    throttle = EditThrottle(1.5)
    assert isinstance(throttle.decide(0.0, 1, "a"), SendNow)
    throttle.sent(4.0)  # showing it took 4 s (many continuation messages)
    decision = throttle.decide(4.1, 2, "ab")
    assert decision == WaitUntil(5.5)
    throttle.sent(1.0)  # a clock reading from before cannot shorten the interval
    assert throttle.decide(5.0, 2, "ab") == WaitUntil(5.5)
    assert isinstance(throttle.decide(5.5, 2, "ab"), SendNow)
