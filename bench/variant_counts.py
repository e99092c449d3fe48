"""The read behind ``GET /v1/notifications/{id}/stats`` per variant on the
embedded store (issue 13): ``variant_counts`` against the grouped scan of the
targets it replaced.

Records one notification's ``--targets`` targets (two variants, live pushes
with inbox items, in chunks of 1,000 as the sender writes them), tracks
``opened`` for a third of them through the store, then times ``--reads``
calls of ``variant_counts`` (the counters the triggers keep) and as many runs
of the grouped scan over ``job_targets`` and ``tracks`` on a second
connection to the same file (what a read cost before the counters).
Benchmarks measure; nothing here asserts a figure. Bounded: the counts are
bounded by the arguments, and the data folder is a temporary one.

    python bench/variant_counts.py                     # 20,000 targets
    python bench/variant_counts.py --targets 100000
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from tidings.store.base import Delivery, HistoryPolicy, NewJob
from tidings.store.sqlite import SqliteStore

_SCAN = (
    ("SELECT variant, state, COUNT(*) FROM job_targets WHERE id = ? AND variant IS NOT NULL"
     " GROUP BY variant, state"),
    ("SELECT j.variant, t.event, COUNT(*) FROM tracks t JOIN job_targets j ON j.id = t.id"
     " AND j.user = t.user WHERE t.id = ? AND j.variant IS NOT NULL GROUP BY j.variant, t.event"),
)


def policy(topic: str) -> HistoryPolicy:
    return HistoryPolicy(10, 3600.0)


def ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1000:.2f} ms, max {max(samples) * 1000:.2f} ms"


async def run(targets: int, reads: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder), clock=time.time)
        await store.open()
        try:
            nid = "n_bench"
            await store.job_create(NewJob(nid, "bench", {"title": "hi"}, targets, time.time()))
            fields = {"title": "hi", "body": "", "data": None, "category": "bench",
                      "priority": "normal", "media": None}
            started = time.perf_counter()
            for first in range(0, targets, 1000):
                await store.deliver(nid, [
                    Delivery(f"u{i}", "pushed", fields, edges=None, variant="AB"[i % 2])
                    for i in range(first, min(first + 1000, targets))],
                    category="bench", expires_at=None, collapse_key=None, policy=policy)
            for i in range(0, targets, 3):
                await store.track(nid, f"u{i}", "opened")
            print(f"set-up: {targets} targets recorded and tracked in "
                  f"{time.perf_counter() - started:.1f} s")
            timed: list[float] = []
            for _ in range(reads):
                t = time.perf_counter()
                counts = await store.variant_counts(nid)
                timed.append(time.perf_counter() - t)
            print(f"variant_counts (counters): {ms(timed)} over {reads} reads; "
                  f"A: {counts['A']['targets']} targets, {counts['A']['opened']} opened")
            scan: list[float] = []
            with sqlite3.connect(store.path) as db:
                for _ in range(reads):
                    t = time.perf_counter()
                    for sql in _SCAN:
                        db.execute(sql, (nid,)).fetchall()
                    scan.append(time.perf_counter() - t)
            print(f"grouped scan of the targets (before): {ms(scan)} over {reads} reads")
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=20_000)
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(max(1, args.targets), max(1, args.reads)))


if __name__ == "__main__":
    main()
