"""``GET /v1/events?since=<cursor>&limit=``: the event stream for backends that
pull (issue 13). A backend that was down catches up from its last cursor,
within ``events.retention``."""

from __future__ import annotations

from aiohttp import web

from ..errors import Unavailable
from .common import NODE, int_query, json_response

__all__ = ["MAX_LIMIT", "events"]

MAX_LIMIT = 1000


async def events(request: web.Request) -> web.Response:
    log = request.app[NODE].events
    if log is None:
        raise Unavailable("the event stream is not running on this node")
    limit = int_query(request, "limit", 100, 1, MAX_LIMIT)
    since = request.query.get("since") or None
    page, cursor = await log.since(since, limit)
    return json_response({"events": page, "next": cursor})
