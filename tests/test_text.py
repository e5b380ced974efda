"""Valid text at the edges: which JSON can hold lone surrogates, and how they are replaced."""

from __future__ import annotations

import json

import pytest

from broker.text import may_hold_surrogates, valid_json, valid_text


@pytest.mark.parametrize(
    ("source", "may"),
    [
        ('{"t":"caf\\u00e9"}', False),  # an escaped letter: no walk needed
        ('{"t":"\\ud800"}', True),
        ('{"t":"\\uDFFF"}', True),
        (b'{"t":"\\ud83d\\ude00"}', True),  # a valid pair looks the same until decoded
        (b'{"t":"\xed\xa0\x80"}', True),  # raw surrogate bytes (json.loads: surrogatepass)
        ('{"t":"plain"}', False),
    ],
)
def test_only_json_that_can_decode_to_a_lone_surrogate_is_walked(
    source: str | bytes, may: bool
) -> None:
    assert may_hold_surrogates(source) is may


def test_every_string_keys_included_is_made_valid_however_deep() -> None:
    value = json.loads('{"\\ud800k": [[{"v": "a\\udc00"}]], "ok": "\\ud83d\\ude00"}')
    nested = value
    for _ in range(5000):  # deeper than any recursion limit
        nested = [nested]
    fixed, changed = valid_json(nested)
    inner = fixed
    for _ in range(5000):
        inner = inner[0]
    assert inner == {"\ufffdk": [[{"v": "a\ufffd"}]], "ok": "😀"} and changed == 2
    assert valid_text("x\ud800y") == "x\ufffdy"
