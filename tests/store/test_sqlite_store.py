"""What the SQLite store does beyond the shared contracts (``test_*_contract.py``).

On a real SQLite file in a temp folder, read and altered with ``sqlite3`` from
outside where a test needs an older data folder:

* the file is in WAL mode (readers never wait for the writer);
* SQL runs on the store's own thread: the event loop goes on while a call runs;
* calls made in one loop pass commit together, yet a failing call rolls back
  alone and the others are stored;
* a data folder from an older version opens: the unread counters are filled
  from the inbox once, retained messages get their QoS column (QoS 1), send
  targets their variant column (none for those recorded before), the counts
  per variant are filled once from the targets and events;
* a tags-only audience is counted by one SQL query, equal to the paged count;
* history on disk keeps each topic's size, however appended (one publish after
  another, a topic named many times in one append, a policy that shrinks);
* a stream entry is the item's fields plus what it adds, to the byte.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from support.stores import KEEP, Clock
from tidings.audience import parse_audience
from tidings.store.base import (
    Delivery,
    HistoryPolicy,
    MqttSessionState,
    NewJob,
    PublishRequest,
)
from tidings.store.contracts.audience import AudienceStore
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication


def policy(topic: str) -> HistoryPolicy:
    return KEEP


async def opened(folder: Path, clock: Clock) -> SqliteStore:
    store = SqliteStore(folder, clock=clock)
    await store.open()
    return store


async def test_the_file_is_in_wal_mode(tmp_path: Path, clock: Clock) -> None:
    store = await opened(tmp_path / "data", clock)
    await store.close()
    assert store.path == tmp_path / "data" / "tidings.sqlite3"
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_the_loop_runs_while_a_call_runs(tmp_path: Path, clock: Clock) -> None:
    """A notify to many users runs on the store's thread: a task started with it gets
    the loop before the notify returns."""
    store = await opened(tmp_path, clock)
    try:
        ran = asyncio.Event()

        async def other_work() -> None:
            ran.set()

        task = asyncio.create_task(other_work())
        result = await store.notify([f"u{i}" for i in range(500)], {"id": "n_1",
                                    "category": "c"}, ttl=None, collapse_key=None,
                                    policy=policy)
        assert ran.is_set() and len(result.changes) == 500
        await task
    finally:
        await store.close()


async def test_a_failing_call_rolls_back_alone(tmp_path: Path, clock: Clock) -> None:
    """Calls of one loop pass share a transaction, each in its own savepoint."""
    store = await opened(tmp_path, clock)
    try:
        await store.mqtt_save("c1", MqttSessionState(expiry=1))
        results = await asyncio.gather(
            store.publish("t", b"1", PayloadKind.JSON, retain=True, policy=KEEP),
            store.mqtt_save("c1", MqttSessionState(user=object())),  # type: ignore[arg-type]
            # ^ not JSON: fails inside the transaction
            store.mqtt_save("c2", MqttSessionState(expiry=2)),
            return_exceptions=True)
        assert isinstance(results[1], TypeError)
        assert not isinstance(results[0], BaseException) and results[2] is None
        assert [p.payload for p in await store.retained("t")] == [b"1"]
        assert await store.mqtt_session("c1") == (MqttSessionState(expiry=1), [])  # unchanged
        assert await store.mqtt_session("c2") == (MqttSessionState(expiry=2), [])
    finally:
        await store.close()


async def test_a_folder_from_before_the_counters_is_counted_once(tmp_path: Path,
                                                                 clock: Clock) -> None:
    store = await opened(tmp_path, clock)
    ids = [(await store.notify(["alice"], {"id": f"n_{i}", "category": "c"}, ttl=None,
                               collapse_key=None, policy=policy)).id for i in range(4)]
    await store.mark("alice", "read", [ids[0]], device="d", policy=policy)
    await store.mark("alice", "archive", [ids[1]], device="d", policy=policy)
    await store.notify(["bob"], {"id": "n_b", "category": "c"}, ttl=None, collapse_key=None,
                       policy=policy)
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TABLE inbox_counts")  # as an older version left the folder
    store = await opened(tmp_path, clock)
    try:
        assert (await store.unread("alice"), await store.unread("bob")) == (2, 1)
        await store.notify(["alice"], {"id": "n_new", "category": "c"}, ttl=None,
                           collapse_key=None, policy=policy)
        await store.close()
        store = await opened(tmp_path, clock)  # filled once: not counted again
        assert (await store.unread("alice"), await store.unread("bob")) == (3, 1)
    finally:
        await store.close()


async def test_a_folder_from_before_retained_kept_its_qos(tmp_path: Path,
                                                          clock: Clock) -> None:
    store = await opened(tmp_path, clock)
    r = await store.publish("dev/1", b"on", PayloadKind.TEXT, retain=True, policy=KEEP, qos=0)
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.execute("ALTER TABLE retained DROP COLUMN qos")
    store = await opened(tmp_path, clock)
    try:
        got = await store.retained("dev/+")
        assert [(p.offset, p.payload, p.qos) for p in got] == [
            (r.publication.offset, b"on", 1)]  # unknown then: QoS 1, as before
        await store.publish("dev/1", b"off", PayloadKind.TEXT, retain=True, policy=KEEP, qos=2)
        assert [(p.payload, p.qos) for p in await store.retained("dev/1")] == [(b"off", 2)]
    finally:
        await store.close()


_BEFORE_VARIANT_COUNTS = """
DROP TRIGGER variant_target; DROP TRIGGER variant_target_state; DROP TRIGGER variant_event;
DROP TABLE variant_counts;
"""


async def test_a_folder_from_before_the_variant_counts_is_counted_once(
        tmp_path: Path, clock: Clock) -> None:
    store = await opened(tmp_path, clock)
    job, _ = await store.job_create(NewJob("n_ab", "c", {"title": "hi"}, 3, clock.now))
    await store.deliver(job.id, [Delivery("ann", "pushed", {"title": "hi"}, edges=None,
                                          variant="A"),
                                 Delivery("bob", "held", due_at=clock.now + 60, variant="B"),
                                 Delivery("cy", "pushed", {"title": "hi"}, edges=None)],
                        category="c", expires_at=None, collapse_key=None, policy=policy)
    assert await store.track(job.id, "ann", "opened")
    want = await store.variant_counts(job.id)
    assert (want["A"]["opened"], want["B"]["held"]) == (1, 1)
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.executescript(_BEFORE_VARIANT_COUNTS)
    store = await opened(tmp_path, clock)
    try:
        assert await store.variant_counts(job.id) == want
        await store.close()
        store = await opened(tmp_path, clock)  # filled once: not counted again
        assert await store.variant_counts(job.id) == want
        assert await store.track(job.id, "ann", "clicked")  # and counted from then on
        assert (await store.variant_counts(job.id))["A"]["clicked"] == 1
    finally:
        await store.close()


async def test_a_folder_from_before_targets_kept_their_variant(tmp_path: Path,
                                                               clock: Clock) -> None:
    store = await opened(tmp_path, clock)
    job, _ = await store.job_create(NewJob("n_old", "c", {"title": "hi"}, 2, clock.now))
    await store.deliver(job.id, [Delivery("ann", "suppressed_category")], category="c",
                        expires_at=None, collapse_key=None, policy=policy)
    await store.close()
    with sqlite3.connect(store.path) as db:
        db.executescript(_BEFORE_VARIANT_COUNTS + "ALTER TABLE job_targets DROP COLUMN variant;")
    store = await opened(tmp_path, clock)
    try:
        await store.deliver(job.id, [Delivery("bob", "suppressed_category", variant="B")],
                            category="c", expires_at=None, collapse_key=None, policy=policy)
        counts = await store.variant_counts(job.id)
        assert list(counts) == ["B"] and counts["B"]["targets"] == 1  # ann: none recorded
        got = await store.job_get(job.id)
        assert got is not None and got.outcomes == {"suppressed_category": 2}
    finally:
        await store.close()


@pytest.mark.parametrize("max_inbox", [0, -1])
def test_a_cap_below_one_is_refused(tmp_path: Path, max_inbox: int) -> None:
    with pytest.raises(ValueError, match="max_inbox"):
        SqliteStore(tmp_path, max_inbox=max_inbox)


async def test_a_tags_only_count_is_one_query_and_equals_the_paged_count(
        tmp_path: Path, clock: Clock) -> None:
    """The SQL count of a tag-only audience (all / any / none) selects exactly the
    users the contract's paging selects, for random tags (fixed seed)."""
    store = await opened(tmp_path / "data", clock)
    rng = random.Random(12)
    tags = [f"t{i}" for i in range(6)]
    await asyncio.gather(*(store.set_user_tags(f"u{i:04d}", rng.sample(tags, rng.randint(0, 4)),
                                               max_tags=10) for i in range(1500)))
    await store.set_user_attributes("only-attrs", {"plan": "pro"})  # known, untagged
    selectors: list[dict[str, list[str]]] = [
        {"any": ["t0"]}, {"any": ["t1", "t2"]}, {"all": ["t0", "t1"]},
        {"all": ["t3"], "any": ["t4", "t5"]}, {"any": ["t0", "t1"], "none": ["t2"]},
        {"all": ["t0"], "any": ["t0", "t9"], "none": ["t1", "t5"]}, {"any": ["absent"]},
        {"none": ["t0"]},  # no all / any: the paged count over every known user
    ]
    for selector in selectors:
        query = parse_audience({"tags": selector})
        paged = await AudienceStore.audience_count(store, query, page=400)
        assert await store.audience_count(query) == paged, selector
    assert await store.audience_count(parse_audience({"tags": {"any": ["t0"]}})) > 0
    await store.close()


