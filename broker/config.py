"""broker.toml -> frozen attrs classes, with errors that name the file and the key.

The TOML file is parsed by tomli, every string value has ``${VAR}`` /
``${VAR:-default}`` expanded from the environment, and cattrs structures the
result into :class:`BrokerConfig`. Attribute names equal the TOML keys; every
key has a default, so an empty file is a valid configuration (the embedded
default, :func:`default_config`).

Everything that can be wrong with a file is reported as one :class:`ConfigError`
whose message names the file and the key path, for example
``broker.toml: pool.max_sessions: expected an integer >= 1, got "ten"``:
unknown keys, wrong types, impossible values, unset variables and TOML syntax
errors (with line and column). Nothing here raises anything else for bad input.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
import cattrs
import tomli
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cronsim import CronSim, CronSimError

log = logging.getLogger(__name__)

PERMISSION_VALUES = ("allow_always", "allow_once", "reject", "ask")
# ACP's tool kinds: the keys [permissions] by_kind may use.
TOOL_KINDS = (
    "read",
    "edit",
    "delete",
    "move",
    "search",
    "execute",
    "think",
    "fetch",
    "switch_mode",
    "other",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
WORKSPACE_MODES = ("shared", "per-thread", "git-worktree")
MCP_TRANSPORTS = ("stdio", "http", "sse")
SWITCHING = ("anyone", "approvers", "never")
DEFAULT_PROFILE = "default"
LOG_FORMATS = ("text", "json")
OVERLAP_VALUES = ("queue", "skip")
DISPATCH_VALUES = ("queue", "batch")
CATCH_UP_VALUES = ("latest", "none")
SCHEDULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AGENT_BASE_ENV = ("HOME", "PATH", "USER", "LANG")

# A check returns None when the value is fine, else (key path suffix, expectation, bad value).
Check = Callable[[Any], "tuple[str, str, object] | None"]


class ConfigError(Exception):
    """A configuration that cannot be used; ``str(err)`` is the whole message for the user."""


def _check(check: Check) -> dict[str, Check]:
    return {"check": check}


def _at_least(minimum: int) -> dict[str, Any]:
    return {"minimum": minimum}


def _require(expected: str, ok: Callable[[Any], bool]) -> dict[str, Check]:
    return _check(lambda v: None if ok(v) else ("", expected, v))


def _one_of(choices: tuple[str, ...]) -> dict[str, Check]:
    return _require("one of " + " | ".join(choices), lambda v: v in choices)


def _listen_ok(value: str) -> bool:
    try:
        parse_listen(value)
    except ValueError:
        return False
    return True


def _permissions_map_problem(value: Mapping[str, str]) -> tuple[str, str, object] | None:
    for kind in sorted(value):
        if kind not in TOOL_KINDS:
            return f".{kind}", "an ACP tool kind: " + " | ".join(TOOL_KINDS), kind
        if value[kind] not in PERMISSION_VALUES:
            return f".{kind}", "one of " + " | ".join(PERMISSION_VALUES), value[kind]
    return None


def _snowflakes_problem(value: tuple[str, ...]) -> tuple[str, str, object] | None:
    for index, guild in enumerate(value):
        if not guild.isdigit():
            return f"[{index}]", "a guild id (digits)", guild
    return None


def _env_names_problem(value: tuple[str, ...]) -> tuple[str, str, object] | None:
    for index, name in enumerate(value):
        if not _ENV_NAME.fullmatch(name):
            return f"[{index}]", "an environment variable name", name
    return None


@attrs.frozen
class ServerConfig:
    listen: str = attrs.field(
        default="127.0.0.1:8765",
        metadata=_require(
            'an address "HOST:PORT" (IPv6 as "[::1]:PORT", port 0-65535)', _listen_ok
        ),
    )
    token: str = ""
    streaming: bool = True
    enabled: bool = True
    max_frame_bytes: int = attrs.field(default=1048576, metadata=_at_least(1024))


@attrs.frozen
class GatewayConfig:
    url: str = attrs.field(
        default="",
        metadata=_require(
            'a ws:// or wss:// URL, or "" to turn the gateway off',
            lambda v: v == "" or v.startswith(("ws://", "wss://")),
        ),
    )
    token: str = ""
    streaming: bool = False


def _api_url_ok(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and is_loopback(parts.hostname or "")


@attrs.frozen
class SlackConfig:
    enabled: bool = False
    app_token: str = ""
    bot_token: str = ""
    api_base_url: str = attrs.field(
        default="https://slack.com/api/",
        metadata=_require("an https:// URL (http:// only on loopback)", _api_url_ok),
    )
    mention_required: bool = True


SLACK_TOKEN_PREFIXES = {"app_token": "xapp-", "bot_token": "xoxb-"}


@attrs.frozen
class DiscordConfig:
    enabled: bool = False
    token: str = ""
    api_base_url: str = attrs.field(
        default="https://discord.com/api/v10",
        metadata=_require(
            "an http:// or https:// URL", lambda v: v.startswith(("http://", "https://"))
        ),
    )
    mention_required: bool = True
    allowed_guilds: tuple[str, ...] = attrs.field(default=(), metadata=_check(_snowflakes_problem))


@attrs.frozen
class McpServerConfig:
    """One MCP server an agent's sessions get (``[agents.NAME.mcp_servers.SERVER]``)."""

    type: str = attrs.field(default="stdio", metadata=_one_of(MCP_TRANSPORTS))
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    url: str = ""
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class AgentConfig:
    """One agent profile: ``[agent]`` (the profile ``default``) or ``[agents.NAME]``."""

    command: str = attrs.field(default="python", metadata=_require("a command", bool))
    args: tuple[str, ...] = ("-m", "broker.testing.fake_agent")
    working_dir: str = "."
    env: Mapping[str, str] = attrs.field(factory=dict)
    inherit_env: tuple[str, ...] = attrs.field(default=(), metadata=_check(_env_names_problem))
    fs_read: bool = False
    fs_write: bool = False
    max_line_bytes: int = attrs.field(default=8388608, metadata=_at_least(1024))
    restart_after_cancel: bool = False
    auth_method: str = ""
    max_sessions: int = attrs.field(default=0, metadata=_at_least(0))
    warm_spares: int = attrs.field(default=0, metadata=_at_least(0))
    permissions_default: str = attrs.field(default="", metadata=_one_of(("", *PERMISSION_VALUES)))
    permissions_by_kind: Mapping[str, str] = attrs.field(
        factory=dict, metadata=_check(_permissions_map_problem)
    )
    mcp_servers: Mapping[str, McpServerConfig] = attrs.field(factory=dict)
    workspace: str = attrs.field(default="shared", metadata=_one_of(WORKSPACE_MODES))
    repo: str = ""
    base_ref: str = ""


