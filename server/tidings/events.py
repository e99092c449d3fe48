"""Events for backends: every delivery outcome, engagement, feedback and
presence change, with a unique id and a timestamp (issue 13).

An :class:`Event` is ``{"id", "type", "ts", "user", "notification"?, ...}``.
Ids sort by time: a millisecond timestamp and a per-node sequence, then the
node's tag, so events from one node keep their order and ids from two nodes
never collide.

:class:`WebhookSink` posts them to a backend's URL:

* batched: one POST carries up to ``batch`` events, sent once that many wait
  or ``linger`` seconds after the first of them arrived;
* signed: ``X-Tidings-Signature: sha256=<hex HMAC-SHA256 of the body>`` with
  the sink's secret (the presence webhook's scheme), plus
  ``X-Tidings-Delivery`` (the first event's id: a retry repeats it, so the
  backend can drop a batch it already has);
* ordered: one batch in flight at a time, retried (with exponential backoff,
  honouring ``Retry-After`` on 429 / 503) before the next is sent;
* never blocking: :meth:`WebhookSink.put` only appends to a bounded queue;
  over ``queue_max`` events the newest are dropped and counted, and a batch
  that fails every retry is dead-lettered (counted in
  ``tidings_events_dead_lettered_total``, its ids logged at WARNING).

A sink is one *subscriber* of a node's :class:`EventLog`: it may take only some
event types (``types``) and write its requests in its own shape (``body``).
The presence webhook is such a subscriber (presence.py: ``online`` /
``offline`` only, one event per request, in the shape it has always had).

Time and randomness are injectable (``sleep``, ``rng``) for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from .metrics import Metrics
from .push.providers import retry_after_seconds
from .store.contracts.events import EventStore

__all__ = ["EVENT_TYPES", "Counters", "Event", "EventIds", "EventLog", "WebhookSink",
           "batch_body", "sign"]

log = logging.getLogger("tidings.events")

EVENT_TYPES = frozenset({
    # delivery outcomes (issue 12) and platform push (issue 16)
    "pushed", "held", "silent_quiet_hours", "silent_capped", "suppressed_category", "expired",
    "pushed_webpush", "pushed_fcm", "pushed_apns", "provider_failed", "endpoint_gone",
    # engagement, feedback, presence
    "delivered", "opened", "clicked", "dismissed", "feedback", "online", "offline",
})
Sleep = Callable[[float], Awaitable[None]]


def sign(secret: str, body: bytes) -> str:
    """``X-Tidings-Signature`` of a webhook body (the events and presence webhooks)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class EventIds:
    """Sortable unique ids: ``<ms:013d>-<seq:06d>-<node tag>``."""

    def __init__(self, node: str, clock: Callable[[], float] = time.time) -> None:
        self._tag = hashlib.sha256(node.encode()).hexdigest()[:6]
        self._clock = clock
        self._last = 0
        self._seq = itertools.count()

    def next(self) -> tuple[str, float]:
        now = self._clock()
        ms = max(int(now * 1000), self._last)
        if ms != self._last:
            self._last, self._seq = ms, itertools.count()
        return f"{ms:013d}-{next(self._seq):06d}-{self._tag}", now


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    ts: float
    user: str | None = None
    notification: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": self.type, "ts": self.ts}
        if self.user is not None:
            out["user"] = self.user
        if self.notification is not None:
            out["notification"] = self.notification
        out.update(self.extra)
        return out


def batch_body(batch: Sequence[Event]) -> bytes:
    """The events webhook's request body: ``{"events": [event, ...]}``."""
    return orjson.dumps({"events": [e.to_dict() for e in batch]})


@dataclass(frozen=True, slots=True)
class Counters:
    """The metric names a sink counts under: events sent, dead-lettered (given up
    after every retry) and dropped (queue full)."""

    sent: str = "tidings_events_sent_total"
    dead: str = "tidings_events_dead_lettered_total"
    dropped: str = "tidings_events_dropped_total"


