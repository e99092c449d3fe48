"""Bytes <-> packets for MQTT 3.1.1 and 5.0, sans I/O.

Three entry points:

- :func:`encode` ``(packet, version) -> bytes``: exact per the spec, the
  shortest Remaining Length [MQTT-1.5.5-1] and the short acknowledgement
  forms (5.0 sections 3.4.2.1, 3.14.2.1, 3.15.2.1).
- :class:`Decoder`: a streaming parser. ``receive_data(chunk)`` buffers
  bytes as they arrive, ``next_packet()`` (or iterating the decoder) returns
  whole packets. The maximum packet size is checked as soon as the fixed
  header is read, so a peer cannot make it buffer more than that.
- :class:`PublishTemplate`: one application message, encoded once and
  rendered for each subscriber by patching what differs (packet id, DUP,
  RETAIN, QoS, 5.0 subscription identifiers and topic alias).

Every problem with the peer's bytes raises an :class:`~.errors.MQTTError`
subclass carrying the 5.0 reason code to answer with; nothing else escapes
the decoder. Problems with what *we* ask to encode (a wildcard in a PUBLISH
topic, a packet id of 0, a string over 65,535 bytes) raise ``ValueError``:
those are bugs on our side, never the peer's.

Requirement ids are quoted beside the code that implements them; an id with
"3.1.1" is from MQTT 3.1.1, the others from 5.0 unless they are the same.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from .errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    QoS,
    RetainHandling,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Version,
    Will,
)
from .properties import (
    NO_PROPERTIES,
    VBI_MAX,
    WILL,
    Properties,
    decode_bin,
    decode_properties,
    decode_str,
    encode_bin,
    encode_properties,
    encode_str,
    encode_vbi,
    properties_body,
)
from .reason_codes import (
    VALID_REASON_CODES,
    from_v311_connack,
    from_v311_suback,
    to_v311_connack,
    to_v311_suback,
)

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "Decoder",
    "PublishTemplate",
    "decode",
    "encode",
    "encode_vbi",
    "packet_size",
]

# The largest packet the format can express: 1 byte of type and flags, a
# 4-byte Remaining Length, and 268,435,455 bytes (section 2.1.4).
DEFAULT_MAX_PACKET_SIZE = 1 + 4 + VBI_MAX

_U16 = struct.Struct(">H")
_PUBREL, _SUBSCRIBE, _UNSUBSCRIBE = 6, 8, 10
_PROTOCOL_NAME = "MQTT"
_QOS = tuple(QoS)  # index -> member, cheaper than QoS(n) on the hot path


# --- fixed header --------------------------------------------------------------

def _check_fixed_header(first: int, version: Version | None) -> None:
    """Reject a first byte the spec forbids, before any body is buffered.

    [MQTT-2.2.2-1] (3.1.1) / [MQTT-2.1.3-1]: reserved flag bits must have the
    value listed in table 2-2; otherwise the receiver closes [MQTT-2.2.2-2].
    """
    ptype, flags = first >> 4, first & 0x0F
    if ptype == 0 or (ptype == PacketType.AUTH and version == Version.V311):
        raise MalformedPacket(f"reserved packet type {ptype}")
    if version is None and ptype != PacketType.CONNECT:
        # [MQTT-3.1.0-1] the first packet from the client must be CONNECT.
        raise ProtocolError("the first packet must be CONNECT", packet_type=ptype)
    if ptype == PacketType.PUBLISH:
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3", packet_type=ptype)  # [MQTT-3.3.1-4]
        if qos == 0 and flags & 0x08:
            raise MalformedPacket("DUP set on QoS 0", packet_type=ptype)  # [MQTT-3.3.1-2]
        return
    expected = 0x02 if ptype in (_PUBREL, _SUBSCRIBE, _UNSUBSCRIBE) else 0x00
    if flags != expected:
        # [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1] and 0 for the rest.
        raise MalformedPacket(f"reserved flags 0x{flags:x} for packet type {ptype}",
                              packet_type=ptype)


def packet_size(remaining_length: int) -> int:
    """The whole packet's size for a Remaining Length (the unit of Maximum Packet Size)."""
    return 1 + len(encode_vbi(remaining_length)) + remaining_length


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_vbi(len(body)) + body


# --- decoding: one function per packet type --------------------------------------
# Each takes (flags, body, version) with the body exactly Remaining Length long,
# and must consume all of it: bytes left over are a Malformed Packet.

