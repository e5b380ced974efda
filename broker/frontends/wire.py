"""The openab gateway protocol v1 on the wire: frames in, frames out.

Three frame kinds travel as JSON text frames over WebSocket:

* ``openab.gateway.event.v1`` (chat -> broker): :class:`InboundEvent`
* ``openab.gateway.reply.v1`` (broker -> chat): :class:`OutboundReply`
* ``openab.gateway.response.v1`` (chat -> broker, answering a
  ``request_id``): :class:`GatewayResponse`

and, where the gateway speaks openab's newer handshake, the broker's
``openab.gateway.client_hello.v1`` and the gateway's answer
``openab.gateway.hello.v1`` (:class:`GatewayHello`, see :func:`parse_hello`).

plus the broker's own ``agent-broker.error.v1`` frame, sent back to a client
whose frame could not be read (see docs/protocol.md).

Parsing is strict about what the protocol requires (a missing or mistyped
required field is a :class:`WireError` whose message names the field path,
e.g. ``missing field sender.display_name``) and lenient about what it does not
know (unknown keys are ignored, unknown attachment types are kept for the
router to decline). Encoding omits ``thread_id``, ``command`` and
``request_id`` when they are empty, as the protocol says.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.v import transform_error

from broker.text import has_lone_surrogate, may_hold_surrogates, valid_json, valid_text

EVENT_SCHEMA = "openab.gateway.event.v1"
REPLY_SCHEMA = "openab.gateway.reply.v1"
RESPONSE_SCHEMA = "openab.gateway.response.v1"
ERROR_SCHEMA = "agent-broker.error.v1"
CLIENT_HELLO_SCHEMA = "openab.gateway.client_hello.v1"
HELLO_SCHEMA = "openab.gateway.hello.v1"

REQUEST_ID_RE = re.compile(r"^req_[0-9a-f]{32}$")


class WireError(Exception):
    """A frame that cannot be read. ``str(err)`` names the problem precisely.

    When the frame was JSON and said who it came from, ``event_id``,
    ``platform``, ``channel_id`` and ``thread_id`` carry what could be read, so
    an error can be addressed to the chat (see :func:`error_reply`).
    """

    def __init__(
        self,
        message: str,
        *,
        event_id: str | None = None,
        platform: str | None = None,
        channel_id: str | None = None,
        thread_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.event_id = event_id
        self.platform = platform
        self.channel_id = channel_id
        self.thread_id = thread_id


class Command(enum.Enum):
    EDIT_MESSAGE = "edit_message"
    ADD_REACTION = "add_reaction"
    REMOVE_REACTION = "remove_reaction"
    CREATE_TOPIC = "create_topic"


@attrs.frozen
class Attachment:
    """An attachment of an event. ``type`` is ``image`` or ``text_file`` in
    protocol v1; other values are kept so the router can say it dropped them."""

    type: str
    data: str = ""  # base64
    filename: str = ""
    mime_type: str = ""
    size: int | None = None


@attrs.frozen
class Channel:
    id: str
    type: str
    thread_id: str | None = None
    guild_id: str | None = None  # the Discord guild or Slack team; native front-ends set it


@attrs.frozen
class Sender:
    id: str
    name: str
    display_name: str
    is_bot: bool


@attrs.frozen
class Content:
    type: str
    text: str
    attachments: tuple[Attachment, ...] = ()


@attrs.frozen
class InboundEvent:
    """``openab.gateway.event.v1``: one chat message (or other event) for the broker."""

    event_id: str
    timestamp: str
    platform: str
    channel: Channel
    sender: Sender
    content: Content
    message_id: str
    mentions: tuple[str, ...] = ()
    event_type: str = "message"
    schema: str = EVENT_SCHEMA


@attrs.frozen
class GatewayResponse:
    """``openab.gateway.response.v1``: the answer to a frame carrying ``request_id``."""

    request_id: str
    success: bool
    thread_id: str | None = None
    message_id: str | None = None
    error: str | None = None
    outcome: str | None = None  # newer gateways: delivered | rejected | unknown
    error_code: str | None = None
    retry_after_ms: int | None = None
    schema: str = RESPONSE_SCHEMA


@attrs.frozen
class ReplyChannelRef:
    """Where a reply goes: the platform channel and, optionally, its thread."""

    id: str
    thread_id: str | None = None


class ButtonStyle(enum.Enum):
    PRIMARY = "primary"
    SUCCESS = "success"
    DANGER = "danger"
    SECONDARY = "secondary"


@attrs.frozen
class Button:
    """A button under a message, on front-ends that can show one.

    A click comes back as an :class:`InboundEvent` with ``event_type`` ``"button"``
    whose text is ``command``, from the user who clicked: the router handles it
    as if that user had typed ``command``.
    """

    label: str
    command: str
    style: ButtonStyle = ButtonStyle.SECONDARY


@attrs.frozen
class OutboundReply:
    """``openab.gateway.reply.v1``: one frame from the broker to the chat.

    ``reply_to`` is the event_id for a plain reply, the platform message_id
    for ``edit_message`` and reactions. ``text`` is the message text, the
    emoji of a reaction or the title of a topic. ``buttons`` are shown by the
    front-ends that can; protocol v1 has none, so ``text`` always says how to
    answer by typing.
    """

    reply_to: str
    platform: str
    channel: ReplyChannelRef
    text: str
    command: Command | None = None
    request_id: str | None = None
    buttons: tuple[Button, ...] = ()

    @classmethod
    def to_event(cls, event: InboundEvent, text: str) -> OutboundReply:
        """A plain reply to ``event``, in the event's channel and thread."""
        return cls(event.event_id, event.platform, reply_target(event), text)