def _history_rows(path: Path) -> dict[str, list[int]]:
    """The history sequences on disk, per topic (read from outside the store)."""
    out: dict[str, list[int]] = {}
    with sqlite3.connect(path) as db:
        for topic, seq in db.execute("SELECT topic, seq FROM history ORDER BY topic, seq"):
            out.setdefault(topic, []).append(seq)
    return out


async def test_history_on_disk_keeps_the_size_however_appended(tmp_path: Path,
                                                              clock: Clock) -> None:
    """The trim leaves exactly the size: one publish after another, a topic named
    many times in one append, a policy that shrinks to nothing, and a user's
    streams (the retained count keeps none)."""
    store = await opened(tmp_path, clock)
    three, none = HistoryPolicy(3, 3600.0), HistoryPolicy(0, 3600.0)
    try:
        for i in range(1, 6):
            await store.publish("one", b"%d" % i, PayloadKind.JSON, retain=False,
                                policy=three)
            assert _history_rows(store.path)["one"] == list(range(max(1, i - 2), i + 1))
        def many(n: int, size: int) -> Callable[[sqlite3.Connection], object]:
            """One append of a topic named ``n`` times (what a chunk's streams are)."""
            entries = [("many", b"%d" % i, PayloadKind.JSON, HistoryPolicy(size, 3600.0),
                        False, 1, None) for i in range(n)]
            return lambda db: store._append_many(db, entries, 0)

        await store._run(many(5, 3))
        assert _history_rows(store.path)["many"] == [3, 4, 5]
        await store._run(many(2, 2))
        await store.publish_many([PublishRequest("shrinks", b"%d" % i, PayloadKind.JSON,
                                                 three) for i in range(3)])
        assert _history_rows(store.path) == {"one": [3, 4, 5], "many": [6, 7],
                                             "shrinks": [1, 2, 3]}
        await store.publish("shrinks", b"x", PayloadKind.JSON, retain=False, policy=none)
        assert "shrinks" not in _history_rows(store.path)
        assert [p.payload for p in (await store.history("one", None, 10)).items] == \
            [b"3", b"4", b"5"]
        for n in range(1, 6):  # notifications keep 3: the unread count keeps none
            await store.notify(["alice"], {"id": f"n_{n}", "category": "c"}, ttl=None,
                               collapse_key=None, policy=lambda t: three)
        rows = _history_rows(store.path)
        assert rows["users/alice/notifications"] == [3, 4, 5]
        assert "users/alice/unread" not in rows
        assert [p.data() for p in await store.retained("users/alice/unread")] == \
            [{"count": 5}]
    finally:
        await store.close()


