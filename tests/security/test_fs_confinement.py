"""An agent's fs/* requests cannot reach outside the working directory.

A real agent process (raw_agent.py) sends the requests through the real pool
and ACP client; it reports the answers it got in its reply.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from broker.config import BrokerConfig
from broker.reply import Prompt
from broker.sessions.pool import open_pool

OUTSIDE_ERROR = "path is outside the working directory"


async def agent_fs(config: BrokerConfig, requests: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Have the agent send ``requests`` and return the answers it got."""
    with trio.fail_after(30):
        async with open_pool(config) as pool:
            end = await pool.submit("sec:fs", Prompt("fs " + json.dumps(requests))).result()
    assert end.ok, end
    answers: list[Any] = json.loads(end.text)
    return answers


def read(path: str) -> tuple[str, dict[str, Any]]:
    return ("fs/read_text_file", {"path": path})


def write(path: str, content: str) -> tuple[str, dict[str, Any]]:
    return ("fs/write_text_file", {"path": path, "content": content})


def assert_refused(answer: dict[str, Any], message: str = OUTSIDE_ERROR) -> None:
    assert "result" not in answer, answer
    assert answer["error"]["code"] == -32602, answer
    assert message in answer["error"]["message"], answer


async def test_reads_outside_the_working_directory_are_refused_by_every_route(
    tmp_path: Path, raw_agent_config: Callable[..., BrokerConfig]
) -> None:
    config = raw_agent_config(agent={"fs_read": True})
    work = Path(config.agent.working_dir)
    (work / "inside.txt").write_text("inside\n")
    (work / "sub").mkdir()
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    (secret_dir / "key.txt").write_text("SECRET\n")
    (work / "link-to-file").symlink_to(secret_dir / "key.txt")
    (work / "link-to-dir").symlink_to(secret_dir)
    (work / "sub" / "link-up").symlink_to("../..")

    answers = await agent_fs(
        config,
        [
            read("inside.txt"),
            read(str(work / "inside.txt")),
            read("../secret/key.txt"),
            read("sub/../../secret/key.txt"),
            read(str(secret_dir / "key.txt")),
            read("/etc/passwd"),
            read("link-to-file"),
            read("link-to-dir/key.txt"),
            read("sub/link-up/secret/key.txt"),
            read(f"{work}/../secret/key.txt"),
        ],
    )

    assert answers[0] == {"result": {"content": "inside\n"}}
    assert answers[1] == {"result": {"content": "inside\n"}}
    for answer in answers[2:]:
        assert_refused(answer)
    assert "SECRET" not in json.dumps(answers)


async def test_writes_outside_the_working_directory_are_refused_and_change_nothing(
    tmp_path: Path, raw_agent_config: Callable[..., BrokerConfig]
) -> None:
    config = raw_agent_config(agent={"fs_read": True, "fs_write": True})
    work = Path(config.agent.working_dir)
    target = tmp_path / "target.txt"
    target.write_text("original\n")
    (work / "link-to-target").symlink_to(target)
    (work / "link-to-dir").symlink_to(tmp_path)

    answers = await agent_fs(
        config,
        [
            write("../target.txt", "overwritten"),
            write(str(target), "overwritten"),
            write("link-to-target", "overwritten"),
            write("../planted.txt", "planted"),
            write("link-to-dir/planted.txt", "planted"),
            write("link-to-dir/deeper/planted.txt", "planted"),
            write("new/inside.txt", "fine"),
        ],
    )

    for answer in answers[:6]:
        assert_refused(answer)
    assert answers[6] == {"result": {}}
    assert target.read_text() == "original\n"
    assert not (tmp_path / "planted.txt").exists() and not (tmp_path / "deeper").exists()
    assert (work / "new" / "inside.txt").read_text() == "fine"


async def test_disabled_fs_methods_and_malformed_paths_get_clear_errors(
    raw_agent_config: Callable[..., BrokerConfig],
) -> None:
    config = raw_agent_config()  # fs_read and fs_write are off by default
    answers = await agent_fs(config, [read("inside.txt"), write("x.txt", "x")])
    assert answers[0]["error"]["code"] == -32601
    assert "fs/read_text_file is disabled" in answers[0]["error"]["message"]
    assert answers[1]["error"]["code"] == -32601
    assert "fs/write_text_file is disabled" in answers[1]["error"]["message"]

    config = raw_agent_config(agent={"fs_read": True})
    answers = await agent_fs(config, [("fs/read_text_file", {"path": 7}), read("missing.txt")])
    assert_refused(answers[0], "path must be a str")
    assert answers[1]["error"]["code"] == -32002  # missing file inside: not found, nothing else


async def test_a_path_with_a_nul_byte_is_refused_as_invalid_params(
    raw_agent_config: Callable[..., BrokerConfig],
) -> None:
    config = raw_agent_config(agent={"fs_read": True, "fs_write": True})
    answers = await agent_fs(config, [read("nul\u0000byte"), write("nul\u0000byte", "x")])
    for answer in answers:
        assert answer.get("error", {}).get("code") == -32602, answer
