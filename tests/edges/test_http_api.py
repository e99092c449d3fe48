"""The backend HTTP API end to end: real aiohttp requests against a real node.

DESIGN.md, "HTTP API": ``Authorization: Bearer <api key>``; JSON in and out;
every error is ``{"error": {"code", "message"}}`` with a fitting status.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import API_KEY, MakeNode, Node
from support.http import assert_error


async def history(node: Node, topic: str, **query: Any) -> dict[str, Any]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = await node.api("GET", f"/v1/topics/{topic}/history" + (f"?{qs}" if qs else ""))
    assert status == 200, body
    return dict(body)


# -- publish -----------------------------------------------------------------------------


async def test_publish_returns_the_offset_kept_in_history(node: Node) -> None:
    status, body = await node.api("POST", "/v1/publish",
                                  {"topic": "news/sports", "data": {"score": "1-0"}})
    assert status == 200 and set(body) == {"offset"} and isinstance(body["offset"], str)
    h = await history(node, "news/sports")
    assert [(i["offset"], i["data"]) for i in h["items"]] == [(body["offset"], {"score": "1-0"})]


async def test_publish_reaches_a_ws_subscriber(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="news/+"))["ok"]
    offset = await node.publish("news/tech", ["any", "json", 1, None])
    m = await c.push()
    assert m["offset"] == offset and m["data"] == ["any", "json", 1, None]


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"data": 1}, "bad_request", "topic"),
    ({"topic": "news/+", "data": 1}, "bad_topic", "wildcard"),
    ({"topic": "news/#", "data": 1}, "bad_topic", "wildcard"),
    ({"topic": "", "data": 1}, "bad_topic", "empty"),
    ({"topic": 5, "data": 1}, "bad_request", "topic"),
    ({"topic": "news/a"}, "bad_request", "data"),
    ({"topic": "news/a", "data": 1, "retain": "yes"}, "bad_request", "retain"),
])
async def test_publish_rejects_bad_fields(node: Node, body: dict[str, Any], code: str,
                                          words: str) -> None:
    status, reply = await node.api("POST", "/v1/publish", body)
    assert words in assert_error(status, reply, 400, code)


@pytest.mark.parametrize(("raw", "words"), [
    (b"{not json", "JSON"),
    (b"", "JSON"),
    (b"[1, 2]", "object"),
    (b'"topic"', "object"),
])
async def test_publish_rejects_a_body_that_is_not_a_json_object(node: Node, raw: bytes,
                                                                words: str) -> None:
    status, reply = await node.api("POST", "/v1/publish", data=raw)
    assert words in assert_error(status, reply, 400, "malformed")


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
async def test_publish_needs_a_valid_api_key(node: Node, key: str | None) -> None:
    status, reply = await node.api("POST", "/v1/publish", {"topic": "a", "data": 1}, key=key)
    assert_error(status, reply, 401, "unauthorized")
    assert (await history(node, "a"))["items"] == []


async def test_publish_with_another_auth_scheme_is_unauthorized(node: Node) -> None:
    status, reply = await node.api("POST", "/v1/publish", {"topic": "a", "data": 1}, key=None,
                                   headers={"Authorization": f"Basic {API_KEY}"})
    assert_error(status, reply, 401, "unauthorized")


async def test_publish_body_over_the_limit_is_413(make_node: MakeNode) -> None:
    node = await make_node(api__max_body_size=1024)
    status, reply = await node.api("POST", "/v1/publish", {"topic": "a", "data": "x" * 2048})
    assert_error(status, reply, 413, "too_large")
    assert (await history(node, "a"))["items"] == []
    status, _ = await node.api("POST", "/v1/publish", {"topic": "a", "data": "x" * 100})
    assert status == 200


async def test_idempotency_key_makes_a_retry_harmless(node: Node) -> None:
    body = {"topic": "orders/1", "data": {"state": "paid"}}
    h = {"Idempotency-Key": "order-1-paid"}
    s1, r1 = await node.api("POST", "/v1/publish", body, headers=h)
    s2, r2 = await node.api("POST", "/v1/publish", body, headers=h)
    assert s1 == s2 == 200 and r1 == r2
    items = (await history(node, "orders/1"))["items"]
    assert [i["offset"] for i in items] == [r1["offset"]]
    s3, r3 = await node.api("POST", "/v1/publish", body, headers={"Idempotency-Key": "other"})
    assert s3 == 200 and r3["offset"] != r1["offset"]
    assert len((await history(node, "orders/1"))["items"]) == 2


async def test_idempotency_retry_is_not_delivered_twice(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="orders/+"))["ok"]
    h = {"Idempotency-Key": "k1"}
    for _ in range(3):
        status, _ = await node.api("POST", "/v1/publish", {"topic": "orders/2", "data": 1},
                                   headers=h)
        assert status == 200
    await node.publish("orders/after", 2)
    assert (await c.push())["topic"] == "orders/2"
    assert (await c.push())["topic"] == "orders/after"  # no second copy in between


async def test_idempotency_keys_are_scoped_per_api_key(make_node: MakeNode) -> None:
    other = "second-key-0123456789"
    node = await make_node(api__keys=[API_KEY, other])
    h = {"Idempotency-Key": "same"}
    body = {"topic": "orders/3", "data": 1}
    _, a = await node.api("POST", "/v1/publish", body, headers=h)
    _, b = await node.api("POST", "/v1/publish", body, headers=h, key=other)
    assert a["offset"] != b["offset"]


async def test_overlong_idempotency_key_is_400(node: Node) -> None:
    status, reply = await node.api("POST", "/v1/publish", {"topic": "a", "data": 1},
                                   headers={"Idempotency-Key": "k" * 256})
    assert "Idempotency-Key" in assert_error(status, reply, 400, "bad_request")


# -- history -----------------------------------------------------------------------------


async def test_history_with_since_and_limit(node: Node) -> None:
    offsets = [await node.publish("feed/h", {"n": n}) for n in range(6)]
    h = await history(node, "feed/h")
    assert [i["offset"] for i in h["items"]] == offsets
    assert h["topic"] == "feed/h" and h["offset"] == offsets[-1] and h["complete"] is True
    assert all(i["type"] == "message" and i["topic"] == "feed/h" for i in h["items"])
    h = await history(node, "feed/h", since=offsets[1], limit=2)
    assert [i["data"] for i in h["items"]] == [{"n": 2}, {"n": 3}]
    assert h["complete"] is False  # more follow: the page does not reach the end
    h = await history(node, "feed/h", since=offsets[3])
    assert [i["data"] for i in h["items"]] == [{"n": 4}, {"n": 5}] and h["complete"] is True
    h = await history(node, "feed/h", since=offsets[-1])
    assert h["items"] == [] and h["complete"] is True


async def test_history_of_an_unknown_topic_is_empty(node: Node) -> None:
    h = await history(node, "never/published")
    assert h["items"] == []


@pytest.mark.parametrize(("query", "words"), [
    ("since=nope", "since"),
    ("since=abc:xyz", "since"),
    ("limit=0", "limit"),
    ("limit=1001", "limit"),
    ("limit=ten", "limit"),
])
async def test_history_rejects_bad_query(node: Node, query: str, words: str) -> None:
    await node.publish("feed/q", 1)
    status, reply = await node.api("GET", f"/v1/topics/feed/q/history?{query}")
    assert words in assert_error(status, reply, 400, "bad_request")


async def test_history_of_a_wildcard_is_bad_topic(node: Node) -> None:
    status, reply = await node.api("GET", "/v1/topics/feed/+/history")
    assert_error(status, reply, 400, "bad_topic")


async def test_history_needs_an_api_key(node: Node) -> None:
    status, reply = await node.api("GET", "/v1/topics/feed/q/history", key=None)
    assert_error(status, reply, 401, "unauthorized")


# -- tokens ------------------------------------------------------------------------------


async def test_token_endpoint_issues_a_token_that_connects_with_its_grants(node: Node) -> None:
    status, body = await node.api("POST", "/v1/tokens", {
        "user": "carol", "ttl": 120, "subscribe": ["news/#"], "publish": ["chat/#"]})
    assert status == 200 and isinstance(body["token"], str), body
    assert body["expires_in"] == 120
    c = await node.client(None, token=body["token"])
    assert c.hello["user"] == "carol"
    assert (await c.request("subscribe", topic="news/sports"))["ok"]
    r = await c.request("subscribe", topic="weather/today")
    assert r["ok"] is False and r["error"]["code"] == "forbidden"
    assert (await c.request("publish", topic="chat/room", data="hi"))["ok"]
    r = await c.request("publish", topic="news/sports", data="hi")
    assert r["ok"] is False and r["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("body", "words"), [
    ({}, "user"),
    ({"user": ""}, "user"),
    ({"user": "a/b"}, "user"),
    ({"user": 7}, "user"),
    ({"user": "carol", "ttl": 0}, "ttl"),
    ({"user": "carol", "ttl": 10**9}, "ttl"),
    ({"user": "carol", "ttl": "60"}, "ttl"),
    ({"user": "carol", "subscribe": "news/#"}, "subscribe"),
    ({"user": "carol", "publish": [1]}, "publish"),
])
async def test_token_endpoint_rejects_bad_requests(node: Node, body: dict[str, Any],
                                                   words: str) -> None:
    status, reply = await node.api("POST", "/v1/tokens", body)
    assert words in assert_error(status, reply, 400, "bad_request")


async def test_token_endpoint_needs_an_api_key(node: Node) -> None:
    status, reply = await node.api("POST", "/v1/tokens", {"user": "carol"}, key=None)
    assert_error(status, reply, 401, "unauthorized")


# -- health, readiness, metrics, unknown paths -------------------------------------------


async def test_health_and_readiness_need_no_key(node: Node) -> None:
    for path, state in (("/healthz", "ok"), ("/readyz", "ready")):
        status, body = await node.api("GET", path, key=None)
        assert status == 200 and body["status"] == state and body["node"] == "test-node"


async def test_readyz_is_503_when_the_store_is_gone(make_node: MakeNode) -> None:
    node = await make_node()
    await node.app.node.store.close()
    status, body = await node.api("GET", "/readyz", key=None)
    assert_error(status, body, 503, "unavailable")
    status, _ = await node.api("GET", "/healthz", key=None)
    assert status == 200  # alive, just not ready


def samples(text: str) -> dict[str, float]:
    """Prometheus text -> {series: value}; also checks every line is well formed."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        series, _, value = line.rpartition(" ")
        out[series] = float(value)
    return out


