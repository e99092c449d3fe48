"""Issue 13: hostile input to feedback, over the real edges.

* WS ``feedback``: a missing or mistyped field, an unknown reason or a comment
  over 500 characters is ``bad_request`` naming the field; the connection
  stays open and nothing is counted.
* MQTT ``users/{uid}/feedback``: the same, and payloads that are not a JSON
  object, are PUBACK 0x99 (Payload format invalid) on 5.0 QoS 1 and dropped,
  acknowledged, on 3.1.1; nothing is counted.
* HTTP ``POST /v1/users/{uid}/feedback``: a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import MakeNode, Node
from support.http import assert_error
from support.mqtt import clients, paho

__all__ = ["clients"]  # the fixture, imported by name

LONG = "x" * 501
# (body without the notification id filled in, the field the error names)
BAD: list[tuple[dict[str, Any], str]] = [
    ({"reason": "other"}, "notification"),
    ({"notification": 7, "reason": "other"}, "notification"),
    ({"notification": "n" * 129, "reason": "other"}, "notification"),
    ({"notification": "{nid}"}, "reason"),
    ({"notification": "{nid}", "reason": "boring"}, "reason"),
    ({"notification": "{nid}", "reason": ["other"]}, "reason"),
    ({"notification": "{nid}", "reason": "other", "comment": LONG}, "comment"),
    ({"notification": "{nid}", "reason": "other", "comment": 5}, "comment"),
]


def filled(body: dict[str, Any], nid: str) -> dict[str, Any]:
    return {k: nid if v == "{nid}" else v for k, v in body.items()}


async def sent(node: Node) -> str:
    status, body = await node.api("POST", "/v1/notify", {"users": ["alice"], "title": "hi"})
    assert status == 200, body
    return str(body["id"])


async def counted(node: Node, nid: str) -> int:
    status, body = await node.api("GET", f"/v1/notifications/{nid}/stats")
    assert status == 200, body
    return int(body["feedback"])


@pytest.mark.parametrize(("body", "field"), BAD)
async def test_ws_bad_feedback_names_the_field(node: Node, body: dict[str, Any],
                                               field: str) -> None:
    nid = await sent(node)
    tab = await node.client("alice")
    reply = await tab.request("feedback", **filled(body, nid))
    assert (reply["ok"], reply["error"]["code"]) == (False, "bad_request"), reply
    message = reply["error"]["message"]
    assert message.removeprefix("feedback: ").startswith(field), reply  # the frame check's
    assert len(message) < 400
    assert await counted(node, nid) == 0
    # still open: a good one is recorded
    assert (await tab.request("feedback", notification=nid, reason="other"))["recorded"]
    assert await counted(node, nid) == 1


async def test_ws_feedback_needs_a_user(make_node: MakeNode) -> None:
    node = await make_node(auth__allow_anonymous=True)
    anon = await node.client(None)
    reply = await anon.request("feedback", notification="n_x", reason="other")
    assert (reply["ok"], reply["error"]["code"]) == (False, "forbidden"), reply


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_bad_feedback_is_refused_or_dropped(node: Node, clients: list[Any],
                                                       v5: bool) -> None:
    nid = await sent(node)
    dev = await paho(clients, node.app.mqtt_port, "phone", token=node.token("alice"), v5=v5)
    payloads = [orjson.dumps(filled(body, nid)) for body, _ in BAD] + [
        b"not json", b"[1, 2]", b"\xff", b"",
        orjson.dumps({"notification": nid, "reason": "other", "mood": "grumpy"})]
    for payload in payloads:
        code = await dev.publish("users/alice/feedback", payload, 1)
        assert code == (0x99 if v5 else 0), payload
    assert await counted(node, nid) == 0
    good = orjson.dumps({"notification": nid, "reason": "too_many"})
    assert await dev.publish("users/alice/feedback", good, 1) == 0  # still connected
    assert await counted(node, nid) == 1


@pytest.mark.parametrize(("body", "field"), [
    *BAD, ({"notification": "{nid}", "reason": "other", "mood": "grumpy"}, "unknown field")])
async def test_http_bad_feedback_names_the_field(node: Node, body: dict[str, Any],
                                                 field: str) -> None:
    nid = await sent(node)
    status, reply = await node.api("POST", "/v1/users/alice/feedback", filled(body, nid))
    message = assert_error(status, reply, 400, "bad_request")
    assert message.startswith(field), message
    assert len(message) < 400
    assert await counted(node, nid) == 0


async def test_http_feedback_body_must_be_an_object(node: Node) -> None:
    for raw in (b"[1]", b"nope"):
        status, reply = await node.api("POST", "/v1/users/alice/feedback", data=raw)
        assert_error(status, reply, 400, "malformed")
    status, reply = await node.api("POST", "/v1/users/a+b/feedback",
                                   {"notification": "n", "reason": "other"})
    assert assert_error(status, reply, 400, "bad_request").startswith("user ids")


async def test_a_comment_of_500_characters_is_the_longest_taken(node: Node) -> None:
    nid = await sent(node)
    other = await sent(node)
    status, reply = await node.api("POST", "/v1/users/alice/feedback",
                                   {"notification": nid, "reason": "other", "comment": "é" * 500})
    assert (status, reply) == (200, {"recorded": True})
    tab = await node.client("alice")
    assert (await tab.request("feedback", notification=other, reason="other",
                              comment="x" * 500))["recorded"]
