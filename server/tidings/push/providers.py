"""What the three push providers share.

A :class:`PushMessage` is one notification (or its withdrawal) for one
device; a provider turns it into its platform's request. Every provider:

* runs at most ``concurrency`` requests at once (a semaphore per provider);
* gives each attempt ``timeout`` seconds;
* retries 429 and 5xx answers (and timeouts, connection errors) up to
  ``retries`` more times, waiting ``Retry-After`` when the platform sends
  it (seconds or an HTTP date, at most :data:`MAX_RETRY_AFTER`), else an
  exponential backoff from ``backoff`` seconds with jitter;
* reports :attr:`Result.GONE` where the platform says the endpoint is no
  longer valid (Web Push 404/410, FCM ``UNREGISTERED``, APNs
  ``BadDeviceToken`` / ``Unregistered``): the caller removes the endpoint;
* maps ``ttl``, ``priority`` and the collapse key to its platform's fields.

``sleep`` and ``random`` are injectable, so tests drive retries without
waiting.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from .endpoints import Endpoint

__all__ = [
    "MAX_RETRY_AFTER",
    "Attempt",
    "Provider",
    "PushMessage",
    "Result",
    "Retrying",
    "collapse_id",
    "retry_after_seconds",
]

MAX_RETRY_AFTER = 300.0  # longest Retry-After honoured; a longer one is a failure now
Sleep = Callable[[float], Awaitable[None]]


class Result(enum.StrEnum):
    """Per device; the outcome names the stats count (``pushed_<kind>``)."""

    SENT = "sent"
    FAILED = "provider_failed"
    GONE = "endpoint_gone"


@dataclass(frozen=True, slots=True)
class PushMessage:
    """One notification for the OS to show, or its withdrawal (``dismiss``)."""

    notification: str  # the notification id
    title: str = ""
    body: str = ""
    data: Any = None
    image: str | None = None
    category: str = "general"
    priority: str = "normal"  # low, normal, high, urgent
    ttl: int = 86400  # seconds the platform may keep it for an offline device
    collapse_key: str | None = None
    dismiss: bool = False
    actions: list[dict[str, str]] = field(default_factory=list)
    track: dict[str, str] | None = None  # the worker's signed report link (push/track.py)

    def payload(self) -> dict[str, Any]:
        """What the service worker / app gets (the shape tidings-sw.js reads)."""
        if self.dismiss:
            return {"type": "dismiss", "id": self.notification}
        out: dict[str, Any] = {"type": "notification", "id": self.notification,
                               "title": self.title, "body": self.body,
                               "category": self.category}
        if self.data is not None:
            out["data"] = self.data
        if self.image:
            out["image"] = self.image
        if self.actions:
            out["actions"] = self.actions
        if self.track:
            out["track"] = self.track
        return out

    @property
    def urgent(self) -> bool:
        return self.priority in ("high", "urgent")


def collapse_id(message: PushMessage, limit: int = 32) -> str:
    """A stable id the platform collapses on: the collapse key, else the
    notification id, hashed to ``limit`` base64url characters (a Web Push
    ``Topic`` is at most 32 of them, RFC 8030 section 5.4; an APNs collapse id
    at most 64 bytes), so the withdrawal replaces the notification."""
    import base64

    digest = hashlib.sha256((message.collapse_key or message.notification).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:limit]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request's answer, as the retry loop needs it."""

    result: Result | None  # None: retry (429, 5xx, timeout, connection error)
    status: int = 0
    retry_after: float | None = None
    detail: str = ""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110
    section 10.2.3); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Provider(Protocol):
    kind: str

    async def send(self, endpoint: Endpoint, message: PushMessage) -> Result: ...

    async def close(self) -> None: ...


class Retrying:
    """Bounded concurrency and the retry loop, shared by the providers."""

    def __init__(self, *, concurrency: int = 32, retries: int = 3, backoff: float = 0.5,
                 timeout: float = 10.0, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None) -> None:
        self.gate = asyncio.Semaphore(concurrency)
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.attempts = 0  # requests made, for tests and metrics

    async def run(self, attempt: Callable[[], Awaitable[Attempt]]) -> tuple[Result, Attempt]:
        last = Attempt(Result.FAILED)
        for n in range(self.retries + 1):
            async with self.gate:
                self.attempts += 1
                try:
                    async with asyncio.timeout(self.timeout):
                        last = await attempt()
                except (TimeoutError, OSError) as e:
                    last = Attempt(None, detail=type(e).__name__)
            if last.result is not None:
                return last.result, last
            if n == self.retries:
                break
            wait = last.retry_after
            if wait is None:
                wait = self.backoff * 2**n * (0.5 + self.rng.random())
            elif wait > MAX_RETRY_AFTER:
                break
            await self.sleep(wait)
        return Result.FAILED, last
