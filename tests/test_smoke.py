"""The issue's headline story, end to end: subscribe, publish by HTTP, recover by offset."""

from __future__ import annotations

from conftest import Node


async def test_subscribe_publish_recover(node: Node) -> None:
    c = await node.client("alice")
    r = await c.request("subscribe", topic="news/+")
    assert r["ok"] and r["complete"] is True
    await node.publish("news/sports", {"score": "2-1"})
    m = await c.push()
    assert m["type"] == "message" and m["topic"] == "news/sports"
    assert m["data"] == {"score": "2-1"} and m["retained"] is False
    last = m["offset"]
    await c.close()
    await node.publish("news/sports", {"score": "3-1"})
    await node.publish("news/sports", {"score": "3-2"})
    c2 = await node.client("alice")
    r = await c2.request("subscribe", topic="news/sports", since=last)
    assert r["ok"], r
    assert [m["data"] for m in r["recovered"]] == [{"score": "3-1"}, {"score": "3-2"}]
    assert r["complete"] is True
    await c2.no_push()
