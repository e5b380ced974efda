"""A reader for the block-style YAML that ``kubectl kustomize`` prints, and no more.

Mappings (``key: value``, ``key:`` then a deeper block or a ``- `` list at the same
indentation), lists, literal block scalars (``|``, ``|-``), and plain, quoted or flow-empty
(``[]``, ``{}``) scalars. Anything else is a ValueError naming the line, so a change in the
printer's style fails the test instead of passing it.
"""

from __future__ import annotations

import json
import re
from typing import Any

_INT = re.compile(r"-?\d+")


def documents(text: str) -> list[Any]:
    """Every document of a ``---``-separated stream."""
    chunks = re.split(r"^---$", text, flags=re.MULTILINE)
    return [_Reader(chunk.splitlines()).read() for chunk in chunks if chunk.strip()]


def _scalar(text: str) -> Any:
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if text[:1] in "[{&*!|>":
        raise ValueError(f"not block-style YAML: {text!r}")
    if _INT.fullmatch(text):
        return int(text)
    return {"true": True, "false": False, "null": None}.get(text, text)


class _Reader:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.i = 0

    def _skip_blank(self) -> None:
        while self.i < len(self.lines) and not self.lines[self.i].strip():
            self.i += 1

    def _indent(self) -> int:
        line = self.lines[self.i]
        return len(line) - len(line.lstrip(" "))

    def read(self) -> Any:
        self._skip_blank()
        return self._block(self._indent())

    def _block(self, indent: int) -> Any:
        self._skip_blank()
        if self.lines[self.i].lstrip().startswith("- "):
            return self._sequence(indent)
        return self._mapping(indent)

    def _at(self, indent: int) -> bool:
        self._skip_blank()
        return self.i < len(self.lines) and self._indent() == indent

    def _sequence(self, indent: int) -> list[Any]:
        items = []
        while self._at(indent) and self.lines[self.i].lstrip().startswith("- "):
            content = self.lines[self.i].lstrip()[2:]
            if ": " in content or content.endswith(":"):
                self.lines[self.i] = " " * (indent + 2) + content  # the item is a mapping
                items.append(self._mapping(indent + 2))
            else:
                items.append(_scalar(content))
                self.i += 1
        return items

    def _mapping(self, indent: int) -> dict[str, Any]:
        mapping: dict[str, Any] = {}
        while self._at(indent) and not self.lines[self.i].lstrip().startswith("- "):
            line = self.lines[self.i].strip()
            key, sep, rest = line.partition(": ") if ": " in line else line.partition(":")
            if not sep:
                raise ValueError(f"line {self.i + 1}: expected 'key: value', got {line!r}")
            key = _scalar(key)
            self.i += 1
            rest = rest.strip()
            if rest in ("|", "|-"):
                mapping[key] = self._literal(indent, keep_newline=rest == "|")
            elif rest:
                mapping[key] = _scalar(rest)
            else:
                self._skip_blank()
                nested = self.i < len(self.lines) and (
                    self._indent() > indent
                    or (self._indent() == indent and self.lines[self.i].lstrip().startswith("- "))
                )
                mapping[key] = self._block(self._indent()) if nested else None
        return mapping

    def _literal(self, indent: int, *, keep_newline: bool) -> str:
        body: list[str] = []
        block_indent: int | None = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                current = len(line) - len(line.lstrip(" "))
                if current <= indent:
                    break
                block_indent = current if block_indent is None else block_indent
                body.append(line[block_indent:])
            else:
                body.append("")
            self.i += 1
        while body and not body[-1]:
            body.pop()
        return "\n".join(body) + ("\n" if keep_newline else "")
