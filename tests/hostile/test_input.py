"""Issue 10: reserved ``$`` topics from every edge, and strict parsing of hostile input.

* No client publishes into ``$SYS/...`` or any ``$`` topic: not the backend's
  API key (HTTP 403 ``reserved_topic``), not a WS session (``forbidden``), not
  an MQTT client (5.0: PUBACK 0x87; 3.1.1 has no refusal code, so the message
  is acknowledged and dropped [MQTT-3.3.5-2]).
* Offsets and cursors are ASCII digits only: ``"x:²"`` is a bad request, not
  ``internal`` (and on ``connect``, not silence).
* A token with ``exp = 10**400`` is refused at once (WS 4001, MQTT CONNACK).
* A text frame with invalid UTF-8 closes the connection with 1007.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from conftest import JWT_SECRET, WAIT, Node
from support.mqtt import clients, paho, pub_token

_FIXTURES = (clients,)


# -- $ topics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", ["$SYS/broker/uptime", "$SYS/x", "$other/x"])
async def test_api_key_cannot_publish_reserved(node: Node, topic: str) -> None:
    status, body = await node.api("POST", "/v1/publish",
                                  {"topic": topic, "data": 1, "retain": True})
    assert status == 403, body
    assert body["error"]["code"] == "reserved_topic"


async def test_api_batch_with_a_reserved_topic_stores_nothing(node: Node) -> None:
    status, body = await node.api("POST", "/v1/publish/batch", {"messages": [
        {"topic": "fine/a", "data": 1}, {"topic": "$SYS/x", "data": 2, "retain": True}]})
    assert status == 403, body
    assert body["error"]["code"] == "reserved_topic"
    assert "messages[1]" in body["error"]["message"]
    _, hist = await node.api("GET", "/v1/topics/fine/a/history")
    assert hist["items"] == []


async def test_ws_cannot_publish_reserved(node: Node) -> None:
    c = await node.client("alice", token=node.token("alice", publish=["#", "$SYS/#"]))
    reply = await c.request("publish", topic="$SYS/broker/uptime", data=1, retain=True)
    assert reply["error"]["code"] == "forbidden", reply
    assert (await c.request("publish", topic="chat/a", data=1))["ok"]  # still open


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_cannot_publish_reserved(node: Node, clients: list[Any], v5: bool) -> None:
    port = node.app.mqtt_port
    watcher = await paho(clients, port, f"watch{v5}", token=node.token("w"), v5=v5)
    assert await watcher.subscribe(("$SYS/hack/#", 1), ("end/#", 1)) == [1, 1]
    pub = await paho(clients, port, f"pub{v5}", token=pub_token(node), v5=v5)
    rc = await pub.publish("$SYS/hack/x", b"1", qos=1, retain=True)
    assert rc == (0x87 if v5 else 0)  # 5.0: Not authorized; 3.1.1 cannot say it
    assert await pub.publish("end/x", b"1", qos=1) == 0
    assert (await watcher.message()).topic == "end/x"  # nothing from $SYS/hack before it
    _, hist = await node.api("GET", "/v1/topics/$SYS/hack/x/history")
    assert hist["items"] == []


# -- strict offsets and cursors ----------------------------------------------------------------

@pytest.mark.parametrize("since", ["x:²", "x:١٢", "x:1²", "x:" + "9" * 20])
async def test_ws_connect_with_unicode_digit_since_gets_bad_request(node: Node,
                                                                     since: str) -> None:
    c = await node.client("alice", connect=False)
    await c.send_raw(c.encode({"op": "connect", "id": 1, "token": node.token("alice"),
                               "since": since}))
    reply = await c.unmatched()
    assert reply["error"]["code"] == "bad_request", reply
    assert (await c.closed())[0] == 4400


async def test_ws_subscribe_and_inbox_with_unicode_digits(node: Node) -> None:
    c = await node.client("alice")
    reply = await c.request("subscribe", topic="news/a", since="x:²")
    assert reply["error"]["code"] == "bad_request", reply
    reply = await c.request("subscribe", topic="news/+", since={"news/a": "x:²"})
    assert reply["error"]["code"] == "bad_request", reply
    reply = await c.request("inbox", before="²")
    assert reply["error"]["code"] == "bad_request", reply
    assert (await c.request("inbox", before="12"))["ok"]


async def test_api_unicode_digit_cursors_are_400(node: Node) -> None:
    status, body = await node.api("GET", "/v1/users/alice/inbox?before=%C2%B2")
    assert status == 400 and body["error"]["code"] == "bad_request", body
    status, body = await node.api("GET", "/v1/topics/news/a/history?since=x:%C2%B2")
    assert status == 400 and body["error"]["code"] == "bad_request", body


# -- huge token times ---------------------------------------------------------------------------

SOON = "a minute from now"  # resolved when the token is made, not when tests are collected


def huge_token(**claims: Any) -> str:
    claims = {k: int(time.time()) + 60 if v == SOON else v for k, v in claims.items()}
    return jwt.encode({"sub": "alice", "exp": 10 ** 400, **claims}, JWT_SECRET,
                      algorithm="HS256")


@pytest.mark.parametrize("claims", [{}, {"iat": 10 ** 400, "exp": SOON},
                                    {"nbf": -(10 ** 400), "exp": SOON}])
async def test_ws_connect_with_huge_exp_refused_fast(node: Node, claims: dict[str, Any]) -> None:
    c = await node.client("alice", connect=False)
    started = time.monotonic()
    await c.send_raw(c.encode({"op": "connect", "id": 1, "token": huge_token(**claims)}))
    reply = await c.unmatched()
    assert reply["error"]["code"] == "token_invalid", reply
    assert (await c.closed())[0] == 4001
    assert time.monotonic() - started < WAIT


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_connect_with_huge_exp_refused(node: Node, clients: list[Any],
                                                  v5: bool) -> None:
    await paho(clients, node.app.mqtt_port, f"huge{v5}", token=huge_token(), v5=v5,
               expect=0x86)  # bad user name or password (paho maps 3.1.1's 4 to it)


# -- invalid UTF-8 ------------------------------------------------------------------------------

@pytest.mark.parametrize("connected", [False, True])
async def test_ws_invalid_utf8_text_frame_closes_1007(node: Node, connected: bool) -> None:
    c = await node.client("alice", connect=connected)
    await c.ws.send(b'{"op":"ping","id":9,"x":"\xff\xfe"}', text=True)
    assert (await c.closed())[0] == 1007
    assert c.pushes.empty()


async def test_ws_invalid_utf8_across_fragments_closes_1007(node: Node) -> None:
    c = await node.client("alice")
    # a valid first half, then a fragment whose bytes are not UTF-8
    await c.ws.send(iter([b'{"op":"ping",', b'"id":9,"x":"\xc3"}']), text=True)
    assert (await c.closed())[0] == 1007


async def test_ws_valid_utf8_text_still_works(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("publish", topic="users/alice/é", data="ünïcødé ✓"))["ok"]