@attrs.frozen
class PlatformCapabilities:
    """What a gateway's ``hello`` says one platform can do.

    ``message_limit`` is in characters (a limit in bytes is divided by the
    most bytes a character can take, so a split never overflows); None when
    unlimited or not said. ``streaming_mode`` is ``disabled``, ``edit`` or
    ``native``; ``send_ack`` and ``edit_ack`` promise a response (with an
    ``outcome``) to every reply and edit that carries a ``request_id``.
    """

    message_limit: int | None = None
    can_edit: bool = True
    streaming_mode: str = "edit"
    send_ack: bool = False
    edit_ack: bool = False

    @property
    def streams(self) -> bool:
        return self.can_edit and self.streaming_mode != "disabled"


@attrs.frozen
class GatewayHello:
    """``openab.gateway.hello.v1``: the gateway's answer to ``client_hello``."""

    protocol_version: int
    capabilities: Mapping[str, PlatformCapabilities]
    delivery_mode: str = ""
    schema: str = HELLO_SCHEMA


@attrs.frozen
class ClientHello:
    """``openab.gateway.client_hello.v1``: a client of the broker's own server
    asks for acknowledged replies (and may name the platforms it serves)."""

    protocol_version: int
    client_name: str = ""
    requested_platforms: tuple[str, ...] = ()
    schema: str = CLIENT_HELLO_SCHEMA


Hello = GatewayHello | ClientHello
Frame = InboundEvent | GatewayResponse | GatewayHello | ClientHello


def reply_target(event: InboundEvent) -> ReplyChannelRef:
    return ReplyChannelRef(event.channel.id, event.channel.thread_id or None)


def thread_key(event: InboundEvent) -> str:
    """``{platform}:{thread_id or channel.id}``: the conversation an event belongs to."""
    return f"{event.platform}:{event.channel.thread_id or event.channel.id}"


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


# --- parsing -----------------------------------------------------------------


def _strict(kind: type) -> Any:
    def hook(value: object, _: type) -> object:
        # bool is an int subclass: a JSON true is not a number, nor 1 a bool.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {_json_type(value)}")
        return value

    return hook


def _json_type(value: object) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number"}
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return names.get(type(value), type(value).__name__)


