"""What a device may register as its push endpoint, and the 400s for the rest."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tidings.errors import BadRequest
from tidings.push.endpoints import parse_endpoint


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


P256DH = b64(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
AUTH = b64(os.urandom(16))


def webpush(endpoint: Any = "https://push.example.net/wpush/v2/abc", p256dh: Any = P256DH,
            auth: Any = AUTH) -> dict[str, Any]:
    return {"kind": "webpush",
            "subscription": {"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}}


def test_the_three_forms_round_trip() -> None:
    for body in (webpush(), {"kind": "fcm", "token": "dA1:APA91bH-x_y"},
                 {"kind": "apns", "token": "ab" * 32, "topic": "com.example.app"}):
        assert parse_endpoint(body).to_dict() == body


def test_apns_tokens_are_normalised_to_lower_case() -> None:
    e = parse_endpoint({"kind": "apns", "token": "AB" * 32, "topic": "com.example.app"})
    assert e.address == "ab" * 32


@pytest.mark.parametrize(("body", "field"), [
    ({"kind": "sms"}, "kind"),
    ("webpush", "endpoint"),
    (webpush(endpoint="http://push.example.net/x"), "subscription.endpoint"),
    (webpush(endpoint="https://"), "subscription.endpoint"),
    (webpush(endpoint="javascript:alert(1)"), "subscription.endpoint"),
    (webpush(endpoint="https://user:pw@push.example.net/x"), "subscription.endpoint"),
    (webpush(endpoint="https://push.example.net/" + "a" * 3000), "subscription.endpoint"),
    (webpush(p256dh=b64(os.urandom(65))), "subscription.keys.p256dh"),  # not on the curve
    (webpush(p256dh=P256DH[:-4]), "subscription.keys.p256dh"),
    (webpush(p256dh="not base64!"), "subscription.keys.p256dh"),
    (webpush(p256dh=None), "subscription.keys.p256dh"),
    (webpush(auth=b64(os.urandom(8))), "subscription.keys.auth"),
    (webpush(auth=12), "subscription.keys.auth"),
    ({"kind": "webpush", "subscription": {"endpoint": "https://a.b/c"}}, "subscription.keys"),
    ({"kind": "webpush", "subscription": {**webpush()["subscription"], "x": 1}},
     "subscription.x"),
    ({"kind": "fcm", "token": ""}, "token"),
    ({"kind": "fcm", "token": "has space"}, "token"),
    ({"kind": "fcm", "token": "x" * 5000}, "token"),
    ({"kind": "fcm", "token": "t", "extra": 1}, "extra"),
    ({"kind": "apns", "token": "zz" * 32, "topic": "com.example.app"}, "token"),
    ({"kind": "apns", "token": "ab" * 8, "topic": "com.example.app"}, "token"),
    ({"kind": "apns", "token": "ab" * 32}, "topic"),
    ({"kind": "apns", "token": "ab" * 32, "topic": "../etc"}, "topic"),
])
def test_bad_endpoints_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_endpoint(body)
    assert str(e.value).startswith(f"{field}:"), str(e.value)