@attrs.frozen
class AgentsConfig:
    """``[agents]``: which profile serves a thread no route names, and who may switch."""

    default: str = attrs.field(default=DEFAULT_PROFILE, metadata=_require("a profile name", bool))
    switching: str = attrs.field(default="anyone", metadata=_one_of(SWITCHING))


@attrs.frozen
class RouteConfig:
    """One ``[[routes]]`` rule: every key set must match; the first rule that does wins."""

    agent: str = attrs.field(default="", metadata=_require("a profile name", bool))
    platform: str = ""
    channel: str = ""
    guild: str = ""
    user: str = ""
    switch: bool = True


@attrs.frozen
class PoolConfig:
    max_sessions: int = attrs.field(default=20, metadata=_at_least(1))
    idle_ttl_secs: float = attrs.field(default=1800, metadata=_at_least(0))
    queue_depth: int = attrs.field(default=5, metadata=_at_least(0))
    warm_spares: int = attrs.field(default=0, metadata=_at_least(0))
    max_restarts: int = attrs.field(default=3, metadata=_at_least(0))
    restart_window_secs: float = attrs.field(default=60, metadata=_at_least(0))
    dispatch: str = attrs.field(default="queue", metadata=_one_of(DISPATCH_VALUES))
    max_batch_bytes: int = attrs.field(default=10485760, metadata=_at_least(1))


@attrs.frozen
class TimeoutsConfig:
    initialize_secs: float = attrs.field(default=30, metadata=_at_least(0))
    session_new_secs: float = attrs.field(default=30, metadata=_at_least(0))
    turn_hard_secs: float = attrs.field(default=1800, metadata=_at_least(0))
    cancel_grace_secs: float = attrs.field(default=10, metadata=_at_least(0))
    stop_grace_secs: float = attrs.field(default=5, metadata=_at_least(0))
    drain_ms: int = attrs.field(default=200, metadata=_at_least(0))


@attrs.frozen
class PermissionsConfig:
    default: str = attrs.field(default="ask", metadata=_one_of(PERMISSION_VALUES))
    by_kind: Mapping[str, str] = attrs.field(
        factory=lambda: {"read": "allow_once", "search": "allow_once"},
        metadata=_check(_permissions_map_problem),
    )
    approvers: tuple[str, ...] = ()
    ask_timeout_secs: float = attrs.field(
        default=300, metadata=_require("a number of seconds above 0", lambda v: v > 0)
    )


@attrs.frozen
class StateConfig:
    path: str = attrs.field(default="state/broker.sqlite3", metadata=_require("a file path", bool))
    lock_wait_secs: float = attrs.field(default=30, metadata=_at_least(0))
    workspace_ttl_days: float = attrs.field(default=0, metadata=_at_least(0))
    prune_unmerged: bool = False


@attrs.frozen
class LogConfig:
    level: str = attrs.field(default="info", metadata=_one_of(LOG_LEVELS))
    format: str = attrs.field(default="text", metadata=_one_of(LOG_FORMATS))


@attrs.frozen
class RouterConfig:
    allowed_channels: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allow_bots: bool = False
    mention_required_platforms: tuple[str, ...] = ()
    bot_names: tuple[str, ...] = ()
    dedup_window_secs: float = attrs.field(default=600, metadata=_at_least(0))


