"""The backend HTTP API (aiohttp) on its own port.

JSON in and out. Every error is ``{"error": {"code", "message"}}`` with the
status from the error catalogue, produced by one middleware; exception text
from inside the server never reaches the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..auth import Acl, ApiKeys, TokenAuthority
from ..config import Settings
from ..errors import (
    BadRequest,
    RequestTimeout,
    TidingsError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from ..metrics import Metrics
from ..node import Node
from ..notify import NOTIFY_FIELDS, Notifier, valid_user
from ..presence import Presence
from ..protocol.frames import Encoding, message_fields
from ..sessions import Operations
from ..types import PayloadKind, parse_offset

__all__ = ["build_app"]

log = logging.getLogger("tidings.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PUBLIC = {"/healthz", "/readyz", "/metrics"}
_MAX_BATCH = 1000
_KEY_ID = web.RequestKey("key_id", str)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _body(request: web.Request) -> dict[str, Any]:
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


def _only(obj: dict[str, Any], allowed: frozenset[str], where: str = "") -> None:
    """Refuse fields this endpoint does not know: a misspelt ``retian`` must not
    silently publish a message that is not retained."""
    for key in obj:
        if key not in allowed:
            raise BadRequest(f"{where}unknown field {str(key)[:64]!r}")


_MESSAGE_FIELDS = frozenset({"topic", "data", "retain"})
_BATCH_FIELDS = frozenset({"messages"})
_TOKEN_FIELDS = frozenset({"user", "ttl", "subscribe", "publish"})
_MARK_FIELDS = frozenset({"ids", "all", "device"})


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], *,
           required: bool = False, default: Any = None) -> Any:
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


def build_app(settings: Settings, node: Node, keys: ApiKeys, tokens: TokenAuthority,
              metrics: Metrics, ready: Callable[[], Awaitable[bool]], notifier: Notifier,
              presence: Presence) -> web.Application:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in _PUBLIC:
                auth = request.headers.get("Authorization", "")
                scheme, _, key = auth.partition(" ")
                key_id = keys.check(key.strip()) if scheme.lower() == "bearer" else None
                if key_id is None:
                    raise Unauthorized("a valid API key is required (Authorization: Bearer)")
                request[_KEY_ID] = key_id
            return await handler(request)
        except TidingsError as e:
            metrics.inc("tidings_errors_total", code=e.code)
            return _error(e.status, e.code, e.message)
        except web.HTTPRequestEntityTooLarge:
            metrics.inc("tidings_errors_total", code="too_large")
            return _error(413, "too_large", "request body too large")
        except web.HTTPException as e:
            code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
            return _error(e.status, code, e.reason or code)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            metrics.inc("tidings_errors_total", code="internal")
            return _error(500, "internal", "internal error")

    @web.middleware
    async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Read the whole body within api.body_timeout (a slow-body client gets 408
        and the connection closes); handlers then read it from memory."""
        if request.body_exists:
            try:
                async with asyncio.timeout(settings.api.body_timeout):
                    await request.read()
            except TimeoutError:
                raise RequestTimeout(f"request body not received within "
                                     f"{settings.api.body_timeout:g}s") from None
        return await handler(request)

    app = web.Application(middlewares=[errors, body_deadline],
                          client_max_size=settings.api.max_body_size)

    # every check a client's request passes, shared with the WS and MQTT sessions
    ops = Operations(settings, node, tokens, Acl(settings.acl), notifier, presence, metrics)

    def message_arg(body: Any, where: str = "") -> tuple[str, bytes, bool]:
        if not isinstance(body, dict):
            raise BadRequest(f"{where}must be a JSON object")
        _only(body, _MESSAGE_FIELDS, where)
        try:
            topic = ops.topic(_field(body, "topic", str, required=True))
            if "data" not in body:
                raise BadRequest("data is required")
            retain = _field(body, "retain", bool, default=False)
        except BadRequest as e:
            raise BadRequest(f"{where}{e.message}", code=e.code) from None
        ops.authorize_publish(None, topic, where)  # the backend: anything but '$'
        payload = orjson.dumps(body["data"])
        ops.check_size(payload, where)
        return topic, payload, retain

    async def publish(request: web.Request) -> web.Response:
        topic, payload, retain = message_arg(await _body(request))
        scope = idempotency_scope(request, "publish")
        result = await ops.publish(topic, payload, PayloadKind.JSON, retain=retain,
                                   idempotency_key=scope)
        return _json({"offset": result.publication.offset})

    async def publish_batch(request: web.Request) -> web.Response:
        """``{"messages": [{topic, data, retain}, ...]}`` -> ``{"offsets": [...]}``, in order.

        All messages are validated before any is stored. They are stored
        concurrently, so one batch costs about one group commit; each message
        is still published (and delivered) on its own, in the order given per topic.
        """
        body = await _body(request)
        _only(body, _BATCH_FIELDS)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list")
        if len(messages) > _MAX_BATCH:
            raise BadRequest(f"messages holds at most {_MAX_BATCH} entries")
        parsed = [message_arg(m, f"messages[{i}]: ") for i, m in enumerate(messages)]
        results = await asyncio.gather(*[
            ops.publish(t, p, PayloadKind.JSON, retain=r) for t, p, r in parsed],
            return_exceptions=True)
        offsets: list[str | None] = []
        errors = []
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                if not isinstance(r, TidingsError):
                    raise r
                offsets.append(None)
                errors.append({"index": i, **r.to_dict()})
            else:
                offsets.append(r.publication.offset)
        if errors and len(errors) == len(results):
            raise Unavailable("no message of the batch could be stored")
        return _json({"offsets": offsets, "errors": errors}, 207 if errors else 200)

    def idempotency_scope(request: web.Request, what: str) -> str | None:
        idem = request.headers.get("Idempotency-Key")
        if idem is None:
            return None
        if not 0 < len(idem) <= 255:
            raise BadRequest("Idempotency-Key must be 1-255 characters")
        return f"{what}:{request[_KEY_ID]}:{idem}"

    def int_query(request: web.Request, key: str, default: int, lo: int | None = None,
                  hi: int | None = None) -> int:
        try:
            value = int(request.query.get(key, str(default)))
        except ValueError:
            raise BadRequest(f"{key} must be an integer") from None
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise BadRequest(f"{key} must be between {lo} and {hi}")
        return value

    async def notify(request: web.Request) -> web.Response:
        body = await _body(request)
        _only(body, NOTIFY_FIELDS)
        result = await notifier.notify(body, idempotency_scope(request, "notify"))
        return _json({"id": result.id, "targets": result.targets})

    async def inbox(request: web.Request) -> web.Response:
        user = valid_user(request.match_info["uid"])
        limit = int_query(request, "limit", 20)  # its range is the sessions layer's
        unread_only = request.query.get("unread_only", "false").lower() in ("1", "true", "yes")
        return _json(await ops.inbox(user, limit=limit, before=request.query.get("before"),
                                     unread_only=unread_only))

    async def unread(request: web.Request) -> web.Response:
        user = valid_user(request.match_info["uid"])
        return _json({"user": user, "unread": await ops.unread(user)})

    async def mark(request: web.Request) -> web.Response:
        user = valid_user(request.match_info["uid"])
        action = request.match_info["action"]
        body = await _body(request)
        _only(body, _MARK_FIELDS)
        ids = _field(body, "ids", list)
        everything = _field(body, "all", bool, default=False)
        device = ops.device(_field(body, "device", str, default="api"))
        change = await ops.mark(user, action, ids, everything, device)  # type: ignore[arg-type]
        return _json({"unread": change.unread, "changed": change.changed})

    async def devices(request: web.Request) -> web.Response:
        user = valid_user(request.match_info["uid"])
        return _json({"user": user, "devices": await ops.devices(user)})

    async def notification_stats(request: web.Request) -> web.Response:
        return _json(await notifier.stats(request.match_info["nid"]))

    async def category_stats(request: web.Request) -> web.Response:
        return _json({"categories": await node.category_stats()})

    async def history(request: web.Request) -> web.Response:
        topic = ops.topic(request.match_info["topic"])
        since = request.query.get("since") or None
        if since is not None and parse_offset(since) is None:
            raise BadRequest("since is not an offset")
        limit = int_query(request, "limit", 100, 1, 1000)
        page = await node.history(topic, since, limit)
        return _json({
            "topic": topic,
            "offset": page.offset,
            "complete": page.complete,
            "items": [message_fields(p, Encoding.JSON) for p in page.items],
        })

    async def make_token(request: web.Request) -> web.Response:
        body = await _body(request)
        _only(body, _TOKEN_FIELDS)
        user = _field(body, "user", str, required=True)
        ttl = _field(body, "ttl", int)
        grants = {}
        for key in ("subscribe", "publish"):
            value = _field(body, key, list)
            if value is not None and not all(isinstance(v, str) for v in value):
                raise BadRequest(f"{key} must be a list of topic filters")
            grants[key] = value
        token = tokens.issue(user, ttl=ttl, **grants)
        return _json({"token": token, "expires_in": ttl or tokens.default_ttl})

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok", "node": node.name})

    async def readyz(request: web.Request) -> web.Response:
        if await ready():
            return _json({"status": "ready", "node": node.name})
        return _error(503, "unavailable", "not ready")

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})

    app.router.add_post("/v1/publish", publish)
    app.router.add_post("/v1/publish/batch", publish_batch)
    app.router.add_get("/v1/topics/{topic:.+}/history", history)
    app.router.add_post("/v1/tokens", make_token)
    app.router.add_post("/v1/notify", notify)
    app.router.add_get("/v1/users/{uid}/inbox", inbox)
    app.router.add_get("/v1/users/{uid}/unread", unread)
    app.router.add_post("/v1/users/{uid}/{action:read|unread|archive}", mark)
    app.router.add_get("/v1/users/{uid}/devices", devices)
    app.router.add_get("/v1/notifications/{nid}/stats", notification_stats)
    app.router.add_get("/v1/stats/categories", category_stats)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app
