"""The error catalogue: every error a peer can see, and its wire codes.

Hierarchy::

    TidingsError            one catalogued failure: code, HTTP status, WS close code
      +-- BadRequest        the peer sent something malformed or out of range
      +-- Unauthorized      no, bad or expired credentials
      +-- Forbidden         credentials fine, permission denied
      +-- NotFound
      +-- Conflict
      +-- TooLarge          a frame, body or payload over its limit
      +-- RateLimited
      +-- RequestTimeout    the peer took too long to send its request
      +-- Unavailable       a backend (store, bus) cannot take the request now

Each edge turns a ``TidingsError`` into its wire form in exactly one place
(WS reply or close code, HTTP status, MQTT reason code). The message is
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
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
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


class Unauthorized(TidingsError):
    code = "unauthorized"
    status = 401
    close_code = CLOSE_UNAUTHORIZED


class Forbidden(TidingsError):
    code = "forbidden"
    status = 403
    close_code = CLOSE_FORBIDDEN


class NotFound(TidingsError):
    code = "not_found"
    status = 404
    close_code = CLOSE_BAD_REQUEST


class Conflict(TidingsError):
    code = "conflict"
    status = 409
    close_code = CLOSE_BAD_REQUEST


class TooLarge(TidingsError):
    code = "too_large"
    status = 413
    close_code = CLOSE_TOO_BIG


class RateLimited(TidingsError):
    code = "rate_limited"
    status = 429
    close_code = CLOSE_RATE_LIMITED


class RequestTimeout(TidingsError):
    code = "request_timeout"
    status = 408
    close_code = CLOSE_POLICY


class Unavailable(TidingsError):
    code = "unavailable"
    status = 503
    close_code = CLOSE_GOING_AWAY
