"""Web Push through a local HTTPS push service: what Tidings sends is decrypted
with the subscription's private key (RFC 8291, aes128gcm, by ``http_ece``),
the VAPID JWT is checked against the server's public key (RFC 8292), and the
headers, the gone and retry paths are checked (RFC 8030)."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import http_ece
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support.push_standins import Reply, StandIn, TestCA
from tidings.push.endpoints import Endpoint, parse_endpoint
from tidings.push.providers import PushMessage, Result, Retrying, collapse_id
from tidings.push.vapid import load_vapid, public_key_b64
from tidings.push.webpush import WebPushProvider


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class Browser:
    """A subscription as a browser makes it: its own key pair and auth secret."""

    key: ec.EllipticCurvePrivateKey
    auth: bytes

    def subscription(self, endpoint: str) -> dict[str, object]:
        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(self.auth)}}

    def decrypt(self, body: bytes) -> dict[str, object]:
        plain = http_ece.decrypt(body, private_key=self.key, auth_secret=self.auth,
                                 version="aes128gcm")
        data: dict[str, object] = orjson.loads(plain)
        return data


@dataclass
class Rig:
    service: StandIn
    base: str
    provider: WebPushProvider
    retrying: Retrying
    waits: list[float]
    browser: Browser
    endpoint: Endpoint
    vapid_public: str


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = TestCA(tmp_path)
    service = StandIn()
    base = await service.start(ca.server_context(["localhost"]))
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # fake time: record, do not wait
        waits.append(seconds)

    retrying = Retrying(concurrency=4, retries=2, backoff=0.5, timeout=10, sleep=sleep)
    vapid = load_vapid(tmp_path / "data")
    browser = Browser(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
    endpoint = parse_endpoint({"kind": "webpush",
                               "subscription": browser.subscription(f"{base}/push/abc123")})
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca.client_context())) as session:
        provider = WebPushProvider(vapid, "mailto:ops@example.com", session, retrying)
        yield Rig(service, base, provider, retrying, waits, browser, endpoint,
                  public_key_b64(vapid))
    await service.stop()


MESSAGE = PushMessage("n_1", title="Your order shipped", body="Tap to track",
                      data={"order": 42}, image="https://example.com/i.png",
                      category="transactional", priority="high", ttl=3600,
                      collapse_key="order-42")


async def test_the_push_service_gets_an_encrypted_vapid_signed_message(rig: Rig) -> None:
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    [req] = rig.service.requests
    assert req.method == "POST" and req.path == "/push/abc123"
    # RFC 8291: the body decrypts with the subscription's keys to our payload
    assert req.headers["content-encoding"] == "aes128gcm"
    payload = rig.browser.decrypt(req.body)
    assert payload == {"type": "notification", "id": "n_1", "title": "Your order shipped",
                       "body": "Tap to track", "category": "transactional",
                       "data": {"order": 42}, "image": "https://example.com/i.png"}
    # RFC 8030: TTL, Urgency, Topic
    assert req.headers["ttl"] == "3600"
    assert req.headers["urgency"] == "high"
    topic = req.headers["topic"]
    assert topic == collapse_id(MESSAGE) and len(topic) <= 32
    assert set(topic) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # RFC 8292: "vapid t=<JWT>, k=<public key>", signed ES256 by our key, aud = origin
    scheme, _, params = req.headers["authorization"].partition(" ")
    assert scheme == "vapid"
    parts = dict(p.strip().split("=", 1) for p in params.split(","))
    assert parts["k"] == rig.vapid_public
    point = base64.urlsafe_b64decode(parts["k"] + "=" * (-len(parts["k"]) % 4))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    claims = jwt.decode(parts["t"], public, algorithms=["ES256"], audience=rig.base)
    assert claims["sub"] == "mailto:ops@example.com"
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600


async def test_a_forged_signature_would_not_verify(rig: Rig) -> None:
    """The check above is a real check: another key's JWT fails it."""
    await rig.provider.send(rig.endpoint, MESSAGE)
    token = rig.service.requests[0].headers["authorization"].split("t=")[1].split(",")[0]
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, other, algorithms=["ES256"], audience=rig.base)


async def test_dismiss_replaces_by_the_same_topic(rig: Rig) -> None:
    await rig.provider.send(rig.endpoint, MESSAGE)
    withdrawal = PushMessage("n_1", collapse_key="order-42", dismiss=True, priority="normal")
    assert await rig.provider.send(rig.endpoint, withdrawal) is Result.SENT
    first, second = rig.service.requests
    assert second.headers["topic"] == first.headers["topic"]
    assert rig.browser.decrypt(second.body) == {"type": "dismiss", "id": "n_1"}
    assert second.headers["urgency"] == "normal"


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_subscription_is_reported_for_removal(rig: Rig, status: int) -> None:
    rig.service.replies.append(Reply(status))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.GONE
    assert len(rig.service.requests) == 1  # not retried


async def test_429_is_retried_after_retry_after(rig: Rig) -> None:
    rig.service.replies.append(Reply(429, {"Retry-After": "7"}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    assert len(rig.service.requests) == 2
    assert rig.waits == [7.0]
    # each attempt is encrypted afresh (a new salt and key), and both decrypt
    bodies = [r.body for r in rig.service.requests]
    assert bodies[0] != bodies[1]
    assert rig.browser.decrypt(bodies[1])["id"] == "n_1"


async def test_5xx_is_retried_with_backoff_then_fails(rig: Rig) -> None:
    rig.service.default = Reply(503)
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.FAILED
    assert len(rig.service.requests) == 3  # the first try and 2 retries
    assert len(rig.waits) == 2 and 0.25 <= rig.waits[0] <= 0.75 and 0.5 <= rig.waits[1] <= 1.5


async def test_a_bad_request_fails_without_retry(rig: Rig) -> None:
    rig.service.replies.append(Reply(400))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.FAILED
    assert len(rig.service.requests) == 1


def test_vapid_key_is_kept_across_restarts_and_private(tmp_path: Path) -> None:
    first = public_key_b64(load_vapid(tmp_path))
    assert public_key_b64(load_vapid(tmp_path)) == first
    assert (tmp_path / "vapid_private.pem").stat().st_mode & 0o777 == 0o600
    point = base64.urlsafe_b64decode(first + "=")
    assert len(point) == 65 and point[0] == 4


def test_workers_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    """``serve --workers`` starts several processes on one data folder at once:
    whoever writes the key first wins, and nobody reads half a file."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: public_key_b64(load_vapid(tmp_path)), range(16)))
    assert len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["vapid_private.pem"]  # no temporaries


def test_a_bad_key_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "vapid_private.pem").write_text("not a key")
    with pytest.raises(ValueError, match=r"vapid_private\.pem is not a P-256 private key"):
        load_vapid(tmp_path)
    with pytest.raises(ValueError, match=r"push\.vapid_private_key: no file"):
        load_vapid(tmp_path, str(tmp_path / "missing.pem"))