@attrs.frozen
class PromptConfig:
    sender_context: bool = False
    max_attachment_bytes: int = attrs.field(default=5242880, metadata=_at_least(0))
    max_message_bytes: int = attrs.field(default=10485760, metadata=_at_least(1))


@attrs.frozen
class RenderConfig:
    edit_interval_ms: int = attrs.field(default=1500, metadata=_at_least(0))


@attrs.frozen
class ReactionsConfig:
    enabled: bool = False


_MEMBER_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def _members_problem(value: Mapping[str, str]) -> tuple[str, str, object] | None:
    for name, address in value.items():
        if not _MEMBER_NAME.fullmatch(name):
            return f".{name}", "a member name (lower-case letters, digits, '-' and '.')", name
        if not _listen_ok(address):
            return f".{name}", 'the member\'s [server] address "HOST:PORT"', address
    return None


@attrs.frozen
class ClusterConfig:
    """Several brokers sharing the threads (docs/scaling.md). Off while ``members`` is empty."""

    members: Mapping[str, str] = attrs.field(factory=dict, metadata=_check(_members_problem))
    replica: str = ""
    peer_token: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.members)


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a five-field cron expression, or None when it is."""
    if len(expression.split()) != 5:
        return "five fields (minute hour day-of-month month day-of-week)"
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        return f"a valid cron expression ({str(exc).lower()})"
    return None


def zone(name: str) -> ZoneInfo | None:
    """The IANA time zone ``name`` ("UTC", "Europe/Berlin"), None when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@attrs.frozen
class ScheduleConfig:
    """One ``[[schedules]]`` entry: a prompt that runs at the times of ``cron``.

    The target is either ``thread`` (an existing thread key, every run a turn
    of that thread) or ``platform`` and ``channel`` (every run a new thread
    ``schedule:<name>:<run time>`` in that channel).
    """

    name: str = attrs.field(
        default="",
        metadata=_require(
            "a name of letters, digits, '_', '-' or '.' (at most 64)",
            lambda v: SCHEDULE_NAME.fullmatch(v) is not None,
        ),
    )
    cron: str = attrs.field(
        default="",
        metadata=_check(lambda v: None if (why := cron_problem(v)) is None else ("", why, v)),
    )
    tz: str = attrs.field(
        default="UTC",
        metadata=_require(
            "an IANA time zone name (UTC, Europe/Berlin)", lambda v: zone(v) is not None
        ),
    )
    prompt: str = attrs.field(default="", metadata=_require("the prompt's text", bool))
    thread: str = attrs.field(
        default="",
        metadata=_require(
            'a thread key "platform:id", or "" with platform and channel',
            lambda v: v == "" or (":" in v and not v.startswith(":") and not v.endswith(":")),
        ),
    )
    platform: str = ""
    channel: str = ""
    overlap: str = attrs.field(default="queue", metadata=_one_of(OVERLAP_VALUES))
    catch_up: str = attrs.field(default="latest", metadata=_one_of(CATCH_UP_VALUES))


@attrs.frozen
class BrokerConfig:
    """The whole configuration. Sections are attributes named like the TOML tables;
    ``schedules`` is the array of tables ``[[schedules]]``."""

    server: ServerConfig = ServerConfig()
    gateway: GatewayConfig = GatewayConfig()
    discord: DiscordConfig = DiscordConfig()
    agent: AgentConfig = AgentConfig()
    agents: AgentsConfig = AgentsConfig()
    pool: PoolConfig = PoolConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    permissions: PermissionsConfig = PermissionsConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()
    router: RouterConfig = RouterConfig()
    prompt: PromptConfig = PromptConfig()
    render: RenderConfig = RenderConfig()
    reactions: ReactionsConfig = ReactionsConfig()
    slack: SlackConfig = SlackConfig()
    cluster: ClusterConfig = ClusterConfig()
    schedules: tuple[ScheduleConfig, ...] = ()
    # not sections: [agents.NAME] tables (with [agent] as "default" when both are
    # written; empty: [agent] alone is the one profile) and the [[routes]] rules
    profiles: Mapping[str, AgentConfig] = attrs.field(factory=dict)
    routes: tuple[RouteConfig, ...] = ()

    def agent_profiles(self) -> dict[str, AgentConfig]:
        """Profile name -> its agent, in the file's order (``[agent]`` alone: ``default``)."""
        return dict(self.profiles) if self.profiles else {DEFAULT_PROFILE: self.agent}

    def default_profile(self) -> str:
        """The profile of a thread no route and no ``/agent`` chose."""
        return self.agents.default

    def secret_values(self) -> tuple[str, ...]:
        """The broker's own secrets that are set: server, gateway, Discord, Slack, peer tokens."""
        tokens = (
            self.server.token,
            self.gateway.token,
            self.discord.token,
            self.slack.app_token,
            self.slack.bot_token,
            self.cluster.peer_token,
        )
        return tuple(t for t in tokens if t)

    def redacted(self) -> BrokerConfig:
        """This configuration with every set token shown as ``"***"``, for logs and status."""
        return attrs.evolve(
            self,
            server=attrs.evolve(self.server, token="***" if self.server.token else ""),
            gateway=attrs.evolve(
                self.gateway,
                token="***" if self.gateway.token else "",
                url=mask_secrets(self.gateway.url, self.secret_values()),
            ),
            discord=attrs.evolve(self.discord, token="***" if self.discord.token else ""),
            agent=self._redacted_agent(self.agent),
            profiles={name: self._redacted_agent(a) for name, a in self.profiles.items()},
            slack=attrs.evolve(
                self.slack,
                app_token="***" if self.slack.app_token else "",
                bot_token="***" if self.slack.bot_token else "",
            ),
            cluster=attrs.evolve(self.cluster, peer_token="***" if self.cluster.peer_token else ""),
        )

    def _redacted_agent(self, agent: AgentConfig) -> AgentConfig:
        secrets = self.secret_values()
        servers = {
            name: attrs.evolve(
                server,
                env={k: "***" for k in server.env},
                headers={k: "***" for k in server.headers},
            )
            for name, server in agent.mcp_servers.items()
        }
        return attrs.evolve(
            agent,
            env={k: mask_secrets(v, secrets) for k, v in agent.env.items()},
            mcp_servers=servers,
        )


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every non-empty secret replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def default_config() -> BrokerConfig:
    """The embedded default: the demo agent behind the WebSocket server on 127.0.0.1:8765.

    Relative paths (``agent.working_dir``, ``state.path``) stay relative, that is
    relative to the current directory.
    """
    return BrokerConfig()


