"""Issue 12: hostile input to the audience and preference surfaces, over the
real edges (the parsers' own hostile cases: test_personalisation.py).

* HTTP: bad tags, attributes, segment definitions and names, listing cursors
  and limits are a 400 naming the field, and change nothing.
* WS ``set_preferences``: a refused document is ``bad_request`` naming the
  field; the stored document and the connection stay as they were.
* MQTT ``users/{uid}/preferences/set``: a bad document is PUBACK 0x99
  (Payload format invalid) on 5.0 QoS 1 and dropped, acknowledged, on 3.1.1;
  nothing changes either way. Only the user themself may set them; nobody
  publishes on ``users/{uid}/preferences`` but the server.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import Node
from support.http import assert_error
from support.mqtt import clients, paho

__all__ = ["clients"]  # the fixture, imported by name

DOC = {"timezone": "Europe/Paris", "locale": "fr"}
BAD_DOCS: list[tuple[Any, str]] = [
    ({"timezone": "../../etc/passwd"}, "timezone"),
    ({"quiet_hours": {"start": "22:00", "end": "24:00"}}, "quiet_hours.end"),
    ({"caps": {"marketing": {"per_day": 1000}}}, "caps.marketing.per_day"),
    ({"categories": {"transactional": {"edges": []}}}, "categories.transactional"),
    ({"quiet_hours": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "quiet_hours.a"),
    ({"locale": "x" * 10_000}, "locale"),
]


async def keep_doc(node: Node) -> None:
    """Alice's preferences are :data:`DOC` (what each refusal must leave alone)."""
    status, _ = await node.api("PUT", "/v1/users/alice/preferences", DOC)
    assert status == 200


async def stored(node: Node) -> Any:
    status, body = await node.api("GET", "/v1/users/alice/preferences")
    assert status == 200
    return body


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("PUT", "/v1/users/alice/tags", {"tags": "sports"}, "tags"),
    ("PUT", "/v1/users/alice/tags", {"tags": ["ok", ""]}, "tags"),
    ("PUT", "/v1/users/alice/tags", {"tags": ["x" * 65]}, "tags"),
    ("PUT", "/v1/users/alice/tags", {"tags": [str(i) for i in range(101)]}, "tags"),
    ("PUT", "/v1/users/alice/tags", {}, "tags"),
    ("POST", "/v1/users/alice/tags", {"add": [1]}, "add"),
    ("POST", "/v1/users/alice/tags", {"remove": {"a": 1}}, "remove"),
    ("PUT", "/v1/users/alice/attributes", {"nested": {"a": 1}}, "attributes.nested"),
    ("PUT", "/v1/users/alice/attributes", {f"a{i}": i for i in range(51)}, "attributes"),
    ("PUT", "/v1/users/alice/attributes", {"name": "x" * 257}, "attributes.name"),
    ("PUT", "/v1/segments/s", {"attributes": {"age": {"between": [1, 2]}}},
     "segment.attributes.age"),
    ("PUT", "/v1/segments/s", {"tags": {"some": ["a"]}}, "segment.tags.some"),
    ("PUT", "/v1/segments/s", {"active_within": "a week"}, "segment.active_within"),
    ("PUT", "/v1/segments/s", {"who": "everyone"}, "segment.who"),
    ("PUT", "/v1/segments/" + "s" * 65, {}, "segment"),
    ("PUT", "/v1/segments/bad%20name", {}, "segment"),
])
async def test_bad_audience_input_names_the_field(node: Node, method: str, path: str,
                                                  body: Any, field: str) -> None:
    status, reply = await node.api(method, path, body)
    message = assert_error(status, reply, 400, "bad_request")
    assert message.startswith(field), message
    assert len(message) < 400  # a short prefix of the value at most
    for read in ("/v1/users/alice/tags", "/v1/users/alice/attributes"):
        status, reply = await node.api("GET", read)
        assert status == 200 and reply in ({"tags": []}, {})
    status, reply = await node.api("GET", "/v1/segments/s")
    assert status == 404


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=many", "limit"),
    ("cursor=" + "c" * 300, "cursor"),
])
async def test_bad_listing_parameters_name_the_field(node: Node, query: str, field: str
                                                     ) -> None:
    status, _ = await node.api("PUT", "/v1/segments/all", {"tags": ["a"]})
    assert status == 201
    status, reply = await node.api("GET", f"/v1/segments/all/users?{query}")
    assert assert_error(status, reply, 400, "bad_request").startswith(field)


