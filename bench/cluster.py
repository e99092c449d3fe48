"""Cross-node fan-out (issue 7): two Tidings nodes on one Redis against one node.

    python bench/cluster.py                       # 1,000 subscribers, 2 rounds
    python bench/cluster.py --quick               # one round, short windows
    python bench/cluster.py --subscribers 2000 --rounds 3 --embedded
    python bench/cluster.py --node-cpus 0,1 --client-cpus 2,3   # a node per CPU

Setups, each started fresh (its own Redis, flushed):

* ``one-node``: one node with the Redis bus and store, all N subscribers on it;
* ``two-nodes``: two nodes on the same Redis, N/2 subscribers on each. The
  publisher posts to node 1's API, so every publication reaches node 2's
  subscribers only through Redis pub/sub;
* ``embedded`` (``--embedded``): one node on SQLite and the in-process bus, no
  Redis, to show what Redis costs.

Load: N WebSocket subscribers on one topic (bench/loadgen.py), 100-byte
messages published through the HTTP API in a closed loop (at most 16 messages
per subscriber in flight, as bench/harness.py's broadcast scenario). Rounds
alternate between the setups; each keeps its best round.

Figures per setup: deliveries/s; publish-to-deliver latency p50/p99 (at
saturation, so it includes the publishing window); Redis commands per
publication, from ``INFO commandstats`` read just before and just after the
measured window (by command; commands a script runs are counted too); CPU of
each node, of Redis and of the load generator.

CPUs: the nodes share ``--node-cpus`` (default CPU 0: the same CPU budget for
one node and two, so the comparison shows what crossing Redis costs, not what
a second CPU buys); Redis, the publisher and the load generator run on
``--client-cpus`` (default: every other CPU). Benchmarks measure; nothing
here asserts a figure. Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import redis  # noqa: E402
from loadgen import LoadGen, percentiles, raise_nofile  # noqa: E402
from publishers import HttpPublisher, PaceResult, closed_loop  # noqa: E402
from servers import API_KEY, HOST, Tidings, free_port  # noqa: E402

__all__ = ["Options", "main", "run"]

TOPIC = "bench/t"
WINDOW = 16  # messages in flight per subscriber (bench/harness.py's broadcast)
_TICK = os.sysconf("SC_CLK_TCK")
_STARTED: list[Any] = []  # everything with a stop(), stopped at exit at the latest


@dataclass
class Options:
    subscribers: int = 1000
    rounds: int = 2
    warmup: float = 1.0
    measure: float = 3.0
    embedded: bool = False
    node_cpus: tuple[int, ...] = (0,)
    client_cpus: tuple[int, ...] = (1,)
    workers: int = 2
    out: Path | None = None


@dataclass
class Setup:
    name: str
    nodes: int
    redis: bool


def _cpu_ticks(pids: list[int]) -> int:
    """utime + stime of ``pids`` (clock ticks), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


class RedisProc:
    """A ``redis-server`` on a free loopback port, pinned to one CPU, no persistence."""

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH (Debian package redis-server)")
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        # taskset execs, so the PID we hold is redis-server's own
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(self.cpu), binary, "--port", str(self.port), "--bind", HOST,
             "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _STARTED.append(self)
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as c:
                    c.ping()
                    return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def commandstats(self) -> dict[str, int]:
        """Calls per command so far (``INFO commandstats``), without our own INFO."""
        with self.client() as c:
            info = c.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()
                if k != "cmdstat_info"}

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


class RedisNode(Tidings):
    """bench/servers.py's Tidings node, on the Redis bus and store, with its own name."""

    def __init__(self, cpu: int, name: str, redis_url: str) -> None:
        super().__init__(cpu)
        self.node_name = name
        self.redis_url = redis_url

    def command(self) -> tuple[list[str], dict[str, str]]:
        argv, env = super().command()
        env.update({"TIDINGS_BUS_BACKEND": "redis", "TIDINGS_STORE_BACKEND": "redis",
                    "TIDINGS_REDIS_URL": self.redis_url, "TIDINGS_NODE_NAME": self.node_name})
        return argv, env


@dataclass
class Window:
    """Counters at one instant, to subtract."""

    t: float
    received: int
    published: int
    node_ticks: list[int]
    redis_ticks: int
    loadgen_ticks: int
    commands: dict[str, int] = field(default_factory=dict)


def _split(total: int, parts: int) -> list[int]:
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


