"""Segments (issue 12): saved audiences by name, how many users they select
now, and who, page by page. The definition's checks are tidings.audience's,
through the sessions layer; an unknown segment is 404."""

from __future__ import annotations

from aiohttp import web

from .common import OPS, int_query, json_body, json_response

__all__ = ["count", "delete", "get", "put", "users"]


async def put(request: web.Request) -> web.Response:
    """``PUT /v1/segments/{name}``: the body is the definition; 201 when new."""
    name = request.match_info["name"]
    body = await json_body(request)
    created = await request.app[OPS].segment_put(name, body)
    return json_response({"name": name, "created": created}, 201 if created else 200)


async def get(request: web.Request) -> web.Response:
    return json_response(await request.app[OPS].segment_get(request.match_info["name"]))


async def delete(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await request.app[OPS].segment_delete(name)
    return json_response({"name": name, "deleted": True})


async def count(request: web.Request) -> web.Response:
    return json_response({"count": await request.app[OPS].segment_count(
        request.match_info["name"])})


async def users(request: web.Request) -> web.Response:
    """``GET /v1/segments/{name}/users?cursor=&limit=``: ``{"users", "next"}``."""
    limit = int_query(request, "limit", 100)  # its range is the sessions layer's
    page = await request.app[OPS].segment_users(request.match_info["name"],
                                                request.query.get("cursor"), limit)
    return json_response(page)