def config_to_dict(config: BrokerConfig) -> dict[str, Any]:
    """Plain TOML/JSON-shaped data (tables, lists, scalars); use ``config.redacted()`` first
    for anything shown to people."""
    data: dict[str, Any] = _converter.unstructure(config)
    profiles: dict[str, Any] = data.pop("profiles")
    if profiles:
        default = profiles.pop(DEFAULT_PROFILE, None)
        if default is None:
            del data["agent"]
        else:
            data["agent"] = default
        data["agents"].update(profiles)
    return data


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``"HOST:PORT"`` / ``"[V6]:PORT"`` into host and port; ValueError when malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.\-_]+):(\d{1,5})", listen)
    if match is None:
        raise ValueError(f"bad listen address {listen!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError(f"bad port in {listen!r}")
    return host, port


def server_url(config: BrokerConfig) -> str:
    """The client URL of the WebSocket server: ``ws://HOST:PORT`` plus ``?token=T`` if set.

    A wildcard listen host (0.0.0.0, ::) is reached on loopback.
    """
    host, port = parse_listen(config.server.listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"ws://{netloc}"
    if config.server.token:
        url += "?token=" + quote(config.server.token, safe="")
    return url


# ---------------------------------------------------------------- loading


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)\}|\$\{")


def expand_env(value: str, environ: Mapping[str, str], where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``value``; ``$$`` is a literal ``$``.

    Raises ConfigError (naming ``where``) for an unset variable without a default
    or a malformed reference.
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "$$":
            return "$"
        body = match.group(1)
        if body is None:
            raise ConfigError(f'{where}: unterminated "${{" (write "$$" for a literal "$")')
        name, sep, default = body.partition(":-")
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{where}: bad variable reference ${{{body}}}")
        if name in environ and (environ[name] != "" or not sep):
            return environ[name]
        if sep:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-default}})"
        )

    return _REFERENCE.sub(replace, value)


def _expand_tree(data: Any, environ: Mapping[str, str], path: str, file: str) -> Any:
    if isinstance(data, str):
        return expand_env(data, environ, f"{file}: {path}")
    if isinstance(data, dict):
        return {
            k: _expand_tree(v, environ, f"{path}.{k}" if path else k, file) for k, v in data.items()
        }
    if isinstance(data, list):
        return [_expand_tree(v, environ, f"{path}[{i}]", file) for i, v in enumerate(data)]
    return data


