"""Builders for inbox tests at the store level: notifications, sends, what a change published.

Used by ``tests/store/test_inbox_contract.py`` and by any module that drives a
store's inbox directly (e.g. on the ``support.stores`` fixture).
"""

from __future__ import annotations

import secrets
from typing import Any

from tidings.store.base import HistoryPolicy, NotifyResult, Store, UserChange

__all__ = ["POLICY", "ids_in", "note", "payload", "policy", "send"]

POLICY = HistoryPolicy(100, 86400.0)


def policy(topic: str) -> HistoryPolicy:
    return POLICY


def note(title: str = "hello", *, category: str = "general", **extra: Any) -> dict[str, Any]:
    """A notification as the pipeline hands it to the store (fresh id)."""
    return {"id": "n_" + secrets.token_hex(8), "title": title, "body": "", "data": None,
            "category": category, "priority": "normal", "media": None, **extra}


async def send(store: Store, users: list[str], *, ttl: float | None = None,
               collapse_key: str | None = None, key: str | None = None,
               **fields: Any) -> NotifyResult:
    return await store.notify(users, note(**fields), ttl=ttl, collapse_key=collapse_key,
                              policy=policy, idempotency_key=key)


async def ids_in(store: Store, user: str) -> list[str]:
    page = await store.inbox(user, limit=100)
    return [i.fields["id"] for i in page.items]


def payload(change: UserChange, topic: str) -> dict[str, Any]:
    (pub,) = [p for p in change.publications if p.topic == topic]
    data = pub.data()
    assert isinstance(data, dict)
    return data
