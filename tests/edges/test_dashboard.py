"""The dashboard's sign-in on the API port (issue 13): a form without a key, a
session cookie for a valid key (HttpOnly, SameSite=Strict, never in a URL),
the cookie standing in for the key on reads only (a change needs the page's
header), forged, expired and revoked sessions refused, and the summary the
page polls matching the node."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie
from pathlib import Path

import orjson
import pytest

from conftest import API_KEY, Node, start_node, stop_node
from tidings.api.dashboard import COOKIE


async def request(node: Node, method: str, path: str, *, cookie: str | None = None,
                  headers: dict[str, str] | None = None, data: object = None
                  ) -> tuple[int, str, dict[str, str], list[str]]:
    h = dict(headers or {})
    if cookie is not None:
        h["Cookie"] = f"{COOKIE}={cookie}"
    async with node.http.request(method, node.api_url + path, headers=h, data=data,
                                 allow_redirects=False) as r:
        return r.status, await r.text(), dict(r.headers), r.headers.getall("Set-Cookie", [])


async def sign_in(node: Node, key: str = API_KEY) -> str:
    status, _, headers, cookies = await request(node, "POST", "/dashboard/login",
                                                data={"key": key})
    assert status == 303 and headers["Location"] == "/dashboard"
    [raw] = cookies
    jar: SimpleCookie = SimpleCookie(raw)
    morsel = jar[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert API_KEY not in raw  # the key itself is never the cookie
    return morsel.value


async def test_without_a_key_the_page_is_the_sign_in_form(node: Node) -> None:
    status, body, headers, _ = await request(node, "GET", "/dashboard")
    assert status == 200 and 'action="/dashboard/login"' in body
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, body, _, cookies = await request(node, "POST", "/dashboard/login",
                                             data={"key": "wrong"})
    assert status == 401 and "That key is not valid." in body and cookies == []


async def test_a_session_opens_the_dashboard_and_reads_the_api(node: Node) -> None:
    session = await sign_in(node)
    status, body, _, _ = await request(node, "GET", "/dashboard", cookie=session)
    assert status == 200 and 'id="traffic-chart"' in body
    status, body, _, _ = await request(node, "GET", "/v1/stats/categories", cookie=session)
    assert status == 200
    # the key in the header opens it too (no cookie needed)
    status, body, _, _ = await request(node, "GET", "/dashboard",
                                       headers={"Authorization": f"Bearer {API_KEY}"})
    assert 'id="traffic-chart"' in body


async def test_a_cookie_alone_changes_nothing(node: Node) -> None:
    session = await sign_in(node)
    body = {"topic": "news/x", "data": 1}
    status, _, _, _ = await request(node, "POST", "/v1/publish", cookie=session,
                                    data=orjson.dumps(body))
    assert status == 401  # a cross-site form could send this much: refused
    status, text, _, _ = await request(node, "POST", "/v1/publish", cookie=session,
                                       data=orjson.dumps(body),
                                       headers={"X-Tidings-Dashboard": "1"})
    assert status == 200, text


@pytest.mark.parametrize("tamper", ["forged", "other-key", "garbage"])
async def test_forged_sessions_are_refused(node: Node, tamper: str) -> None:
    session = await sign_in(node)
    version, key_id, exp, mac = session.split(".")
    bad = {"forged": f"{version}.{key_id}.{int(exp) + 9999}.{mac}",
           "other-key": f"{version}.{'0' * 16}.{exp}.{mac}",
           "garbage": "v1..."}[tamper]
    status, body, _, _ = await request(node, "GET", "/dashboard", cookie=bad)
    assert 'action="/dashboard/login"' in body
    status, _, _, _ = await request(node, "GET", "/v1/stats/categories", cookie=bad)
    assert status == 401


async def test_a_revoked_key_ends_its_sessions(tmp_path: Path) -> None:
    node = await start_node(tmp_path, api__keys=[API_KEY, "second-key"])
    try:
        session = await sign_in(node, "second-key")
        status, _, _, _ = await request(node, "GET", "/v1/stats/categories", cookie=session)
        assert status == 200
    finally:
        await stop_node(node)
    node = await start_node(tmp_path, api__keys=[API_KEY])  # second-key removed
    try:
        status, _, _, _ = await request(node, "GET", "/v1/stats/categories", cookie=session)
        assert status == 401
    finally:
        await stop_node(node)


async def test_sign_out_clears_the_cookie(node: Node) -> None:
    session = await sign_in(node)
    status, _, headers, cookies = await request(node, "POST", "/dashboard/logout",
                                                cookie=session)
    assert status == 303 and headers["Location"] == "/dashboard"
    [cleared] = cookies
    assert SimpleCookie(cleared)[COOKIE].value == "" and "Max-Age=0" in cleared


async def test_summary_counts_what_the_node_holds(node: Node) -> None:
    session = await sign_in(node)
    await node.client("ann")
    await node.client("bob")
    await node.publish("news/a", {"x": 1})
    status, text, _, _ = await request(node, "GET", "/v1/dashboard/summary", cookie=session)
    summary = orjson.loads(text)
    assert status == 200
    assert summary["connections"] == {"ws": 2.0, "mqtt": 0.0}
    assert summary["messages_in"] >= 1 and summary["node"] == node.app.node.name
    assert abs(summary["ts"] - time.time()) < 60


async def test_static_files_and_the_vendored_chart_library(node: Node) -> None:
    for name in ("dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js",
                 "vendor/uPlot.min.css"):
        status, body, headers, _ = await request(node, "GET", f"/dashboard/static/{name}")
        assert status == 200 and len(body) > 100, name
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, _, _ = await request(node, "GET", "/dashboard/static/../app.py")
    assert status == 404
    status, _, _, _ = await request(node, "GET", "/dashboard/static/vendor/secret.txt")
    assert status == 404


async def test_recent_lists_the_newest_notifications_first(node: Node) -> None:
    """The page's list of recent notifications: sent at once and scheduled alike,
    newest first, each as ``GET /v1/notifications/{id}`` answers it."""
    ids = []
    for body in ({"users": ["ann"], "title": "one"},
                 {"users": ["ann", "bob"], "title": "later", "send_at": "2099-01-01T09:00:00Z"},
                 {"users": ["bob"], "title": "three", "category": "social"}):
        status, sent = await node.api("POST", "/v1/notify", body)
        assert status == 200, sent
        ids.append(sent["id"])

    status, page = await node.api("GET", "/v1/dashboard/recent?limit=10")
    assert status == 200
    listed = page["notifications"]
    assert sorted(n["id"] for n in listed) == sorted(ids)
    created = {}  # ms, as the store's stats record it
    for n in listed:
        status, one = await node.api("GET", f"/v1/notifications/{n['id']}")
        assert status == 200 and n == one
        record = await node.app.node.store.stats(n["id"])
        assert record is not None
        created[n["id"]] = record["created"]
        # GET answers seconds for a job and for one sent at once alike
        assert abs(n["created"] - record["created"] / 1000) < 1
    # newest first (the store's contract test orders sends at distinct times)
    assert [n["id"] for n in listed] == sorted(created, key=lambda i: (created[i], i),
                                               reverse=True)
    assert {n["id"]: n["status"] for n in listed}[ids[1]] == "scheduled"
    status, page = await node.api("GET", "/v1/dashboard/recent?limit=1")
    assert page["notifications"] == listed[:1]
    status, err = await node.api("GET", "/v1/dashboard/recent?limit=0")
    assert status == 400 and "limit" in str(err)
    status, _ = await node.api("GET", "/v1/dashboard/recent", key=None)
    assert status == 401
