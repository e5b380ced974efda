"""Log line formats (text, journald, JSON), session fields and secret masking."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import LogConfig
from broker.logs import session_logger, setup_logging


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A log stream; the root logger is restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    out = io.StringIO()
    yield out
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_session_fields(stream: io.StringIO) -> None:
    setup_logging(LogConfig(format="json"), stream, environ={})
    session_logger("telegram:1001", 4242).warning("agent exited: %s", "code 3")
    logging.getLogger("broker.sessions.pool").info("pool full (%d busy sessions)", 20)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first.pop("ts"))
    assert first == {
        "level": "warning",
        "logger": "broker.sessions.session",
        "msg": "agent exited: code 3",
        "thread_key": "telegram:1001",
        "pid": 4242,
    }
    second.pop("ts")
    assert second == {
        "level": "info",
        "logger": "broker.sessions.pool",
        "msg": "pool full (20 busy sessions)",
    }


def test_text_lines_have_time_and_session_prefix(stream: io.StringIO) -> None:
    setup_logging(LogConfig(format="text", level="debug"), stream, environ={})
    log = session_logger("cli:t1", None)
    log.debug("spawning")
    log.with_pid(77).info("initialized")
    lines = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(stamp + r" DEBUG broker\.sessions\.session: \[cli:t1\] spawning", lines[0])
    assert re.fullmatch(
        stamp + r" INFO broker\.sessions\.session: \[cli:t1 pid=77\] initialized", lines[1]
    )


def test_level_filters_and_setup_twice_does_not_double_lines(stream: io.StringIO) -> None:
    setup_logging(LogConfig(level="warning"), stream, environ={})
    setup_logging(LogConfig(level="warning"), stream, environ={})
    logging.getLogger("broker.x").info("hidden")
    logging.getLogger("broker.x").error("shown")
    assert stream.getvalue().count("\n") == 1
    assert "shown" in stream.getvalue()


def test_secrets_are_masked_in_messages_arguments_and_tracebacks(stream: io.StringIO) -> None:
    setup_logging(LogConfig(format="json"), stream, secrets=["tok-123", ""], environ={})
    log = logging.getLogger("broker.frontends")
    log.info("dialing wss://gw/ws?token=tok-123")
    log.info("token is %s", "tok-123")
    try:
        raise RuntimeError("handshake failed for tok-123")
    except RuntimeError:
        log.exception("gateway down")
    output = stream.getvalue()
    assert "tok-123" not in output
    entries = [json.loads(line) for line in output.splitlines()]
    assert entries[0]["msg"] == "dialing wss://gw/ws?token=***"
    assert entries[1]["msg"] == "token is ***"
    assert entries[2]["exc"].endswith("RuntimeError: handshake failed for ***")


JOURNALD_CHILD = """
import logging, sys
from broker.config import LogConfig
from broker.logs import session_logger, setup_logging
setup_logging(LogConfig(), sys.stderr, secrets=["s3cret"])
session_logger("discord:9", 123).info("turn started with s3cret")
logging.getLogger("broker.sessions.pool").warning("pool full")
"""


def run_child_logging(tmp_path: Path, journal_stream: str | None) -> str:
    """Run a real process whose stderr is a file, as systemd would connect it to the journal."""
    log_file = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with log_file.open("w") as err:
        if journal_stream == "match":
            st = os.fstat(err.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run(
            [sys.executable, "-c", JOURNALD_CHILD], stderr=err, env=env, check=True, timeout=60
        )
    return log_file.read_text()


def test_under_journald_lines_are_plain_with_priority_and_no_time(tmp_path: Path) -> None:
    assert run_child_logging(tmp_path, "match").splitlines() == [
        "<6>broker.sessions.session: [discord:9 pid=123] turn started with ***",
        "<4>broker.sessions.pool: pool full",
    ]


def test_journal_stream_of_another_file_keeps_timestamps(tmp_path: Path) -> None:
    lines = run_child_logging(tmp_path, "1:2").splitlines()
    assert re.fullmatch(
        r"\d{4}-\S+ \S+ INFO broker\.sessions\.session: "
        r"\[discord:9 pid=123\] turn started with \*\*\*",
        lines[0],
    )
