"""The topics-and-history contract (``tidings.store.contracts.topics.TopicStore``).

Offsets, bounded history, retained messages and idempotent publish, on every
backend through the one ``store`` fixture (``support/stores.py``: SQLite, Redis,
Redis Cluster). Each test takes ``store`` (or ``open_store``) and nothing that
knows which backend it is.

Time is the fake ``clock`` (seconds since the epoch, moved by hand); the
store must take all its time (``ts``, history TTL, idempotency TTL) from it.
"""

from __future__ import annotations

import asyncio

import pytest

from support.stores import IDEMPOTENCY_TTL, KEEP, T0, Clock, OpenStore
from tidings.errors import Unavailable
from tidings.store.base import HistoryPage, HistoryPolicy, PublishRequest, Store
from tidings.types import Offset, PayloadKind, format_offset, parse_offset

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures


# -- helpers ----------------------------------------------------------------------------


async def pub(store: Store, topic: str, data: bytes, *, retain: bool = False,
              policy: HistoryPolicy = KEEP, kind: PayloadKind = PayloadKind.JSON,
              key: str | None = None) -> Offset:
    r = await store.publish(topic, data, kind, retain=retain, policy=policy,
                            idempotency_key=key)
    assert r.duplicate is False
    return r.publication.offset


def seq(offset: str) -> int:
    parsed = parse_offset(offset)
    assert parsed is not None, offset
    return parsed[1]


def epoch(offset: str) -> str:
    parsed = parse_offset(offset)
    assert parsed is not None, offset
    return parsed[0]


def payloads(page: HistoryPage) -> list[bytes]:
    return [p.payload for p in page.items]


async def publish_n(store: Store, topic: str, n: int, policy: HistoryPolicy = KEEP
                    ) -> list[Offset]:
    return [await pub(store, topic, b"%d" % i, policy=policy) for i in range(1, n + 1)]


# -- offsets ----------------------------------------------------------------------------


async def test_offsets_strictly_increase_per_topic(store: Store) -> None:
    offsets = await publish_n(store, "a", 5)
    assert len({epoch(o) for o in offsets}) == 1
    seqs = [seq(o) for o in offsets]
    assert seqs == list(range(seqs[0], seqs[0] + 5))  # consecutive: a gap is detectable
    assert await store.latest("a") == offsets[-1]


async def test_offsets_are_independent_across_topics(store: Store) -> None:
    a1 = await pub(store, "a", b"1")
    b1 = await pub(store, "b", b"1")
    a2 = await pub(store, "a", b"2")
    a3 = await pub(store, "a", b"3")
    b2 = await pub(store, "b", b"2")
    assert [seq(a2), seq(a3)] == [seq(a1) + 1, seq(a1) + 2]
    assert seq(b2) == seq(b1) + 1  # publishing to 'a' did not advance 'b'
    assert await store.latest("a") == a3
    assert await store.latest("b") == b2


async def test_latest_of_a_topic_never_published_starts_its_stream(store: Store) -> None:
    start = await store.latest("fresh")
    assert seq(start) == 0
    assert await store.latest("fresh") == start  # stable until something is published
    o1 = await pub(store, "fresh", b"1")
    assert epoch(o1) == epoch(start) and seq(o1) == 1
    # a client that saw the start offset recovers the very first message
    page = await store.history("fresh", start, 10)
    assert payloads(page) == [b"1"] and page.complete is True


async def test_history_since_the_start_offset_before_any_publish(store: Store) -> None:
    start = await store.latest("fresh")
    page = await store.history("fresh", start, 10)
    assert page.items == [] and page.complete is True and page.offset == start
    page = await store.history("fresh", None, 10)
    assert page.items == [] and page.complete is True


async def test_publication_fields(store: Store, clock: Clock) -> None:
    r = await store.publish("home/kitchen/temp", b"\x00\xff", PayloadKind.BINARY,
                            retain=False, policy=KEEP)
    p = r.publication
    assert (p.topic, p.payload, p.kind, p.retained) == (
        "home/kitchen/temp", b"\x00\xff", PayloadKind.BINARY, False)
    assert p.ts == int(T0 * 1000)  # the store's time is the clock's
    assert r.duplicate is False


# -- history ----------------------------------------------------------------------------


