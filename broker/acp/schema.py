"""Typed ACP messages the broker uses, parsed leniently with cattrs.

Wire keys are camelCase, attribute names snake_case. Parsing never rejects a
message for what the broker does not need: extra fields are ignored, a null
where the schema says "required" falls back to the attribute's default, and
an unknown content block or ``session/update`` kind is kept raw
(:class:`UnknownContent`, :class:`UnknownUpdate`). A known kind whose fields
have the wrong shape is also kept raw, with the reason, rather than raised.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

log = logging.getLogger(__name__)

T = TypeVar("T")


class StopReason(enum.StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    MAX_TURN_REQUESTS = "max_turn_requests"
    REFUSAL = "refusal"
    CANCELLED = "cancelled"


class SchemaError(ValueError):
    """A message too broken to use at all (not an object, say)."""


# --- content blocks ------------------------------------------------------


@attrs.frozen
class TextContent:
    text: str = ""
    type: str = "text"


@attrs.frozen
class ImageContent:
    data: str = ""
    mime_type: str = ""
    uri: str | None = None
    type: str = "image"


@attrs.frozen
class ResourceContents:
    uri: str = ""
    mime_type: str | None = None
    text: str | None = None
    blob: str | None = None


@attrs.frozen
class EmbeddedResource:
    resource: ResourceContents = ResourceContents()
    type: str = "resource"


@attrs.frozen
class ResourceLink:
    uri: str = ""
    name: str = ""
    mime_type: str | None = None
    title: str | None = None
    description: str | None = None
    size: int | None = None
    type: str = "resource_link"


@attrs.frozen
class UnknownContent:
    type: str
    raw: Mapping[str, Any]


ContentBlock = TextContent | ImageContent | EmbeddedResource | ResourceLink | UnknownContent
_CONTENT_TYPES: dict[str, type[Any]] = {
    "text": TextContent,
    "image": ImageContent,
    "resource": EmbeddedResource,
    "resource_link": ResourceLink,
}

# --- tool calls, plans, commands, modes, config options ------------------


@attrs.frozen
class ToolCall:
    """A ``tool_call`` (all fields) or ``tool_call_update`` (a patch: None
    means unchanged). ``content``/``locations`` are kept as raw JSON."""

    tool_call_id: str = ""
    title: str | None = None
    kind: str | None = None
    status: str | None = None
    content: list[Any] | None = None
    locations: list[Any] | None = None
    raw_input: Any = None
    raw_output: Any = None


@attrs.frozen
class PlanEntry:
    content: str = ""
    priority: str = "medium"
    status: str = "pending"


@attrs.frozen
class AvailableCommand:
    name: str = ""
    description: str = ""


@attrs.frozen
class SessionMode:
    id: str = ""
    name: str = ""
    description: str | None = None


@attrs.frozen
class SessionModeState:
    current_mode_id: str = ""
    available_modes: list[SessionMode] = attrs.field(factory=list)


@attrs.frozen
class ConfigOptionValue:
    value: str = ""
    name: str = ""
    description: str | None = None
    group: str | None = None  # the group's id when the agent grouped its values


@attrs.frozen
class ConfigOption:
    """A session configuration option (model, mode, reasoning level...).

    ``type`` is "select" (``options`` lists the values, flattened from
    groups) or "boolean"; ``current_value`` is a str or a bool."""

    id: str = ""
    name: str = ""
    type: str = "select"
    current_value: str | bool | None = None
    options: list[ConfigOptionValue] = attrs.field(factory=list)
    description: str | None = None
    category: str | None = None


# --- session/update kinds ------------------------------------------------


@attrs.frozen
class AgentMessageChunk:
    content: ContentBlock = TextContent()
    message_id: str | None = None  # ACP ``messageId``: which agent message the text is part of


@attrs.frozen
class AgentThoughtChunk:
    content: ContentBlock = TextContent()


@attrs.frozen
class UserMessageChunk:
    content: ContentBlock = TextContent()


@attrs.frozen
class ToolCallStart(ToolCall):
    pass


@attrs.frozen
class ToolCallUpdate(ToolCall):
    pass


@attrs.frozen
class PlanUpdate:
    entries: list[PlanEntry] = attrs.field(factory=list)


@attrs.frozen
class AvailableCommandsUpdate:
    available_commands: list[AvailableCommand] = attrs.field(factory=list)


@attrs.frozen
class CurrentModeUpdate:
    current_mode_id: str = ""


@attrs.frozen
class ConfigOptionUpdate:
    config_options: list[ConfigOption] = attrs.field(factory=list)


@attrs.frozen
class SessionInfoUpdate:
    title: str | None = None
    updated_at: str | None = None


@attrs.frozen
class UsageUpdate:
    used: int | None = None
    size: int | None = None
    cost: Any = None


@attrs.frozen
class UnknownUpdate:
    """A kind we do not know, or a known kind we could not parse (``error``)."""

    kind: str
    raw: Mapping[str, Any]
    error: str = ""


SessionUpdate = (
    AgentMessageChunk
    | AgentThoughtChunk
    | UserMessageChunk
    | ToolCallStart
    | ToolCallUpdate
    | PlanUpdate
    | AvailableCommandsUpdate
    | CurrentModeUpdate
    | ConfigOptionUpdate
    | SessionInfoUpdate
    | UsageUpdate
    | UnknownUpdate
)
_UPDATE_KINDS: dict[str, type[Any]] = {
    "agent_message_chunk": AgentMessageChunk,
    "agent_thought_chunk": AgentThoughtChunk,
    "user_message_chunk": UserMessageChunk,
    "tool_call": ToolCallStart,
    "tool_call_update": ToolCallUpdate,
    "plan": PlanUpdate,
    "available_commands_update": AvailableCommandsUpdate,
    "current_mode_update": CurrentModeUpdate,
    "config_option_update": ConfigOptionUpdate,
    "session_info_update": SessionInfoUpdate,
    "usage_update": UsageUpdate,
}


# --- initialize and session lifecycle ------------------------------------


@attrs.frozen
class PromptCapabilities:
    image: bool = False
    audio: bool = False
    embedded_context: bool = False


@attrs.frozen
class SessionCapabilities:
    """Each is advertised by an object (``{}``); absent or null means no."""

    resume: bool = False
    close: bool = False
    list: bool = False


@attrs.frozen
class McpCapabilities:
    """Which MCP transports besides stdio the agent connects to itself."""

    http: bool = False
    sse: bool = False


@attrs.frozen
class AgentCapabilities:
    load_session: bool = False
    mcp_capabilities: McpCapabilities = McpCapabilities()
    prompt_capabilities: PromptCapabilities = PromptCapabilities()
    session_capabilities: SessionCapabilities = SessionCapabilities()


@attrs.frozen
class AuthMethod:
    """One way the agent can authenticate. ``type`` is ``"env_var"`` for a
    method that reads ``vars`` from the agent's environment (each entry a
    name or ``{"name": ...}``); absent for one the agent runs itself (a login)."""

    id: str = ""
    name: str = ""
    description: str | None = None
    type: str | None = None
    vars: list[Any] = attrs.field(factory=list)

    @property
    def var_names(self) -> tuple[str, ...]:
        """The environment variables an ``env_var`` method needs."""
        names = (v.get("name") if isinstance(v, Mapping) else v for v in self.vars)
        return tuple(n for n in names if isinstance(n, str) and n)


@attrs.frozen
class AgentInfo:
    name: str = ""
    version: str = ""
    title: str | None = None


@attrs.frozen
class InitializeResult:
    protocol_version: int = 1
    agent_capabilities: AgentCapabilities = AgentCapabilities()
    auth_methods: list[AuthMethod] = attrs.field(factory=list)
    agent_info: AgentInfo | None = None


@attrs.frozen
class SessionSetup:
    """What ``session/new``, ``session/load`` and ``session/resume`` return.
    ``session_id`` is the one asked for when loading or resuming."""

    session_id: str = ""
    modes: SessionModeState | None = None
    config_options: list[ConfigOption] = attrs.field(factory=list)


@attrs.frozen
class PermissionOption:
    option_id: str = ""
    name: str = ""
    kind: str = ""


@attrs.frozen
class PermissionRequest:
    session_id: str = ""
    tool_call: ToolCall = ToolCall()
    options: list[PermissionOption] = attrs.field(factory=list)


# --- the converter -------------------------------------------------------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


converter = cattrs.Converter()


def _lenient_attrs_hook(cls: type[Any]) -> Any:
    renames = {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}
    inner = make_dict_structure_fn(cls, converter, **renames)  # type: ignore[arg-type]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise SchemaError(f"{cls.__name__}: expected an object, got {value!r:.80}")
        return inner({k: v for k, v in value.items() if v is not None}, cls)

    return structure


def _is_schema_class(t: Any) -> bool:
    return attrs.has(t) and getattr(t, "__module__", None) == __name__


def _flag(value: Any, _: Any) -> bool:
    """``true`` or an advertising object (``{}``, how sessionCapabilities
    says yes) is yes; ``false``/null is no."""
    if isinstance(value, Mapping):
        return True
    return bool(value)


def _structure_content(value: Any, _: Any) -> ContentBlock:
    if not isinstance(value, Mapping):
        raise SchemaError(f"content block: expected an object, got {value!r:.80}")
    kind = str(value.get("type"))
    cls = _CONTENT_TYPES.get(kind)
    if cls is None:
        return UnknownContent(kind, dict(value))
    block: ContentBlock = converter.structure(value, cls)
    return block


def _structure_config_option(value: Any, _: Any) -> ConfigOption:
    if not isinstance(value, Mapping):
        raise SchemaError(f"config option: expected an object, got {value!r:.80}")
    values: list[ConfigOptionValue] = []
    for item in value.get("options") or ():
        if isinstance(item, Mapping) and isinstance(item.get("options"), list):
            group = str(item.get("group") or item.get("name") or "")
            values += [
                attrs.evolve(converter.structure(v, ConfigOptionValue), group=group)
                for v in item["options"]
            ]
        else:
            values.append(converter.structure(item, ConfigOptionValue))
    current = value.get("currentValue")
    category = value.get("category")
    return ConfigOption(
        id=str(value.get("id") or ""),
        name=str(value.get("name") or ""),
        type=str(value.get("type") or "select"),
        current_value=current
        if isinstance(current, bool | str) or current is None
        else str(current),
        options=values,
        description=value.get("description"),
        category=category if isinstance(category, str) else None,
    )


def _structure_optional_str(value: Any, _: Any) -> str | None:
    return None if value is None else str(value)


converter.register_structure_hook_factory(_is_schema_class, _lenient_attrs_hook)
converter.register_structure_hook_func(lambda t: t == ContentBlock, _structure_content)
converter.register_structure_hook(ConfigOption, _structure_config_option)
converter.register_structure_hook(str | None, _structure_optional_str)
converter.register_structure_hook(Any, lambda v, _: v)
converter.register_structure_hook(bool, _flag)


def structure(value: Any, cls: type[T]) -> T:
    """Parse ``value`` (decoded JSON) as ``cls``; raises :class:`SchemaError`
    or a cattrs error only when it is unusable."""
    result: T = converter.structure(value, cls)
    return result


def parse_update(raw: Any) -> SessionUpdate:
    """Parse the ``update`` object of a ``session/update``. Never raises:
    anything unknown or unparseable comes back as :class:`UnknownUpdate`."""
    if not isinstance(raw, Mapping):
        return UnknownUpdate("", {"value": raw}, "update is not an object")
    kind = str(raw.get("sessionUpdate"))
    cls = _UPDATE_KINDS.get(kind)
    if cls is None:
        return UnknownUpdate(kind, dict(raw))
    try:
        update: SessionUpdate = converter.structure(raw, cls)
    except Exception as exc:  # noqa: BLE001 - a bad update is kept raw, never raised
        log.warning("unparseable %s update kept raw: %s", kind, exc)
        return UnknownUpdate(kind, dict(raw), f"{type(exc).__name__}: {exc}")
    return update


_unstructurers: dict[type[Any], Callable[[Any], dict[str, Any]]] = {}


def _camel_unstructurer(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    fn = _unstructurers.get(cls)
    if fn is None:
        renames = {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}
        fn = _unstructurers[cls] = make_dict_unstructure_fn(cls, converter, **renames)  # type: ignore[arg-type]
    return fn


# content nested inside a block (an embedded resource's contents) is camelCase too
converter.register_unstructure_hook(
    ResourceContents, lambda value: _camel_unstructurer(ResourceContents)(value)
)


def _unstructure_content(block: Any) -> dict[str, Any]:
    if isinstance(block, UnknownContent):
        return dict(block.raw)
    wire: dict[str, Any] = _drop_none(_camel_unstructurer(type(block))(block))
    return wire


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def content_to_wire(block: ContentBlock) -> dict[str, Any]:
    """The camelCase JSON of a content block, nulls omitted."""
    return _unstructure_content(block)
