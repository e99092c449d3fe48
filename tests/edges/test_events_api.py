"""Events for backends end to end on a real node (issue 13): presence, tracked
engagement and platform push results become events with unique ids, readable
in order at ``GET /v1/events`` from a cursor (also after a restart), and
posted in signed batches to the events webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import orjson

from conftest import WAIT, Node, start_node, stop_node
from support.events_api import read_events
from support.push_standins import Reply, StandIn


async def test_presence_and_engagement_become_events_in_order(node: Node) -> None:
    c = await node.client("ann", device="laptop")
    status, body = await node.api("POST", "/v1/notify", {"users": ["ann"], "title": "hi"})
    assert status == 200
    nid = body["id"]
    await c.push()
    assert (await c.request("track", notification=nid, event="opened"))["recorded"]
    assert not (await c.request("track", notification=nid, event="opened"))["recorded"]
    events, cursor = await read_events(node, want=2)
    kinds = [(e["type"], e.get("user"), e.get("notification")) for e in events]
    assert ("online", "ann", None) in kinds and ("opened", "ann", nid) in kinds
    assert kinds.count(("opened", "ann", nid)) == 1  # a repeat is not an event
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(isinstance(e["ts"], float) for e in events)
    # nothing new: an empty page and the same cursor
    again, same = await read_events(node, cursor)
    assert again == [] and same == cursor


async def test_bad_cursor_and_limit_are_400(node: Node) -> None:
    for q in ("?since=not-a-cursor", "?limit=0", "?limit=5000", "?limit=x"):
        status, body = await node.api("GET", "/v1/events" + q)
        assert status == 400, (q, body)
    status, _ = await node.api("GET", "/v1/events", key=None)
    assert status == 401


async def test_a_backend_that_was_down_catches_up_after_a_restart(tmp_path: Path) -> None:
    node = await start_node(tmp_path)
    try:
        await node.client("ann")
        _, cursor = await read_events(node, want=1)
        status, body = await node.api("POST", "/v1/notify", {"users": ["bob"], "title": "x"})
        assert status == 200
        c = await node.client("bob")
        await c.request("track", notification=body["id"], event="clicked")
        await read_events(node, cursor, want=2)
    finally:
        await stop_node(node)
    node = await start_node(tmp_path)  # same data folder
    try:
        later, _ = await read_events(node, cursor, want=2)
        assert [e["type"] for e in later][:2] == ["online", "clicked"]
        assert later[0]["user"] == "bob"
    finally:
        await stop_node(node)


async def test_the_webhook_gets_signed_batches(tmp_path: Path) -> None:
    hook = StandIn(Reply(204))
    url = await hook.start() + "/events"
    node = await start_node(tmp_path, events__webhook=url, events__webhook_secret="k",
                            events__linger=0.05)
    try:
        await node.client("ann")
        await node.client("bob")
        async with asyncio.timeout(WAIT):
            while sum(len(orjson.loads(r.body)["events"]) for r in hook.requests) < 2:
                hook.arrived.clear()
                await hook.arrived.wait()
        got = [e for r in hook.requests for e in orjson.loads(r.body)["events"]]
        assert {(e["type"], e["user"]) for e in got} == {("online", "ann"), ("online", "bob")}
        for r in hook.requests:
            want = "sha256=" + hmac.new(b"k", r.body, hashlib.sha256).hexdigest()
            assert r.headers["x-tidings-signature"] == want
        # the same events are in the pull API, with the same ids
        pulled, _ = await read_events(node, want=2)
        assert {e["id"] for e in got} <= {e["id"] for e in pulled}
    finally:
        await stop_node(node)
        await hook.stop()
