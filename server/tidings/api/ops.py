"""Operations endpoints, open without an API key: liveness, readiness, metrics."""

from __future__ import annotations

from aiohttp import web

from .common import METRICS, NODE, READY, json_error, json_response

__all__ = ["PUBLIC", "healthz", "prometheus", "readyz"]

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})  # paths that need no API key


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "node": request.app[NODE].name})


async def readyz(request: web.Request) -> web.Response:
    if await request.app[READY]():
        return json_response({"status": "ready", "node": request.app[NODE].name})
    return json_error(503, "unavailable", "not ready")


async def prometheus(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].render(), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})
