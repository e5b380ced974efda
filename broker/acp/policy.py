"""Answers to the agent's requests: permission decisions and confined file access.

Both are plain functions over their inputs: :meth:`PermissionPolicy.choose`
picks the option to select (or None for "cancelled"), and :class:`FsAccess`
reads and writes text files only inside one working directory. Errors are
:class:`~broker.acp.jsonrpc.RpcError` values with a sentence the agent (and
whoever reads its log) can act on.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .fs import NotRegular, TooLarge, read_regular, run_fs, write_regular
from .jsonrpc import INVALID_PARAMS, METHOD_NOT_FOUND, RESOURCE_NOT_FOUND, RpcError
from .schema import PermissionOption

PERMISSION_MODES = ("allow_always", "allow_once", "reject", "ask")

# Option kinds to look for, best first, per policy mode. Allow modes fall back
# to the other allow kind; reject never falls back to an allow kind. ``ask``
# chooses like reject: that is the answer when nobody can be asked.
_PREFERENCES: dict[str, tuple[str, ...]] = {
    "allow_always": ("allow_always", "allow_once"),
    "allow_once": ("allow_once", "allow_always"),
    "reject": ("reject_once", "reject_always"),
    "ask": ("reject_once", "reject_always"),
}
_REJECT_KINDS = ("reject_once", "reject_always")


@attrs.frozen
class PermissionPolicy:
    """How ``session/request_permission`` is answered without asking anyone.

    ``default`` and the values of ``by_kind`` (keyed by the tool call's
    ``kind``: read, edit, execute, fetch, ...) are one of allow_always,
    allow_once, reject or ask (a person in the chat decides; see
    :meth:`asks`)."""

    default: str = attrs.field(default="allow_once")
    by_kind: Mapping[str, str] = attrs.field(factory=dict)

    @default.validator
    def _check_default(self, _: Any, value: str) -> None:
        if value not in PERMISSION_MODES:
            raise ValueError(f"permission mode {value!r} is not one of {PERMISSION_MODES}")

    @by_kind.validator
    def _check_by_kind(self, _: Any, value: Mapping[str, str]) -> None:
        for kind, mode in value.items():
            if mode not in PERMISSION_MODES:
                raise ValueError(
                    f"permission mode {mode!r} for tool kind {kind!r} "
                    f"is not one of {PERMISSION_MODES}"
                )

    def mode_for(self, tool_kind: str | None) -> str:
        return self.by_kind.get(tool_kind or "", self.default)

    def rule_for(self, tool_kind: str | None) -> str:
        """The config line that decides ``tool_kind``, for logs and replies."""
        if (tool_kind or "") in self.by_kind:
            return f'[permissions] by_kind.{tool_kind} = "{self.by_kind[tool_kind or ""]}"'
        return f'[permissions] default = "{self.default}"'

    def asks(self, tool_kind: str | None) -> bool:
        """Whether a person is to be asked about a tool call of ``tool_kind``."""
        return self.mode_for(tool_kind) == "ask"

    def choose(self, options: Sequence[PermissionOption], tool_kind: str | None) -> str | None:
        """The ``optionId`` to select, or None to answer ``cancelled``.

        The first option whose kind is the most preferred for the mode wins.
        An allow mode with no allow option picks a reject option (it cannot
        allow what is not offered); a reject mode never picks an allow option.
        """
        mode = self.mode_for(tool_kind)
        fallbacks = _PREFERENCES[mode] + (_REJECT_KINDS if mode not in ("reject", "ask") else ())
        for kind in fallbacks:
            for option in options:
                if option.kind == kind and option.option_id:
                    return option.option_id
        return None


def selected_outcome(option_id: str | None) -> dict[str, Any]:
    """The ``session/request_permission`` result for a choice (None: cancelled)."""
    if option_id is None:
        return {"outcome": {"outcome": "cancelled"}}
    return {"outcome": {"outcome": "selected", "optionId": option_id}}


def _param(params: Any, key: str, kind: type, required: bool = True) -> Any:
    value = params.get(key) if isinstance(params, Mapping) else None
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RpcError.invalid_params(f"{key} must be a {kind.__name__}")
    return value


@attrs.frozen
class FsAccess:
    """``fs/read_text_file`` and ``fs/write_text_file`` confined to ``root``.

    A path is accepted only if its real path (symlinks and ``..`` resolved
    with :func:`os.path.realpath`) lies inside the real path of ``root``, and
    it is then opened from a descriptor of the root without following any
    symlink (:mod:`broker.acp.fs`): a directory swapped for a symlink
    meanwhile makes the open fail, never land outside. Only regular files are
    read or written, reads stop at ``max_read_bytes`` actually read, and the
    work runs on the fs limiter of its own. Relative paths are taken relative
    to ``root``. A disabled operation answers -32601 (it is not advertised
    either)."""

    root: str
    read: bool = False
    write: bool = False
    max_read_bytes: int = 8 * 1024 * 1024

    def confine(self, path: str) -> str:
        """The real path of ``path`` if inside the root; raises RpcError -32602."""
        if "\0" in path:
            raise RpcError(INVALID_PARAMS, "path contains a NUL byte", {"path": path})
        root = os.path.realpath(self.root)
        try:
            real = os.path.realpath(os.path.join(root, path))
        except OSError as exc:  # a component changed while it was resolved
            raise RpcError(
                INVALID_PARAMS, f"cannot resolve the path: {exc.strerror}", {"path": path}
            ) from None
        if os.path.commonpath([root, real]) != root:
            raise _outside(root, path)
        return real

    def _parts(self, real: str) -> tuple[str, list[str]]:
        root = os.path.realpath(self.root)
        return root, os.path.relpath(real, root).split(os.sep)

    async def read_text_file(self, params: Any) -> dict[str, Any]:
        """``{path, line?, limit?}`` -> ``{content}``; ``line`` is 1-based."""
        if not self.read:
            raise RpcError(
                METHOD_NOT_FOUND,
                "fs/read_text_file is disabled (agent.fs_read = false)",
                {"method": "fs/read_text_file"},
            )
        path = self.confine(_param(params, "path", str))
        line = _param(params, "line", int, required=False)
        limit = _param(params, "limit", int, required=False)
        if (line is not None and line < 1) or (limit is not None and limit < 0):
            raise RpcError.invalid_params("line must be >= 1 and limit >= 0")
        text = await run_fs(self._read, path)
        if line is not None or limit is not None:
            lines = text.splitlines(keepends=True)
            start = (line or 1) - 1
            text = "".join(lines[start:] if limit is None else lines[start : start + limit])
        return {"content": text}

    def _read(self, path: str) -> str:
        root, parts = self._parts(path)
        try:
            data = read_regular(root, parts, self.max_read_bytes)
        except TooLarge:
            raise RpcError(
                INVALID_PARAMS, f"file is larger than {self.max_read_bytes} bytes", {"path": path}
            ) from None
        except (NotRegular, OSError) as exc:
            raise _fs_error("read", root, path, exc) from None
        return data.decode("utf-8", errors="replace")

    async def write_text_file(self, params: Any) -> dict[str, Any]:
        """``{path, content}`` -> ``{}``. Creates missing parent directories
        (inside the root: they are made relative to their parent's descriptor)."""
        if not self.write:
            raise RpcError(
                METHOD_NOT_FOUND,
                "fs/write_text_file is disabled (agent.fs_write = false)",
                {"method": "fs/write_text_file"},
            )
        path = self.confine(_param(params, "path", str))
        content = _param(params, "content", str)
        await run_fs(self._write, path, content)
        return {}

    def _write(self, path: str, content: str) -> None:
        root, parts = self._parts(path)
        try:
            write_regular(root, parts, content.encode("utf-8", errors="replace"))
        except (NotRegular, OSError) as exc:
            raise _fs_error("write", root, path, exc) from None


def _outside(root: str, path: str, why: str = "") -> RpcError:
    return RpcError(
        INVALID_PARAMS, f"path is outside the working directory {root}{why}", {"path": path}
    )


def _fs_error(verb: str, root: str, path: str, exc: Exception) -> RpcError:
    """The answer to a failed open, read or write of ``path``."""
    if isinstance(exc, NotRegular):
        return RpcError(INVALID_PARAMS, f"cannot {verb}: not a regular file", {"path": path})
    assert isinstance(exc, OSError)
    if exc.errno in (errno.ELOOP, errno.EXDEV):  # a symlink appeared after the check
        return _outside(root, path, " (a symlink appeared on the way)")
    if exc.errno == errno.ENOENT and verb == "read":
        return RpcError(RESOURCE_NOT_FOUND, "Resource not found", {"path": path})
    return RpcError(INVALID_PARAMS, f"cannot {verb}: {exc.strerror}", {"path": path})
