"""What a Slack message is made of: escaped text, Block Kit, reaction names.

Pure functions. Text sent to Slack has ``&``, ``<`` and ``>`` escaped (Slack
reads ``<...>`` as links and mentions). A reply with buttons is Block Kit:
its text in ``section`` blocks (each under 3,000 characters, the section
limit) and its buttons in ``actions`` blocks (at most 25 each), every button
carrying its command as ``value``; the plain text still goes as ``text``, the
notification fallback. Reactions are named, not drawn: the broker's emoji
map to Slack's names (``👀`` -> ``eyes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.frontends.wire import Button, ButtonStyle

SECTION_LIMIT = 3000
BUTTONS_PER_BLOCK = 25
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000

_STYLES = {
    ButtonStyle.PRIMARY: "primary",
    ButtonStyle.SUCCESS: "primary",
    ButtonStyle.DANGER: "danger",
}

# Slack's names for the emoji the broker reacts with (broker.turn.ReactionSet) and a few more.
EMOJI_NAMES = {
    "👀": "eyes",
    "🤔": "thinking_face",
    "🔥": "fire",
    "👨‍💻": "male-technologist",
    "⚡": "zap",
    "🆗": "ok",
    "👌": "ok_hand",
    "😱": "scream",
    "✅": "white_check_mark",
    "❌": "x",
    "⏳": "hourglass_flowing_sand",
    "👍": "+1",
    "👎": "-1",
    "🛑": "octagonal_sign",
}


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def emoji_name(emoji: str) -> str | None:
    """Slack's name for ``emoji`` (``👀`` -> ``eyes``; ``:eyes:`` and ``eyes`` as
    they are), or None when it has none the broker knows."""
    emoji = emoji.strip()
    if emoji in EMOJI_NAMES:
        return EMOJI_NAMES[emoji]
    name = emoji.strip(":")
    if name and all(c.isascii() and (c.isalnum() or c in "_+-") for c in name):
        return name
    return EMOJI_NAMES.get(emoji.replace("\ufe0f", ""))


def chunks(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a line end where one is near."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind("\n", limit // 2, limit)
        cut = cut + 1 if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def button_element(button: Button, index: int) -> dict[str, Any] | None:
    """A Block Kit button; None when its command is too long to carry."""
    if len(button.command) > BUTTON_VALUE_LIMIT:
        return None
    label = button.label.strip() or button.command
    if len(label) > BUTTON_TEXT_LIMIT:
        label = label[: BUTTON_TEXT_LIMIT - 1] + "…"
    element: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": label, "emoji": True},
        "action_id": f"broker-button-{index}",
        "value": button.command,
    }
    style = _STYLES.get(button.style)
    if style:
        element["style"] = style
    return element


def blocks(text: str, buttons: Sequence[Button]) -> list[dict[str, Any]]:
    """The Block Kit of a message showing ``text`` (already escaped) with
    ``buttons`` under it; [] without buttons (which also clears the blocks
    of a message being updated)."""
    if not buttons:
        return []
    result: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in chunks(text, SECTION_LIMIT)
    ]
    elements = [e for i, b in enumerate(buttons) if (e := button_element(b, i)) is not None]
    for start in range(0, len(elements), BUTTONS_PER_BLOCK):
        result.append({"type": "actions", "elements": elements[start : start + BUTTONS_PER_BLOCK]})
    return result
