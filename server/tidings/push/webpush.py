"""Web Push (RFC 8030) with message encryption (RFC 8291, aes128gcm) and VAPID
(RFC 8292), through pywebpush and py-vapid.

Each message is encrypted for the subscription's keys and signed with the
server's VAPID key (a JWT whose ``aud`` is the push service's origin and
``sub`` the operator's contact, ``push.webpush_subject``). Headers: ``TTL``
(the notification's ttl), ``Urgency`` (``low`` / ``normal`` / ``high`` from
the priority; ``urgent`` is ``high``, RFC 8030 section 5.3) and ``Topic`` (a
32-character id from the collapse key or the notification id, section 5.4),
so the ``dismiss`` message sent when the notification is read replaces it at
the push service if it is still waiting there. 404 and 410 mean the
subscription is gone (section 7.3 and common practice); 429 and 5xx are
retried (see :mod:`tidings.push.providers`).
"""

from __future__ import annotations

import aiohttp
import orjson
from py_vapid import Vapid02
from pywebpush import WebPushException, webpush_async

from .endpoints import Endpoint
from .providers import Attempt, PushMessage, Result, Retrying, collapse_id, retry_after_seconds

__all__ = ["WebPushProvider", "urgency"]

_URGENCY = {"low": "low", "normal": "normal", "high": "high", "urgent": "high"}


def urgency(priority: str) -> str:
    return _URGENCY.get(priority, "normal")


class WebPushProvider:
    kind = "webpush"

    def __init__(self, vapid: Vapid02, subject: str, session: aiohttp.ClientSession,
                 retrying: Retrying) -> None:
        self.vapid = vapid
        self.subject = subject
        self.session = session
        self.retrying = retrying

    async def send(self, endpoint: Endpoint, message: PushMessage) -> Result:
        body = orjson.dumps(message.payload()).decode()
        headers: dict[str, str | int | float] = {"Urgency": urgency(message.priority),
                                                 "Topic": collapse_id(message, 32)}

        async def attempt() -> Attempt:
            try:
                reply = await webpush_async(
                    endpoint.subscription_info(), body, vapid_private_key=self.vapid,
                    vapid_claims={"sub": self.subject}, ttl=max(0, int(message.ttl)),
                    headers=headers, aiohttp_session=self.session)
            except WebPushException as e:
                return self._answer(e)
            status = getattr(reply, "status", 201)
            return Attempt(Result.SENT, status)

        result, _ = await self.retrying.run(attempt)
        return result

    @staticmethod
    def _answer(e: WebPushException) -> Attempt:
        response = e.response
        status = int(getattr(response, "status", 0) or 0)
        if status in (404, 410):
            return Attempt(Result.GONE, status)
        if status == 429 or status >= 500 or status == 0:
            headers = getattr(response, "headers", None) or {}
            return Attempt(None, status, retry_after_seconds(headers.get("Retry-After")))
        return Attempt(Result.FAILED, status)  # 400 (bad request), 403 (VAPID), 413 ...

    async def close(self) -> None:
        return None
