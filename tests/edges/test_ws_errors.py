"""Error replies that carry the request id and name the problem."""

from __future__ import annotations

from conftest import Node


async def test_second_connect_is_refused_with_its_id(node: Node) -> None:
    c = await node.client("alice")
    r = await c.request("connect", token=node.token("alice"))
    assert r["ok"] is False and r["error"]["code"] == "bad_request"
    assert "already connected" in r["error"]["message"]
    assert (await c.request("ping"))["ok"] is True  # the session goes on


async def test_a_bad_inbox_cursor_is_an_error_not_the_first_page(node: Node) -> None:
    c = await node.client("alice")
    r = await c.request("inbox", before="not-a-cursor")
    assert r["ok"] is False and r["error"]["code"] == "bad_request"
    status, body = await node.api("GET", "/v1/users/alice/inbox?before=zz")
    assert status == 400 and body["error"]["code"] == "bad_request"


async def test_http_read_checks_the_device_name(node: Node) -> None:
    status, body = await node.api("POST", "/v1/users/alice/read",
                                  {"all": True, "device": "x" * 200})
    assert status == 400 and "device" in body["error"]["message"]