def _describe(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


class _WrongValue(Exception):
    """Raised by the strict hooks: what was expected, what came, and where below the
    key (``"[2]"`` for an array element, ``".name"`` for a table entry, ``""`` for the key)."""

    def __init__(self, expected: str, value: object, where: str = "") -> None:
        super().__init__(f"{where}: expected {expected}, got {_describe(value)}")
        self.expected = expected
        self.value = value
        self.where = where


T = TypeVar("T")


def _strict(expected: str, accept: Callable[[object], bool], cast: Callable[[Any], T]) -> Any:
    def hook(value: object, _type: object) -> T:
        if not accept(value):
            raise _WrongValue(expected, value)
        return cast(value)

    return hook


def _section_classes() -> dict[str, type[Any]]:
    """TOML table name -> its attrs class, with string annotations resolved."""
    classes: dict[str, type[Any]] = {}
    for section in attrs.fields(attrs.resolve_types(BrokerConfig)):
        if section.name in ARRAYS or not isinstance(section.type, type):
            continue  # [[arrays]], and the profiles: not sections
        if attrs.has(section.type):
            classes[section.name] = attrs.resolve_types(section.type)
    return classes


#: TOML arrays of tables (``[[schedules]]``) -> the attrs class of one entry.
ARRAYS: dict[str, type[Any]] = {
    "schedules": attrs.resolve_types(ScheduleConfig),
    "routes": attrs.resolve_types(RouteConfig),
}
SECTIONS = _section_classes()
#: tables below a section, by name (``[agents.NAME.mcp_servers.SERVER]``).
TABLES: dict[str, type[Any]] = {"mcp_servers": attrs.resolve_types(McpServerConfig)}


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    # No coercion: "10" is not an integer, 1 is not true.
    strict_scalars: list[tuple[type[Any], str, Callable[[object], bool]]] = [
        (str, "a string", lambda v: isinstance(v, str)),
        (bool, "true or false", lambda v: isinstance(v, bool)),
        (int, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
        (float, "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    ]
    for cls, expected, accept in strict_scalars:
        conv.register_structure_hook(cls, _strict(expected, accept, cls))

    def structure_tuple(value: object, _type: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _WrongValue("an array of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise _WrongValue("a string", item, f"[{index}]")
        return tuple(value)

    def structure_mapping(value: object, _type: object) -> Mapping[str, str]:
        if not isinstance(value, dict):
            raise _WrongValue("a table of strings", value)
        for key, item in value.items():
            if not isinstance(item, str):
                raise _WrongValue("a string", item, f".{key}")
        return dict(value)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], structure_tuple)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, str], structure_mapping)

    def structure_servers(value: object, _type: object) -> Mapping[str, McpServerConfig]:
        if not isinstance(value, dict):
            raise _WrongValue("a table of MCP servers", value)
        return _structure_tables(conv, value, McpServerConfig)

    conv.register_structure_hook_func(
        lambda t: t == Mapping[str, McpServerConfig], structure_servers
    )
    # Sections: an array or a scalar where a table belongs is a type error, not a crash.
    # (Registered last: a class's hook binds the field hooks registered before it.)
    for cls in (*TABLES.values(), *SECTIONS.values(), *ARRAYS.values()):
        conv.register_structure_hook(cls, _section_hook(conv, cls))
    for cls in ARRAYS.values():
        conv.register_structure_hook_func(_is_array_of(cls), _array_hook(conv, cls))
    return conv


def _is_array_of(cls: type[Any]) -> Callable[[Any], bool]:
    wanted = tuple[cls, ...]  # type: ignore[valid-type]
    return lambda t: bool(t == wanted)


class _EntryErrors(Exception):
    """The entries of an array of tables that could not be structured, by index."""

    def __init__(self, errors: list[tuple[int, Exception]]) -> None:
        super().__init__(f"{len(errors)} bad entries")
        self.errors = errors


def _array_hook(conv: cattrs.Converter, cls: type[T]) -> Callable[[object, object], tuple[T, ...]]:
    def hook(value: object, _type: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise _WrongValue("an array of tables ([[...]])", value)
        entries: list[T] = []
        errors: list[tuple[int, Exception]] = []
        for index, item in enumerate(value):
            try:
                entries.append(conv.structure(item, cls))
            except (cattrs.BaseValidationError, ForbiddenExtraKeysError, _WrongValue) as exc:
                errors.append((index, exc))
        if errors:
            raise _EntryErrors(errors)
        return tuple(entries)

    return hook


class _Problems(Exception):
    """Several problems below one key: (key path suffix, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))
        self.problems = problems


def _below(path: str, sub: str) -> str:
    """The key path ``sub`` (as :func:`_walk_errors` yields it) below ``path``."""
    if not sub:
        return path
    if not path:
        return sub
    return path + sub if sub.startswith(("[", ".")) else f"{path}.{sub}"


def _structure_tables(
    conv: cattrs.Converter, value: Mapping[str, Any], cls: type[T]
) -> dict[str, T]:
    """A table of tables (name -> ``cls``); every problem of every entry at once."""
    out: dict[str, T] = {}
    problems: list[tuple[str, str]] = []
    for name, table in value.items():
        try:
            out[name] = conv.structure(table, cls)
        except (ClassValidationError, ForbiddenExtraKeysError, _WrongValue, _Problems) as exc:
            problems += [(_below(f".{name}", p), m) for p, m in _walk_errors(exc, "", "")]
    if problems:
        raise _Problems(problems)
    return out


def _section_hook(conv: cattrs.Converter, cls: type[T]) -> Callable[[object, object], T]:
    inner = cattrs.gen.make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)

    def hook(value: object, _type: object) -> T:
        if not isinstance(value, dict):
            raise _WrongValue("a table", value)
        return inner(value, cls)

    return hook


_converter = _make_converter()


def _walk_errors(exc: BaseException, path: str, bound: str) -> Iterator[tuple[str, str]]:
    """Flatten a cattrs error tree into (key path, message) pairs.

    ``bound`` is the value constraint of the field at ``path`` (like ">= 1"), so
    a wrong type reads "expected an integer >= 1", the whole expectation at once.
    """
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield (f"{path}.{key}" if path else key), "unknown key"
    elif isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, others = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):
                sub_path = f"{path}.{note.name}" if path else note.name
                owner = exc.cl if isinstance(exc, ClassValidationError) else None
                yield from _walk_errors(sub, sub_path, _bound_of(owner, note.name))
            else:
                yield from _walk_errors(sub, f"{path}[{getattr(note, 'index', '?')}]", "")
        for sub in others:
            yield from _walk_errors(sub, path, bound)
    elif isinstance(exc, _EntryErrors):
        for index, sub in exc.errors:
            yield from _walk_errors(sub, f"{path}[{index}]", "")
    elif isinstance(exc, _Problems):
        for where, message in exc.problems:
            yield path + where, message
    elif isinstance(exc, _WrongValue):
        bound = "" if exc.where else bound
        yield path + exc.where, f"expected {exc.expected}{bound}, got {_describe(exc.value)}"
    else:
        yield path, f"{type(exc).__name__}: {exc}"


def _bound_of(owner: object, name: str) -> str:
    """' >= N' when field ``name`` of attrs class ``owner`` has a minimum, else ''."""
    if not isinstance(owner, type) or not attrs.has(owner):
        return ""
    field = getattr(attrs.fields(owner), name, None)
    minimum = None if field is None else field.metadata.get("minimum")
    return "" if minimum is None else f" >= {minimum}"


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string"}


def _tables(config: BrokerConfig) -> Iterator[tuple[str, Any]]:
    """(key path, attrs value) of every section and every entry of every array."""
    for section in attrs.fields(BrokerConfig):
        value = getattr(config, section.name)
        if section.name in ARRAYS:
            for index, entry in enumerate(value):
                yield f"{section.name}[{index}]", entry
        elif attrs.has(type(value)):
            yield section.name, value


def _table_problems(path: str, table: Any) -> Iterator[tuple[str, str]]:
    """The value checks of the fields of one attrs instance, at key path ``path``."""
    for field in attrs.fields(type(table)):
        check: Check | None = field.metadata.get("check")
        minimum: int | None = field.metadata.get("minimum")
        value = getattr(table, field.name)
        problem = None if check is None else check(value)
        if minimum is not None and value < minimum:
            problem = ("", f"{_TYPE_WORDS[field.type]} >= {minimum}", value)
        if problem is not None:
            suffix, expected, bad = problem
            yield f"{path}.{field.name}{suffix}", f"expected {expected}, got {_describe(bad)}"


def _value_problems(config: BrokerConfig) -> Iterator[tuple[str, str]]:
    for path, table in _tables(config):
        yield from _table_problems(path, table)
    for path, agent in _named_agents(config):
        if path != "agent":
            yield from _table_problems(path, agent)
        for server_name, server in agent.mcp_servers.items():
            yield from _table_problems(f"{path}.mcp_servers.{server_name}", server)


def profile_key(config: BrokerConfig, name: str) -> str:
    """The key path of profile ``name``: ``agent`` for [agent], else ``agents.NAME``."""
    agent = config.agent_profiles()[name]
    return "agent" if name == DEFAULT_PROFILE and agent is config.agent else f"agents.{name}"


def _named_agents(config: BrokerConfig) -> Iterator[tuple[str, AgentConfig]]:
    """(key path, agent) of every profile."""
    for name, agent in config.agent_profiles().items():
        yield profile_key(config, name), agent


def _schedule_problems(schedules: Iterable[ScheduleConfig]) -> Iterator[tuple[str, str]]:
    """A target that is neither a thread nor a channel (or both), a name used twice."""
    seen: set[str] = set()
    for index, schedule in enumerate(schedules):
        where = f"schedules[{index}]"
        if schedule.name and schedule.name in seen:
            yield f"{where}.name", f'"{schedule.name}" names an earlier schedule too'
        seen.add(schedule.name)
        place = bool(schedule.platform or schedule.channel)
        if schedule.thread and place:
            yield f"{where}.thread", "give thread, or platform and channel, not both"
        elif not schedule.thread and not (schedule.platform and schedule.channel):
            missing = "channel" if schedule.platform else "platform"
            if not place:
                yield f"{where}.thread", 'expected a thread key, or platform and channel, got ""'
            else:
                yield f"{where}.{missing}", "expected a string with the other, got nothing"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, token: str) -> str | None:
    """Why listening on ``host`` with ``token`` is refused, or None if it is fine."""
    if token or is_loopback(host):
        return None
    return (
        f"[server] listen on {host!r} is reachable from other machines and [server] token is "
        "empty: set a token (clients then send ?token= or Authorization: Bearer) or listen on "
        "127.0.0.1"
    )


def _holds(arg: str, secret: str) -> bool:
    """Whether a command-line argument carries ``secret`` (a short token only as a
    whole value, so a one-letter test token does not match every word)."""
    return arg == secret or arg.endswith("=" + secret) or (len(secret) >= 8 and secret in arg)


def _cross_problems(config: BrokerConfig) -> Iterator[tuple[str, str]]:
    """Checks that involve two keys."""
    if config.server.enabled:
        try:
            host = parse_listen(config.server.listen)[0]
        except ValueError:
            host = None  # reported as a bad server.listen already
        problem = exposure_problem(host, config.server.token) if host else None
        if problem:
            yield ("server.token", problem)
    if config.slack.enabled:
        for key, prefix in SLACK_TOKEN_PREFIXES.items():
            token: str = getattr(config.slack, key)
            if not token.startswith(prefix):
                what = "is empty" if not token else f"does not start with {prefix}"
                yield (
                    f"slack.{key}",
                    f"{what}: [slack] enabled needs the {prefix}... token from the Slack app's "
                    "settings (see docs/slack.md); set it with ${VAR}",
                )
    yield from _profile_problems(config)
    if config.discord.enabled and not config.discord.token:
        yield (
            "discord.token",
            "required when [discord] enabled = true: the bot's token from the Discord "
            'Developer Portal, e.g. token = "${DISCORD_BOT_TOKEN}"',
        )
    yield from _cluster_problems(config)
    yield from _schedule_problems(config.schedules)
    pool = config.pool
    if pool.warm_spares > pool.max_sessions >= 1:  # a bad max_sessions is reported already
        yield (
            "pool.warm_spares",
            (
                f"expected an integer <= pool.max_sessions ({pool.max_sessions}), "
                f"got {pool.warm_spares}"
            ),
        )


def _cluster_problems(config: BrokerConfig) -> Iterator[tuple[str, str]]:
    cluster = config.cluster
    if not cluster.enabled:
        return
    if cluster.replica not in cluster.members:
        yield (
            "cluster.replica",
            f"expected one of the names in cluster.members ({', '.join(cluster.members)}), "
            f'got {_describe(cluster.replica)}; on Kubernetes: replica = "${{HOSTNAME}}"',
        )
    if not cluster.peer_token:
        yield (
            "cluster.peer_token",
            "required when cluster.members is set: the secret the replicas forward events "
            'with, the same on every member, e.g. peer_token = "${BROKER_PEER_TOKEN}"',
        )
    if not config.server.enabled:
        yield ("server.enabled", "must be true in a cluster: the replicas forward over /ws")


def _profile_problems(config: BrokerConfig) -> Iterator[tuple[str, str]]:
    """Checks of the profiles, the routes and their MCP servers."""
    secrets = config.secret_values()
    profiles = config.agent_profiles()
    names = ", ".join(profiles)
    token_sentence = (
        "holds one of the broker's tokens; an agent's command line is readable by every"
        " local user, and the broker's secrets never reach an agent"
    )
    for path, agent in _named_agents(config):
        if any(_holds(arg, secret) for secret in secrets for arg in agent.args):
            yield f"{path}.args", token_sentence
        if agent.workspace == "git-worktree" and not agent.repo:
            yield (
                f"{path}.repo",
                'required when workspace = "git-worktree": the repository each thread\'s '
                "worktree is added from",
            )
        if agent.warm_spares and agent.workspace != "shared":
            yield (
                f"{path}.warm_spares",
                'expected 0 when workspace is not "shared": a spare starts before its thread, '
                "so it could not run in the thread's own workspace",
            )
        if agent.max_sessions > config.pool.max_sessions >= 1:
            yield (
                f"{path}.max_sessions",
                f"expected an integer <= pool.max_sessions ({config.pool.max_sessions}), "
                f"got {agent.max_sessions}",
            )
        for server_name, server in agent.mcp_servers.items():
            where = f"{path}.mcp_servers.{server_name}"
            if server.type == "stdio" and not server.command:
                yield f"{where}.command", 'required for an MCP server of type "stdio"'
            if server.type != "stdio" and not server.url.startswith(("http://", "https://")):
                yield (
                    f"{where}.url",
                    f'an http:// or https:// URL is required for type "{server.type}"',
                )
            values = (*server.args, *server.env.values(), *server.headers.values(), server.url)
            if any(_holds(value, secret) for secret in secrets for value in values):
                yield where, token_sentence
    if config.default_profile() not in profiles:
        yield (
            "agents.default",
            f'expected the name of a profile ({names}), got "{config.default_profile()}"',
        )
    for index, route in enumerate(config.routes):
        if route.agent and route.agent not in profiles:
            yield (
                f"routes[{index}].agent",
                f'expected the name of a profile ({names}), got "{route.agent}"',
            )


def _split_profiles(
    data: dict[str, Any], file: str
) -> tuple[dict[str, Any], dict[str, AgentConfig]]:
    """Take the ``[agents.NAME]`` tables out of ``data`` and structure them.

    Returns the rest of the data and the named profiles."""
    agents = data.get("agents")
    if "profiles" in data:
        _raise_problems(file, [("profiles", "unknown key")])
    if not isinstance(agents, dict):
        return data, {}
    section = {k: v for k, v in agents.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in agents.items() if isinstance(v, dict)}
    if not tables:
        return data, {}
    problems: list[tuple[str, str]] = []
    if DEFAULT_PROFILE in tables and "agent" in data:
        problems.append(
            (
                f"agents.{DEFAULT_PROFILE}",
                "written twice: [agent] is the profile default; keep one of them",
            )
        )
    named: dict[str, AgentConfig] = {}
    try:
        named = _structure_tables(_converter, tables, AgentConfig)
    except _Problems as exc:
        problems += [(_below("agents", where), what) for where, what in exc.problems]
    _raise_problems(file, problems)
    return {**data, "agents": section}, named


def _raise_problems(file: str, problems: list[tuple[str, str]]) -> None:
    if problems:
        lines = [f"{file}: {path}: {message}" for path, message in problems]
        raise ConfigError("\n".join(lines))


def structure_config(
    data: Mapping[str, Any], *, file: str = "<config>", environ: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Expand variables in parsed TOML data and structure it; ConfigError on any problem."""
    env = os.environ if environ is None else environ
    expanded = _expand_tree(dict(data), env, "", file)
    try:
        rest, profiles = _split_profiles(expanded, file)
        config = _converter.structure(rest, BrokerConfig)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        _raise_problems(file, list(_walk_errors(exc, "", "")))
        raise  # pragma: no cover - _raise_problems always raises for a non-empty tree
    if profiles:
        written = {DEFAULT_PROFILE: config.agent} if "agent" in rest else {}
        config = attrs.evolve(config, profiles={**written, **profiles})
    _raise_problems(file, [*_value_problems(config), *_cross_problems(config)])
    return config


def load_config(
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> BrokerConfig:
    """Read, expand and validate a broker.toml.

    ``environ`` (default ``os.environ``) supplies ``${VAR}`` values. Relative
    ``agent.working_dir`` and ``state.path`` are made absolute against the
    file's directory. Raises ConfigError naming the file (as given) and the key
    path; never anything else for a bad or unreadable file.
    """
    file = os.fspath(path)
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    try:
        data = tomli.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(_toml_error_message(file, exc)) from None
    config = structure_config(data, file=file, environ=environ)
    base = Path(file).resolve().parent

    def anchored(agent: AgentConfig) -> AgentConfig:
        repo = str(base / agent.repo) if agent.repo else ""
        return attrs.evolve(agent, working_dir=str(base / agent.working_dir), repo=repo)

    agent = anchored(config.agent)
    return attrs.evolve(
        config,
        agent=agent,
        profiles={
            name: agent if profile is config.agent else anchored(profile)
            for name, profile in config.profiles.items()
        },
        state=attrs.evolve(config.state, path=str(base / config.state.path)),
    )


def _toml_error_message(file: str, exc: tomli.TOMLDecodeError) -> str:
    lineno = getattr(exc, "lineno", None)
    colno = getattr(exc, "colno", None)
    reason = getattr(exc, "msg", str(exc))
    if lineno is None:
        return f"{file}: TOML syntax error: {reason}"
    return f"{file}: line {lineno}, column {colno}: TOML syntax error: {reason}"


# ---------------------------------------------------------------- the agent process


def resolve_command(name: str, *, cwd: str | None = None) -> str:
    """The executable to run for ``[agent].command``.

    A bare name is looked up first in the directory of the running interpreter
    (so ``python`` and console scripts of the broker's venv win), then on PATH.
    A path (anything with a ``/``) is returned as given; it must exist and be
    executable, relative paths counted from ``cwd`` (default: the current
    directory). Raises ConfigError naming the command when nothing is found.
    """
    if not name:
        raise ConfigError("agent.command: empty command")
    if "/" in name:
        full = os.path.join(cwd or os.getcwd(), name)
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            raise ConfigError(f"agent.command: {name!r} is not an executable file")
        return name
    interpreter_dir = os.path.dirname(sys.executable)
    found = shutil.which(name, path=interpreter_dir) or shutil.which(name)
    if found is None:
        raise ConfigError(f"agent.command: {name!r} not found in {interpreter_dir} nor on PATH")
    return found


def agent_environment(
    agent: AgentConfig, environ: Mapping[str, str], *, secrets: Iterable[str]
) -> dict[str, str]:
    """The complete environment an agent process gets; nothing else is inherited.

    HOME, PATH, USER and LANG come from ``environ`` (the broker's environment),
    then ``agent.env`` (already ``${VAR}``-expanded when the file was loaded),
    then every name in ``agent.inherit_env`` that ``environ`` has. Any variable
    whose value contains one of ``secrets`` (pass ``config.secret_values()``:
    the server and gateway tokens) is dropped, with a warning naming it.
    ``secrets`` is required so that no caller can forget it.
    """
    secrets = tuple(s for s in secrets if s)
    env = {name: environ[name] for name in AGENT_BASE_ENV if name in environ}
    env.update(agent.env)
    env.update({name: environ[name] for name in agent.inherit_env if name in environ})
    for name in sorted(env):
        if any(_holds(env[name], secret) for secret in secrets):
            log.warning("not passing %s to the agent: it holds a broker token", name)
            del env[name]
    return env
