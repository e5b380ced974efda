"""Splitting reply text into messages that fit a chat platform's limit.

Pure functions, no I/O. Text is split at line boundaries, preferably before a
code block (so a block that fits one message is not cut) or after a paragraph,
when that still fills half a message. A line longer than the limit is cut (at
the last space when there is one late enough, never between a character and
its combining marks). A fenced code block that is cut
in two is closed at the end of one part and reopened, with the same fence and
language, at the start of the next, so every part renders on its own.

Limits count ``len()`` (code points), including the fence lines added at a
cut. Note that Telegram itself counts UTF-16 code units, so a text dense with
emoji outside the BMP can still be refused there; use a smaller limit if that
matters.
"""

from __future__ import annotations

import re
import unicodedata

import attrs

PLATFORM_LIMITS: dict[str, int] = {"telegram": 4096, "discord": 2000, "slack": 4000}
DEFAULT_LIMIT = 4096

# Up to three spaces, then three or more backticks or tildes, then the info string.
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
# Characters that must stay with the character before them.
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}


def platform_limit(platform: str) -> int:
    """The message length limit of ``platform`` (case-insensitive); 4096 when unknown."""
    return PLATFORM_LIMITS.get(platform.strip().lower(), DEFAULT_LIMIT)


@attrs.frozen
class Fence:
    """An open fenced code block: its opening line and what closes it."""

    line: str  # the opening line as written, e.g. "```python"
    indent: str
    marker: str  # the run of backticks or tildes

    @property
    def reopen(self) -> str:
        """Prefix that reopens the block at the start of a part."""
        return self.line + "\n"

    @property
    def close(self) -> str:
        """Suffix that closes the block at the end of a part."""
        return "\n" + self.indent + self.marker

    def closed_by(self, line: str) -> bool:
        match = _FENCE.match(line)
        if match is None or match.group(3).strip():
            return False
        marker = match.group(2)
        return marker[0] == self.marker[0] and len(marker) >= len(self.marker)


def fence_after(state: Fence | None, line: str) -> Fence | None:
    """The fence state after ``line``, given the state before it (CommonMark rules, simplified)."""
    if state is not None:
        return None if state.closed_by(line) else state
    match = _FENCE.match(line)
    if match is None:
        return None
    indent, marker, info = match.groups()
    if marker[0] == "`" and "`" in info:
        return None  # ```inline``` is not a fence
    return Fence(line, indent, marker)


def close_open_fence(text: str) -> str:
    """``text`` with a closing fence added if it ends inside a fenced code block.

    Agents stream code blocks whose closing fence has not arrived yet; closing
    it keeps every shown state of a reply well-formed markdown.
    """
    state: Fence | None = None
    for line in text.split("\n"):
        state = fence_after(state, line)
    return text if state is None else text + state.close


@attrs.frozen
class MessagePart:
    """One message of a split text.

    ``body`` is a slice of the original text, ``prefix``/``suffix`` the fence
    lines added at the cut, and ``newline_after`` tells whether the cut
    swallowed the newline that followed ``body``. Concatenating
    ``body + ("\\n" if newline_after else "")`` over all parts gives the
    original text back.
    """

    body: str
    prefix: str = ""
    suffix: str = ""
    newline_after: bool = False

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.suffix


@attrs.frozen
class _Line:
    text: str
    before: Fence | None  # fence state before the line
    after: Fence | None


