"""Issue 10, store items: the probes that found an unbounded inbox and expired
rows kept forever, kept as regression tests (real SQLite, real Redis, real
sockets; time is a fake clock the store reads, so nothing sleeps).

* Each notify counted every unread item: notifies to one user fell from
  795/s to 103/s as unread grew to 50k. Now a counter: the work of a notify
  is the same with 10 or 3,000 unread items (measured in SQLite VM steps).
* The inbox had no cap; now ``notify.max_inbox``, oldest read first.
* "12,100 expired rows kept in one probe": history past its TTL on topics
  never published again, expired idempotency keys and inbox items stayed on
  disk. The sweeper deletes them, and devices hear the new unread count.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from conftest import WAIT, Client, Node, make_settings, stop_node
from tidings.app import App
from tidings.store.base import PRUNE_STEP, HistoryPolicy
from tidings.store.redis import RedisStore
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind

pytest_plugins = ["support.redis_servers"]


class Clock:
    """The store's time, moved by hand; starts at the real time (tokens use that)."""

    def __init__(self) -> None:
        import time
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def start(tmp_path: Path, clock: Clock) -> AsyncIterator[Any]:
    """``await start(**overrides)``: a node whose store reads ``clock``."""
    nodes: list[Node] = []

    async def make(**overrides: Any) -> Node:
        settings = make_settings(tmp_path / f"n{len(nodes)}", **overrides)
        app = App(settings, clock=clock)
        await app.start()
        n = Node(app, settings, aiohttp.ClientSession())
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            await stop_node(n)


def policy(topic: str) -> HistoryPolicy:
    return HistoryPolicy(100, 86400.0)


def note() -> dict[str, Any]:
    return {"id": "n_" + secrets.token_hex(8), "title": "t", "body": "", "data": None,
            "category": "general", "priority": "normal", "media": None}


