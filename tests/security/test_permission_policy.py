"""The permission policy is obeyed per tool kind, by a real agent's requests.

The fake agent's ``@permission KIND`` asks ``session/request_permission`` with
all four option kinds and says in its reply which option was selected.
"""

from __future__ import annotations

from pathlib import Path

import trio

from broker.reply import Prompt
from broker.sessions.pool import open_pool
from broker.testing.harness import fake_agent_config


async def test_each_tool_kind_gets_the_option_its_policy_names(tmp_path: Path) -> None:
    config = fake_agent_config(
        tmp_path,
        permissions={
            "default": "reject",
            "by_kind": {"read": "allow_always", "edit": "allow_once", "execute": "reject"},
        },
    )
    expected = {
        "read": "selected allow_always",
        "edit": "selected allow_once",
        "execute": "selected reject_once",
        "delete": "selected reject_once",  # not listed: the default
        "fetch": "selected reject_once",
    }
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            ends = {
                kind: await pool.submit("sec:perm", Prompt(f"@permission {kind}")).result()
                for kind in expected
            }
    for kind, sentence in expected.items():
        assert ends[kind].ok, ends[kind]
        assert sentence in ends[kind].text, (kind, ends[kind].text)


async def test_an_allowing_default_still_rejects_the_kinds_set_to_reject(tmp_path: Path) -> None:
    config = fake_agent_config(
        tmp_path,
        permissions={
            "default": "allow_always",
            "by_kind": {"execute": "reject", "delete": "reject"},
        },
    )
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            texts = {
                kind: (await pool.submit("sec:perm", Prompt(f"@permission {kind}")).result()).text
                for kind in ("execute", "delete", "edit")
            }
    assert "selected reject_once" in texts["execute"]
    assert "selected reject_once" in texts["delete"]
    assert "selected allow_always" in texts["edit"]