@pytest.mark.parametrize(("doc", "field"), BAD_DOCS)
async def test_ws_refused_document_changes_nothing(node: Node, doc: Any, field: str) -> None:
    tab = await node.client("alice")
    assert (await tab.request("set_preferences", preferences=DOC))["ok"]
    for merge in (False, True):
        reply = await tab.request("set_preferences", preferences=doc, merge=merge)
        assert (reply["ok"], reply["error"]["code"]) == (False, "bad_request"), reply
        assert reply["error"]["message"].startswith(field), reply
        assert len(reply["error"]["message"]) < 400
    for args in ({"preferences": [1]}, {"preferences": {}, "merge": "yes"}, {}):
        reply = await tab.request("set_preferences", **args)
        assert (reply["ok"], reply["error"]["code"]) == (False, "bad_request"), reply
    assert (await tab.request("preferences"))["preferences"] == DOC  # still open, unchanged
    assert await stored(node) == DOC


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_bad_document_is_refused_or_dropped(node: Node, clients: list[Any],
                                                       v5: bool) -> None:
    await keep_doc(node)
    dev = await paho(clients, node.app.mqtt_port, "watch", token=node.token("alice"), v5=v5)
    assert await dev.subscribe(("users/alice/preferences", 1)) == [1]
    await dev.message()  # the retained document
    payloads = [orjson.dumps(doc) for doc, _ in BAD_DOCS] + [b"not json", b"[1, 2]", b"\xff"]
    for payload in payloads:
        code = await dev.publish("users/alice/preferences/set", payload, 1)
        assert code == (0x99 if v5 else 0), payload
    await dev.no_message()  # nothing announced
    assert await stored(node) == DOC
    # the connection is still in use: a good one applies
    assert await dev.publish("users/alice/preferences/set", b'{"locale": "de"}', 1) == 0
    assert orjson.loads((await dev.message()).payload) == {**DOC, "locale": "de"}


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_only_the_user_sets_their_preferences(node: Node, clients: list[Any],
                                                    v5: bool) -> None:
    await keep_doc(node)
    mallory = await paho(clients, node.app.mqtt_port, "m", token=node.token("mallory"), v5=v5)
    alice = await paho(clients, node.app.mqtt_port, "a", token=node.token("alice"), v5=v5)
    forged = orjson.dumps({"locale": "xx"})
    refused = 0x87 if v5 else 0  # 3.1.1 acknowledges and drops [MQTT-3.3.5-2]
    assert await mallory.publish("users/alice/preferences/set", forged, 1) == refused
    assert await mallory.publish("users/alice/preferences", forged, 1, retain=True) == refused
    # the server's own topic: not even the user writes it directly
    assert await alice.publish("users/alice/preferences", forged, 1, retain=True) == refused
    tab = await node.client("alice")
    reply = await tab.request("publish", topic="users/alice/preferences", data={"locale": "xx"})
    assert reply["error"]["code"] == "forbidden"
    assert (await mallory.subscribe(("users/alice/preferences", 1))) == [0x87 if v5 else 0x80]
    assert await stored(node) == DOC
    watcher = await paho(clients, node.app.mqtt_port, "w", token=node.token("alice"), v5=v5)
    assert await watcher.subscribe(("users/alice/preferences", 1)) == [1]
    assert orjson.loads((await watcher.message()).payload) == DOC
