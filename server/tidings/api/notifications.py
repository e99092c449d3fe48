"""Notifications: send one (to users, segments, ...), read its stats and the
per-category stats."""

from __future__ import annotations

from aiohttp import web

from ..notify import NOTIFY_FIELDS
from .common import NODE, NOTIFIER, idempotency_scope, json_body, json_response, only

__all__ = ["category_stats", "notification_stats", "notify"]


async def notify(request: web.Request) -> web.Response:
    """``POST /v1/notify``: the notifier validates the body; -> ``{id, targets}``."""
    body = await json_body(request)
    only(body, NOTIFY_FIELDS)
    result = await request.app[NOTIFIER].notify(body, idempotency_scope(request, "notify"))
    return json_response({"id": result.id, "targets": result.targets})


async def notification_stats(request: web.Request) -> web.Response:
    return json_response(await request.app[NOTIFIER].stats(request.match_info["nid"]))


async def category_stats(request: web.Request) -> web.Response:
    return json_response({"categories": await request.app[NODE].category_stats()})