def _u16(body: bytes, pos: int) -> int:
    if pos + 2 > len(body):
        raise MalformedPacket("two byte integer runs past the end")
    return int((body[pos] << 8) | body[pos + 1])


def _byte(body: bytes, pos: int) -> int:
    if pos >= len(body):
        raise MalformedPacket("byte runs past the end")
    return body[pos]


def _packet_id(body: bytes, pos: int) -> int:
    pid = _u16(body, pos)
    if pid == 0:
        raise ProtocolError("packet identifier 0")  # [MQTT-2.3.1-1] / [MQTT-2.2.1-3]
    return pid


def _end(body: bytes, pos: int) -> None:
    if pos != len(body):
        raise MalformedPacket("bytes left over after the packet's last field")


def _reason(ptype: int, code: int) -> int:
    if code not in VALID_REASON_CODES[ptype]:
        raise MalformedPacket(f"reason code 0x{code:02x} is not valid for packet type {ptype}")
    return code


def _check_topic_name(topic: str, what: str) -> None:
    # [MQTT-3.3.2-2] no wildcards in a Topic Name; [MQTT-4.7.3-1] not empty.
    if "+" in topic or "#" in topic:
        raise MalformedPacket(f"wildcard in {what}")


def _decode_connect(flags: int, body: bytes, version: Version | None) -> Connect:
    name, pos = decode_str(body, 0, len(body))
    level = _byte(body, pos)
    pos += 1
    if name != _PROTOCOL_NAME or level not in (4, 5):
        # [MQTT-3.1.2-1] a wrong name; [MQTT-3.1.2-2] an unsupported level
        # (e.g. "MQIsdp" level 3, MQTT 3.1).
        raise UnsupportedProtocolVersion(f"protocol {name!r} level {level}", level=level)
    try:
        return _decode_connect_rest(Version(level), body, pos)
    except MQTTError as exc:
        exc.level = level  # the CONNACK that answers must be in this version
        raise


def _decode_connect_rest(v: Version, body: bytes, pos: int) -> Connect:
    end = len(body)
    cflags = _byte(body, pos)
    keep_alive = _u16(body, pos + 1)
    pos += 3
    if cflags & 0x01:
        raise MalformedPacket("reserved CONNECT flag set")  # [MQTT-3.1.2-3]
    will_flag, will_qos, will_retain = cflags & 0x04, (cflags >> 3) & 0x03, bool(cflags & 0x20)
    has_password, has_username = cflags & 0x40, cflags & 0x80
    if will_qos == 3:
        raise MalformedPacket("will QoS 3")  # [MQTT-3.1.2-14] / [MQTT-3.1.2-12]
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain without a will")  # [MQTT-3.1.2-11/13/15]
    if v == Version.V311 and has_password and not has_username:
        raise MalformedPacket("password without user name")  # 3.1.1 [MQTT-3.1.2-22]
    props = NO_PROPERTIES
    if v == Version.V5:
        props, pos = decode_properties(body, pos, end, PacketType.CONNECT)
    client_id, pos = decode_str(body, pos, end)  # [MQTT-3.1.3-3]
    will = None
    if will_flag:
        will_props = NO_PROPERTIES
        if v == Version.V5:
            will_props, pos = decode_properties(body, pos, end, WILL)
        topic, pos = decode_str(body, pos, end)
        if not topic:
            raise MalformedPacket("empty will topic")  # [MQTT-4.7.3-1]
        _check_topic_name(topic, "will topic")  # [MQTT-3.1.2-9]
        payload, pos = decode_bin(body, pos, end)
        will = Will(topic, payload, _QOS[will_qos], will_retain, will_props)
    username = password = None
    if has_username:
        username, pos = decode_str(body, pos, end)
    if has_password:
        password, pos = decode_bin(body, pos, end)
    _end(body, pos)
    return Connect(client_id, v, bool(cflags & 0x02), keep_alive, username, password, will, props)


def _decode_connack(flags: int, body: bytes, version: Version | None) -> Connack:
    ack = _byte(body, 0)
    if ack & 0xFE:
        raise MalformedPacket("reserved CONNACK flags set")  # [MQTT-3.2.2-1]
    code = _byte(body, 1)
    props, pos = NO_PROPERTIES, 2
    if version == Version.V5:
        reason = _reason(PacketType.CONNACK, code)
        props, pos = decode_properties(body, pos, len(body), PacketType.CONNACK)
    else:
        mapped = from_v311_connack(code)
        if mapped is None:
            raise MalformedPacket(f"reserved CONNACK return code {code}")
        reason = mapped
    _end(body, pos)
    if ack and reason >= 0x80:
        raise ProtocolError("session present on a refusal")  # [MQTT-3.2.2-4] / [MQTT-3.2.2-6]
    return Connack(bool(ack), reason, props)


