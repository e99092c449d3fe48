"""Issue 10, scope 1: no session sees another user's ``users/{uid}/...`` messages.

Each test is a probe from the issue, run as the attacker would: a signed-in
user (or an anonymous session) asking for someone else's private data with a
wildcard subscribe, a ``since`` map, or an MQTT shared subscription, over WS
and MQTT (TCP and WebSocket). Positive controls show the same requests do
deliver what the session may see, so a test cannot pass by delivering nothing.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import Client, Node
from support.mqtt import NodeMaker, clients, make_node, paho, pub_token

_FIXTURES = (clients, make_node)


async def notify(node: Node, user: str, title: str) -> str:
    """A notification to ``user``; it also writes the retained ``users/{user}/unread``."""
    status, body = await node.api("POST", "/v1/notify", {"users": [user], "title": title})
    assert status == 200, body
    return str(body["id"])


async def settled(c: Client) -> list[dict[str, Any]]:
    """Every push the server queued before a ping's reply (the retained step is
    queued with the subscribe reply, so it is all here)."""
    assert (await c.request("ping"))["ok"]
    out = []
    while not c.pushes.empty():
        out.append(c.pushes.get_nowait())
    return out


def owners(items: list[dict[str, Any]]) -> set[str]:
    """Whose private data the items carry: by topic, or by the notification's title."""
    found = set()
    for item in items:
        topic = item.get("topic", "")
        if topic.startswith("users/"):
            found.add(topic.split("/")[1])
        if item.get("type") == "notification":
            found.add(str(item.get("title", "")).removeprefix("for-"))
    return found


# -- (a) retained messages through a wildcard subscribe ---------------------------------------

@pytest.mark.parametrize("flt", ["#", "+/+/unread", "+/bob/#", "+/+/+"])
async def test_ws_wildcard_subscribe_gets_no_foreign_retained(node: Node, flt: str) -> None:
    await notify(node, "bob", "for-bob")  # bob's retained users/bob/unread
    await notify(node, "alice", "for-alice")
    await node.publish("users/bob/profile/x", {"secret": "bob"}, retain=True)
    await node.publish("news/a", {"n": 1}, retain=True)
    alice = await node.client("alice")
    reply = await alice.request("subscribe", topic=flt)
    assert reply["ok"], reply
    got = await settled(alice)
    assert "bob" not in owners(got), got
    topics = {m.get("topic") for m in got}
    if flt in ("#", "+/+/unread", "+/+/+"):
        assert "users/alice/unread" in topics, got  # her own retained count still comes
    if flt == "#":
        assert "news/a" in topics


async def test_ws_anonymous_wildcard_gets_no_private_retained(make_node: NodeMaker) -> None:
    node = await make_node(auth__allow_anonymous=True)
    await notify(node, "bob", "for-bob")
    await node.publish("news/a", {"n": 1}, retain=True)
    anon = await node.client(None)
    assert (await anon.request("subscribe", topic="#"))["ok"]
    got = await settled(anon)
    assert owners(got) == set(), got
    assert [m["topic"] for m in got] == ["news/a"]


# -- (b) a since map naming another user's topics ---------------------------------------------

@pytest.mark.parametrize("flt", ["#", "+/bob/#", "+/+/notifications", "+/bob/notifications"])
@pytest.mark.parametrize("offset", ["foreign-epoch:0", "real"])
async def test_ws_since_map_cannot_read_foreign_history(node: Node, flt: str,
                                                        offset: str) -> None:
    await notify(node, "bob", "for-bob")
    await notify(node, "bob", "for-bob")
    if offset == "real":  # bob's own epoch, from the start
        _, body = await node.api("GET", "/v1/topics/users/bob/notifications/history")
        first = body["items"][0]["offset"]
        offset = first.rpartition(":")[0] + ":0"
    alice = await node.client("alice")
    reply = await alice.request("subscribe", topic=flt,
                                since={"users/bob/notifications": offset})
    assert not reply["ok"], reply
    assert reply["error"]["code"] == "forbidden"
    assert "bob" not in owners(await settled(alice))
    # the same map on her own topic recovers her history: the refusal is about whose it is
    await notify(node, "alice", "for-alice")
    mine = await alice.request("subscribe", topic="#",
                               since={"users/alice/notifications": "foreign-epoch:0"})
    assert mine["ok"], mine
    assert owners(mine["recovered"]) == {"alice"}


async def test_ws_since_map_with_events_topic_refused(node: Node) -> None:
    await notify(node, "bob", "for-bob")
    alice = await node.client("alice")
    reply = await alice.request("subscribe", topic="+/bob/events",
                                since={"users/bob/events": "x:0"})
    assert reply["error"]["code"] == "forbidden", reply


