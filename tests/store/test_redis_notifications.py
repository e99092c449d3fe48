"""The notification store on Redis beyond its contract: several clients racing on shared data.

On one Redis and a 3-master Redis Cluster (the ``open_store`` fixture of
``support/stores.py``, each call a new client over the same data, as two nodes
are). The contract (``test_notifications_contract.py``) checks each rule with
one client; here two or three clients race for the same due entries and fire
them at once, a chunk spans several pipelines, and a chunk still in flight
when its job is cancelled queues nobody; and a chunk cut short by Redis going
down is finished once Redis is back. What a user relies on: nobody gets a
notification twice, nobody held is lost, and the job's counts are exact.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from conftest import WAIT
from support.inbox import ids_in, policy
from support.redis_servers import RedisFactory
from support.stores import Clock, OpenStore
from tidings.errors import Unavailable
from tidings.store.base import Delivery, DueEntry, NewJob, Store
from tidings.store.redis import RedisStore

pytest_plugins = ["support.redis_servers"]
on_redis = pytest.mark.parametrize("open_store", ["redis", "redis-cluster"], indirect=True)

LEASE = 30.0


def fields() -> dict[str, Any]:
    return {"title": "hi", "body": "", "data": None, "category": "general",
            "priority": "normal", "media": None}


async def new_job(store: Store, clock: Clock) -> str:
    job, _ = await store.job_create(NewJob("n_" + secrets.token_hex(8), "general",
                                           {"title": "hi"}, 0, clock.now))
    return job.id


async def deliver(store: Store, nid: str, deliveries: list[Delivery], *,
                  due: bool = False) -> Any:
    return await store.deliver(nid, deliveries, category="general", expires_at=None,
                               collapse_key=None, policy=policy, due=due)


async def claim_all(store: Store, owner: str, limit: int) -> list[DueEntry]:
    """Claim until the queue has nothing due for this client (bounded)."""
    got: list[DueEntry] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    for _ in range(1000):
        part = await store.due_claim(owner, lease=LEASE, limit=limit)
        if not part:
            return got
        got += part
        assert loop.time() < deadline, "claiming did not finish"
    raise AssertionError("claiming did not finish")


@on_redis
async def test_racing_clients_get_each_due_entry_once(open_store: OpenStore,
                                                      clock: Clock) -> None:
    stores = [await open_store() for _ in range(3)]
    nid = await new_job(stores[0], clock)
    users = [f"u{i:03d}" for i in range(300)]
    await deliver(stores[0], nid, [Delivery(u, "held", due_at=clock.now + 60) for u in users])
    clock.advance(60)
    got = await asyncio.gather(*(claim_all(s, f"node{i}", 7) for i, s in enumerate(stores)))
    claimed = [e.user for part in got for e in part]
    assert sorted(claimed) == users  # every entry, each to exactly one client
    assert all(e.notification == nid and e.due == clock.now for part in got for e in part)


@on_redis
async def test_racing_firings_deliver_once_and_count_exactly(open_store: OpenStore,
                                                             clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    nid = await new_job(one, clock)
    users = [f"u{i:03d}" for i in range(150)]  # more than one pipeline of scripts
    await deliver(one, nid, [Delivery(u, "held", due_at=clock.now + 10) for u in users])
    clock.advance(10)
    # both nodes fire every entry at once (as two nodes would after a lost lease)
    fire = [Delivery(u, "pushed", fields(), edges=None) for u in users]
    a, b = await asyncio.gather(deliver(one, nid, fire, due=True),
                                deliver(two, nid, fire, due=True))
    assert sorted(a.recorded + b.recorded) == users
    assert sorted(c.user for c in a.changes + b.changes) == users
    for u in (users[0], users[77], users[-1]):
        assert await ids_in(one, u) == [nid] and await one.unread(u) == 1
    job = await two.job_get(nid)
    assert job is not None and job.outcomes == {"pushed": len(users)}
    clock.advance(2 * LEASE)
    assert await one.due_claim("late", lease=LEASE, limit=1000) == []  # all fired: gone


@on_redis
async def test_a_held_user_fired_while_its_chunk_is_replayed_gets_it_once(
        open_store: OpenStore, clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    nid = await new_job(one, clock)
    held = [Delivery("ann", "held", due_at=clock.now), Delivery("bob", "pushed", fields(),
                                                                 edges=None)]
    await deliver(one, nid, held)
    (entry,) = await one.due_claim("a", lease=LEASE, limit=10)
    # "a" fires ann while "b", which took over the job, replays the same chunk
    await asyncio.gather(deliver(one, nid, [Delivery("ann", "pushed", fields(), edges=None)],
                                 due=True),
                         deliver(two, nid, held))
    assert entry.user == "ann"
    assert await ids_in(one, "ann") == [nid] and await ids_in(one, "bob") == [nid]
    job = await one.job_get(nid)
    assert job is not None and job.outcomes == {"pushed": 2}
    clock.advance(2 * LEASE)
    # whatever the replay put back fires into a user already served: nothing more
    for e in await two.due_claim("c", lease=LEASE, limit=10):
        late = await deliver(two, nid, [Delivery(e.user, "pushed", fields(), edges=None)],
                             due=True)
        assert late.recorded == []
    assert await one.unread("ann") == 1


@on_redis
async def test_a_chunk_in_flight_when_its_job_is_cancelled_queues_nobody(
        open_store: OpenStore, clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    nid = await new_job(one, clock)
    await one.job_claim("a", lease=LEASE)
    assert (await two.job_cancel(nid)) is not None
    # "a" had read the chunk before the cancel and writes it after
    await deliver(one, nid, [Delivery(f"u{i}", "held", due_at=clock.now + 5)
                             for i in range(40)])
    clock.advance(5)
    assert await two.due_claim("b", lease=LEASE, limit=100) == []


@on_redis
async def test_a_replayed_chunk_across_pipelines_sends_nobody_anything_twice(
        open_store: OpenStore, clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    nid = await new_job(one, clock)
    users = [f"u{i:03d}" for i in range(250)]
    chunk = [Delivery(u, "pushed", fields(), edges=None) for u in users]
    first = await deliver(one, nid, chunk[:130])  # the node died after 130 users
    again = await deliver(two, nid, chunk)  # another node replays the whole chunk
    assert first.recorded == users[:130]
    assert again.recorded == users[130:]  # in the chunk's order
    assert [c.user for c in again.changes] == users[130:]
    job = await one.job_get(nid)
    assert job is not None and job.outcomes == {"pushed": 250}
    pushes = await two.recent_pushes(users, "general", clock.now - 1)
    assert pushes == {u: [clock.now] for u in users}


async def test_a_chunk_cut_short_by_redis_going_down_is_finished_once(
        redis_factory: RedisFactory, clock: Clock) -> None:
    server = redis_factory.server(appendonly=True, appendfsync="always")
    store = RedisStore(server.url, clock=clock, timeout=1.0)
    await store.open()
    try:
        nid = await new_job(store, clock)
        users = [f"u{i:03d}" for i in range(200)]
        chunk = [Delivery(u, "pushed", fields(), edges=None) for u in users]
        await deliver(store, nid, chunk[:120])
        server.kill()  # SIGKILL: what was acknowledged was fsynced
        with pytest.raises(Unavailable):
            await deliver(store, nid, chunk)
        server.start()  # same port and folder: the AOF is replayed
        again = await deliver(store, nid, chunk)  # the sender replays the chunk
        assert again.recorded == users[120:]
        for u in (users[0], users[119], users[120], users[-1]):
            assert await ids_in(store, u) == [nid] and await store.unread(u) == 1
        job = await store.job_get(nid)
        assert job is not None and job.outcomes == {"pushed": 200}
    finally:
        await store.close()


@on_redis
async def test_a_firing_that_finds_its_user_served_drops_the_entry(
        open_store: OpenStore, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = await open_store(), await open_store()
    nid = await new_job(one, clock)
    await deliver(one, nid, [Delivery("ann", "held", due_at=clock.now)])
    assert [e.user for e in await two.due_claim("b", lease=LEASE, limit=10)] == ["ann"]

    async def lost(*args: Any) -> None:
        raise Unavailable("store unavailable")

    # "b" delivers ann, then loses Redis before it drops her entry
    monkeypatch.setattr(two, "_after_deliver", lost)
    with pytest.raises(Unavailable):
        await deliver(two, nid, [Delivery("ann", "pushed", fields(), edges=None)], due=True)
    clock.advance(LEASE)
    assert [e.user for e in await one.due_claim("a", lease=LEASE, limit=10)] == ["ann"]
    # "a" decides "held" again (quiet hours began meanwhile): ann was served, so
    # nothing is recorded, and the entry goes for good rather than firing forever
    late = await deliver(one, nid, [Delivery("ann", "held", due_at=clock.now + 3600)],
                         due=True)
    assert late.recorded == []
    clock.advance(2 * 3600)
    assert await one.due_claim("c", lease=LEASE, limit=10) == []
    assert await ids_in(one, "ann") == [nid] and await one.unread("ann") == 1
