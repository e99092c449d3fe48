"""A node for pipeline tests: a real :class:`~tidings.node.Node` on the memory bus and
SQLite in a folder, with a ``raw`` wire (subscribers get the payload bytes), no edge.

Used by ``tests/test_notify.py``, ``tests/test_sending.py`` and
``tests/test_variants.py``; the last two take the fixtures ``clock`` (a
:class:`~support.clock.FakeClock`) and ``node`` (a node on it) by importing
``fake_clock`` and ``clocked_node``, and build their notifier with :func:`notifier_of`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from support.clock import FakeClock
from tidings.bus.memory import MemoryBus
from tidings.clock import Clock
from tidings.config import AudienceSettings, HistorySettings, NotifySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.notify import Notifier
from tidings.preferences import Rules
from tidings.store.sqlite import SqliteStore

__all__ = ["clocked_node", "fake_clock", "memory_node", "notifier_of"]


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


@pytest.fixture(name="clock")
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="node")
async def clocked_node(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Node]:
    """A :func:`memory_node` in ``tmp_path`` on the test's fake ``clock``."""
    async with memory_node(tmp_path, clock) as n:
        yield n


def notifier_of(node: Node, page_size: int = 2) -> Notifier:
    """A notifier (and its sender) on ``node`` with default settings and rules,
    sending audiences in pages of ``page_size`` users (small: several chunks)."""
    return Notifier(node, NotifySettings(), AudienceSettings(page_size=page_size),
                    Rules.default())
