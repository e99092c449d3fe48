"""Which devices of each user are online, and the presence webhook.

When a user's first device comes online the node's event stream (events.py)
gets ``online``; when the last one has been gone for ``presence.debounce``
seconds it gets ``offline`` (a reconnect inside the debounce sends nothing).

The presence webhook is one subscriber of that stream (:func:`webhook_sink`):
a :class:`~tidings.events.WebhookSink` that takes only ``online`` / ``offline``
and POSTs each alone in the shape receivers have always parsed,
``{"event", "user", "node", "ts"}`` (plus the event's ``id``), signed with
HMAC-SHA256 over the body (``X-Tidings-Signature: sha256=<hex>``) when
``presence.webhook_secret`` is set, retried with exponential backoff, one
at a time in order: delivery never waits for the webhook.

Issue 12: a device coming online or going away also records its user "seen"
in the audience store (segments' ``active_within``), through :class:`Seen`: at
most once per user per ``presence.seen_interval`` seconds on this node, written
in batches by one background task, so a reconnect storm costs the store no more
than one write per user per interval; and every ``presence.seen_refresh``
seconds for the users with a device still connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .config import PresenceSettings
from .errors import TidingsError
from .events import Counters, Event, EventLog, WebhookSink, sign
from .metrics import Metrics
from .plumbing import TaskSet
from .store.base import PresenceStore

__all__ = ["PRESENCE_EVENTS", "Device", "Presence", "Seen", "sign", "webhook_sink"]

log = logging.getLogger("tidings.presence")
PRESENCE_EVENTS = frozenset({"online", "offline"})
_QUEUE_MAX = 10000  # webhook events waiting; more are dropped (and counted)
_CLOSE_GRACE = 2.0  # seconds a closing node gives its store writes to end
_SEEN_BATCH = 100  # users one write of Seen hands the store
_SEEN_KEEP = 100_000  # users whose last record time Seen remembers (more: the oldest go)


@dataclass(frozen=True, slots=True)
class Device:
    device: str
    edge: str  # "ws" | "mqtt"
    node: str
    since: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "edge": self.edge, "node": self.node,
                "since": self.since}


def _dedupe(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per device id (the earliest), oldest first."""
    seen: dict[str, dict[str, Any]] = {}
    for d in entries:
        if d["device"] not in seen or d["since"] < seen[d["device"]]["since"]:
            seen[d["device"]] = d
    return sorted(seen.values(), key=lambda d: d["since"])


def _presence_body(batch: Sequence[Event]) -> bytes:
    """The presence webhook's documented body: one event, ``{"event", "user",
    "node", "ts"}`` (the sink sends one per request), plus the event's ``id``,
    the same as in ``GET /v1/events``."""
    (e,) = batch
    return orjson.dumps({"event": e.type, "user": e.user, "node": e.extra.get("node"),
                         "ts": e.ts, "id": e.id})


def webhook_sink(settings: PresenceSettings, session: aiohttp.ClientSession,
                 metrics: Metrics) -> WebhookSink | None:
    """The presence webhook as a subscriber of the event stream, or None when
    ``presence.webhook`` is not set. Counted as before: tidings_webhook_sent_total,
    tidings_webhook_failed_total, tidings_webhook_dropped_total."""
    if not settings.webhook:
        return None
    return WebhookSink(settings.webhook, session, secret=settings.webhook_secret, batch=1,
                       linger=0.0, retries=settings.retries, queue_max=_QUEUE_MAX,
                       metrics=metrics, types=PRESENCE_EVENTS, body=_presence_body,
                       user_agent="tidings-presence",
                       counters=Counters("tidings_webhook_sent_total",
                                         "tidings_webhook_failed_total",
                                         "tidings_webhook_dropped_total"))


