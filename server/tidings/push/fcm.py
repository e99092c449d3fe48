"""FCM HTTP v1 (``POST /v1/projects/{project}/messages:send``), authorised
with an OAuth token from a service account through google-auth.

The service-account file (``push.fcm_service_account``) names the project
and the token endpoint; google-auth signs the JWT grant and refreshes the
token before it expires (its HTTP client is synchronous, so a refresh runs in
a thread, one at a time). The message carries the notification for the
system tray and the whole payload under ``data.tidings`` (FCM data values are
strings) for the app; ``ttl``, ``priority`` and the collapse key map to the
Android (``ttl``, ``priority``, ``collapse_key``), APNs-via-FCM
(``apns-collapse-id``, ``apns-priority``) and web (``TTL``, ``Urgency``,
``Topic``) fields. A withdrawal is a data-only message with the same collapse
key. Errors: ``UNREGISTERED`` (or 404) means the token is gone; 429 and 5xx
(``UNAVAILABLE``, ``INTERNAL``, ``QUOTA_EXCEEDED``) are retried; a 401 drops
the cached token and tries once more with a fresh one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from .endpoints import Endpoint
from .providers import Attempt, PushMessage, Result, Retrying, collapse_id, retry_after_seconds
from .webpush import urgency

__all__ = ["FCM_SCOPE", "FcmProvider", "fcm_message"]

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
DEFAULT_URL = "https://fcm.googleapis.com"


def fcm_message(token: str, message: PushMessage) -> dict[str, Any]:
    """The ``message`` object of an FCM v1 send request."""
    cid = collapse_id(message, 32)
    high = message.urgent
    ttl = max(0, int(message.ttl))
    out: dict[str, Any] = {
        "token": token,
        "data": {"tidings": orjson.dumps(message.payload()).decode()},
        "android": {"ttl": f"{ttl}s", "priority": "HIGH" if high else "NORMAL",
                    "collapse_key": cid},
        "apns": {"headers": {"apns-collapse-id": cid,
                             "apns-priority": "10" if high and not message.dismiss else "5"}},
        "webpush": {"headers": {"TTL": str(ttl), "Urgency": urgency(message.priority),
                                "Topic": cid}},
    }
    if not message.dismiss:
        note: dict[str, str] = {"title": message.title, "body": message.body}
        if message.image:
            note["image"] = message.image
        out["notification"] = note
    return out


def _error_code(body: Any) -> str:
    """FCM's ``errorCode`` from ``error.details`` (or the ``status``)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    return str(error.get("status") or "")


class FcmProvider:
    kind = "fcm"

    def __init__(self, service_account_file: str, session: aiohttp.ClientSession,
                 retrying: Retrying, url: str = DEFAULT_URL) -> None:
        self.credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            service_account_file, scopes=[FCM_SCOPE])
        self.project = self.credentials.project_id
        self.session = session
        self.retrying = retrying
        self.endpoint = f"{url.rstrip('/')}/v1/projects/{self.project}/messages:send"
        self._refresh = asyncio.Lock()

    async def _token(self, stale: bool = False) -> str:
        async with self._refresh:
            if stale or not self.credentials.valid:
                await asyncio.to_thread(self.credentials.refresh, GoogleRequest())
            return str(self.credentials.token)

    async def send(self, endpoint: Endpoint, message: PushMessage) -> Result:
        body = orjson.dumps({"message": fcm_message(endpoint.address, message)})
        stale = False

        async def attempt() -> Attempt:
            nonlocal stale
            token = await self._token(stale)
            stale = False
            async with self.session.post(self.endpoint, data=body, headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json"}) as r:
                if r.status == 200:
                    return Attempt(Result.SENT, 200)
                try:
                    answer = await r.json(loads=orjson.loads, content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    answer = None
                code = _error_code(answer)
                if code == "UNREGISTERED" or r.status == 404:
                    return Attempt(Result.GONE, r.status, detail=code)
                if r.status == 401:
                    stale = True
                    return Attempt(None, 401, 0.0, code)
                if r.status == 429 or r.status >= 500:
                    return Attempt(None, r.status, retry_after_seconds(
                        r.headers.get("Retry-After")), code)
                return Attempt(Result.FAILED, r.status, detail=code)

        result, _ = await self.retrying.run(attempt)
        return result

    async def close(self) -> None:
        return None
