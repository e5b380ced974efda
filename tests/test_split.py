import random

import pytest

from broker.chat.split import (
    MessagePart,
    close_open_fence,
    fence_after,
    platform_limit,
    split_message,
    split_parts,
)


def reassemble(parts: list[MessagePart]) -> str:
    return "".join(p.body + ("\n" if p.newline_after else "") for p in parts)


def open_fence_at_end(text: str) -> bool:
    state = None
    for line in text.split("\n"):
        state = fence_after(state, line)
    return state is not None


def test_platform_limits_match_the_chat_platforms() -> None:
    assert platform_limit("telegram") == 4096
    assert platform_limit("Discord") == 2000
    assert platform_limit("slack") == 4000
    assert platform_limit("line") == 4096


def test_short_text_is_one_message_unchanged() -> None:
    assert split_message("hello\nworld", 4096) == ["hello\nworld"]


def test_text_exactly_at_the_limit_is_not_split() -> None:
    text = "a" * 50 + "\n" + "b" * 49
    assert len(text) == 100
    assert split_message(text, 100) == [text]
    assert split_message(text + "c", 100) == ["a" * 50, "b" * 49 + "c"]


def test_split_happens_at_line_boundaries() -> None:
    text = "\n".join(f"line {i}" for i in range(10))  # each line is 6 chars
    parts = split_message(text, 19)  # three lines would take 20
    assert parts == [
        "line 0\nline 1",
        "line 2\nline 3",
        "line 4\nline 5",
        "line 6\nline 7",
        "line 8\nline 9",
    ]


def test_single_huge_line_is_hard_split_into_full_parts() -> None:
    text = "x" * 10_000
    parts = split_message(text, 4096)
    assert parts == ["x" * 4096, "x" * 4096, "x" * 1808]


def test_long_prose_line_is_cut_after_a_space() -> None:
    text = "word " * 30  # 150 chars, no newline
    parts = split_message(text.rstrip(), 40)
    assert all(len(p) <= 40 for p in parts)
    assert all(p.endswith("word ") for p in parts[:-1])
    assert "".join(parts) == text.rstrip()


def test_unicode_is_counted_in_characters_and_not_cut_inside_a_combined_character() -> None:
    text = "é" * 5000  # precomposed: 1 char each
    parts = split_message(text, 4096)
    assert [len(p) for p in parts] == [4096, 904]
    combining = "e\u0301" * 30  # e + combining acute: never separate the pair
    parts = split_message(combining, 7)
    assert all(p[0] != "\u0301" for p in parts)
    assert "".join(parts) == combining
    family = "👨\u200d👩\u200d👧" * 5  # ZWJ sequence of 5 chars
    parts = split_message(family, 6)
    assert "".join(parts) == family
    assert all(
        len(p) <= 6 and not p.startswith("\u200d") and not p.endswith("\u200d") for p in parts
    )


def test_code_fence_cut_in_two_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(20))
    text = f"Here is the script:\n```python\n{code}\n```\nDone."
    parts = split_message(text, 80)
    assert len(parts) > 2
    assert parts[0].startswith("Here is the script:\n```python\n")
    for part in parts:
        assert len(part) <= 80
        assert not open_fence_at_end(part), part
    for part in parts[1:]:
        assert part.startswith("```python\n")
    for part in parts[:-1]:
        assert part.endswith("\n```")
    assert parts[-1].endswith("```\nDone.")


def test_part_does_not_end_with_a_bare_opening_fence() -> None:
    text = "a" * 30 + "\n```js\n" + "let x = 1;\n" * 3 + "```"
    parts = split_message(text, 40)
    assert parts[0] == "a" * 30
    assert parts[1].startswith("```js\nlet x = 1;")


def test_tilde_fences_and_longer_backtick_fences_are_kept() -> None:
    text = "~~~~\n" + "```not a closer\n" * 6 + "~~~~"
    parts = split_message(text, 45)
    assert len(parts) > 1
    assert all(p.startswith("~~~~\n") and p.endswith("\n~~~~") for p in parts)


def test_huge_line_inside_a_code_block_is_cut_with_fences_on_every_part() -> None:
    text = "```\n" + "y" * 100 + "\n```"
    parts = split_message(text, 30)
    assert all(len(p) <= 30 for p in parts)
    assert all(p.startswith("```\n") and p.endswith("\n```") for p in parts)
    assert "".join(p[4:-4] for p in parts) == "y" * 100