def _decode_publish(flags: int, body: bytes, version: Version | None) -> Publish:
    qos = (flags >> 1) & 0x03
    end = len(body)
    topic, pos = decode_str(body, 0, end)
    _check_topic_name(topic, "PUBLISH topic")  # [MQTT-3.3.2-2]
    packet_id = None
    if qos:
        packet_id = _packet_id(body, pos)
        pos += 2
    props = NO_PROPERTIES
    if version == Version.V5:
        props, pos = decode_properties(body, pos, end, PacketType.PUBLISH)
        if not topic and props.topic_alias is None:
            raise ProtocolError("empty topic and no topic alias")  # 5.0 section 3.3.2.1
    elif not topic:
        raise MalformedPacket("empty PUBLISH topic")  # 3.1.1 [MQTT-4.7.3-1]
    return Publish(topic, body[pos:], _QOS[qos], bool(flags & 0x01), bool(flags & 0x08),
                   packet_id, props)


def _decode_ack(cls: Any) -> Callable[[int, bytes, Version | None], Any]:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then (5.0) reason and properties.

    5.0 sections 3.4.2.1-2: with Remaining Length 2 the reason is 0x00; under
    4 there is no Property Length and no properties.
    """
    ptype = int(cls.packet_type)

    def decode_ack(flags: int, body: bytes, version: Version | None) -> Any:
        packet_id = _packet_id(body, 0)
        if version != Version.V5 or len(body) == 2:
            _end(body, 2)
            return cls(packet_id)
        reason = _reason(ptype, body[2])
        props, pos = NO_PROPERTIES, 3
        if len(body) > 3:
            props, pos = decode_properties(body, 3, len(body), ptype)
        _end(body, pos)
        return cls(packet_id, reason, props)

    return decode_ack


def _decode_subscribe(flags: int, body: bytes, version: Version | None) -> Subscribe:
    end = len(body)
    packet_id = _packet_id(body, 0)
    props, pos = NO_PROPERTIES, 2
    if version == Version.V5:
        props, pos = decode_properties(body, pos, end, PacketType.SUBSCRIBE)
    subs = []
    while pos < end:
        topic_filter, pos = decode_str(body, pos, end)
        subs.append(_subscription(topic_filter, _byte(body, pos), version))
        pos += 1
    if not subs:
        raise ProtocolError("SUBSCRIBE without topic filters")  # [MQTT-3.8.3-3] / [MQTT-3.8.3-2]
    return Subscribe(packet_id, tuple(subs), props)


def _subscription(topic_filter: str, options: int, version: Version | None) -> Subscription:
    qos = options & 0x03
    if qos == 3:
        raise MalformedPacket("subscription QoS 3")  # 3.1.1 [MQTT-3-8.3-4]; 5.0 3.8.3.1
    if version != Version.V5:
        if options & 0xFC:
            raise MalformedPacket("reserved subscription bits set")  # 3.1.1 [MQTT-3-8.3-4]
        return Subscription(topic_filter, _QOS[qos])
    if options & 0xC0:
        raise MalformedPacket("reserved subscription option bits set")  # [MQTT-3.8.3-5]
    handling = (options >> 4) & 0x03
    if handling == 3:
        raise ProtocolError("retain handling 3")  # 5.0 section 3.8.3.1
    no_local = bool(options & 0x04)
    if no_local and topic_filter.startswith("$share/"):
        raise ProtocolError("no local on a shared subscription")  # [MQTT-3.8.3-4]
    return Subscription(topic_filter, _QOS[qos], no_local, bool(options & 0x08),
                        RetainHandling(handling))


def _decode_suback(flags: int, body: bytes, version: Version | None) -> SubAck:
    end = len(body)
    packet_id = _packet_id(body, 0)
    props, pos = NO_PROPERTIES, 2
    if version == Version.V5:
        props, pos = decode_properties(body, pos, end, PacketType.SUBACK)
        codes = [_reason(PacketType.SUBACK, c) for c in body[pos:]]
    else:
        codes = []
        for c in body[pos:]:
            mapped = from_v311_suback(c)
            if mapped is None:
                raise MalformedPacket(f"reserved SUBACK code 0x{c:02x}")  # 3.1.1 [MQTT-3.9.3-2]
            codes.append(int(mapped))
    if not codes:
        raise ProtocolError("SUBACK without reason codes")  # [MQTT-3.9.3-1]
    return SubAck(packet_id, tuple(codes), props)


def _decode_unsubscribe(flags: int, body: bytes, version: Version | None) -> Unsubscribe:
    end = len(body)
    packet_id = _packet_id(body, 0)
    props, pos = NO_PROPERTIES, 2
    if version == Version.V5:
        props, pos = decode_properties(body, pos, end, PacketType.UNSUBSCRIBE)
    filters = []
    while pos < end:
        topic_filter, pos = decode_str(body, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, tuple(filters), props)


def _decode_unsuback(flags: int, body: bytes, version: Version | None) -> UnsubAck:
    packet_id = _packet_id(body, 0)
    if version != Version.V5:
        _end(body, 2)
        return UnsubAck(packet_id)
    props, pos = decode_properties(body, 2, len(body), PacketType.UNSUBACK)
    codes = tuple(_reason(PacketType.UNSUBACK, c) for c in body[pos:])
    if not codes:
        raise ProtocolError("UNSUBACK without reason codes")  # 5.0 section 3.11.3
    return UnsubAck(packet_id, codes, props)


def _decode_empty(cls: Any) -> Callable[[int, bytes, Version | None], Any]:
    def decode_empty(flags: int, body: bytes, version: Version | None) -> Any:
        _end(body, 0)  # PINGREQ, PINGRESP: Remaining Length 0 (sections 3.12, 3.13)
        return cls()

    return decode_empty


def _decode_reasoned(cls: Any) -> Callable[[int, bytes, Version | None], Any]:
    """DISCONNECT and AUTH: empty means reason 0; under 2 bytes, no properties.

    5.0 sections 3.14.2.1-2 and 3.15.2.1-2; a 3.1.1 DISCONNECT is always empty.
    """
    ptype = int(cls.packet_type)

    def decode_reasoned(flags: int, body: bytes, version: Version | None) -> Any:
        if version != Version.V5 or not body:
            _end(body, 0)
            return cls()
        reason = _reason(ptype, body[0])
        props, pos = NO_PROPERTIES, 1
        if len(body) > 1:
            props, pos = decode_properties(body, 1, len(body), ptype)
        _end(body, pos)
        return cls(reason, props)

    return decode_reasoned


_DECODERS: dict[int, Callable[[int, bytes, Version | None], Any]] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBLISH: _decode_publish,
    PacketType.PUBACK: _decode_ack(PubAck),
    PacketType.PUBREC: _decode_ack(PubRec),
    PacketType.PUBREL: _decode_ack(PubRel),
    PacketType.PUBCOMP: _decode_ack(PubComp),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: _decode_unsuback,
    PacketType.PINGREQ: _decode_empty(PingReq),
    PacketType.PINGRESP: _decode_empty(PingResp),
    PacketType.DISCONNECT: _decode_reasoned(Disconnect),
    PacketType.AUTH: _decode_reasoned(Auth),
}


def _decode_body(first: int, body: bytes, version: Version | None) -> Packet:
    ptype = first >> 4
    try:
        packet: Packet = _DECODERS[ptype](first & 0x0F, body, version)
    except MQTTError as exc:
        if exc.packet_type is None:
            exc.packet_type = ptype
        raise
    return packet


# --- streaming decoder ---------------------------------------------------------------

class Decoder:
    """Turns a byte stream into packets; bytes may arrive in any chunking.

    ``version`` is the protocol version of the stream. Left as None (a
    server before CONNECT), only a CONNECT can be read [MQTT-3.1.0-1], and
    the CONNECT's version becomes the stream's.

    ``max_packet_size`` bounds a whole packet (fixed header included, as 5.0
    section 3.1.2.11.4 counts it). A larger Remaining Length raises
    :class:`~.errors.PacketTooLarge` as soon as the fixed header is complete,
    so at most one read chunk beyond the limit is ever held.

    After an error the decoder is dead: every later call raises the same
    error again. The connection must be closed.
    """

    __slots__ = ("_buf", "_error", "max_packet_size", "version")

    def __init__(self, *, version: Version | None = None,
                 max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.version = version
        self.max_packet_size = max_packet_size
        self._buf = bytearray()
        self._error: MQTTError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a packet."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; call :meth:`next_packet` (or iterate) to read packets."""
        if self._error is not None:
            raise self._error
        self._buf += data

    def __iter__(self) -> Iterator[Packet]:
        """Every complete packet buffered so far, in order."""
        while (packet := self.next_packet()) is not None:
            yield packet

    def peek_type(self) -> int | None:
        """The packet type of the next buffered packet, or None if no byte is buffered."""
        return self._buf[0] >> 4 if self._buf else None

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None until more data is received."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_packet()
        except MQTTError as exc:
            self._error = exc
            self._buf = bytearray()
            raise

    def _next_packet(self) -> Packet | None:
        buf = self._buf
        if not buf:
            return None
        first = buf[0]
        _check_fixed_header(first, self.version)
        header = self._remaining_length()
        if header is None:
            return None
        remaining, header_len = header
        if header_len + remaining > self.max_packet_size:
            raise PacketTooLarge(f"packet of {header_len + remaining} bytes is over "
                                 f"{self.max_packet_size}", packet_type=first >> 4)
        end = header_len + remaining
        if len(buf) < end:
            return None
        body = bytes(buf[header_len:end])
        del buf[:end]
        packet = _decode_body(first, body, self.version)
        if isinstance(packet, Connect) and self.version is None:
            self.version = packet.version
        return packet

    def _remaining_length(self) -> tuple[int, int] | None:
        """(Remaining Length, fixed header size), None if incomplete (section 2.1.4).

        Fails on the fourth byte if it still has the continuation bit, without
        waiting for a fifth.
        """
        buf = self._buf
        value = 0
        for i in range(1, 5):
            if i >= len(buf):
                return None
            byte = buf[i]
            value |= (byte & 0x7F) << (7 * (i - 1))
            if not byte & 0x80:
                if byte == 0 and i > 1:
                    raise MalformedPacket("remaining length not in its shortest form",
                                          packet_type=buf[0] >> 4)  # [MQTT-1.5.5-1]
                return value, i + 1
        raise MalformedPacket("remaining length longer than four bytes", packet_type=buf[0] >> 4)


