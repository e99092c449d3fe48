"""A node for pipeline tests: a real :class:`~tidings.node.Node` on the memory bus and
SQLite in a folder, with a ``raw`` wire (subscribers get the payload bytes), no edge.

Used by ``tests/test_notify.py`` and ``tests/test_sending.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tidings.bus.memory import MemoryBus
from tidings.clock import Clock
from tidings.config import HistorySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.store.sqlite import SqliteStore

__all__ = ["memory_node"]


@asynccontextmanager
async def memory_node(folder: Path, clock: Clock | None = None) -> AsyncIterator[Node]:
    """A started node (closed on exit); ``clock`` is its and its store's time."""
    store = SqliteStore(folder) if clock is None else SqliteStore(folder, clock=clock.now)
    n = Node("n", store, MemoryBus(), HistorySettings(), Metrics(), clock)
    n.hub.register_wire("raw", lambda p: p.payload)
    await n.start()
    try:
        yield n
    finally:
        await n.close()
