"""Notifications: send one (to users, tags, a segment or an audience, now or
scheduled), read its status, outcomes and stats, list them by status, cancel
one, and the per-category stats."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..notify import NOTIFY_FIELDS
from ..rates import csv_table, rates
from .common import (
    NODE,
    NOTIFIER,
    idempotency_scope,
    int_query,
    json_body,
    json_response,
    only,
)

__all__ = ["cancel_notification", "category_stats", "get_notification", "list_notifications",
           "notification_stats", "notify"]


async def notify(request: web.Request) -> web.Response:
    """``POST /v1/notify``: the notifier validates the body; -> ``{id, targets}``."""
    body = await json_body(request)
    only(body, NOTIFY_FIELDS)
    result = await request.app[NOTIFIER].notify(body, idempotency_scope(request, "notify"))
    return json_response({"id": result.id, "targets": result.targets})


_STATS_FORMATS = ("json", "csv")


async def notification_stats(request: web.Request) -> web.Response:
    """``GET /v1/notifications/{id}/stats[?format=csv]``: the funnel, rates,
    variants and verdict as JSON, or the same table as CSV (a ``total`` row,
    then one per variant)."""
    fmt = request.query.get("format", "json")
    if fmt not in _STATS_FORMATS:
        raise BadRequest(f"format: must be one of {', '.join(_STATS_FORMATS)}")
    stats = await request.app[NOTIFIER].stats(request.match_info["nid"])
    if fmt == "csv":
        return web.Response(text=csv_table(stats), content_type="text/csv", charset="utf-8")
    return json_response(stats)


async def get_notification(request: web.Request) -> web.Response:
    """``GET /v1/notifications/{id}``: ``{id, status, category, created, targets,
    outcomes, pending, ...stats}``."""
    return json_response(await request.app[NOTIFIER].get(request.match_info["nid"]))


async def list_notifications(request: web.Request) -> web.Response:
    """``GET /v1/notifications?status=scheduled&cursor=&limit=``: oldest first, paged."""
    limit = int_query(request, "limit", 100, 1, 1000)
    return json_response(await request.app[NOTIFIER].notifications(
        request.query.get("status", "scheduled"), request.query.get("cursor"), limit))


async def cancel_notification(request: web.Request) -> web.Response:
    """``DELETE /v1/notifications/{id}``: 200 with the cancelled job, 404, 409 if sent."""
    return json_response(await request.app[NOTIFIER].cancel(request.match_info["nid"]))


async def category_stats(request: web.Request) -> web.Response:
    """``GET /v1/stats/categories``: per category its totals and their ``rates``."""
    totals = await request.app[NODE].category_stats()
    return json_response({"categories": {
        c: {**counts, "rates": {k: r.to_dict() for k, r in rates(counts).items()}}
        for c, counts in totals.items()}})