async def test_a_stream_entry_is_the_item_plus_what_it_adds(tmp_path: Path,
                                                            clock: Clock) -> None:
    """The live entry is the stored item's fields with ``unread`` (and ``edges``,
    ``replaces``) after them, also when the fields name one of those keys
    themselves (then replaced in place); a silent entry carries the id and the
    count. What devices parse, pinned to the byte."""
    store = await opened(tmp_path, clock)
    plain = {"title": "Hi é \"x\"", "body": None, "data": {"k": [1, 2.5]}}
    clash = {"title": "clash", "unread": "mine", "edges": 7}
    try:
        job, _ = await store.job_create(NewJob("n_1", "c", {"title": "x"}, 4, clock.now))
        result = await store.deliver(
            job.id, [Delivery("ann", "pushed", plain, edges=None),
                     Delivery("bob", "pushed", plain, edges=("ws",)),
                     Delivery("cy", "pushed", clash, edges=("mqtt",)),
                     Delivery("di", "pushed", plain, edges=())],
            category="c", expires_at=None, collapse_key="k", policy=policy)
        ts = int(clock.now * 1000)
        entries = [c.publications[0] for c in result.changes]
        item = {**plain, "id": "n_1", "ts": ts}
        assert [(p.topic, p.payload) for p in entries] == [
            ("users/ann/notifications", orjson.dumps({**item, "unread": 1})),
            ("users/bob/notifications", orjson.dumps({**item, "unread": 1,
                                                      "edges": ["ws"]})),
            ("users/cy/notifications", orjson.dumps({"title": "clash", "unread": 1,
                                                     "edges": ["mqtt"], "id": "n_1",
                                                     "ts": ts})),
            ("users/di/events", orjson.dumps({"type": "silent", "ids": ["n_1"],
                                              "unread": 1}))]
        job, _ = await store.job_create(NewJob("n_2", "c", {"title": "x"}, 1, clock.now))
        again = await store.deliver(job.id, [Delivery("ann", "pushed", plain, edges=None)],
                                    category="c", expires_at=None, collapse_key="k",
                                    policy=policy)
        assert again.changes[0].publications[0].payload == orjson.dumps(
            {**plain, "id": "n_2", "ts": ts, "unread": 1, "replaces": ["n_1"]})
        assert [p.payload for p in again.changes[0].publications[1:]] == [b'{"count":1}']
        for pub in [p for c in result.changes + again.changes for p in c.publications]:
            # made by setting its slots (stored_publication): a Publication like any other
            made = Publication(pub.topic, pub.offset, pub.payload, pub.kind, pub.ts)
            assert pub == made and hash(pub) == hash(made) and repr(pub) == repr(made)
            with pytest.raises(dataclasses.FrozenInstanceError):
                pub.qos = 0  # type: ignore[misc]
    finally:
        await store.close()
