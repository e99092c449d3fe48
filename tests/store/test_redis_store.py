"""What the Redis store does beyond the shared contracts (``test_*_contract.py``).

Against real ``redis-server`` processes (``redis_servers.py``), one Redis and a
3-master Redis Cluster:

* the scripts put every publication they store on the topic's channel
  (PUBLISH / SPUBLISH, in the bus's wire encoding), or nothing with
  ``announce=False``;
* names that need escaping inside a hash tag stay apart and work;
* retained messages are found by wildcard filters across topics in many
  slots, users' topics included, and cleared ones leave the index;
* failures: Redis stopped, killed or hanging makes calls raise
  ``Unavailable`` within the store's bound; when Redis comes back (same port,
  ``appendfsync always``) the store works again and every acknowledged
  publish is still there, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from conftest import WAIT, start_node, stop_node
from support.audience import everyone
from support.redis_servers import RedisClusterProcs, RedisFactory, RedisServer
from support.stores import Clock
from tidings.app import _make_store
from tidings.audience import parse_audience
from tidings.errors import Unavailable
from tidings.protocol.mqtt.properties import PROPERTIES_MAP, Properties
from tidings.redis_wire import channel_for, decode_publication, encode_publication
from tidings.store import redis as redis_store
from tidings.store.base import HistoryPolicy, events_topic, notifications_topic, unread_topic
from tidings.store.redis import RETAINED_GRACE, RedisStore
from tidings.types import PayloadKind, Publication, parse_offset

pytest_plugins = ["support.redis_servers"]

KEEP = HistoryPolicy(1000, 3600.0)
BOUND = 1.0  # the store's timeout in these tests
SLACK = 1.0  # scheduling slack on top of it on a busy 2-core machine


def policy(topic: str) -> HistoryPolicy:
    return KEEP


Target = RedisServer | RedisClusterProcs


@pytest.fixture(params=["redis", "redis-cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    server: Target = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    server.flushall()
    return server


@pytest.fixture
async def store(target: Target, clock: Clock) -> AsyncIterator[RedisStore]:
    """A RedisStore with a short bound (overrides the contracts' ``store`` here)."""
    s = RedisStore(target.url, clock=clock, timeout=BOUND)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def listen(target: Target, *topics: str) -> tuple[aioredis.Redis, PubSub]:
    """A subscriber to the topics' channels (sharded on a cluster, on the owning master)."""
    channels = [channel_for(t) for t in topics]
    if isinstance(target, RedisClusterProcs):
        server = target.server_for(channels[0])
        assert all(target.server_for(c) is server for c in channels)
        client = aioredis.Redis(host="127.0.0.1", port=server.port)
        pubsub = client.pubsub()
        await pubsub.ssubscribe(*channels)
    else:
        client = aioredis.Redis(host="127.0.0.1", port=target.port)
        pubsub = client.pubsub()
        await pubsub.subscribe(*channels)
    return client, pubsub


async def received(pubsub: PubSub) -> bytes:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if m is not None and m["type"] in ("message", "smessage"):
            data: bytes = m["data"]
            return data
    raise AssertionError("no message on the channel")


def same(a: Publication, b: Publication) -> bool:
    return (a.topic, a.offset, a.payload, a.kind, a.ts) == (b.topic, b.offset, b.payload,
                                                             b.kind, b.ts)


# -- announcements ----------------------------------------------------------------------


async def test_publish_announces_the_stored_publication(target: Target,
                                                        store: RedisStore) -> None:
    assert store.announces is True
    client, pubsub = await listen(target, "home/kitchen/temp")
    try:
        r = await store.publish("home/kitchen/temp", b"\x00\xff", PayloadKind.BINARY,
                                retain=True, policy=KEEP, qos=0, origin="sensor-1")
        data = await received(pubsub)
    finally:
        await pubsub.aclose()
        await client.aclose()
    expected = Publication("home/kitchen/temp", r.publication.offset, b"\x00\xff",
                           PayloadKind.BINARY, r.publication.ts, qos=0,
                           published_retain=True, origin="sensor-1")
    assert data == encode_publication(expected)  # Lua and Python write the same bytes
    assert decode_publication(data) == expected


async def test_mqtt_properties_ride_with_the_announcement_through_the_meta_codec(
        target: Target, clock: Clock) -> None:
    # the Lua scripts append the tail Python encoded: the same bytes as the bus writes
    props = Properties(content_type="text/plain", user_properties=(("k", "v"),))
    store = RedisStore(target.url, clock=clock, timeout=BOUND, meta_codec=PROPERTIES_MAP)
    await store.open()
    client, pubsub = await listen(target, "home/kitchen/temp")
    try:
        r = await store.publish("home/kitchen/temp", b"21", PayloadKind.JSON, retain=False,
                                policy=KEEP, qos=1, origin="sensor-1", meta=props)
        data = await received(pubsub)
    finally:
        await pubsub.aclose()
        await client.aclose()
        await store.close()
    expected = replace(r.publication, qos=1, origin="sensor-1", meta=props)
    assert data == encode_publication(expected, PROPERTIES_MAP)
    assert decode_publication(data, PROPERTIES_MAP).meta == props


async def test_announce_false_puts_nothing_on_the_channel(target: Target, store: RedisStore,
                                                          clock: Clock) -> None:
    quiet = RedisStore(target.url, clock=clock, announce=False)
    await quiet.open()
    client, pubsub = await listen(target, "t")
    try:
        assert quiet.announces is False
        first = await quiet.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP)
        second = await store.publish("t", b"2", PayloadKind.JSON, retain=False, policy=KEEP)
        got = decode_publication(await received(pubsub))
    finally:
        await pubsub.aclose()
        await client.aclose()
        await quiet.close()
    assert got.offset == second.publication.offset != first.publication.offset


