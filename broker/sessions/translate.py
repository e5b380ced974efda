"""Between ACP and the neutral reply model: prompts out, session updates in.

Both directions are pure functions. :func:`update_to_events` maps one
``session/update`` to the reply events a user can see (kinds that mean
nothing to a chat user, and kinds we do not know, map to nothing);
:func:`prompt_blocks` builds the ACP content blocks of a prompt and says in
plain words what it had to leave out.
"""

from __future__ import annotations

from broker import reply, sentences
from broker.acp import schema
from broker.acp.schema import ContentBlock, ImageContent, TextContent

_TOOL_STATUS = {status.value: status for status in reply.ToolStatus}


def _tool_status(raw: str | None, default: reply.ToolStatus) -> reply.ToolStatus:
    return _TOOL_STATUS.get(raw or "", default)


def _text_of(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, schema.ResourceLink):
        return f"[{block.title or block.name or block.uri}]({block.uri})"
    return ""


def update_to_events(update: schema.SessionUpdate) -> list[reply.ReplyEvent]:
    """The reply events one ACP session update produces, in order."""
    if isinstance(update, schema.AgentMessageChunk):
        text = _text_of(update.content)
        return [reply.TextChunk(text)] if text else []
    if isinstance(update, schema.AgentThoughtChunk):
        text = _text_of(update.content)
        return [reply.ThoughtChunk(text)] if text else []
    if isinstance(update, schema.ToolCallStart):
        status = _tool_status(update.status, reply.ToolStatus.PENDING)
        return [reply.ToolUpdate(update.tool_call_id, status, update.title or "tool", update.kind)]
    if isinstance(update, schema.ToolCallUpdate):
        status = _tool_status(update.status, reply.ToolStatus.RUNNING)
        return [reply.ToolUpdate(update.tool_call_id, status, update.title, update.kind)]
    if isinstance(update, schema.PlanUpdate):
        entries = tuple(
            reply.PlanEntry(entry.content, entry.status, entry.priority) for entry in update.entries
        )
        return [reply.PlanUpdate(entries)]
    return []


def prompt_blocks(
    prompt: reply.Prompt, *, images_supported: bool
) -> tuple[list[ContentBlock], list[str]]:
    """The ACP content blocks for ``prompt``, and notes on what was left out.

    The optional context block (who is speaking) goes first, then the text,
    then the images when the agent advertised image prompts.
    """
    blocks: list[ContentBlock] = []
    notes: list[str] = []
    if prompt.context:
        blocks.append(TextContent(prompt.context))
    blocks.append(TextContent(prompt.text))
    for image in prompt.images:
        if images_supported:
            blocks.append(ImageContent(data=image.data_base64, mime_type=image.mime_type))
        else:
            name = image.filename or "an image"
            notes.append(sentences.image_not_accepted(name))
    return blocks, notes
