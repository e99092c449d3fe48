"""The error catalogue: every error a peer can see, and its wire codes.

Hierarchy::

    TidingsError            one catalogued failure: code, HTTP status, WS close code,
      |                     MQTT 5.0 reason code, MQTT 3.1.1 CONNACK return code
      +-- BadRequest        the peer sent something malformed or out of range
      |     +-- BadTopic        a topic name or filter that breaks the topic rules
      |     +-- BadClientId     an MQTT client identifier we do not accept
      |     +-- QuotaExceeded   over a per-session or per-user count (subscriptions, sessions)
      +-- Unauthorized      no, bad or expired credentials
      +-- Forbidden         credentials fine, permission denied
      +-- NotFound
      +-- Conflict          not possible in the resource's state (cancel what was sent)
      +-- TooLarge          a frame, body or payload over its limit
      +-- RateLimited       over a per-session message rate
      +-- RequestTimeout    the peer took too long to send its request
      +-- Unavailable       a backend (store, bus) cannot take the request now

Each edge turns a ``TidingsError`` into its wire form in exactly one place
(WS reply or close code, HTTP status, MQTT reason code: ``mqtt_reason`` is
the MQTT 5.0 reason code (section 2.4), ``mqtt_return`` the MQTT 3.1.1
CONNACK return code (section 3.2.2.3) the same refusal gets; 3.1.1 has no
other refusal codes, so its edge closes or answers 0x80 in a SUBACK). The
values are plain ints so this module stays free of the protocol packages;
tests/test_errors.py pins them against ``tidings.protocol.mqtt.ReasonCode``. The message is
written for the peer; exception text from inside the server never reaches a
peer: unexpected exceptions become ``internal`` with a fixed message.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_INVALID_DATA",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_RATE_LIMITED",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_BIG",
    "CLOSE_UNAUTHORIZED",
    "BadClientId",
    "BadRequest",
    "BadTopic",
    "Conflict",
    "Forbidden",
    "NotFound",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimeout",
    "TidingsError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]

# WebSocket close codes (DESIGN.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # reconnect elsewhere
CLOSE_INVALID_DATA = 1007  # a text message that is not UTF-8 (RFC 6455 section 8.1)
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4001  # do not retry with the same token
CLOSE_FORBIDDEN = 4003
CLOSE_SLOW_CONSUMER = 4008
CLOSE_RATE_LIMITED = 4029
CLOSE_BAD_REQUEST = 4400


class TidingsError(Exception):
    """A failure a peer may see. ``code`` is stable; ``message`` is for humans."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    close_code: ClassVar[int] = 1011
    mqtt_reason: ClassVar[int] = 0x80  # Unspecified error
    mqtt_return: ClassVar[int] = 3  # Server unavailable

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id: int | None = None  # the WS command this answers, when known
        if code is not None:
            self.code = code  # type: ignore[misc]

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadRequest(TidingsError):
    code = "bad_request"
    status = 400
    close_code = CLOSE_BAD_REQUEST
    mqtt_reason = 0x83  # Implementation specific error: valid, but not accepted
    mqtt_return = 3  # Server unavailable


class BadTopic(BadRequest):
    """A topic name or filter that breaks the topic rules (protocol/topics.py).

    MQTT: 0x90 Topic Name invalid; the MQTT edge says 0x8F Topic Filter
    invalid where a filter was given (SUBACK, UNSUBACK).
    """

    code = "bad_topic"
    mqtt_reason = 0x90  # Topic Name invalid
    mqtt_return = 3  # Server unavailable


class BadClientId(BadRequest):
    """An MQTT client identifier we do not accept (too long)."""

    code = "bad_client_id"
    mqtt_reason = 0x85  # Client Identifier not valid
    mqtt_return = 2  # Identifier rejected


class QuotaExceeded(BadRequest):
    """Over a count kept per session or per user (subscriptions, kept sessions).

    MQTT 5.0 0x97: "an implementation or administrative imposed limit has
    been exceeded" (section 3.2.2.2).
    """

    code = "quota_exceeded"
    mqtt_reason = 0x97  # Quota exceeded
    mqtt_return = 3  # Server unavailable


class Unauthorized(TidingsError):
    code = "unauthorized"
    status = 401
    close_code = CLOSE_UNAUTHORIZED
    mqtt_reason = 0x86  # Bad User Name or Password
    mqtt_return = 4  # Bad user name or password


class Forbidden(TidingsError):
    code = "forbidden"
    status = 403
    close_code = CLOSE_FORBIDDEN
    mqtt_reason = 0x87  # Not authorized
    mqtt_return = 5  # Not authorized


class NotFound(TidingsError):
    code = "not_found"
    status = 404
    close_code = CLOSE_BAD_REQUEST
    mqtt_reason = 0x80  # Unspecified error
    mqtt_return = 3  # Server unavailable


class Conflict(TidingsError):
    code = "conflict"
    status = 409
    close_code = CLOSE_BAD_REQUEST
    mqtt_reason = 0x80  # Unspecified error
    mqtt_return = 3  # Server unavailable


class TooLarge(TidingsError):
    code = "too_large"
    status = 413
    close_code = CLOSE_TOO_BIG
    mqtt_reason = 0x95  # Packet too large
    mqtt_return = 3  # Server unavailable


class RateLimited(TidingsError):
    """Over a per-session message rate (the WS edge's ``ws.rate_limit`` closes with 4029)."""

    code = "rate_limited"
    status = 429
    close_code = CLOSE_RATE_LIMITED
    mqtt_reason = 0x96  # Message rate too high
    mqtt_return = 3  # Server unavailable


class RequestTimeout(TidingsError):
    code = "request_timeout"
    status = 408
    close_code = CLOSE_POLICY
    mqtt_reason = 0x8D  # Keep Alive timeout: the peer was silent too long
    mqtt_return = 3  # Server unavailable


class Unavailable(TidingsError):
    code = "unavailable"
    status = 503
    close_code = CLOSE_GOING_AWAY
    mqtt_reason = 0x88  # Server unavailable
    mqtt_return = 3  # Server unavailable
