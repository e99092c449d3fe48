"""Platform push on the node's clock, on a real node (issue 16).

The live-first fallback (``push.fallback_after``): a connected device got the
notification live, and gets it through its platform (Web Push to a local
HTTPS push service) only if the user has not reported it ``delivered`` within
``fallback_after`` seconds. And the withdrawal when an inbox item expires (the
sweeper). The clock is a fake one moved by hand; the fallback's waits are
fired with ``PushChannel.fire_due`` and the sweeper run with ``run_once``
right after, never by sleeping."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Node, make_settings, start_with, stop_node
from support.clock import FakeClock
from support.push_standins import Browser, StandIn, TestCA
from tidings.push.channel import PushChannel

AFTER = 10.0


@dataclass
class Rig:
    node: Node
    clock: FakeClock
    service: StandIn
    base: str

    @property
    def push(self) -> PushChannel:
        push = self.node.app.node.push
        assert push is not None
        return push

    async def endpoint(self, user: str, device: str) -> Browser:
        browser = Browser()
        status, body = await self.node.api(
            "POST", f"/v1/users/{user}/push-endpoints",
            {"device": device, "kind": "webpush",
             "subscription": browser.subscription(f"{self.base}/s/{user}/{device}")})
        assert status == 200, body
        return browser

    async def notify(self, user: str, title: str) -> str:
        status, body = await self.node.api("POST", "/v1/notify",
                                           {"users": [user], "title": title})
        assert status == 200, body
        nid: str = body["id"]
        return nid

    async def later(self, seconds: float) -> int:
        """Move the node's clock, fire the waits now due, and let the sends end."""
        self.clock.advance(seconds)
        sent = await self.push.fire_due()
        await self.push.wait_idle()
        return sent

    async def counts(self, nid: str) -> dict[str, Any]:
        """The notification's platform push counts, as GET and its stats show them."""
        status, body = await self.node.api("GET", f"/v1/notifications/{nid}")
        assert status == 200, body
        status, stats = await self.node.api("GET", f"/v1/notifications/{nid}/stats")
        assert status == 200, stats
        assert stats["total"]["push"] == body["push"]
        push: dict[str, Any] = body["push"]
        return push


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[Rig]:
    """A node on a fake clock with ``overrides``, and its push service, stopped after."""
    ca = TestCA(tmp_path)
    service = StandIn()
    base = await service.start(ca.server_context(["localhost"]))
    clock = FakeClock()
    settings = make_settings(tmp_path / "node", **{
        "push__ca_file": str(ca.ca_file), "push__fallback_after": AFTER, **overrides})
    node = await start_with(settings, clock)
    try:
        yield Rig(node, clock, service, base)
    finally:
        await stop_node(node)
        await service.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running(tmp_path) as r:
        yield r


async def test_a_connected_device_that_never_acks_gets_the_platform_push(rig: Rig) -> None:
    laptop = await rig.endpoint("ann", "laptop")
    tab = await rig.node.client("ann", device="laptop")
    nid = await rig.notify("ann", "Hi")
    assert (await tab.push())["id"] == nid  # live, at once
    await rig.push.wait_idle()
    assert rig.service.requests == []  # connected: no OS push yet

    assert await rig.later(AFTER - 1) == 0
    assert rig.service.requests == []
    assert await rig.later(1) == 1  # fallback_after passed without a report
    [req] = rig.service.requests
    payload = laptop.decrypt(req.body)
    assert (payload["type"], payload["id"], payload["title"]) == ("notification", nid, "Hi")
    assert int(req.headers["ttl"]) == 86400 - int(AFTER)  # what is left of its lifetime
    assert (await rig.counts(nid))["pushed_webpush"] == 1
    assert rig.push.waiting == 0
    assert await rig.later(AFTER) == 0  # once