_converter = cattrs.Converter()
for _kind in (str, bool, int):
    _converter.register_structure_hook(_kind, _strict(_kind))


def _format_exception(exc: BaseException, _type: type | None) -> str:
    if isinstance(exc, KeyError):
        return "missing"
    return str(exc)


def _describe(exc: Exception) -> str:
    problems = []
    for line in transform_error(exc, path="$", format_exception=_format_exception):
        problem, _, path = line.rpartition(" @ ")
        field = path.removeprefix("$").removeprefix(".") or "frame"
        problems.append(
            f"missing field {field}" if problem == "missing" else f"field {field}: {problem}"
        )
    return "; ".join(problems)


def _address(raw: Mapping[str, Any]) -> dict[str, str | None]:
    """What an unreadable event says about where it came from, if anything."""

    def text(value: object) -> str | None:
        if isinstance(value, str) and value and not has_lone_surrogate(value):
            return value
        return None

    channel = raw.get("channel")
    channel = channel if isinstance(channel, Mapping) else {}
    return {
        "event_id": text(raw.get("event_id")),
        "platform": text(raw.get("platform")),
        "channel_id": text(channel.get("id")),
        "thread_id": text(channel.get("thread_id")),
    }


def _load_object(text: str | bytes) -> dict[str, Any]:
    if isinstance(text, bytes):
        raise WireError("binary frames are not supported; send JSON as a text frame")
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise WireError(f"not JSON: {exc}") from None
    except RecursionError:
        raise WireError("not JSON that can be read: nested too deeply") from None
    if not isinstance(raw, dict):
        raise WireError(f"not a JSON object: got {_json_type(raw)}")
    frame: dict[str, Any] = raw
    if may_hold_surrogates(text):
        _check_ids(frame)
        frame, _ = valid_json(frame)
    return frame


# Fields that name something (a thread, a message, a request): an id that is
# not valid text is refused; any other text has its lone surrogates replaced.
_ID_FIELDS = (
    ("event_id",),
    ("platform",),
    ("message_id",),
    ("request_id",),
    ("thread_id",),
    ("channel", "id"),
    ("channel", "thread_id"),
    ("channel", "type"),
    ("sender", "id"),
)


def _check_ids(raw: Mapping[str, Any]) -> None:
    for path in _ID_FIELDS:
        value: Any = raw
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str) and has_lone_surrogate(value):
            raise WireError(
                f"field {'.'.join(path)} is not valid text (it holds a lone UTF-16 surrogate)",
                **_address(raw),
            )


