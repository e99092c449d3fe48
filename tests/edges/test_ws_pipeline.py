"""Publishes from one connection are pipelined, yet each topic keeps its order:
the node stores what a connection sent back to back in groups, and every reply
comes in the order of the requests, only once its message is stored."""

from __future__ import annotations

import asyncio

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from conftest import WAIT, MakeNode, Node
from support.mqtt import metric
from support.redis_servers import RedisFactory

pytest_plugins = ["support.redis_servers"]


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


async def publisher_socket(node: Node, user: str, publish: list[str]) -> ClientConnection:
    """A raw client connection (replies read in the order they come), connected."""
    ws = await websockets.connect(node.ws_url, subprotocols=[Subprotocol("tidings.v1.json")],
                                  max_size=None, open_timeout=WAIT)
    await ws.send(orjson.dumps({"op": "connect", "id": 0,
                                "token": node.token(user, publish=publish)}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))["ok"]
    return ws


async def test_a_burst_is_stored_in_groups_and_replied_in_order(make_node: MakeNode) -> None:
    """200 publishes sent back to back (three topics interleaved, one frame each):
    the replies come in the order sent, each topic's offsets are consecutive in that
    order, subscribers get every message in that order, and the node stored them in
    groups (fewer store calls than messages)."""
    n = await make_node(ws__commands_burst=1000)
    sub = await n.client("bob")
    assert (await sub.request("subscribe", topic="b/#"))["ok"]
    ws = await publisher_socket(n, "pub", ["b/#"])
    count, topics = 200, 3
    groups0 = await metric(n, "tidings_publish_group_size_count")
    stored0 = await metric(n, "tidings_publish_group_size_sum")
    for i in range(1, count + 1):
        await ws.send(orjson.dumps({"op": "publish", "id": i, "topic": f"b/{i % topics}",
                                    "data": {"i": i}}).decode())
    replies = [orjson.loads(await asyncio.wait_for(ws.recv(), WAIT)) for _ in range(count)]
    assert [r["id"] for r in replies] == list(range(1, count + 1))
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]
    for t in range(topics):
        seqs = [int(r["offset"].rpartition(":")[2]) for r in replies if r["id"] % topics == t]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    got = [await sub.push() for _ in range(count)]
    for t in range(topics):
        assert [m["data"]["i"] for m in got if m["topic"] == f"b/{t}"] == \
            list(range(t or topics, count + 1, topics))
    # (the node's own topics, e.g. $SYS, may have published meanwhile)
    groups = await metric(n, "tidings_publish_group_size_count") - groups0
    stored = await metric(n, "tidings_publish_group_size_sum") - stored0
    assert stored >= count and groups <= count / 2, (groups, stored)
    await ws.close()


async def test_a_group_the_store_cannot_take_is_refused_whole(
        make_node: MakeNode, redis_factory: RedisFactory) -> None:
    """Redis down: every publish of a pipelined burst gets ``unavailable``, none is
    delivered, and none took an offset (Redis back, the topic goes on from the last
    message that was acknowledged)."""
    redis = redis_factory.server(appendonly=True, appendfsync="always")
    n = await make_node(ws__commands_burst=1000, store__backend="redis", redis__url=redis.url)
    sub = await n.client("bob")
    assert (await sub.request("subscribe", topic="d/t"))["ok"]
    ws = await publisher_socket(n, "pub", ["d/#"])
    before = await n.publish("d/t", {"i": 0})
    assert (await sub.push())["offset"] == before
    redis.stop()
    count = 50
    for i in range(1, count + 1):
        await ws.send(orjson.dumps({"op": "publish", "id": i, "topic": "d/t",
                                    "data": {"i": i}}).decode())
    replies = [orjson.loads(await asyncio.wait_for(ws.recv(), WAIT * 2)) for _ in range(count)]
    assert [r["id"] for r in replies] == list(range(1, count + 1))
    assert {(r["ok"], r["error"]["code"]) for r in replies} == {(False, "unavailable")}
    await sub.no_push()
    redis.start()
    deadline = asyncio.get_running_loop().time() + WAIT * 2
    while True:  # the store reconnects by itself
        status, body = await n.api("POST", "/v1/publish", {"topic": "d/t", "data": {"i": -1}})
        if status == 200:
            break
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.05)
    assert int(body["offset"].rpartition(":")[2]) == int(before.rpartition(":")[2]) + 1
    await ws.close()
