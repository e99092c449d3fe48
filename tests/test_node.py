"""Node: a bus that drops or repeats publications never costs a subscriber one.

Redis pub/sub is a doorbell: it can drop. These tests put a bus in front of
the node that loses and duplicates publications on purpose (the failure the
cluster tests provoke with CLIENT KILL), and check the subscriber still sees
every offset exactly once, in order, filled from the store's history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import WAIT
from tidings.bus.memory import MemoryBus
from tidings.config import HistorySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication


class LossyBus(MemoryBus):
    """Drops the publications whose sequence numbers are in ``drop``; repeats ``dup``."""

    def __init__(self, drop: set[int], dup: set[int]) -> None:
        super().__init__()
        self.drop, self.dup = drop, dup

    async def publish(self, publication: Publication, *, announced: bool = False) -> None:
        if publication.seq in self.drop:
            return
        await super().publish(publication)
        if publication.seq in self.dup:
            await super().publish(publication)


class Sink:
    wire = "raw"

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.done = asyncio.Event()
        self.want = 0

    restricted = True  # the hub asks may_see of every topic

    def may_see(self, topic: str) -> bool:
        return True

    def deliver(self, pub: Publication, data: bytes) -> None:
        self.seqs.append(pub.seq)
        if len(self.seqs) >= self.want:
            self.done.set()


async def make(tmp_path: Path, bus: MemoryBus) -> Node:
    node = Node("n", SqliteStore(tmp_path), bus, HistorySettings(), Metrics())
    node.hub.register_wire("raw", lambda p: p.payload)
    await node.start()
    return node


async def test_gaps_are_filled_from_history_and_duplicates_dropped(tmp_path: Path) -> None:
    bus = LossyBus(drop={3, 4, 9}, dup={2, 6})
    node = await make(tmp_path, bus)
    sink = Sink()
    sink.want = 10
    try:
        await node.subscribe("t", sink)
        for i in range(10):
            await node.publish("t", str(i).encode(), PayloadKind.JSON)
        await asyncio.wait_for(sink.done.wait(), WAIT)
        await asyncio.sleep(0)
        assert sink.seqs == list(range(1, 11))
        assert node.metrics.get("tidings_bus_gaps_total") == 2  # 3-4 and 9
        # the repeat of 2 arrives in order and is dropped on sight; the repeat
        # of 6 arrives while 3-4 are being filled and is dropped by the fill
        assert node.metrics.get("tidings_bus_duplicates_total") >= 1
    finally:
        await node.close()


async def test_resync_after_reconnect_delivers_what_was_missed(tmp_path: Path) -> None:
    bus = LossyBus(drop=set(range(3, 6)), dup=set())
    node = await make(tmp_path, bus)
    sink = Sink()
    sink.want = 5
    try:
        await node.subscribe("t", sink)
        for i in range(5):  # 3, 4 and 5 are lost with no later message to show the gap
            await node.publish("t", str(i).encode(), PayloadKind.JSON)
        assert sink.seqs == [1, 2]
        node.resync()  # what the bus calls after reconnecting
        await asyncio.wait_for(sink.done.wait(), WAIT)
        assert sink.seqs == [1, 2, 3, 4, 5]
    finally:
        await node.close()