async def test_notify_and_mark_announce_the_users_publications(target: Target,
                                                               store: RedisStore) -> None:
    client, pubsub = await listen(target, notifications_topic("alice"), unread_topic("alice"),
                                  "users/alice/events")
    try:
        r = await store.notify(["alice"], {"id": "n_1", "title": "hi", "category": "c"},
                               ttl=None, collapse_key=None, policy=policy)
        sent = r.changes[0].publications
        got = [decode_publication(await received(pubsub)) for _ in sent]
        change = await store.mark("alice", "read", ["n_1"], device="phone", policy=policy)
        got += [decode_publication(await received(pubsub)) for _ in change.publications]
    finally:
        await pubsub.aclose()
        await client.aclose()
    expected = sent + change.publications
    assert [p.topic for p in expected] == [notifications_topic("alice"), unread_topic("alice"),
                                           "users/alice/events", unread_topic("alice")]
    assert all(same(a, b) for a, b in zip(got, expected, strict=True))


async def test_scripts_are_loaded_again_when_redis_forgot_them(target: Target,
                                                                store: RedisStore) -> None:
    """A restarted Redis has an empty script cache: single calls and pipelines reload."""
    servers = target.servers if isinstance(target, RedisClusterProcs) else [target]
    await store.notify(["alice"], {"id": "n_0", "category": "c"}, ttl=None,
                       collapse_key=None, policy=policy)
    for server in servers:
        with server.client() as c:
            c.script_flush()
    users = [f"u{i}" for i in range(250)]  # several pipelines, every master
    r = await store.notify(users, {"id": "n_1", "category": "c"}, ttl=None,
                           collapse_key=None, policy=policy)
    assert [c.user for c in r.changes] == users and all(c.unread == 1 for c in r.changes)
    for server in servers:
        with server.client() as c:
            c.script_flush()
    change = await store.mark("u7", "read", None, device="d", policy=policy)
    assert change.changed == ["n_1"] and change.unread == 0
    assert await store.unread("u8") == 1


