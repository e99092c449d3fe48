"""MQTT 5.0 properties: one typed record, the table of identifiers, and their codec.

Every property is a field of :class:`Properties`; ``None`` (or an empty
tuple for the two that may repeat) means absent. The table ``SPECS`` says,
for each identifier (5.0 section 2.2.2.2): its field, its data type, the
packets it may appear in, and where it may appear more than once. The rules
that follow from the table:

- an identifier not valid for the packet type, or a value of the wrong type,
  is a Malformed Packet (section 2.2.2.2);
- an identifier that may appear once and appears twice is a Protocol Error
  (e.g. section 3.1.2.11.2); only User Property, and Subscription Identifier
  in PUBLISH, may repeat;
- the range checks in ``_check_value`` are Protocol Errors (each cites its
  section).

To add a property: add the field to ``Properties`` and one ``PropertySpec``
row; the encoder and decoder follow the table. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from .errors import MalformedPacket, ProtocolError

__all__ = [
    "NO_PROPERTIES",
    "PROPERTIES_MAP",
    "SPECS",
    "VBI_MAX",
    "WILL",
    "Kind",
    "Properties",
    "PropertiesMap",
    "PropertyId",
    "PropertySpec",
    "decode_bin",
    "decode_properties",
    "decode_str",
    "decode_vbi",
    "encode_bin",
    "encode_properties",
    "encode_str",
    "encode_vbi",
    "properties_body",
]

# The context key for Will Properties in a CONNECT payload. Packet type 0 is
# reserved on the wire, so it cannot clash with a real packet type (1..15).
WILL = 0

_CONNECT, _CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 1, 2, 3, 4, 5, 6, 7
_SUBSCRIBE, _SUBACK, _UNSUBSCRIBE, _UNSUBACK, _DISCONNECT, _AUTH = 8, 9, 10, 11, 14, 15


class PropertyId(enum.IntEnum):
    """Property identifiers, 5.0 section 2.2.2.2, table 2-4."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class Kind(enum.Enum):
    """The data types of section 1.5."""

    BYTE = "byte"
    U16 = "two byte integer"
    U32 = "four byte integer"
    VBI = "variable byte integer"
    STR = "UTF-8 encoded string"
    BIN = "binary data"
    PAIR = "UTF-8 string pair"


@dataclass(frozen=True, slots=True)
class Properties:
    """The properties of one packet (or of a will). Absent is None / ()."""

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __bool__(self) -> bool:
        """True when at least one property is present."""
        return self is not NO_PROPERTIES and self != NO_PROPERTIES

    def __repr__(self) -> str:
        """Only the present properties; authentication data is never shown."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if f.name == "authentication_data":
                value = "<hidden>"
            shown.append(f"{f.name}={value!r}")
        return f"Properties({', '.join(shown)})"


NO_PROPERTIES = Properties()


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One row of table 2-4: identifier, field, data type, where it may appear."""

    id: PropertyId
    field: str
    kind: Kind
    packets: frozenset[int]
    repeatable_in: frozenset[int] = frozenset()


def _spec(pid: PropertyId, name: str, kind: Kind, *packets: int,
          repeatable_in: tuple[int, ...] = ()) -> PropertySpec:
    return PropertySpec(pid, name, kind, frozenset(packets), frozenset(repeatable_in))


P = PropertyId
_ALL_ACKS = (_PUBACK, _PUBREC, _PUBREL, _PUBCOMP)
_WITH_USER_PROPS = (_CONNECT, _CONNACK, _PUBLISH, WILL, *_ALL_ACKS, _SUBSCRIBE, _SUBACK,
                    _UNSUBSCRIBE, _UNSUBACK, _DISCONNECT, _AUTH)