def _structure(raw: dict[str, Any], cls: type[Any]) -> Any:
    try:
        return _converter.structure(raw, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        message = _describe(exc) if isinstance(exc, cattrs.BaseValidationError) else str(exc)
        raise WireError(message, **_address(raw)) from None


def parse_frame(text: str | bytes) -> Frame:
    """Read a frame sent to the broker: an event or a response.

    Raises :class:`WireError` naming the problem: ``not JSON: ...``,
    ``missing field schema``, ``unknown schema 'x'``, ``missing field
    sender.display_name``, ``field channel.id: expected str, got number``.
    Unknown keys are ignored.
    """
    raw = _load_object(text)
    schema = raw.get("schema")
    if schema is None:
        raise WireError("missing field schema", **_address(raw))
    if schema == EVENT_SCHEMA:
        event: InboundEvent = _structure(raw, InboundEvent)
        return event
    if schema == RESPONSE_SCHEMA:
        response: GatewayResponse = _structure(raw, GatewayResponse)
        return response
    if schema == HELLO_SCHEMA:
        return parse_hello(raw)
    if schema == CLIENT_HELLO_SCHEMA:
        hello: ClientHello = _structure(raw, ClientHello)
        return hello
    if schema == REPLY_SCHEMA:
        raise WireError(
            f"unexpected schema '{schema}': "
            f"the broker accepts {EVENT_SCHEMA} and {RESPONSE_SCHEMA}",
            **_address(raw),
        )
    raise WireError(f"unknown schema {schema!r}", **_address(raw))


def parse_reply(text: str | bytes) -> OutboundReply:
    """Read and check a reply frame the way a gateway would (used by tests and
    :mod:`broker.testing.fake_gateway`). Empty optional fields that are present
    rather than omitted are errors, as are unknown commands and a
    ``request_id`` that is not ``req_<32 hex>``."""
    raw = _load_object(text)
    if raw.get("schema") != REPLY_SCHEMA:
        raise WireError(f"unknown schema {raw.get('schema')!r} (expected {REPLY_SCHEMA})")
    problems: list[str] = []
    for key in ("reply_to", "platform"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            problems.append(f"missing field {key}")
    channel = raw.get("channel")
    if not isinstance(channel, dict) or not isinstance(channel.get("id"), str):
        problems.append("missing field channel.id")
        channel = {}
    content = raw.get("content")
    if not isinstance(content, dict) or not isinstance(content.get("text"), str):
        problems.append("missing field content.text")
        content = {}
    elif content.get("type") != "text":
        problems.append(f"field content.type: expected 'text', got {content.get('type')!r}")
    for key, holder in (("thread_id", channel), ("command", raw), ("request_id", raw)):
        if key in holder and not holder[key]:
            problems.append(f"field {key} is {holder[key]!r}: it must be omitted when empty")
    command = None
    if raw.get("command"):
        try:
            command = Command(raw["command"])
        except ValueError:
            problems.append(f"unknown command {raw['command']!r}")
    request_id = raw.get("request_id") or None
    if request_id is not None and not REQUEST_ID_RE.match(str(request_id)):
        problems.append(f"field request_id: {request_id!r} is not req_<32 hex digits>")
    if problems:
        raise WireError("; ".join(problems))
    return OutboundReply(
        raw["reply_to"],
        raw["platform"],
        ReplyChannelRef(channel["id"], channel.get("thread_id") or None),
        content["text"],
        command,
        request_id,
    )


# --- encoding ----------------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    # valid_text: a frame always encodes, whatever text reached it
    return valid_text(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def reply_to_dict(reply: OutboundReply) -> dict[str, Any]:
    channel: dict[str, Any] = {"id": reply.channel.id}
    if reply.channel.thread_id:
        channel["thread_id"] = reply.channel.thread_id
    frame: dict[str, Any] = {
        "schema": REPLY_SCHEMA,
        "reply_to": reply.reply_to,
        "platform": reply.platform,
        "channel": channel,
        "content": {"type": "text", "text": reply.text},
    }
    if reply.command is not None:
        frame["command"] = reply.command.value
    if reply.request_id:
        frame["request_id"] = reply.request_id
    return frame


def encode_reply(reply: OutboundReply) -> str:
    """The ``openab.gateway.reply.v1`` frame for ``reply``; empty
    ``thread_id``, ``command`` and ``request_id`` are omitted."""
    return _dumps(reply_to_dict(reply))


def encode_event(event: InboundEvent) -> str:
    """The ``openab.gateway.event.v1`` frame for ``event`` (the gateway side)."""
    raw = _converter.unstructure(event)
    raw["schema"] = EVENT_SCHEMA
    if raw["channel"].get("guild_id") is None:
        del raw["channel"]["guild_id"]  # not part of protocol v1; sent only when known
    return _dumps(raw)


def encode_response(response: GatewayResponse) -> str:
    """The ``openab.gateway.response.v1`` frame for ``response`` (the gateway side)."""
    raw = _converter.unstructure(response)
    raw["schema"] = RESPONSE_SCHEMA
    return _dumps(raw)


def encode_error(error: WireError) -> str:
    """The ``agent-broker.error.v1`` frame telling a client its frame was unreadable.

    ``{"schema":"agent-broker.error.v1","error":"missing field sender.name"}``
    plus ``"event_id"`` when the bad frame had one.
    """
    frame: dict[str, Any] = {"schema": ERROR_SCHEMA, "error": error.message}
    if error.event_id:
        frame["event_id"] = error.event_id
    return _dumps(frame)


def error_reply(error: WireError) -> OutboundReply | None:
    """A plain reply telling the chat that an event could not be read, or
    None when the bad frame did not say where it came from (no event_id,
    platform or channel.id). Used where the other side is an openab gateway,
    which shows reply frames and has no use for error frames."""
    if not (error.event_id and error.platform and error.channel_id):
        return None
    return OutboundReply(
        error.event_id,
        error.platform,
        ReplyChannelRef(error.channel_id, error.thread_id),
        f"⚠️ This message could not be read: {error.message}",
    )


# --- the newer handshake (protocols.md 2b) -------------------------------------

_BYTES_PER_CHARACTER = {"characters": 1, "bytes": 4, "utf16_bytes": 4}


def _platform_capabilities(raw: object) -> PlatformCapabilities:
    raw = raw if isinstance(raw, Mapping) else {}
    limit = raw.get("message_limit")
    characters = None
    if isinstance(limit, Mapping) and type(limit.get("value")) is int and limit["value"] > 0:
        per = _BYTES_PER_CHARACTER.get(str(limit.get("unit", "characters")))
        characters = None if per is None else max(1, limit["value"] // per)
    nested = raw.get("acks")
    acks: Mapping[str, Any] = nested if isinstance(nested, Mapping) else raw

    def flag(holder: Mapping[str, Any], key: str, default: bool) -> bool:
        value = holder.get(key, default)
        return value if isinstance(value, bool) else default

    mode = raw.get("streaming_mode")
    return PlatformCapabilities(
        message_limit=characters,
        can_edit=flag(raw, "can_edit", True),
        streaming_mode=mode if mode in ("disabled", "edit", "native") else "edit",
        send_ack=flag(acks, "send_ack", False),
        edit_ack=flag(acks, "edit_ack", False),
    )


def parse_hello(raw: Mapping[str, Any]) -> GatewayHello:
    """Read a gateway's ``hello`` leniently: what it does not say keeps the
    v1 behaviour (editable, no acks, the platform's known limit)."""
    version = raw.get("protocol_version")
    if type(version) is not int:
        raise WireError("field protocol_version: expected number")
    capabilities = raw.get("capabilities")
    capabilities = capabilities if isinstance(capabilities, Mapping) else {}
    topology = raw.get("topology")
    mode = topology.get("delivery_mode") if isinstance(topology, Mapping) else None
    return GatewayHello(
        version,
        {str(name): _platform_capabilities(c) for name, c in capabilities.items()},
        mode if isinstance(mode, str) else "",
    )


def encode_client_hello(client_name: str, platforms: tuple[str, ...] = ()) -> str:
    """The ``client_hello`` the gateway client sends right after connecting."""
    return _dumps(
        {
            "schema": CLIENT_HELLO_SCHEMA,
            "protocol_version": 1,
            "client_name": client_name,
            "requested_platforms": list(platforms),
        }
    )


def encode_hello(hello: GatewayHello) -> str:
    """The ``hello`` frame for ``hello`` (the gateway side)."""

    def platform(caps: PlatformCapabilities) -> dict[str, Any]:
        out: dict[str, Any] = {
            "can_edit": caps.can_edit,
            "streaming_mode": caps.streaming_mode,
            "acks": {"send_ack": caps.send_ack, "edit_ack": caps.edit_ack, "delete_ack": False},
        }
        limit = caps.message_limit
        out["message_limit"] = (
            {"value": limit, "unit": "characters"} if limit else {"value": 0, "unit": "unlimited"}
        )
        return out

    return _dumps(
        {
            "schema": HELLO_SCHEMA,
            "protocol_version": hello.protocol_version,
            "capabilities": {name: platform(c) for name, c in hello.capabilities.items()},
            "topology": {"delivery_mode": hello.delivery_mode or "best_effort_broadcast"},
        }
    )