def test_inline_triple_backticks_do_not_open_a_block() -> None:
    text = "use ```x``` here\n" * 10
    assert all("```\n" not in p[-5:] for p in split_message(text, 40))


def test_empty_and_blank_text_give_no_messages() -> None:
    assert split_message("", 10) == []
    assert split_message("   \n  ", 10) == []


def test_trailing_newline_is_not_sent_as_an_empty_message() -> None:
    assert split_message("a" * 10 + "\n", 10) == ["a" * 10]


def test_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        split_message("x", 0)


ALPHABET = [
    "a",
    "b",
    " ",
    "\n",
    "é",
    "日",
    "😀",
    "\u0301",
    "\u200d",
    "`",
    "~",
    "```",
    "```py\n",
    "\n```\n",
    "~~~\n",
    "word ",
    "\n\n",
    "    ```\n",
]


def random_text(rng: random.Random) -> str:
    pieces = [rng.choice(ALPHABET) for _ in range(rng.randint(0, 120))]
    if rng.random() < 0.2:
        pieces.append("z" * rng.randint(1, 300))
    return "".join(pieces)


def test_property_parts_respect_the_limit_and_reassemble_to_the_original() -> None:
    rng = random.Random(20261123)
    for _ in range(3000):
        text = random_text(rng)
        limit = rng.choice([1, 2, 3, 5, 8, 13, 20, 40, 100, 4096])
        parts = split_parts(text, limit)
        assert reassemble(parts) == text, (text, limit)
        for part in parts:
            assert 0 < len(part.text) <= limit or not part.body, (text, limit, part)
            if part.prefix:
                assert part.prefix.endswith("\n") and fence_after(None, part.prefix[:-1])
            if part.suffix:
                assert part.suffix.startswith("\n")
        messages = split_message(text, limit)
        assert messages == [
            p.prefix + p.body.rstrip("\n") + p.suffix for p in parts if p.body.strip()
        ]
        assert all(0 < len(m) <= limit and m.strip() for m in messages)


def test_property_every_part_closes_the_code_blocks_it_opens() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        lines = []
        for _ in range(rng.randint(1, 40)):
            roll = rng.random()
            if roll < 0.15:
                lines.append(rng.choice(["```", "```python", "~~~", "````sh"]))
            else:
                lines.append("c" * rng.randint(0, 30))
        text = "\n".join(lines)
        limit = rng.choice([30, 50, 80, 200])
        whole_open = open_fence_at_end(text)
        parts = split_message(text, limit)
        for i, part in enumerate(parts):
            assert len(part) <= limit
            if i < len(parts) - 1 or not whole_open:
                assert not open_fence_at_end(part), (text, limit, parts)


def test_close_open_fence_closes_only_an_unclosed_block() -> None:
    assert close_open_fence("a\n```py\nx") == "a\n```py\nx\n```"
    assert close_open_fence("  ~~~~\nx") == "  ~~~~\nx\n  ~~~~"
    assert close_open_fence("```\nx\n```") == "```\nx\n```"
    assert close_open_fence("no code") == "no code"


def test_full_part_ends_at_the_last_paragraph_break_when_that_keeps_it_half_full() -> None:
    first = "First paragraph line one.\nFirst paragraph line two."  # 51 chars
    second = "Second paragraph starts here.\nAnd goes on for a while here."
    parts = split_message(f"{first}\n\n{second}", 80)
    assert parts == [first, second]


def test_code_block_that_fits_the_next_part_is_moved_there_whole() -> None:
    prose = "Some explanation that is long enough to matter."  # 47 chars
    block = "```python\nprint(1)\nprint(2)\n```"
    parts = split_message(f"{prose}\n{block}\nAfter.", 70)
    assert parts == [prose, f"{block}\nAfter."]


def test_paragraph_break_too_early_in_the_part_is_not_used() -> None:
    text = "Hi.\n\n" + "\n".join("word " * 3 for _ in range(10))
    parts = split_message(text, 60)
    assert parts[0].startswith("Hi.\n\nword")
    assert all(len(p) <= 60 for p in parts)
