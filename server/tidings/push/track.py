"""Signed tracking links for the service worker (issue 16).

A notification shown by the OS from a Web Push message is reported back
(``delivered``, ``opened``, ``clicked``, ``dismissed``) by ``tidings-sw.js``
with no user credentials: each push payload carries ``track: {user, token}``
where ``token`` is an HMAC-SHA256 of the user and the notification id under a
key derived from the JWT secret (so it is worth nothing as a connect token and
needs no state). ``GET /push/track?u=&n=&e=&t=`` on the WS port checks it in
constant time and records the event like the ``track`` op: once per user and
event, for a user the notification targeted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["PUSH_TRACK_PATH", "TrackSigner"]

PUSH_TRACK_PATH = "/push/track"


class TrackSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "TrackSigner()"

    def sign(self, user: str, notification: str) -> str:
        mac = hmac.new(self._key, f"{user}\0{notification}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()[:18]).decode()

    def verify(self, user: str, notification: str, token: str) -> bool:
        return hmac.compare_digest(self.sign(user, notification).encode(),
                                   token.encode("utf-8", "replace"))

    def track(self, user: str, notification: str) -> dict[str, str]:
        """The ``track`` member of a push payload."""
        return {"user": user, "token": self.sign(user, notification)}
