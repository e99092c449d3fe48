"""MQTT 5.0 reason codes, the MQTT 3.1.1 return codes they map to, and which
codes each packet type may carry.

Packets in this package always hold 5.0 reason codes, whatever the protocol
version on the wire: the codec translates to and from the 3.1.1 CONNACK
return codes and SUBACK failure code, so the broker thinks in one vocabulary.

MQTT 5.0 section 2.4 (Reason Code), 3.2.2.2 (CONNACK), 3.4.2.1 (PUBACK),
3.5.2.1 (PUBREC), 3.6.2.1 (PUBREL), 3.7.2.1 (PUBCOMP), 3.9.3 (SUBACK),
3.11.3 (UNSUBACK), 3.14.2.1 (DISCONNECT), 3.15.2.1 (AUTH);
MQTT 3.1.1 section 3.2.2.3 (Connect Return code), 3.9.3 (SUBACK payload).
"""

from __future__ import annotations

import enum

__all__ = [
    "VALID_REASON_CODES",
    "ConnackReturnCode",
    "ReasonCode",
    "from_v311_connack",
    "from_v311_suback",
    "to_v311_connack",
    "to_v311_suback",
]


class ReasonCode(enum.IntEnum):
    """Every MQTT 5.0 reason code. Values under 0x80 mean success."""

    SUCCESS = 0x00  # also Normal disconnection, Granted QoS 0
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnackReturnCode(enum.IntEnum):
    """MQTT 3.1.1 CONNACK return codes (section 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USER_NAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


R = ReasonCode

# The reason codes each packet type may carry (5.0), keyed by packet type
# number (1 CONNECT .. 15 AUTH). A code outside its set is a Malformed Packet.
VALID_REASON_CODES: dict[int, frozenset[int]] = {
    2: frozenset({  # CONNACK, 3.2.2.2
        R.SUCCESS, R.UNSPECIFIED_ERROR, R.MALFORMED_PACKET, R.PROTOCOL_ERROR,
        R.IMPLEMENTATION_SPECIFIC_ERROR, R.UNSUPPORTED_PROTOCOL_VERSION,
        R.CLIENT_IDENTIFIER_NOT_VALID, R.BAD_USER_NAME_OR_PASSWORD, R.NOT_AUTHORIZED,
        R.SERVER_UNAVAILABLE, R.SERVER_BUSY, R.BANNED, R.BAD_AUTHENTICATION_METHOD,
        R.TOPIC_NAME_INVALID, R.PACKET_TOO_LARGE, R.QUOTA_EXCEEDED,
        R.PAYLOAD_FORMAT_INVALID, R.RETAIN_NOT_SUPPORTED, R.QOS_NOT_SUPPORTED,
        R.USE_ANOTHER_SERVER, R.SERVER_MOVED, R.CONNECTION_RATE_EXCEEDED,
    }),
    4: frozenset({  # PUBACK, 3.4.2.1
        R.SUCCESS, R.NO_MATCHING_SUBSCRIBERS, R.UNSPECIFIED_ERROR,
        R.IMPLEMENTATION_SPECIFIC_ERROR, R.NOT_AUTHORIZED, R.TOPIC_NAME_INVALID,
        R.PACKET_IDENTIFIER_IN_USE, R.QUOTA_EXCEEDED, R.PAYLOAD_FORMAT_INVALID,
    }),
    6: frozenset({R.SUCCESS, R.PACKET_IDENTIFIER_NOT_FOUND}),  # PUBREL, 3.6.2.1
    7: frozenset({R.SUCCESS, R.PACKET_IDENTIFIER_NOT_FOUND}),  # PUBCOMP, 3.7.2.1
    9: frozenset({  # SUBACK, 3.9.3
        R.SUCCESS, R.GRANTED_QOS_1, R.GRANTED_QOS_2, R.UNSPECIFIED_ERROR,
        R.IMPLEMENTATION_SPECIFIC_ERROR, R.NOT_AUTHORIZED, R.TOPIC_FILTER_INVALID,
        R.PACKET_IDENTIFIER_IN_USE, R.QUOTA_EXCEEDED, R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }),
    11: frozenset({  # UNSUBACK, 3.11.3
        R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED, R.UNSPECIFIED_ERROR,
        R.IMPLEMENTATION_SPECIFIC_ERROR, R.NOT_AUTHORIZED, R.TOPIC_FILTER_INVALID,
        R.PACKET_IDENTIFIER_IN_USE,
    }),
    14: frozenset({  # DISCONNECT, 3.14.2.1
        R.SUCCESS, R.DISCONNECT_WITH_WILL, R.UNSPECIFIED_ERROR, R.MALFORMED_PACKET,
        R.PROTOCOL_ERROR, R.IMPLEMENTATION_SPECIFIC_ERROR, R.NOT_AUTHORIZED, R.SERVER_BUSY,
        R.SERVER_SHUTTING_DOWN, R.KEEP_ALIVE_TIMEOUT, R.SESSION_TAKEN_OVER,
        R.TOPIC_FILTER_INVALID, R.TOPIC_NAME_INVALID, R.RECEIVE_MAXIMUM_EXCEEDED,
        R.TOPIC_ALIAS_INVALID, R.PACKET_TOO_LARGE, R.MESSAGE_RATE_TOO_HIGH, R.QUOTA_EXCEEDED,
        R.ADMINISTRATIVE_ACTION, R.PAYLOAD_FORMAT_INVALID, R.RETAIN_NOT_SUPPORTED,
        R.QOS_NOT_SUPPORTED, R.USE_ANOTHER_SERVER, R.SERVER_MOVED,
        R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, R.CONNECTION_RATE_EXCEEDED,
        R.MAXIMUM_CONNECT_TIME, R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        # the table in 3.14.2.1 leaves it out, but section 2.4 gives 0x8C Bad
        # authentication method to CONNACK and DISCONNECT (an AUTH we cannot take)
        R.BAD_AUTHENTICATION_METHOD,
    }),
    15: frozenset({R.SUCCESS, R.CONTINUE_AUTHENTICATION, R.RE_AUTHENTICATE}),  # AUTH
}
VALID_REASON_CODES[5] = VALID_REASON_CODES[4]  # PUBREC has PUBACK's set, 3.5.2.1

# 3.1.1 CONNACK return code <-> 5.0 reason code. The five refusals of 3.1.1
# have exact 5.0 counterparts; any other 5.0 refusal is sent to a 3.1.1 client
# as the closest of the five.
_V311_TO_V5: dict[int, ReasonCode] = {
    ConnackReturnCode.ACCEPTED: R.SUCCESS,
    ConnackReturnCode.UNACCEPTABLE_PROTOCOL_VERSION: R.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackReturnCode.IDENTIFIER_REJECTED: R.CLIENT_IDENTIFIER_NOT_VALID,
    ConnackReturnCode.SERVER_UNAVAILABLE: R.SERVER_UNAVAILABLE,
    ConnackReturnCode.BAD_USER_NAME_OR_PASSWORD: R.BAD_USER_NAME_OR_PASSWORD,
    ConnackReturnCode.NOT_AUTHORIZED: R.NOT_AUTHORIZED,
}
_V5_TO_V311: dict[int, ConnackReturnCode] = {int(v): ConnackReturnCode(k)
                                             for k, v in _V311_TO_V5.items()}
_V5_TO_V311.update({
    R.BAD_AUTHENTICATION_METHOD: ConnackReturnCode.NOT_AUTHORIZED,
    R.BANNED: ConnackReturnCode.NOT_AUTHORIZED,
    R.SERVER_BUSY: ConnackReturnCode.SERVER_UNAVAILABLE,
    R.USE_ANOTHER_SERVER: ConnackReturnCode.SERVER_UNAVAILABLE,
    R.SERVER_MOVED: ConnackReturnCode.SERVER_UNAVAILABLE,
    R.CONNECTION_RATE_EXCEEDED: ConnackReturnCode.SERVER_UNAVAILABLE,
})


def to_v311_connack(reason: int) -> ConnackReturnCode:
    """The 3.1.1 CONNACK return code that says what 5.0 ``reason`` says."""
    if reason < 0x80:
        return ConnackReturnCode.ACCEPTED
    return _V5_TO_V311.get(reason, ConnackReturnCode.SERVER_UNAVAILABLE)


def from_v311_connack(code: int) -> ReasonCode | None:
    """The 5.0 reason code for a 3.1.1 return code; None for a reserved value."""
    return _V311_TO_V5.get(code)


def to_v311_suback(reason: int) -> int:
    """3.1.1 SUBACK allows 0, 1, 2 and 0x80 (Failure) only (section 3.9.3)."""
    return reason if reason < 0x80 else 0x80


def from_v311_suback(code: int) -> ReasonCode | None:
    """5.0 reason code for a 3.1.1 SUBACK code; None for a reserved value."""
    if code in (0, 1, 2):
        return ReasonCode(code)
    if code == 0x80:
        return R.UNSPECIFIED_ERROR
    return None  # [MQTT-3.9.3-2] other values are reserved