# -- names ------------------------------------------------------------------------------


async def test_names_that_need_escaping_stay_apart(store: RedisStore) -> None:
    users = ["a", "a}b", "a%7Db", "{u:a}"]
    for user in users:
        await store.notify([user], {"id": f"n_{user}", "category": "c"}, ttl=None,
                           collapse_key=None, policy=policy)
    for user in users:
        page = await store.inbox(user, limit=10)
        assert [i.fields["id"] for i in page.items] == [f"n_{user}"] and page.unread == 1
        assert [p.topic for p in await store.retained(f"users/{user}/#")] == [
            unread_topic(user)]
    topics = ["x}", "x%7D", "x", "{t:x}"]
    for i, t in enumerate(topics):
        await store.publish(t, b"%d" % i, PayloadKind.JSON, retain=True, policy=KEEP)
    for i, t in enumerate(topics):
        history = await store.history(t, None, 10)
        assert [p.payload for p in history.items] == [b"%d" % i]
        assert [p.payload for p in await store.retained(t)] == [b"%d" % i]
    assert {p.topic for p in await store.retained("#")} >= set(topics)


# -- retained index -----------------------------------------------------------------------


async def test_retained_wildcards_reach_users_topics(store: RedisStore) -> None:
    for user in ("alice", "bob"):
        await store.notify([user], {"id": f"n_{user}", "category": "c"}, ttl=None,
                           collapse_key=None, policy=policy)
    await store.publish("users/alice/state", b'"away"', PayloadKind.JSON, retain=True,
                        policy=KEEP)
    await store.publish("home/lamp", b"1", PayloadKind.JSON, retain=True, policy=KEEP)

    async def found(flt: str) -> set[str]:
        return {p.topic for p in await store.retained(flt)}

    assert await found("users/+/unread") == {"users/alice/unread", "users/bob/unread"}
    assert await found("users/alice/#") == {"users/alice/unread", "users/alice/state"}
    assert await found("+/bob/+") == {"users/bob/unread"}
    assert await found("#") == {"users/alice/unread", "users/bob/unread",
                                "users/alice/state", "home/lamp"}
    counts = [p.data() for p in await store.retained("users/alice/unread")]
    assert counts == [{"count": 1}]


async def test_a_cleared_retained_topic_leaves_the_index(target: Target, store: RedisStore,
                                                         clock: Clock) -> None:
    await store.publish("a/b", b"1", PayloadKind.JSON, retain=True, policy=KEEP)
    await store.publish("a/b", b"", PayloadKind.JSON, retain=True, policy=KEEP)
    assert await store.retained("a/#") == []
    index = "tidings:{r:a}:topics"
    if isinstance(target, RedisClusterProcs):
        # The cluster's index is a superset: the entry goes once the grace has passed.
        clock.now += RETAINED_GRACE + 1
        assert await store.retained("a/#") == []
        owner = target.server_for(index)
    else:
        owner = target
    with owner.client() as c:
        assert c.zrange(index, 0, -1) == []
    await store.publish("a/b", b"2", PayloadKind.JSON, retain=True, policy=KEEP)
    assert [p.payload for p in await store.retained("a/+")] == [b"2"]


# -- audience count -----------------------------------------------------------------------