async def test_ws_anonymous_since_map_refused(make_node: NodeMaker) -> None:
    node = await make_node(auth__allow_anonymous=True)
    await notify(node, "bob", "for-bob")
    anon = await node.client(None)
    reply = await anon.request("subscribe", topic="#",
                               since={"users/bob/notifications": "x:0"})
    assert reply["error"]["code"] == "forbidden", reply
    assert await settled(anon) == []


# -- live delivery through wildcards (the hub) -----------------------------------------------

async def test_ws_live_wildcards_carry_only_own_private_messages(node: Node) -> None:
    alice = await node.client("alice")
    for flt in ("#", "+/+/notifications", "+/bob/#"):
        assert (await alice.request("subscribe", topic=flt))["ok"]
    await settled(alice)
    await notify(node, "bob", "for-bob")
    await node.publish("users/bob/x", {"secret": "bob"})
    await node.publish("news/end", {"n": 1})  # a marker: everything before it has been sent
    got = []
    while True:
        item = await alice.push()
        got.append(item)
        if item.get("topic") == "news/end":
            break
    assert "bob" not in owners(got), got


# -- MQTT: retained on wildcards, over TCP and over WebSocket -----------------------------------

@pytest.mark.parametrize("transport", ["tcp", "websockets"])
async def test_mqtt_wildcard_subscribe_gets_no_foreign_retained(
        node: Node, clients: list[Any], transport: str) -> None:
    await notify(node, "bob", "for-bob")
    await notify(node, "alice", "for-alice")
    await node.publish("users/bob/profile/x", {"secret": "bob"}, retain=True)
    port = node.app.mqtt_port if transport == "tcp" else node.app.ws_port
    alice = await paho(clients, port, "alice-dev", token=node.token("alice"), v5=True,
                       transport=transport)
    assert await alice.subscribe(("#", 1), ("+/+/unread", 1), ("+/bob/#", 1)) == [1, 1, 1]
    await node.publish("news/end", {"n": 1})
    seen = []
    while True:
        m = await alice.message()
        seen.append(m.topic)
        if m.topic == "news/end":
            break
    assert not [t for t in seen if t.startswith("users/bob/")], seen
    assert "users/alice/unread" in seen


async def test_mqtt_live_wildcard_carries_no_foreign_private(node: Node,
                                                             clients: list[Any]) -> None:
    alice = await paho(clients, node.app.mqtt_port, "alice-live", token=node.token("alice"))
    assert await alice.subscribe(("+/+/notifications", 1), ("news/#", 1)) == [1, 1]
    await notify(node, "bob", "for-bob")
    await notify(node, "alice", "for-alice")
    await node.publish("news/end", {"n": 1})
    seen = []
    while True:
        m = await alice.message()
        seen.append(m.topic)
        if m.topic == "news/end":
            break
    assert seen == ["users/alice/notifications", "news/end"], seen


# -- MQTT shared subscriptions -------------------------------------------------------------------

async def test_mqtt_share_group_on_own_private_topic_delivers(node: Node,
                                                              clients: list[Any]) -> None:
    """``$share/g/users/alice/#`` by alice was granted but delivered nothing."""
    alice = await paho(clients, node.app.mqtt_port, "alice-share", token=node.token("alice"),
                       v5=True)
    assert await alice.subscribe(("$share/g/users/alice/#", 1)) == [1]
    await notify(node, "alice", "for-alice")
    m = await alice.message()
    assert m.topic == "users/alice/notifications"
    assert orjson.loads(m.payload)["title"] == "for-alice"


async def test_mqtt_share_group_never_hands_a_member_someone_elses_message(
        node: Node, clients: list[Any]) -> None:
    """alice and bob share ``$share/g/#``: alice's private messages go to alice only."""
    port = node.app.mqtt_port
    alice = await paho(clients, port, "a-share", token=node.token("alice"), v5=True)
    bob = await paho(clients, port, "b-share", token=node.token("bob"), v5=True)
    assert await alice.subscribe(("$share/g/#", 1)) == [1]
    assert await bob.subscribe(("$share/g/#", 1), ("end/#", 1)) == [1, 1]
    for _ in range(4):  # round robin would hand bob every other one
        await notify(node, "alice", "for-alice")
    for _ in range(4):
        assert (await alice.message()).topic in ("users/alice/notifications",
                                                 "users/alice/unread")
    pub = await paho(clients, port, "pub", token=pub_token(node), v5=True)
    assert await pub.publish("end/x", b"1", qos=1) == 0
    got = []
    while True:
        m = await bob.message()
        if m.topic == "end/x":
            break
        got.append(m.topic)
    assert not [t for t in got if t.startswith("users/alice/")], got