async def pushes_of(client: Client, kind: str, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        p = await client.push()
        if p["type"] == kind:
            got.append(p)
    return got


# -- the unread counter -------------------------------------------------------------------


async def _notify_steps(store: SqliteStore, db: sqlite3.Connection) -> int:
    """SQLite VM steps (in hundreds) one notify to alice costs."""
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(tick, 100)
    try:
        await store.notify(["alice"], note(), ttl=None, collapse_key=None, policy=policy)
    finally:
        db.set_progress_handler(None, 0)
    return steps


async def test_a_notify_costs_the_same_with_10_or_3000_unread(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, max_inbox=10_000)
    await store.open()
    try:
        db = store._db  # the store's own connection: count its VM steps
        assert db is not None

        async def fill(n: int) -> None:
            for i in range(0, n, 500):  # grouped into few transactions
                await asyncio.gather(*(store.notify(["alice"], note(), ttl=None,
                                                    collapse_key=None, policy=policy)
                                       for _ in range(min(500, n - i))))

        await fill(10)
        small = min([await _notify_steps(store, db) for _ in range(3)])
        await fill(3000)
        large = min([await _notify_steps(store, db) for _ in range(3)])
        assert await store.unread("alice") == 3016
        # Counting rows cost ~30 steps per hundred unread items: 900+ here.
        assert large <= small * 1.5 + 5, (small, large)
    finally:
        await store.close()


# -- the cap ------------------------------------------------------------------------------


async def test_the_inbox_is_capped_and_devices_hear_what_was_pruned(start: Any) -> None:
    node = await start(notify__max_inbox=20)
    phone = await node.client("alice")
    ids = []
    for i in range(25):
        status, body = await node.api("POST", "/v1/notify", {"users": ["alice"],
                                                             "title": f"t{i}"})
        assert status == 200
        ids.append(body["id"])
    pushes = await pushes_of(phone, "notification", 25)
    assert [p.get("pruned") for p in pushes[20:]] == [[nid] for nid in ids[:5]]
    assert pushes[-1]["unread"] == 20
    status, inbox = await node.api("GET", "/v1/users/alice/inbox?limit=100")
    assert status == 200
    assert [i["id"] for i in inbox["items"]] == list(reversed(ids[5:]))
    assert inbox["unread"] == 20


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_a_lower_cap_shrinks_a_big_inbox_in_bounded_steps(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An inbox kept under a higher cap (or from before the cap) is pruned at most
    PRUNE_STEP items per notify: no notify holds the store long, no push is huge."""
    url = ""
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        server.flushall()
        url = server.url

    def make(cap: int) -> Any:
        if url:
            return RedisStore(url, max_inbox=cap)
        return SqliteStore(tmp_path, max_inbox=cap)

    store = make(1000)
    await store.open()
    for _ in range(3):
        await asyncio.gather(*(store.notify(["alice"], note(), ttl=None, collapse_key=None,
                                            policy=policy) for _ in range(100)))
    await store.close()
    store = make(50)
    await store.open()
    try:
        pruned = []
        for _ in range(4):
            r = await store.notify(["alice"], note(), ttl=None, collapse_key=None,
                                   policy=policy)
            push = r.changes[0].publications[0].data()
            assert isinstance(push, dict)
            pruned.append(len(push.get("pruned", [])))
        # 300 items: 301 - 100, 202 - 100, 103 down to the cap of 50, then 51 - 1
        assert pruned == [PRUNE_STEP, PRUNE_STEP, 303 - 2 * PRUNE_STEP - 50, 1]
        assert await store.unread("alice") == 50
        page = await store.inbox("alice", limit=100)
        assert len(page.items) == 50 and page.unread == 50
    finally:
        await store.close()


# -- the sweeper --------------------------------------------------------------------------


def _rows(data: Path, table: str) -> int:
    with sqlite3.connect(data / "tidings.sqlite3") as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_expired_history_and_keys_are_deleted_from_disk(start: Any,
                                                              clock: Clock) -> None:
    node = await start(history__ttl=60.0, store__idempotency_ttl=120.0, store__sweep_batch=100)
    app = node.app
    for t in range(0, 40, 10):  # 40 topics x 10 messages, never published again
        await asyncio.gather(*(app.node.publish(f"probe/{t + k}", b"{}", PayloadKind.JSON,
                                                idempotency_key=f"k{t + k}-{i}")
                               for k in range(10) for i in range(10)))
    data = Path(node.settings.store.path)
    assert _rows(data, "history") == 400 and _rows(data, "idempotency") == 400
    clock.advance(59)
    totals = await app.sweeper.run_once()
    assert (totals.history, totals.keys) == (0, 0) and _rows(data, "history") == 400
    clock.advance(2)
    totals = await app.sweeper.run_once()
    assert totals.history == 400 and totals.steps >= 4  # in bounded steps
    assert _rows(data, "history") == 0 and _rows(data, "idempotency") == 400
    clock.advance(60)
    totals = await app.sweeper.run_once()
    assert totals.keys == 400 and _rows(data, "idempotency") == 0
    # Offsets go on from where they were: the topic is not reset.
    offset = await node.publish("probe/0", {"again": True})
    assert offset.endswith(":11")


async def test_redis_drops_expired_history_by_itself(redis_server: Any) -> None:
    """On Redis a history key takes its newest message's TTL at every publish, so
    the history of a topic never published again is deleted by Redis (real time)."""
    redis_server.flushall()
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        short = HistoryPolicy(100, 0.3)
        for t in range(20):
            for _ in range(5):
                await store.publish(f"probe/{t}", b"{}", PayloadKind.JSON, retain=False,
                                    policy=short, idempotency_key=secrets.token_hex(4))
    finally:
        await store.close()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert len(client.keys("tidings:{t:probe/*}:h")) == 20
        assert all(0 < client.pttl(k) <= 300 for k in client.keys("tidings:{t:probe/*}:h"))
        for _ in range(int(WAIT / 0.05)):  # polling Redis for the condition, bounded
            if not client.keys("tidings:{t:probe/*}:h"):
                break
            await asyncio.sleep(0.05)
        assert client.keys("tidings:{t:probe/*}:h") == []
    finally:
        client.close()


async def test_devices_hear_the_count_drop_when_an_item_expires(start: Any,
                                                                clock: Clock) -> None:
    node = await start()
    phone = await node.client("alice")
    badge = await node.client("alice")
    reply = await badge.request("subscribe", topic="users/alice/unread")
    assert reply["ok"], reply
    status, short = await node.api("POST", "/v1/notify", {"users": ["alice"], "ttl": 60})
    assert status == 200
    status, _ = await node.api("POST", "/v1/notify", {"users": ["alice"]})
    assert status == 200
    assert [p["unread"] for p in await pushes_of(phone, "notification", 2)] == [1, 2]
    clock.advance(61)
    totals = await node.app.sweeper.run_once()
    assert (totals.inbox, totals.users) == (1, 1)
    (event,) = await pushes_of(phone, "expire", 1)
    assert event["ids"] == [short["id"]] and event["unread"] == 1
    counts = [p["data"] for p in await pushes_of(badge, "message", 3)
              if p["topic"] == "users/alice/unread"]
    assert counts == [{"count": 1}, {"count": 2}, {"count": 1}]  # MQTT sees these too
    status, body = await node.api("GET", "/v1/users/alice/unread")
    assert (status, body["unread"]) == (200, 1)
    status, inbox = await node.api("GET", "/v1/users/alice/inbox")
    assert short["id"] not in [i["id"] for i in inbox["items"]]


async def test_the_sweeper_runs_by_itself(start: Any, clock: Clock) -> None:
    node = await start(store__sweep_interval=0.05)
    phone = await node.client("alice")
    status, short = await node.api("POST", "/v1/notify", {"users": ["alice"], "ttl": 5})
    assert status == 200
    await pushes_of(phone, "notification", 1)
    clock.advance(6)
    (event,) = await pushes_of(phone, "expire", 1)
    assert event["ids"] == [short["id"]] and event["unread"] == 0
    await phone.no_push(0.3)  # told once, not at every run