class WebhookSink:
    def __init__(self, url: str, session: aiohttp.ClientSession, *, secret: str = "",
                 batch: int = 100, linger: float = 0.5, retries: int = 5,
                 backoff: float = 0.5, queue_max: int = 10000, timeout: float = 10.0,
                 metrics: Metrics | None = None, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None, types: frozenset[str] | None = None,
                 body: Callable[[Sequence[Event]], bytes] = batch_body,
                 user_agent: str = "tidings-events", counters: Counters = Counters()
                 ) -> None:
        self.types = types  # the event types this subscriber takes; None: all
        self.body = body
        self.user_agent = user_agent
        self.counters = counters
        self.url = url
        self.session = session
        self.secret = secret
        self.batch = batch
        self.linger = linger
        self.retries = retries
        self.backoff = backoff
        self.queue_max = queue_max
        self.timeout = timeout
        self.metrics = metrics
        self.sleep = sleep
        self.rng = rng or random.Random()
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._empty = asyncio.Event()  # set while nothing waits or is being sent
        self._empty.set()
        self._closing = False
        if metrics is not None and counters == Counters():
            metrics.describe(counters.sent, "Events delivered to the webhook.")
            metrics.describe(counters.dead, "Events given up after every webhook retry.")
            metrics.describe(counters.dropped,
                             "Events dropped because the webhook queue was full.")

    def __len__(self) -> int:
        return len(self._queue)

    def wants(self, event: Event) -> bool:
        return self.types is None or event.type in self.types

    def put(self, event: Event) -> None:
        """Queue ``event`` (never blocks, never raises)."""
        if len(self._queue) >= self.queue_max:
            self._count(self.counters.dropped)
            return
        self._queue.append(event)
        self._empty.clear()
        self._wake.set()
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _count(self, name: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.inc(name, n)

    async def _run(self) -> None:
        try:
            while self._queue:
                if len(self._queue) < self.batch and not self._closing:
                    # linger: let a batch fill, but not longer than ``linger``
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(self.linger):
                            while len(self._queue) < self.batch and not self._closing:
                                await self._wake.wait()
                                self._wake.clear()
                    except TimeoutError:
                        pass
                n = min(self.batch, len(self._queue))
                batch = [self._queue[i] for i in range(n)]
                await self._deliver(batch)
                for _ in range(n):
                    self._queue.popleft()
        finally:
            self._task = None
            if not self._queue:
                self._empty.set()

    async def wait_empty(self) -> None:
        """Until every queued event was sent or given up."""
        await self._empty.wait()

    async def _deliver(self, batch: list[Event]) -> None:
        body = self.body(batch)
        headers = {"Content-Type": "application/json", "X-Tidings-Delivery": batch[0].id,
                   "User-Agent": self.user_agent}
        if self.secret:
            headers["X-Tidings-Signature"] = sign(self.secret, body)
        for attempt in range(self.retries + 1):
            wait: float | None = None
            reason = ""
            try:
                async with asyncio.timeout(self.timeout), self.session.post(
                        self.url, data=body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        self._count(self.counters.sent, len(batch))
                        return
                    reason = f"HTTP {r.status}"
                    if r.status in (429, 503):
                        wait = retry_after_seconds(r.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                reason = type(e).__name__
            if attempt == self.retries:
                break
            if wait is None:
                wait = self.backoff * 2**attempt * (0.5 + self.rng.random())
            log.info("%s webhook failed (%s); retry in %.1fs", self.user_agent, reason, wait)
            await self.sleep(min(wait, 300.0))
        self._count(self.counters.dead, len(batch))
        log.warning("%s webhook gave up on %d events (%s .. %s)", self.user_agent, len(batch),
                    batch[0].id, batch[-1].id)

    async def close(self, grace: float = 2.0) -> None:
        """Send what waits for up to ``grace`` seconds (no lingering), then stop."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class EventLog:
    """A node's event stream: :meth:`emit` makes an :class:`Event` and hands it
    to the store's event log (for ``GET /v1/events``) and to each subscriber
    (the events webhook ``webhook``, the presence webhook among ``subscribers``)
    that wants its type. Never blocks the caller: events are written to the
    store in groups by one background writer (at most ``group`` per call),
    and an event the store could not take is counted
    (``tidings_events_unstored_total``), never retried forever."""

    def __init__(self, node: str, store: EventStore, *, keep: float,
                 webhook: WebhookSink | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, group: int = 500,
                 queue_max: int = 100_000, subscribers: Sequence[WebhookSink] = ()) -> None:
        self.ids = EventIds(node, clock)
        self.store = store
        self.keep = keep
        self.sinks = [*([webhook] if webhook is not None else []), *subscribers]
        self.metrics = metrics
        self.group = group
        self.queue_max = queue_max
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        self._flushed.set()
        if metrics is not None:
            metrics.describe("tidings_events_total", "Events emitted, by type.")
            metrics.describe("tidings_events_unstored_total",
                             "Events the store could not take (lost to GET /v1/events).")

    def emit(self, type: str, *, user: str | None = None, notification: str | None = None,
             **extra: Any) -> Event:
        eid, ts = self.ids.next()
        event = Event(eid, type, ts, user, notification, extra)
        if self.metrics is not None:
            self.metrics.inc("tidings_events_total", type=type)
        if len(self._pending) < self.queue_max:
            self._pending.append(event.to_dict())
            self._flushed.clear()
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._write())
        elif self.metrics is not None:
            self.metrics.inc("tidings_events_unstored_total")
        for sink in self.sinks:
            if sink.wants(event):
                sink.put(event)
        return event

    async def _write(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.group], self._pending[self.group:]
                try:
                    await self.store.events_append(batch, keep=self.keep)
                except Exception as e:  # Unavailable, or our bug: counted, logged, dropped
                    log.warning("event log: %d events not stored (%s)", len(batch),
                                type(e).__name__)
                    if self.metrics is not None:
                        self.metrics.inc("tidings_events_unstored_total", len(batch))
        finally:
            self._task = None
            self._flushed.set()

    async def flushed(self) -> None:
        """Until every emitted event was handed to the store."""
        await self._flushed.wait()

    async def since(self, cursor: str | None, limit: int
                    ) -> tuple[list[dict[str, Any]], str | None]:
        return await self.store.events_since(cursor, limit=limit)

    async def close(self, grace: float = 2.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.flushed()
        await asyncio.gather(*(sink.close(grace) for sink in self.sinks))