def decode(data: bytes, version: Version | None = None, *,
           max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> Packet:
    """Decode exactly one whole packet from ``data`` (a convenience for tests and tools).

    Truncated data or bytes after the packet are a Malformed Packet.
    """
    decoder = Decoder(version=version, max_packet_size=max_packet_size)
    decoder.receive_data(data)
    packet = decoder.next_packet()
    if packet is None:
        raise MalformedPacket("truncated packet")
    if decoder.buffered:
        raise MalformedPacket("bytes after the packet")
    return packet


# --- encoding ---------------------------------------------------------------------------

def _props(props: Properties, version: Version, context: int) -> bytes:
    return encode_properties(props, context) if version == Version.V5 else b""


def _check_packet_id(packet_id: int | None) -> int:
    if packet_id is None or not 1 <= packet_id <= 0xFFFF:
        raise ValueError(f"packet identifier must be 1..65535, not {packet_id}")
    return packet_id


def _encode_connect(p: Connect, v: Version) -> bytes:
    if p.version != v:
        raise ValueError(f"CONNECT of version {p.version!r} encoded as {v!r}")
    if v == Version.V311 and p.password is not None and p.username is None:
        raise ValueError("3.1.1 allows a password only with a user name")
    will = p.will
    flags = (0x02 if p.clean_start else 0) | (0x80 if p.username is not None else 0) \
        | (0x40 if p.password is not None else 0)
    if will is not None:
        flags |= 0x04 | (int(will.qos) << 3) | (0x20 if will.retain else 0)
    parts = [encode_str(_PROTOCOL_NAME), bytes((int(v), flags)), _U16.pack(p.keep_alive),
             _props(p.properties, v, PacketType.CONNECT), encode_str(p.client_id)]
    if will is not None:
        _check_topic(will.topic, v, alias=False)
        parts += [_props(will.properties, v, WILL), encode_str(will.topic),
                  encode_bin(will.payload)]
    if p.username is not None:
        parts.append(encode_str(p.username))
    if p.password is not None:
        parts.append(encode_bin(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: Connack, v: Version) -> bytes:
    if v == Version.V5:
        body = bytes((int(p.session_present), _check_reason(PacketType.CONNACK, p.reason_code)))
        return _frame(0x20, body + encode_properties(p.properties, PacketType.CONNACK))
    code = to_v311_connack(p.reason_code)
    return _frame(0x20, bytes((int(p.session_present and code == 0), code)))


def _check_reason(ptype: int, code: int) -> int:
    if code not in VALID_REASON_CODES[ptype]:
        raise ValueError(f"reason code 0x{code:02x} is not valid for packet type {ptype}")
    return code


def _check_topic(topic: str, v: Version, *, alias: bool) -> None:
    if "+" in topic or "#" in topic:
        raise ValueError("wildcard in a topic name")  # [MQTT-3.3.2-2]
    if not topic and not (alias and v == Version.V5):
        raise ValueError("empty topic name")  # [MQTT-4.7.3-1]


def _encode_publish(p: Publish, v: Version) -> bytes:
    _check_topic(p.topic, v, alias=p.properties.topic_alias is not None)
    if p.qos not in (0, 1, 2):
        raise ValueError(f"QoS {p.qos}")
    if p.qos == 0 and (p.dup or p.packet_id is not None):
        raise ValueError("QoS 0 PUBLISH with DUP or a packet id")  # [MQTT-3.3.1-2], [MQTT-2.2.1-2]
    first = 0x30 | (0x08 if p.dup else 0) | (int(p.qos) << 1) | (0x01 if p.retain else 0)
    pid = _U16.pack(_check_packet_id(p.packet_id)) if p.qos else b""
    body = b"".join((encode_str(p.topic), pid, _props(p.properties, v, PacketType.PUBLISH),
                     p.payload))
    return _frame(first, body)


def _encode_ack(p: PubAck | PubRec | PubRel | PubComp, v: Version) -> bytes:
    ptype = int(p.packet_type)
    first = (ptype << 4) | (0x02 if ptype == _PUBREL else 0)
    pid = _U16.pack(_check_packet_id(p.packet_id))
    if v != Version.V5:
        return _frame(first, pid)
    _check_reason(ptype, p.reason_code)
    if not p.properties:
        if p.reason_code == 0:
            return _frame(first, pid)  # 5.0 section 3.4.2.1: the short form
        return _frame(first, pid + bytes((p.reason_code,)))
    return _frame(first, pid + bytes((p.reason_code,)) + encode_properties(p.properties, ptype))


def _encode_subscribe(p: Subscribe, v: Version) -> bytes:
    if not p.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one subscription")
    parts = [_U16.pack(_check_packet_id(p.packet_id)), _props(p.properties, v, _SUBSCRIBE)]
    for s in p.subscriptions:
        options = int(s.qos)
        if v == Version.V5:
            options |= (0x04 if s.no_local else 0) | (0x08 if s.retain_as_published else 0) \
                | (int(s.retain_handling) << 4)
        parts += [encode_str(s.topic_filter), bytes((options,))]
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, v: Version) -> bytes:
    if not p.reason_codes:
        raise ValueError("SUBACK needs at least one reason code")
    pid = _U16.pack(_check_packet_id(p.packet_id))
    if v == Version.V5:
        codes = bytes(_check_reason(PacketType.SUBACK, c) for c in p.reason_codes)
        return _frame(0x90, pid + encode_properties(p.properties, PacketType.SUBACK) + codes)
    return _frame(0x90, pid + bytes(to_v311_suback(c) for c in p.reason_codes))


def _encode_unsubscribe(p: Unsubscribe, v: Version) -> bytes:
    if not p.topic_filters:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    parts = [_U16.pack(_check_packet_id(p.packet_id)), _props(p.properties, v, _UNSUBSCRIBE)]
    parts += [encode_str(f) for f in p.topic_filters]
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, v: Version) -> bytes:
    pid = _U16.pack(_check_packet_id(p.packet_id))
    if v != Version.V5:
        return _frame(0xB0, pid)
    if not p.reason_codes:
        raise ValueError("a 5.0 UNSUBACK needs one reason code per topic filter")
    codes = bytes(_check_reason(PacketType.UNSUBACK, c) for c in p.reason_codes)
    return _frame(0xB0, pid + encode_properties(p.properties, PacketType.UNSUBACK) + codes)


