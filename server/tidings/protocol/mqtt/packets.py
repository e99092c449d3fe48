"""One frozen dataclass per MQTT control packet, shared by 3.1.1 and 5.0.

A packet is a value: the codec turns it into bytes for a given protocol
version and back. Fields that exist only in 5.0 (properties, most reason
codes, AUTH) keep their defaults when a 3.1.1 packet is decoded and are not
written when one is encoded. Reason codes are always 5.0 codes (see
:mod:`.reason_codes`); the codec maps them for 3.1.1 (CONNACK return codes,
SUBACK 0x80).

Packet identifiers are 1..65535 [MQTT-2.3.1-1]; a PUBLISH has one only for
QoS 1 and 2 [MQTT-2.3.1-5]. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .properties import NO_PROPERTIES, Properties

__all__ = [
    "NO_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "PingReq",
    "PingResp",
    "Properties",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "QoS",
    "RetainHandling",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Version",
    "Will",
]


class Version(enum.IntEnum):
    """The protocol level byte of CONNECT (3.1.1 section 3.1.2.2, 5.0 section 3.1.2.2)."""

    V311 = 4
    V5 = 5


class PacketType(enum.IntEnum):
    """The packet type in the high nibble of the first byte (section 2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # 5.0 only; reserved in 3.1.1


class QoS(enum.IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class RetainHandling(enum.IntEnum):
    """Subscription option bits 4-5 (5.0 section 3.8.3.1)."""

    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (section 3.1.2.5 and 3.1.3.2-3)."""

    topic: str
    payload: bytes = b""
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False
    properties: Properties = NO_PROPERTIES  # 5.0 Will Properties


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT. ``version`` is the protocol level it was (or is to be) sent with.

    ``clean_start`` is Clean Session in 3.1.1 and Clean Start in 5.0.
    """

    client_id: str = ""
    version: Version = Version.V311
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = field(default=None, repr=False)  # a token: never in logs
    will: Will | None = None
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNECT


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK. ``reason_code`` is a 5.0 code (mapped to a 3.1.1 return code on the wire)."""

    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.CONNACK


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH. In 5.0 ``topic`` may be empty when a Topic Alias property is set."""

    topic: str
    payload: bytes = b""
    qos: QoS = QoS.AT_MOST_ONCE
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBLISH


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBACK


@dataclass(frozen=True, slots=True)
class PubRec:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREC


@dataclass(frozen=True, slots=True)
class PubRel:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBREL


@dataclass(frozen=True, slots=True)
class PubComp:
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True)
class Subscription:
    """One Topic Filter and its options (5.0 section 3.8.3.1; 3.1.1 has QoS only)."""

    topic_filter: str
    qos: QoS = QoS.AT_MOST_ONCE
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBSCRIBE


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: one 5.0 reason code per subscription, in order [MQTT-3.9.3-1]."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.SUBACK


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBSCRIBE


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK. ``reason_codes`` is 5.0 only; 3.1.1 UNSUBACK has no payload."""

    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.UNSUBACK


@dataclass(frozen=True, slots=True)
class PingReq:
    packet_type = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    packet_type = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT. 3.1.1 has no reason code; 0 (Normal disconnection) is the default."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.DISCONNECT


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (5.0 only): enhanced authentication exchange (section 3.15)."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    packet_type = PacketType.AUTH


Packet = (Connect | Connack | Publish | PubAck | PubRec | PubRel | PubComp | Subscribe | SubAck
          | Unsubscribe | UnsubAck | PingReq | PingResp | Disconnect | Auth)
