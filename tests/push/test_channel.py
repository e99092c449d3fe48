"""The push channel as a node opens it: the providers the settings configure,
each pointed at a local stand-in, endpoints in the real SQLite store, and the
live-first sending half (skip the devices that got it live), withdrawal to
every endpoint, gone endpoints removed, outcomes counted."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.push_standins import H2StandIn, Reply, StandIn, TestCA, p8_key, service_account
from tidings.config import PushSettings
from tidings.errors import BadRequest
from tidings.metrics import Metrics
from tidings.push.channel import PushChannel, Route
from tidings.push.providers import PushMessage
from tidings.store.sqlite import SqliteStore


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Rig:
    channel: PushChannel
    store: SqliteStore
    webpush: StandIn
    fcm: StandIn
    apple: H2StandIn
    metrics: Metrics
    base: str


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = TestCA(tmp_path)
    webpush, fcm, oauth, apple = StandIn(), StandIn(Reply(200, body={})), StandIn(
        Reply(200, body={"access_token": "ya29.x", "expires_in": 3600})), H2StandIn()
    base = await webpush.start(ca.server_context(["localhost"]))
    fcm_url = await fcm.start(ca.server_context(["localhost"]))
    account, _ = service_account(tmp_path, await oauth.start() + "/token")
    port = await apple.start(ca.server_context(["localhost"]))
    p8, _ = p8_key(tmp_path)
    settings = PushSettings(fcm_service_account=str(account), fcm_url=fcm_url,
                            apns_key_file=str(p8), apns_key_id="KEY1234567",
                            apns_team_id="TEAM123456", apns_topic="com.example.app",
                            apns_host="localhost", apns_port=port, ca_file=str(ca.ca_file),
                            max_endpoints_per_user=5, retries=1)
    store = SqliteStore(tmp_path / "data")
    await store.open()
    metrics = Metrics(process=False)

    async def no_wait(seconds: float) -> None:
        return None

    channel = await PushChannel.open(settings, str(tmp_path / "data"), store, metrics,
                                     sleep=no_wait)
    yield Rig(channel, store, webpush, fcm, apple, metrics, base)
    await channel.close()
    await store.close()
    for s in (webpush, fcm, oauth):
        await s.stop()
    await apple.stop()


def subscription(base: str, n: int) -> dict[str, object]:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"kind": "webpush", "subscription": {"endpoint": f"{base}/s/{n}",
                                                "keys": {"p256dh": b64(point),
                                                         "auth": b64(os.urandom(16))}}}


async def three_devices(rig: Rig) -> None:
    await rig.channel.register("ann", "laptop", subscription(rig.base, 1))
    await rig.channel.register("ann", "android", {"kind": "fcm", "token": "fcm-tok"})
    await rig.channel.register("ann", "iphone", {"kind": "apns", "token": "cd" * 32,
                                                 "topic": "com.example.app"})


async def test_open_builds_the_configured_providers_and_logs_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    with caplog.at_level(logging.INFO, logger="tidings.push"):
        channel = await PushChannel.open(PushSettings(), str(tmp_path), store)
    try:
        assert channel.kinds == ["webpush"]
        assert channel.vapid_public_key and len(base64.urlsafe_b64decode(
            channel.vapid_public_key + "=")) == 65
        text = caplog.text
        assert "webpush on" in text and "fcm (no push.fcm_service_account)" in text
        assert "apns (no push.apns_key_file)" in text
    finally:
        await channel.close()
        await store.close()


async def test_every_away_device_gets_it_through_its_platform(rig: Rig) -> None:
    await three_devices(rig)
    message = PushMessage("n_1", title="Hi", body="there", priority="high")
    outcomes = await rig.channel.deliver("ann", message)
    assert outcomes == {"laptop": "pushed_webpush", "android": "pushed_fcm",
                        "iphone": "pushed_apns"}
    assert [len(s.requests) for s in (rig.webpush, rig.fcm, rig.apple)] == [1, 1, 1]
    assert rig.metrics.get("tidings_push_total", outcome="pushed_fcm") == 1


async def test_a_device_that_got_it_live_is_skipped(rig: Rig) -> None:
    await three_devices(rig)
    outcomes = await rig.channel.deliver("ann", PushMessage("n_2"), skip={"laptop", "iphone"})
    assert outcomes == {"android": "pushed_fcm"}
    assert rig.webpush.requests == [] and rig.apple.requests == []


async def test_channel_switches_limit_the_kinds(rig: Rig) -> None:
    await three_devices(rig)
    outcomes = await rig.channel.deliver("ann", PushMessage("n_3"), kinds={"apns"})
    assert outcomes == {"iphone": "pushed_apns"}


async def test_withdrawal_reaches_every_endpoint(rig: Rig) -> None:
    await three_devices(rig)
    outcomes = await rig.channel.withdraw("ann", "n_4")
    assert set(outcomes) == {"laptop", "android", "iphone"}
    assert b'"dismiss"' in rig.apple.requests[0].body


async def test_a_gone_endpoint_is_removed_and_failures_counted(rig: Rig) -> None:
    await three_devices(rig)
    rig.webpush.replies.append(Reply(410))
    rig.fcm.default = Reply(503)
    outcomes = await rig.channel.deliver("ann", PushMessage("n_5"))
    assert outcomes["laptop"] == "endpoint_gone" and outcomes["android"] == "provider_failed"
    assert [r.device for r in await rig.store.push_endpoints("ann")] == ["android", "iphone"]
    assert rig.metrics.get("tidings_push_total", outcome="endpoint_gone") == 1
    assert rig.metrics.get("tidings_push_total", outcome="provider_failed") == 1
    assert len(rig.fcm.requests) == 2  # push.retries = 1
    counts = await rig.store.push_counts("n_5")  # per notification, as GET shows them
    assert (counts["endpoint_gone"], counts["provider_failed"], counts["pushed_apns"]) == (
        1, 1, 1)
    await rig.channel.withdraw("ann", "n_5")  # a withdrawal is not a send: not counted
    assert await rig.store.push_counts("n_5") == counts


async def test_live_first_follows_each_users_route(rig: Rig) -> None:
    await three_devices(rig)

    async def connected(user: str) -> list[dict[str, Any]]:
        return [{"device": "android", "edge": "mqtt"}]

    rig.channel.connected = connected
    item = {"title": "Hi", "category": "social"}
    # the category keeps to fcm and apns and went live: the connected android waits
    # for the fallback, the away iphone gets it now, the laptop (webpush off) never
    sent = await rig.channel.live_first("n_6", {"ann": item}, ttl=60, routes={
        "ann": Route(frozenset({"fcm", "apns"}))})
    await rig.channel.wait_idle()
    assert sent == 1 and len(rig.apple.requests) == 1
    assert rig.fcm.requests == [] and rig.webpush.requests == []
    assert rig.channel.waiting == 1
    # fcm only, and not live: the connected android got nothing, so fcm goes now
    sent = await rig.channel.live_first("n_7", {"ann": item}, ttl=60, routes={
        "ann": Route(frozenset({"fcm"}), live=frozenset())})
    await rig.channel.wait_idle()
    assert sent == 1 and len(rig.fcm.requests) == 1 and rig.channel.waiting == 1
    # live on ws only: the android, connected over MQTT, got nothing live either
    sent = await rig.channel.live_first("n_8", {"ann": item}, ttl=60, routes={
        "ann": Route(frozenset({"fcm"}), live=frozenset({"ws"}))})
    await rig.channel.wait_idle()
    assert sent == 1 and len(rig.fcm.requests) == 2 and rig.channel.waiting == 1


async def test_bad_registrations_are_refused_and_store_nothing(rig: Rig) -> None:
    with pytest.raises(BadRequest):
        await rig.channel.register("ann", "laptop", {"kind": "webpush", "subscription": {
            "endpoint": "http://insecure.example/x", "keys": {}}})
    assert await rig.store.push_endpoints("ann") == []
