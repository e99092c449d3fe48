"""What every handler of the HTTP API shares: typed app state, JSON in and out.

The app's state is typed (``web.AppKey``): a handler reads ``request.app[OPS]``
and gets an :class:`~tidings.sessions.Operations`, never an ``Any``. Request
bodies are read strictly: a JSON object, known fields only, each of its type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..auth import ApiKeys, TokenAuthority
from ..config import Settings
from ..errors import BadRequest, TooLarge
from ..metrics import Metrics
from ..node import Node
from ..notify import Notifier
from ..sessions import Operations

__all__ = ["KEYS", "KEY_ID", "METRICS", "NODE", "NOTIFIER", "OPS", "READY", "SETTINGS",
           "TOKENS", "field", "idempotency_scope", "int_query", "json_body", "json_error",
           "json_response", "only"]

Ready = Callable[[], Awaitable[bool]]

SETTINGS = web.AppKey("settings", Settings)
NODE = web.AppKey("node", Node)
KEYS = web.AppKey("keys", ApiKeys)
TOKENS = web.AppKey("tokens", TokenAuthority)
METRICS = web.AppKey("metrics", Metrics)
NOTIFIER = web.AppKey("notifier", Notifier)
# every check a client's request passes, shared with the WS and MQTT sessions
OPS = web.AppKey("ops", Operations)
READY: web.AppKey[Ready] = web.AppKey("ready")
KEY_ID = web.RequestKey("key_id", str)  # the API key a request authenticated with


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def json_error(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or ``malformed`` / ``too_large``."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("request body too large") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body must be JSON", code="malformed") from None
    if not isinstance(obj, dict):
        raise BadRequest("body must be a JSON object", code="malformed")
    return obj


def only(obj: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    """Refuse fields this endpoint does not know: a misspelt ``retian`` must not
    silently publish a message that is not retained."""
    for key in obj:
        if key not in allowed:
            raise BadRequest(f"{where}unknown field {str(key)[:64]!r}")


def field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], *,
          required: bool = False, default: Any = None) -> Any:
    """``obj[key]`` if it has one of ``types`` (a bool is not an int here)."""
    if key not in obj or obj[key] is None:
        if required:
            raise BadRequest(f"{key} is required")
        return default
    value = obj[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadRequest(f"{key} has the wrong type")
    if not isinstance(value, types):
        raise BadRequest(f"{key} has the wrong type")
    return value


def int_query(request: web.Request, key: str, default: int, lo: int | None = None,
              hi: int | None = None) -> int:
    """An integer query parameter, within ``lo``..``hi`` when both are given."""
    try:
        value = int(request.query.get(key, str(default)))
    except ValueError:
        raise BadRequest(f"{key} must be an integer") from None
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise BadRequest(f"{key} must be between {lo} and {hi}")
    return value


def idempotency_scope(request: web.Request, what: str) -> str | None:
    """The ``Idempotency-Key`` header scoped to the operation and the API key
    (two backends never share a key's result), or None without one."""
    idem = request.headers.get("Idempotency-Key")
    if idem is None:
        return None
    if not 0 < len(idem) <= 255:
        raise BadRequest("Idempotency-Key must be 1-255 characters")
    return f"{what}:{request[KEY_ID]}:{idem}"
