"""The store's lifecycle (``tidings.store.base.Store``: open, close, ping), per backend.

Sweeping is tested with the inbox (``test_inbox_contract.py``), whose items it
expires; reopening with each concern (what it keeps across a reopen).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from support.stores import KEEP
from tidings.errors import Unavailable
from tidings.store.base import MqttSessionState, QueuedMessage, Store
from tidings.types import PayloadKind

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures


async def test_ping_when_open(store: Store) -> None:
    assert await store.ping() is True


async def test_close_is_idempotent_and_closed_store_stores_nothing(store: Store) -> None:
    await store.close()
    await store.close()
    assert await store.ping() is False
    with pytest.raises(Unavailable):
        await store.publish("t", b"1", PayloadKind.JSON, retain=False, policy=KEEP)


async def test_a_closed_store_answers_no_concern(store: Store) -> None:
    """Every contract's calls raise ``Unavailable`` once closed: none claims success."""
    await store.close()
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.history("t", None, 10),
        lambda: store.latest("t"),
        lambda: store.retained("#"),
        lambda: store.notify(["alice"], {"id": "n_1", "category": "c"}, ttl=None,
                             collapse_key=None, policy=lambda topic: KEEP),
        lambda: store.unread("alice"),
        lambda: store.mark("alice", "read", None, device="d", policy=lambda topic: KEEP),
        lambda: store.mqtt_save("c1", MqttSessionState(expiry=1)),
        lambda: store.mqtt_session("c1"),
        lambda: store.mqtt_enqueue([("c1", QueuedMessage("t", b"x", 1))], limit=10),
        lambda: store.sweep(policy=lambda topic: KEEP, limit=10),
    ]
    for call in calls:
        with pytest.raises(Unavailable):
            await call()
