"""Push endpoints a device registers, and their validation.

The accepted forms (issue 16, the public contract)::

    {"kind": "webpush", "subscription": {"endpoint": "https://...",
                                         "keys": {"p256dh": "...", "auth": "..."}}}
    {"kind": "fcm", "token": "..."}
    {"kind": "apns", "token": "<hex>", "topic": "com.example.app"}

A Web Push endpoint is an https URL (RFC 8030 section 5: push services speak
HTTPS), ``p256dh`` the browser's P-256 public key as unpadded base64url (65
bytes, uncompressed point, RFC 8291 section 3.1) and ``auth`` its 16-byte
authentication secret (RFC 8291 section 3.2). An FCM registration token is
opaque: printable ASCII without spaces, bounded. An APNs device token is hex
(32 bytes today; up to 100 bytes accepted, as Apple reserves the right to
grow it) and ``topic`` the app's bundle id. Anything else is a
:class:`~tidings.errors.BadRequest` naming the field.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import BadRequest

__all__ = ["KINDS", "Endpoint", "b64url_decode", "parse_endpoint"]

Kind = Literal["webpush", "fcm", "apns"]
KINDS: tuple[Kind, ...] = ("webpush", "fcm", "apns")
MAX_URL = 2048
MAX_TOKEN = 4096
_FCM_TOKEN = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN}}}")
_APNS_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2}){32,100}")
_BUNDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,254}")


def b64url_decode(text: str) -> bytes:
    """Unpadded (or padded) base64url, strictly: anything else raises ValueError."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as e:
        raise ValueError("not base64url") from e


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One device's way to be reached when it is not connected.

    ``address`` is what identifies it at the provider (the Web Push endpoint
    URL, the FCM or APNs token): registering the same address again replaces
    the entry, whichever device names it.
    """

    kind: Kind
    address: str
    p256dh: str = ""  # webpush
    auth: str = ""  # webpush
    topic: str = ""  # apns bundle id

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "webpush":
            return {"kind": "webpush", "subscription": {
                "endpoint": self.address, "keys": {"p256dh": self.p256dh, "auth": self.auth}}}
        if self.kind == "apns":
            return {"kind": "apns", "token": self.address, "topic": self.topic}
        return {"kind": "fcm", "token": self.address}

    def subscription_info(self) -> dict[str, Any]:
        """The Web Push subscription as pywebpush takes it."""
        return {"endpoint": self.address, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


def _only(d: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise BadRequest(f"{where}{unknown[0]}: unknown field")


def _webpush(body: Mapping[str, Any]) -> Endpoint:
    sub = body.get("subscription")
    if not isinstance(sub, Mapping):
        raise BadRequest("subscription: must be an object with endpoint and keys")
    _only(sub, {"endpoint", "keys", "expirationTime"}, "subscription.")
    url = sub.get("endpoint")
    parts = urlsplit(url) if isinstance(url, str) and len(url) <= MAX_URL else None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.username:
        raise BadRequest(f"subscription.endpoint: must be an https URL of at most {MAX_URL} "
                         f"characters")
    keys = sub.get("keys")
    if not isinstance(keys, Mapping):
        raise BadRequest("subscription.keys: must be an object with p256dh and auth")
    p256dh, auth = keys.get("p256dh"), keys.get("auth")
    if not isinstance(p256dh, str):
        p256dh = ""
    if not isinstance(auth, str):
        auth = ""
    try:
        point = b64url_decode(p256dh)
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        if len(point) != 65:
            raise ValueError("not uncompressed")
    except (ValueError, TypeError):
        raise BadRequest("subscription.keys.p256dh: must be a P-256 public key (65 bytes, "
                         "uncompressed, base64url)") from None
    try:
        if len(b64url_decode(auth)) != 16:
            raise ValueError("not 16 bytes")
    except (ValueError, TypeError):
        raise BadRequest("subscription.keys.auth: must be 16 bytes, base64url") from None
    return Endpoint("webpush", str(url), p256dh.rstrip("="), auth.rstrip("="))


def parse_endpoint(body: Any) -> Endpoint:
    """A registration body (the forms in the module docstring) -> :class:`Endpoint`."""
    if not isinstance(body, Mapping):
        raise BadRequest("endpoint: must be an object with kind")
    kind = body.get("kind")
    if kind == "webpush":
        _only(body, {"kind", "subscription", "device"}, "")
        return _webpush(body)
    if kind == "fcm":
        _only(body, {"kind", "token", "device"}, "")
        token = body.get("token")
        if not isinstance(token, str) or not _FCM_TOKEN.fullmatch(token):
            raise BadRequest(f"token: must be an FCM registration token (1-{MAX_TOKEN} "
                             f"printable characters, no spaces)")
        return Endpoint("fcm", token)
    if kind == "apns":
        _only(body, {"kind", "token", "topic", "device"}, "")
        token, topic = body.get("token"), body.get("topic")
        if not isinstance(token, str) or not _APNS_TOKEN.fullmatch(token):
            raise BadRequest("token: must be an APNs device token (hex, 32-100 bytes)")
        if not isinstance(topic, str) or not _BUNDLE.fullmatch(topic):
            raise BadRequest("topic: must be the app's bundle id")
        return Endpoint("apns", token.lower(), topic=topic)
    raise BadRequest(f"kind: must be one of {', '.join(KINDS)}")