SPECS: tuple[PropertySpec, ...] = (
    _spec(P.PAYLOAD_FORMAT_INDICATOR, "payload_format_indicator", Kind.BYTE, _PUBLISH, WILL),
    _spec(P.MESSAGE_EXPIRY_INTERVAL, "message_expiry_interval", Kind.U32, _PUBLISH, WILL),
    _spec(P.CONTENT_TYPE, "content_type", Kind.STR, _PUBLISH, WILL),
    _spec(P.RESPONSE_TOPIC, "response_topic", Kind.STR, _PUBLISH, WILL),
    _spec(P.CORRELATION_DATA, "correlation_data", Kind.BIN, _PUBLISH, WILL),
    _spec(P.SUBSCRIPTION_IDENTIFIER, "subscription_identifiers", Kind.VBI, _PUBLISH, _SUBSCRIBE,
          repeatable_in=(_PUBLISH,)),  # [MQTT-3.3.4-4] one per matching subscription
    _spec(P.SESSION_EXPIRY_INTERVAL, "session_expiry_interval", Kind.U32,
          _CONNECT, _CONNACK, _DISCONNECT),
    _spec(P.ASSIGNED_CLIENT_IDENTIFIER, "assigned_client_identifier", Kind.STR, _CONNACK),
    _spec(P.SERVER_KEEP_ALIVE, "server_keep_alive", Kind.U16, _CONNACK),
    _spec(P.AUTHENTICATION_METHOD, "authentication_method", Kind.STR, _CONNECT, _CONNACK, _AUTH),
    _spec(P.AUTHENTICATION_DATA, "authentication_data", Kind.BIN, _CONNECT, _CONNACK, _AUTH),
    _spec(P.REQUEST_PROBLEM_INFORMATION, "request_problem_information", Kind.BYTE, _CONNECT),
    _spec(P.WILL_DELAY_INTERVAL, "will_delay_interval", Kind.U32, WILL),
    _spec(P.REQUEST_RESPONSE_INFORMATION, "request_response_information", Kind.BYTE, _CONNECT),
    _spec(P.RESPONSE_INFORMATION, "response_information", Kind.STR, _CONNACK),
    _spec(P.SERVER_REFERENCE, "server_reference", Kind.STR, _CONNACK, _DISCONNECT),
    _spec(P.REASON_STRING, "reason_string", Kind.STR, _CONNACK, *_ALL_ACKS, _SUBACK, _UNSUBACK,
          _DISCONNECT, _AUTH),
    _spec(P.RECEIVE_MAXIMUM, "receive_maximum", Kind.U16, _CONNECT, _CONNACK),
    _spec(P.TOPIC_ALIAS_MAXIMUM, "topic_alias_maximum", Kind.U16, _CONNECT, _CONNACK),
    _spec(P.TOPIC_ALIAS, "topic_alias", Kind.U16, _PUBLISH),
    _spec(P.MAXIMUM_QOS, "maximum_qos", Kind.BYTE, _CONNACK),
    _spec(P.RETAIN_AVAILABLE, "retain_available", Kind.BYTE, _CONNACK),
    _spec(P.USER_PROPERTY, "user_properties", Kind.PAIR, *_WITH_USER_PROPS,
          repeatable_in=_WITH_USER_PROPS),  # section 3.1.2.11.8: may appear many times
    _spec(P.MAXIMUM_PACKET_SIZE, "maximum_packet_size", Kind.U32, _CONNECT, _CONNACK),
    _spec(P.WILDCARD_SUBSCRIPTION_AVAILABLE, "wildcard_subscription_available", Kind.BYTE,
          _CONNACK),
    _spec(P.SUBSCRIPTION_IDENTIFIER_AVAILABLE, "subscription_identifier_available", Kind.BYTE,
          _CONNACK),
    _spec(P.SHARED_SUBSCRIPTION_AVAILABLE, "shared_subscription_available", Kind.BYTE, _CONNACK),
)
_BY_ID: dict[int, PropertySpec] = {s.id: s for s in SPECS}
_TUPLE_FIELDS = frozenset({"subscription_identifiers", "user_properties"})

# Byte properties whose only values are 0 and 1; anything else is a Protocol
# Error (5.0 sections 3.1.2.11.6, 3.1.2.11.7, 3.2.2.3.4, 3.2.2.3.5,
# 3.2.2.3.11-13). Payload Format Indicator has only 0 and 1 defined (3.3.2.3.2).
_BOOLEAN_BYTES = frozenset({
    "payload_format_indicator", "request_problem_information", "request_response_information",
    "maximum_qos", "retain_available", "wildcard_subscription_available",
    "subscription_identifier_available", "shared_subscription_available",
})
# Values that may not be zero: Receive Maximum (3.1.2.11.3), Maximum Packet
# Size (3.1.2.11.4), Subscription Identifier (3.3.2.3.8, 3.8.2.1.2).
_NON_ZERO = frozenset({"receive_maximum", "maximum_packet_size", "subscription_identifiers"})

