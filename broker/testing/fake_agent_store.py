"""Session records of the fake agent: one JSON file per session under the state directory.

A record holds the session's cwd, mode, model and the conversation history (user and agent texts),
so ``session/load`` replays it even after the agent process was restarted. Files are written
atomically (temporary file + rename), so a crash mid-write never leaves a half file behind.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import attrs

MODELS = {"fast": "Fast: answers at once", "smart": "Smart: thinks a little longer"}
MODES = {"ask": "Ask: answers questions, changes nothing", "code": "Code: may edit files"}
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


@attrs.define
class SessionRecord:
    """The persisted state of one session (mutable; saved after every turn and setting change)."""

    session_id: str
    cwd: str
    mode: str = "ask"
    model: str = "fast"
    history: list[dict[str, str]] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "cwd": self.cwd,
            "mode": self.mode,
            "model": self.model,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        return cls(
            session_id=str(data["sessionId"]),
            cwd=str(data.get("cwd", "")),
            mode=str(data.get("mode", "ask")),
            model=str(data.get("model", "fast")),
            history=[
                {"role": str(h["role"]), "text": str(h["text"])} for h in data.get("history", [])
            ],
        )

    def turns(self) -> int:
        return sum(1 for h in self.history if h["role"] == "user")


def new_session_id() -> str:
    return str(uuid.uuid4())


def valid_session_id(session_id: object) -> bool:
    """Only ids that are safe as file names are accepted (no path traversal via sessionId)."""
    return isinstance(session_id, str) and bool(_SESSION_ID.match(session_id))


def default_state_dir() -> Path:
    """``$FAKE_AGENT_STATE_DIR`` or ``<cwd>/.fake-agent-sessions``."""
    env = os.environ.get("FAKE_AGENT_STATE_DIR")
    return Path(env) if env else Path.cwd() / ".fake-agent-sessions"


def _path(state_dir: Path, session_id: str) -> Path:
    return state_dir / f"{session_id}.json"


def load_record(state_dir: Path, session_id: str) -> SessionRecord | None:
    """The stored record or None if there is none (blocking; call from a worker thread)."""
    try:
        text = _path(state_dir, session_id).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return SessionRecord.from_json(json.loads(text))


def encode_record(record: SessionRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False)


def write_record(state_dir: Path, session_id: str, text: str) -> None:
    """Write an encoded record atomically (blocking; call from a worker thread, one at a time)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = _path(state_dir, session_id)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _select(option_id: str, name: str, category: str, current: str, values: dict[str, str]) -> Any:
    return {
        "id": option_id,
        "name": name,
        "type": "select",
        "category": category,
        "currentValue": current,
        "options": [
            {"value": value, "name": value.capitalize(), "description": description}
            for value, description in values.items()
        ],
    }


def config_options(record: SessionRecord) -> list[Any]:
    """The full ``configOptions`` list: ``model`` (fast/smart) and ``mode`` (ask/code)."""
    return [
        _select("model", "Model", "model", record.model, MODELS),
        _select("mode", "Mode", "mode", record.mode, MODES),
    ]


def modes_state(record: SessionRecord) -> dict[str, Any]:
    """The ``modes`` object of session/new and session/load responses."""
    return {
        "currentModeId": record.mode,
        "availableModes": [
            {"id": mode, "name": mode.capitalize(), "description": description}
            for mode, description in MODES.items()
        ],
    }


def session_state(record: SessionRecord) -> dict[str, Any]:
    """What session/new, session/load and session/resume return besides the session id."""
    return {"modes": modes_state(record), "configOptions": config_options(record)}
