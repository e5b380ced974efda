import trio
import trio.testing

from broker.reply import (
    Outcome,
    TextChunk,
    ToolStatus,
    ToolUpdate,
    Transcript,
    TurnEnd,
    TurnStarted,
)


def test_transcript_keeps_text_in_order_and_tools_by_first_appearance() -> None:
    transcript = Transcript()
    transcript.apply(TurnStarted())
    transcript.apply(ToolUpdate("t1", ToolStatus.RUNNING, title="Read file", kind="read"))
    transcript.apply(TextChunk("Hello, "))
    transcript.apply(ToolUpdate("t2", ToolStatus.PENDING, title="Run tests", kind="execute"))
    transcript.apply(ToolUpdate("t1", ToolStatus.COMPLETED))
    transcript.apply(TextChunk("world"))
    assert transcript.text == "Hello, world"
    assert [(t.title, t.status) for t in transcript.tools.values()] == [
        ("Read file", ToolStatus.COMPLETED),
        ("Run tests", ToolStatus.PENDING),
    ]
    assert transcript.current_tool is not None
    assert transcript.current_tool.title == "Run tests"


def test_transcript_version_changes_only_on_visible_change() -> None:
    transcript = Transcript()
    transcript.apply(TextChunk("a"))
    before = transcript.version
    transcript.apply(TextChunk(""))
    assert transcript.version == before
    transcript.apply(TurnEnd(Outcome.COMPLETED, text="a", stop_reason="end_turn"))
    assert transcript.version == before + 1
    assert transcript.end is not None and transcript.end.ok


async def test_a_watcher_wakes_once_the_transcript_changes_and_not_before() -> None:
    from broker.reply import TurnHandle

    handle = TurnHandle("cli:1")
    seen = handle.transcript.version
    woke: list[int] = []

    async def watch() -> None:
        await handle.wait_changed(seen)
        woke.append(handle.transcript.version)

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []  # nothing changed yet: still waiting
            handle.push(TextChunk("hi"))
    assert woke == [seen + 1]


async def test_turn_handle_push_never_waits_and_iteration_ends_at_turn_end() -> None:
    from broker.reply import TurnHandle

    handle = TurnHandle("cli:1")
    received: list[object] = []

    async def consume() -> None:
        async for event in handle:
            received.append(event)

    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            for i in range(1000):
                handle.push(TextChunk(str(i % 10)))
            await trio.lowlevel.checkpoint()
            handle.push(TurnEnd(Outcome.COMPLETED, text="x"))
            handle.push(TextChunk("after the end is ignored"))
    assert len(received) == 1001
    assert isinstance(received[-1], TurnEnd)
    assert handle.transcript.text == "0123456789" * 100
    assert (await handle.result()).ok
