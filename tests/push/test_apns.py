"""APNs over HTTP/2 through a local stand-in speaking Apple's request format:
the provider token (ES256 JWT, team id and key id), the headers, the payload,
and the error handling (BadDeviceToken / Unregistered gone, 429 retried)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from support.push_standins import H2StandIn, Reply, TestCA, p8_key
from tidings.push.apns import ApnsProvider
from tidings.push.endpoints import Endpoint, parse_endpoint
from tidings.push.providers import PushMessage, Result, Retrying, collapse_id

DEVICE = "a1" * 32


@dataclass
class Rig:
    apple: H2StandIn
    provider: ApnsProvider
    key: ec.EllipticCurvePrivateKey
    waits: list[float]
    endpoint: Endpoint


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = TestCA(tmp_path)
    apple = H2StandIn()
    port = await apple.start(ca.server_context(["localhost"], alpn=["h2"]))
    p8, key = p8_key(tmp_path)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    provider = ApnsProvider(str(p8), "KEY1234567", "TEAM123456", "com.example.app",
                            Retrying(retries=2, sleep=sleep), ssl_context=ca.client_context(),
                            host="localhost", port=port)
    yield Rig(apple, provider, key, waits,
              parse_endpoint({"kind": "apns", "token": DEVICE, "topic": "com.example.app"}))
    await provider.close()
    await apple.stop()


MESSAGE = PushMessage("n_9", title="Door opened", body="Front door, 21:04",
                      data={"door": "front"}, priority="urgent", ttl=120,
                      collapse_key="door-front", category="security")


async def test_request_over_http2_with_provider_token(rig: Rig) -> None:
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    [req] = rig.apple.requests
    h = req.headers
    assert req.method == "POST" and req.path == f"/3/device/{DEVICE}"
    assert h["apns-topic"] == "com.example.app"
    assert h["apns-push-type"] == "alert" and h["apns-priority"] == "10"
    assert h["apns-collapse-id"] == collapse_id(MESSAGE, 64)
    assert time.time() < int(h["apns-expiration"]) <= time.time() + 121
    scheme, _, token = h["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token)["kid"] == "KEY1234567"
    claims = jwt.decode(token, rig.key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == "TEAM123456"
    body = orjson.loads(req.body)
    assert body["aps"]["alert"] == {"title": "Door opened", "body": "Front door, 21:04"}
    assert body["tidings"] == MESSAGE.payload()


async def test_withdrawal_is_a_background_push_with_the_same_collapse_id(rig: Rig) -> None:
    await rig.provider.send(rig.endpoint, PushMessage("n_9", dismiss=True,
                                                      collapse_key="door-front",
                                                      priority="urgent"))
    h = rig.apple.requests[0].headers
    assert h["apns-push-type"] == "background" and h["apns-priority"] == "5"
    assert h["apns-collapse-id"] == collapse_id(MESSAGE, 64)
    body = orjson.loads(rig.apple.requests[0].body)
    assert body == {"aps": {"content-available": 1},
                    "tidings": {"type": "dismiss", "id": "n_9"}}


@pytest.mark.parametrize(("status", "reason"), [(400, "BadDeviceToken"),
                                                (410, "Unregistered")])
async def test_dead_tokens_are_gone(rig: Rig, status: int, reason: str) -> None:
    rig.apple.replies.append(Reply(status, body={"reason": reason}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.GONE
    assert len(rig.apple.requests) == 1


async def test_too_many_requests_is_retried(rig: Rig) -> None:
    rig.apple.replies.append(Reply(429, body={"reason": "TooManyRequests"}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    assert len(rig.apple.requests) == 2 and len(rig.waits) == 1


async def test_a_bad_payload_fails_without_retry(rig: Rig) -> None:
    rig.apple.replies.append(Reply(400, body={"reason": "PayloadTooLarge"}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.FAILED
    assert len(rig.apple.requests) == 1
