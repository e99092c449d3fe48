"""Paging a store's audience selection to the end, checking each page's promises
(shared by tests/store/test_audience_contract.py and test_redis_store.py)."""

from __future__ import annotations

from tidings.store.base import Store
from tidings.store.contracts.audience import AudienceQuery

__all__ = ["everyone"]


async def everyone(store: Store, query: AudienceQuery, limit: int) -> list[str]:
    """Every selected user, page by page (asserting what each page promises)."""
    out: list[str] = []
    cursor: str | None = None
    for _ in range(100_000):  # bounded: each page moves the cursor forward
        page = await store.audience_page(query, cursor=cursor, limit=limit)
        assert len(page.users) <= limit
        assert page.users == sorted(page.users)
        if out and page.users:
            assert page.users[0] > out[-1]
        out += page.users
        if page.next is None:
            return out
        assert cursor is None or page.next > cursor
        cursor = page.next
    raise AssertionError("paging never ended")