async def run_setup(setup: Setup, o: Options) -> dict[str, Any]:
    """Start the setup's processes, connect, publish, measure one window; stop them."""
    res: dict[str, Any] = {"setup": setup.name, "nodes": setup.nodes,
                           "subscribers": o.subscribers}
    store: RedisProc | None = None
    nodes: list[Tidings] = []
    lgs: list[LoadGen] = []
    try:
        if setup.redis:
            store = RedisProc(o.client_cpus[0])
            store.start()
        for i in range(setup.nodes):
            cpu = o.node_cpus[i % len(o.node_cpus)]
            node: Tidings = (RedisNode(cpu, f"bench-{i + 1}", store.url) if store is not None
                             else Tidings(cpu))
            nodes.append(node)
            _STARTED.append(node)
            node.start()
        workers = max(1, o.workers // setup.nodes)
        for node, count in zip(nodes, _split(o.subscribers, setup.nodes), strict=True):
            lgs.append(LoadGen(node.endpoint(TOPIC), count, workers=workers,
                               cpus=o.client_cpus, sample_every=16))
        for lg in lgs:
            await lg.start()
        connected = await asyncio.gather(*(lg.connect() for lg in lgs))
        res["ready"] = sum(c.ready for c in connected)
        res["failed"] = sum(c.failed for c in connected)
        if res["ready"] == 0:
            res["note"] = "no subscriber became ready"
            return res
        await _publish_and_measure(nodes, store, lgs, o, res)
        return res
    finally:
        for lg in lgs:
            if lg.pids:
                await lg.finish()
        samples = [s for lg in lgs for s in lg.samples()]
        if samples and "deliveries_per_s" in res:
            res.update(percentiles(samples))
            res["latency_samples"] = len(samples)
        errors = [e for lg in lgs for e in lg.errors()]
        if errors:
            res["errors"] = errors[:5]
        for lg in lgs:
            lg.close()
        for node in nodes:
            node.stop()
            _STARTED.remove(node)
        if store is not None:
            store.stop()
            _STARTED.remove(store)


async def _publish_and_measure(nodes: list[Tidings], store: RedisProc | None,
                               lgs: list[LoadGen], o: Options, res: dict[str, Any]) -> None:
    pub = HttpPublisher(f"http://{HOST}:{nodes[0].api_port}", API_KEY)
    await pub.start()
    pace = PaceResult()

    def received() -> int:
        return sum(lg.received() for lg in lgs)

    def alive() -> int:
        return sum(lg.alive() for lg in lgs)

    def snapshot() -> Window:
        return Window(time.monotonic(), received(), pace.published,
                      [_cpu_ticks([n.pid]) for n in nodes],
                      _cpu_ticks([store.pid]) if store is not None else 0,
                      _cpu_ticks([p for lg in lgs for p in lg.pids]),
                      store.commandstats() if store is not None else {})

    try:
        until = time.monotonic() + o.warmup + o.measure
        task = asyncio.get_running_loop().create_task(closed_loop(
            pub, received, alive, lambda: TOPIC, WINDOW * max(1, alive()), until, pace))
        await _sleep_or_fail(o.warmup, task)
        for lg in lgs:
            lg.measure()
        a = snapshot()
        await _sleep_or_fail(max(0.0, until - time.monotonic()), task)
        b = snapshot()
        await asyncio.wait_for(task, 10)
        dt = b.t - a.t
        published = b.published - a.published
        res["deliveries_per_s"] = round((b.received - a.received) / dt, 1)
        res["publishes_per_s"] = round(published / dt, 1)
        res["node_cpu_pct"] = [round(100.0 * (y - x) / _TICK / dt, 1)
                               for x, y in zip(a.node_ticks, b.node_ticks, strict=True)]
        res["redis_cpu_pct"] = round(100.0 * (b.redis_ticks - a.redis_ticks) / _TICK / dt, 1)
        res["loadgen_cpu_pct"] = round(100.0 * (b.loadgen_ticks - a.loadgen_ticks) / _TICK / dt,
                                       1)
        res["measure_seconds"] = round(dt, 3)
        if store is not None and published:
            per = {k: (b.commands.get(k, 0) - a.commands.get(k, 0)) / published
                   for k in b.commands}
            res["redis_commands_per_publication"] = round(sum(per.values()), 2)
            res["redis_commands_by_name"] = {k: round(v, 2) for k, v in
                                             sorted(per.items(), key=lambda kv: -kv[1])
                                             if v >= 0.01}
        await pub.flush()
        deadline = time.monotonic() + 2.0
        while received() < pace.expected and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        res["published"] = pace.published
        res["undelivered"] = max(0, pace.expected - received())
        res["stalls"] = pace.stalls
        res["publish_errors"] = pub.errors
        if pub.errors:
            res["publish_error"] = pub.last_error
    finally:
        await pub.close()


async def _sleep_or_fail(seconds: float, task: asyncio.Task[None]) -> None:
    """Sleep, but surface a publisher that died meanwhile."""
    done, _ = await asyncio.wait([task], timeout=seconds)
    if done:
        task.result()


async def run(o: Options) -> dict[str, Any]:
    setups = [Setup("one-node", 1, True), Setup("two-nodes", 2, True)]
    if o.embedded:
        setups.append(Setup("embedded", 1, False))
    best: dict[str, dict[str, Any]] = {}
    for r in range(o.rounds):
        for setup in setups:
            res = await run_setup(setup, o)
            print(f"round {r + 1} {setup.name}: {res.get('deliveries_per_s', '-')} deliveries/s"
                  f" p50 {res.get('p50_ms')} ms", flush=True)
            if res.get("deliveries_per_s", -1) > best.get(setup.name, {}).get(
                    "deliveries_per_s", -1):
                best[setup.name] = res
    return {"options": {"subscribers": o.subscribers, "rounds": o.rounds,
                        "warmup": o.warmup, "measure": o.measure,
                        "node_cpus": list(o.node_cpus), "client_cpus": list(o.client_cpus),
                        "workers": o.workers},
            "results": [best[s.name] for s in setups if s.name in best]}


def table(record: dict[str, Any]) -> str:
    lines = [f"{'setup':<11}{'deliveries/s':>14}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'Redis cmds/pub':>16}{'node CPU %':>14}{'Redis CPU %':>13}"]
    by = {r["setup"]: r for r in record["results"]}
    for r in record["results"]:
        if "deliveries_per_s" not in r:
            lines.append(f"{r['setup']:<11}{r.get('note', r.get('errors', '-'))}")
            continue
        cmds = r.get("redis_commands_per_publication")
        lines.append(f"{r['setup']:<11}{r['deliveries_per_s']:>14,.0f}"
                     f"{r.get('p50_ms') or 0:>9.1f}{r.get('p99_ms') or 0:>9.1f}"
                     f"{'-' if cmds is None else f'{cmds:.2f}':>16}"
                     f"{'+'.join(f'{c:.0f}' for c in r['node_cpu_pct']):>14}"
                     f"{r['redis_cpu_pct']:>13.0f}")
    for r in record["results"]:
        if r.get("redis_commands_by_name"):
            lines.append(f"{r['setup']} Redis commands per publication: "
                         + ", ".join(f"{k} {v}" for k, v in r["redis_commands_by_name"].items()))
    one, two = by.get("one-node", {}), by.get("two-nodes", {})
    if one.get("deliveries_per_s") and two.get("deliveries_per_s"):
        lines.append(f"two-nodes / one-node deliveries/s = "
                     f"{two['deliveries_per_s'] / one['deliveries_per_s']:.2f}")
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description="Cross-node fan-out: 2 nodes on Redis vs 1.")
    p.add_argument("--subscribers", type=int, default=1000, help="split over the nodes (1000)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; best kept (2)")
    p.add_argument("--quick", action="store_true", help="one round, 1.5 s windows")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--measure", type=float, default=3.0)
    p.add_argument("--embedded", action="store_true",
                   help="also one node on SQLite and the in-process bus (no Redis)")
    p.add_argument("--node-cpus", default="0", help="CPUs the nodes run on (0)")
    p.add_argument("--client-cpus", help="CPUs for Redis and the load generator "
                                         "(default: every CPU not in --node-cpus)")
    p.add_argument("--workers", type=int, default=2, help="load-generator processes (2)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args(argv)
    o = Options(subscribers=a.subscribers, rounds=max(1, a.rounds), warmup=a.warmup,
                measure=a.measure, embedded=a.embedded, workers=a.workers, out=a.out)
    if a.quick:
        o.rounds, o.warmup, o.measure = 1, 0.5, 1.5
    o.node_cpus = tuple(int(x) for x in a.node_cpus.split(","))
    ncpu = os.cpu_count() or 1
    if a.client_cpus:
        o.client_cpus = tuple(int(x) for x in a.client_cpus.split(","))
    else:
        o.client_cpus = tuple(c for c in range(ncpu) if c not in o.node_cpus) or o.node_cpus
    return o


def _stop_all() -> None:
    for thing in list(reversed(_STARTED)):
        thing.stop()
    _STARTED.clear()


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    raise_nofile()
    atexit.register(_stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    import uvloop

    try:
        record = uvloop.run(run(o))
    finally:
        _stop_all()
    record["command"] = "python bench/cluster.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    print()
    print(table(record))
    if o.out is not None:
        o.out.write_text(json.dumps(record, indent=2))
        print(f"results: {o.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
