"""The HTTP API's application: its state, its middlewares and its one route table.

Requests pass three middlewares, outermost first:

* :func:`errors`, the one place errors become HTTP: a
  :class:`~tidings.errors.TidingsError` its catalogued status and
  ``{"error": {"code", "message"}}``, aiohttp's own 404/405/413 the same shape,
  anything else 500 ``internal`` (logged; its text never reaches the client);
* :func:`authenticate`: every path but :data:`~.ops.PUBLIC` needs an API key;
* :func:`body_deadline`: the whole body within ``api.body_timeout`` (408).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..auth import Acl, ApiKeys, TokenAuthority
from ..config import Settings
from ..errors import RequestTimeout, TidingsError, Unauthorized
from ..metrics import Metrics
from ..node import Node
from ..notify import Notifier
from ..presence import Presence
from ..sessions import Operations
from . import dashboard, events, notifications, ops, push, segments, tokens, topics, users
from .common import (
    KEY_ID,
    KEYS,
    METRICS,
    NODE,
    NOTIFIER,
    OPS,
    READY,
    SETTINGS,
    TOKENS,
    Ready,
    json_error,
)

__all__ = ["ROUTES", "build_app"]

log = logging.getLogger("tidings.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/publish", topics.publish),
    ("POST", "/v1/publish/batch", topics.publish_batch),
    ("GET", "/v1/topics/{topic:.+}/history", topics.history),
    ("POST", "/v1/tokens", tokens.make_token),
    ("POST", "/v1/notify", notifications.notify),
    ("GET", "/v1/users/{uid}/inbox", users.inbox),
    ("GET", "/v1/users/{uid}/unread", users.unread),
    ("POST", "/v1/users/{uid}/{action:read|unread|archive}", users.mark),
    ("GET", "/v1/users/{uid}/devices", users.devices),
    ("POST", "/v1/users/{uid}/feedback", users.feedback),
    ("POST", "/v1/users/{uid}/push-endpoints", push.register),
    ("GET", "/v1/users/{uid}/push-endpoints", push.endpoints),
    ("DELETE", "/v1/users/{uid}/push-endpoints", push.unregister),
    ("GET", "/v1/push/vapid-public-key", push.vapid_public_key),
    ("GET", "/v1/events", events.events),
    ("GET", "/dashboard", dashboard.page),
    ("POST", "/dashboard/login", dashboard.login),
    ("POST", "/dashboard/logout", dashboard.logout),
    ("GET", "/dashboard/static/{name:.+}", dashboard.static),
    ("GET", "/v1/dashboard/summary", dashboard.summary),
    ("GET", "/v1/dashboard/recent", dashboard.recent),
    ("GET", "/v1/users/{uid}/tags", users.tags),
    ("PUT", "/v1/users/{uid}/tags", users.put_tags),
    ("POST", "/v1/users/{uid}/tags", users.change_tags),
    ("GET", "/v1/users/{uid}/attributes", users.attributes),
    ("PUT", "/v1/users/{uid}/attributes", users.put_attributes),
    ("GET", "/v1/users/{uid}/preferences", users.preferences),
    ("PUT", "/v1/users/{uid}/preferences", users.put_preferences),
    ("PATCH", "/v1/users/{uid}/preferences", users.put_preferences),
    ("PUT", "/v1/segments/{name}", segments.put),
    ("GET", "/v1/segments/{name}", segments.get),
    ("DELETE", "/v1/segments/{name}", segments.delete),
    ("GET", "/v1/segments/{name}/count", segments.count),
    ("GET", "/v1/segments/{name}/users", segments.users),
    ("GET", "/v1/notifications", notifications.list_notifications),
    ("GET", "/v1/notifications/{nid}", notifications.get_notification),
    ("DELETE", "/v1/notifications/{nid}", notifications.cancel_notification),
    ("GET", "/v1/notifications/{nid}/stats", notifications.notification_stats),
    ("GET", "/v1/stats/categories", notifications.category_stats),
    ("GET", "/healthz", ops.healthz),
    ("GET", "/readyz", ops.readyz),
    ("GET", "/metrics", ops.prometheus),
)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors -> HTTP status and the error body, for every route (see the module)."""
    metrics = request.app[METRICS]
    try:
        return await handler(request)
    except TidingsError as e:
        metrics.inc("tidings_errors_total", code=e.code)
        return json_error(e.status, e.code, e.message)
    except web.HTTPRequestEntityTooLarge:
        metrics.inc("tidings_errors_total", code="too_large")
        return json_error(413, "too_large", "request body too large")
    except web.HTTPException as e:
        code = _HTTP_CODES.get(e.status, "http_error")
        return json_error(e.status, code, e.reason or code)
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        metrics.inc("tidings_errors_total", code="internal")
        return json_error(500, "internal", "internal error")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """``Authorization: Bearer <key>`` (constant-time check) on every non-public path,
    or the dashboard's session cookie where it may stand in for the key
    (:func:`dashboard.cookie_key_id`); the key's id scopes idempotency keys."""
    if request.path not in ops.PUBLIC and not dashboard.is_public(request.path):
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key_id = request.app[KEYS].check(key.strip()) if scheme.lower() == "bearer" else None
        if key_id is None:
            key_id = dashboard.cookie_key_id(request)
        if key_id is None:
            raise Unauthorized("a valid API key is required (Authorization: Bearer)")
        request[KEY_ID] = key_id
    return await handler(request)


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read the whole body within api.body_timeout (a slow-body client gets 408
    and the connection closes); handlers then read it from memory."""
    if request.body_exists:
        timeout = request.app[SETTINGS].api.body_timeout
        try:
            async with asyncio.timeout(timeout):
                await request.read()
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {timeout:g}s") from None
    return await handler(request)


def build_app(settings: Settings, node: Node, keys: ApiKeys, tokens: TokenAuthority,
              metrics: Metrics, ready: Ready, notifier: Notifier,
              presence: Presence) -> web.Application:
    """The API's aiohttp application: state, middlewares, :data:`ROUTES`."""
    app = web.Application(middlewares=[errors, authenticate, body_deadline],
                          client_max_size=settings.api.max_body_size)
    app[SETTINGS] = settings
    app[NODE] = node
    app[KEYS] = keys
    app[TOKENS] = tokens
    app[METRICS] = metrics
    app[READY] = ready
    app[NOTIFIER] = notifier
    app[OPS] = Operations(settings, node, tokens, Acl(settings.acl), notifier, presence,
                          metrics)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
