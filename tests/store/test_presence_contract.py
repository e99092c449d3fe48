"""The presence contract (``tidings.store.contracts.presence.PresenceStore``), per backend.

On the one ``store`` / ``open_store`` fixture of ``support/stores.py``. A store
whose ``shared_presence`` is True (Redis, Redis Cluster) keeps every node's
device entries: two stores over the same data stand for two nodes. A store
without it (SQLite: one node keeps its devices in memory) must say so and
refuse the calls; the tests of shared entries run on the backends that share
(no test skips: a skip fails the suite under CI).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from support.stores import Clock, OpenStore
from tidings.store.base import Store

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures


SHARING = ["redis", "redis-cluster"]  # the backends whose shared_presence is True
shared_only = pytest.mark.parametrize("open_store", SHARING, indirect=True)


async def two_nodes(open_store: OpenStore) -> tuple[Store, Store]:
    """Two stores over the same data (two nodes' views) of a store that shares presence."""
    store = await open_store()
    assert store.shared_presence, "run on a backend of SHARING only"
    return store, await open_store()


async def test_shared_presence_says_whether_the_store_keeps_presence(store: Store) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.presence_put("alice", "n1/phone", {"device": "phone"}, 30),
        lambda: store.presence_list("alice"),
        lambda: store.presence_remove("alice", "n1/phone"),
    ]
    if store.shared_presence:
        assert [await call() for call in calls] == [1, [{"device": "phone"}], 0]
    else:  # the node keeps presence itself; the store must not pretend to
        for call in calls:
            with pytest.raises(NotImplementedError):
                await call()


@shared_only
async def test_presence_is_shared_and_expires(open_store: OpenStore, clock: Clock) -> None:
    """Two nodes' device entries for one user; a node that stops refreshing (killed)
    loses its entries within the ttl."""
    store, other = await two_nodes(open_store)
    assert await store.presence_list("alice") == []
    assert await store.presence_put("alice", "n1/phone", {"device": "phone"}, 30) == 1
    assert await other.presence_put("alice", "n2/laptop", {"device": "laptop"}, 30) == 2
    assert await other.presence_put("bob", "n2/tv", {"device": "tv"}, 30) == 1
    assert sorted(d["device"] for d in await store.presence_list("alice")) == [
        "laptop", "phone"]
    clock.now += 20
    assert await store.presence_put("alice", "n1/phone", {"device": "phone"}, 30) == 2
    clock.now += 15  # n2 stopped refreshing 35 s ago: its laptop is gone
    assert await other.presence_list("alice") == [{"device": "phone"}]
    assert await other.presence_list("bob") == []
    assert await store.presence_remove("alice", "n1/phone") == 0
    assert await store.presence_remove("alice", "never") == 0
    assert await store.presence_list("alice") == []


@shared_only
async def test_a_refresh_replaces_the_info_and_counts_once(open_store: OpenStore) -> None:
    store, other = await two_nodes(open_store)
    assert await store.presence_put("alice", "n1/phone", {"device": "phone", "v": 1}, 30) == 1
    assert await store.presence_put("alice", "n1/phone", {"device": "phone", "v": 2}, 30) == 1
    assert await other.presence_list("alice") == [{"device": "phone", "v": 2}]


@shared_only
async def test_an_entry_lives_exactly_its_ttl(open_store: OpenStore, clock: Clock) -> None:
    """Gone once ``ttl`` seconds of the store's clock passed without a refresh, from
    lists and from the counts the other calls return."""
    store, other = await two_nodes(open_store)
    await store.presence_put("alice", "n1/phone", {"device": "phone"}, 30)
    clock.advance(10)
    await store.presence_put("alice", "n1/tablet", {"device": "tablet"}, 30)
    clock.advance(19.9)
    assert len(await other.presence_list("alice")) == 2
    clock.advance(0.1)  # the phone is exactly 30 s old
    assert await other.presence_list("alice") == [{"device": "tablet"}]
    assert await other.presence_put("alice", "n2/laptop", {"device": "laptop"}, 30) == 2
    assert await other.presence_remove("alice", "n2/laptop") == 1


@shared_only
async def test_users_never_mix(open_store: OpenStore) -> None:
    """User names that look like key syntax or differ only by escaping stay apart."""
    store, other = await two_nodes(open_store)
    users = ["a", "a}b", "a%7Db", "{u:a}", "u:a", "ü ß/#+"]
    for n, user in enumerate(users):
        assert await store.presence_put(user, "n1/d", {"device": f"d{n}"}, 30) == 1
    for n, user in enumerate(users):
        assert await other.presence_list(user) == [{"device": f"d{n}"}]
    assert await other.presence_remove("a}b", "n1/d") == 0
    assert await store.presence_list("a") == [{"device": "d0"}]
    assert await store.presence_list("a%7Db") == [{"device": "d2"}]


@shared_only
async def test_many_puts_in_one_call_count_as_each_would(open_store: OpenStore) -> None:
    """presence_put_many: each entry as presence_put would, in order (counts after
    each), across users (on a cluster, across slots)."""
    store, other = await two_nodes(open_store)
    entries: list[tuple[str, str, dict[str, Any], float]] = [
               ("alice", "n1/phone", {"device": "phone"}, 30.0),
               ("bob", "n1/tv", {"device": "tv"}, 30.0),
               ("alice", "n1/laptop", {"device": "laptop"}, 30.0),
               ("alice", "n1/phone", {"device": "phone", "v": 2}, 30.0)]
    assert await store.presence_put_many(entries) == [1, 1, 2, 2]
    assert sorted(d["device"] for d in await other.presence_list("alice")) == [
        "laptop", "phone"]
    assert await other.presence_list("bob") == [{"device": "tv"}]
    assert await store.presence_put_many([]) == []
