"""The live-first rule on a real node (issue 16): a device that is not connected
gets a notification through its platform (Web Push here, to a local HTTPS push
service the node trusts through ``push.ca_file``), a connected one gets it
live and no OS push, and reading it on another device withdraws the OS
notification (a ``dismiss`` with the same Topic)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import Node, start_node, stop_node
from support.push_standins import Browser, StandIn, TestCA


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Node, StandIn, str]]:
    ca = TestCA(tmp_path)
    service = StandIn()
    base = await service.start(ca.server_context(["localhost"]))
    node = await start_node(tmp_path / "node", push__ca_file=str(ca.ca_file))
    try:
        yield node, service, base
    finally:
        await stop_node(node)
        await service.stop()


async def settled(node: Node) -> None:
    push = node.app.node.push
    assert push is not None
    await push.wait_idle()


async def test_away_gets_the_os_push_connected_gets_it_live_a_read_withdraws_it(
        rig: tuple[Node, StandIn, str]) -> None:
    node, service, base = rig
    laptop = Browser()
    status, body = await node.api("POST", "/v1/users/ann/push-endpoints",
                                  {"device": "laptop", "kind": "webpush",
                                   "subscription": laptop.subscription(f"{base}/s/laptop")})
    assert status == 200, body

    # the laptop is away: the notification goes through its push service
    status, first = await node.api("POST", "/v1/notify", {"users": ["ann"], "title": "Hi",
                                                          "body": "away"})
    assert status == 200
    await settled(node)
    [req] = service.requests
    payload = laptop.decrypt(req.body)
    assert (payload["type"], payload["id"], payload["title"]) == ("notification", first["id"],
                                                                  "Hi")
    signer = node.app.ws.track_signer
    assert signer.verify("ann", first["id"], payload["track"]["token"])

    # connected, the laptop gets the next one live, and no OS push is sent
    tab = await node.client("ann", device="laptop")
    status, second = await node.api("POST", "/v1/notify", {"users": ["ann"], "title": "Live"})
    assert (await tab.push())["id"] == second["id"]
    await settled(node)
    assert len(service.requests) == 1

    # read on the phone: the laptop's OS notification of the first is withdrawn
    phone = await node.client("ann", device="phone")
    assert (await phone.request("read", ids=[first["id"]]))["ok"]
    await settled(node)
    assert len(service.requests) == 2
    withdrawal = service.requests[1]
    assert laptop.decrypt(withdrawal.body) == {"type": "dismiss", "id": first["id"]}
    assert withdrawal.headers["topic"] == req.headers["topic"]


async def test_a_user_without_endpoints_costs_no_push(rig: tuple[Node, StandIn, str]) -> None:
    node, service, _ = rig
    status, _ = await node.api("POST", "/v1/notify", {"users": ["bob"], "title": "x"})
    assert status == 200
    await settled(node)
    assert service.requests == []
    assert node.app.metrics.get("tidings_push_total", outcome="pushed_webpush") == 0


async def test_an_audience_send_takes_the_platform_for_away_devices(
        rig: tuple[Node, StandIn, str]) -> None:
    import asyncio

    from conftest import WAIT

    node, service, base = rig
    phone = Browser()
    await node.api("PUT", "/v1/users/cat/tags", {"tags": ["vip"]})
    await node.api("POST", "/v1/users/cat/push-endpoints",
                   {"device": "cat-phone", "kind": "webpush",
                    "subscription": phone.subscription(f"{base}/s/cat")})
    status, sent = await node.api("POST", "/v1/notify", {"tags": ["vip"], "title": "Sale"})
    assert status == 200 and sent["targets"] == 1
    for _ in range(int(WAIT / 0.02)):  # the job's status, polled (bounded)
        if (await node.api("GET", f"/v1/notifications/{sent['id']}"))[1]["status"] == "sent":
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the job was not sent")
    await settled(node)
    [req] = service.requests
    assert phone.decrypt(req.body)["title"] == "Sale"
    assert node.app.metrics.get("tidings_push_total", outcome="pushed_webpush") == 1


async def test_preferences_decide_for_the_platform_too(rig: tuple[Node, StandIn, str]) -> None:
    """A category the user turned off, or one silent in their quiet hours, sends
    no OS notification either."""
    node, service, base = rig
    dog = Browser()
    await node.api("POST", "/v1/users/dog/push-endpoints",
                   {"device": "dog-laptop", "kind": "webpush",
                    "subscription": dog.subscription(f"{base}/s/dog")})
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)  # quiet from an hour ago to an hour from now (UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
             "end": (now + timedelta(hours=1)).strftime("%H:%M")}
    status, body = await node.api("PUT", "/v1/users/dog/preferences", {
        "categories": {"social": {"enabled": False}}, "timezone": "UTC", "quiet_hours": quiet})
    assert status == 200, body
    for category in ("social", "marketing"):  # muted; silent in quiet hours (by default)
        status, _ = await node.api("POST", "/v1/notify", {"users": ["dog"], "title": category,
                                                          "category": category})
        assert status == 200
    await settled(node)
    assert service.requests == []
    # a category the user left on, with urgent priority through quiet hours, goes
    status, sent = await node.api("POST", "/v1/notify", {"users": ["dog"], "title": "door",
                                                         "category": "security",
                                                         "priority": "urgent"})
    assert status == 200
    await settled(node)
    [req] = service.requests
    assert dog.decrypt(req.body)["id"] == sent["id"]


async def test_a_platform_switched_off_for_a_category_still_gets_it_live(
        rig: tuple[Node, StandIn, str]) -> None:
    """Per-channel category switches: ``social`` kept to the live edges sends no
    OS push but still the WebSocket push; kept to ``webpush`` alone, it goes to
    the push service at once, even for a connected device (nothing went live)."""
    node, service, base = rig
    laptop = Browser()
    await node.api("POST", "/v1/users/eve/push-endpoints",
                   {"device": "laptop", "kind": "webpush",
                    "subscription": laptop.subscription(f"{base}/s/eve")})
    phone = await node.client("eve", device="phone")
    status, body = await node.api("PUT", "/v1/users/eve/preferences",
                                  {"categories": {"social": {"edges": ["ws", "mqtt"]}}})
    assert status == 200, body
    status, social = await node.api("POST", "/v1/notify", {"users": ["eve"], "title": "s",
                                                           "category": "social"})
    assert status == 200
    assert (await phone.push())["id"] == social["id"]  # live on the WebSocket
    status, general = await node.api("POST", "/v1/notify", {"users": ["eve"], "title": "g"})
    assert (await phone.push())["id"] == general["id"]
    await settled(node)
    [req] = service.requests  # the laptop is away: only the category left on went
    assert laptop.decrypt(req.body)["id"] == general["id"]
    status, got = await node.api("GET", f"/v1/notifications/{social['id']}")
    assert got["push"]["pushed_webpush"] == 0 and got["outcomes"]["pushed"] == 1

    status, body = await node.api("PUT", "/v1/users/eve/preferences",
                                  {"categories": {"social": {"edges": ["webpush"]}}})
    assert status == 200, body
    tab = await node.client("eve", device="laptop")  # connected, yet nothing goes live
    status, only = await node.api("POST", "/v1/notify", {"users": ["eve"], "title": "os",
                                                         "category": "social"})
    assert status == 200
    status, marker = await node.api("POST", "/v1/notify", {"users": ["eve"], "title": "m",
                                                           "category": "transactional"})
    got = [await tab.push()]
    while got[-1].get("id") != marker["id"]:  # what came before the marker (bounded by WAIT)
        got.append(await tab.push())
    assert only["id"] not in [p.get("id") for p in got]
    await settled(node)
    assert len(service.requests) == 2  # the marker went live: no OS push (it waits)
    assert laptop.decrypt(service.requests[1].body)["id"] == only["id"]
    status, got = await node.api("GET", f"/v1/notifications/{only['id']}")
    assert got["push"]["pushed_webpush"] == 1 and got["outcomes"]["pushed"] == 1
