"""A/B variants end to end (issue 13): each user's push carries their variant.

A real node (HTTP API, WS edge, MQTT broker, SQLite) on a fake clock, real
clients (``websockets`` for WS, paho-mqtt for MQTT). The notification is
scheduled, so the test knows its id before it is sent and can pick one user
the hash gives each variant; then the sender is stepped past ``send_at``.
What a product team relies on: a user sees their variant's title, body, data
and media (and its name) live on every edge and in the inbox, and the same
variant again when the job is resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from conftest import Client, Node, start_node, stop_node
from support.clock import FakeClock
from support.clocked_app import clocked_app_node
from support.mqtt import Paho, clients, notifications_device
from support.pipeline import fake_clock
from support.push_standins import Browser, StandIn, TestCA
from tidings.variants import parse_variants

__all__ = ["clients", "clocked_app_node", "fake_clock"]  # fixtures, by name

VARIANTS = [
    {"name": "A", "title": "Spring sale", "data": {"cta": "shop"}},
    {"name": "B", "title": "Last chance, {{first_name|friend}}", "body": "Ends tonight",
     "media": {"image": "https://img.example/b.png"}},
]


async def scheduled_ab(node: Node, **body: Any) -> tuple[str, dict[str, str]]:
    """A variants notification to tag ``spring`` a minute from now, and one user
    the hash gives each variant (tagged, so the send reaches them)."""
    status, sent = await node.api("POST", "/v1/notify", {
        "tags": ["spring"], "title": "Sale", "body": "Today only", "data": {"cta": "look"},
        "variants": VARIANTS, "send_at": "2026-01-15T12:01:00Z", **body})
    assert status == 200, sent
    nid = str(sent["id"])
    variants = parse_variants(VARIANTS)
    pick: dict[str, str] = {}
    for i in range(200):
        pick.setdefault(variants.assign(nid, f"u{i}").name, f"u{i}")
        if len(pick) == 2:
            break
    assert set(pick) == {"A", "B"}
    for user in pick.values():
        await node.app.node.store.set_user_tags(user, ["spring"], max_tags=10)
    return nid, pick


async def test_each_user_gets_their_variant_on_ws_mqtt_and_in_the_inbox(
        node: Node, clock: FakeClock, clients: list[Any]) -> None:
    nid, pick = await scheduled_ab(node)
    store = node.app.node.store
    ws: dict[str, Client] = {}
    mqtt: dict[str, Paho] = {}
    for name, user in pick.items():
        await store.set_user_attributes(user, {"first_name": "Ann"})
        ws[name] = await node.client(user)
        mqtt[name] = await notifications_device(node, user, clients)
    clock.advance(60)
    await node.app.notifier.sender.step()
    expected: dict[str, dict[str, Any]] = {
        "A": {"title": "Spring sale", "body": "Today only", "data": {"cta": "shop"},
              "media": None, "variant": "A"},
        "B": {"title": "Last chance, Ann", "body": "Ends tonight", "data": {"cta": "look"},
              "media": {"image": "https://img.example/b.png"}, "variant": "B"},
    }
    for name, user in pick.items():
        want = expected[name]
        live = await ws[name].push_of("notification")
        assert live["id"] == nid
        assert {k: live.get(k) for k in want} == want, (name, live)
        payload = orjson.loads((await mqtt[name].message()).payload)
        assert payload["id"] == nid
        assert {k: payload.get(k) for k in want} == want, (name, payload)
        got, inbox = await node.api("GET", f"/v1/users/{user}/inbox")
        assert got == 200
        (item,) = [i for i in inbox["items"] if i["id"] == nid]
        assert {k: item.get(k) for k in want} == want, (name, item)


async def test_the_os_push_of_an_away_device_carries_its_variant(tmp_path: Path,
                                                                clock: FakeClock) -> None:
    ca = TestCA(tmp_path)
    service = StandIn()
    base = await service.start(ca.server_context(["localhost"]))
    node = await start_node(tmp_path / "node", clock=clock, push__ca_file=str(ca.ca_file))
    try:
        nid, pick = await scheduled_ab(node)
        browsers: dict[str, Browser] = {}
        for name, user in pick.items():
            browsers[name] = Browser()
            status, body = await node.api(
                "POST", f"/v1/users/{user}/push-endpoints",
                {"device": f"{user}-laptop", "kind": "webpush",
                 "subscription": browsers[name].subscription(f"{base}/s/{user}")})
            assert status == 200, body
        clock.advance(60)
        await node.app.notifier.sender.step()
        assert node.app.node.push is not None
        await node.app.node.push.wait_idle()
        got: dict[str, dict[str, Any]] = {}
        for req in service.requests:
            for name, user in pick.items():
                if req.path.endswith(f"/s/{user}"):
                    got[name] = browsers[name].decrypt(req.body)
        assert {n: (p["id"], p["title"], p["body"]) for n, p in got.items()} == {
            "A": (nid, "Spring sale", "Today only"),
            "B": (nid, "Last chance, friend", "Ends tonight")}
    finally:
        await stop_node(node)
        await service.stop()
