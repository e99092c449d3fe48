"""A user's own preferences over the WebSocket and MQTT (issue 12), with real
clients: the WS ``preferences`` / ``set_preferences`` ops, the retained
``users/{uid}/preferences`` topic and MQTT's ``users/{uid}/preferences/set``.
A change from any edge reaches every device of the user, on either edge, and
the HTTP API reads what they stored. Bad documents: tests/hostile/.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import MakeNode, Node
from support.mqtt import clients, paho

__all__ = ["clients"]  # the fixture, imported by name

TOPIC = "users/alice/preferences"


async def stored(node: Node, user: str = "alice") -> Any:
    status, body = await node.api("GET", f"/v1/users/{user}/preferences")
    assert status == 200, body
    return body


async def test_ws_reads_and_sets_its_own_preferences(node: Node) -> None:
    tab = await node.client("alice")
    reply = await tab.request("preferences")
    assert reply == {"id": reply["id"], "ok": True, "preferences": {}}
    doc = {"timezone": "Europe/Paris", "quiet_hours": {"start": "22:00", "end": "07:00"}}
    reply = await tab.request("set_preferences", preferences=doc)
    assert reply == {"id": reply["id"], "ok": True, "preferences": doc}
    merged = await tab.request("set_preferences", merge=True,
                               preferences={"locale": "fr", "quiet_hours": None})
    assert merged["preferences"] == {"timezone": "Europe/Paris", "locale": "fr"}
    # without merge the document is replaced
    assert (await tab.request("set_preferences", preferences={"locale": "de"}))[
        "preferences"] == {"locale": "de"}
    assert (await tab.request("preferences"))["preferences"] == {"locale": "de"}
    assert await stored(node) == {"locale": "de"}
    assert await stored(node, "bob") == {}  # only the session's own user


async def test_ws_preference_ops_need_a_user(make_node: MakeNode) -> None:
    node = await make_node(auth__allow_anonymous=True)
    anon = await node.client(None)
    calls: list[tuple[str, dict[str, Any]]] = [("preferences", {}),
                                               ("set_preferences", {"preferences": {}})]
    for op, args in calls:
        reply = await anon.request(op, **args)
        assert (reply["ok"], reply["error"]["code"]) == (False, "forbidden"), reply


async def test_a_change_on_ws_reaches_the_users_mqtt_device_and_other_tab(
        node: Node, clients: list[Any]) -> None:
    dev = await paho(clients, node.app.mqtt_port, "watch", token=node.token("alice"), v5=True)
    assert await dev.subscribe((TOPIC, 1)) == [1]
    other = await node.client("alice")
    assert (await other.request("subscribe", topic=TOPIC))["ok"]
    tab = await node.client("alice")
    await tab.request("set_preferences", preferences={"locale": "zh-CN"})
    m = await dev.message()
    assert (m.topic, orjson.loads(m.payload)) == (TOPIC, {"locale": "zh-CN"})
    push = await other.push()
    assert (push["type"], push["topic"], push["data"]) == ("message", TOPIC, {"locale": "zh-CN"})


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_gets_its_document_retained_and_sets_it_by_merge(
        node: Node, clients: list[Any], v5: bool) -> None:
    status, _ = await node.api("PUT", "/v1/users/alice/preferences",
                               {"timezone": "Asia/Tokyo", "locale": "ja"})
    assert status == 200
    dev = await paho(clients, node.app.mqtt_port, "watch", token=node.token("alice"), v5=v5)
    assert await dev.subscribe((TOPIC, 1)) == [1]
    m = await dev.message()
    assert (orjson.loads(m.payload), m.retain) == ({"timezone": "Asia/Tokyo", "locale": "ja"},
                                                   True)
    tab = await node.client("alice")
    assert (await tab.request("subscribe", topic=TOPIC))["ok"]
    assert (await tab.push())["data"] == {"timezone": "Asia/Tokyo", "locale": "ja"}

    patch = {"locale": None, "categories": {"marketing": {"enabled": False}}}
    assert await dev.publish(TOPIC + "/set", orjson.dumps(patch), 1) == 0
    want = {"timezone": "Asia/Tokyo", "categories": {"marketing": {"enabled": False}}}
    m = await dev.message()
    assert (m.topic, orjson.loads(m.payload)) == (TOPIC, want)
    assert (await tab.push())["data"] == want
    assert await stored(node) == want
    await dev.no_message()  # the set message itself is applied, never forwarded
