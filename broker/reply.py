"""The neutral reply model: what a turn tells its caller.

A turn (one prompt sent to one agent for one thread) produces a stream of
:data:`ReplyEvent` values and always ends with exactly one :class:`TurnEnd`.
Nothing here knows ACP or any chat platform: the session translates ACP
``session/update`` notifications into these events, and front-ends render
them (see :mod:`broker.chat.present`).

A :class:`Question` is the agent asking the person in the thread for
permission (policy ``ask``); :class:`QuestionClosed` says how it was settled.
Each front-end renders both as it can (see :mod:`broker.chat.questions`).

:class:`Transcript` folds events into the state a renderer shows: the tool
lines in the order they started, the plan, and the text so far. Folding is
synchronous and cheap, so a relay of many thousand chunks per second costs
one list append per chunk.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable

import attrs

from broker.pulse import Pulse


class Outcome(enum.Enum):
    """How a turn ended. Every outcome but COMPLETED carries a reason."""

    COMPLETED = "completed"  # the agent answered with a stop reason
    CANCELLED = "cancelled"  # /cancel, /reset or the agent stopped with `cancelled`
    TIMED_OUT = "timed_out"  # the hard ceiling was reached
    AGENT_DIED = "agent_died"  # the process exited mid-turn
    BUSY = "busy"  # the thread's queue was full; the prompt never ran
    POOL_FULL = "pool_full"  # every session is busy; the prompt never ran
    START_FAILED = "start_failed"  # the agent could not be started or resumed
    SHUTDOWN = "shutdown"  # the broker is stopping
    ERROR = "error"  # the agent answered the prompt with an error


@attrs.frozen
class Queued:
    """The prompt waits behind ``position`` earlier prompts of the same thread.

    ``batched`` (dispatch ``batch``) is how many held messages, this one among
    them, go to the agent together as its next turn; 0 in queue mode. It is
    pushed again each time the batch grows."""

    position: int
    batched: int = 0


@attrs.frozen
class TurnStarted:
    """The prompt was sent to the agent.

    ``context_reset`` is true when the thread's earlier conversation could not
    be restored (the agent cannot load sessions), so the user can be told.
    ``notes`` are plain sentences about what was changed in the prompt (an
    image dropped because the agent does not take images, say).
    """

    context_reset: bool = False
    notes: tuple[str, ...] = ()


@attrs.frozen
class TextChunk:
    text: str


@attrs.frozen
class ThoughtChunk:
    text: str


class ToolStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


@attrs.frozen
class ToolUpdate:
    """A tool call started or changed. ``title``/``kind`` are None when unchanged."""

    tool_call_id: str
    status: ToolStatus
    title: str | None = None
    kind: str | None = None


@attrs.frozen
class PlanEntry:
    content: str
    status: str = "pending"  # pending | in_progress | completed
    priority: str = "medium"


@attrs.frozen
class PlanUpdate:
    entries: tuple[PlanEntry, ...]


@attrs.frozen
class Person:
    """Someone in a chat: ``id`` as the platform knows them, ``name`` to show."""

    id: str
    name: str


@attrs.frozen
class QuestionOption:
    """One of the agent's own answers; ``kind`` is ACP's (allow_once, allow_always,
    reject_once, reject_always) or whatever else the agent sent."""

    option_id: str
    name: str
    kind: str


@attrs.frozen
class Question:
    """The agent asks permission to run a tool; the person in the thread decides.

    ``number`` is short and unique in the thread while the broker runs;
    ``details`` say what the tool will do (a command line, a file path and a
    short diff summary); ``options`` are the agent's, in its order.
    ``initiator`` may answer, and so may the configured approvers.
    """

    number: int
    tool_call_id: str
    title: str
    kind: str | None
    details: tuple[str, ...]
    options: tuple[QuestionOption, ...]
    initiator: Person | None
    timeout_secs: float


class Settled(enum.Enum):
    """How a question was closed."""

    ANSWERED = "answered"  # a person chose an option
    TIMED_OUT = "timed_out"  # nobody answered in time: the agent got its reject option
    CANCELLED = "cancelled"  # /cancel: the agent got `cancelled`
    AGENT_GONE = "agent_gone"  # the agent exited or its turn ended
    EVICTED = "evicted"  # the session was suspended to make room
    SHUTDOWN = "shutdown"  # the broker is stopping
    RESET = "reset"  # /reset
    NO_OPTIONS = "no_options"  # the agent offered nothing to choose: refused
    DUPLICATE_OPTIONS = "duplicate_options"  # two options share an id: refused


@attrs.frozen
class QuestionClosed:
    """Question ``number`` is settled: ``option`` is what the agent was told
    (None: ``cancelled``), ``by`` who chose it, ``at`` when (seconds since the
    epoch) and ``waited_secs`` how long it was open."""

    number: int
    settled: Settled
    option: QuestionOption | None = None
    by: Person | None = None
    at: float = 0.0
    waited_secs: float = 0.0


@attrs.frozen
class TurnEnd:
    """The last event of every turn.

    ``text`` is the whole reply text (possibly partial when the turn did not
    complete), ``reason`` a plain sentence for anything but COMPLETED, and
    ``detail`` extra evidence such as the tail of the agent's stderr.
    """

    outcome: Outcome
    text: str = ""
    stop_reason: str | None = None
    reason: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETED


@attrs.frozen
class Image:
    data_base64: str
    mime_type: str
    filename: str = ""


@attrs.frozen
class Prompt:
    """What a user asked, free of any platform: text, images and an optional
    context block (who is speaking) that goes to the agent before the text."""

    text: str
    images: tuple[Image, ...] = ()
    context: str | None = None
    author: Person | None = None  # who sent it: may answer the turn's questions
    sent_at: str = ""  # when, as the platform stamped it (ISO 8601); "" when unknown


ReplyEvent = (
    Queued
    | TurnStarted
    | TextChunk
    | ThoughtChunk
    | ToolUpdate
    | PlanUpdate
    | Question
    | QuestionClosed
    | TurnEnd
)


@attrs.define
class ToolLine:
    tool_call_id: str
    title: str
    kind: str | None
    status: ToolStatus


@attrs.define
class QuestionLine:
    """A question of the turn and, once settled, how."""

    question: Question
    closed: QuestionClosed | None = None
    message_id: str | None = None  # the platform message showing it, once known


@attrs.define
class Transcript:
    """The accumulated state of one turn, folded from its events in order."""

    chunks: list[str] = attrs.field(factory=list)
    tools: dict[str, ToolLine] = attrs.field(factory=dict)
    plan: tuple[PlanEntry, ...] = ()
    questions: dict[int, QuestionLine] = attrs.field(factory=dict)
    thought_chars: int = 0
    queued_position: int | None = None
    batched: int = 0  # held messages going together as the next turn (see Queued)
    started: bool = False
    context_reset: bool = False
    notes: tuple[str, ...] = ()
    end: TurnEnd | None = None
    late_text: str = ""  # what the agent sent for this turn after its end
    closed: bool = False  # no more late text will come
    version: int = 0  # bumped on every visible change, for "edit only if changed"

    @property
    def text(self) -> str:
        if len(self.chunks) > 1:
            self.chunks[:] = ["".join(self.chunks)]
        return self.chunks[0] if self.chunks else ""

    @property
    def current_tool(self) -> ToolLine | None:
        """The most recently started tool that is still pending or running."""
        for line in reversed(self.tools.values()):
            if line.status in (ToolStatus.PENDING, ToolStatus.RUNNING):
                return line
        return None

    @property
    def open_questions(self) -> list[Question]:
        return [q.question for q in self.questions.values() if q.closed is None]

    def apply(self, event: ReplyEvent) -> None:
        if isinstance(event, TextChunk):
            if not event.text:
                return
            self.chunks.append(event.text)
        elif isinstance(event, ThoughtChunk):
            self.thought_chars += len(event.text)
            return  # thoughts are counted, not shown
        elif isinstance(event, ToolUpdate):
            line = self.tools.get(event.tool_call_id)
            if line is None:
                self.tools[event.tool_call_id] = ToolLine(
                    event.tool_call_id, event.title or "tool", event.kind, event.status
                )
            else:
                line.status = event.status
                if event.title:
                    line.title = event.title
                if event.kind:
                    line.kind = event.kind
        elif isinstance(event, PlanUpdate):
            self.plan = event.entries
        elif isinstance(event, Question):
            self.questions[event.number] = QuestionLine(event)
        elif isinstance(event, QuestionClosed):
            asked = self.questions.get(event.number)
            if asked is None or asked.closed is not None:
                return
            asked.closed = event
        elif isinstance(event, Queued):
            self.queued_position = event.position
            self.batched = event.batched
        elif isinstance(event, TurnStarted):
            self.started = True
            self.queued_position = None
            self.batched = 0
            self.context_reset = event.context_reset
            self.notes = event.notes
        elif isinstance(event, TurnEnd):
            self.end = event
        self.version += 1


class TurnHandle:
    """One turn as its caller sees it: live events and a live transcript.

    The session pushes events synchronously with :meth:`push`; pushing never
    waits, so a slow or vanished consumer cannot hold up an agent. Consumers
    either iterate the events (``async for event in handle``; one consumer,
    each event once, ending after the :class:`TurnEnd`) or watch
    :attr:`transcript` with :meth:`wait_changed` to render coalesced state.
    Events pushed after the :class:`TurnEnd` are ignored: a turn ends once.

    Text the agent sends for this turn after its end arrives with
    :meth:`push_late` (in ``transcript.late_text``) until the session calls
    :meth:`close`: then nothing more belongs to this turn. An end without a
    ``stop_reason`` (the agent never answered: a refusal, a death, a stop)
    closes the turn at once, since nothing can come late for it.
    """

    def __init__(self, thread_key: str, *, on_end: Callable[[TurnEnd], None] | None = None) -> None:
        self.thread_key = thread_key
        self._on_end = on_end  # called once, with the TurnEnd, as it is pushed
        self.transcript = Transcript()
        self._pending: list[ReplyEvent] = []
        self._changed = Pulse()

    def __repr__(self) -> str:
        state = self.transcript.end.outcome.value if self.transcript.end else "open"
        return f"<TurnHandle {self.thread_key} {state} v{self.transcript.version}>"

    @property
    def done(self) -> bool:
        return self.transcript.end is not None

    def push(self, event: ReplyEvent) -> None:
        if self.transcript.end is not None:
            return
        self._pending.append(event)
        self.transcript.apply(event)
        if isinstance(event, TurnEnd):
            if event.stop_reason is None:
                self.transcript.closed = True
            if self._on_end is not None:
                self._on_end(event)
        self._changed.fire()

    def question_shown(self, number: int, message_id: str) -> None:
        """The chat shows question ``number`` as platform message ``message_id``
        (a button click names it; see :func:`broker.sessions.questions.decide_answer`)."""
        line = self.transcript.questions.get(number)
        if line is not None:
            line.message_id = message_id

    def push_late(self, text: str) -> None:
        """Add ``text`` the agent sent for this turn after its :class:`TurnEnd`.
        Ignored before the end and after :meth:`close`."""
        transcript = self.transcript
        if transcript.end is None or transcript.closed or not text:
            return
        transcript.late_text += text
        self._bump()

    def close(self) -> None:
        """No more text belongs to this turn (the next prompt went out, or the
        session ended). Idempotent."""
        if not self.transcript.closed:
            self.transcript.closed = True
            self._bump()

    def _bump(self) -> None:
        self.transcript.version += 1
        self._changed.fire()

    async def wait_changed(self, seen_version: int) -> None:
        """Return once the transcript's version is past ``seen_version``."""
        while self.transcript.version <= seen_version:
            await self._changed.wait()

    async def result(self) -> TurnEnd:
        """Wait for the end of the turn and return its :class:`TurnEnd`."""
        while self.transcript.end is None:
            await self._changed.wait()
        return self.transcript.end

    async def __aiter__(self) -> AsyncIterator[ReplyEvent]:
        while True:
            batch, self._pending = self._pending, []
            for event in batch:
                yield event
                if isinstance(event, TurnEnd):
                    return
            if not batch:
                await self._changed.wait()