async def test_a_delivered_report_from_any_device_cancels_it(rig: Rig) -> None:
    await rig.endpoint("ann", "laptop")
    tab = await rig.node.client("ann", device="laptop")
    phone = await rig.node.client("ann", device="phone")  # no endpoint of its own
    nid = await rig.notify("ann", "Hi")
    assert (await tab.push())["id"] == nid
    assert (await phone.push())["id"] == nid
    assert rig.push.waiting == 1
    reply = await phone.request("track", notification=nid, event="delivered")
    assert reply["ok"], reply
    assert rig.push.waiting == 0  # per user: the phone's report covers the laptop
    assert await rig.later(AFTER) == 0
    assert rig.service.requests == []
    assert (await rig.counts(nid))["pushed_webpush"] == 0


async def test_a_report_made_on_another_node_is_seen_in_the_store(rig: Rig) -> None:
    await rig.endpoint("ann", "laptop")
    await rig.endpoint("bob", "laptop")
    ann = await rig.node.client("ann", device="laptop")
    bob = await rig.node.client("bob", device="laptop")
    status, body = await rig.node.api("POST", "/v1/notify",
                                      {"users": ["ann", "bob"], "title": "Both"})
    assert status == 200, body
    nid = body["id"]
    assert (await ann.push())["id"] == nid and (await bob.push())["id"] == nid
    # ann's report reached the store through another node (this one never saw it)
    assert await rig.node.app.node.store.track(nid, "ann", "delivered")
    assert rig.push.waiting == 2
    assert await rig.later(AFTER) == 1
    [req] = rig.service.requests
    assert req.path == "/s/bob/laptop"


async def test_the_waits_are_bounded_the_oldest_dropped(tmp_path: Path) -> None:
    async with running(tmp_path, push__fallback_pending_max=2) as rig:
        for user in ("ann", "bob", "cat"):
            await rig.endpoint(user, "laptop")
            await rig.node.client(user, device="laptop")
        for user in ("ann", "bob", "cat"):
            await rig.notify(user, f"to {user}")
            rig.clock.advance(1)
        assert rig.push.waiting == 2
        assert rig.node.app.metrics.get("tidings_push_fallback_dropped_total") == 1
        assert await rig.later(AFTER) == 2
        assert sorted(r.path for r in rig.service.requests) == ["/s/bob/laptop",
                                                               "/s/cat/laptop"]


async def test_zero_turns_the_fallback_off(tmp_path: Path) -> None:
    async with running(tmp_path, push__fallback_after=0.0) as rig:
        await rig.endpoint("ann", "laptop")
        tab = await rig.node.client("ann", device="laptop")
        nid = await rig.notify("ann", "Hi")
        assert (await tab.push())["id"] == nid
        assert rig.push.waiting == 0
        assert await rig.later(3600) == 0
        assert rig.service.requests == []


async def test_an_expired_item_withdraws_its_os_notification(rig: Rig) -> None:
    laptop = await rig.endpoint("ann", "laptop")
    status, sent = await rig.node.api("POST", "/v1/notify",
                                      {"users": ["ann"], "title": "Sale", "ttl": 60})
    assert status == 200, sent
    status, kept = await rig.node.api("POST", "/v1/notify", {"users": ["ann"], "title": "Kept"})
    assert status == 200, kept
    await rig.push.wait_idle()
    assert len(rig.service.requests) == 2  # away: both went through the push service
    topic = {laptop.decrypt(r.body)["id"]: r.headers["topic"] for r in rig.service.requests}

    rig.clock.advance(59)
    await rig.node.app.sweeper.run_once()
    await rig.push.wait_idle()
    assert len(rig.service.requests) == 2  # not expired yet
    rig.clock.advance(1)
    totals = await rig.node.app.sweeper.run_once()
    assert totals.inbox == 1
    await rig.push.wait_idle()
    [withdrawal] = rig.service.requests[2:]
    assert laptop.decrypt(withdrawal.body) == {"type": "dismiss", "id": sent["id"]}
    assert withdrawal.headers["topic"] == topic[sent["id"]]  # replaces it at the service
    assert (await rig.counts(sent["id"]))["pushed_webpush"] == 1  # a withdrawal is no send