async def test_metrics_are_prometheus_text_and_count(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="m/+"))["ok"]
    await node.publish("m/a", 1)
    await c.push()
    await node.api("POST", "/v1/publish", {"topic": "m/+", "data": 1})  # a bad_topic error
    async with node.http.get(node.api_url + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    m = samples(text)
    assert "# TYPE tidings_ws_connections gauge" in text
    assert "# TYPE tidings_messages_in_total counter" in text
    assert m["tidings_ws_connections"] == 1
    assert m["tidings_messages_in_total"] == 1
    assert m["tidings_deliveries_total"] >= 1
    assert m['tidings_errors_total{code="bad_topic"}'] == 1
    await node.publish("m/b", 2)
    await c.push()
    m = samples((await node.api("GET", "/metrics", key=None))[1])
    assert m["tidings_messages_in_total"] == 2


async def test_unknown_path_is_a_json_404(node: Node) -> None:
    status, reply = await node.api("GET", "/v1/nothing/here")
    assert_error(status, reply, 404, "not_found")


async def test_wrong_method_is_a_json_405(node: Node) -> None:
    status, reply = await node.api("GET", "/v1/publish")
    assert_error(status, reply, 405, "method_not_allowed")


async def test_errors_are_json_with_the_content_type(node: Node) -> None:
    async with node.http.post(node.api_url + "/v1/publish", data=b"{}") as r:
        assert r.status == 401 and r.content_type == "application/json"
        body = orjson.loads(await r.read())
    assert_error(r.status, body, 401, "unauthorized")


async def test_publish_batch_stores_and_delivers_each_in_order(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="b/+"))["ok"]
    msgs = [{"topic": f"b/{i % 3}", "data": {"i": i}} for i in range(30)]
    status, body = await node.api("POST", "/v1/publish/batch", {"messages": msgs})
    assert status == 200, body
    assert len(body["offsets"]) == 30 and body["errors"] == []
    got = [await c.push() for _ in range(30)]
    for t in ("b/0", "b/1", "b/2"):
        mine = [m["data"]["i"] for m in got if m["topic"] == t]
        assert mine == sorted(mine)  # each topic in publish order
    assert sorted(m["data"]["i"] for m in got) == list(range(30))
    status, hist = await node.api("GET", "/v1/topics/b/0/history")
    assert [m["data"]["i"] for m in hist["items"]] == list(range(0, 30, 3))


async def test_publish_batch_is_validated_before_anything_is_stored(node: Node) -> None:
    msgs = [{"topic": "ok/1", "data": 1}, {"topic": "bad/+", "data": 2}]
    status, body = await node.api("POST", "/v1/publish/batch", {"messages": msgs})
    assert status == 400 and "messages[1]" in body["error"]["message"]
    status, hist = await node.api("GET", "/v1/topics/ok/1/history")
    assert hist["items"] == []
    bad: dict[str, Any]
    for bad in ({"messages": []}, {"messages": "x"}, {"messages": [1]}):
        status, body = await node.api("POST", "/v1/publish/batch", bad)
        assert status == 400, bad
