"""Concurrent single-message ``POST /v1/publish`` requests share the node's store
groups, yet each gets its own answer: the offset of its own message."""

from __future__ import annotations

import asyncio

from conftest import Node
from support.mqtt import metric


async def test_concurrent_publishes_each_get_their_own_offset(node: Node) -> None:
    count = 50
    groups0 = await metric(node, "tidings_publish_group_size_count")
    answers = await asyncio.gather(*[
        node.api("POST", "/v1/publish", {"topic": f"h/{i % 4}", "data": {"i": i}})
        for i in range(count)])
    assert all(status == 200 for status, _ in answers), answers[:3]
    mine = {i: body["offset"] for i, (_, body) in enumerate(answers)}
    for t in range(4):
        status, page = await node.api("GET", f"/v1/topics/h/{t}/history?limit=100")
        assert status == 200
        stored = {m["offset"]: m["data"]["i"] for m in page["items"]}
        assert stored == {o: i for i, o in mine.items() if i % 4 == t}
    groups = await metric(node, "tidings_publish_group_size_count") - groups0
    assert groups < count, groups  # some requests shared a store call


async def test_one_idempotency_key_in_one_group_is_stored_once(node: Node) -> None:
    """Two concurrent retries with one Idempotency-Key: one message, one offset."""
    answers = await asyncio.gather(*[
        node.api("POST", "/v1/publish", {"topic": "h/once", "data": {"n": 1}},
                 headers={"Idempotency-Key": "k-1"}) for _ in range(2)])
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1]["offset"] == answers[1][1]["offset"]
    _, page = await node.api("GET", "/v1/topics/h/once/history?limit=10")
    assert [m["data"] for m in page["items"]] == [{"n": 1}]
