"""FCM HTTP v1 through local stand-ins: the OAuth token exchange (a JWT grant
signed with the service account's key, google-auth's own code path) and the
send request's shape, authorisation and error handling, against the
published formats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from support.push_standins import Reply, StandIn, TestCA, service_account
from tidings.push.endpoints import Endpoint, parse_endpoint
from tidings.push.fcm import FCM_SCOPE, FcmProvider
from tidings.push.providers import PushMessage, Result, Retrying, collapse_id

TOKEN = "fcm-registration-token:APA91b_test"


@dataclass
class Rig:
    fcm: StandIn
    oauth: StandIn
    provider: FcmProvider
    key: rsa.RSAPrivateKey
    waits: list[float]
    endpoint: Endpoint


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ca = TestCA(tmp_path)
    oauth = StandIn(Reply(200, body={"access_token": "ya29.first", "expires_in": 3600,
                                     "token_type": "Bearer"}))
    oauth_url = await oauth.start() + "/token"
    fcm = StandIn(Reply(200, body={"name": "projects/tidings-test/messages/1"}))
    fcm_url = await fcm.start(ca.server_context(["localhost"]))
    account, key = service_account(tmp_path, oauth_url)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ca.client_context())) as session:
        provider = FcmProvider(str(account), session,
                               Retrying(retries=2, backoff=0.5, sleep=sleep), url=fcm_url)
        yield Rig(fcm, oauth, provider, key, waits,
                  parse_endpoint({"kind": "fcm", "token": TOKEN}))
    await fcm.stop()
    await oauth.stop()


MESSAGE = PushMessage("n_7", title="Price alert", body="BTC moved 5%", data={"sym": "BTC"},
                      priority="urgent", ttl=600, collapse_key="btc")


async def test_send_request_shape_and_oauth(rig: Rig) -> None:
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    # the token exchange: a JWT bearer grant signed RS256 by the service account
    [grant] = rig.oauth.requests
    form = parse_qs(grant.body.decode())
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    # (google-auth names Google's token endpoint as the audience, wherever it posts)
    claims = jwt.decode(form["assertion"][0], rig.key.public_key(), algorithms=["RS256"],
                        audience="https://oauth2.googleapis.com/token")
    assert claims["iss"] == "push@tidings-test.iam.gserviceaccount.com"
    assert claims["scope"] == FCM_SCOPE
    # the send
    [req] = rig.fcm.requests
    assert req.method == "POST"
    assert req.path == "/v1/projects/tidings-test/messages:send"
    assert req.headers["authorization"] == "Bearer ya29.first"
    msg = orjson.loads(req.body)["message"]
    assert msg["token"] == TOKEN
    assert msg["notification"] == {"title": "Price alert", "body": "BTC moved 5%"}
    assert orjson.loads(msg["data"]["tidings"]) == MESSAGE.payload()
    assert all(isinstance(v, str) for v in msg["data"].values())  # FCM: strings only
    cid = collapse_id(MESSAGE)
    assert msg["android"] == {"ttl": "600s", "priority": "HIGH", "collapse_key": cid}
    assert msg["apns"]["headers"] == {"apns-collapse-id": cid, "apns-priority": "10"}
    assert msg["webpush"]["headers"] == {"TTL": "600", "Urgency": "high", "Topic": cid}


async def test_the_token_is_reused_until_it_expires(rig: Rig) -> None:
    for _ in range(3):
        assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    assert len(rig.oauth.requests) == 1 and len(rig.fcm.requests) == 3


async def test_withdrawal_is_data_only_with_the_same_collapse_key(rig: Rig) -> None:
    await rig.provider.send(rig.endpoint, PushMessage("n_7", dismiss=True, collapse_key="btc"))
    msg = orjson.loads(rig.fcm.requests[0].body)["message"]
    assert "notification" not in msg
    assert orjson.loads(msg["data"]["tidings"]) == {"type": "dismiss", "id": "n_7"}
    assert msg["android"]["collapse_key"] == collapse_id(MESSAGE)


async def test_unregistered_token_is_gone(rig: Rig) -> None:
    rig.fcm.replies.append(Reply(404, body={"error": {
        "code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                     "errorCode": "UNREGISTERED"}]}}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.GONE
    assert len(rig.fcm.requests) == 1


async def test_quota_is_retried_after_retry_after(rig: Rig) -> None:
    rig.fcm.replies.append(Reply(429, {"Retry-After": "12"}, {"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "details": [{"errorCode": "QUOTA_EXCEEDED"}]}}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    assert rig.waits == [12.0] and len(rig.fcm.requests) == 2


async def test_401_refreshes_the_token_once(rig: Rig) -> None:
    rig.fcm.replies.append(Reply(401, body={"error": {"code": 401,
                                                      "status": "UNAUTHENTICATED"}}))
    rig.oauth.default = Reply(200, body={"access_token": "ya29.second", "expires_in": 3600,
                                         "token_type": "Bearer"})
    rig.oauth.replies.append(Reply(200, body={"access_token": "ya29.first",
                                              "expires_in": 3600, "token_type": "Bearer"}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.SENT
    assert [r.headers["authorization"] for r in rig.fcm.requests] == [
        "Bearer ya29.first", "Bearer ya29.second"]


async def test_invalid_argument_fails_without_retry(rig: Rig) -> None:
    rig.fcm.replies.append(Reply(400, body={"error": {"code": 400,
                                                      "status": "INVALID_ARGUMENT"}}))
    assert await rig.provider.send(rig.endpoint, MESSAGE) is Result.FAILED
    assert len(rig.fcm.requests) == 1
