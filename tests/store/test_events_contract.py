"""The event log contract (``tidings.store.contracts.events``), per backend:
SQLite, Redis and Redis Cluster through the one ``store`` fixture."""

from __future__ import annotations

import pytest

from support.stores import Clock, OpenStore
from tidings.errors import BadRequest
from tidings.store.base import Store

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures

DAY = 86400.0


def made(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"id": f"e{i:05d}", "type": "opened", "user": f"u{i % 7}"}
            for i in range(start, start + n)]


async def read_all(store: Store, cursor: str | None, limit: int
                   ) -> tuple[list[dict[str, object]], str | None]:
    out: list[dict[str, object]] = []
    for _ in range(1000):  # bounded
        page, nxt = await store.events_since(cursor, limit=limit)
        assert len(page) <= limit
        out += page
        if not page:
            return out, nxt
        cursor = nxt
    raise AssertionError("paging never ended")


async def test_append_then_read_in_order_by_pages(store: Store) -> None:
    assert await store.events_since(None, limit=10) == ([], None)
    await store.events_append(made(5), keep=DAY)
    await store.events_append(made(20, start=5), keep=DAY)
    events, cursor = await read_all(store, None, limit=7)
    assert [e["id"] for e in events] == [f"e{i:05d}" for i in range(25)]
    assert events[0] == {"id": "e00000", "type": "opened", "user": "u0"}
    # nothing new: the same cursor comes back, and a later append follows it
    assert await store.events_since(cursor, limit=10) == ([], cursor)
    await store.events_append(made(2, start=25), keep=DAY)
    page, _ = await store.events_since(cursor, limit=10)
    assert [e["id"] for e in page] == ["e00025", "e00026"]


async def test_a_reader_catches_up_after_a_restart(open_store: OpenStore) -> None:
    store = await open_store()
    await store.events_append(made(10), keep=DAY)
    first, cursor = await store.events_since(None, limit=4)
    await store.events_append(made(3, start=10), keep=DAY)
    await store.close()
    again = await open_store()
    rest, _ = await read_all(again, cursor, limit=100)
    assert [e["id"] for e in first + rest] == [f"e{i:05d}" for i in range(13)]


async def test_retention_drops_old_events(store: Store, clock: Clock) -> None:
    await store.events_append(made(150), keep=3600)
    clock.advance(7200)
    await store.events_append(made(150, start=150), keep=3600)
    events, _ = await read_all(store, None, limit=500)
    ids = [str(e["id"]) for e in events]
    # the new ones are all there and in order; the old ones go (Redis trims by
    # whole stream nodes of 100 entries, so up to 99 of them may stay a while)
    assert ids[-150:] == [f"e{i:05d}" for i in range(150, 300)]
    assert len(ids) <= 150 + 99
    assert ids == sorted(ids)


@pytest.mark.parametrize("cursor", ["nonsense", "-1", "1-2-3", "x" * 100])
async def test_a_malformed_cursor_is_a_bad_request(store: Store, cursor: str) -> None:
    with pytest.raises(BadRequest):
        await store.events_since(cursor, limit=10)
