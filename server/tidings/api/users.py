"""A user's inbox: list it, count unread, mark read / unread / archived; the
user's devices; and (issue 12) the user's tags, attributes and preferences.
The checks (cursor, page size, ids, tags, preferences) are the sessions
layer's, the same a WS or MQTT client passes."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from ..notify import FEEDBACK_FIELDS, valid_user
from .common import OPS, field, int_query, json_body, json_response, only

__all__ = ["attributes", "change_tags", "devices", "feedback", "inbox", "mark",
           "preferences", "put_attributes", "put_preferences", "put_tags", "tags", "unread"]

_MARK_FIELDS = frozenset({"ids", "all", "device"})
_TAGS_FIELDS = frozenset({"tags"})
_CHANGE_TAGS_FIELDS = frozenset({"add", "remove"})


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


async def feedback(request: web.Request) -> web.Response:
    """``POST /v1/users/{uid}/feedback`` ``{notification, reason, comment}``: the
    user's feedback, as their devices give it (issue 13); ``{"recorded": bool}``."""
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    only(body, FEEDBACK_FIELDS)
    recorded = await request.app[OPS].feedback(user, body.get("notification"),
                                               body.get("reason"), body.get("comment"))
    return json_response({"recorded": recorded})


async def devices(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response({"user": user, "devices": await request.app[OPS].devices(user)})


# -- audience (issue 12) ----------------------------------------------------------------

async def tags(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response({"tags": await request.app[OPS].user_tags(user)})


async def put_tags(request: web.Request) -> web.Response:
    """``PUT /v1/users/{uid}/tags`` ``{"tags": [...]}``: replace them."""
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    only(body, _TAGS_FIELDS)
    if "tags" not in body:
        raise BadRequest("tags: required")
    return json_response({"tags": await request.app[OPS].set_user_tags(user, body["tags"])})


async def change_tags(request: web.Request) -> web.Response:
    """``POST /v1/users/{uid}/tags`` ``{"add": [...], "remove": [...]}``."""
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    only(body, _CHANGE_TAGS_FIELDS)
    result = await request.app[OPS].change_user_tags(user, body.get("add"), body.get("remove"))
    return json_response({"tags": result})


async def attributes(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response(await request.app[OPS].user_attributes(user))


async def put_attributes(request: web.Request) -> web.Response:
    """``PUT /v1/users/{uid}/attributes``: the body, a flat object, replaces them."""
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    return json_response(await request.app[OPS].set_user_attributes(user, body))


# -- preferences (issue 12) --------------------------------------------------------------

async def preferences(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response(await request.app[OPS].preferences(user))


async def put_preferences(request: web.Request) -> web.Response:
    """``PUT`` replaces the document, ``PATCH`` merges into it (RFC 7396); the
    reply is the stored document."""
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    merge = request.method == "PATCH"
    return json_response(await request.app[OPS].set_preferences(user, body, merge=merge))
