"""Publishes from one connection are pipelined, yet each topic keeps its order."""

from __future__ import annotations

import asyncio

from conftest import Node


async def test_many_publishes_keep_per_topic_order_and_all_get_replies(node: Node) -> None:
    token = node.token("pub", publish=["p/#"])
    publisher = await node.client("pub", token=token)
    sub = await node.client("bob")
    assert (await sub.request("subscribe", topic="p/#"))["ok"]
    n, topics = 90, 7  # under the default burst of 100 commands
    replies = await asyncio.gather(*[
        publisher.request("publish", topic=f"p/{i % topics}", data={"i": i})
        for i in range(n)])
    assert all(r["ok"] for r in replies)
    got = [await sub.push() for _ in range(n)]
    for t in range(topics):
        mine = [m["data"]["i"] for m in got if m["topic"] == f"p/{t}"]
        assert mine == list(range(t, n, topics))  # in publish order
        seqs = [int(m["offset"].rpartition(":")[2]) for m in got if m["topic"] == f"p/{t}"]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # a non-publish command after them sees them all done
    _, hist = await node.api("GET", "/v1/topics/p/0/history?limit=1000")
    assert len(hist["items"]) == len(range(0, n, topics))
