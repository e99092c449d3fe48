"""Per-user delivery writes per second of the notification store, a chunk at a time (issue 12).

What the send pipeline does per chunk: one ``deliver`` call for ``--chunk``
users (default 1,000), each with its own rendered fields and a ``pushed``
outcome (the inbox item, the stream entry, the retained unread count, the
target record and the push record, one atomic step per user), then the job's
counts. This times that call alone, ``--rounds`` times over fresh users, on:

* ``redis``: one ``redis-server`` started here on a free loopback port;
* ``redis-cluster``: three ``redis-server --cluster-enabled yes`` joined by
  ``redis-cli --cluster create`` (the client routes each user's script to
  the master of its slot);
* ``sqlite``: the embedded store in a temp folder, for comparison.

It prints users written per second per backend (median and best round), the
same for a replay of the last chunk (every user already recorded: what a node
resuming after a crash pays to skip them), and the CPU time per user of this
process (the client: building and parsing the per-user scripts) and of the
Redis servers (the scripts), which a busy shared machine disturbs less than
wall-clock rates. Servers run without
persistence, are stopped by their PID at the end (also on errors), and every
loop is bounded by ``--rounds``. Benchmarks measure; nothing here asserts.

    python bench/notify_store.py                       # redis, 1,000 users x 10 rounds
    python bench/notify_store.py --backends redis,redis-cluster,sqlite --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tidings.store.base import Delivery, HistoryPolicy, NewJob, Store
from tidings.store.redis import RedisStore
from tidings.store.sqlite import SqliteStore

__all__ = ["main"]

POLICY = HistoryPolicy(100, 86400.0)


def policy(topic: str) -> HistoryPolicy:
    return POLICY


def free_port() -> int:
    """A free loopback port whose +10000 is free too (a cluster's bus port)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


def wait_ping(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited")
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                           check=False)
        if r.stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer")


@contextlib.contextmanager
def redis_servers(folder: Path, count: int, *, cluster: bool) -> Iterator[list[int]]:
    """``count`` redis-server processes (a cluster when ``cluster``); their ports."""
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(count):
            port = free_port()
            work = folder / f"redis{i}"
            work.mkdir(parents=True)
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(work)]
            if cluster:
                argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            wait_ping(port, proc)
        if cluster:
            subprocess.run(["redis-cli", "--cluster", "create",
                            *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                            "--cluster-yes"], capture_output=True, check=True)
            deadline = time.monotonic() + 20
            while b"cluster_state:ok" not in subprocess.run(
                    ["redis-cli", "-p", str(ports[0]), "cluster", "info"],
                    capture_output=True, check=False).stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not come up")
                time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:  # by PID
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def fields(user: str) -> dict[str, Any]:
    return {"title": f"Hello {user}", "body": "Your weekly digest is ready", "data": None,
            "category": "general", "priority": "normal", "media": None}


def redis_cpu(ports: list[int]) -> float:
    """CPU seconds the redis-server processes used so far (INFO cpu), all together."""
    total = 0.0
    for port in ports:
        out = subprocess.run(["redis-cli", "-p", str(port), "info", "cpu"],
                             capture_output=True, check=True).stdout.decode()
        for line in out.splitlines():
            if line.startswith(("used_cpu_user:", "used_cpu_sys:")):
                total += float(line.split(":", 1)[1])
    return total


async def measure(store: Store, chunk: int, rounds: int) -> tuple[list[float], float, float]:
    """Users/s of each round's deliver, of a replay of the last chunk, and this
    process's CPU microseconds per user written."""
    rates: list[float] = []
    last: list[Delivery] = []
    nid = ""
    cpu = time.process_time()
    for r in range(rounds):
        nid = "n_" + secrets.token_hex(8)
        await store.job_create(NewJob(nid, "general", {"title": "x"}, chunk, 0.0))
        last = [Delivery(f"r{r}u{i:05d}", "pushed", fields(f"r{r}u{i:05d}"), edges=None)
                for i in range(chunk)]
        started = time.perf_counter()
        result = await store.deliver(nid, last, category="general", expires_at=None,
                                     collapse_key=None, policy=policy)
        elapsed = time.perf_counter() - started
        assert len(result.recorded) == chunk, "not every user was written"
        rates.append(chunk / elapsed)
    cpu = (time.process_time() - cpu) / (chunk * rounds) * 1e6
    started = time.perf_counter()
    again = await store.deliver(nid, last, category="general", expires_at=None,
                                collapse_key=None, policy=policy)
    replay = chunk / (time.perf_counter() - started)
    assert again.recorded == [], "a replay wrote someone twice"
    return rates, replay, cpu


async def run_backend(name: str, folder: Path, args: argparse.Namespace
                      ) -> tuple[list[float], float, float, float]:
    """What :func:`measure` gives, and Redis's CPU microseconds per user (0 for SQLite,
    whose work is in this process)."""
    store: Store
    if name == "sqlite":
        store = SqliteStore(folder / "sqlite", max_inbox=1000)
        await store.open()
        try:
            return (*await measure(store, args.chunk, args.rounds), 0.0)
        finally:
            await store.close()
    cluster = name == "redis-cluster"
    with redis_servers(folder / name, 3 if cluster else 1, cluster=cluster) as ports:
        scheme = "redis+cluster" if cluster else "redis"
        store = RedisStore(f"{scheme}://127.0.0.1:{ports[0]}", timeout=10.0, max_inbox=1000)
        await store.open()
        try:
            before = redis_cpu(ports)
            rates, replay, cpu = await measure(store, args.chunk, args.rounds)
            # the replay's CPU is in there too: a small share (it writes nothing)
            server = (redis_cpu(ports) - before) / (args.chunk * args.rounds) * 1e6
            return rates, replay, cpu, server
        finally:
            await store.close()


async def main_async(args: argparse.Namespace) -> None:
    print(f"deliver: a chunk of {args.chunk} users, {args.rounds} rounds, fresh users each")
    print(f"{'backend':<15}{'median users/s':>16}{'best users/s':>14}{'replay users/s':>16}"
          f"{'client CPU us/user':>20}{'redis CPU us/user':>19}")
    with tempfile.TemporaryDirectory(prefix="tidings-notify-store-") as tmp:
        for name in args.backends.split(","):
            rates, replay, cpu, server = await run_backend(name, Path(tmp), args)
            print(f"{name:<15}{statistics.median(rates):>16,.0f}{max(rates):>14,.0f}"
                  f"{replay:>16,.0f}{cpu:>20,.0f}{server:>19,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backends", default="redis",
                        help="comma-separated: redis, redis-cluster, sqlite")
    parser.add_argument("--chunk", type=int, default=1000, help="users per deliver call")
    parser.add_argument("--rounds", type=int, default=10, help="chunks timed per backend")
    args = parser.parse_args()
    if shutil.which("redis-server") is None and args.backends != "sqlite":
        raise SystemExit("redis-server is not on PATH (Debian package redis-server)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
