"""Platform push endpoints of a user's devices, and the server's VAPID key
(issue 16). A backend registers for a device it names; the checks are the
sessions layer's, the same a WS client's ``register_push`` passes."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..notify import valid_user
from .common import OPS, field, json_body, json_response

__all__ = ["endpoints", "register", "unregister", "vapid_public_key"]


async def register(request: web.Request) -> web.Response:
    """``POST /v1/users/{uid}/push-endpoints``: ``{device, kind, ...}`` -> the user's endpoints."""
    ops = request.app[OPS]
    user = valid_user(request.match_info["uid"])
    body = await json_body(request)
    device = ops.device(field(body, "device", str, default="api"))
    endpoint = {k: v for k, v in body.items() if k != "device"}
    return json_response({"user": user,
                          "endpoints": await ops.register_push(user, device, endpoint)})


async def endpoints(request: web.Request) -> web.Response:
    user = valid_user(request.match_info["uid"])
    return json_response({"user": user, "endpoints": await request.app[OPS].push_endpoints(user)})


async def unregister(request: web.Request) -> web.Response:
    """``DELETE /v1/users/{uid}/push-endpoints[?device=]``: one device's, or all."""
    ops = request.app[OPS]
    user = valid_user(request.match_info["uid"])
    device = request.query.get("device")
    if device is not None:
        device = ops.device(device)
    return json_response({"removed": await ops.unregister_push(user, device)})


async def vapid_public_key(request: web.Request) -> web.Response:
    """``GET /v1/push/vapid-public-key``: ``{"key": <base64url>}`` (404: Web Push is off)."""
    key = request.app[OPS].vapid_public_key()
    if key is None:
        raise NotFound("Web Push is off on this server (push.webpush = false)")
    return json_response({"key": key})