async def test_a_tags_only_selection_is_exact_across_pages(
        target: Target, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tags-only count and pages (on one Redis, selected in Redis, at most 3
    candidates a call here) select what each user's own tags say: across calls
    and pages, for users whose ids need escaping in key names, and past index
    entries the user's tags no longer back (what a writer stopped between the
    index and the tags leaves behind: each candidate is tested, the index is not
    trusted). A page still scans at most 10 candidates per user it may hold. A
    cluster selects the contract's way: the same answers."""
    monkeypatch.setattr(redis_store, "_SELECT_PAGE", 3)
    tags = {"u0": {"x"}, "u1": {"x", "y"}, "u2": {"y"}, "u3": {"x", "z"}, "u4": {"z"},
            "a}b": {"x", "y"}, "a%7Db": {"x"}, "a%b": {"y", "z"}, "{u:u0}": {"x"},
            "u5": {"w"}, "u6": {"x", "y", "z"}, "u7": {"x"}}
    for user, has in tags.items():
        await store.set_user_tags(user, sorted(has), max_tags=10)
    client = aioredis.Redis.from_url(target.url) if isinstance(target, RedisServer) else None
    if client is not None:  # stale entries: in x's index, x not among their tags
        try:
            await client.zadd(store._tag_key("x"), {"u2": 0, "a%b": 0, "ghost": 0})
        finally:
            await client.aclose()
    cases: list[tuple[dict[str, Any], Callable[[set[str]], bool]]] = [
        ({"tags": ["x"]}, lambda t: "x" in t),
        ({"tags": ["x", "z"]}, lambda t: bool(t & {"x", "z"})),
        ({"tags": {"all": ["x", "y"]}}, lambda t: {"x", "y"} <= t),
        ({"tags": {"any": ["x", "y"], "none": ["z"]}},
         lambda t: bool(t & {"x", "y"}) and "z" not in t),
        ({"tags": {"all": ["x"], "any": ["y", "z"], "none": ["w"]}},
         lambda t: "x" in t and bool(t & {"y", "z"})),
        ({"tags": {"none": ["x"]}}, lambda t: "x" not in t),
        ({"tags": {"all": ["x"], "none": ["x"]}}, lambda t: False),
        ({"tags": ["nobody-has-this"]}, lambda t: False),
        ({}, lambda t: True),  # every known user
    ]
    for audience, rule in cases:
        want = sorted(u for u, has in tags.items() if rule(has))
        query = parse_audience(audience)
        assert await store.audience_count(query) == len(want), audience
        for limit in (1, 2, 5):
            assert await everyone(store, query, limit) == want, (audience, limit)
    # nobody matches: a page scans its budget (10 x 1 candidates), empty, and moves on
    page = await store.audience_page(parse_audience({"tags": {"none": ["x", "y", "z", "w"]}}),
                                     limit=1)
    assert page.users == [] and page.next == sorted(tags)[9]