class _Packer:
    """Packs lines into parts, tracking the fence state of each line.

    Lines are added greedily; when a part is full, :meth:`flush` may end it a
    little earlier at a nicer place (see there)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[MessagePart] = []
        self.lines: list[_Line] = []
        self.body_len = 0  # len("\n".join(lines))
        self.prefix = ""
        self.state: Fence | None = None  # fence state at the end of what was added

    def _close_len(self, fence: Fence | None) -> int:
        usable = self._usable(fence)
        return len(usable.close) if usable else 0

    def _usable(self, fence: Fence | None) -> Fence | None:
        # A fence whose reopen and close lines take half the limit is not repaired.
        if fence is None or len(fence.reopen) + len(fence.close) > self.limit // 2:
            return None
        return fence

    def _fits(self, line: str, after: Fence | None) -> bool:
        body = self.body_len + (1 if self.lines else 0) + len(line)
        return len(self.prefix) + body + self._close_len(after) <= self.limit

    def _append(self, line: str, after: Fence | None) -> None:
        self.body_len += (1 if self.lines else 0) + len(line)
        self.lines.append(_Line(line, self.state, after))
        self.state = after

    def add_line(self, line: str) -> None:
        after = fence_after(self.state, line)
        overflow = True
        while self.lines and not self._fits(line, after):
            self.flush(newline_after=True, choose_cut=overflow)
            overflow = False  # what was carried over is not cut again by choice
        if self._fits(line, after):
            self._append(line, after)
        else:
            self._hard_split(line, after)

    def flush(self, *, newline_after: bool, choose_cut: bool = False) -> None:
        """End the current part, moving the lines after a better cut to the next part.

        An opening fence line never ends a part. With ``choose_cut`` (the part
        is full) the cut moves back to just before a code block that would be
        cut, or else to just after the last blank line outside code, provided
        the part keeps at least half the limit.
        """
        keep = self._cut_index(choose_cut)
        carried = self.lines[keep:]
        self.lines = self.lines[:keep]
        if carried:
            newline_after = True
        usable = self._usable(self.lines[-1].after)
        body = "\n".join(x.text for x in self.lines)
        close = usable.close if usable else ""
        self.parts.append(MessagePart(body, self.prefix, close, newline_after))
        self.prefix = usable.reopen if usable else ""
        self.lines = carried
        self.body_len = sum(len(x.text) for x in carried) + max(len(carried) - 1, 0)

    def _cut_index(self, choose_cut: bool) -> int:
        """How many of the current lines stay in the part being ended (at least one)."""
        lines = self.lines
        if len(lines) > 1 and lines[-1].before is None and lines[-1].after is not None:
            return len(lines) - 1
        if not choose_cut:
            return len(lines)
        enough = self.limit // 2
        kept = len(self.prefix) + self.body_len  # size of lines[:k] + prefix, as k decreases
        blank: int | None = None
        for k in range(len(lines) - 1, 0, -1):
            kept -= len(lines[k].text) + 1
            if kept < enough:
                break
            opener = lines[k].before is None and lines[k].after is not None
            if opener and lines[-1].after is lines[k].after:
                return k  # the block that would be cut starts afresh in the next part
            if blank is None and lines[k - 1].after is None and not lines[k - 1].text.strip():
                blank = k
        return len(lines) if blank is None else blank

    def _hard_split(self, line: str, after: Fence | None) -> None:
        """Cut a line that does not fit into an empty part over several parts."""
        rest = line
        while not self._fits(rest, after):
            close = max(self._close_len(self.state), self._close_len(after))
            room = self.limit - len(self.prefix) - close
            cut = _cut_point(rest, room)
            self.lines.append(_Line(rest[:cut], self.state, self.state))
            self.body_len = cut
            self.flush(newline_after=False)
            rest = rest[cut:]
        self._append(rest, after)

    def finish(self) -> list[MessagePart]:
        while self.lines:
            self.flush(newline_after=False)
        return self.parts


def _cut_point(line: str, room: int) -> int:
    """Where to cut ``line`` (longer than ``room``) so the head is 1..room long."""
    space = line.rfind(" ", 0, room)
    if space >= room // 2:
        return space + 1  # the space stays at the end of the head
    cut = room
    while cut > 1 and (_sticks_to_previous(line[cut]) or line[cut - 1] == "\u200d"):
        cut -= 1
    return cut


def _sticks_to_previous(char: str) -> bool:
    return (
        char in _JOINERS
        or unicodedata.combining(char) != 0
        or "\U0001f3fb" <= char <= "\U0001f3ff"  # skin tone modifiers
    )


def split_parts(text: str, limit: int) -> list[MessagePart]:
    """Split ``text`` into parts whose :attr:`MessagePart.text` is at most ``limit`` long.

    Parts are filled greedily line by line; the returned list reassembles to
    ``text`` exactly (see :class:`MessagePart`). A part's body may be
    whitespace only when the text has such a run at a cut;
    :func:`split_message` drops those. Raises ``ValueError`` if ``limit < 1``.
    """
    if limit < 1:
        raise ValueError(f"message limit must be at least 1, got {limit}")
    if not text:
        return []
    if len(text) <= limit:
        return [MessagePart(text)]
    packer = _Packer(limit)
    for line in text.split("\n"):
        packer.add_line(line)
    return packer.finish()


def split_message(text: str, limit: int) -> list[str]:
    """Split ``text`` into chat messages of at most ``limit`` characters each.

    Every returned message is non-empty and shows something: parts with a
    whitespace-only body are dropped (platforms refuse or hide them), so an
    empty or blank ``text`` gives ``[]``; newlines left at the end of a part
    by a cut at a paragraph break are dropped. A fenced code block cut in two is
    closed and reopened with the same language. Raises ``ValueError`` if
    ``limit < 1``.
    """
    return [
        part.prefix + part.body.rstrip("\n") + part.suffix
        for part in split_parts(text, limit)
        if part.body.strip()
    ]
