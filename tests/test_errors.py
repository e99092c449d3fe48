"""The error catalogue's wire codes, pinned: HTTP status, WS close code, MQTT 5.0
reason code and MQTT 3.1.1 CONNACK return code per class, and the MQTT edge's one
mapping from an error to the reason code of a given packet."""

from __future__ import annotations

import inspect

import pytest

from tidings import errors
from tidings.edges.mqtt.codes import reason_code
from tidings.errors import (
    BadClientId,
    BadRequest,
    BadTopic,
    Conflict,
    Forbidden,
    NotFound,
    QuotaExceeded,
    RateLimited,
    RequestTimeout,
    TidingsError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from tidings.protocol.mqtt import PacketType, ReasonCode
from tidings.protocol.mqtt.reason_codes import ConnackReturnCode, to_v311_connack

R, C = ReasonCode, ConnackReturnCode

# class: (code, HTTP status, WS close code, MQTT 5.0 reason code, MQTT 3.1.1 return code)
TABLE: dict[type[TidingsError], tuple[str, int, int, int, int]] = {
    TidingsError: ("internal", 500, 1011, R.UNSPECIFIED_ERROR, C.SERVER_UNAVAILABLE),
    BadRequest: ("bad_request", 400, 4400, R.IMPLEMENTATION_SPECIFIC_ERROR,
                 C.SERVER_UNAVAILABLE),
    BadTopic: ("bad_topic", 400, 4400, R.TOPIC_NAME_INVALID, C.SERVER_UNAVAILABLE),
    BadClientId: ("bad_client_id", 400, 4400, R.CLIENT_IDENTIFIER_NOT_VALID,
                  C.IDENTIFIER_REJECTED),
    QuotaExceeded: ("quota_exceeded", 400, 4400, R.QUOTA_EXCEEDED, C.SERVER_UNAVAILABLE),
    Unauthorized: ("unauthorized", 401, 4001, R.BAD_USER_NAME_OR_PASSWORD,
                   C.BAD_USER_NAME_OR_PASSWORD),
    Forbidden: ("forbidden", 403, 4003, R.NOT_AUTHORIZED, C.NOT_AUTHORIZED),
    NotFound: ("not_found", 404, 4400, R.UNSPECIFIED_ERROR, C.SERVER_UNAVAILABLE),
    Conflict: ("conflict", 409, 4400, R.UNSPECIFIED_ERROR, C.SERVER_UNAVAILABLE),
    TooLarge: ("too_large", 413, 1009, R.PACKET_TOO_LARGE, C.SERVER_UNAVAILABLE),
    RateLimited: ("rate_limited", 429, 4029, R.MESSAGE_RATE_TOO_HIGH, C.SERVER_UNAVAILABLE),
    RequestTimeout: ("request_timeout", 408, 1008, R.KEEP_ALIVE_TIMEOUT,
                     C.SERVER_UNAVAILABLE),
    Unavailable: ("unavailable", 503, 1001, R.SERVER_UNAVAILABLE, C.SERVER_UNAVAILABLE),
}


def test_every_error_class_is_pinned() -> None:
    """A new class in errors.py must get a row here (and so wire codes for every protocol)."""
    classes = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, TidingsError)}
    assert classes == set(TABLE)


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda c: c.__name__)
def test_wire_codes(cls: type[TidingsError]) -> None:
    e = cls("m")
    assert (e.code, e.status, e.close_code, e.mqtt_reason, e.mqtt_return) == TABLE[cls]
    # the 3.1.1 code is what the codec would write for the 5.0 one in a CONNACK
    assert e.mqtt_return == to_v311_connack(e.mqtt_reason)
    assert e.mqtt_reason in set(ReasonCode) and e.mqtt_reason >= 0x80


# (error, packet) -> the reason code the MQTT edge puts in that packet
PER_PACKET = [
    (BadTopic, PacketType.PUBACK, R.TOPIC_NAME_INVALID),
    (BadTopic, PacketType.PUBREC, R.TOPIC_NAME_INVALID),
    (BadTopic, PacketType.SUBACK, R.TOPIC_FILTER_INVALID),  # said of a filter
    (BadTopic, PacketType.UNSUBACK, R.TOPIC_FILTER_INVALID),
    (BadTopic, PacketType.CONNACK, R.TOPIC_NAME_INVALID),  # a will topic
    (Forbidden, PacketType.CONNACK, R.NOT_AUTHORIZED),
    (Forbidden, PacketType.PUBACK, R.NOT_AUTHORIZED),
    (Forbidden, PacketType.SUBACK, R.NOT_AUTHORIZED),
    (Unauthorized, PacketType.CONNACK, R.BAD_USER_NAME_OR_PASSWORD),
    (BadClientId, PacketType.CONNACK, R.CLIENT_IDENTIFIER_NOT_VALID),
    (QuotaExceeded, PacketType.CONNACK, R.QUOTA_EXCEEDED),
    (QuotaExceeded, PacketType.SUBACK, R.QUOTA_EXCEEDED),
    (TooLarge, PacketType.DISCONNECT, R.PACKET_TOO_LARGE),
    (TooLarge, PacketType.CONNACK, R.PACKET_TOO_LARGE),
    (Unavailable, PacketType.CONNACK, R.SERVER_UNAVAILABLE),
    # 0x88 is no PUBACK / PUBREC reason code (5.0 section 3.4.2.1): Unspecified error
    (Unavailable, PacketType.PUBACK, R.UNSPECIFIED_ERROR),
    (Unavailable, PacketType.PUBREC, R.UNSPECIFIED_ERROR),
    (RateLimited, PacketType.DISCONNECT, R.MESSAGE_RATE_TOO_HIGH),
    (RateLimited, PacketType.PUBACK, R.UNSPECIFIED_ERROR),
    (BadRequest, PacketType.PUBACK, R.IMPLEMENTATION_SPECIFIC_ERROR),
    (TidingsError, PacketType.SUBACK, R.UNSPECIFIED_ERROR),
]


@pytest.mark.parametrize(("cls", "packet", "expected"), PER_PACKET,
                         ids=[f"{c.__name__}-{p.name}" for c, p, _ in PER_PACKET])
def test_reason_code_per_packet(cls: type[TidingsError], packet: PacketType,
                                expected: ReasonCode) -> None:
    assert reason_code(cls("m"), packet) == expected


def test_a_code_override_keeps_the_class_codes() -> None:
    """``code=`` renames the error for WS/HTTP peers; its wire codes stay the class's."""
    e = BadRequest("m", code="too_many_subscriptions")
    assert (e.code, e.status, e.mqtt_reason) == ("too_many_subscriptions", 400, 0x83)
