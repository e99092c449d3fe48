"""Publish throughput to personal topics, through one node (issue 14, scope 4).

    python bench/memory_topics.py                       # history.size 100 and 0
    PYTHONPATH=/work/wt/base/server python bench/memory_topics.py   # another checkout

In one process: a node on SQLite (a temporary folder) and the memory bus,
``--topics`` subscribers each on its own topic (``personal/{i}``), then
``--rounds`` rounds of one message to every topic, each round published
concurrently (as an edge's many connections would). Prints messages per
second and the process's CPU time per message (both threads: steadier than
wall time on a shared machine) for each history size given: 100 keeps history (a store write per
message), 0 keeps none (a memory-only topic: offsets from a reserved block).
Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import uvloop

from tidings.bus.memory import MemoryBus
from tidings.config import HistorySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication


class Counter:
    """A subscriber that counts what it is handed."""

    wire = "raw"
    restricted = False

    def __init__(self) -> None:
        self.n = 0

    def may_see(self, topic: str) -> bool:
        return True

    def deliver(self, pub: Publication, data: bytes) -> None:
        self.n += 1


async def run(size: int, topics: int, rounds: int) -> tuple[float, float]:
    node = Node("bench", SqliteStore(Path(tempfile.mkdtemp(prefix="tidings-mem-"))),
                MemoryBus(), HistorySettings(size=size), Metrics())
    node.hub.register_wire("raw", lambda p: p.payload)
    await node.start()
    subs = [Counter() for _ in range(topics)]
    try:
        for i, s in enumerate(subs):
            await node.subscribe(f"personal/{i}", s)
        names = [f"personal/{i}" for i in range(topics)]
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await asyncio.gather(*[node.publish(t, b'{"v":1}', PayloadKind.JSON)
                                   for t in names])
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert sum(s.n for s in subs) == topics * rounds
        return topics * rounds / took, cpu / (topics * rounds)
    finally:
        await node.close()


async def main(args: argparse.Namespace) -> None:
    for size in args.sizes:
        rate, cpu = await run(size, args.topics, args.rounds)
        print(f"history.size={size:<4} topics={args.topics} rounds={args.rounds} "
              f"messages/s={rate:,.0f} CPU/message={cpu * 1e6:.0f} µs", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--topics", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 0])
    uvloop.run(main(ap.parse_args()))