async def test_history_after_since_oldest_first(store: Store) -> None:
    offsets = await publish_n(store, "t", 5)
    page = await store.history("t", offsets[1], 10)
    assert payloads(page) == [b"3", b"4", b"5"]
    assert [p.offset for p in page.items] == offsets[2:]
    assert all(p.topic == "t" and p.kind is PayloadKind.JSON for p in page.items)
    assert page.complete is True
    assert page.offset == offsets[-1]


async def test_history_since_latest_is_empty_and_complete(store: Store) -> None:
    offsets = await publish_n(store, "t", 3)
    page = await store.history("t", offsets[-1], 10)
    assert page.items == [] and page.complete is True and page.offset == offsets[-1]


async def test_history_keeps_kind_payload_and_ts(store: Store, clock: Clock) -> None:
    first = await pub(store, "t", b'{"a":1}')
    clock.advance(1.5)
    await pub(store, "t", b"plain text", kind=PayloadKind.TEXT)
    clock.advance(1.5)
    await pub(store, "t", b"\x00\x01\xfe", kind=PayloadKind.BINARY)
    page = await store.history("t", None, 10)
    assert [(p.payload, p.kind, p.ts) for p in page.items] == [
        (b'{"a":1}', PayloadKind.JSON, int(T0 * 1000)),
        (b"plain text", PayloadKind.TEXT, int(T0 * 1000) + 1500),
        (b"\x00\x01\xfe", PayloadKind.BINARY, int(T0 * 1000) + 3000),
    ]
    assert page.items[0].offset == first
    assert all(p.retained is False for p in page.items)


async def test_history_since_none_returns_the_newest_limit(store: Store) -> None:
    offsets = await publish_n(store, "t", 5)
    page = await store.history("t", None, 2)
    assert payloads(page) == [b"4", b"5"]  # the newest two, oldest first
    assert page.complete is False  # more than 'limit' exist
    assert page.offset == offsets[-1]
    page = await store.history("t", None, 10)
    assert payloads(page) == [b"1", b"2", b"3", b"4", b"5"]
    assert page.complete is True


async def test_history_limit_smaller_than_available(store: Store) -> None:
    offsets = await publish_n(store, "t", 5)
    page = await store.history("t", offsets[0], 2)
    assert payloads(page) == [b"2", b"3"]
    assert page.complete is False  # more than 'limit' follow 'since'
    # paging on from the last item reaches the end
    page = await store.history("t", page.items[-1].offset, 2)
    assert payloads(page) == [b"4", b"5"]
    assert page.complete is True
    page = await store.history("t", offsets[2], 2)  # exactly 'limit' follow
    assert payloads(page) == [b"4", b"5"] and page.complete is True


async def test_history_of_a_topic_never_published(store: Store) -> None:
    """Nothing published: the topic is at its start offset (the one latest() gives)."""
    start = await store.latest("never")
    page = await store.history("never", None, 10)
    assert page == HistoryPage([], start, True)
    assert (await store.history("never", start, 10)).complete is True
    page = await store.history("never", "abcd:3", 10)
    assert page.items == [] and page.offset == start
    assert page.complete is False  # 'since' claims messages this store never had


async def test_history_trimmed_by_size(store: Store) -> None:
    small = HistoryPolicy(size=3, ttl=3600.0)
    offsets = await publish_n(store, "t", 5, policy=small)
    page = await store.history("t", None, 10)
    assert payloads(page) == [b"3", b"4", b"5"]
    assert page.complete is False  # the oldest two are gone
    # since points before the trimmed part: the client must know it missed some
    page = await store.history("t", offsets[0], 10)
    assert payloads(page) == [b"3", b"4", b"5"] and page.complete is False
    # since is the last trimmed one: everything after it is still there
    page = await store.history("t", offsets[1], 10)
    assert payloads(page) == [b"3", b"4", b"5"] and page.complete is True


async def test_history_size_zero_keeps_nothing_but_offsets_count(store: Store) -> None:
    none = HistoryPolicy(size=0, ttl=3600.0)
    offsets = await publish_n(store, "t", 3, policy=none)
    assert [seq(o) for o in offsets] == [seq(offsets[0]) + i for i in range(3)]
    page = await store.history("t", offsets[0], 10)
    assert page.items == [] and page.complete is False
    page = await store.history("t", offsets[-1], 10)
    assert page.items == [] and page.complete is True
    assert (await store.history("t", None, 10)).items == []