def _encode_reasoned(p: Disconnect | Auth, v: Version) -> bytes:
    ptype = int(p.packet_type)
    first = ptype << 4
    if v != Version.V5:
        if ptype == PacketType.AUTH:
            raise ValueError("AUTH does not exist in 3.1.1")
        return _frame(first, b"")
    _check_reason(ptype, p.reason_code)
    if not p.properties:
        if p.reason_code == 0:
            return _frame(first, b"")  # sections 3.14.2.1, 3.15.2.1: Remaining Length 0
        if ptype == PacketType.DISCONNECT:
            return _frame(first, bytes((p.reason_code,)))  # 3.14.2.2.1: no Property Length
    return _frame(first, bytes((p.reason_code,)) + encode_properties(p.properties, ptype))


_PINGREQ = b"\xc0\x00"
_PINGRESP = b"\xd0\x00"

_ENCODERS: dict[type, Callable[[Any, Version], bytes]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    PubAck: _encode_ack,
    PubRec: _encode_ack,
    PubRel: _encode_ack,
    PubComp: _encode_ack,
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: lambda p, v: _PINGREQ,
    PingResp: lambda p, v: _PINGRESP,
    Disconnect: _encode_reasoned,
    Auth: _encode_reasoned,
}


def encode(packet: Packet, version: Version) -> bytes:
    """The wire bytes of ``packet`` in protocol ``version``.

    5.0-only content (properties, reason codes other than the 3.1.1 CONNACK
    and SUBACK ones) is left out of a 3.1.1 encoding; a CONNACK or SUBACK
    reason code is mapped to its 3.1.1 equivalent. Raises ValueError for a
    packet that may not be sent as it is.
    """
    return _ENCODERS[type(packet)](packet, Version(version))


