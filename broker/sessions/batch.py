"""Dispatch ``batch``: held messages folded into one prompt. Pure, no I/O.

In batch mode (``[pool] dispatch = "batch"``) a message that arrives while
its thread's agent is busy (running a turn, or still starting) is *held*;
when the agent is free, every held message goes to it as one prompt
(:func:`merge_prompts`). :func:`may_hold` is the admission rule: at most
``queue_depth`` messages ahead (as in queue mode) and at most
``max_batch_bytes`` held in all. The agent's reply belongs to the last
message of the batch; each of the others ends with :func:`together_end`, the
end of the batch's turn restated for it, so every message still gets exactly
one final reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker import sentences
from broker.reply import Outcome, Prompt, TurnEnd

__all__ = ["may_hold", "merge_prompts", "prompt_bytes", "together_end"]


def prompt_bytes(prompt: Prompt) -> int:
    """What ``prompt`` weighs in a batch: its text in UTF-8 plus its decoded images."""
    images = sum(len(image.data_base64) * 3 // 4 for image in prompt.images)
    return len(prompt.text.encode()) + images


def may_hold(
    ahead: int, held_bytes: int, new_bytes: int, *, queue_depth: int, max_batch_bytes: float
) -> bool:
    """Whether a message of ``new_bytes`` may wait behind ``ahead`` turns (the
    running one and the held ones) whose held part weighs ``held_bytes``. A
    message with nothing ahead is not held and always may go. Queue mode asks
    with ``max_batch_bytes`` infinite: only the count limits it."""
    if ahead == 0:
        return True
    return ahead <= queue_depth and held_bytes + new_bytes <= max_batch_bytes


def _sender_line(prompt: Prompt) -> str:
    if prompt.context:
        return prompt.context
    if prompt.author is not None:
        return sentences.batch_sender(prompt.author.name, prompt.author.id)
    return ""


def merge_prompts(prompts: Sequence[Prompt]) -> Prompt:
    """One prompt for the agent from held ``prompts`` (oldest first, two or more).

    The text opens with a line saying how many messages follow; each part has a
    header (its number, the time it was sent, how many images it brought), its
    sender line (the prompt's context, else its author) and its text. The images
    of all parts follow the text, in order. The author, who may answer the
    turn's questions, is the last message's."""
    count = len(prompts)
    parts = [sentences.batch_intro(count)]
    for number, prompt in enumerate(prompts, 1):
        lines = [sentences.batch_part_header(number, count, prompt.sent_at, len(prompt.images))]
        sender = _sender_line(prompt)
        if sender:
            lines.append(sender)
        lines.append(prompt.text)
        parts.append("\n".join(lines))
    last = prompts[-1]
    return Prompt(
        "\n\n".join(parts),
        tuple(image for prompt in prompts for image in prompt.images),
        None,
        last.author,
        sent_at=last.sent_at,
    )


def together_end(end: TurnEnd, batched: int) -> TurnEnd:
    """The end of a batched message other than the last, once the batch's turn
    ended with ``end``: the same outcome, and a sentence pointing to the reply.

    It has no ``stop_reason``, so no late text is ever added to it."""
    if end.outcome is Outcome.COMPLETED:
        return TurnEnd(Outcome.COMPLETED, sentences.answered_together(batched))
    reason = end.reason or sentences.DEFAULT_REASONS[end.outcome.value]
    return TurnEnd(end.outcome, reason=sentences.failed_together(batched, reason))
