"""One node: publish through store and bus, and route bus traffic to the hub.

Publishes are stored in groups (group commit): every publish handed to the
node (:meth:`Node.submit`, :meth:`Node.publish`) waits for the next group,
which one worker task sends to the store in one call
(:meth:`~tidings.store.base.TopicStore.publish_many`) once per loop pass,
then hands each stored publication to the bus in the same order and answers
its sender. While a group is with the store, what arrives forms the next one,
so a client pipelining many publishes, or many API requests at once, costs
one store round trip per group and the hub fans the whole group out in one
loop pass (each subscriber's outbox is written once for all of it). Groups
go to the store one at a time, in order: a topic's offsets follow the order
in which publishes reached the node, and no sender hears "stored" before its
group was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from .bus.base import Bus
from .clock import Clock, SystemClock
from .config import HistorySettings, TopicSettings
from .errors import TidingsError, Unavailable
from .hub import Hub, Subscriber
from .metrics import Metrics
from .plumbing import TaskSet
from .preferences import preferences_topic
from .protocol.topics import is_wildcard, matches
from .quota import Tally
from .store.base import (
    AudiencePage,
    AudienceQuery,
    HistoryPage,
    HistoryPolicy,
    InboxPage,
    MqttSessionState,
    PublishRequest,
    PublishResult,
    QueuedMessage,
    Store,
)
from .types import Offset, PayloadKind, Publication, format_offset, parse_offset

if TYPE_CHECKING:
    from .events import EventLog
    from .push.channel import PushChannel

__all__ = ["Node"]

log = logging.getLogger("tidings.node")
_NO_HISTORY = HistoryPolicy(0, 1.0)
_MAX_TRACKED = 100_000  # topics whose last offset is remembered for gap detection
_FILL_LIMIT = 1000
_OFFSET_BLOCK = 1024  # offsets a memory-only topic takes from the store at once
_GROUP = 256  # publishes stored in one call, at most (limits.max_publish_group)
_PASS_CALLS = 10_000  # subscriber calls the hub makes per loop pass, about
_GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_GROUP_BYTES = 65536  # and their data, past the first (limits.max_message_size)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)


def _roster(key: str) -> str:
    if "/" not in key:
        raise ValueError("a roster key holds a '/' (so no user id can be one)")
    return key


class Node:
    """Owns the hub; the edges and the API talk to this, never to bus or store directly
    for topic traffic. Bus subscriptions are reference-counted per filter."""

    def __init__(self, name: str, store: Store, bus: Bus, history: HistorySettings,
                 metrics: Metrics, clock: Clock | None = None) -> None:
        self.name = name
        # "now" for everything that schedules or decides (the sender, quiet hours,
        # caps); the store reads the same time. Tests pass a fake one.
        self.clock: Clock = clock or SystemClock()
        self.store = store
        self.bus = bus
        self.hub = Hub(metrics)
        # Subscriptions per user over every edge (topics.max_user_subscriptions):
        # the edges take one before adding a filter for a user and give it back
        # when the filter goes, so no user can fill the trie through many connections.
        self.user_subscriptions: Tally[str] = Tally(TopicSettings.max_user_subscriptions)
        self.metrics = metrics
        # platform push (Web Push, FCM, APNs): opened by the app after the store
        self.push: PushChannel | None = None
        # events for backends (GET /v1/events, the events webhook): set by the app
        self.events: EventLog | None = None
        self._history = history
        self._policies: dict[str, HistoryPolicy] = {}
        self._refs: Counter[str] = Counter()
        # Per topic, the (epoch, seq) last delivered here: a later one that skips
        # ahead is a gap the bus dropped, filled from history before going on;
        # one at or before it is a duplicate. Topics being filled hold what arrives.
        self._last: dict[str, tuple[str, int]] = {}
        self._filling: dict[str, list[Publication]] = {}
        # Exact filters followed here -> when (ms) this node began to follow them:
        # after a bus outage, a topic that had delivered nothing yet (so has no
        # entry in _last) is filled with what history has from that time on.
        self._watched: dict[str, int] = {}
        self._tasks = TaskSet("node")  # gap fills from history, the group worker
        # users whose preferences are being changed here -> (lock, callers holding it)
        self._preference_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # Memory-only topics (history size 0): per topic [epoch, next seq, last seq
        # reserved], offsets handed out without a store round trip; and, while a
        # reservation or a stored publish of such a topic is awaited, its gate
        # (later publishes to it wait their turn, so offsets go out in order).
        self._blocks: dict[str, list[Any]] = {}
        self._gates: dict[str, _Gate] = {}
        # publishes waiting for the next group, and the worker storing groups
        self._waiting: list[tuple[PublishRequest, asyncio.Future[PublishResult]]] = []
        self._grouper: asyncio.Task[None] | None = None
        # publications arrived during this loop pass, handed to the hub at its end
        self._arrived: list[Publication] | None = None
        self.max_group = _GROUP  # limits.max_publish_group
        self.max_group_bytes = _GROUP_BYTES  # limits.max_message_size
        self._latency = metrics.histogram(
            "tidings_publish_deliver_seconds",
            "Time from a publication's store timestamp to its hand-over to this node's "
            "subscribers (store commit, bus and routing; not the client's socket).",
            _LATENCY_BUCKETS)
        self._groups = metrics.histogram(
            "tidings_publish_group_size",
            "Publishes stored in one store call (the node's group commit): many per "
            "group means pipelining clients or concurrent API requests shared one.",
            _GROUP_BUCKETS)

    def limit_user_subscriptions(self, limit: int) -> None:
        """Set topics.max_user_subscriptions (before any session subscribes)."""
        self.user_subscriptions = Tally(limit)

    async def start(self) -> None:
        await self.store.open()
        self.bus.on_resubscribed = self.resync
        await self.bus.start(self._on_bus)

    async def close(self) -> None:
        await self.bus.close()
        await self._tasks.close()  # no fill reads the store after it is closed
        await self.store.close()

    def policy(self, topic: str) -> HistoryPolicy:
        """History bounds for ``topic``: the first matching ``[[history.rules]]``."""
        policy = self._policies.get(topic)
        if policy is None:
            policy = HistoryPolicy(self._history.size, self._history.ttl)
            if topic.startswith("$"):
                policy = _NO_HISTORY  # broker statistics: retained only
            for rule in self._history.rules:
                if matches(rule.pattern, topic):
                    policy = HistoryPolicy(rule.size, rule.ttl)
                    break
            if len(self._policies) > 65536:
                self._policies.clear()
            self._policies[topic] = policy
        return policy

    async def publish(self, topic: str, payload: bytes, kind: PayloadKind, *,
                      retain: bool = False, idempotency_key: str | None = None,
                      qos: int = 1, origin: str | None = None, meta: Any = None
                      ) -> PublishResult:
        """Store, then fan out. Raises ``Unavailable`` if either cannot take it.

        A topic that keeps no history (size 0: ``history.size = 0`` or a memory
        ``[[history.rules]]`` entry) is not written to the store at all: its
        offset comes from a block reserved ahead (:meth:`_publish_memory`),
        unless the store announces publications itself (Redis), where the one
        script is the bus publish too."""
        return await self.submit(topic, payload, kind, retain=retain,
                                 idempotency_key=idempotency_key, qos=qos, origin=origin,
                                 meta=meta)

    def submit(self, topic: str, payload: bytes, kind: PayloadKind, *,
               retain: bool = False, idempotency_key: str | None = None,
               qos: int = 1, origin: str | None = None, meta: Any = None
               ) -> asyncio.Future[PublishResult]:
        """:meth:`publish` without waiting: the message joins the next group now,
        behind every publish submitted before it, and the future is its result
        (or ``Unavailable``). An edge that read many publishes submits them all,
        in order, then waits; cancelling the future does not unpublish."""
        policy = self.policy(topic)
        if policy.size == 0 and not self.store.announces and not topic.startswith("$"):
            # memory-only: no store call to group (see publish)
            return asyncio.ensure_future(self._publish_memory(
                topic, payload, kind, policy, retain, idempotency_key, qos, origin, meta))
        request = PublishRequest(topic, payload, kind, policy, retain, idempotency_key, qos,
                                 origin, meta)
        future: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._grouper is None:  # runs next loop pass: what comes in this one joins
            self._grouper = self._tasks.spawn(self._store_groups())
        return future

    async def _store_groups(self) -> None:
        """The group worker: while publishes wait, store the oldest ``max_group``
        of them and fan them out, one group at a time."""
        try:
            while self._waiting:
                group = self._next_group()
                await self._store_group(group)
        finally:
            self._grouper = None
            if self._waiting:  # cancelled (the node is closing): nobody is left waiting
                waiting, self._waiting = self._waiting, []
                _fail(waiting, Unavailable("node is closing"))

    def _next_group(self) -> list[tuple[PublishRequest, asyncio.Future[PublishResult]]]:
        """The oldest waiting publishes: at most ``max_group`` of them and, past the
        first, ``max_group_bytes`` of data. A group is fanned out in one loop pass,
        so this keeps what it adds to each subscriber's outbox at once within what
        the outbox must hold anyway (a few of the largest messages)."""
        waiting, most, budget = self._waiting, self.max_group, self.max_group_bytes
        n = 0
        for request, _ in waiting:
            budget -= len(request.payload)
            if n and (n >= most or budget < 0):
                break
            n += 1
        group = waiting[:n]
        del waiting[:n]
        return group

    async def _store_group(self, group: list[tuple[PublishRequest,
                                                   asyncio.Future[PublishResult]]]) -> None:
        """One store call for the group; then each stored message to the bus and its
        result to its sender, in order (a sender hears of its message only after
        it was stored and handed on)."""
        self._groups.observe(len(group))
        try:
            results = await self.store.publish_many([r for r, _ in group])
        except TidingsError as e:
            _fail(group, e)
            return
        except BaseException:
            # cancelled (the node is closing), or our bug (the TaskSet logs it)
            _fail(group, Unavailable("store unavailable"))
            raise
        fresh = [self._announced(r, result.publication)
                 for (r, _), result in zip(group, results, strict=True)
                 if not result.duplicate]
        try:
            await self.bus.publish_many(fresh, announced=self.store.announces)
        except TidingsError as e:  # stored, but not handed on: the sender may retry
            for (_, future), result in zip(group, results, strict=True):
                if not result.duplicate and not future.done():
                    future.set_exception(e)
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _announced(self, r: PublishRequest, pub: Publication) -> Publication:
        """A stored publication as the bus carries it (counted as traffic in)."""
        if not r.topic.startswith("$"):  # broker statistics are not traffic
            self.metrics.inc("tidings_messages_in_total")
        if r.qos != 1 or r.retain or r.origin is not None or r.meta is not None:
            pub = replace(pub, qos=r.qos, published_retain=r.retain, origin=r.origin,
                          meta=r.meta)
        return pub

    async def _publish_stored(self, topic: str, payload: bytes, kind: PayloadKind,
                              policy: HistoryPolicy, retain: bool,
                              idempotency_key: str | None, qos: int, origin: str | None,
                              meta: Any) -> PublishResult:
        result = await self.store.publish(topic, payload, kind, retain=retain,
                                          policy=policy,
                                          idempotency_key=idempotency_key,
                                          qos=qos, origin=origin, meta=meta)
        if not result.duplicate:
            if not topic.startswith("$"):  # broker statistics are not traffic
                self.metrics.inc("tidings_messages_in_total")
            pub = result.publication
            if qos != 1 or retain or origin is not None or meta is not None:
                pub = replace(pub, qos=qos, published_retain=retain, origin=origin, meta=meta)
            await self.bus.publish(pub, announced=self.store.announces)
        return result

    async def _publish_memory(self, topic: str, payload: bytes, kind: PayloadKind,
                              policy: HistoryPolicy, retain: bool,
                              idempotency_key: str | None, qos: int, origin: str | None,
                              meta: Any) -> PublishResult:
        """A message to a memory-only topic: an offset from the topic's reserved block
        (no await on the store), then the bus. When the block is used up, a new one
        is reserved (one store round trip per ``_OFFSET_BLOCK`` messages). A
        retained publish or one with an idempotency key goes through the store
        (which keeps the retained message or the key); the block is dropped first,
        so the store's offset follows every one handed out."""
        block = self._blocks.get(topic)
        if block is not None and block[1] <= block[2] and not retain \
                and idempotency_key is None and topic not in self._gates:
            return await self._send_memory(topic, block, payload, kind, qos, origin, meta)
        gate = self._gates.get(topic)
        if gate is None:
            gate = self._gates[topic] = _Gate()
        gate.users += 1
        try:
            async with gate.lock:  # FIFO: publishes to the topic keep their order
                if retain or idempotency_key is not None:
                    self._blocks.pop(topic, None)
                    return await self._publish_stored(topic, payload, kind, policy, retain,
                                                      idempotency_key, qos, origin, meta)
                block = self._blocks.get(topic)
                if block is None or block[1] > block[2]:
                    epoch, first = await self.store.reserve_offsets(topic, _OFFSET_BLOCK)
                    if len(self._blocks) >= _MAX_TRACKED and topic not in self._blocks:
                        self._blocks.clear()  # bounded: unused offsets are skipped, not reused
                    block = self._blocks[topic] = [epoch, first, first + _OFFSET_BLOCK - 1]
                return await self._send_memory(topic, block, payload, kind, qos, origin, meta)
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[topic]

    async def _send_memory(self, topic: str, block: list[Any], payload: bytes,
                           kind: PayloadKind, qos: int, origin: str | None, meta: Any
                           ) -> PublishResult:
        seq = block[1]
        block[1] = seq + 1
        pub = Publication(topic, format_offset(block[0], seq), payload, kind,
                          int(time.time() * 1000), qos=qos, origin=origin, meta=meta)
        self.metrics.inc("tidings_messages_in_total")
        await self.bus.publish(pub, announced=False)
        return PublishResult(pub)

    async def fan_out(self, publications: Sequence[Publication]) -> None:
        """Send already-stored publications (e.g. an inbox change) to every node, in
        order, in one bus call (one round trip on Redis).

        On a bus that reaches only this node (:attr:`Bus.local`), only those a
        local subscriber follows (or a gap fill of their topic waits for) are
        handed over: a large targeted send publishes two per user, and most of
        its users have no device here, so the rest would cost the loop a
        bus delivery and a hub lookup each for nothing."""
        if self.bus.local:
            publications = self._followed(publications)
        if len(publications) == 1:
            await self.bus.publish(publications[0], announced=self.store.announces)
        elif publications:
            await self.bus.publish_many(publications, announced=self.store.announces)

    def _followed(self, publications: Sequence[Publication]) -> Sequence[Publication]:
        """``publications`` without those no local subscriber follows. Their topics'
        delivery positions are forgotten (as when ``_last`` is cleared): one that
        is followed again later starts afresh from its next publication, not with
        a "gap" to fill back to what nobody here was following."""
        match, filling, last = self.hub.subscribers, self._filling, self._last
        kept = []
        for pub in publications:
            topic = pub.topic
            if topic in filling or match(topic):
                kept.append(pub)
            elif last:
                last.pop(topic, None)
        return kept

    async def subscribe(self, flt: str, sub: Subscriber) -> None:
        """Route publications matching ``flt`` to ``sub`` from now on."""
        self.hub.add(flt, sub)
        self._refs[flt] += 1
        if self._refs[flt] == 1:
            if not is_wildcard(flt):
                self._watched[flt] = int(time.time() * 1000)
            await self.bus.subscribe(flt)

    async def unsubscribe(self, flt: str, sub: Subscriber) -> None:
        self.hub.remove(flt, sub)
        if self._refs[flt] <= 1:
            self._refs.pop(flt, None)
            self._watched.pop(flt, None)
            await self.bus.unsubscribe(flt)
        else:
            self._refs[flt] -= 1

    # -- reads for sessions and the API ---------------------------------------------
    # The sessions layer and the HTTP API read topics and inboxes through these,
    # never through ``store``: one place to add caching, metrics or routing later.

    async def history(self, topic: str, since: str | None, limit: int) -> HistoryPage:
        """Up to ``limit`` messages on ``topic`` after ``since`` (:meth:`Store.history`).

        A memory-only topic with offsets handed out here: the latest is this node's
        (the store's is the end of the reserved block), and ``since`` naming it
        is complete (nothing was missed)."""
        page = await self.store.history(topic, since, limit)
        block = self._blocks.get(topic)
        if block is None:
            return page
        latest = format_offset(block[0], block[1] - 1)
        return HistoryPage(page.items, latest, page.complete or since == latest)

    async def latest(self, topic: str) -> Offset:
        """The offset of ``topic``'s newest message (None: nothing published yet);
        for a memory-only topic, the last one handed out here."""
        block = self._blocks.get(topic)
        if block is not None:
            return format_offset(block[0], block[1] - 1)
        return await self.store.latest(topic)

    async def retained(self, flt: str) -> list[Publication]:
        """The retained message of every topic ``flt`` matches (unchecked: callers
        ask :meth:`tidings.auth.Acl.may_see` of each)."""
        return await self.store.retained(flt)

    # -- persistent MQTT sessions (MQTT's own state: the session layer has no
    # use for it, so the broker keeps it through these, never through ``store``)

    async def mqtt_session(self, client_id: str
                           ) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
        """A kept MQTT session's state and queue (:meth:`Store.mqtt_session`)."""
        return await self.store.mqtt_session(client_id)

    async def mqtt_save(self, client_id: str, state: MqttSessionState,
                        queue: list[QueuedMessage] | None = None) -> None:
        """Keep an MQTT session (and with ``queue``, replace its queue)."""
        await self.store.mqtt_save(client_id, state, queue)

    async def mqtt_delete(self, client_id: str) -> None:
        """Forget a kept MQTT session and its queue."""
        await self.store.mqtt_delete(client_id)

    async def mqtt_enqueue(self, items: Sequence[tuple[str, QueuedMessage]], limit: int
                           ) -> int:
        """Queue messages for offline MQTT sessions; returns how many were dropped."""
        return await self.store.mqtt_enqueue(items, limit)

    async def mqtt_sessions(self) -> list[tuple[str, MqttSessionState]]:
        """Every kept MQTT session, to re-register at start."""
        return await self.store.mqtt_sessions()

    # -- coordination between nodes (edges whose state is per node: MQTT takeover
    # and $share groups). Rosters are the store's presence entries under keys
    # with a "/", which no user id holds (a token's sub never has one).

    @property
    def shared(self) -> bool:
        """Whether other nodes share this store (Redis): rosters and signals work."""
        return self.store.shared_presence

    async def roster_put(self, key: str, entry: str, info: dict[str, Any], ttl: float
                         ) -> int:
        """Add or refresh ``entry`` under ``key`` for ``ttl`` seconds
        (:meth:`PresenceStore.presence_put`); returns the live entries' count."""
        return await self.store.presence_put(_roster(key), entry, info, ttl)

    async def roster_remove(self, key: str, entry: str) -> int:
        return await self.store.presence_remove(_roster(key), entry)

    async def roster_list(self, key: str) -> list[dict[str, Any]]:
        """The live entries' infos under ``key``, in no particular order."""
        return await self.store.presence_list(_roster(key))

    async def signal(self, topic: str, payload: bytes) -> None:
        """A control message to the nodes following ``topic`` (a ``$`` topic no
        client may publish or subscribe to): not stored, no offset, not retained;
        as lossy as the bus. Raises ``Unavailable`` when the bus is down."""
        pub = Publication(topic, Offset(""), payload, PayloadKind.BINARY,
                          int(time.time() * 1000))
        await self.bus.publish(pub)

    async def inbox(self, user: str, *, limit: int, before: str | None = None,
                    unread_only: bool = False) -> InboxPage:
        """One page of ``user``'s inbox, newest first."""
        return await self.store.inbox(user, limit=limit, before=before,
                                      unread_only=unread_only)

    async def unread(self, user: str) -> int:
        """``user``'s unread count."""
        return await self.store.unread(user)

    async def read_states(self, user: str, ids: Sequence[str]) -> dict[str, bool]:
        """Whether each of ``ids`` still in ``user``'s inbox is read (absent: gone)."""
        return await self.store.read_states(user, ids)

    async def category_stats(self) -> dict[str, dict[str, int]]:
        """Notification counts per category (``/v1/stats/categories``)."""
        return await self.store.category_stats()

    async def recent_notifications(self, limit: int) -> list[str]:
        """Ids of the newest notifications, newest first (the dashboard's list)."""
        return await self.store.recent_notifications(limit)

    # -- audience and preferences (issue 12): the AudienceStore contract's calls
    # the sessions layer and the API need, through the one door

    async def user_tags(self, user: str) -> list[str]:
        return await self.store.user_tags(user)

    async def set_user_tags(self, user: str, tags: Sequence[str], *, max_tags: int
                            ) -> list[str]:
        return await self.store.set_user_tags(user, tags, max_tags=max_tags)

    async def change_user_tags(self, user: str, add: Sequence[str], remove: Sequence[str],
                               *, max_tags: int) -> list[str]:
        return await self.store.change_user_tags(user, add, remove, max_tags=max_tags)

    async def user_attributes(self, user: str) -> dict[str, Any]:
        return await self.store.user_attributes(user)

    async def set_user_attributes(self, user: str, attributes: dict[str, Any]
                                  ) -> dict[str, Any]:
        return await self.store.set_user_attributes(user, attributes)

    async def segment_put(self, name: str, definition: dict[str, Any]) -> bool:
        return await self.store.segment_put(name, definition)

    async def segment_get(self, name: str) -> dict[str, Any] | None:
        return await self.store.segment_get(name)

    async def segment_delete(self, name: str) -> bool:
        return await self.store.segment_delete(name)

    async def audience_page(self, query: AudienceQuery, *, cursor: str | None, limit: int
                            ) -> AudiencePage:
        return await self.store.audience_page(query, cursor=cursor, limit=limit)

    async def audience_count(self, query: AudienceQuery, *, page: int) -> int:
        return await self.store.audience_count(query, page=page)

    async def user_preferences(self, user: str) -> dict[str, Any]:
        return await self.store.user_preferences(user)

    async def preferences_many(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await self.store.preferences_many(users)

    async def change_user_preferences(
            self, user: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Store ``change(current document)`` as ``user``'s preferences and publish
        it, retained, on ``users/{uid}/preferences`` (every device of the user,
        on any edge, hears of it). Changes of one user on this node run one at a
        time, so a merge starts from the last stored document and the retained
        message is the stored one; across nodes the last write wins."""
        lock, n = self._preference_locks.get(user, (asyncio.Lock(), 0))
        self._preference_locks[user] = (lock, n + 1)
        try:
            async with lock:
                doc = change(await self.store.user_preferences(user))
                stored = await self.store.set_user_preferences(user, doc)
                await self.publish(preferences_topic(user), orjson.dumps(stored),
                                   PayloadKind.JSON, retain=True)
                return stored
        finally:
            lock, n = self._preference_locks[user]
            if n <= 1:
                del self._preference_locks[user]
            else:
                self._preference_locks[user] = (lock, n - 1)

    async def seen(self, users: Sequence[str]) -> None:
        """Record ``users`` online now (segments' ``active_within``), as one batch."""
        await self.store.seen_many(users)

    # -- bus traffic -------------------------------------------------------------------

    def _on_bus(self, pub: Publication) -> None:
        """A publication from the bus: deliver it in offset order, once."""
        held = self._filling.get(pub.topic)
        if held is not None:
            held.append(pub)
            return
        position = parse_offset(pub.offset)
        last = self._last.get(pub.topic)
        if position is not None and last is not None and last[0] == position[0]:
            if position[1] <= last[1]:
                self.metrics.inc("tidings_bus_duplicates_total")
                return
            if position[1] > last[1] + 1:
                self.metrics.inc("tidings_bus_gaps_total")
                self._fill(pub.topic, format_offset(*last), [pub])
                return
        self._deliver(pub, position)

    def _deliver(self, pub: Publication, position: tuple[str, int] | None) -> None:
        if position is not None:
            if len(self._last) >= _MAX_TRACKED and pub.topic not in self._last:
                self._last.clear()  # bounded: forget the oldest knowledge wholesale
            self._last[pub.topic] = position
        arrived = self._arrived
        if arrived is None:  # the first of this pass: the hub gets them all at its end
            arrived = self._arrived = []
            asyncio.get_running_loop().call_soon(self._hand_over)
        arrived.append(pub)

    def _hand_over(self) -> None:
        """What arrived (in order) during one loop pass, to the hub: each run of one
        topic at once (a group a publisher sent costs each subscriber one append),
        about ``_PASS_CALLS`` subscriber calls per pass; the rest goes on next pass,
        ahead of what arrives meanwhile, so one large group does not hold the
        loop (pings, replies, other connections) for long."""
        arrived, self._arrived = self._arrived or [], None
        i, spent, end = 0, 0, len(arrived)
        while i < end:
            if spent >= _PASS_CALLS:
                self._arrived = arrived[i:]
                asyncio.get_running_loop().call_soon(self._hand_over)
                return
            topic, j = arrived[i].topic, i + 1
            while j < end and arrived[j].topic == topic:
                j += 1
            if j == i + 1:  # one message (personal topics): its deliveries are its calls
                spent += self._hand_run(arrived[i:j])
                i = j
                continue
            k, calls = self.hub.fitting(arrived[i:j], _PASS_CALLS)
            self._hand_run(arrived[i:i + k])
            spent += calls
            i += k

    def _hand_run(self, run: list[Publication]) -> int:
        """One run to the hub, counted; returns how many deliveries it made."""
        try:
            n = self.hub.deliver_many(run)
        except Exception:  # our bug: never let it kill the bus reader
            log.exception("delivery failed for a message on %r", run[0].topic)
            self.metrics.inc("tidings_errors_total", code="internal")
            return 0
        self.metrics.inc("tidings_deliveries_total", n)
        if n:
            now = time.time()
            for pub in run:
                if pub.ts:
                    self._latency.observe(max(0.0, now - pub.ts / 1000))
        return n

    def _fill(self, topic: str, since: str | None, held: list[Publication], *,
              after_ms: int = 0) -> None:
        """Deliver what history has after ``since`` (None: its newest messages stamped
        ``after_ms`` or later), then what arrived meanwhile."""
        self._filling[topic] = held
        self._tasks.spawn(self._fill_from_history(topic, since, after_ms))

    async def _fill_from_history(self, topic: str, since: str | None, after_ms: int) -> None:
        items: list[Publication] = []
        try:
            page = await self.store.history(topic, since, _FILL_LIMIT)
            items = [p for p in page.items if p.ts >= after_ms]
            if since is not None and not page.complete:
                self.metrics.inc("tidings_bus_gaps_unfilled_total")
                log.warning("history no longer reaches back to fill a gap on %r", topic)
        except TidingsError:
            self.metrics.inc("tidings_bus_gaps_unfilled_total")
        held = self._filling.pop(topic, [])
        for pub in sorted([*items, *held], key=lambda p: p.seq):
            position = parse_offset(pub.offset)
            last = self._last.get(topic)
            if position is not None and last is not None and last[0] == position[0] \
                    and position[1] <= last[1]:
                continue
            self._deliver(pub, position)

    def resync(self) -> None:
        """After the bus reconnected: fill whatever was missed on subscribed topics."""
        for topic, last in list(self._last.items()):
            if topic not in self._filling and self.hub.subscribers(topic):
                self._fill(topic, format_offset(*last), [])
        # Followed topics that had delivered nothing here before the outage: what
        # was published since this node began to follow them (by the store's
        # timestamps; nodes' clocks are assumed in sync to well under a second).
        for topic, since_ms in list(self._watched.items()):
            if topic not in self._last and topic not in self._filling \
                    and self.hub.subscribers(topic):
                self._fill(topic, None, [], after_ms=since_ms)


class _Gate:
    """Publishes to one memory-only topic waiting behind a store round trip."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


def _fail(group: list[tuple[PublishRequest, asyncio.Future[PublishResult]]],
          error: TidingsError) -> None:
    """Tell every sender of ``group`` that its message was not stored."""
    for _, future in group:
        if not future.done():
            future.set_exception(error)