class Seen:
    """Records users "seen" now (``write``), at most once per user per ``interval``
    seconds (by ``clock``); writes go from one background task in batches of
    :data:`_SEEN_BATCH`. ``interval`` 0 turns recording off. A failed write is
    counted and dropped: the next connect records the user again.
    """

    def __init__(self, write: Callable[[Sequence[str]], Awaitable[None]], interval: float,
                 metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._write = write
        self.interval = interval
        self._metrics = metrics
        self._clock = clock
        self._last: dict[str, float] = {}  # user -> when this node last recorded them
        self._pending: dict[str, None] = {}  # users to write, in order
        self._tasks = TaskSet("seen")
        self._writer: asyncio.Task[None] | None = None

    def note(self, user: str) -> None:
        """``user`` is online now: record it unless this node did within ``interval``."""
        if self.interval <= 0:
            return
        now = self._clock()
        last = self._last.get(user)
        if last is not None and now - last < self.interval:
            return
        if last is None and len(self._last) >= _SEEN_KEEP:
            self._forget(now)
        self._last[user] = now
        self._pending[user] = None
        if self._writer is None:
            self._writer = self._tasks.spawn(self._drain())

    def _forget(self, now: float) -> None:
        """Bound memory: drop the users recorded longer than ``interval`` ago (all of
        them if that frees nothing; the cost is an early repeat write)."""
        self._last = {u: t for u, t in self._last.items() if now - t < self.interval}
        if len(self._last) >= _SEEN_KEEP:
            self._last.clear()

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = list(itertools.islice(self._pending, _SEEN_BATCH))
                for user in batch:
                    del self._pending[user]
                try:
                    await self._write(batch)
                except TidingsError:
                    self._metrics.inc("tidings_errors_total", code="seen_unavailable")
                    for user in batch:
                        self._last.pop(user, None)
        finally:
            self._writer = None

    async def close(self) -> None:
        """Let the writes in flight end (bounded), then stop."""
        await self._tasks.close(grace=_CLOSE_GRACE)


class Presence:
    """Online devices. With a store that has ``shared_presence`` (Redis) each node
    writes its entries there, refreshes them every ``ttl / 3`` and removes them
    when devices leave, so every node lists every device and a killed node's
    entries vanish within ``ttl``; the webhook then fires on the cluster-wide
    transitions (first entry, last entry), from whichever node saw them."""

    def __init__(self, node: str, settings: PresenceSettings, metrics: Metrics,
                 store: PresenceStore | None = None, seen: Seen | None = None) -> None:
        self.node = node
        self.seen = seen  # records users seen for the audience store (issue 12)
        self.settings = settings
        self.metrics = metrics
        self.store = store if store is not None and store.shared_presence else None
        self._tasks = TaskSet("presence")  # shared-presence writes and the heartbeat
        self._heartbeat: asyncio.Task[None] | None = None
        self._reseen: asyncio.Task[None] | None = None  # see _seen_again
        # shared-presence writes in the order they happened, by one writer task while
        # there are any: devices that came online meanwhile go out in one call
        self._writes: list[tuple[str, object, Device | None]] = []  # None: a removal
        self._writer: asyncio.Task[None] | None = None
        self._online: dict[str, dict[object, Device]] = {}
        self._announced: set[str] = set()
        self._pending_offline: dict[str, asyncio.TimerHandle] = {}
        # the node's event stream (GET /v1/events, the events and presence webhooks)
        self.events: EventLog | None = None  # set by the app

    def local_users(self) -> list[str]:
        """Users with a device connected to this node now (the sender sends to them
        first, so the people looking get a notification before the rest are written)."""
        return [u for u, devices in self._online.items() if devices]

    def online(self, user: str, key: object, device: str, edge: str) -> None:
        """``key`` identifies the connection (a device may reconnect before it leaves)."""
        devices = self._online.setdefault(user, {})
        entry = devices[key] = Device(device, edge, self.node, time.time())
        if self.seen is not None:
            self.seen.note(user)
            if self._reseen is None and self.settings.seen_refresh > 0:
                self._reseen = self._tasks.spawn(self._seen_again())
        pending = self._pending_offline.pop(user, None)
        if pending is not None:
            pending.cancel()
        if self.store is not None:
            self._write(user, key, entry)
        elif user not in self._announced:
            self._announced.add(user)
            self._emit("online", user)

    def offline(self, user: str, key: object) -> None:
        devices = self._online.get(user)
        if devices is None or devices.pop(key, None) is None:
            return
        if self.seen is not None:
            self.seen.note(user)  # online until now
        if self.store is not None:
            self._write(user, key, None)
        if devices:
            return
        del self._online[user]
        if self.store is None:
            self._debounce(user)

    def _debounce(self, user: str) -> None:
        if self.settings.debounce <= 0:
            self._gone(user)
        else:
            self._pending_offline[user] = asyncio.get_running_loop().call_later(
                self.settings.debounce, self._gone, user)

    def _gone(self, user: str) -> None:
        self._pending_offline.pop(user, None)
        if user in self._online or user not in self._announced:
            return
        if self.store is not None:
            self._spawn(self._gone_everywhere(user))
            return
        self._announced.discard(user)
        self._emit("offline", user)

    async def devices(self, user: str) -> list[dict[str, Any]]:
        if self.store is not None:
            try:
                return _dedupe(await self.store.presence_list(user))
            except TidingsError:
                self.metrics.inc("tidings_errors_total", code="presence_unavailable")
        return _dedupe([d.to_dict() for d in self._online.get(user, {}).values()])

    async def _seen_again(self) -> None:
        """Every ``presence.seen_refresh`` seconds, record the users with a device
        still connected here as seen again: a device online for weeks stays
        ``active_within`` (Seen batches the writes and bounds them per user)."""
        assert self.seen is not None
        while True:
            await asyncio.sleep(self.settings.seen_refresh)
            for user in list(self._online):
                self.seen.note(user)

    # -- shared presence ----------------------------------------------------------

    def _entry(self, key: object) -> str:
        return f"{self.node}:{id(key):x}"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)
        if self._heartbeat is None:
            self._heartbeat = self._tasks.spawn(self._refresh())

    def _write(self, user: str, key: object, entry: Device | None) -> None:
        """Queue a put (``entry``) or a removal (None) of a shared-presence entry."""
        self._writes.append((user, key, entry))
        if self._writer is None:
            self._writer = self._tasks.spawn(self._write_all())
        if self._heartbeat is None:
            self._heartbeat = self._tasks.spawn(self._refresh())

    async def _write_all(self) -> None:
        """The writer: queued writes in order, each run of puts in one store call."""
        try:
            while self._writes:
                writes, self._writes = self._writes, []
                i = 0
                while i < len(writes):
                    j = i
                    while j < len(writes) and writes[j][2] is not None:
                        j += 1
                    if j > i:
                        await self._put_many(writes[i:j])
                    if j < len(writes):
                        await self._remove(writes[j][0], writes[j][1])
                    i = j + 1
        finally:
            self._writer = None

    async def _put_many(self, puts: list[tuple[str, object, Device | None]]) -> None:
        assert self.store is not None
        try:
            counts = await self.store.presence_put_many([
                (user, self._entry(key), entry.to_dict(), self.settings.ttl)
                for user, key, entry in puts if entry is not None])
        except TidingsError:
            return
        for (user, _, _), count in zip(puts, counts, strict=True):
            if count == 1 and user not in self._announced:  # the first device anywhere
                self._emit("online", user)
            self._announced.add(user)

    async def _remove(self, user: str, key: object) -> None:
        assert self.store is not None
        try:
            left = await self.store.presence_remove(user, self._entry(key))
        except TidingsError:
            return
        if left == 0 and user not in self._online:
            self._debounce(user)

    async def _gone_everywhere(self, user: str) -> None:
        assert self.store is not None
        try:
            still = await self.store.presence_list(user)
        except TidingsError:
            return
        if not still and user not in self._online:
            self._announced.discard(user)
            self._emit("offline", user)

    async def _refresh(self) -> None:
        """Keep this node's entries alive; they expire ``ttl`` after the node dies.

        All entries are refreshed in one call (one pipeline on Redis), so a slow
        store costs one timeout per pass, not one per device (which could outlast
        the ttl)."""
        assert self.store is not None
        while True:
            await asyncio.sleep(self.settings.ttl / 3)
            with contextlib.suppress(TidingsError):
                await self.store.presence_put_many([
                    (user, self._entry(key), entry.to_dict(), self.settings.ttl)
                    for user, devices in list(self._online.items())
                    for key, entry in list(devices.items())])

    # -- events -----------------------------------------------------------------

    def _emit(self, event: str, user: str) -> None:
        """Into the event stream; its subscribers (the presence webhook) take it on."""
        if self.events is not None:
            self.events.emit(event, user=user, node=self.node)

    async def close(self) -> None:
        """Report every announced user offline (this node can no longer see them come
        back, and a backend told nothing would wait for ever). The app closes the
        event stream after this, which sends them on (bounded)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._reseen is not None:
            self._reseen.cancel()
        if self.seen is not None:
            await self.seen.close()
        # writes in flight land before the removals below, not after them
        await self._tasks.close(grace=_CLOSE_GRACE)
        for handle in self._pending_offline.values():
            handle.cancel()
        self._pending_offline.clear()
        if self.store is not None:
            for user, devices in list(self._online.items()):
                for key in list(devices):
                    try:
                        await self.store.presence_remove(user, self._entry(key))
                    except TidingsError:
                        break
        self._online.clear()
        for user in sorted(self._announced):
            self._emit("offline", user)
        self._announced.clear()