VBI_MAX = 268_435_455
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# --- primitives (section 1.5). codec.py re-exports the public ones. ----------

def encode_vbi(value: int) -> bytes:
    """Variable Byte Integer in the fewest bytes [MQTT-1.5.5-1]."""
    if not 0 <= value <= VBI_MAX:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        if value:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def decode_vbi(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Read a Variable Byte Integer at ``pos``; return (value, position after it).

    More than four bytes, a non-minimal encoding [MQTT-1.5.5-1] or running
    past ``end`` is a Malformed Packet.
    """
    value = 0
    for i in range(4):
        if pos + i >= end:
            raise MalformedPacket("variable byte integer runs past the end")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise MalformedPacket("variable byte integer not in its shortest form")
            return value, pos + i + 1
    raise MalformedPacket("variable byte integer longer than four bytes")


def encode_str(value: str) -> bytes:
    """A UTF-8 Encoded String: two-byte length then the bytes (section 1.5.4).

    Raises ValueError for what may never go on the wire: over 65,535 bytes,
    U+0000 [MQTT-1.5.4-2], lone surrogates [MQTT-1.5.4-1].
    """
    data = value.encode("utf-8")  # strict: a lone surrogate raises UnicodeEncodeError
    if len(data) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    if "\x00" in value:
        raise ValueError("string contains U+0000")
    return _U16.pack(len(data)) + data


def encode_bin(value: bytes) -> bytes:
    """Binary Data: two-byte length then the bytes (section 1.5.6)."""
    if len(value) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return _U16.pack(len(value)) + bytes(value)


def decode_str(buf: bytes | memoryview, pos: int, end: int) -> tuple[str, int]:
    """Read a UTF-8 Encoded String; bad UTF-8, U+0000 or surrogates are malformed.

    [MQTT-1.5.3-1] / [MQTT-1.5.4-1]: well-formed UTF-8 without U+D800..U+DFFF
    (Python's strict decoder rejects both, and overlong forms);
    [MQTT-1.5.3-2] / [MQTT-1.5.4-2]: no U+0000. A BOM is kept [MQTT-1.5.3-3].
    """
    raw, pos = decode_bin(buf, pos, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000")
    return text, pos


def decode_bin(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes, int]:
    """Read Binary Data (two-byte length, then that many bytes)."""
    if pos + 2 > end:
        raise MalformedPacket("length prefix runs past the end")
    length = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    if pos + length > end:
        raise MalformedPacket("data runs past the end")
    return bytes(buf[pos:pos + length]), pos + length


# --- properties ---------------------------------------------------------------

def _encode_value(kind: Kind, value: Any) -> bytes:
    if kind is Kind.BYTE:
        return bytes((value,))
    if kind is Kind.U16:
        return _U16.pack(value)
    if kind is Kind.U32:
        return _U32.pack(value)
    if kind is Kind.VBI:
        return encode_vbi(value)
    if kind is Kind.STR:
        return encode_str(value)
    if kind is Kind.BIN:
        return encode_bin(value)
    key, val = value
    return encode_str(key) + encode_str(val)


def _items(props: Properties) -> Iterator[tuple[PropertySpec, Any]]:
    for spec in SPECS:
        value = getattr(props, spec.field)
        if spec.field in _TUPLE_FIELDS:
            for item in value:
                yield spec, item
        elif value is not None:
            yield spec, value


def properties_body(props: Properties, context: int | None = None) -> bytes:
    """The encoded properties without their length prefix, in identifier order.

    With ``context`` (a packet type or :data:`WILL`), a property not allowed
    there raises ValueError: the encoder never writes what a decoder must
    reject.
    """
    out = bytearray()
    for spec, value in _items(props):
        if context is not None and context not in spec.packets:
            raise ValueError(f"property {spec.field} is not allowed here")
        out.append(spec.id)
        out += _encode_value(spec.kind, value)
    return bytes(out)


def encode_properties(props: Properties, context: int | None = None) -> bytes:
    """Property Length (a Variable Byte Integer) followed by the properties."""
    body = properties_body(props, context) if props is not NO_PROPERTIES else b""
    return encode_vbi(len(body)) + body


def _decode_value(kind: Kind, buf: bytes | memoryview, pos: int, end: int) -> tuple[Any, int]:
    if kind is Kind.BYTE:
        if pos + 1 > end:
            raise MalformedPacket("property value runs past the end")
        return buf[pos], pos + 1
    if kind is Kind.U16:
        if pos + 2 > end:
            raise MalformedPacket("property value runs past the end")
        return (buf[pos] << 8) | buf[pos + 1], pos + 2
    if kind is Kind.U32:
        if pos + 4 > end:
            raise MalformedPacket("property value runs past the end")
        return int.from_bytes(buf[pos:pos + 4], "big"), pos + 4
    if kind is Kind.VBI:
        return decode_vbi(buf, pos, end)
    if kind is Kind.STR:
        return decode_str(buf, pos, end)
    if kind is Kind.BIN:
        return decode_bin(buf, pos, end)
    key, pos = decode_str(buf, pos, end)
    val, pos = decode_str(buf, pos, end)
    return (key, val), pos


def _check_value(spec: PropertySpec, value: Any) -> None:
    if spec.field in _BOOLEAN_BYTES and value not in (0, 1):
        raise ProtocolError(f"{spec.field} must be 0 or 1")
    if spec.field in _NON_ZERO and value == 0:
        raise ProtocolError(f"{spec.field} must not be 0")


def decode_properties(buf: bytes | memoryview, pos: int, end: int,
                      context: int) -> tuple[Properties, int]:
    """Read Property Length and the properties that follow, for ``context``.

    ``context`` is the packet type number, or :data:`WILL` for the Will
    Properties of a CONNECT. Returns the properties and the position after them.
    """
    length, pos = decode_vbi(buf, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("properties run past the end of the packet")
    if length == 0:
        return NO_PROPERTIES, pos
    found: dict[str, Any] = {}
    while pos < stop:
        ident, pos = decode_vbi(buf, pos, stop)  # identifiers are VBIs (2.2.2.2)
        spec = _BY_ID.get(ident)
        if spec is None or context not in spec.packets:
            raise MalformedPacket(f"property 0x{ident:02x} is not valid here")
        value, pos = _decode_value(spec.kind, buf, pos, stop)
        _check_value(spec, value)
        if spec.field in _TUPLE_FIELDS:
            if spec.field in found and context not in spec.repeatable_in:
                raise ProtocolError(f"{spec.field} appears more than once")
            found.setdefault(spec.field, []).append(value)
        elif spec.field in found:
            raise ProtocolError(f"{spec.field} appears more than once")
        else:
            found[spec.field] = value
    for name in _TUPLE_FIELDS & found.keys():
        found[name] = tuple(found[name])
    if "authentication_data" in found and "authentication_method" not in found:
        raise ProtocolError("authentication data without a method")  # 3.1.2.11.10
    return Properties(**found), pos


# --- as a map of plain values (between nodes) --------------------------------

_FIELD_NAMES = frozenset(f.name for f in fields(Properties))


class PropertiesMap:
    """The properties of a message as a map of plain values, and back.

    How MQTT 5.0 properties ride with a publication from one node to another:
    the server gives :data:`PROPERTIES_MAP` to the Redis store and bus as
    their meta codec (``tidings.redis_wire.MetaCodec``), so neither imports
    MQTT. The map holds the present properties only, field name -> value,
    tuples as lists (user properties as ``[name, value]`` pairs).
    """

    __slots__ = ()

    def encode(self, meta: Any) -> dict[str, Any] | None:
        """``meta`` as a map; None unless it is :class:`Properties` with one present."""
        if not isinstance(meta, Properties) or not meta:
            return None
        out: dict[str, Any] = {}
        for f in fields(meta):
            value = getattr(meta, f.name)
            if value is None or value == ():
                continue
            if f.name == "user_properties":
                value = [list(pair) for pair in value]
            elif f.name in _TUPLE_FIELDS:
                value = list(value)
            out[f.name] = value
        return out

    def decode(self, data: dict[str, Any]) -> Properties:
        """The properties in ``data``. A name this node does not know (a newer
        node's property) is ignored; a value of the wrong shape raises
        ``TypeError`` or ``ValueError``."""
        kw: dict[str, Any] = {}
        for name, value in data.items():
            if name not in _FIELD_NAMES:
                continue
            if name == "user_properties":
                value = tuple((str(k), str(v)) for k, v in value)
            elif name in _TUPLE_FIELDS:
                value = tuple(value)
            kw[name] = value
        return Properties(**kw)


PROPERTIES_MAP = PropertiesMap()
