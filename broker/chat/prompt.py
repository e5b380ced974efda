"""A chat event -> the :class:`~broker.reply.Prompt` for its agent.

:func:`build_prompt` is synchronous: the text without a leading mention of the
bot, the sender as ``Prompt.context`` when ``[prompt] sender_context`` is on,
``image`` attachments as images, ``text_file`` attachments decoded (UTF-8, bad
bytes replaced) and appended as fenced blocks. An attachment over
``max_attachment_bytes``, of an unknown type or with undecodable data is left
out with a note for the reply; a message over ``max_message_bytes`` in all, or
with nothing left to send, is a :class:`Refusal` and reaches no agent. The
next hop, Prompt -> ACP content blocks, is :mod:`broker.sessions.translate`.
"""

from __future__ import annotations

import base64
import binascii

import attrs

from broker import sentences
from broker.config import PromptConfig
from broker.frontends.wire import InboundEvent
from broker.reply import Image, Person, Prompt


@attrs.frozen
class PromptPlan:
    """A prompt ready for the pool, and notes for the user about what was left out."""

    prompt: Prompt
    notes: tuple[str, ...] = ()


@attrs.frozen
class Refusal:
    """The message cannot go to the agent; ``text`` is the error reply."""

    text: str


def sender_context(event: InboundEvent) -> str:
    sender = event.sender
    return (
        f"[Message from {sender.display_name} (username {sender.name}, id {sender.id}) "
        f"on {event.platform}]"
    )


def fenced(name: str, content: str) -> str:
    """``content`` in a fenced block (longer fence than any run of backticks in it)."""
    fence = "```"
    while fence in content:
        fence += "`"
    return f"{name}:\n{fence}\n{content.rstrip(chr(10))}\n{fence}"


def build_prompt(event: InboundEvent, text: str, config: PromptConfig) -> PromptPlan | Refusal:
    """The prompt for ``event`` whose text (mention already stripped) is ``text``."""
    notes: list[str] = []
    images: list[Image] = []
    files: list[str] = []
    total = len(event.content.text.encode())
    for number, attachment in enumerate(event.content.attachments, 1):
        name = attachment.filename or f"attachment {number}"
        if attachment.type == "unavailable":
            notes.append(sentences.attachment_unavailable(name))
            continue
        declared = attachment.size or 0
        if not attachment.data and declared > config.max_attachment_bytes:
            # A front-end that fetches files itself leaves an oversized one's data out.
            limit = config.max_attachment_bytes
            notes.append(sentences.attachment_too_large(name, declared, limit))
            continue
        if attachment.type not in ("image", "text_file"):
            notes.append(sentences.attachment_unsupported(name, attachment.type))
            continue
        try:
            data = base64.b64decode(attachment.data, validate=True)
        except (binascii.Error, ValueError):
            notes.append(sentences.attachment_not_base64(name))
            continue
        total += len(data)
        if len(data) > config.max_attachment_bytes:
            notes.append(
                sentences.attachment_too_large(name, len(data), config.max_attachment_bytes)
            )
        elif attachment.type == "image":
            mime = attachment.mime_type or "image/png"
            images.append(Image(base64.b64encode(data).decode(), mime, attachment.filename))
        else:
            files.append(fenced(name, data.decode("utf-8", errors="replace")))
    if total > config.max_message_bytes:
        return Refusal(sentences.message_too_large(total, config.max_message_bytes))
    prompt_text = "\n\n".join(part for part in (text, *files) if part)
    if not prompt_text.strip() and not images:
        return Refusal(sentences.nothing_to_send(notes))
    context = sender_context(event) if config.sender_context else None
    author = Person(event.sender.id, event.sender.name)
    prompt = Prompt(prompt_text, tuple(images), context, author, sent_at=event.timestamp)
    return PromptPlan(prompt, tuple(notes))
