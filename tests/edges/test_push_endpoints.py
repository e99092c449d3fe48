"""Registering platform push endpoints (issue 16): the WS ops ``register_push``
/ ``unregister_push`` for the connected device, the HTTP API for a backend,
the VAPID public key in the connect reply and at ``GET /v1/push/vapid-public-key``,
and bad registrations refused with the field named."""

from __future__ import annotations

import base64
import os
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import Node
from support.mqtt import clients, paho

__all__ = ["clients"]  # the fixture, imported by name


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def subscription(n: int = 1) -> dict[str, object]:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": f"https://push.example.net/s/{n}",
            "keys": {"p256dh": b64(point), "auth": b64(os.urandom(16))}}


async def test_connect_reply_and_api_give_the_same_vapid_key(node: Node) -> None:
    c = await node.client("ann", device="laptop")
    key = c.hello["vapid_public_key"]
    assert len(base64.urlsafe_b64decode(key + "=")) == 65
    status, body = await node.api("GET", "/v1/push/vapid-public-key")
    assert status == 200 and body == {"key": key}
    status, _ = await node.api("GET", "/v1/push/vapid-public-key", key=None)
    assert status == 401  # behind the API key like the rest of the API


async def test_a_device_registers_and_unregisters_itself_over_ws(node: Node) -> None:
    c = await node.client("ann", device="laptop")
    sub = subscription()
    reply = await c.request("register_push", kind="webpush", subscription=sub)
    assert reply["ok"], reply
    [entry] = reply["endpoints"]
    assert entry["device"] == "laptop" and entry["kind"] == "webpush"
    assert entry["subscription"]["endpoint"] == sub["endpoint"]
    status, body = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert status == 200 and [e["device"] for e in body["endpoints"]] == ["laptop"]
    status, body = await node.api("GET", "/v1/users/bob/push-endpoints")
    assert body["endpoints"] == []  # users never mix
    reply = await c.request("unregister_push")
    assert reply == {"id": reply["id"], "ok": True, "removed": 1}
    status, body = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert body["endpoints"] == []


async def test_a_bad_registration_names_the_field_and_stores_nothing(node: Node) -> None:
    c = await node.client("ann", device="laptop")
    bad = {**subscription(), "endpoint": "http://insecure.example/x"}
    reply = await c.request("register_push", kind="webpush", subscription=bad)
    assert reply["ok"] is False and reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"].startswith("subscription.endpoint:")
    reply = await c.request("register_push", kind="carrier-pigeon")
    assert reply["ok"] is False and reply["error"]["message"].startswith("kind:")
    reply = await c.request("register_push", kind="fcm", token="t", extra=1)
    assert reply["ok"] is False and "unknown field" in reply["error"]["message"]
    # the session goes on
    assert (await c.request("ping"))["ok"]
    status, body = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert status == 200 and body["endpoints"] == []


async def test_a_backend_registers_for_a_device_and_removes_it(node: Node) -> None:
    status, body = await node.api("POST", "/v1/users/ann/push-endpoints",
                                  {"device": "android", "kind": "fcm", "token": "tok:1"})
    assert status == 200, body
    assert body["endpoints"][0] == {"device": "android", "kind": "fcm", "token": "tok:1",
                                    "created": body["endpoints"][0]["created"]}
    status, body = await node.api("POST", "/v1/users/ann/push-endpoints",
                                  {"device": "iphone", "kind": "apns", "token": "ab" * 32,
                                   "topic": "com.example.app"})
    assert status == 200 and len(body["endpoints"]) == 2
    status, body = await node.api("POST", "/v1/users/ann/push-endpoints",
                                  {"device": "x", "kind": "apns", "token": "nothex"})
    assert status == 400 and body["error"]["message"].startswith("token:")
    status, body = await node.api("DELETE", "/v1/users/ann/push-endpoints?device=android")
    assert status == 200 and body == {"removed": 1}
    status, body = await node.api("DELETE", "/v1/users/ann/push-endpoints")
    assert body == {"removed": 1}
    status, body = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert body["endpoints"] == []


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_an_mqtt_device_registers_on_its_own_topic(node: Node, clients: list[Any],
                                                         v5: bool) -> None:
    dev = await paho(clients, node.app.mqtt_port, "ann-thermostat", token=node.token("ann"),
                     v5=v5)
    body = orjson.dumps({"kind": "fcm", "token": "fcm:thermo"})
    assert await dev.publish("users/ann/push/register", body, 1) == 0
    status, listed = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert status == 200
    assert [(e["device"], e["token"]) for e in listed["endpoints"]] == [
        ("ann-thermostat", "fcm:thermo")]
    # a bad document: 5.0 hears 0x99 Payload format invalid; 3.1.1 is acknowledged
    # (it cannot be refused) and nothing changes
    bad = orjson.dumps({"kind": "apns", "token": "not-hex", "topic": "x"})
    assert await dev.publish("users/ann/push/register", bad, 1) == (0x99 if v5 else 0)
    status, listed = await node.api("GET", "/v1/users/ann/push-endpoints")
    assert [e["token"] for e in listed["endpoints"]] == ["fcm:thermo"]
    # another user's registration topic is refused like any other user's topic
    refused = await dev.publish("users/bob/push/register", body, 1)
    assert refused == (0x87 if v5 else 0)
    status, listed = await node.api("GET", "/v1/users/bob/push-endpoints")
    assert listed["endpoints"] == []
