"""The inbox story of issue 3, as a quick end-to-end check while building."""

from __future__ import annotations

from conftest import Node


async def test_notify_read_sync_and_offline_recovery(node: Node) -> None:
    laptop = await node.client("alice", device="laptop")
    phone = await node.client("alice", device="phone")
    tablet = await node.client("alice", device="tablet")
    last = tablet.hello["offset"]
    await tablet.close()
    bob = await node.client("bob")
    status, body = await node.api("POST", "/v1/notify", {
        "users": ["alice"], "title": "Your order shipped", "body": "...",
        "category": "orders", "data": {"order": 42}})
    assert status == 200, body
    assert body["targets"] == 1
    n1 = await laptop.push()
    n2 = await phone.push()
    assert n1["type"] == "notification" and n1["unread"] == 1 and n1["id"] == body["id"]
    assert n2["id"] == body["id"]
    r = await phone.request("read", ids=[body["id"]])
    assert r["ok"] and r["unread"] == 0
    ev = await laptop.push()
    assert ev["type"] == "read" and ev["unread"] == 0 and ev["device"] == "phone"
    assert ev["ids"] == [body["id"]]
    tablet2 = await node.client("alice", device="tablet", since=last)
    hello = tablet2.hello
    assert hello["unread"] == 0
    assert [n["id"] for n in hello["recovered"]] == [body["id"]]
    assert hello["recovered"][0]["read"] is True
    status, inbox = await node.api("GET", "/v1/users/alice/inbox")
    assert status == 200 and inbox["unread"] == 0 and inbox["items"][0]["read"] is True
    await bob.no_push()
    status, devs = await node.api("GET", "/v1/users/alice/devices")
    assert sorted(d["device"] for d in devs["devices"]) == ["laptop", "phone", "tablet"]
