"""Tokens: a backend issues a client token (user, lifetime, topic grants)."""

from __future__ import annotations

from aiohttp import web

from ..errors import BadRequest
from .common import TOKENS, field, json_body, json_response, only

__all__ = ["make_token"]

_TOKEN_FIELDS = frozenset({"user", "ttl", "subscribe", "publish"})


async def make_token(request: web.Request) -> web.Response:
    """``POST /v1/tokens``: ``{user, ttl, subscribe, publish}`` -> ``{token, expires_in}``."""
    tokens = request.app[TOKENS]
    body = await json_body(request)
    only(body, _TOKEN_FIELDS)
    user = field(body, "user", str, required=True)
    ttl = field(body, "ttl", int)
    grants = {}
    for key in ("subscribe", "publish"):
        value = field(body, key, list)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise BadRequest(f"{key} must be a list of topic filters")
        grants[key] = value
    token = tokens.issue(user, ttl=ttl, **grants)
    return json_response({"token": token, "expires_in": ttl or tokens.default_ttl})