async def test_reserved_offsets_continue_the_topics_sequence(store: Store) -> None:
    """A reservation takes the next offsets without storing anything; latest()
    reports its end; publishes and later reservations continue after it, in the
    topic's epoch (the one latest() gave before any publish)."""
    start = await store.latest("mem/a")
    got_epoch, first = await store.reserve_offsets("mem/a", 5)
    assert (got_epoch, first) == (epoch(start), 1)
    assert await store.latest("mem/a") == format_offset(got_epoch, 5)
    assert (await store.history("mem/a", None, 10)).items == []
    after = await pub(store, "mem/a", b"x", policy=HistoryPolicy(size=0, ttl=60.0))
    assert (epoch(after), seq(after)) == (got_epoch, 6)
    again = await asyncio.gather(*[store.reserve_offsets("mem/a", 10) for _ in range(3)])
    firsts = sorted(f for _, f in again)
    assert firsts == [7, 17, 27]  # disjoint, each after the one before
    assert seq(await store.latest("mem/a")) == 36
    assert await store.latest("mem/b") == format_offset(epoch(await store.latest("mem/b")), 0)


async def test_history_ttl_expiry(store: Store, clock: Clock) -> None:
    short = HistoryPolicy(size=100, ttl=10.0)
    o1 = await pub(store, "t", b"1", policy=short)
    clock.now = T0 + 5
    o2 = await pub(store, "t", b"2", policy=short)
    clock.now = T0 + 9.999
    assert payloads(await store.history("t", None, 10)) == [b"1", b"2"]
    clock.now = T0 + 10  # the first is exactly ttl old: expired
    page = await store.history("t", None, 10)
    assert payloads(page) == [b"2"] and page.complete is False
    page = await store.history("t", o1, 10)
    assert payloads(page) == [b"2"] and page.complete is True  # nothing after o1 expired
    before = format_offset(epoch(o1), seq(o1) - 1)
    page = await store.history("t", before, 10)
    assert payloads(page) == [b"2"] and page.complete is False  # o1 itself expired
    clock.now = T0 + 15  # both expired
    page = await store.history("t", None, 10)
    assert page.items == [] and page.complete is False and page.offset == o2
    page = await store.history("t", o1, 10)
    assert page.items == [] and page.complete is False
    page = await store.history("t", o2, 10)
    assert page.items == [] and page.complete is True  # nothing was published after o2
    # offsets keep counting after expiry
    o3 = await pub(store, "t", b"3", policy=short)
    assert epoch(o3) == epoch(o1) and seq(o3) == seq(o2) + 1


@pytest.mark.parametrize("foreign", [
    "other-epoch:1",  # an epoch this topic never had
    "not an offset",
    "",
    "abc:",
    "abc:-1",
    ":5",
])
async def test_history_foreign_since_is_incomplete(store: Store, foreign: str) -> None:
    offsets = await publish_n(store, "t", 3)
    page = await store.history("t", foreign, 10)
    assert page.complete is False
    assert page.offset == offsets[-1]
    seqs = [seq(p.offset) for p in page.items]
    assert seqs == sorted(seqs)  # whatever is returned is oldest first


async def test_history_since_from_another_topic_is_incomplete(store: Store) -> None:
    other = await publish_n(store, "other", 2)
    await publish_n(store, "t", 2)
    page = await store.history("t", other[0], 10)
    assert page.complete is False


# -- retained ---------------------------------------------------------------------------


async def test_retained_set_replace_clear(store: Store) -> None:
    assert await store.retained("dev/1/state") == []
    o1 = await pub(store, "dev/1/state", b'"on"', retain=True)
    got = await store.retained("dev/1/state")
    assert [(p.topic, p.offset, p.payload, p.retained) for p in got] == [
        ("dev/1/state", o1, b'"on"', True)]
    o2 = await pub(store, "dev/1/state", b"off", retain=True, kind=PayloadKind.TEXT)
    got = await store.retained("dev/1/state")
    assert [(p.offset, p.payload, p.kind) for p in got] == [(o2, b"off", PayloadKind.TEXT)]
    # a publish without retain leaves the retained message alone
    await pub(store, "dev/1/state", b'"blink"')
    assert [p.offset for p in await store.retained("dev/1/state")] == [o2]
    # an empty payload with retain clears it (as in MQTT 3.3.1.3)
    await pub(store, "dev/1/state", b"", retain=True)
    assert await store.retained("dev/1/state") == []
    # clearing what is not there is fine
    await pub(store, "dev/2/state", b"", retain=True)
    assert await store.retained("dev/2/state") == []


