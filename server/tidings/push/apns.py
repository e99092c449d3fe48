"""APNs over HTTP/2 with token-based authentication (a ``.p8`` key), through aioapns.

aioapns keeps a pool of HTTP/2 connections to Apple and signs the ES256
provider token (``iss`` = team id, ``kid`` = key id) it sends as
``authorization``. We map the message to the request: ``apns-push-type``
``alert`` (``background`` for a withdrawal, which carries
``content-available`` and the ``dismiss`` payload for the app to remove the
notification), ``apns-priority`` 10 for high/urgent and 5 otherwise (a
background push must be 5), ``apns-expiration`` from the ttl, and
``apns-collapse-id`` from the collapse key or the notification id.
``BadDeviceToken``, ``Unregistered`` (410) and ``DeviceTokenNotForTopic``
mean the token is gone; 429 and 5xx are retried.

``push.apns_host`` / ``push.apns_port`` point the client somewhere other than
Apple's hosts (an APNs-compatible gateway, or a local stand-in in tests): the
connection class aioapns uses is swapped for one naming that host, the one
place we reach past aioapns's public constructor.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Any

from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol

from .endpoints import Endpoint
from .providers import Attempt, PushMessage, Result, Retrying, collapse_id

__all__ = ["GONE_REASONS", "ApnsProvider", "apns_payload"]

GONE_REASONS = frozenset({"BadDeviceToken", "Unregistered", "DeviceTokenNotForTopic",
                          "ExpiredToken"})
_RETRY = frozenset({"TooManyRequests", "InternalServerError", "ServiceUnavailable",
                    "Shutdown"})


def apns_payload(message: PushMessage) -> dict[str, Any]:
    """The JSON body: ``aps`` for the system, the Tidings payload beside it."""
    if message.dismiss:
        return {"aps": {"content-available": 1}, "tidings": message.payload()}
    alert: dict[str, Any] = {"title": message.title, "body": message.body}
    aps: dict[str, Any] = {"alert": alert, "sound": "default", "thread-id": message.category}
    if message.image:
        aps["mutable-content"] = 1  # a notification service extension fetches the image
    return {"aps": aps, "tidings": message.payload()}


class ApnsProvider:
    kind = "apns"

    def __init__(self, key_file: str, key_id: str, team_id: str, topic: str,
                 retrying: Retrying, *, sandbox: bool = False,
                 ssl_context: ssl.SSLContext | None = None, host: str = "",
                 port: int = 443) -> None:
        self.retrying = retrying
        self.client = APNs(key=Path(key_file).read_text(), key_id=key_id, team_id=team_id,
                           topic=topic, use_sandbox=sandbox, ssl_context=ssl_context,
                           max_connection_attempts=2)
        if host:
            base = self.client.pool.protocol_class
            self.client.pool.protocol_class = type(
                "APNsGatewayProtocol", (base if base is not None
                                        else APNsProductionClientProtocol,),
                {"APNS_SERVER": host, "APNS_PORT": port})

    async def send(self, endpoint: Endpoint, message: PushMessage) -> Result:
        request = NotificationRequest(
            device_token=endpoint.address,
            message=apns_payload(message),
            # apns-id is a UUID; one per notification and device, so Apple's
            # answer names what it answers
            notification_id=str(uuid.uuid5(uuid.NAMESPACE_URL,
                                           f"tidings:{message.notification}:{endpoint.address}")),
            time_to_live=max(0, int(message.ttl)),
            priority=10 if message.urgent and not message.dismiss else 5,
            collapse_key=collapse_id(message, 64),
            push_type=PushType.BACKGROUND if message.dismiss else PushType.ALERT,
            apns_topic=endpoint.topic or None,
        )

        async def attempt() -> Attempt:
            try:
                answer = await self.client.send_notification(request)
            except ConnectionError as e:
                return Attempt(None, detail=type(e).__name__)
            except Exception as e:  # aioapns's MaxAttemptsExceeded, ConnectionClosed
                return Attempt(None, detail=type(e).__name__)
            status = int(answer.status or 0)
            reason = str(answer.description or "")
            if answer.is_successful:
                return Attempt(Result.SENT, status)
            if reason in GONE_REASONS or status == 410:
                return Attempt(Result.GONE, status, detail=reason)
            if reason in _RETRY or status == 429 or status >= 500:
                return Attempt(None, status, detail=reason)
            return Attempt(Result.FAILED, status, detail=reason)

        result, _ = await self.retrying.run(attempt)
        return result

    async def close(self) -> None:
        self.client.pool.close()