# --- encode once, send to many ------------------------------------------------------------

_RENDER_VARIANTS = 8  # encodings one PublishTemplate keeps (flags, alias)


class PublishTemplate:
    """One application message, encoded once, rendered per subscriber.

    The hub builds one template per message; an edge calls :meth:`render`
    for each subscriber with what differs between them. The topic, the
    properties and the payload are encoded once per protocol version; a QoS 0
    rendering with no per-subscriber property is the same ``bytes`` object
    every time, and a QoS 1/2 rendering only joins a cached header, the
    packet id and the cached rest.

    ``properties`` are the message's own (expiry, content type, user
    properties, ...); Topic Alias and Subscription Identifiers belong to one
    hop and are given to :meth:`render` instead. Message Expiry Interval is
    sent as given: the broker builds a new template when it must lower it
    (5.0 section 3.3.2.3.3).
    """

    __slots__ = ("_cache", "_numbered", "_props_high", "_props_low", "_topic_bytes", "payload",
                 "properties", "topic")

    def __init__(self, topic: str, payload: bytes = b"",
                 properties: Properties = NO_PROPERTIES) -> None:
        if properties.topic_alias is not None or properties.subscription_identifiers:
            raise ValueError("topic alias and subscription identifiers are per send")
        _check_topic(topic, Version.V311, alias=False)
        self.topic = topic
        self.payload = bytes(payload)
        self.properties = properties
        self._topic_bytes = encode_str(topic)
        # The encoder writes properties in identifier order. The per-hop ones
        # (Subscription Identifier 0x0B, Topic Alias 0x23) go between the
        # message's properties below 0x0B and its User Properties (0x26), so
        # a rendering is byte for byte what encode() gives.
        low = replace(properties, user_properties=())
        self._props_low = properties_body(low, PacketType.PUBLISH)
        self._props_high = properties_body(Properties(user_properties=properties.user_properties))
        # (version, qos, retain, dup, topic alias, topic sent) -> (bytes before the
        # packet id, bytes after it)
        self._cache: dict[tuple[int, int, bool, bool, int | None, bool],
                          tuple[bytes, bytes]] = {}
        # (version, qos, retain) -> (head, tail with the payload): see numbered()
        self._numbered: dict[tuple[int, int, bool], tuple[bytes, bytes]] | None = None

    @classmethod
    def from_publish(cls, publish: Publish) -> PublishTemplate:
        """A template for what ``publish`` carries, minus its per-hop properties."""
        props = publish.properties
        if props.topic_alias is not None or props.subscription_identifiers:
            props = replace(props, topic_alias=None, subscription_identifiers=())
        return cls(publish.topic, publish.payload, props)

    def to_publish(self, *, qos: int = 0, packet_id: int | None = None, retain: bool = False,
                   dup: bool = False, subscription_ids: Sequence[int] = ()) -> Publish:
        """The :class:`Publish` that :meth:`render` with the same arguments encodes."""
        props = self.properties
        if subscription_ids:
            props = replace(props, subscription_identifiers=tuple(subscription_ids))
        return Publish(self.topic, self.payload, QoS(qos), retain, dup, packet_id, props)

    def _parts(self, version: Version, qos: int, retain: bool, dup: bool,
               extra_props: bytes, topic: bytes) -> tuple[bytes, bytes]:
        first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
        if version == Version.V5:
            props = self._props_low + extra_props + self._props_high
            rest = encode_vbi(len(props)) + props
        else:
            rest = b""
        remaining = len(topic) + (2 if qos else 0) + len(rest) + len(self.payload)
        return bytes((first,)) + encode_vbi(remaining) + topic, rest

    def size(self, version: Version, *, qos: int = 0, subscription_ids: Sequence[int] = (),
             topic_alias: int | None = None, send_topic: bool = True) -> int:
        """The size in bytes of what :meth:`render` returns for these arguments."""
        extra, topic = self._hop(version, subscription_ids, topic_alias, send_topic)
        head, rest = self._parts(version, qos, False, False, extra, topic)
        return len(head) + (2 if qos else 0) + len(rest) + len(self.payload)

    def _hop(self, version: Version, subscription_ids: Sequence[int], topic_alias: int | None,
             send_topic: bool) -> tuple[bytes, bytes]:
        if version != Version.V5:
            return b"", self._topic_bytes
        extra = b"".join(b"\x0b" + encode_vbi(s) for s in subscription_ids)
        if topic_alias is not None:
            extra += b"\x23" + _U16.pack(topic_alias)  # Topic Alias, section 3.3.2.3.4
        topic = self._topic_bytes if send_topic or topic_alias is None else b"\x00\x00"
        return extra, topic

    def numbered(self, version: Version, qos: int, retain: bool) -> tuple[bytes, bytes]:
        """The cached bytes before and after the packet id of a QoS 1/2 rendering
        with no per-hop property (no Topic Alias, no Subscription Identifier):
        ``head + packet_id (2 bytes) + tail`` is what :meth:`render` returns for
        them, so a delivery only joins three ``bytes`` (the QoS 1/2 fast path)."""
        key = (int(version), qos, retain)
        numbered = self._numbered
        if numbered is None:
            numbered = self._numbered = {}
        cached = numbered.get(key)
        if cached is None:
            head, rest = self._parts(version, qos, retain, False, b"", self._topic_bytes)
            cached = numbered[key] = (head, rest + self.payload)
        return cached

    def render(self, version: Version, *, qos: int = 0, packet_id: int | None = None,
               retain: bool = False, dup: bool = False, subscription_ids: Sequence[int] = (),
               topic_alias: int | None = None, send_topic: bool = True) -> bytes:
        """The PUBLISH bytes for one subscriber.

        ``packet_id`` is required for QoS 1 and 2 and must be None for QoS 0.
        ``subscription_ids`` and ``topic_alias`` are 5.0 only (ignored for
        3.1.1); with a ``topic_alias`` and ``send_topic=False`` the topic is
        sent empty, for an alias the receiver already knows (section 3.3.2.3.4).
        """
        if qos:
            if packet_id is None or not 1 <= packet_id <= 0xFFFF:
                raise ValueError(f"packet identifier must be 1..65535, not {packet_id}")
        elif packet_id is not None or dup:
            raise ValueError("QoS 0 PUBLISH with DUP or a packet id")  # [MQTT-3.3.1-2]
        if version != Version.V5:
            topic_alias = None
        if topic_alias is None:
            send_topic = True
        if version == Version.V5 and subscription_ids:
            extra, topic = self._hop(version, subscription_ids, topic_alias, send_topic)
            head, rest = self._parts(version, qos, retain, dup, extra, topic)
        else:
            # Subscribers that see the same alias for the topic (they were sent
            # the same topics in the same order) share one encoding too; a few
            # variants are kept, so a fan-out encodes a message a few times at most.
            key = (int(version), qos, retain, dup, topic_alias, send_topic)
            cached = self._cache.get(key)
            if cached is None:
                extra, topic = self._hop(Version(version), (), topic_alias, send_topic)
                cached = self._parts(Version(version), qos, retain, dup, extra, topic)
                if not qos:
                    cached = (cached[0] + cached[1] + self.payload, b"")
                if len(self._cache) < _RENDER_VARIANTS:
                    self._cache[key] = cached
            head, rest = cached
            if not qos:
                return head  # the same bytes for every QoS 0 subscriber
        pid = _U16.pack(packet_id) if packet_id is not None else b""
        return b"".join((head, pid, rest, self.payload))
