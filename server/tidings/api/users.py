"""A user's inbox: list it, count unread, mark read / unread / archived, and
the user's devices. The checks (cursor, page size, ids) are the sessions
layer's, the same a WS client passes."""

from __future__ import annotations

from aiohttp import web

from ..notify import valid_user
from .common import OPS, field, int_query, json_body, json_response, only

__all__ = ["devices", "inbox", "mark", "unread"]

_MARK_FIELDS = frozenset({"ids", "all", "device"})


async def inbox(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    limit = int_query(request, "limit", 20)  # its range is the sessions layer's
    unread_only = request.query.get("unread_only", "false").lower() in ("1", "true", "yes")
    return json_response(await request.app[OPS].inbox(
        user, limit=limit, before=request.query.get("before"), unread_only=unread_only))


async def unread(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response({"user": user, "unread": await request.app[OPS].unread(user)})


async def mark(request: web.Request) -> web.Response:
    """``POST /v1/users/{uid}/{read|unread|archive}``: ``{ids}`` or ``{all: true}``."""
    ops = request.app[OPS]
    user = valid_user(request.match_info["uid"])
    action = request.match_info["action"]
    body = await json_body(request)
    only(body, _MARK_FIELDS)
    ids = field(body, "ids", list)
    everything = field(body, "all", bool, default=False)
    device = ops.device(field(body, "device", str, default="api"))
    change = await ops.mark(user, action, ids, everything, device)  # type: ignore[arg-type]
    return json_response({"unread": change.unread, "changed": change.changed})


async def devices(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response({"user": user, "devices": await request.app[OPS].devices(user)})
