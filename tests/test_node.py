"""Node: a bus that drops or repeats publications never costs a subscriber one.

Redis pub/sub is a doorbell: it can drop. These tests put a bus in front of
the node that loses and duplicates publications on purpose (the failure the
cluster tests provoke with CLIENT KILL), and check the subscriber still sees
every offset exactly once, in order, filled from the store's history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from conftest import WAIT
from tidings.bus.memory import MemoryBus
from tidings.config import HistoryRule, HistorySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.store.base import PublishResult
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication, parse_offset


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


async def test_fan_out_reaches_exact_and_wildcard_subscribers_and_nobody_else(
        tmp_path: Path) -> None:
    """Stored publications fanned out on the memory bus (a send's inbox changes):
    each reaches the local subscribers whose filters match, exact or wildcard,
    in order; those nobody here follows go nowhere. A topic followed again
    after publications nobody followed starts from its next one: nothing of
    what went by unfollowed is filled in as a "gap"."""
    node = await make(tmp_path, MemoryBus())
    store = node.store
    exact, wild, later = Sink(), Sink(), Sink()
    exact.want, wild.want, later.want = 2, 1, 1

    async def stored(topic: str) -> Publication:
        result = await store.publish(topic, b"{}", PayloadKind.JSON, retain=False,
                                     policy=node.policy(topic))
        return result.publication

    try:
        await node.subscribe("u/1/n", exact)
        await node.subscribe("w/+/n", wild)
        await node.fan_out([await stored("u/1/n"), await stored("u/2/n"),
                            await stored("w/7/n"), await stored("u/1/n")])
        await asyncio.wait_for(exact.done.wait(), WAIT)
        await asyncio.wait_for(wild.done.wait(), WAIT)
        assert exact.seqs == [1, 2]
        assert wild.seqs == [1]
        await node.unsubscribe("u/1/n", exact)
        await node.fan_out([await stored("u/1/n"), await stored("u/1/n")])  # 3, 4
        await node.subscribe("u/1/n", later)
        await node.fan_out([await stored("u/1/n")])
        await asyncio.wait_for(later.done.wait(), WAIT)
        assert later.seqs == [5]
        later.want = 2
        later.done.clear()
        await node.fan_out([await stored("u/1/n")])
        await asyncio.wait_for(later.done.wait(), WAIT)
        assert later.seqs == [5, 6]
        assert exact.seqs == [1, 2]
        assert node.metrics.get("tidings_bus_gaps_total") == 0
    finally:
        await node.close()


# -- memory-only topics -------------------------------------------------------------------


class CountingStore(SqliteStore):
    """The real SQLite store, counting the topic writes the node asks of it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reservations = 0
        self.publishes = 0

    async def reserve_offsets(self, topic: str, count: int) -> tuple[str, int]:
        self.reservations += 1
        return await super().reserve_offsets(topic, count)

    async def publish(self, *args: Any, **kwargs: Any) -> PublishResult:
        self.publishes += 1
        return await super().publish(*args, **kwargs)


MEMORY = HistorySettings(rules=[HistoryRule("live/#", size=0, ttl=60.0, memory=True)])


async def memory_node(path: Path) -> tuple[Node, CountingStore]:
    store = CountingStore(path)
    node = Node("n", store, MemoryBus(), MEMORY, Metrics())
    node.hub.register_wire("raw", lambda p: p.payload)
    await node.start()
    return node, store


async def test_memory_topic_delivers_live_in_order_without_store_writes(tmp_path: Path) -> None:
    """A memory-only topic: every message reaches the subscriber, in publish order,
    with increasing offsets; the store is asked for offsets once per block and
    writes no message (no history); latest() and since=latest say so."""
    node, store = await memory_node(tmp_path)
    sink = Sink()
    sink.want = 3000
    try:
        await node.subscribe("live/alice", sink)
        offsets = []
        for batch in range(30):  # concurrent publishes to the topic, 100 at a time
            results = await asyncio.gather(*[
                node.publish("live/alice", b"%d" % (batch * 100 + i), PayloadKind.JSON)
                for i in range(100)])
            offsets += [r.publication.offset for r in results]
        await asyncio.wait_for(sink.done.wait(), WAIT)
        seqs = [parse_offset(o)[1] for o in offsets]  # type: ignore[index]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3000
        assert sink.seqs == seqs  # delivered in the order the offsets were given
        assert store.publishes == 0 and store.reservations == 3  # 1024 offsets each
        assert (await node.history("live/alice", None, 10)).items == []
        latest = await node.latest("live/alice")
        assert latest == offsets[-1]
        page = await node.history("live/alice", latest, 10)
        assert page.items == [] and page.complete and page.offset == latest
        assert not (await node.history("live/alice", offsets[0], 10)).complete
    finally:
        await node.close()


async def test_memory_topic_offsets_increase_across_a_restart(tmp_path: Path) -> None:
    """The reserved block lives in the store: after a restart the topic's offsets
    go on from past it (skipping what was reserved but unused), same epoch."""
    node, _ = await memory_node(tmp_path)
    try:
        before = [(await node.publish("live/x", b"1", PayloadKind.JSON)).publication.offset
                  for _ in range(5)]
    finally:
        await node.close()
    node, _ = await memory_node(tmp_path)
    try:
        after = (await node.publish("live/x", b"2", PayloadKind.JSON)).publication.offset
        a, b = parse_offset(before[-1]), parse_offset(after)
        assert a is not None and b is not None and a[0] == b[0] and b[1] > a[1]
    finally:
        await node.close()


async def test_memory_topic_retained_and_idempotent_publishes_keep_order(tmp_path: Path) -> None:
    """A retained publish (or one with an idempotency key) to a memory topic goes
    through the store, which keeps the retained message and the key; offsets
    still increase in publish order and the subscriber gets them in that order."""
    node, store = await memory_node(tmp_path)
    sink = Sink()
    sink.want = 7
    try:
        await node.subscribe("live/r", sink)
        calls = [node.publish("live/r", b"%d" % i, PayloadKind.JSON, retain=i == 3,
                              idempotency_key="k5" if i == 5 else None) for i in range(7)]
        results = await asyncio.gather(*calls)
        seqs = [r.publication.seq for r in results]
        await asyncio.wait_for(sink.done.wait(), WAIT)
        assert seqs == sorted(seqs) and sink.seqs == seqs
        assert store.publishes == 2
        [kept] = await node.retained("live/r")
        assert (kept.payload, kept.offset) == (b"3", results[3].publication.offset)
        again = await node.publish("live/r", b"5", PayloadKind.JSON, idempotency_key="k5")
        assert again.duplicate and again.publication.offset == results[5].publication.offset
    finally:
        await node.close()
