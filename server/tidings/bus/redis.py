"""The Redis bus: publications between nodes over Redis pub/sub.

Channels
--------
* Exact topics: ``channel_for(topic)`` (:mod:`.wire`), hash-tagged like the
  topic's keys. With the Redis store, the store's publish script PUBLISHes
  (single Redis) or SPUBLISHes (Redis Cluster: sharded pub/sub, so a message
  goes only to the shard that owns its channel) there, in the same atomic
  step as the history append; a node SUBSCRIBEs / SSUBSCRIBEs the exact
  topics its sessions follow.
* Wildcard filters: every publication is also PUBLISHed (classic pub/sub) to
  ``tidings:w:<first level>`` by the publishing node. A node with a filter
  whose first level is literal (``home/+/temp``) SUBSCRIBEs
  ``tidings:w:home``; one whose first level is a wildcard (``+/temp``, ``#``)
  PSUBSCRIBEs ``tidings:w:*``. The node's hub then matches locally. Cost:
  one extra PUBLISH per publication, and a node receives every publication of
  a first level it has wildcard interest in, however many wildcard
  subscribers it has (the subscription index is per node, not per session).
  On a cluster, classic pub/sub is broadcast to every shard.

A node may receive a publication twice (exact and wildcard channel) or miss
one (pub/sub is a doorbell); the node delivers by offset, once, and fills a
gap from history (see :mod:`tidings.node`).

Connections: one pub/sub connection (per shard on a cluster), with a health
check; when it drops the bus reconnects with backoff, resubscribes
everything, then calls ``on_resubscribed`` so the node fills what was missed.
Unsubscribing waits ``unsubscribe_delay`` and re-checks, so a client that
reconnects at once does not cost two round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.exceptions import RedisError

from ..errors import Unavailable
from ..protocol.topics import is_wildcard
from ..types import Publication
from .base import Bus, Deliver
from .wire import channel_for, decode_publication, encode_publication

__all__ = ["RedisBus", "wildcard_channel"]

log = logging.getLogger("tidings.bus.redis")

_WILD = "tidings:w:"


def wildcard_channel(topic: str) -> str:
    """The classic channel a publication is copied to for wildcard subscribers."""
    return _WILD + topic.split("/", 1)[0]


def _wild_subscription(flt: str) -> tuple[str, bool]:
    """(channel or pattern, is a pattern) that carries what ``flt`` may match."""
    first = flt.split("/", 1)[0]
    if first in ("+", "#"):
        return _WILD + "*", True
    return _WILD + first, False


class RedisBus(Bus):
    def __init__(self, url: str, *, cluster: bool = False, timeout: float = 2.0,
                 unsubscribe_delay: float = 5.0) -> None:
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self._unsubscribe_delay = unsubscribe_delay
        self._deliver: Deliver | None = None
        self._client: Any = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._healthy = False
        self._closed = False
        # What we want to receive: exact channels, classic channels, patterns.
        self._exact: set[str] = set()
        self._classic: dict[str, int] = {}
        self._patterns: dict[str, int] = {}
        self._filters: set[str] = set()
        self._pending_unsub: dict[str, asyncio.TimerHandle] = {}
        self._lock = asyncio.Lock()
        self.publishes = 0  # Redis PUBLISH commands sent (for the bench)

    def __repr__(self) -> str:
        return f"RedisBus(cluster={self._cluster})"  # the URL may hold a password

    # -- lifecycle ------------------------------------------------------------------

    def _make_client(self) -> Any:
        kw: dict[str, Any] = {"socket_timeout": self._timeout,
                              "socket_connect_timeout": self._timeout,
                              # never re-send a PUBLISH on our own: a timeout may
                              # hide one that went through (the node dedupes, but
                              # the caller must hear the failure)
                              "retry": Retry(NoBackoff(), 0),
                              # as in the store: with it on, a pooled connection is
                              # not checked and the first call after a restart fails
                              "maint_notifications_config":
                                  MaintNotificationsConfig(enabled=False)}
        if self._cluster:
            return aioredis.RedisCluster.from_url(self._url, **kw)
        return aioredis.Redis.from_url(self._url, health_check_interval=5, **kw)

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._client = self._make_client()
        try:
            await self._connect()
        except (RedisError, OSError) as e:
            log.warning("redis bus: cannot connect yet (%s); retrying", type(e).__name__)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _connect(self) -> None:
        """A fresh pub/sub connection with every wanted subscription."""
        pubsub = self._client.pubsub()
        if self._exact:
            if self._cluster:
                await pubsub.ssubscribe(*self._exact)
            else:
                await pubsub.subscribe(*self._exact)
        if self._classic:
            await pubsub.subscribe(*self._classic)
        if self._patterns:
            await pubsub.psubscribe(*self._patterns)
        if not (self._exact or self._classic or self._patterns):
            # keep the connection open (and its health checked) with nothing to hear
            await pubsub.subscribe(_WILD + "\x00idle")
        self._pubsub = pubsub
        self._healthy = True

    async def close(self) -> None:
        self._closed = True
        self._healthy = False
        for timer in self._pending_unsub.values():
            timer.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    # -- reading ----------------------------------------------------------------------

    async def _read(self) -> None:
        backoff = 0.05
        while not self._closed:
            if self._pubsub is None or not self._healthy:
                try:
                    async with self._lock:
                        await self._connect()
                    backoff = 0.05
                    log.info("redis bus: connected and resubscribed")
                    if self.on_resubscribed is not None:
                        self.on_resubscribed()
                except (RedisError, OSError) as e:
                    self._healthy = False
                    delay = random.uniform(0, backoff)  # full jitter
                    backoff = min(backoff * 2, 2.0)
                    log.debug("redis bus: reconnect failed (%s)", type(e).__name__)
                    await asyncio.sleep(delay)
                    continue
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True,
                                                         timeout=1.0)
            except (RedisError, OSError) as e:
                log.warning("redis bus: pub/sub connection lost (%s); reconnecting",
                            type(e).__name__)
                self._healthy = False
                old, self._pubsub = self._pubsub, None
                with contextlib.suppress(RedisError, OSError):
                    await old.aclose()
                continue
            if message is None or message.get("type") not in ("message", "pmessage",
                                                                "smessage"):
                continue
            try:
                pub = decode_publication(message["data"])
            except Exception:
                log.warning("redis bus: undecodable message on %r", message.get("channel"))
                continue
            if self._deliver is not None:
                self._deliver(pub)

    # -- publishing and subscribing -----------------------------------------------------

    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        data = encode_publication(publication)
        try:
            if not announced:
                channel = channel_for(publication.topic)
                if self._cluster:
                    await self._client.execute_command("SPUBLISH", channel, data)
                else:
                    await self._client.publish(channel, data)
                self.publishes += 1
            await self._client.publish(wildcard_channel(publication.topic), data)
            self.publishes += 1
        except (RedisError, OSError) as e:
            raise Unavailable("bus unavailable") from e

    async def subscribe(self, flt: str) -> None:
        timer = self._pending_unsub.pop(flt, None)
        if timer is not None:
            timer.cancel()
            return  # still subscribed: the delayed unsubscribe never ran
        self._filters.add(flt)
        async with self._lock:
            try:
                await self._add(flt)
            except (RedisError, OSError):
                self._healthy = False  # the reader reconnects with everything wanted

    async def _add(self, flt: str) -> None:
        pubsub = self._pubsub if self._healthy else None
        if not is_wildcard(flt):
            channel = channel_for(flt)
            if channel in self._exact:
                return
            self._exact.add(channel)
            if pubsub is not None:
                if self._cluster:
                    await pubsub.ssubscribe(channel)
                else:
                    await pubsub.subscribe(channel)
            return
        name, pattern = _wild_subscription(flt)
        table = self._patterns if pattern else self._classic
        table[name] = table.get(name, 0) + 1
        if table[name] == 1 and pubsub is not None:
            if pattern:
                await pubsub.psubscribe(name)
            else:
                await pubsub.subscribe(name)

    async def unsubscribe(self, flt: str) -> None:
        if flt not in self._filters or flt in self._pending_unsub:
            return
        loop = asyncio.get_running_loop()
        self._pending_unsub[flt] = loop.call_later(
            self._unsubscribe_delay, lambda: loop.create_task(self._remove_later(flt)))

    async def _remove_later(self, flt: str) -> None:
        if self._pending_unsub.pop(flt, None) is None or self._closed:
            return
        self._filters.discard(flt)
        async with self._lock:
            pubsub = self._pubsub if self._healthy else None
            try:
                if not is_wildcard(flt):
                    channel = channel_for(flt)
                    self._exact.discard(channel)
                    if pubsub is not None:
                        if self._cluster:
                            await pubsub.sunsubscribe(channel)
                        else:
                            await pubsub.unsubscribe(channel)
                    return
                name, pattern = _wild_subscription(flt)
                table = self._patterns if pattern else self._classic
                table[name] -= 1
                if table[name] <= 0:
                    del table[name]
                    if pubsub is not None:
                        if pattern:
                            await pubsub.punsubscribe(name)
                        else:
                            await pubsub.unsubscribe(name)
            except (RedisError, OSError):
                self._healthy = False
