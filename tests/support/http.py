"""The HTTP API's one error shape, asserted (shared by the tests/edges/ HTTP modules)."""

from __future__ import annotations

from typing import Any

__all__ = ["assert_error"]


def assert_error(status: int, body: Any, want_status: int, want_code: str) -> str:
    """Check the one error shape of the API; return the message."""
    assert status == want_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == want_code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message
