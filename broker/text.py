"""Text that can be encoded: lone UTF-16 surrogates made visible at the edges.

JSON lets a peer write ``"\\ud800"``, and Python decodes it into a ``str``
holding a lone surrogate, which no UTF-8 encoder accepts: SQLite, a
WebSocket frame or an agent's stdin would raise on it far from where it came
in. The edges (inbound frames, agent output) therefore check ids with
:func:`has_lone_surrogate` and pass everything else through
:func:`valid_json`, which replaces each lone surrogate with U+FFFD.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
Json = TypeVar("Json")


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` cannot be encoded as UTF-8 (a decoded str never holds a valid pair)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def valid_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub(REPLACEMENT, text) if has_lone_surrogate(text) else text


def may_hold_surrogates(source: str | bytes) -> bool:
    """Whether JSON ``source`` can decode to a lone surrogate at all: only through
    an escape of a surrogate (``\\ud800`` to ``\\udfff``; an escaped non-ASCII
    letter is not one), or (bytes, which :func:`json.loads` decodes with
    ``surrogatepass``) through a raw 0xED lead byte. A cheap test before
    :func:`valid_json`."""
    if isinstance(source, bytes):
        return _SURROGATE_ESCAPE_BYTES.search(source) is not None or b"\xed" in source
    return _SURROGATE_ESCAPE.search(source) is not None or has_lone_surrogate(source)


def valid_json(value: Json) -> tuple[Json, int]:
    """``value`` (decoded JSON) with every string, keys included, made valid
    text; returns it and how many strings were changed. Iterative, so a
    deeply nested value costs no recursion."""
    changed = 0

    def fix(item: Any) -> Any:
        nonlocal changed
        if isinstance(item, str) and has_lone_surrogate(item):
            changed += 1
            return valid_text(item)
        return item

    root = [fix(value)]
    stack: list[dict[Any, Any] | list[Any]] = [root]
    while stack:
        holder = stack.pop()
        if isinstance(holder, list):
            for index, item in enumerate(holder):
                holder[index] = fixed = fix(item)
                if isinstance(fixed, dict | list):
                    stack.append(fixed)
        else:
            for key in [k for k in holder if isinstance(k, str) and has_lone_surrogate(k)]:
                holder[fix(key)] = holder.pop(key)
            for key, item in holder.items():
                holder[key] = fixed = fix(item)
                if isinstance(fixed, dict | list):
                    stack.append(fixed)
    result: Json = root[0]
    return result, changed