async def test_retained_by_exact_and_wildcard_filters(store: Store) -> None:
    topics = ["home/kitchen/temp", "home/bath/temp", "home/kitchen/humidity", "home",
              "office/temp", "ho_e/x", "hom%/y", "$SYS/uptime"]
    for t in topics:
        await pub(store, t, b'"%s"' % t.encode(), retain=True)
    await pub(store, "home/garage/temp", b"1")  # never retained

    async def found(flt: str) -> set[str]:
        got = await store.retained(flt)
        assert all(p.retained and p.payload == b'"%s"' % p.topic.encode() for p in got)
        assert len(got) == len({p.topic for p in got})  # one per topic
        return {p.topic for p in got}

    assert await found("home/kitchen/temp") == {"home/kitchen/temp"}
    assert await found("home/+/temp") == {"home/kitchen/temp", "home/bath/temp"}
    assert await found("home/#") == {"home/kitchen/temp", "home/bath/temp",
                                     "home/kitchen/humidity", "home"}  # [MQTT-4.7.1-2]
    assert await found("+/kitchen/#") == {"home/kitchen/temp", "home/kitchen/humidity"}
    assert await found("+/temp") == {"office/temp"}
    assert await found("#") == set(topics) - {"$SYS/uptime"}  # [MQTT-4.7.2-1]
    assert await found("$SYS/#") == {"$SYS/uptime"}
    # SQL wildcard characters in names are literal
    assert await found("ho_e/#") == {"ho_e/x"}
    assert await found("hom%/#") == {"hom%/y"}
    assert await found("hom%/x") == set()
    assert await found("nothing/+") == set()


async def test_retained_hash_filter_includes_the_parent_level(store: Store) -> None:
    await pub(store, "home", b"1", retain=True)
    await pub(store, "home/kitchen", b"2", retain=True)
    await pub(store, "homestead", b"3", retain=True)
    # 'home/#' matches 'home' itself [MQTT-4.7.1-2], so a new subscriber gets its
    # retained message too
    assert {p.topic for p in await store.retained("home/#")} == {"home", "home/kitchen"}


async def test_pattern_characters_in_names_are_literal(store: Store) -> None:
    """Characters that are wildcards to SQL LIKE / GLOB or Redis SCAN / KEYS match
    only themselves."""
    topics = ["a*/x", "a?/x", "a[b]/x", "ab/x", "a\\/x", "a^/x"]
    for t in topics:
        await pub(store, t, b"1", retain=True)

    async def found(flt: str) -> set[str]:
        return {p.topic for p in await store.retained(flt)}

    for t in topics:
        assert await found(t) == {t}
        assert await found(t.replace("/x", "/+")) == {t}
    assert await found("+/x") == set(topics)
    assert await found("a*/#") == {"a*/x"}


# -- idempotency ------------------------------------------------------------------------


async def test_idempotency_key_stores_once(store: Store, clock: Clock) -> None:
    first = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-1")
    assert first.duplicate is False
    clock.advance(IDEMPOTENCY_TTL - 1)
    again = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-1")
    assert again.duplicate is True
    assert again.publication.offset == first.publication.offset
    assert again.publication.payload == b"1"
    assert await store.latest("t") == first.publication.offset
    assert payloads(await store.history("t", None, 10)) == [b"1"]  # nothing stored twice
    # another key is another publish
    other = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-2")
    assert other.duplicate is False
    assert seq(other.publication.offset) == seq(first.publication.offset) + 1


async def test_idempotent_retry_does_not_touch_retained(store: Store) -> None:
    await store.publish("t", b"1", PayloadKind.JSON, retain=True, policy=KEEP,
                        idempotency_key="k")
    o2 = await pub(store, "t", b"2", retain=True)
    r = await store.publish("t", b"1", PayloadKind.JSON, retain=True, policy=KEEP,
                            idempotency_key="k")
    assert r.duplicate is True
    assert [p.offset for p in await store.retained("t")] == [o2]