async def test_a_tag_added_while_a_removal_races_it_stays_selectable(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving that lost a tagged user from the tag's index: the
    removal's script runs, then the add writes the index entry, then the
    removal takes the entry out and checks the tags (not back yet), then the
    add's script puts the tag back. The calls are real; only their order is
    forced (each script call waits for the step before it)."""
    await store.set_user_tags("u", ["t"], max_tags=10)
    removed, indexed, checked = asyncio.Event(), asyncio.Event(), asyncio.Event()
    script = store._script

    def ordered(name: str, keys: Sequence[str], args: Sequence[Any]) -> Awaitable[Any]:
        async def run() -> Any:
            if name == "TAGS" and args[2] == 0:  # the removal's script: first
                result = await script(name, keys, args)
                removed.set()
                await indexed.wait()  # its index removal and check after the add's entry
                return result
            if name == "TAGS":  # the add's script: last
                indexed.set()
                await checked.wait()
            return await script(name, keys, args)
        return run()

    monkeypatch.setattr(store, "_script", ordered)

    async def add() -> None:
        await removed.wait()
        await store.change_user_tags("u", ["t"], [], max_tags=10)

    async def remove() -> None:
        await store.change_user_tags("u", [], ["t"], max_tags=10)
        checked.set()

    await asyncio.wait_for(asyncio.gather(remove(), add()), WAIT)
    assert await store.user_tags("u") == ["t"]
    query = parse_audience({"tags": ["t"]})
    assert (await store.audience_page(query, limit=10)).users == ["u"]
    assert await store.audience_count(query) == 1


# -- presence ---------------------------------------------------------------------------


async def test_redis_shares_presence(store: RedisStore) -> None:
    """Redis keeps every node's device entries (tested in ``test_presence_contract.py``)."""
    assert store.shared_presence is True


# -- failures -----------------------------------------------------------------------------


async def publish_raises_within_the_bound(store: RedisStore, topic: str) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await store.publish(topic, b'"lost?"', PayloadKind.JSON, retain=False, policy=KEEP)
    assert time.monotonic() - started < BOUND + SLACK


async def eventually_publishes(store: RedisStore, topic: str, data: bytes) -> str:
    """Publish as soon as Redis serves the topic again (a cluster client learns that a
    master came back through one failed call on the connection it had)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            r = await store.publish(topic, data, PayloadKind.JSON, retain=False, policy=KEEP)
            return str(r.publication.offset)
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def assert_kept(store: RedisStore, topic: str, acked: dict[str, bytes]) -> None:
    """Every acknowledged publish is in history with its payload, in offset order."""
    page = await store.history(topic, None, 1000)
    kept: dict[str, bytes] = {p.offset: p.payload for p in page.items}
    assert {o: kept.get(o) for o in acked} == acked
    seqs = [p.seq for p in page.items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    epochs = {parse_offset(o)[0] for o in acked}  # type: ignore[index]
    assert len(epochs) == 1  # the topic kept its epoch across the restart


async def test_redis_stopped_then_restarted(redis_factory: RedisFactory, clock: Clock) -> None:
    server = redis_factory.server(appendonly=True, appendfsync="always")
    store = RedisStore(server.url, clock=clock, timeout=BOUND)
    await store.open()
    try:
        acked: dict[str, bytes] = {}
        for i in range(5):
            r = await store.publish("t", b"%d" % i, PayloadKind.JSON, retain=False,
                                    policy=KEEP)
            acked[r.publication.offset] = b"%d" % i
        server.kill()  # SIGKILL: only what was fsynced survives
        await publish_raises_within_the_bound(store, "t")
        assert await store.ping() is False
        with pytest.raises(Unavailable):
            await store.history("t", None, 10)
        server.start()  # same port, same folder: the AOF is replayed
        # the first call after the restart already works (no stale pooled connection)
        r = await store.publish("t", b'"after"', PayloadKind.JSON, retain=False, policy=KEEP)
        acked[r.publication.offset] = b'"after"'
        assert await store.ping() is True
        await assert_kept(store, "t", acked)
    finally:
        await store.close()


async def test_a_store_opened_before_redis_is_up(redis_factory: RedisFactory,
                                                 clock: Clock) -> None:
    """A node that starts while Redis is down works once it is up, in the same epochs
    as the other nodes (a client's start offset from another node stays valid)."""
    server = redis_factory.server(appendonly=True, appendfsync="always")
    other = RedisStore(server.url, clock=clock, timeout=BOUND)
    await other.open()
    await other.notify(["alice"], {"id": "n_1", "category": "c"}, ttl=None,
                       collapse_key=None, policy=policy)
    events = events_topic("alice")
    start = await other.latest(events)
    server.stop()
    late = RedisStore(server.url, clock=clock, timeout=BOUND)
    await late.open()  # does not raise: calls fail until Redis is up
    try:
        await publish_raises_within_the_bound(late, "t")
        server.start()
        change = await late.mark("alice", "read", None, device="d", policy=policy)
        event = next(p for p in change.publications if p.topic == events)
        assert parse_offset(event.offset) == (parse_offset(start)[0], 1)  # type: ignore[index]
        assert (await other.history(events, start, 10)).complete is True
    finally:
        await late.close()
        await other.close()


async def test_redis_hanging_is_bounded(redis_factory: RedisFactory, clock: Clock) -> None:
    server = redis_factory.server()
    store = RedisStore(server.url, clock=clock, timeout=BOUND)
    await store.open()
    try:
        await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP)
        server.pause()  # SIGSTOP: connections stay open, nothing answers
        try:
            await publish_raises_within_the_bound(store, "t")
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await store.notify(["alice"], {"id": "n_1", "category": "c"}, ttl=None,
                                   collapse_key=None, policy=policy)
            assert time.monotonic() - started < BOUND * 2 + SLACK
            assert await store.ping() is False
        finally:
            server.resume()
        await eventually_publishes(store, "t", b"2")
    finally:
        await store.close()


async def test_publishes_through_a_restart_lose_nothing_acknowledged(
        redis_factory: RedisFactory, clock: Clock) -> None:
    """A publisher keeps going while Redis is killed and restarted mid-stream."""
    server = redis_factory.server(appendonly=True, appendfsync="always")
    store = RedisStore(server.url, clock=clock, timeout=BOUND)
    await store.open()
    acked: dict[str, bytes] = {}
    failed = 0
    halfway = asyncio.Event()

    async def publisher() -> None:
        nonlocal failed
        deadline = time.monotonic() + WAIT * 4
        i = 0
        while len(acked) < 300 and time.monotonic() < deadline:
            i += 1
            try:
                r = await store.publish("stream", b"%d" % i, PayloadKind.JSON, retain=False,
                                        policy=KEEP)
                acked[r.publication.offset] = b"%d" % i
                if len(acked) == 100:
                    halfway.set()
            except Unavailable:
                failed += 1
                await asyncio.sleep(0.01)

    try:
        task = asyncio.create_task(publisher())
        await asyncio.wait_for(halfway.wait(), WAIT)
        server.kill()
        await asyncio.sleep(0.2)
        server.start()
        await task
        assert len(acked) >= 300 and failed > 0
        await assert_kept(store, "stream", acked)
    finally:
        await store.close()


async def test_a_cluster_master_down_then_back(redis_factory: RedisFactory,
                                               clock: Clock) -> None:
    cluster = redis_factory.cluster(appendonly=True, appendfsync="always")
    store = RedisStore(cluster.url, clock=clock, timeout=BOUND)
    await store.open()
    try:
        # the master that holds the store's epoch key, a topic there and one elsewhere
        down = cluster.server_for("tidings:epoch")
        names = [f"t{i}" for i in range(200)]
        topic = next(t for t in names if cluster.server_for(channel_for(t)) is down)
        other = next(t for t in names if cluster.server_for(channel_for(t)) is not down)
        acked: dict[str, bytes] = {}
        for i in range(3):
            r = await store.publish(topic, b"%d" % i, PayloadKind.JSON, retain=False,
                                    policy=KEEP)
            acked[r.publication.offset] = b"%d" % i
        down.kill()
        await publish_raises_within_the_bound(store, topic)
        # the other masters go on serving their slots
        await eventually_publishes(store, other, b"1")
        await eventually_publishes(store, other, b"2")
        down.start()
        cluster.wait_ok()
        offset = await eventually_publishes(store, topic, b'"after"')
        acked[offset] = b'"after"'
        await assert_kept(store, topic, acked)
    finally:
        await store.close()


# -- composition ------------------------------------------------------------------------


async def test_a_node_on_the_redis_store(target: Target, tmp_path: Path) -> None:
    """TIDINGS_STORE_BACKEND=redis TIDINGS_REDIS_URL=...: a node stores in Redis."""
    node = await start_node(tmp_path, store__backend="redis", redis__url=target.url)
    try:
        store: Any = node.app.node.store
        assert isinstance(store, RedisStore)
        first = await node.publish("news/sports", {"score": "1-0"})
        second = await node.publish("news/sports", {"score": "2-0"})
        status, body = await node.api("GET", f"/v1/topics/news/sports/history?since={first}")
        assert status == 200, body
        assert [m["data"] for m in body["items"]] == [{"score": "2-0"}]
        assert body["items"][0]["offset"] == second
    finally:
        await stop_node(node)
    settings = node.settings
    assert isinstance(_make_store(settings), RedisStore)
