"""The Redis store: the store contract on one Redis or a Redis Cluster.

The same contract tests as the SQLite store (``tests/store/test_*_contract.py``)
run against one Redis and a 3-master cluster.

URL: ``redis://host:port/db`` (one server) or ``redis+cluster://host:port``
(any node of a Redis Cluster; ``rediss`` for TLS in both). Every call is
bounded by ``timeout`` seconds (socket timeouts and an overall deadline) and
raises :class:`tidings.errors.Unavailable` when Redis does not answer in time;
commands are never retried by the client, so a write whose reply was lost is
reported as failed, never applied twice by us. Time comes from ``clock`` (the
scripts take "now" as an argument, never Redis ``TIME``).

Atomicity
---------
Every multi-key change is one Lua script (EVALSHA via ``register_script``,
see :mod:`.redis_lua`) over keys that share one hash tag, so it runs on one
slot of a cluster: a publish (offset, history append and trim, retained,
idempotency key, and the PUBLISH / SPUBLISH on the topic's channel), a
user's notify or mark (items, counts, the user's stream topic, the retained
``users/{uid}/unread``, and their announcements), a notification's tracking,
an MQTT session with its queue.

Key layout (``P`` is the key prefix, ``tidings:`` by default; ``B`` is a
topic's base, :func:`tidings.redis_wire.topic_base`: ``{t:<topic>}``, or
``{u:<uid>}:t:<topic>`` for ``users/{uid}/...``; tags escape ``%`` and ``}``)

=============================  ======  ===============================================
key                            type    what
=============================  ======  ===============================================
``P epoch``                    string  the store's epoch; topic epochs derive from it
``P B:m``                      hash    topic: ``e`` epoch, ``s`` last sequence
``P B:h``                      zset    history: score seq, member entry (PEXPIRE ttl)
``P B:r``                      string  retained message
``P B:i`` / ``P B:ie``         hash /  idempotency keys -> offset / -> expiry (ms)
                               zset
``P {u:<uid>}:items``          hash    inbox item by id (flags, expiry, fields)
``P {u:<uid>}:order``          zset    unarchived items by seq (listing, paging)
``P {u:<uid>}:unread``         zset    unread unarchived items by expiry (+inf: none);
                                       the count is ``ZCOUNT (now +inf``: O(log n)
``P {u:<uid>}:useq``           zset    unread unarchived items by seq
``P {u:<uid>}:exp``            zset    items with an expiry, by expiry (collection)
``P {u:<uid>}:ck``             zset    ``collapse_key \\0 id`` of unread items (lex)
``P {u:<uid>}:done``           zset    read or archived items by seq (pruned first)
``P {u:<uid>}:meta``           hash    ``seq``: the inbox sequence
``P {u:<uid>}:ret``            zset    the user's topics with a retained message (lex)
``P {u:<uid>}:pres``           zset    online device entries by expiry (presence)
``P {u:<uid>}:pinfo``          hash    entry -> its info (JSON)
``P {r}:firsts``               zset    first levels that have retained topics
``P {r:<level>}:topics``       zset    retained topics of a first level (lex)
``P {r:<level>}:seen``         hash    topic -> when its index entry was refreshed
``P {r}:users``                zset    users with retained topics
``P {n:<id>}:m``               hash    notification: category, targets, created,
                                       and a counter per tracked event
``P {n:<id>}:tr``              set     ``event \\0 user`` tracked (once each)
``P {n:<id>}:uv``              hash    user -> the variant the user was given
``P {n:<id>}:v``               hash    ``variant \\0 state-or-event`` -> users
``P {n:<id>}:fb``              hash    user -> their feedback (JSON: reason, comment,
                                       ts); ``r:<reason>`` counts in ``:m``
``P {nk:<key>}``               string  a notify idempotency key: id, targets, done
``P {s}:categories``           hash    ``category \\0 field`` -> total
``P {s}:recent``               zset    the newest notification ids by creation (ms),
                                       the newest ``RECENT_KEPT`` kept (dashboard)
``P {due}:at`` / ``P {due}:v`` zset /  users with expiring items, by (at most) their
                               hash    earliest expiry / a version per user (sweeper)
``P {ms:<bucket>}:state``      hash    MQTT session state by client id (64 buckets)
``P {ms:<bucket>}:q:<client>`` list    the session's queue, oldest first
``P {jobs}:j:<id>``            hash    a send job: status, request, cursor, lease
                                       (owner, until), ``o:<state>`` target counts
``P {jobs}:due``               zset    scheduled jobs by due time
``P {jobs}:lease``             zset    sending jobs by the end of their lease
``P {jobs}:st:<status>``       zset    jobs of a status by number (listing; the
                                       cursor); ``P {jobs}:seq`` numbers them
``P {jobs}:k:<key>``           string  a job's idempotency key -> job id (PX ttl)
``P {u:<uid>}:nt``             hash    notification -> the user's target state
``P {u:<uid>}:nv``             hash    notification -> the user's variant (if any)
``P {u:<uid>}:push:<cat>``     zset    notification by live-push time (caps; 24 h)
``P {dq:<n>}:q``               zset    due entries ``<id>\0<user>`` by when they may
                                       be handed out (due, or lease end once claimed)
``P {dq:<n>}:due``             hash    entry -> its due time
``P {dq:<n>}:j:<id>``          set     a notification's entries in the bucket
``P {dq:<n>}:x``               set     cancelled notifications (entries refused)
=============================  ======  ===============================================

Channels: :func:`tidings.redis_wire.channel_for` (``tidings:`` + B), in the
slot of the topic's keys; the scripts PUBLISH (one Redis) or SPUBLISH
(cluster) the :mod:`tidings.redis_wire` envelope unless ``announce=False``, so
no node sees a publication that history does not have. ``publish`` takes
``qos``, ``origin`` and ``meta`` for that announcement only (not stored);
``meta`` is encoded by the ``meta_codec`` the store was given.

Trade-offs (what one slot per topic / per user costs)
-----------------------------------------------------
* Retained index for wildcard filters. On one Redis the scripts keep the
  index exact. On a cluster a topic's keys and the index cannot share a slot,
  so the index is a superset kept outside the script: a publish that sets a
  retained message first adds the topic to ``{r}:firsts`` and
  ``{r:<level>}:topics`` (stamped in ``:seen``), then runs its script; a
  clear leaves the entry. ``retained(filter)`` reads the index, checks every
  candidate's message, and drops an entry whose message is gone only if it
  was not refreshed for ``RETAINED_GRACE`` (far longer than a call's bound),
  then re-checks the message and restores the entry if a publish set it
  meanwhile. A wildcard read costs one index read per first level it can
  match plus one GET per candidate. A user's topics are indexed in the user's
  own slot (exact, atomic); ``{r}:users`` lists the users, added before the
  script (remembered per process) and never removed.
* Idempotency keys of publishes live in the topic's slot (atomic with the
  publish), so a key is scoped to its topic: the same key on another topic
  is another request.
* Notify is atomic per user (as the contract asks), not across users; the
  per-user scripts go out in pipelines of 100 (one round trip per node). With
  an idempotency key, a notify claims the key first and marks it done last;
  a retry of one that failed half-way re-runs the per-user steps, each of
  which skips a user who already has the notification, so every user gets it
  exactly once. Without a key a retry after a failure is a new notification.
* Category totals (``{s}:categories``) are bumped right after the
  per-notification script, in a second call: a crash between the two leaves
  a category total one short, while the per-notification stats are exact.
* Expired inbox items are forgotten (up to 100 per notify / mark), and by
  :meth:`sweep`, which finds the users through ``{due}:at``: a superset
  updated after each notify with a TTL (a crash between the two leaves an
  item to the next notify or mark of its user); reads skip the rest.
  ``track`` of a forgotten item returns False.
* Expired history and idempotency keys are left to Redis: a topic's history
  key gets the TTL of its newest message on every publish (so a topic never
  published again is gone at that TTL), each publish trims expired entries
  at its head, and idempotency keys expire by TTL. ``sweep`` counts none of
  those.
* The inbox cap: ``HLEN`` of the items hash is the total; over the cap a
  notify drops from ``:done``, then ``:useq``, then ``:order``.
* Notification jobs all live in the one ``{jobs}`` slot: a claim, a lease
  check, a status change with its indexes and an idempotent create are each
  one script, so of nodes claiming at once exactly one gets a job. Jobs are
  per notification (not per user), so that slot sees a few calls per chunk.
  The job's stats row (``{n:<id>}:m``) is written after the job, and again
  (a no-op) by a retried create, so a crash between the two is mended by the
  retry.
* Delivery (:meth:`deliver`) is one DELIVER script per user in the user's
  slot: the target record (``:nt``), the inbox write and the push record, so
  a replayed chunk skips every recorded user. After the per-user scripts of a
  chunk come, in other slots, the due-queue entries (added after the target
  records that need them: a skipped user still ``held`` or ``scheduled`` gets
  its entry back only if it is gone) and the job's counts (one HINCRBY per
  state, for the users this call recorded). A crash between the per-user
  scripts and the counts leaves the job's counts short by those users (the
  targets themselves are exact); one between a ``held`` record and its entry
  is mended when the chunk is replayed.
* Variants: a chunk whose users have variants first records them in the
  notification's slot (``{n:<id>}:uv``, the first variant stays), so the TRACK
  script, which runs there, finds a user's variant and bumps its counter in
  the same step; each DELIVER script keeps the variant beside the target
  (``:nv``); after the chunk one call counts the recorded users' states per
  variant (``{n:<id>}:v``). :meth:`variant_counts` reads that one hash:
  O(variants). A crash before that call leaves those states uncounted per
  variant, as it does the job's counts.
* The due queue is spread over :data:`DUE_BUCKETS` slots by user; a claim
  walks the buckets from a random one until it has ``limit`` entries (an
  empty queue costs a node 16 small calls per poll). A claimed entry stays in
  its bucket with its lease end as score, so an entry whose node died is
  handed out again when the lease ends. ``job_cancel`` cancels the job (a
  sent one only if a bucket still lists entries of it), then each bucket
  drops its entries and refuses new ones for it (``:x``); a crash between the
  two is mended by repeating the cancel.
* Target records and cancelled-notification marks are kept (as SQLite keeps
  them): one hash field per user and notification sent.
* A script runs alone on its Redis: ``mark`` with ``all`` walks the user's
  whole inbox in one script (as SQLite does in one transaction), so a user
  with a very large inbox costs Redis that long.
* MQTT sessions are spread over 64 bucket slots; a session's state, its queue
  and the bucket's list of client ids share the slot, so save / delete /
  enqueue are atomic and ``mqtt_sessions`` reads 64 hashes.
* The store epoch is one key. A topic created after Redis lost its data gets
  a new epoch only if that key was lost too; the store re-reads it after any
  connection error (keeping the one it has while its master is down).
* Reconnecting: on one Redis a pooled connection the server closed is
  replaced before use, so the first call after a restart works. The cluster
  client learns that a restarted master is back through one failed call (the
  caller gets ``Unavailable`` once and retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import msgpack
import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from ..errors import BadRequest, Unavailable
from ..protocol.topics import is_wildcard, matches
from ..redis_wire import (
    CHANNEL_PREFIX,
    MetaCodec,
    channel_for,
    escape_tag,
    parse_redis_url,
    topic_base,
    user_of,
    user_tag,
    wire_head,
    wire_tail,
)
from ..types import (
    Offset,
    PayloadKind,
    Publication,
    format_offset,
    is_cursor,
    parse_offset,
    stored_publication,
)
from . import redis_lua as lua
from .base import (
    FEEDBACK_REASONS,
    JOB_STATUSES,
    PRUNE_STEP,
    RECENT_KEPT,
    STAT_EVENTS,
    TRACK_EVENTS,
    DeliverResult,
    Delivery,
    DueEntry,
    HistoryPage,
    HistoryPolicy,
    InboxItem,
    InboxPage,
    Job,
    JobPage,
    JobStatus,
    MarkAction,
    MqttSessionState,
    NewJob,
    NotifyResult,
    PolicyFor,
    PublishRequest,
    PublishResult,
    QueuedMessage,
    Store,
    SweepResult,
    UserChange,
    events_topic,
    notifications_topic,
    unread_topic,
)
from .contracts.audience import (
    ENGAGEMENT_EVENTS,
    ENGAGEMENT_KEEP,
    SCAN_FACTOR,
    AudiencePage,
    AudienceQuery,
    Profile,
    check_attribute_values,
)
from .contracts.notifications import variant_row
from .redis_events import RedisEvents
from .redis_push import RedisPushEndpoints

__all__ = ["DUE_BUCKETS", "MQTT_BUCKETS", "PUSH_KEEP", "RETAINED_GRACE", "RedisStore"]

log = logging.getLogger("tidings.store.redis")

T = TypeVar("T")


async def _staggered(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T | BaseException]:
    """``gather(*coros, return_exceptions=True)``, but each started a turn of the event
    loop after the one before. A batch packs its pipeline of per-user scripts (about
    10 ms for 100 users) on its first step, so ten batches started in one turn held
    the loop ~100 ms during a large send; this way pings and other clients are
    answered between them, and the batches still run concurrently."""
    tasks: list[asyncio.Future[T]] = []
    try:
        for coro in coros:
            tasks.append(asyncio.ensure_future(coro))
            await asyncio.sleep(0)
        return await asyncio.gather(*tasks, return_exceptions=True)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise

MQTT_BUCKETS = 64  # slots the MQTT sessions are spread over
DUE_BUCKETS = 16  # slots the due queue of notifications is spread over (by user)
PUSH_KEEP = 86400.0  # seconds of live-push history kept per user (the longest cap window)
RETAINED_GRACE = 300.0  # seconds an unconfirmed retained-index entry is kept (cluster)
_IN_FLIGHT = 64  # calls of one store in flight at once (each holds a connection)
_BATCH = 100  # per-user notify scripts sent in one pipeline
_MASK_TAGS = 50  # tags a TAG_HAS bit mask holds (Lua numbers are exact to 2^53)
_TAG_HAS_KEYS = 1000  # users one TAG_HAS script checks (Redis serves others between them)
_SELECT_PAGE = 5000  # candidates one TAG_SELECT call tests at most (a few ms of Redis)
_SELECT_TAGS = 1000  # query tags TAG_SELECT tests at most (Lua's unpack takes ~8,000)
_KNOWN_USERS_MAX = 100_000  # users remembered as listed in {r}:users
_NOT_JSON_KEYS = ("unread", "replaces")  # added to a push by the script
_WAITING = ("held", "scheduled")  # target states the due queue replaces when it fires
# Redis errors that say "not now" rather than "your script is wrong".
_TRANSIENT = ("OOM", "READONLY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY",
              "NOREPLICAS", "MOVED", "ASK", "NOSCRIPT", "UNBLOCKED")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _lex_range(prefix: str) -> tuple[bytes, bytes]:
    """ZRANGEBYLEX bounds of every member starting with ``prefix`` (UTF-8 has no 0xff)."""
    if not prefix:
        return b"-", b"+"
    p = prefix.encode()
    return b"[" + p, b"[" + p + b"\xff"


def _unpack(header: bytes, value: bytes) -> list[Any]:
    """Objects stored as concatenated msgpack values (see :mod:`.redis_lua`)."""
    out: list[Any] = msgpack.unpackb(header + value, raw=False)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisStore(RedisPushEndpoints, RedisEvents, Store):
    """The store contract on Redis. ``announce``: the scripts put every publication
    they write on its channel (see :attr:`announces`); ``meta_codec`` encodes
    ``meta`` in those announcements (without one it travels as nil)."""

    shared_presence = True  # every node sees every node's devices

    def __init__(
        self,
        url: str,
        *,
        cluster: bool | None = None,
        idempotency_ttl: float = 86400.0,
        clock: Callable[[], float] = time.time,
        timeout: float = 2.0,
        announce: bool = True,
        prefix: str = "tidings:",
        meta_codec: MetaCodec | None = None,
        max_inbox: int = 1000,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain a hash tag")
        if max_inbox < 1:
            raise ValueError("max_inbox must be at least 1")
        self._max_inbox = max_inbox
        self._url, from_url = parse_redis_url(url)
        self._cluster = from_url if cluster is None else cluster
        self._idempotency_ttl = idempotency_ttl
        self._clock = clock
        self._timeout = timeout
        self._announce = announce
        self._mode = 0 if not announce else 2 if self._cluster else 1
        self._p = prefix
        self._meta_codec = meta_codec
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._epoch = ""
        self._epoch_stale = True
        self._known_users: set[str] = set()
        self._gate = asyncio.Semaphore(_IN_FLIGHT)

    def __repr__(self) -> str:
        return f"RedisStore(cluster={self._cluster})"  # the URL may hold a password

    @property
    def announces(self) -> bool:  # type: ignore[override]
        """True when the scripts PUBLISH what they write: the node must not again."""
        return self._announce

    # -- plumbing -------------------------------------------------------------------------

    def _make_client(self) -> Any:
        kw: dict[str, Any] = {"socket_timeout": self._timeout,
                              "socket_connect_timeout": self._timeout,
                              "retry": Retry(NoBackoff(), 0),
                              "max_connections": _IN_FLIGHT + 8,
                              # off: with it on ("auto"), redis-py skips its check of a
                              # pooled connection, so the first call after a Redis
                              # restart fails on a connection the old server closed
                              "maint_notifications_config":
                                  MaintNotificationsConfig(enabled=False)}
        if self._cluster:
            return RedisCluster.from_url(self._url, **kw)
        return aioredis.Redis.from_url(self._url, **kw)

    async def _io(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` within the bound; Redis failures become ``Unavailable``."""
        client = self._client
        if client is None:
            raise Unavailable("store is closed")
        try:
            async with asyncio.timeout(self._timeout), self._gate:
                if self._epoch_stale:
                    await self._recheck_epoch(client)
                started = time.perf_counter()
                result = await fn(client)
        except ResponseError as e:
            if not str(e).startswith(_TRANSIENT):
                raise  # a bug of ours (a script error): not the backend's state
            self._failed(e)
            raise Unavailable("store unavailable") from e
        except (RedisError, OSError, TimeoutError) as e:
            self._failed(e)
            raise Unavailable("store unavailable") from e
        if self.monitor is not None:
            self.monitor.committed(time.perf_counter() - started)
        return result

    def _failed(self, e: BaseException) -> None:
        self._epoch_stale = True
        if self.monitor is not None:
            self.monitor.failed(f"{type(e).__name__}: {str(e)[:200]}" if str(e)
                                else type(e).__name__)

    async def _recheck_epoch(self, client: Any) -> None:
        """Re-read the store epoch after a failure (Redis may have lost it). With one
        already known, a master that is down (on a cluster, the one holding the
        epoch) must not stop calls to the others: keep it and check again later."""
        if not self._epoch:
            await self._load_epoch(client)
            return
        try:
            async with asyncio.timeout(self._timeout / 4):
                await self._load_epoch(client)
        except (RedisError, OSError, TimeoutError):
            pass

    async def _load_epoch(self, client: Any) -> None:
        key = self._p + "epoch"
        await client.set(key, secrets.token_hex(4), nx=True)
        value = await client.get(key)
        if value is None:
            raise Unavailable("store epoch missing")
        self._epoch = _text(value)
        self._epoch_stale = False

    def _topic_epoch(self, topic: str) -> str:
        """A topic's epoch, derived from the store's as the SQLite store does, so a
        topic needs no key until its first publish and ``latest`` never writes."""
        digest = hashlib.sha256(f"{self._epoch}\0{topic}".encode()).hexdigest()
        return digest[:8]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _tk(self, topic: str, suffix: str) -> str:
        return self._p + topic_base(topic) + suffix

    def _uk(self, user: str, suffix: str) -> str:
        return self._p + user_tag(user) + suffix

    async def open(self) -> None:
        self._client = self._make_client()
        self._scripts = {name: self._client.register_script(getattr(lua, name))
                         for name in lua.__all__}
        try:
            await self._io(lambda c: c.ping())  # loads the store epoch on the way
        except Unavailable:
            log.warning("redis store: not reachable yet; calls fail until it is")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._io(lambda c: c.ping()))
        except Unavailable:
            return False

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]
                ) -> Awaitable[Any]:
        return self._scripts[name](keys=keys, args=args)  # type: ignore[no-any-return]

    def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]
              ) -> Callable[[Any], Awaitable[Any]]:
        """Script ``name`` as a function of the client, for :meth:`_io`."""
        return lambda _client: self._script(name, keys, args)

    # -- topics ---------------------------------------------------------------------------

    def _retained_index_keys(self, topic: str) -> list[str]:
        """Extra script keys that index a retained topic inside the script: the
        user's own index always; on one Redis also the global ones."""
        user = user_of(topic)
        if user is not None:
            keys = [self._uk(user, ":ret")]
            if not self._cluster:
                keys.append(self._p + "{r}:users")
            return keys
        if self._cluster:
            return []
        first = topic.split("/", 1)[0]
        return [self._p + "{r:" + escape_tag(first) + "}:topics", self._p + "{r}:firsts"]

    async def _index_before(self, client: Any, topic: str, now: int) -> None:
        """Cluster: list a topic about to get a retained message in the global index
        (before its script: the index is a superset)."""
        user = user_of(topic)
        if user is not None:
            await self._register_user(client, user)
            return
        first = topic.split("/", 1)[0]
        group = self._p + "{r:" + escape_tag(first) + "}"
        pipe = client.pipeline(transaction=False)
        pipe.zadd(self._p + "{r}:firsts", {first: 0})
        pipe.zadd(group + ":topics", {topic: 0})
        pipe.hset(group + ":seen", topic, now)
        await pipe.execute()

    async def _register_user(self, client: Any, user: str) -> None:
        await self._register_users(client, [user])

    async def _register_users(self, client: Any, users: list[str]) -> None:
        """Cluster: list users about to get a retained topic in ``{r}:users`` (before
        their scripts; remembered per process, so once per user)."""
        new = [u for u in users if u not in self._known_users]
        if not new:
            return
        await client.zadd(self._p + "{r}:users", dict.fromkeys(new, 0))
        if len(self._known_users) + len(new) > _KNOWN_USERS_MAX:
            self._known_users.clear()
        self._known_users.update(new)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        kind: PayloadKind,
        *,
        retain: bool,
        policy: HistoryPolicy,
        idempotency_key: str | None = None,
        qos: int = 1,
        origin: str | None = None,
        meta: Any = None,
    ) -> PublishResult:
        """As :meth:`Store.publish`. ``qos``, ``origin`` and ``meta`` travel with
        the announcement; a retained message keeps its ``qos`` and ``meta`` (as
        the meta codec encodes it), the history neither."""
        request = PublishRequest(topic, payload, kind, policy, retain, idempotency_key, qos,
                                 origin, meta)
        now = self._now_ms()
        keys, args = self._publish_call(request, now)

        async def run(client: Any) -> Any:
            if retain and payload and self._cluster:
                await self._index_before(client, topic, now)
            return await self._script("PUBLISH", keys, args)

        return self._published(request, await self._io(run), now)

    async def publish_many(self, requests: Sequence[PublishRequest]) -> list[PublishResult]:
        """As :meth:`Store.publish_many`: the PUBLISH script once per request, in
        order, in one pipeline (one round trip per Redis node; a topic's messages
        share its slot, so they run in the order given)."""
        group = list(requests)
        now = self._now_ms()
        calls = [self._publish_call(r, now) for r in group]

        async def run(client: Any) -> list[Any]:
            if self._cluster:
                for r in group:
                    if r.retain and r.payload:
                        await self._index_before(client, r.topic, now)
            return await self._eval_many(client, "PUBLISH", calls)

        replies = await self._io(run)
        return [self._published(r, reply, now)
                for r, reply in zip(group, replies, strict=True)]

    def _publish_call(self, r: PublishRequest, now: int) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the PUBLISH script for ``r`` (see :mod:`.redis_lua`)."""
        topic = r.topic
        keys = [self._tk(topic, s) for s in (":m", ":h", ":r", ":i", ":ie")]
        keys.append(channel_for(topic))
        member = ""
        if r.retain:
            keys += self._retained_index_keys(topic)
            member = user_of(topic) or topic.split("/", 1)[0]
        mode = self._mode
        head = wire_head(topic) if mode else b""
        tail = wire_tail(r.kind, r.qos, r.retain, r.origin, r.meta, self._meta_codec) \
            if mode else b""
        kept = self._pack_meta(r.meta) if r.retain else b""  # a retained message's meta
        args = [now, self._topic_epoch(topic), r.policy.size, _ms(r.policy.ttl), int(r.kind),
                r.payload, 1 if r.retain else 0, r.idempotency_key or "",
                _ms(self._idempotency_ttl), mode, head, tail, topic, member, r.qos, kept]
        return keys, args

    def _published(self, r: PublishRequest, result: Any, now: int) -> PublishResult:
        """The PUBLISH script's reply as a result."""
        offset = Offset(_text(result[1]))
        if result[0] == 1:
            return PublishResult(self._first(r.topic, offset, result[2], r.payload, r.kind),
                                 duplicate=True)
        return PublishResult(Publication(r.topic, offset, r.payload, r.kind, now))

    @staticmethod
    def _first(topic: str, offset: Offset, entry: bytes | None, payload: bytes,
               kind: PayloadKind) -> Publication:
        """The publication an idempotency key points at (payload from history if kept)."""
        if entry is None:
            return Publication(topic, offset, payload, kind, 0)
        _, ts, _, k, p = _unpack(b"\x95", entry)
        return Publication(topic, offset, p, PayloadKind(k), ts)

    async def history(self, topic: str, since: str | None, limit: int) -> HistoryPage:
        now = self._now_ms()
        parsed = parse_offset(since) if since is not None else None
        keys = [self._tk(topic, ":m"), self._tk(topic, ":h")]
        if since is None:
            args: list[Any] = [now, "", -1, limit]
        elif parsed is None:
            args = [now, "", 0, limit]  # not an offset: everything kept, incomplete
        else:
            args = [now, parsed[0], parsed[1], limit]
        raw = await self._io(lambda c: self._script("HISTORY", keys, args))
        if raw[0] is None:
            # Never published: complete unless 'since' claims messages we never had.
            start = format_offset(self._topic_epoch(topic), 0)
            return HistoryPage([], start, since is None or since == start)
        epoch, last = _text(raw[0]), int(raw[1])
        rows = [_unpack(b"\x95", e) for e in raw[2:]]
        same_epoch = parsed is not None and parsed[0] == epoch
        if since is None:
            rows.reverse()
            complete = rows[0][0] == 1 if rows else last == 0
        else:
            cutoff = parsed[1] if same_epoch and parsed is not None else 0
            if not same_epoch:
                complete = False
            elif cutoff > last:
                complete = False  # an offset from the future: a store restored from backup
            elif cutoff == last:
                complete = True
            else:
                complete = bool(rows) and rows[0][0] == cutoff + 1 and len(rows) <= limit
            rows = rows[:limit]
        items = [Publication(topic, format_offset(epoch, s), p, PayloadKind(k), ts)
                 for s, ts, _, k, p in rows]
        return HistoryPage(items, format_offset(epoch, last), complete)

    async def reserve_offsets(self, topic: str, count: int) -> tuple[str, int]:
        if count < 1:
            raise ValueError("reserve at least one offset")
        keys = [self._tk(topic, ":m")]
        args = [count, self._topic_epoch(topic)]
        epoch, first = await self._io(lambda c: self._script("RESERVE", keys, args))
        return _text(epoch), int(first)

    async def latest(self, topic: str) -> Offset:
        key = self._tk(topic, ":m")
        epoch, seq = await self._io(lambda c: c.hmget(key, "e", "s"))
        # Never published: the derived epoch, sequence 0 (nothing is written).
        if epoch is None:
            return format_offset(self._topic_epoch(topic), 0)
        return format_offset(_text(epoch), int(seq))

    async def retained(self, flt: str) -> list[Publication]:
        if not is_wildcard(flt):
            key = self._tk(flt, ":r")
            raw = await self._io(lambda c: c.get(key))
            return [] if raw is None else [self._retained_pub(flt, raw)]
        now = self._now_ms()

        async def run(client: Any) -> list[Publication]:
            topics, groups = await self._candidates(client, flt)
            if not topics:
                return []
            pipe = client.pipeline(transaction=False)
            for t in topics:
                pipe.get(self._tk(t, ":r"))
            values = await pipe.execute()
            out, missing = [], []
            for t, raw in zip(topics, values, strict=True):
                if raw is not None:
                    out.append(self._retained_pub(t, raw))
                elif t in groups:
                    missing.append(t)
            if missing and self._cluster:
                await self._prune(client, missing, groups, now)
            return out

        return await self._io(run)

    def _retained_pub(self, topic: str, raw: bytes) -> Publication:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(raw)
        offset, ts, kind, qos, payload, *rest = unpacker
        return Publication(topic, Offset(offset), payload, PayloadKind(kind), ts, retained=True,
                           qos=qos, meta=self._unpack_meta(rest[0] if rest else None))

    def _pack_meta(self, meta: Any) -> bytes:
        """``meta`` as kept after a retained message: the codec's map, msgpacked."""
        if meta is None or self._meta_codec is None:
            return b""
        encoded = self._meta_codec.encode(meta)
        return msgpack.packb(encoded) if encoded else b""

    def _unpack_meta(self, data: Any) -> Any:
        """A kept ``meta`` back, as the codec makes it (None without one)."""
        if not isinstance(data, dict) or not data or self._meta_codec is None:
            return None
        try:
            return self._meta_codec.decode(data)
        except (ValueError, TypeError):
            return None  # unreadable (another version's): delivered without it

    async def _candidates(self, client: Any, flt: str) -> tuple[list[str], dict[str, str]]:
        """Topics from the retained indexes that match ``flt`` (sorted), and for the
        ones from a first-level index the name of that index."""
        levels = flt.split("/")
        first = levels[0]
        prefix = flt.split("+", 1)[0].split("#", 1)[0].rstrip("/")
        wild_first = first in ("+", "#")
        if wild_first:
            firsts = [_text(f) for f in await client.zrange(self._p + "{r}:firsts", 0, -1)]
        else:
            firsts = [first]
        users: list[str] = []
        if wild_first or first == "users":
            if first == "users" and len(levels) > 1 and levels[1] not in ("+", "#"):
                users = [levels[1]]
            else:
                users = [_text(u) for u in await client.zrange(self._p + "{r}:users", 0, -1)]
        pipe = client.pipeline(transaction=False)
        for level in firsts:
            group = self._p + "{r:" + escape_tag(level) + "}"
            pipe.zrangebylex(group + ":topics", *_lex_range(level if wild_first else prefix))
        for user in users:
            literal = not wild_first and len(levels) > 1 and levels[1] == user
            pipe.zrangebylex(self._uk(user, ":ret"), *_lex_range(prefix if literal else ""))
        found = await pipe.execute() if firsts or users else []
        groups: dict[str, str] = {}
        topics: set[str] = set()
        for level, names in zip(firsts, found, strict=False):
            for n in names:
                t = _text(n)
                if matches(flt, t):
                    topics.add(t)
                    groups[t] = level
        for names in found[len(firsts):]:
            topics.update(t for t in map(_text, names) if matches(flt, t))
        return sorted(topics), groups

    async def _prune(self, client: Any, missing: list[str], groups: dict[str, str],
                     now: int) -> None:
        """Cluster: drop index entries whose retained message is gone and that no
        publish refreshed within the grace period; restore any set meanwhile."""
        cutoff = now - _ms(RETAINED_GRACE)
        for t in missing:
            group = self._p + "{r:" + escape_tag(groups[t]) + "}"
            dropped = await self._script("PRUNE", [group + ":topics", group + ":seen"],
                                         [t, cutoff])
            if dropped and await client.exists(self._tk(t, ":r")):
                await self._index_before(client, t, now)

    # -- inbox ----------------------------------------------------------------------------

    def _inbox_keys(self, user: str, stream: str) -> list[str]:
        """KEYS of the notify / mark scripts (see :mod:`.redis_lua`)."""
        # each base made once (a large send makes these for every user)
        u = self._p + user_tag(user)
        sb, rb = topic_base(stream), topic_base(unread_topic(user))
        s, r = self._p + sb, self._p + rb
        keys = [u + ":items", u + ":order", u + ":unread", u + ":useq", u + ":exp", u + ":ck",
                u + ":meta", s + ":m", s + ":h", r + ":m", r + ":h", r + ":r", u + ":ret",
                CHANNEL_PREFIX + sb, CHANNEL_PREFIX + rb, u + ":done"]
        if not self._cluster:
            keys.append(self._p + "{r}:users")
        return keys

    def _inbox_args(self, user: str, stream: str, now: int, policy: PolicyFor) -> list[Any]:
        unread = unread_topic(user)
        p = policy(stream)
        json_tail = wire_tail(PayloadKind.JSON) if self._mode else b""
        return [now, self._mode, self._topic_epoch(stream), p.size, _ms(p.ttl),
                wire_head(stream) if self._mode else b"", json_tail,
                self._topic_epoch(unread), wire_head(unread) if self._mode else b"",
                json_tail, unread, user]

    def _change(self, user: str, stream: str, now: int, raw: list[Any], changed: list[str]
                ) -> UserChange:
        count, soffset, spayload, uoffset, upayload = raw[:5]
        pubs = [stored_publication(stream, Offset(_text(soffset)), spayload, PayloadKind.JSON,
                                   now),
                stored_publication(unread_topic(user), Offset(_text(uoffset)), upayload,
                                   PayloadKind.JSON, now)]
        return UserChange(user, int(count), changed, pubs)

    async def notify(
        self,
        users: Sequence[str],
        notification: dict[str, Any],
        *,
        ttl: float | None,
        collapse_key: str | None,
        policy: PolicyFor,
        idempotency_key: str | None = None,
    ) -> NotifyResult:
        now = self._now_ms()
        users = list(users)
        nid = str(notification["id"])
        claim_key = None
        if idempotency_key is not None:
            claim_key = self._p + "{nk:" + escape_tag(idempotency_key) + "}"
            first = await self._io(lambda c: self._script(
                "CLAIM", [claim_key], [now, nid, len(users), _ms(self._idempotency_ttl)]))
            if first is not None:
                first_id, first_targets, done = _text(first[0]), int(first[1]), first[2]
                if done:
                    return NotifyResult(first_id, first_targets, [], duplicate=True)
                # the first attempt failed half-way (or runs now): finish it, once per user
                nid = first_id
                await self._note(nid, str(notification.get("category", "")), first_targets,
                                 now)
                changes = await self._deliver(users, {**notification, "id": nid}, now, ttl,
                                              collapse_key, policy)
                await self._claim_done(claim_key, nid, first_targets, now)
                return NotifyResult(nid, first_targets, changes, duplicate=not changes)
        await self._note(nid, str(notification.get("category", "")), len(users), now)
        changes = await self._deliver(users, notification, now, ttl, collapse_key, policy)
        if claim_key is not None:
            await self._claim_done(claim_key, nid, len(users), now)
        return NotifyResult(nid, len(users), changes)

    async def _note(self, nid: str, category: str, targets: int, now: int) -> None:
        """The notification's stats record, and its category's totals when new."""
        key = self._note_key(nid, ":m")
        cats = self._p + "{s}:categories"
        recent = self._p + "{s}:recent"

        async def run(client: Any) -> None:
            if await self._script("NOTE", [key], [category, targets, now]):
                pipe = client.pipeline(transaction=False)
                pipe.hincrby(cats, category + "\0notifications", 1)
                pipe.hincrby(cats, category + "\0targets", targets)
                pipe.zadd(recent, {nid: now})  # the dashboard's list, the newest kept
                pipe.zremrangebyrank(recent, 0, -RECENT_KEPT - 1)
                await pipe.execute()

        await self._io(run)

    async def _claim_done(self, key: str, nid: str, targets: int, now: int) -> None:
        value = b"".join(msgpack.packb(v) for v in (nid, targets,
                                                    now + _ms(self._idempotency_ttl), 1))
        await self._io(lambda c: c.set(key, value, keepttl=True))

    async def _deliver(self, users: list[str], notification: dict[str, Any], now: int,
                       ttl: float | None, collapse_key: str | None, policy: PolicyFor
                       ) -> list[UserChange]:
        """One atomic step per user (bounded concurrency); raises ``Unavailable`` if
        any failed (the others are stored: see the module doc on retries)."""
        nid = str(notification["id"])
        fields = {**notification, "ts": now}
        fields_json = orjson.dumps(fields)
        push_base = orjson.dumps({k: v for k, v in fields.items() if k not in _NOT_JSON_KEYS})
        expires = -1 if ttl is None else now + int(ttl * 1000)
        own = [nid, expires, 0 if collapse_key is None else 1, collapse_key or "",
               fields_json, push_base, self._max_inbox, PRUNE_STEP]

        async def batch(chunk: list[str]) -> list[UserChange]:
            async def run(client: Any) -> list[Any]:
                if self._cluster:
                    await self._register_users(client, chunk)
                calls = []  # made here: topic epochs need the store epoch _io ensured
                for user in chunk:
                    stream = notifications_topic(user)
                    calls.append((self._inbox_keys(user, stream),
                                  [*self._inbox_args(user, stream, now, policy), *own]))
                raws = await self._eval_many(client, "NOTIFY", calls)
                added = [u for u, r in zip(chunk, raws, strict=True) if r is not None]
                if expires >= 0 and added:  # after the items exist: see DUE_ADD
                    await self._script("DUE_ADD", self._due_keys(), [expires, *added])
                return raws

            raws = await self._io(run)
            return [self._change(user, notifications_topic(user), now, raw, [nid])
                    for user, raw in zip(chunk, raws, strict=True) if raw is not None]

        chunks = [users[i:i + _BATCH] for i in range(0, len(users), _BATCH)]
        results = await _staggered(batch(c) for c in chunks)
        changes: list[UserChange] = []
        for r in results:
            if isinstance(r, BaseException):
                raise r
            changes += r
        return changes

    async def _eval_many(self, client: Any, name: str,
                         calls: Sequence[tuple[Sequence[str | bytes], list[Any]]]
                         ) -> list[Any]:
        """Run script ``name`` once per (keys, args) in one pipeline (a round trip per
        node); those that met an empty script cache run again once it is loaded."""
        script = self._scripts[name]
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            replies = await pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, BaseException):
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                break
            await client.script_load(script.script)
            todo = missing
        return results

    async def inbox(self, user: str, *, limit: int, before: str | None = None,
                    unread_only: bool = False) -> InboxPage:
        now = self._now_ms()
        cursor = before if before is not None and before.isdigit() else ""
        keys = [self._uk(user, s) for s in (":items", ":order", ":useq", ":unread")]
        raw = await self._io(lambda c: self._script(
            "INBOX", keys, [now, cursor, limit, 1 if unread_only else 0]))
        rows = [_unpack(b"\x97", e) for e in raw[1:]]
        more = len(rows) > limit
        rows = rows[:limit]
        items = [InboxItem(orjson.loads(f), bool(r), bool(a)) for _, _, _, r, a, _, f in rows]
        nxt = str(rows[-1][0]) if more and rows else None
        return InboxPage(items, int(raw[0]), nxt)

    async def unread(self, user: str) -> int:
        now = self._now_ms()
        key = self._uk(user, ":unread")
        return int(await self._io(lambda c: c.zcount(key, f"({now}", "+inf")))

    async def read_states(self, user: str, ids: Sequence[str]) -> dict[str, bool]:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        now = self._now_ms()
        key = self._uk(user, ":items")

        async def run(client: Any) -> list[Any]:
            out: list[Any] = []
            for i in range(0, len(ids), 500):
                out += await client.hmget(key, ids[i:i + 500])
            return out

        out: dict[str, bool] = {}
        for nid, entry in zip(ids, await self._io(run), strict=True):
            if entry is None:
                continue
            _, _, expires, read, archived, _, _ = _unpack(b"\x97", entry)
            # Only items still in the inbox: recovery must not resurrect
            # archived or expired notifications.
            if not archived and (expires < 0 or expires > now):
                out[nid] = bool(read)
        return out

    async def mark(self, user: str, action: MarkAction, ids: Sequence[str] | None, *,
                   device: str, policy: PolicyFor) -> UserChange:
        if action not in ("read", "unread", "archive"):
            raise ValueError(f"unknown action {action!r}")
        now = self._now_ms()
        stream = events_topic(user)
        keys = self._inbox_keys(user, stream)
        id_list = [] if ids is None else list(dict.fromkeys(ids))

        async def run(client: Any) -> Any:
            if self._cluster:
                await self._register_user(client, user)
            args = [*self._inbox_args(user, stream, now, policy), action,
                    1 if ids is None else 0, orjson.dumps(device), *id_list]
            return await self._script("MARK", keys, args)

        raw = await self._io(run)
        if len(raw) == 1:
            return UserChange(user, int(raw[0]))
        return self._change(user, stream, now, raw, [_text(i) for i in raw[5]])

    def _due_keys(self) -> list[str]:
        return [self._p + "{due}:at", self._p + "{due}:v"]

    def _due_set(self, args: list[Any]) -> Callable[[Any], Awaitable[Any]]:
        return lambda c: self._script("DUE_SET", self._due_keys(), args)

    async def sweep(self, *, policy: PolicyFor, limit: int) -> SweepResult:
        """Expired inbox items of the users due in ``{due}:at`` (history and
        idempotency keys expire by Redis TTL: see the module doc)."""
        now = self._now_ms()
        raw = await self._io(lambda c: self._script("DUE_TAKE", self._due_keys(),
                                                    [now, limit]))
        due = [(_text(raw[i]), _text(raw[i + 1])) for i in range(0, len(raw), 2)]
        changes: list[UserChange] = []
        deleted, more = 0, len(due) >= limit
        for user, version in due:
            stream = events_topic(user)
            keys = self._inbox_keys(user, stream)

            async def run(client: Any, user: str = user, stream: str = stream,
                          keys: list[str] = keys) -> Any:
                if self._cluster:
                    await self._register_user(client, user)
                # made here: topic epochs need the store epoch _io ensured
                args = [*self._inbox_args(user, stream, now, policy), limit]
                return await self._script("SWEEP", keys, args)

            r = await self._io(run)
            deleted += int(r[0])
            more = more or int(r[0]) >= limit
            nxt = "" if r[1] is None else _text(r[1])
            await self._io(self._due_set([user, version, nxt]))
            if len(r) > 3:
                ids = [_text(i) for i in r[7]]
                changes.append(self._change(user, stream, now, [r[2], *r[3:7]], ids))
        return SweepResult(0, deleted, 0, changes, more)

    async def _recorded(self, client: Any, notification_id: str, user: str, event: str,
                        keys: list[str], extra: list[Any]) -> str | None:
        """The TRACK script for a user with the notification in their inbox, then
        the category's total: the category when the event is new, else None
        (``track`` and ``feedback`` both)."""
        if not await client.hexists(self._uk(user, ":items"), notification_id):
            return None
        category = await self._script("TRACK", keys, [event, user, *extra])
        if category is None:
            return None
        category = _text(category)
        await client.hincrby(self._p + "{s}:categories", category + "\0" + event, 1)
        return category

    async def track(self, notification_id: str, user: str, event: str) -> bool:
        if event not in TRACK_EVENTS:
            raise ValueError(f"unknown event {event!r}")

        async def run(client: Any) -> bool:
            category = await self._recorded(client, notification_id, user, event,
                                            self._track_keys(notification_id), [])
            if category is None:
                return False
            if event in ENGAGEMENT_EVENTS:  # a step of its own, in the user's slot
                await self._engage(client, user, category, event, notification_id)
            return True

        return await self._io(run)

    def _track_keys(self, notification_id: str) -> list[str]:
        """KEYS of the TRACK script: the record, the tracked set and the variants."""
        return [self._note_key(notification_id, s) for s in (":m", ":tr", ":uv", ":v")]

    async def variant_counts(self, notification_id: str) -> dict[str, dict[str, int]]:
        raw = await self._io(lambda c: c.hgetall(self._note_key(notification_id, ":v")))
        counted: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            variant, _, name = _text(k).rpartition("\0")
            counted.setdefault(variant, {})[name] = int(v)
        return {v: variant_row(c) for v, c in sorted(counted.items())}

    async def feedback(self, notification_id: str, user: str, reason: str,
                       comment: str | None) -> bool:
        if reason not in FEEDBACK_REASONS:
            raise ValueError(f"unknown feedback reason {reason!r}")
        # the event where track records events, with the feedback hash beside it
        keys = [*self._track_keys(notification_id), self._note_key(notification_id, ":fb")]
        record = orjson.dumps({"reason": reason, "comment": comment, "ts": self._now_ms()})

        async def run(client: Any) -> bool:
            category = await self._recorded(client, notification_id, user, "feedback", keys,
                                            [reason, record])
            if category is None:
                return False
            if reason == "not_interested":  # a step of its own, in the user's slot
                await self._script("FORGET_ENGAGEMENT", [self._uk(user, ":eng:" + category),
                                                         self._uk(user, ":engall")], [])
            return True

        return await self._io(run)

    async def stats(self, notification_id: str) -> dict[str, Any] | None:
        key = self._note_key(notification_id, ":m")
        raw = await self._io(lambda c: c.hgetall(key))
        record = {_text(k): _text(v) for k, v in raw.items()}
        if "category" not in record:
            return None
        out: dict[str, Any] = {"id": notification_id, "category": record["category"],
                               "targets": int(record["targets"]),
                               "created": int(record["created"])}
        out.update({e: int(record.get(e, 0)) for e in STAT_EVENTS})
        out["feedback_reasons"] = {r: int(record.get("r:" + r, 0)) for r in FEEDBACK_REASONS}
        return out

    async def category_stats(self) -> dict[str, dict[str, int]]:
        raw = await self._io(lambda c: c.hgetall(self._p + "{s}:categories"))
        out: dict[str, dict[str, int]] = {}
        for k, v in raw.items():
            category, _, name = _text(k).rpartition("\0")
            totals = out.setdefault(category, {"notifications": 0, "targets": 0,
                                               **{e: 0 for e in STAT_EVENTS}})
            totals[name] = int(v)
        return out

    async def recent_notifications(self, limit: int) -> list[str]:
        limit = min(limit, RECENT_KEPT)
        raw = await self._io(lambda c: c.zrevrange(self._p + "{s}:recent", 0, limit - 1))
        return [_text(r) for r in raw]

    # -- MQTT sessions --------------------------------------------------------------------

    def _mqtt_keys(self, client_id: str) -> list[str]:
        bucket = zlib.crc32(client_id.encode()) % MQTT_BUCKETS
        tag = self._p + "{ms:" + str(bucket) + "}"
        return [tag + ":state", tag + ":q:" + client_id]

    @staticmethod
    def _queued_entry(m: QueuedMessage) -> bytes:
        meta = {"topic": m.topic, "qos": m.qos, "retain": m.retain, "packet_id": m.packet_id,
                "pubrel": m.pubrel, "expires": m.expires, "properties": m.properties}
        return msgpack.packb([orjson.dumps(meta), m.payload])  # type: ignore[no-any-return]

    @staticmethod
    def _queued(entry: bytes) -> QueuedMessage:
        meta, payload = msgpack.unpackb(entry)
        d = orjson.loads(meta)
        return QueuedMessage(d["topic"], payload, d["qos"], d["retain"], d["packet_id"],
                             d["pubrel"], d["expires"], d["properties"])

    async def mqtt_session(self, client_id: str
                           ) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
        raw = await self._io(lambda c: self._script("MQTT_GET", self._mqtt_keys(client_id),
                                                    [client_id]))
        if raw is None:
            return None
        state, queue = raw
        return MqttSessionState.from_json(orjson.loads(state)), [self._queued(e) for e in queue]

    async def mqtt_save(self, client_id: str, state: MqttSessionState,
                        queue: list[QueuedMessage] | None = None) -> None:
        entries = [] if queue is None else [self._queued_entry(m) for m in queue]
        args = [client_id, orjson.dumps(state.to_json()), 0 if queue is None else 1, *entries]
        await self._io(lambda c: self._script("MQTT_SAVE", self._mqtt_keys(client_id), args))

    async def mqtt_delete(self, client_id: str) -> None:
        await self._io(lambda c: self._script("MQTT_DELETE", self._mqtt_keys(client_id),
                                              [client_id]))

    async def mqtt_enqueue(self, items: Sequence[tuple[str, QueuedMessage]], limit: int
                           ) -> int:
        per_client: dict[str, list[bytes]] = {}
        for client_id, m in items:
            per_client.setdefault(client_id, []).append(self._queued_entry(m))

        async def one(cid: str, entries: list[bytes]) -> int:
            key = self._mqtt_keys(cid)[1:]
            return int(await self._io(lambda c: self._script("MQTT_ENQUEUE", key,
                                                             [limit, *entries])))

        # atomic per client (the queue's limit holds); a failure raises after the rest
        results = await asyncio.gather(*(one(c, e) for c, e in per_client.items()),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return sum(r for r in results if isinstance(r, int))

    async def mqtt_sessions(self) -> list[tuple[str, MqttSessionState]]:
        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for b in range(MQTT_BUCKETS):
                pipe.hgetall(self._p + "{ms:" + str(b) + "}:state")
            return await pipe.execute()  # type: ignore[no-any-return]

        out: list[tuple[str, MqttSessionState]] = []
        for bucket in await self._io(run):
            out += [(_text(cid), MqttSessionState.from_json(orjson.loads(state)))
                    for cid, state in bucket.items()]
        return out

    # -- presence -------------------------------------------------------------------------

    def _presence_keys(self, user: str) -> list[str]:
        return [self._uk(user, ":pres"), self._uk(user, ":pinfo")]

    async def presence_put(self, user: str, entry: str, info: dict[str, Any],
                           ttl: float) -> int:
        now = self._now_ms()
        args = [now, entry, orjson.dumps(info), _ms(ttl)]
        keys = self._presence_keys(user)
        return int(await self._io(lambda c: self._script("PRESENCE_PUT", keys, args)))

    async def presence_put_many(self, entries: Sequence[tuple[str, str, dict[str, Any], float]]
                                ) -> list[int]:
        """One pipeline of PRESENCE_PUT scripts (a round trip per Redis node)."""
        now = self._now_ms()
        calls = [(self._presence_keys(user), [now, entry, orjson.dumps(info), _ms(ttl)])
                 for user, entry, info, ttl in entries]
        if not calls:
            return []
        replies = await self._io(lambda c: self._eval_many(c, "PRESENCE_PUT", calls))
        return [int(r) for r in replies]

    async def presence_remove(self, user: str, entry: str) -> int:
        now = self._now_ms()
        keys = self._presence_keys(user)
        return int(await self._io(lambda c: self._script("PRESENCE_REMOVE", keys,
                                                         [now, entry])))

    async def presence_list(self, user: str) -> list[dict[str, Any]]:
        now = self._now_ms()
        keys = self._presence_keys(user)
        raw = await self._io(lambda c: self._script("PRESENCE_LIST", keys, [now]))
        return [orjson.loads(info) for info in raw if info is not None]

    # -- audience -------------------------------------------------------------------------
    # Per user, in the user's slot: {u:<uid>}:tags (set), :attrs (JSON), :seen (ms),
    # :prefs (the preferences document, JSON),
    # :eng:<category> (zset of "<event>\0<notification id>" scored by ms), :engall (the
    # same over every category, for engagement_times). Across users,
    # each in its own slot: {aud}:users (every known user, lex-ordered zset),
    # {tag:<tag>}:users (per tag, lex-ordered zset; a superset, see the contract) and
    # {seg}:defs (hash: segment name -> JSON). A selection reads each candidate with
    # one PROFILE script call (its keys share the user's slot), pipelined per page.

    def _known_key(self) -> str:
        return self._p + "{aud}:users"

    def _tag_key(self, tag: str) -> str:
        return self._p + "{tag:" + escape_tag(tag) + "}:users"

    async def user_tags(self, user: str) -> list[str]:
        raw = await self._io(lambda c: c.smembers(self._uk(user, ":tags")))
        return sorted(_text(t) for t in raw)

    async def _write_tags(self, user: str, add: list[str], remove: list[str], max_tags: int,
                          replace: bool) -> list[str]:
        """The user's script changes the tags; the per-tag indexes get the user
        before it (added tags) and lose it after it (removed tags, unless the
        user has the tag again by then), so they stay supersets. An added tag's
        index gets the user again after the script too: a removal racing this
        call (its script first, its index removal and check between our index
        write and our script) would otherwise leave the user, tagged, out of it."""
        removed = set(remove)
        added = [t for t in add if t not in removed]

        async def run(client: Any) -> list[str]:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self._known_key(), {user: 0})
            for t in added:
                pipe.zadd(self._tag_key(t), {user: 0})
            await pipe.execute()
            key = self._uk(user, ":tags")
            r = await self._script("TAGS", [key], [1 if replace else 0, max_tags, len(add),
                                                   *add, *remove])
            if r is None:
                raise BadRequest(f"tags: at most {max_tags} tags per user")
            old, new = {_text(t) for t in r[0]}, {_text(t) for t in r[1]}
            gone = sorted(old - new)
            kept = [t for t in added if t in new]
            if gone or kept:
                pipe = client.pipeline(transaction=False)
                for t in kept:
                    pipe.zadd(self._tag_key(t), {user: 0})
                for t in gone:
                    pipe.zrem(self._tag_key(t), user)
                await pipe.execute()
            if gone:
                again = await client.smismember(key, gone)
                back = [t for t, has in zip(gone, again, strict=True) if has]
                for t in back:  # re-added by a concurrent call meanwhile
                    await client.zadd(self._tag_key(t), {user: 0})
            return sorted(new)

        return await self._io(run)

    async def user_attributes(self, user: str) -> dict[str, Any]:
        raw = await self._io(lambda c: c.get(self._uk(user, ":attrs")))
        return {} if raw is None else dict(orjson.loads(raw))

    async def set_user_attributes(self, user: str, attributes: Mapping[str, Any]
                                  ) -> dict[str, Any]:
        attrs = check_attribute_values(attributes)

        async def run(client: Any) -> None:
            pipe = client.pipeline(transaction=False)  # both done before the call returns
            pipe.zadd(self._known_key(), {user: 0})
            pipe.set(self._uk(user, ":attrs"), orjson.dumps(attrs))
            await pipe.execute()

        await self._io(run)
        return attrs

    async def segment_put(self, name: str, definition: Mapping[str, Any]) -> bool:
        blob = orjson.dumps(dict(definition))
        key = self._p + "{seg}:defs"
        return bool(await self._io(lambda c: c.hset(key, name, blob)))

    async def segment_get(self, name: str) -> dict[str, Any] | None:
        raw = await self._io(lambda c: c.hget(self._p + "{seg}:defs", name))
        return None if raw is None else dict(orjson.loads(raw))

    async def segment_delete(self, name: str) -> bool:
        return bool(await self._io(lambda c: c.hdel(self._p + "{seg}:defs", name)))

    async def user_preferences(self, user: str) -> dict[str, Any]:
        raw = await self._io(lambda c: c.get(self._uk(user, ":prefs")))
        return {} if raw is None else dict(orjson.loads(raw))

    async def set_user_preferences(self, user: str, doc: Mapping[str, Any]
                                   ) -> dict[str, Any]:
        stored = dict(doc)
        key = self._uk(user, ":prefs")
        if stored:
            blob = orjson.dumps(stored)
            await self._io(lambda c: c.set(key, blob))
        else:
            await self._io(lambda c: c.delete(key))
        return stored

    async def preferences_many(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One pipeline of GETs, each in its user's slot: one round trip per node."""
        wanted = list(dict.fromkeys(users))
        if not wanted:
            return {}

        raw = await self._get_many([self._uk(u, ":prefs") for u in wanted])
        return {u: {} if r is None else dict(orjson.loads(r))
                for u, r in zip(wanted, raw, strict=True)}

    async def _get_many(self, keys: list[str]) -> list[Any]:
        """GET of keys in many slots: one MGET on one Redis; in a cluster one
        pipeline of GETs (a round trip per node)."""
        if not self._cluster:
            return await self._io(lambda c: c.mget(keys))

        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.get(k)
            return await pipe.execute()  # type: ignore[no-any-return]

        return await self._io(run)

    async def seen(self, user: str) -> None:
        await self.seen_many([user])

    async def seen_many(self, users: Sequence[str]) -> None:
        """One pipeline: the known-users index first, then each user's key."""
        now = self._now_ms()
        wanted = list(dict.fromkeys(users))

        async def run(client: Any) -> None:
            pipe = client.pipeline(transaction=False)
            pipe.zadd(self._known_key(), dict.fromkeys(wanted, 0))
            for user in wanted:
                pipe.set(self._uk(user, ":seen"), now)
            await pipe.execute()

        if wanted:
            await self._io(run)

    async def last_seen(self, user: str) -> float | None:
        raw = await self._io(lambda c: c.get(self._uk(user, ":seen")))
        return None if raw is None else int(raw) / 1000

    async def _engage(self, client: Any, user: str, category: str, event: str,
                      notification_id: str) -> bool:
        now = self._now_ms()
        key = self._uk(user, ":eng:" + category)
        pipe = client.pipeline(transaction=False)  # the user's key: in order
        pipe.zadd(self._known_key(), {user: 0})
        pipe.zremrangebyscore(key, "-inf", f"({now - _ms(ENGAGEMENT_KEEP)}")
        pipe.zadd(key, {event + "\0" + notification_id: now}, nx=True)
        pipe.pexpire(key, _ms(ENGAGEMENT_KEEP))
        every = self._uk(user, ":engall")  # every category: engagement_times reads it
        pipe.zremrangebyscore(every, "-inf", f"({now - _ms(ENGAGEMENT_KEEP)}")
        pipe.zadd(every, {event + "\0" + notification_id: now}, nx=True)
        pipe.pexpire(every, _ms(ENGAGEMENT_KEEP))
        r = await pipe.execute()
        return bool(r[2])

    async def engage(self, user: str, category: str, event: str, notification_id: str
                     ) -> bool:
        if event not in ENGAGEMENT_EVENTS:
            raise ValueError(f"unknown engagement event {event!r}")
        return await self._io(lambda c: self._engage(c, user, category, event,
                                                     notification_id))

    async def engagements(self, user: str, category: str, within: float) -> int:
        since = self._now_ms() - _ms(within)
        key = self._uk(user, ":eng:" + category)
        return int(await self._io(lambda c: c.zcount(key, since, "+inf")))

    async def _audience_candidates(self, tags: tuple[str, ...] | None, after: str | None,
                                   limit: int) -> list[str]:
        keys = [self._known_key()] if tags is None else [self._tag_key(t) for t in tags]
        start = "-" if not after else "(" + after

        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.zrangebylex(k, start, "+", start=0, num=limit)
            return await pipe.execute()  # type: ignore[no-any-return]

        # each key's first ``limit`` above ``after`` hold the union's first ``limit``
        merged = sorted({_text(u) for part in await self._io(run) for u in part})
        return merged[:limit]

    async def _audience_profiles(self, users: list[str], query: AudienceQuery
                                 ) -> list[Profile]:
        if not (query.attributes or query.active_within is not None or query.engaged
                is not None):
            if query.tags_all or query.tags_any or query.tags_none:
                return await self._tag_profiles(users, query)
            # nothing to test: the attributes only (the sender's read for content)
            raw = await self._get_many([self._uk(u, ":attrs") for u in users]) if users else []
            return [Profile(u, attributes={} if not a else orjson.loads(a))
                    for u, a in zip(users, raw, strict=True)]
        now = self._now_ms()
        eng = query.engaged
        since = 0 if eng is None else now - _ms(eng.within)
        calls = []
        for u in users:
            keys = [self._uk(u, ":tags"), self._uk(u, ":attrs"), self._uk(u, ":seen")]
            if eng is not None:
                keys.append(self._uk(u, ":eng:" + eng.category))
            calls.append((keys, [since]))
        raw = await self._io(lambda c: self._eval_many(c, "PROFILE", calls)) if users else []
        out = []
        for u, (tags, attrs, seen, engaged) in zip(users, raw, strict=True):
            out.append(Profile(u, frozenset(_text(t) for t in tags),
                               {} if not attrs else orjson.loads(attrs),
                               None if not seen else (now - int(seen)) / 1000,
                               int(engaged)))
        return out

    async def _tag_profiles(self, users: list[str], query: AudienceQuery) -> list[Profile]:
        """A query of tags only needs nothing but which of its tags each user has,
        so counting and paging a large tag audience is cheap: on one Redis, one
        TAG_HAS script for the whole page (its keys are the users' tag sets);
        in a cluster (the users' keys in many slots), one SMISMEMBER per user,
        pipelined (a round trip per node). Either replaces a PROFILE script per user."""
        tags = list(dict.fromkeys(query.tags_all + query.tags_any + query.tags_none))
        if not users:
            return []
        if self._cluster or len(tags) > _MASK_TAGS:
            async def run(client: Any) -> list[Any]:
                pipe = client.pipeline(transaction=False)
                for u in users:
                    pipe.smismember(self._uk(u, ":tags"), tags)
                return await pipe.execute()  # type: ignore[no-any-return]

            found = [frozenset(t for t, has in zip(tags, got, strict=True) if has)
                     for got in await self._io(run)]
        else:
            keys = [self._uk(u, ":tags") for u in users]
            calls = [(keys[i:i + _TAG_HAS_KEYS], list(tags))
                     for i in range(0, len(keys), _TAG_HAS_KEYS)]
            parts = await self._io(lambda c: self._eval_many(c, "TAG_HAS", calls))
            found = [frozenset(t for i, t in enumerate(tags) if int(m) >> i & 1)
                     for part in parts for m in part]
        return [Profile(u, has) for u, has in zip(users, found, strict=True)]

    def _select_shape(self, query: AudienceQuery) -> tuple[list[str], list[Any]] | None:
        """TAG_SELECT's keys and its ARGV from 4 for a query of tags only on one
        Redis; None for any other (the contract's way: profiles per page)."""
        tags = [*query.tags_all, *query.tags_any, *query.tags_none]
        if self._cluster or query.attributes or query.engaged is not None \
                or query.active_within is not None or len(tags) > _SELECT_TAGS:
            return None
        source = query.source_tags()
        keys = [self._known_key()] if source is None else [self._tag_key(t) for t in source]
        return keys, [self._p + "{u:", len(query.tags_all), len(query.tags_any),
                      len(query.tags_none), *tags]

    async def audience_page(self, query: AudienceQuery, *, cursor: str | None = None,
                            limit: int = 1000) -> AudiencePage:
        """A query of tags only, on one Redis: selected in Redis by TAG_SELECT (at
        most :data:`_SELECT_PAGE` candidates a call), the contract's page exactly
        (the same scan budget and cursor), without a profile per candidate on the
        node; any other query as the contract does."""
        shape = self._select_shape(query)
        if shape is None:
            return await super().audience_page(query, cursor=cursor, limit=limit)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        keys, rest = shape
        users: list[str] = []
        after: str = cursor or ""
        budget = SCAN_FACTOR * limit
        while True:
            size = min(budget, _SELECT_PAGE)
            _, last, got = await self._io(self._call(
                "TAG_SELECT", keys, [after, size, limit - len(users), *rest]))
            users += [_text(u) for u in got]
            if last is None:
                return AudiencePage(users, None)
            after = _text(last)
            budget -= size
            if len(users) == limit or budget <= 0:
                return AudiencePage(users, after)

    async def audience_count(self, query: AudienceQuery, *, page: int = 1000) -> int:
        """A query of tags only, on one Redis: counted in Redis by TAG_SELECT, a page
        of :data:`_SELECT_PAGE` candidates a call (a few ms of Redis each, so others
        are served between them), so counting 100,000 tagged users costs the node
        a few dozen round trips and next to no CPU (the answer to a send waits for
        it); any other query, or a cluster (the users' keys in many slots), as the
        contract does."""
        shape = self._select_shape(query)
        if shape is None:
            return await super().audience_count(query, page=page)
        keys, rest = shape
        count, after = 0, b""
        while True:
            n, last, _ = await self._io(self._call("TAG_SELECT", keys,
                                                   [after, _SELECT_PAGE, 0, *rest]))
            count += int(n)
            if last is None:
                return count
            after = last

    # -- notification jobs ----------------------------------------------------------------
    # Jobs in one slot ({jobs}: the job hashes, the due and lease zsets, the status
    # indexes and the idempotency keys), so a status change is one script. Per user,
    # in the user's slot: {u:<uid>}:nt (hash: notification -> target state) and
    # {u:<uid>}:push:<category> (zset: notification by live-push time). The due queue
    # in DUE_BUCKETS slots {dq:<n>} by user (see redis_lua.DUE_PUT).

    def _jk(self, suffix: str) -> str:
        return self._p + "{jobs}:" + suffix

    def _job_keys(self, *statuses: str) -> list[str]:
        return [self._jk("st:" + s) for s in statuses]

    @staticmethod
    def _hash(raw: Mapping[Any, Any] | Sequence[Any]) -> dict[str, Any]:
        """A hash as redis-py gives it (a mapping) or a script does (a flat list)."""
        if isinstance(raw, Mapping):
            return {_text(k): v for k, v in raw.items()}
        return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}

    @classmethod
    def _job(cls, raw: Mapping[Any, Any] | Sequence[Any]) -> Job:
        """A job from its hash."""
        h = cls._hash(raw)

        def num(name: str) -> float | None:
            v = h.get(name)
            return None if v is None or v in (b"", "") else float(v)

        outcomes = {k[2:]: int(v) for k, v in h.items() if k.startswith("o:") and int(v)}
        status: Any = _text(h["status"])
        return Job(_text(h["id"]), status, _text(h["category"]), orjson.loads(h["request"]),
                   int(h["targets"]), float(h["created"]), float(h["due"]), num("expires"),
                   None if "cursor" not in h else _text(h["cursor"]), outcomes,
                   None if "owner" not in h else _text(h["owner"]), num("until"))

    async def job_create(self, job: NewJob, *, idempotency_key: str | None = None,
                         owner: str | None = None, lease: float = 0.0) -> tuple[Job, bool]:
        now = self._clock()
        key = self._jk("j:" + job.id)
        idem = key if idempotency_key is None else self._jk("k:" + idempotency_key)
        args = [job.id, job.category, orjson.dumps(job.request), job.targets, repr(now),
                repr(float(job.due)), "" if job.expires_at is None else repr(job.expires_at),
                0 if idempotency_key is None else 1, _ms(self._idempotency_ttl), owner or "",
                repr(now + lease)]
        keys = [key, self._jk("due"), self._jk("lease"),
                *self._job_keys("scheduled", "sending"), idem, self._jk("seq")]

        async def run(client: Any) -> tuple[Job, bool]:
            duplicate, jid = await self._script("JOB_CREATE", keys, args)
            return self._job(await client.hgetall(self._jk("j:" + _text(jid)))), bool(duplicate)

        made, duplicate = await self._io(run)
        # the stats row (another slot): after the job, and again by a retry
        await self._note(made.id, made.category, made.targets, int(made.created * 1000))
        return made, duplicate

    async def job_get(self, job_id: str) -> Job | None:
        raw = await self._io(lambda c: c.hgetall(self._jk("j:" + job_id)))
        return self._job(raw) if raw else None

    async def jobs(self, status: JobStatus, *, cursor: str | None = None, limit: int = 100
                   ) -> JobPage:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        after = cursor if is_cursor(cursor) else "0"  # not one of ours: from the start
        args = [self._jk("j:"), after, limit]
        raw = await self._io(self._call("JOBS_PAGE", self._job_keys(status), args))
        found = raw[:limit]
        nxt = _text(self._hash(found[-1])["seq"]) if len(raw) > limit and found else None
        return JobPage([self._job(h) for h in found], nxt)

    async def job_cancel(self, job_id: str) -> Job | None:
        """The job's status first (its slot), then its due entries (their buckets):
        a retry of a cancel that failed between the two finishes it."""
        keys = [self._jk("j:" + job_id), self._jk("due"), self._jk("lease"),
                *self._job_keys("scheduled", "sending", "sent", "cancelled")]
        status = await self._io(self._call("JOB_CANCEL", keys, [job_id, 0]))
        if status is None:
            return None
        if _text(status) == "sent" and await self._has_due_entries(job_id):
            status = await self._io(self._call("JOB_CANCEL", keys, [job_id, 1]))
        if _text(status) == "cancelled":
            calls = [(self._due_queue_keys(b), [self._dq(b) + ":j:", job_id])
                     for b in range(DUE_BUCKETS)]
            await self._io(lambda c: self._eval_many(c, "DUE_CANCEL", calls))
        return await self.job_get(job_id)

    async def _has_due_entries(self, job_id: str) -> bool:
        """Whether any bucket holds an entry of the notification (held or waiting users)."""
        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for b in range(DUE_BUCKETS):
                pipe.exists(self._dq(b) + ":j:" + job_id)
            return await pipe.execute()  # type: ignore[no-any-return]

        return any(await self._io(run))

    async def job_claim(self, owner: str, *, lease: float, limit: int = 1) -> list[Job]:
        now = self._clock()
        keys = [self._jk("due"), self._jk("lease"), *self._job_keys("scheduled", "sending")]
        args = [self._jk("j:"), repr(now), owner, repr(now + lease), limit]
        raw = await self._io(lambda c: self._script("JOB_CLAIM", keys, args))
        return [self._job(h) for h in raw]

    async def job_progress(self, job_id: str, owner: str, cursor: str | None, *,
                           lease: float) -> bool:
        now = self._clock()
        args = [job_id, repr(now), owner, 0 if cursor is None else 1, cursor or "",
                repr(now + lease)]
        keys = [self._jk("j:" + job_id), self._jk("lease")]
        return bool(await self._io(lambda c: self._script("JOB_PROGRESS", keys, args)))

    async def job_requeue(self, job_id: str, owner: str, request: dict[str, Any], *,
                          due: float) -> bool:
        now = self._clock()
        keys = [self._jk("j:" + job_id), self._jk("due"), self._jk("lease"),
                *self._job_keys("scheduled", "sending")]
        args = [job_id, repr(now), owner, orjson.dumps(request), repr(float(due))]
        return bool(await self._io(lambda c: self._script("JOB_REQUEUE", keys, args)))

    async def job_finish(self, job_id: str, owner: str) -> bool:
        now = self._clock()
        keys = [self._jk("j:" + job_id), self._jk("lease"), *self._job_keys("sending", "sent")]
        return bool(await self._io(lambda c: self._script("JOB_FINISH", keys,
                                                          [job_id, repr(now), owner])))

    def _dq(self, bucket: int) -> str:
        return self._p + "{dq:" + str(bucket) + "}"

    def _due_queue_keys(self, bucket: int) -> list[str]:
        tag = self._dq(bucket)
        return [tag + ":q", tag + ":due", tag + ":x"]

    @staticmethod
    def _bucket(user: str) -> int:
        return zlib.crc32(user.encode()) % DUE_BUCKETS

    async def deliver(self, notification_id: str, deliveries: Sequence[Delivery], *,
                      category: str, expires_at: float | None, collapse_key: str | None,
                      policy: PolicyFor, due: bool = False) -> DeliverResult:
        """One DELIVER script per user (the target record, the inbox write, the push
        record: atomic per user), in pipelines of ``_BATCH``; then, for the users of
        the batches that succeeded, their due-queue entries and the job's counts (a
        failed batch raises ``Unavailable`` after those: see the module doc)."""
        now_s = self._clock()
        now = int(now_s * 1000)
        nid = notification_id
        expires = -1 if expires_at is None else int(expires_at * 1000)
        todo = list(deliveries)

        own = b"".join(msgpack.packb(v) for v in (
            nid, 1 if due else 0, expires, collapse_key or False, self._max_inbox, PRUNE_STEP,
            now_s, PUSH_KEEP))
        rendered: dict[int, tuple[bytes, bytes]] = {}  # fields shared by users: once
        variants = await self._note_variants(nid, todo, due)

        def render(shared: dict[str, Any]) -> tuple[bytes, bytes]:
            known = rendered.get(id(shared))
            if known is None:
                fields = {**shared, "id": nid, "ts": now}
                fields_json = orjson.dumps(fields)
                base = {k: v for k, v in fields.items() if k not in _NOT_JSON_KEYS}
                known = (fields_json, b"" if len(base) == len(fields) else orjson.dumps(base))
                rendered[id(shared)] = known
            return known

        def parts(d: Delivery) -> tuple[str, list[str], bytes, bytes]:
            """The user's stream, its DELIVER keys 1-19, flags and extra push members."""
            live = d.edges is None or bool(d.edges)
            # silent: the item is named by an event on the user's events stream
            stream = notifications_topic(d.user) if live else events_topic(d.user)
            uk = self._p + user_tag(d.user)
            keys = [*self._inbox_keys(d.user, stream)[:16], uk + ":nt",
                    uk + ":push:" + category, uk + ":nv"]
            flags = (b"w" if d.fields is not None else b"") + (b"l" if live else b"s")
            extra = b"" if not d.edges else b',"edges":' + orjson.dumps(list(d.edges))
            return stream, keys, flags, extra

        def call(d: Delivery) -> tuple[list[str], list[Any]]:
            stream, keys, flags, extra = parts(d)
            if not self._cluster:
                keys.append(self._p + "{r}:users")
            fields_json, push_base = (b"", b"") if d.fields is None else render(d.fields)
            return keys, [*self._inbox_args(d.user, stream, now, policy), own, d.state, flags,
                          fields_json, push_base, extra, variants.get(d.user, "")]

        def call_many(chunk: list[Delivery]) -> tuple[list[bytes], list[Any]]:
            """One DELIVER_MANY for the chunk: what the users share travels once."""
            keys: list[bytes] = []
            texts: list[bytes] = []
            at: dict[int, int] = {}  # id of shared fields -> index in texts (from 1)
            users = []
            mode = self._mode
            for d in chunk:
                stream, own_keys, flags, extra = parts(d)
                keys += [k.encode() for k in own_keys]  # bytes: redis-py's quickest path
                unread = unread_topic(d.user)
                p = policy(stream)
                fi = 0
                if d.fields is not None:
                    fi = at.get(id(d.fields), 0)
                    if not fi:
                        fi = at[id(d.fields)] = len(texts) + 1
                        texts += render(d.fields)
                users.append([self._topic_epoch(stream), p.size, _ms(p.ttl),
                              wire_head(stream) if mode else b"", self._topic_epoch(unread),
                              wire_head(unread) if mode else b"", unread, d.user, d.state,
                              flags, fi, extra, variants.get(d.user, "")])
            keys.append((self._p + "{r}:users").encode())
            # raw, not bin: Redis's cmsgpack reads no bin types
            shared = b"".join(msgpack.packb(v, use_bin_type=False) for v in (
                now, mode, wire_tail(PayloadKind.JSON) if mode else b"")) + own
            return keys, [shared, msgpack.packb(texts, use_bin_type=False),
                          msgpack.packb(users, use_bin_type=False)]

        async def batch(chunk: list[Delivery]) -> list[Any]:
            async def run(client: Any) -> list[Any]:
                # made here: topic epochs need the store epoch _io ensured
                if not self._cluster:
                    return list((await self._eval_many(client, "DELIVER_MANY",
                                                       [call_many(chunk)]))[0])
                await self._register_users(client, [d.user for d in chunk])
                return await self._eval_many(client, "DELIVER", [call(d) for d in chunk])

            return await self._io(run)

        chunks = [todo[i:i + _BATCH] for i in range(0, len(todo), _BATCH)]
        results = await _staggered(batch(c) for c in chunks)
        changes: list[UserChange] = []
        recorded: list[str] = []
        counts: dict[str, int] = {}
        by_variant: dict[str, int] = {}  # variant \0 state -> users
        puts: dict[int, list[Any]] = {}
        done: dict[int, list[str]] = {}
        expiring: list[str] = []
        failure: BaseException | None = None
        for chunk, r in zip(chunks, results, strict=True):
            if isinstance(r, BaseException):
                failure = failure or r
                continue
            for d, raw in zip(chunk, r, strict=True):
                wrote, prev = int(raw[0]), _text(raw[1])
                b = self._bucket(d.user)
                if wrote:
                    recorded.append(d.user)
                    counts[d.state] = counts.get(d.state, 0) + 1
                    if prev:
                        counts[prev] = counts.get(prev, 0) - 1
                    variant = variants.get(d.user)
                    if variant is not None:
                        for state, n in ((d.state, 1), (prev, -1)):
                            if state:
                                k = variant + "\0" + state
                                by_variant[k] = by_variant.get(k, 0) + n
                    if len(raw) > 2:
                        live = d.edges is None or bool(d.edges)
                        stream = notifications_topic(d.user) if live else events_topic(d.user)
                        changes.append(self._change(d.user, stream, now, raw[2:], [nid]))
                        if expires >= 0:
                            expiring.append(d.user)
                if d.due_at is not None and (wrote or prev in _WAITING):
                    # a skipped user still waiting: put back only an entry that is gone
                    puts.setdefault(b, []).extend(
                        [nid, d.user, repr(float(d.due_at)), 0 if wrote else 1])
                elif due:  # fired: the entry goes (its user's, or one served meanwhile)
                    done.setdefault(b, []).append(d.user)
        await self._after_deliver(nid, counts, puts, done, expiring, expires)
        deltas = [v for k, n in by_variant.items() if n for v in (k, n)]
        if deltas:
            await self._io(self._call("VARIANT_COUNT", [self._note_key(nid, ":v")], deltas))
        if failure is not None:
            raise failure
        return DeliverResult(changes, recorded)

    async def _note_variants(self, nid: str, deliveries: Sequence[Delivery], due: bool
                             ) -> dict[str, str]:
        """The variant each user of a chunk has (the first recorded; see the module
        doc), recorded in the notification's slot first. A firing reads them even
        when its deliveries name none; a chunk without variants costs nothing."""
        if not due and all(d.variant is None for d in deliveries):
            return {}
        args = [v for d in deliveries for v in (d.user, d.variant or "")]
        raw = await self._io(self._call("VARIANT_NOTE", [self._note_key(nid, ":uv")], args))
        return {d.user: _text(v) for d, v in zip(deliveries, raw, strict=True) if v}

    async def _after_deliver(self, nid: str, counts: dict[str, int],
                             puts: dict[int, list[Any]], done: dict[int, list[str]],
                             expiring: list[str], expires: int) -> None:
        """Due-queue entries added (after the target records that need them) and
        removed (fired), the inbox expiry index, and the job's counts."""
        calls = [(self._due_queue_keys(b)[:3], [self._dq(b) + ":j:", *args])
                 for b, args in puts.items()]
        drops = [(self._due_queue_keys(b)[:2],
                  [self._dq(b) + ":j:", *(v for u in users for v in (nid, u))])
                 for b, users in done.items()]
        deltas = [v for state, n in counts.items() if n for v in ("o:" + state, n)]

        async def run(client: Any) -> None:
            if calls:
                await self._eval_many(client, "DUE_PUT", calls)
            if drops:
                await self._eval_many(client, "DUE_DONE", drops)
            if expiring:  # after the items exist: see DUE_ADD
                await self._script("DUE_ADD", self._due_keys(), [expires, *expiring])
            if deltas:
                await self._script("JOB_COUNT", [self._jk("j:" + nid)], deltas)

        if calls or drops or expiring or deltas:
            await self._io(run)

    async def due_claim(self, owner: str, *, lease: float, limit: int) -> list[DueEntry]:
        """Bucket by bucket (from a random one, so nodes start apart) until ``limit``."""
        now = self._clock()
        start = secrets.randbelow(DUE_BUCKETS)
        out: list[DueEntry] = []
        for i in range(DUE_BUCKETS):
            if len(out) >= limit:
                break
            b = (start + i) % DUE_BUCKETS
            args = [self._dq(b) + ":j:", repr(now), repr(now + lease), limit - len(out)]
            raw = await self._io(self._call("DUE_CLAIM", self._due_queue_keys(b), args))
            for j in range(0, len(raw), 2):
                nid, _, user = _text(raw[j]).partition("\0")
                out.append(DueEntry(nid, user, float(raw[j + 1])))
        out.sort(key=lambda e: e.due)
        return out

    async def _times(self, users: Sequence[str], suffix: str, since: str, unit: float
                     ) -> Mapping[str, list[float]]:
        """Each user's scores above ``since`` in ``{u:<uid>}<suffix>`` (divided by
        ``unit``), oldest first: one pipeline for the chunk (a round trip per node)."""
        wanted = list(dict.fromkeys(users))

        async def run(client: Any) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for u in wanted:
                pipe.zrangebyscore(self._uk(u, suffix), "(" + since, "+inf", withscores=True)
            return await pipe.execute()  # type: ignore[no-any-return]

        raw = await self._io(run) if wanted else []
        return {u: [float(s) / unit for _, s in got]
                for u, got in zip(wanted, raw, strict=True) if got}

    async def recent_pushes(self, users: Sequence[str], category: str, since: float
                            ) -> Mapping[str, list[float]]:
        return await self._times(users, ":push:" + category, repr(since), 1.0)

    async def engagement_times(self, users: Sequence[str], since: float
                               ) -> Mapping[str, list[float]]:
        return await self._times(users, ":engall", str(int(since * 1000)), 1000.0)