async def test_idempotency_key_expires(store: Store, clock: Clock) -> None:
    first = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-1")
    clock.advance(IDEMPOTENCY_TTL + 1)
    later = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-1")
    assert later.duplicate is False
    assert seq(later.publication.offset) == seq(first.publication.offset) + 1
    assert payloads(await store.history("t", None, 10)) == [b"1", b"1"]
    # and the key now dedupes against the new publication
    again = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="req-1")
    assert again.duplicate is True
    assert again.publication.offset == later.publication.offset


# -- concurrency ------------------------------------------------------------------------


async def test_concurrent_publishes_get_distinct_consecutive_offsets(store: Store) -> None:
    n = 200
    results = await asyncio.gather(*(
        store.publish("hot", b"%d" % i, PayloadKind.JSON, retain=False, policy=KEEP)
        for i in range(n)))
    offsets = [r.publication.offset for r in results]
    assert len(set(offsets)) == n
    assert len({epoch(o) for o in offsets}) == 1
    seqs = sorted(seq(o) for o in offsets)
    assert seqs == list(range(seqs[0], seqs[0] + n))
    # history holds each publication once, in offset order, with its own payload
    page = await store.history("hot", None, n)
    assert page.complete is True
    assert [p.offset for p in page.items] == sorted(offsets, key=seq)
    by_offset = {r.publication.offset: r.publication.payload for r in results}
    assert all(p.payload == by_offset[p.offset] for p in page.items)


async def test_concurrent_publishes_to_many_topics(store: Store) -> None:
    results = await asyncio.gather(*(
        store.publish(f"t/{i % 4}", b"1", PayloadKind.JSON, retain=False, policy=KEEP)
        for i in range(40)))
    for t in range(4):
        seqs = sorted(seq(r.publication.offset) for r in results
                      if r.publication.topic == f"t/{t}")
        assert seqs == list(range(seqs[0], seqs[0] + 10))


# -- lifecycle --------------------------------------------------------------------------


async def test_reopen_keeps_history_offsets_and_retained(open_store: OpenStore) -> None:
    s1 = await open_store()
    offsets = await publish_n(s1, "t", 3)
    o_ret = await pub(s1, "r/1", b'"kept"', retain=True)
    await s1.close()
    s2 = await open_store()
    assert await s2.ping() is True
    assert await s2.latest("t") == offsets[-1]
    page = await s2.history("t", offsets[0], 10)
    assert payloads(page) == [b"2", b"3"] and page.complete is True
    assert [(p.offset, p.payload) for p in await s2.retained("r/+")] == [(o_ret, b'"kept"')]
    # offsets go on from where they were, in the same epoch
    o4 = await pub(s2, "t", b"4")
    assert epoch(o4) == epoch(offsets[0]) and seq(o4) == seq(offsets[-1]) + 1


async def test_reopen_keeps_idempotency_keys(open_store: OpenStore) -> None:
    s1 = await open_store()
    first = await s1.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                             idempotency_key="k")
    await s1.close()
    s2 = await open_store()
    again = await s2.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                             idempotency_key="k")
    assert again.duplicate is True and again.publication.offset == first.publication.offset


async def test_retained_keeps_the_qos_it_was_published_at(store: Store) -> None:
    """[MQTT-3.8.4-8]: a subscriber gets a retained message at most at its original QoS."""
    for topic, qos in (("q/0", 0), ("q/1", 1), ("q/2", 2)):
        r = await store.publish(topic, b"x", PayloadKind.TEXT, retain=True, policy=KEEP,
                                qos=qos)
        assert r.duplicate is False
    found = {p.topic: p.qos for p in await store.retained("q/+")}
    assert found == {"q/0": 0, "q/1": 1, "q/2": 2}
    assert [p.qos for p in await store.retained("q/0")] == [0]


