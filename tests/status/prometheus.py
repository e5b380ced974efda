"""A strict reader of the Prometheus text exposition format 0.0.4, for the tests.

Every line must be a ``# HELP``, a ``# TYPE`` or a sample; every sample must
belong to a family announced by both before it; histogram buckets must be
cumulative and end with ``le="+Inf"`` equal to ``_count``. Anything else
raises AssertionError naming the line.
"""

from __future__ import annotations

import math
import re

import attrs

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf)|NaN"
SAMPLE = re.compile(rf"({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? ({VALUE})")
HELP = re.compile(rf"# HELP ({NAME}) (.+)")
TYPE = re.compile(rf"# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


@attrs.define
class Family:
    name: str
    kind: str = ""
    help: str = ""
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = attrs.Factory(dict)

    def value(self, name: str | None = None, **labels: str) -> float:
        return self.samples[(name or self.name, frozenset(labels.items()))]


def _family_of(sample: str, families: dict[str, Family]) -> Family:
    if sample in families:
        return families[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and base in families and families[base].kind == "histogram":
            return families[base]
    raise AssertionError(f"sample {sample} has no # HELP / # TYPE before it")


def parse(text: str) -> dict[str, Family]:
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, Family] = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if match := HELP.fullmatch(line):
            assert match[1] not in families, f"{where}: family announced twice"
            families[match[1]] = Family(match[1], help=match[2])
        elif match := TYPE.fullmatch(line):
            family = families.get(match[1])
            assert family is not None and not family.kind, f"{where}: TYPE without HELP first"
            family.kind = match[2]
        elif match := SAMPLE.fullmatch(line):
            family = _family_of(match[1], families)
            assert family.kind and family.help, f"{where}: family lacks HELP or TYPE"
            labels = frozenset(LABEL_PAIR.findall(match[2] or ""))
            key = (match[1], labels)
            assert key not in family.samples, f"{where}: duplicate sample"
            family.samples[key] = float(match[3])
        else:
            raise AssertionError(f"{where}: not HELP, TYPE or a sample")
    for family in families.values():
        assert family.samples, f"{family.name} has no samples"
        if family.kind == "histogram":
            _check_histogram(family)
        if family.kind == "counter":
            assert family.name.endswith("_total"), f"counter {family.name} lacks _total"
    return families


def _check_histogram(family: Family) -> None:
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in family.samples.items()
        if name.endswith("_bucket")
    )
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), f"{family.name}: buckets are not cumulative"
    assert buckets and math.isinf(buckets[-1][0]), f'{family.name}: no le="+Inf" bucket'
    assert buckets[-1][1] == family.value(f"{family.name}_count")
    family.value(f"{family.name}_sum")
