"""The Redis bus: publications between nodes over Redis pub/sub.

Channels
--------
* Exact topics: ``channel_for(topic)`` (:mod:`tidings.redis_wire`), hash-tagged like the
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

Messages are :mod:`tidings.redis_wire` envelopes, the same bytes the Redis
store's scripts announce; ``meta`` (MQTT 5.0 properties) travels through the
``meta_codec`` the bus is given, so the bus does not know MQTT.

A node may receive a publication twice (exact and wildcard channel) or miss
one (pub/sub is a doorbell); the node delivers by offset, once, and fills a
gap from history (see :mod:`tidings.node`).

Connections
-----------
One pub/sub connection (a *link*) on a single Redis. On a cluster, one link
per master that owns a subscribed exact channel (SSUBSCRIBE must go to the
channel's shard), plus the link of the wildcard channels (classic pub/sub
reaches every shard, so any master serves it; the one that owns the slot of
``tidings:w:*``). Each link has its own reader task. The clients never
reconnect on their own (``Retry(NoBackoff(), 0)``): a silent reconnect would
hide a gap from the node.

Liveness: a link that has heard nothing for ``probe_interval`` seconds sends
PING on the pub/sub connection; with no answer ``timeout`` seconds later (a
Redis that hangs, a half-open connection) the link counts as lost. When any
link is lost (an error, the probe, or a shard channel moved to another master
in a resharding: an ``sunsubscribe`` we did not ask for) the bus is
unhealthy (``/readyz`` fails), drops every link, reconnects with jittered
exponential backoff (the cluster's slot map re-read first), resubscribes
everything, then calls ``on_resubscribed`` so the node fills what was missed.

Unsubscribing waits ``unsubscribe_delay`` and re-checks, so a client that
reconnects at once does not cost two round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from ..errors import Unavailable
from ..plumbing import TaskSet
from ..protocol.topics import is_wildcard
from ..redis_wire import MetaCodec, channel_for, decode_publication, encode_publication
from ..types import Publication
from .base import Bus, Deliver

__all__ = ["RedisBus", "wildcard_channel"]

log = logging.getLogger("tidings.bus.redis")

_WILD = "tidings:w:"
_IDLE = _WILD + "\x00idle"  # keeps a link with nothing to hear connected (and probed)
_POLL = 1.0  # seconds a reader waits for a message before checking the probe
_BACKOFF_MIN, _BACKOFF_MAX = 0.05, 2.0
_ERRORS = (RedisError, RedisClusterException, OSError)
_PUBLISHED = ("message", "pmessage", "smessage")


def wildcard_channel(topic: str) -> str:
    """The classic channel a publication is copied to for wildcard subscribers."""
    return _WILD + topic.split("/", 1)[0]


def _wild_subscription(flt: str) -> tuple[str, bool]:
    """(channel or pattern, is a pattern) that carries what ``flt`` may match."""
    first = flt.split("/", 1)[0]
    if first in ("+", "#"):
        return _WILD + "*", True
    return _WILD + first, False


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` pointed at ``host:port`` (a cluster master), credentials and options kept."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=userinfo + at + address))


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class _LinkLost(Exception):
    """A link stopped working in a way Redis did not raise (probe, moved slot)."""


class _Link:
    """One pub/sub connection (the one Redis, or one cluster master) and its reader."""

    __slots__ = ("client", "heard", "name", "own_client", "pinged", "pubsub", "reader")

    def __init__(self, name: str, client: Any, own_client: bool) -> None:
        self.name = name
        self.client = client
        self.own_client = own_client  # a per-master client, closed with the link
        self.pubsub: Any = client.pubsub()
        self.reader = TaskSet(f"redis bus link {name}")  # its one reader task, once started
        self.heard = asyncio.get_running_loop().time()
        self.pinged = False

    async def aclose(self) -> None:
        await self.reader.close()
        with contextlib.suppress(*_ERRORS):
            await self.pubsub.aclose()
        if self.own_client:
            with contextlib.suppress(*_ERRORS):
                await self.client.aclose()


class RedisBus(Bus):
    def __init__(self, url: str, *, cluster: bool = False, timeout: float = 2.0,
                 unsubscribe_delay: float = 5.0, probe_interval: float = 5.0,
                 meta_codec: MetaCodec | None = None) -> None:
        self._url = url
        self._meta_codec = meta_codec
        self._cluster = cluster
        self._timeout = timeout
        self._unsubscribe_delay = unsubscribe_delay
        self._probe_interval = probe_interval
        self._deliver: Deliver | None = None
        self._client: Any = None
        self._links: dict[str, _Link] = {}
        self._broken = asyncio.Event()
        self._up = asyncio.Event()  # set while every link is connected
        self._healthy = False
        self._closed = False
        # What we want to receive: exact channels, classic channels, patterns.
        self._exact: set[str] = set()
        self._classic: dict[str, int] = {}
        self._patterns: dict[str, int] = {}
        self._filters: set[str] = set()
        self._pending_unsub: dict[str, asyncio.TimerHandle] = {}
        self._tasks = TaskSet("redis bus")  # the connect loop and delayed unsubscribes
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"RedisBus(cluster={self._cluster})"  # the URL may hold a password

    # -- lifecycle ------------------------------------------------------------------

    def _client_kwargs(self) -> dict[str, Any]:
        return {"socket_timeout": self._timeout,
                "socket_connect_timeout": self._timeout,
                # never re-send a PUBLISH on our own: a timeout may hide one that
                # went through (the node dedupes, but the caller must hear the
                # failure); and a pub/sub connection that reconnected by itself
                # would hide the gap from the node
                "retry": Retry(NoBackoff(), 0),
                # as in the store: with it on, a pooled connection is not checked
                # and the first call after a restart fails
                "maint_notifications_config": MaintNotificationsConfig(enabled=False)}

    def _make_client(self) -> Any:
        if self._cluster:
            return aioredis.RedisCluster.from_url(self._url, **self._client_kwargs())
        return aioredis.Redis.from_url(self._url, **self._client_kwargs())

    async def start(self, deliver: Deliver) -> None:
        """Connect in the background; wait (at most ``timeout``) for the first link, so a
        node that starts with Redis up is ready at once and one without it still starts."""
        self._deliver = deliver
        self._client = self._make_client()
        self._tasks.spawn(self._run())
        try:
            await asyncio.wait_for(self._up.wait(), self._timeout)
        except TimeoutError:
            log.warning("redis bus: cannot connect yet; retrying")

    async def close(self) -> None:
        self._closed = True
        self._healthy = False
        for timer in self._pending_unsub.values():
            timer.cancel()
        self._pending_unsub.clear()
        await self._tasks.close()
        await self._drop_links()
        if self._client is not None:
            with contextlib.suppress(*_ERRORS):
                await self._client.aclose()

    @property
    def healthy(self) -> bool:
        return self._healthy and not self._closed

    async def _run(self) -> None:
        """Connect, wait until a link is lost, drop everything, reconnect; for ever."""
        backoff = _BACKOFF_MIN
        while not self._closed:
            failed: BaseException | None = None
            # Links change only under the lock: a subscribe in flight never finds
            # its link dropped under it, nor adds one to a set being replaced.
            async with self._lock:
                try:
                    await self._connect()
                except (*_ERRORS, TimeoutError) as e:
                    failed = e
                    await self._drop_links()
            if failed is not None:
                delay = random.uniform(0, backoff)  # full jitter
                backoff = min(backoff * 2, _BACKOFF_MAX)
                log.debug("redis bus: connect failed (%s)", type(failed).__name__)
                await asyncio.sleep(delay)
                continue
            backoff = _BACKOFF_MIN
            log.info("redis bus: connected and subscribed (%d links)", len(self._links))
            if self.on_resubscribed is not None:
                self.on_resubscribed()
            await self._broken.wait()
            self._healthy = False
            self._up.clear()
            async with self._lock:
                await self._drop_links()

    async def _connect(self) -> None:
        """Fresh links carrying every wanted subscription (called with the lock held)."""
        self._broken.clear()
        if self._cluster:
            await self._client.initialize()  # the first time only
            await self._client.nodes_manager.initialize()  # the slot map, as it is now
        by_link: dict[str, list[str]] = {}
        for channel in self._exact:
            by_link.setdefault(self._link_name(channel), []).append(channel)
        main = self._link(self._link_name(_WILD + "*"))
        sent = {name: len(channels) for name, channels in by_link.items()}
        for name, channels in by_link.items():
            await self._subscribe_exact(self._link(name), channels)
        if self._classic:
            await main.pubsub.subscribe(*self._classic)
        if self._patterns:
            await main.pubsub.psubscribe(*self._patterns)
        if not (self._classic or self._patterns or main.name in by_link):
            await main.pubsub.subscribe(_IDLE)
        sent[main.name] = (sent.get(main.name, 0) + len(self._classic) + len(self._patterns)
                           or 1)
        for link in self._links.values():
            await self._confirm(link, sent[link.name])
        for link in self._links.values():
            self._start_reader(link)
        self._healthy = True
        self._up.set()

    async def _confirm(self, link: _Link, expected: int) -> None:
        """Read until Redis confirmed ``expected`` subscriptions on ``link``: healthy
        means subscribed, not just sent (a refused SUBSCRIBE raises here)."""
        async with asyncio.timeout(self._timeout):
            while expected > 0:
                message = await link.pubsub.get_message(timeout=self._timeout)
                kind = None if message is None else message.get("type")
                if kind in ("subscribe", "psubscribe", "ssubscribe"):
                    expected -= 1
                elif kind in _PUBLISHED:
                    self._on_message(message)

    async def _drop_links(self) -> None:
        links, self._links = list(self._links.values()), {}
        for link in links:
            await link.aclose()

    def _link_name(self, channel: str) -> str:
        """Which link carries ``channel``: the master owning its slot on a cluster."""
        if not self._cluster:
            return "redis"
        node = self._client.get_node_from_key(channel)
        return str(node.name)

    def _link(self, name: str) -> _Link:
        """The link called ``name``, made (not yet connected) if there is none."""
        link = self._links.get(name)
        if link is None:
            if self._cluster:
                node = self._client.get_node(node_name=name)
                client = aioredis.Redis.from_url(_node_url(self._url, node.host, node.port),
                                                 **self._client_kwargs())
                link = _Link(name, client, own_client=True)
            else:
                link = _Link(name, self._client, own_client=False)
            self._links[name] = link
        return link

    async def _subscribe_exact(self, link: _Link, channels: list[str]) -> None:
        if not self._cluster:
            await link.pubsub.subscribe(*channels)
            return
        for channel in channels:  # one SSUBSCRIBE per channel: they may be in other slots
            await link.pubsub.ssubscribe(channel)

    def _start_reader(self, link: _Link) -> None:
        if not link.reader:
            link.reader.spawn(self._read(link))

    def _lost(self, why: str) -> None:
        if not self._broken.is_set() and not self._closed:
            log.warning("redis bus: %s; reconnecting", why)
            self._healthy = False
            self._up.clear()
            self._broken.set()

    # -- reading ----------------------------------------------------------------------

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await link.pubsub.get_message(timeout=_POLL)
                now = loop.time()
                if message is None:
                    await self._probe(link, now)
                    continue
                link.heard, link.pinged = now, False
                kind = message.get("type")
                if kind in _PUBLISHED:
                    self._on_message(message)
                elif kind == "sunsubscribe" and _text(message["channel"]) in self._exact:
                    raise _LinkLost("a shard channel moved to another master")
        except asyncio.CancelledError:
            raise
        except _ERRORS as e:
            self._lost(f"pub/sub connection to {link.name} lost ({type(e).__name__})")
        except _LinkLost as e:
            self._lost(f"pub/sub link to {link.name}: {e}")

    async def _probe(self, link: _Link, now: float) -> None:
        """PING a quiet link; no answer within ``timeout`` means it is gone."""
        quiet = now - link.heard
        if link.pinged and quiet > self._probe_interval + self._timeout:
            raise _LinkLost(f"no answer to the liveness probe in {quiet:.1f}s")
        if not link.pinged and quiet > self._probe_interval:
            link.pinged = True
            await link.pubsub.ping()

    def _on_message(self, message: dict[str, Any]) -> None:
        try:
            pub = decode_publication(message["data"], self._meta_codec)
        except ValueError:
            log.warning("redis bus: undecodable message on %r", message.get("channel"))
            return
        if self._deliver is not None:
            self._deliver(pub)

    # -- publishing and subscribing -----------------------------------------------------

    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        if self._client is None or self._closed:
            raise Unavailable("bus is closed")  # or never started
        data = encode_publication(publication, self._meta_codec)
        try:
            async with asyncio.timeout(self._timeout):  # a cluster client may retry inside
                if not announced:
                    channel = channel_for(publication.topic)
                    if self._cluster:
                        await self._client.execute_command("SPUBLISH", channel, data)
                    else:
                        await self._client.publish(channel, data)
                await self._client.publish(wildcard_channel(publication.topic), data)
        except (*_ERRORS, TimeoutError) as e:
            raise Unavailable("bus unavailable") from e

    async def publish_many(self, publications: Sequence[Publication], *,
                           announced: bool = False) -> None:
        """On a single Redis, one pipeline for the whole group (the node's group
        of publishes costs one round trip here too); on a cluster, where sharded
        channels live on different masters, one :meth:`publish` after another."""
        if self._cluster:
            await super().publish_many(publications, announced=announced)
            return
        if self._client is None or self._closed:
            raise Unavailable("bus is closed")  # or never started
        pipe = self._client.pipeline(transaction=False)
        for publication in publications:
            data = encode_publication(publication, self._meta_codec)
            if not announced:
                pipe.publish(channel_for(publication.topic), data)
            pipe.publish(wildcard_channel(publication.topic), data)
        try:
            async with asyncio.timeout(self._timeout):
                await pipe.execute()
        except (*_ERRORS, TimeoutError) as e:
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
            except _ERRORS as e:
                # the runner reconnects with everything wanted, this included
                self._lost(f"subscribe failed ({type(e).__name__})")

    async def _add(self, flt: str) -> None:
        live = self._healthy
        if not is_wildcard(flt):
            channel = channel_for(flt)
            if channel in self._exact:
                return
            self._exact.add(channel)
            if live:
                link = self._link(self._link_name(channel))
                await self._subscribe_exact(link, [channel])
                self._start_reader(link)
            return
        name, pattern = _wild_subscription(flt)
        table = self._patterns if pattern else self._classic
        table[name] = table.get(name, 0) + 1
        if table[name] == 1 and live:
            main = self._link(self._link_name(_WILD + "*"))
            if pattern:
                await main.pubsub.psubscribe(name)
            else:
                await main.pubsub.subscribe(name)

    async def unsubscribe(self, flt: str) -> None:
        if flt not in self._filters or flt in self._pending_unsub:
            return
        loop = asyncio.get_running_loop()
        self._pending_unsub[flt] = loop.call_later(self._unsubscribe_delay,
                                                   self._spawn_remove, flt)

    def _spawn_remove(self, flt: str) -> None:
        self._tasks.spawn(self._remove_later(flt))

    async def _remove_later(self, flt: str) -> None:
        if self._pending_unsub.pop(flt, None) is None or self._closed:
            return
        self._filters.discard(flt)
        async with self._lock:
            try:
                await self._remove(flt)
            except _ERRORS as e:
                self._lost(f"unsubscribe failed ({type(e).__name__})")

    async def _remove(self, flt: str) -> None:
        live = self._healthy
        if not is_wildcard(flt):
            channel = channel_for(flt)
            self._exact.discard(channel)
            if live:
                link = self._links.get(self._link_name(channel))
                if link is not None:
                    if self._cluster:
                        await link.pubsub.sunsubscribe(channel)
                    else:
                        await link.pubsub.unsubscribe(channel)
            return
        name, pattern = _wild_subscription(flt)
        table = self._patterns if pattern else self._classic
        table[name] -= 1
        if table[name] > 0:
            return
        del table[name]
        main = self._links.get(self._link_name(_WILD + "*")) if live else None
        if main is not None:
            if pattern:
                await main.pubsub.punsubscribe(name)
            else:
                await main.pubsub.unsubscribe(name)
