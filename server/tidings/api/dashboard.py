"""The dashboard at ``/dashboard`` on the API port (issue 13).

Without a key it serves a sign-in form; a valid API key posted there becomes
a session cookie (``tidings_dashboard``: the key's id, an expiry and an
HMAC-SHA256 under a key derived from the JWT secret; ``HttpOnly``,
``SameSite=Strict``, ``Secure`` over TLS), never part of a URL. With the key
in ``Authorization`` or a valid cookie it serves the page, whose script polls
the API. The cookie stands in for the key on the API itself (see
:func:`cookie_key_id`) only for reads, and for a change that carries
``X-Tidings-Dashboard: 1``: a header another site cannot make a browser send,
so a cookie alone never changes anything (no cross-site request forgery).
Removing a key from ``api.keys`` ends its sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from html import escape

from aiohttp import web

from ..auth import ApiKeys
from ..demo_files import dashboard_file
from ..errors import NotFound
from .common import KEYS, METRICS, NODE, NOTIFIER, TOKENS, int_query, json_response

__all__ = ["COOKIE", "DASHBOARD_HEADER", "PUBLIC_PREFIX", "cookie_key_id", "is_public",
           "login", "logout", "page", "recent", "static", "summary"]

COOKIE = "tidings_dashboard"
DASHBOARD_HEADER = "X-Tidings-Dashboard"
PUBLIC_PREFIX = "/dashboard"  # the page, sign-in, sign-out and static files: no key needed
SESSION_SECONDS = 12 * 3600
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
_SAFE = frozenset({"GET", "HEAD"})


def is_public(path: str) -> bool:
    return path == PUBLIC_PREFIX or path.startswith(PUBLIC_PREFIX + "/")


def _mac(request: web.Request, body: str) -> str:
    key = request.app[TOKENS].derived_key("dashboard")
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _make_cookie(request: web.Request, key_id: str) -> str:
    body = f"{key_id}.{int(time.time()) + SESSION_SECONDS}"
    return f"v1.{body}.{_mac(request, body)}"


def _session_key_id(request: web.Request) -> str | None:
    """The key id of a valid, unexpired session cookie whose key is still configured."""
    raw = request.cookies.get(COOKIE, "")
    parts = raw.split(".")
    if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit():
        return None
    body = f"{parts[1]}.{parts[2]}"
    if not hmac.compare_digest(_mac(request, body), parts[3]):
        return None
    if int(parts[2]) <= time.time():
        return None
    keys: ApiKeys = request.app[KEYS]
    return parts[1] if keys.has_id(parts[1]) else None


def cookie_key_id(request: web.Request) -> str | None:
    """For the API's key check: the session's key id when the cookie may stand in
    for the key on this request (a read, or a change marked by the page)."""
    if request.method not in _SAFE and request.headers.get(DASHBOARD_HEADER) != "1":
        return None
    return _session_key_id(request)


def _bearer_key_id(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return request.app[KEYS].check(key.strip()) if scheme.lower() == "bearer" else None


def _file(name: str, ctype: str, status: int = 200, **fill: str) -> web.Response:
    body = dashboard_file(name)
    if body is None:
        raise web.HTTPNotFound()
    text = body.decode()
    for key, value in fill.items():
        text = text.replace("{" + key + "}", escape(value))
    return web.Response(text=text, status=status, content_type=ctype, charset="utf-8",
                        headers={"Cache-Control": "no-store",
                                 "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"})


def _see_dashboard() -> web.Response:
    """303 to the dashboard (a response, not an exception: the API's error
    middleware turns exceptions into error bodies)."""
    return web.Response(status=303, headers={"Location": "/dashboard"})


async def page(request: web.Request) -> web.Response:
    """``GET /dashboard``: the dashboard for a key or a session, else the sign-in form."""
    if _bearer_key_id(request) or _session_key_id(request):
        return _file("index.html", "text/html")
    return _file("login.html", "text/html", error="")


async def login(request: web.Request) -> web.Response:
    """``POST /dashboard/login`` (form ``key``): a session cookie, then the dashboard."""
    form = await request.post()
    key = form.get("key")
    key_id = request.app[KEYS].check(key.strip()) if isinstance(key, str) else None
    if key_id is None:
        request.app[METRICS].inc("tidings_errors_total", code="dashboard_login_refused")
        return _file("login.html", "text/html", status=401, error="That key is not valid.")
    response = _see_dashboard()
    response.set_cookie(COOKIE, _make_cookie(request, key_id), max_age=SESSION_SECONDS,
                        httponly=True, samesite="Strict", secure=request.secure,
                        path="/")
    return response


async def logout(request: web.Request) -> web.Response:
    """``POST /dashboard/logout``: forget the cookie (it also expires by itself)."""
    response = _see_dashboard()
    response.del_cookie(COOKIE, path="/")
    return response


async def static(request: web.Request) -> web.Response:
    """``GET /dashboard/static/{name}``: the page's script, styles and vendored chart
    library (public: nothing in them is secret)."""
    name = request.match_info["name"]
    if ".." in name.split("/") or name.startswith("."):
        raise web.HTTPNotFound()
    ext = name[name.rfind("."):]
    if ext not in _TYPES:
        raise web.HTTPNotFound()
    return _file(name, _TYPES[ext])


async def summary(request: web.Request) -> web.Response:
    """``GET /v1/dashboard/summary``: what the page polls for its live figures."""
    metrics = request.app[METRICS]
    return json_response({
        "node": request.app[NODE].name,
        "ts": time.time(),
        "connections": {"ws": metrics.total("tidings_ws_connections"),
                        "mqtt": metrics.total("tidings_mqtt_connections")},
        "messages_in": metrics.total("tidings_messages_in_total"),
        "messages_out": metrics.total("tidings_messages_out_total"),
        "notifications": metrics.total("tidings_notifications_total"),
    })


async def recent(request: web.Request) -> web.Response:
    """``GET /v1/dashboard/recent?limit=``: the newest notifications (sent at once
    or as jobs, on any node), newest first, each as ``GET /v1/notifications/{id}``
    answers (status, outcomes, tracked counts). The page then reads each one's
    ``/stats`` for its funnel and variants."""
    limit = int_query(request, "limit", 10, 1, 100)
    notifier = request.app[NOTIFIER]
    out = []
    for nid in await request.app[NODE].recent_notifications(limit):
        try:
            out.append(await notifier.get(nid))
        except NotFound:  # its record went meanwhile: nothing to show
            continue
    return json_response({"notifications": out})
