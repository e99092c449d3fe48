"""Notifies/s to one user as its unread count grows, and what that does to others (issue 10).

The probe that found it: "notifies to one user fall from 795/s to 103/s as
unread grows to 50k, and an unrelated publish's p50 goes from 11 to 69 ms"
(each notify counted every unread item on the store's single thread).

For each ``--unread`` level this makes a fresh data folder whose user
``target`` already has that many unread items (written straight into the
SQLite file, in one transaction: filling it through the API would take as
long as the problem it measures), starts ``tidings serve`` on free loopback
ports, and then, at the same time:

* sends ``--notifies`` notifications to ``target`` through ``POST /v1/notify``
  with ``--concurrency`` requests in flight, and
* publishes to an unrelated topic through ``POST /v1/publish``, one request
  at a time, recording each round trip.

It prints notifies/s and the publish p50 / p99 per level. Every phase is
bounded in count and by ``--max-seconds``; the node is stopped by its PID.
The code measured is whatever ``tidings`` imports (PYTHONPATH picks an older
checkout for a before / after comparison). Benchmarks measure; nothing here
asserts a figure.

    python bench/inbox.py                          # 0 and 50,000 unread
    python bench/inbox.py --unread 0 5000 --notifies 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from notify import API_KEY, Server, free_port

import tidings
from tidings.config import NotifySettings
from tidings.store.sqlite import SqliteStore

__all__ = ["main"]


async def prepare(folder: Path, unread: int) -> None:
    """The store's own schema, then ``unread`` items for ``target`` in one transaction."""
    store = SqliteStore(folder)
    await store.open()
    await store.close()
    now = int(time.time() * 1000)
    with sqlite3.connect(folder / "tidings.sqlite3") as db:
        fields = orjson.dumps({"title": "filler", "body": "", "data": None,
                               "category": "general", "priority": "normal", "media": None,
                               "ts": now})
        db.executemany(
            "INSERT INTO inbox (user, id, created, expires, collapse_key, fields)"
            " VALUES ('target', ?, ?, NULL, NULL, ?)",
            ((f"n_fill{i:08d}", now, fields) for i in range(unread)))
        counted = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'inbox_counts'"
                             ).fetchone()
        if counted:  # a store that keeps counters: count once, as it does on upgrade
            db.execute("DELETE FROM inbox_counts")
            db.execute("INSERT INTO inbox_counts (user, unread, total) SELECT user,"
                       " SUM(read = 0 AND archived = 0), COUNT(*) FROM inbox GROUP BY user")


async def run_level(unread: int, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tidings-inbox-bench-") as tmp:
        folder = Path(tmp)
        await prepare(folder, unread)
        if hasattr(NotifySettings(), "max_inbox"):  # not in a checkout from before the cap
            os.environ["TIDINGS_NOTIFY_MAX_INBOX"] = str(args.max_inbox)
        server = Server(free_port(), free_port(), tmp)
        server.start()
        try:
            return await measure(f"http://127.0.0.1:{server.api_port}", unread, args)
        finally:
            server.stop()


async def measure(api: str, unread: int, args: argparse.Namespace) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    deadline = time.monotonic() + args.max_seconds
    done = asyncio.Event()
    publish_ms: list[float] = []
    sent = 0
    errors = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        async def publisher() -> None:
            nonlocal errors
            while not done.is_set() and time.monotonic() < deadline:
                t = time.perf_counter()
                async with http.post(api + "/v1/publish",
                                     json={"topic": "other/feed", "data": {"x": 1}}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                publish_ms.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(args.publish_gap)

        async def notifier() -> None:
            nonlocal sent, errors
            while sent < args.notifies and time.monotonic() < deadline:
                sent += 1
                async with http.post(api + "/v1/notify",
                                     json={"users": ["target"], "title": "n"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1

        # the publisher alone first: its baseline on this machine, this node
        base_end = time.monotonic() + args.baseline_seconds
        baseline: list[float] = []
        while time.monotonic() < base_end:
            t = time.perf_counter()
            async with http.post(api + "/v1/publish",
                                 json={"topic": "other/feed", "data": {"x": 1}}) as r:
                await r.read()
            baseline.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(args.publish_gap)
        pub_task = asyncio.get_running_loop().create_task(publisher())
        start = time.perf_counter()
        await asyncio.gather(*(notifier() for _ in range(args.concurrency)))
        seconds = time.perf_counter() - start
        done.set()
        await pub_task
        async with http.get(api + "/v1/users/target/unread") as r:
            final = (await r.json())["unread"]
    during = sorted(publish_ms) or [0.0]
    return {"unread": unread, "notifies": sent, "seconds": seconds,
            "notifies_per_s": sent / seconds if seconds else 0.0,
            "publish_p50_idle_ms": statistics.median(baseline) if baseline else 0.0,
            "publish_p50_ms": statistics.median(during),
            "publish_p99_ms": during[min(len(during) - 1, int(len(during) * 0.99))],
            "errors": errors, "final_unread": final}


async def bench(args: argparse.Namespace) -> int:
    print(f"tidings from {Path(tidings.__file__).parent}", file=sys.stderr)
    rows = []
    for unread in args.unread:
        print(f"level: {unread} unread ...", file=sys.stderr)
        rows.append(await run_level(unread, args))
    print(f"{'unread':>8} {'notifies':>9} {'notif/s':>8} {'pub p50 idle':>13}"
          f" {'pub p50':>8} {'pub p99':>8} {'errors':>6} {'unread after':>12}")
    for r in rows:
        print(f"{r['unread']:>8} {r['notifies']:>9} {r['notifies_per_s']:>8.0f}"
              f" {r['publish_p50_idle_ms']:>11.1f}ms {r['publish_p50_ms']:>6.1f}ms"
              f" {r['publish_p99_ms']:>6.1f}ms {r['errors']:>6} {r['final_unread']:>12}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--unread", type=int, nargs="+", default=[0, 50_000],
                   help="unread items the target user starts with, one run per value")
    p.add_argument("--notifies", type=int, default=3000, help="notifications per level")
    p.add_argument("--concurrency", type=int, default=16, help="notify requests in flight")
    p.add_argument("--publish-gap", type=float, default=0.01,
                   help="seconds between the unrelated publishes")
    p.add_argument("--baseline-seconds", type=float, default=2.0,
                   help="the publisher alone before the notifies")
    p.add_argument("--max-inbox", type=int, default=100_000,
                   help="notify.max_inbox for the node (above the fill: nothing pruned)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="bound on each level")
    args = p.parse_args(argv)
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
