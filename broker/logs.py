"""Logging setup: one handler on the root logger, three line formats, secrets masked.

- ``format = "text"`` on a terminal or a file:
  ``2026-11-23 08:00:00,123 INFO broker.sessions.pool: ...``
- ``format = "text"`` under journald (``JOURNAL_STREAM`` names our stream): no timestamp
  (the journal has one) and a ``<N>`` syslog priority prefix so the journal files
  the line under the right priority.
- ``format = "json"``: one JSON object a line with ``ts``, ``level``, ``logger``,
  ``msg`` and, for session lines, ``thread_key`` and ``pid`` as fields.

Lines about one session carry its thread key and agent pid: log through
:func:`session_logger`. Every configured secret (the server and gateway tokens)
is replaced by ``***`` in messages, arguments and tracebacks before any
formatter sees them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

from broker.config import LogConfig, mask_secrets

SESSION_FIELDS = ("thread_key", "pid")
# Syslog priorities for the journal's "<N>" line prefix.
_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}
_HANDLER_NAME = "agent-broker"


class SecretFilter(logging.Filter):
    """Replaces every secret in a record's message and traceback by ``***``.

    The message is rendered (``msg % args``) and masked once, so secrets in
    arguments are caught too; the record then carries the masked text and no args.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        record.msg = mask_secrets(record.getMessage(), self.secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info, self.secrets)
        return True


def _session_prefix(record: logging.LogRecord) -> str:
    thread_key = getattr(record, "thread_key", None)
    if thread_key is None:
        return ""
    pid = getattr(record, "pid", None)
    return f"[{thread_key} pid={pid}] " if pid is not None else f"[{thread_key}] "


class TextFormatter(logging.Formatter):
    """Human lines; ``journald=True`` drops the time and adds the ``<N>`` priority."""

    def __init__(self, *, journald: bool) -> None:
        fmt = (
            "%(name)s: %(message)s"
            if journald
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        super().__init__(fmt)
        self.journald = journald

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        head, sep, message = line.partition(": ")
        line = f"{head}{sep}{_session_prefix(record)}{message}"
        if self.journald:
            return f"<{_PRIORITY.get(record.levelname, 6)}>{line}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a traceback goes in ``exc`` (newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in SESSION_FIELDS:
            if getattr(record, field, None) is not None:
                entry[field] = getattr(record, field)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def under_journald(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd gave us (JOURNAL_STREAM="DEV:INODE").

    A stream that was redirected elsewhere (a pipe to ``less``, a file) does not
    match and keeps its timestamps, as systemd recommends.
    """
    value = environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


QUIET_LIBRARIES = ("httpx", "httpcore")


def setup_logging(
    config: LogConfig,
    stream: IO[str] = sys.stderr,
    *,
    secrets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Install the broker's one handler on the root logger and set the level.

    Replaces the handler a previous call installed (so tests and reloads do
    not double lines) and leaves other handlers (pytest's capture) alone.
    ``secrets`` are masked in every line. Returns the installed handler.
    """
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter(journald=under_journald(stream, env))
    handler.setFormatter(formatter)
    handler.addFilter(SecretFilter(secrets))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    # httpx logs every request with its URL at INFO; URLs of Discord interaction
    # callbacks carry the interaction's token. Its warnings still show.
    for quiet in QUIET_LIBRARIES:
        logging.getLogger(quiet).setLevel(logging.WARNING)
    return handler


class SessionLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose every record carries ``thread_key`` and ``pid`` as record fields."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs

    def with_pid(self, pid: int | None) -> SessionLogger:
        """The same session's logger once its agent has (another) pid."""
        return SessionLogger(self.logger, {**(self.extra or {}), "pid": pid})


def session_logger(
    thread_key: str,
    pid: int | None = None,
    logger: logging.Logger | str = "broker.sessions.session",
) -> SessionLogger:
    """A logger for lines about the session of ``thread_key`` whose agent is ``pid``.

    Text lines get a ``[thread_key pid=N]`` prefix, JSON lines the two fields.
    """
    base = logging.getLogger(logger) if isinstance(logger, str) else logger
    return SessionLogger(base, {"thread_key": thread_key, "pid": pid})


class RepeatLimiter:
    """Logs a line that repeats at most once per ``interval`` seconds.

    The first occurrence is logged at once; later ones within the interval are
    only counted, and the next line that is logged says how many were held
    back (``... (and 41 more like it)``). One limiter per kind of line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.held_back = 0
        self._clock = clock
        self._last: float | None = None

    def warning(self, message: str, *args: object) -> None:
        self.log(logging.WARNING, message, *args)

    def log(self, level: int, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now < self._last + self.interval:
            self.held_back += 1
            return
        self._last = now
        if self.held_back:
            message += f" (and {self.held_back} more like it)"
            self.held_back = 0
        self.logger.log(level, message, *args)
