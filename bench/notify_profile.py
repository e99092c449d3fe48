"""Where a targeted send's CPU goes, in process (issue 12 item 8's profile).

A real :class:`~tidings.node.Node` (memory bus, SQLite in a temp folder, the
real clock) with ``--users`` users tagged ``bench`` (each with a
``first_name``: the set-up, not measured), ``--online`` of them subscribed
(a device that keeps nothing, standing in for a WebSocket session:
its notifications and events topics), then one
:meth:`Notifier.notify` to ``{"tags": ["bench"]}`` with a templated title,
sent by ``Sender.step`` to the end. It prints users/s, the CPU time per user
of the event loop's thread and of the store's thread (``time.thread_time``:
steadier than wall time on a shared machine), how late a 5 ms timer woke
meanwhile (the loop's stalls: what a ping waits; the same for 2 s before the
send, the machine's own share), the garbage collector's pauses by
generation (the start-up's objects frozen first, as ``tidings serve`` does;
``--no-freeze`` leaves them), and with ``--profile`` the
top functions of each thread (cProfile, one profiler per thread).

    python bench/notify_profile.py --users 20000
    python bench/notify_profile.py --users 20000 --profile 25
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from memory_topics import Counter

from tidings.bus.memory import MemoryBus
from tidings.config import AudienceSettings, HistorySettings, NotifySettings
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.notify import Notifier
from tidings.preferences import Rules
from tidings.store.base import events_topic, notifications_topic
from tidings.store.sqlite import SqliteStore

__all__ = ["main"]


class ThreadCost:
    """CPU and wall seconds of the store's thread (its group commits, the COMMIT
    included) and, profiling, a cProfile of it."""

    def __init__(self, profile: bool) -> None:
        self.cpu = 0.0
        self.wall = 0.0
        self.profiler = cProfile.Profile() if profile else None

    def wrap(self, store: SqliteStore) -> None:
        commit = store._commit_batch

        def timed(*args: Any) -> None:
            t, w = time.thread_time(), time.perf_counter()
            if self.profiler is not None:
                self.profiler.enable()
            try:
                commit(*args)
            finally:
                if self.profiler is not None:
                    self.profiler.disable()
                self.cpu += time.thread_time() - t
                self.wall += time.perf_counter() - w

        store._commit_batch = timed  # type: ignore[method-assign,assignment]


class GcPauses:
    """The garbage collector's pauses (any thread), by generation: a long one
    stops the event loop as any stall does."""

    def __init__(self) -> None:
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self._started)

    def summary(self) -> str:
        return ", ".join(f"gen{g} {len(p)} x, max {max(p, default=0) * 1000:.1f} ms"
                         for g, p in self.pauses.items())


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    """Wake every 5 ms and note how late each wake-up was: the longest stretch the
    event loop could not answer anything (a ping's wait, less the network)."""
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        stalls.append(time.perf_counter() - t - 0.005)


def top(profiler: cProfile.Profile, n: int) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(n)
    return "\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip())


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tidings-profile-") as folder:
        store = SqliteStore(Path(folder))
        node = Node("bench", store, MemoryBus(), HistorySettings(), Metrics())
        node.hub.register_wire("raw", lambda p: p.payload)
        await node.start()
        if not args.no_freeze:  # as ``tidings serve`` does once started
            gc.collect()
            gc.freeze()
        try:
            users = [f"t{i:06d}" for i in range(args.users)]
            for u in users:
                await store.set_user_tags(u, ["bench"], max_tags=100)
                await store.set_user_attributes(u, {"first_name": u.upper()})
            step = max(1, args.users // max(1, args.online))
            online = users[::step][:args.online]
            devices = [Counter() for _ in online]  # a device that keeps nothing
            for u, d in zip(online, devices, strict=True):  # as a WS session follows a user
                await node.subscribe(notifications_topic(u), d)
                await node.subscribe(events_topic(u), d)
            notifier = Notifier(node, NotifySettings(max_users=args.users),
                                AudienceSettings(), Rules.default())
            notifier.sender.online = lambda: online
            cost = ThreadCost(args.profile > 0)
            cost.wrap(store)
            loop_profile = cProfile.Profile() if args.profile else None
            idle: list[float] = []  # the machine's own stalls, before the send
            stop = asyncio.Event()
            ticking = asyncio.create_task(ticker(idle, stop))
            await asyncio.sleep(2.0)
            stop.set()
            await ticking
            idle.sort()
            stalls: list[float] = []
            stop = asyncio.Event()
            ticking = asyncio.create_task(ticker(stalls, stop))
            pauses = GcPauses()
            gc.callbacks.append(pauses)
            started, cpu = time.perf_counter(), time.thread_time()
            if loop_profile is not None:
                loop_profile.enable()
            result = await notifier.notify({"tags": ["bench"],
                                            "title": "Hello {{first_name|there}}",
                                            "body": "targeted"})
            done = await notifier.sender.step()
            if loop_profile is not None:
                loop_profile.disable()
            wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
            gc.callbacks.remove(pauses)
            stop.set()
            await ticking
            stalls.sort()
            status = await notifier.get(result.id)
            print(f"{done:,} of {result.targets:,} users written ({status['status']}) in "
                  f"{wall:.2f} s: {done / wall:,.0f} users/s; CPU per user: event loop "
                  f"{cpu / done * 1e6:.0f} us, store thread {cost.cpu / done * 1e6:.0f} us "
                  f"(busy {cost.wall / wall:.0%} of the time); "
                  f"devices got {sum(d.n for d in devices):,} publications; the loop "
                  f"stalled p99 {stalls[len(stalls) * 99 // 100] * 1000:.1f} ms, max "
                  f"{stalls[-1] * 1000:.1f} ms (idle before: p99 "
                  f"{idle[len(idle) * 99 // 100] * 1000:.1f} ms, max {idle[-1] * 1000:.1f} ms); "
                  f"garbage collections: "
                  f"{pauses.summary()}")
            if loop_profile is not None and cost.profiler is not None:
                print("\n-- event loop --\n" + top(loop_profile, args.profile))
                print("\n-- store thread --\n" + top(cost.profiler, args.profile))
        finally:
            await node.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=20000, help="tagged users (the audience)")
    p.add_argument("--online", type=int, default=400, help="of them subscribed")
    p.add_argument("--no-freeze", action="store_true",
                   help="leave the start-up's objects to the garbage collector")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print each thread's top N functions (cProfile)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