async def test_retained_keeps_its_meta(open_store: OpenStore) -> None:
    """A retained message keeps the ``meta`` it was published with (MQTT 5.0
    properties, as the store's meta codec maps them), unaltered and across a
    reopen; the next retained message of the topic replaces it, with its own or
    none. History keeps none."""
    store = await open_store()
    meta = {"user_properties": [["a", "1"], ["a", "2"], ["b", ""]], "content_type": "text/x",
            "payload_format_indicator": 1, "response_topic": "r/1",
            "correlation_data": b"\x00\xffid", "message_expiry_interval": 60}
    await store.publish("dev/m", b"on", PayloadKind.TEXT, retain=True, policy=KEEP, qos=2,
                        meta=meta)
    await store.publish("dev/plain", b"x", PayloadKind.TEXT, retain=True, policy=KEEP)
    for s in (store, await open_store()):
        got = {p.topic: p for p in await s.retained("dev/#")}
        assert (got["dev/m"].meta, got["dev/m"].qos) == (meta, 2)
        assert got["dev/plain"].meta is None
        assert [p.meta for p in await s.retained("dev/m")] == [meta]
    assert all(p.meta is None for p in (await store.history("dev/m", None, 10)).items)
    await store.publish("dev/m", b"off", PayloadKind.TEXT, retain=True, policy=KEEP)
    assert [(p.payload, p.meta) for p in await store.retained("dev/m")] == [(b"off", None)]


# -- groups (publish_many) -------------------------------------------------------------


def req(topic: str, data: bytes, *, policy: HistoryPolicy = KEEP, retain: bool = False,
        key: str | None = None, qos: int = 1) -> PublishRequest:
    return PublishRequest(topic, data, PayloadKind.JSON, policy, retain, key, qos)


async def test_group_offsets_follow_the_order_given(store: Store) -> None:
    """Interleaved topics in one group: each topic's offsets go on consecutively from
    its last single publish, in the group's order, and history holds that order."""
    before_a = await pub(store, "a", b"0")
    group = [req("a", b"1"), req("b", b"1"), req("a", b"2"), req("a", b"3"), req("b", b"2")]
    results = await store.publish_many(group)
    assert [r.duplicate for r in results] == [False] * 5
    assert [r.publication.topic for r in results] == ["a", "b", "a", "a", "b"]
    a = [r.publication.offset for r in results if r.publication.topic == "a"]
    assert [seq(o) for o in a] == [seq(before_a) + i for i in (1, 2, 3)]
    assert all(epoch(o) == epoch(before_a) for o in a)
    assert payloads(await store.history("a", before_a, 10)) == [b"1", b"2", b"3"]
    assert payloads(await store.history("b", None, 10)) == [b"1", b"2"]
    assert await store.latest("a") == a[-1]
    after = await pub(store, "a", b"4")  # a single publish goes on from the group
    assert seq(after) == seq(a[-1]) + 1


async def test_group_keeps_each_request_s_policy_and_retain(store: Store) -> None:
    none = HistoryPolicy(0, 60.0)
    results = await store.publish_many([
        req("keep/1", b'"h"'), req("none/1", b'"n"', policy=none),
        req("ret/1", b'"r"', retain=True, qos=0)])
    assert payloads(await store.history("keep/1", None, 10)) == [b'"h"']
    page = await store.history("none/1", None, 10)
    assert page.items == [] and page.offset == results[1].publication.offset
    kept = await store.retained("ret/1")
    assert [(p.offset, p.payload, p.qos) for p in kept] == [
        (results[2].publication.offset, b'"r"', 0)]


async def test_group_idempotency_keys_within_and_before_the_group(store: Store) -> None:
    first = await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP,
                                idempotency_key="seen")
    results = await store.publish_many([
        req("t", b"1", key="seen"), req("t", b"2", key="new"),
        req("t", b"2", key="new"), req("t", b"3")])
    assert [r.duplicate for r in results] == [True, False, True, False]
    assert results[0].publication.offset == first.publication.offset
    assert results[2].publication.offset == results[1].publication.offset
    assert seq(results[3].publication.offset) == seq(results[1].publication.offset) + 1
    assert payloads(await store.history("t", None, 10)) == [b"1", b"2", b"3"]


async def test_empty_group_stores_nothing(store: Store) -> None:
    assert await store.publish_many([]) == []
    assert seq(await store.latest("t")) == 0


async def test_group_on_a_closed_store_is_unavailable(open_store: OpenStore) -> None:
    s = await open_store()
    await s.close()
    with pytest.raises(Unavailable):
        await s.publish_many([req("t", b"1"), req("u", b"2")])
