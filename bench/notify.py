"""Notifications/s through ``POST /v1/notify`` and notify-to-push latency (issue 3, item 7).

Starts its own Tidings node (``python -m tidings.cli serve``) on free loopback
ports with a temporary data folder, connects ``--users`` users with
``--devices`` WebSocket devices each (2,000 connections by default), then
runs two bounded phases:

``single``
    ``--single`` notifications, each to one user (round robin), with
    ``--concurrency`` requests in flight: the rate a backend can notify
    individual users, each notification being an inbox write, an unread
    count update and a push to every device of the user.
``broadcast``
    ``--broadcast`` notifications, each to all users in one request: inbox
    writes per second and pushes per second at fan-out.

Each notification carries its send time (``time.perf_counter_ns()`` taken
just before the request, in this process) in ``data``, so every push gives
one notify-to-push latency sample. Every phase is bounded in count and in
time (``--max-seconds``); the node is stopped by its PID when the run ends.
Benchmarks measure; nothing here asserts a figure.

``--targeted N`` (issue 12) runs a third kind of measurement instead: N
users tagged ``bench`` (written into the store before the node starts: the
set-up is not what is measured), ``--online`` of them connected over
WebSocket, then one ``POST /v1/notify`` to ``{"tags": ["bench"]}`` with a
templated title. It reports the time to the answer, to the first and to the
last online push, users written per second (targets over the time until
``GET /v1/notifications/{id}`` says ``sent``), the node's CPU time per user
meanwhile (steadier than the rate on a shared machine), and the node's answer time to
WS ``ping`` ops sent every 25 ms meanwhile by one more client, in a process of
its own (so the bench's burst of reading 2,000 pushes does not delay it). ``--store
redis`` runs the node on a redis-server of its own (started and stopped by
PID here).

    python bench/notify.py                      # 1,000 users x 2 devices
    python bench/notify.py --users 200 --single 2000 --broadcast 10
    python bench/notify.py --targeted 100000 --online 2000            # embedded store
    python bench/notify.py --targeted 100000 --online 2000 --store redis
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tidings.auth import TokenAuthority

__all__ = ["main"]

API_KEY = "bench-key-" + secrets.token_hex(8)
JWT_SECRET = "bench-secret-" + secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux ``/proc``), 0.0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def raise_nofile(need: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- the node under test ------------------------------------------------------------------


@dataclass
class Server:
    """``tidings serve`` as a subprocess we own (stopped by its PID only)."""

    ws_port: int
    api_port: int
    data: str
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more TIDINGS_* settings

    def start(self, timeout: float = 30.0) -> None:
        env = dict(os.environ)
        env.update({
            "TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_WS_PORT": str(self.ws_port),
            "TIDINGS_API_HOST": "127.0.0.1", "TIDINGS_API_PORT": str(self.api_port),
            "TIDINGS_MQTT_HOST": "127.0.0.1", "TIDINGS_MQTT_PORT": str(free_port()),
            "TIDINGS_STORE_PATH": self.data,
            "TIDINGS_API_KEYS": API_KEY,
            "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET,
            "TIDINGS_WS_MAX_CONNECTIONS_PER_IP": "1000000",
            "TIDINGS_NOTIFY_MAX_USERS": "100000",
            "TIDINGS_NODE_NAME": "bench-node",
            "TIDINGS_NODE_LOG_LEVEL": "WARNING",
            **self.env,
        })
        self.proc = subprocess.Popen([sys.executable, "-m", "tidings.cli", "serve"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"tidings exited with {self.proc.returncode}: {err[-2000:]}")
            try:
                for port in (self.api_port, self.ws_port):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tidings did not start listening")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# -- devices ----------------------------------------------------------------------------


@dataclass
class Tally:
    """What the devices received, shared by every reader."""

    pushes: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    errors: int = 0


async def device(url: str, token: str, name: str, tally: Tally) -> tuple[ClientConnection,
                                                                          asyncio.Task[None]]:
    ws = await websockets.connect(url, subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                                  max_size=None, open_timeout=30, ping_interval=None,
                                  compression=None)
    await ws.send(orjson.dumps({"op": "connect", "id": 1, "token": token,
                               "device": name}).decode())
    hello = orjson.loads(await ws.recv())
    if not hello.get("ok"):
        raise RuntimeError(f"connect failed: {hello}")

    async def read() -> None:
        try:
            async for raw in ws:
                now = time.perf_counter_ns()
                push = orjson.loads(raw)
                if push.get("type") == "notification":
                    tally.pushes += 1
                    tally.latencies_ns.append(now - push["data"]["t"])
                    tally.changed.set()
        except websockets.ConnectionClosed:
            pass

    return ws, asyncio.get_running_loop().create_task(read())


async def connect_all(url: str, users: Sequence[str], devices: int, tally: Tally,
                      parallel: int = 100) -> list[tuple[ClientConnection, asyncio.Task[None]]]:
    tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=86400)
    gate = asyncio.Semaphore(parallel)

    async def one(user: str, d: int) -> tuple[ClientConnection, asyncio.Task[None]]:
        async with gate:
            return await device(url, tokens.issue(user, ttl=86400), f"{user}-d{d}", tally)

    return list(await asyncio.gather(*(one(u, d) for u in users for d in range(devices))))


# -- phases -------------------------------------------------------------------------------


@dataclass
class Result:
    phase: str
    notifications: int
    targets: int
    pushes: int
    seconds: float  # first request sent -> last expected push received (or the bound)
    accept_seconds: float  # first request sent -> last answer received
    latencies_ns: list[int]
    server_cpu: float  # CPU seconds the node used during the phase
    bench_cpu: float  # CPU seconds this process (clients) used during the phase

    def row(self) -> list[str]:
        lat = sorted(self.latencies_ns)

        def pct(q: float) -> str:
            return f"{lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6:.1f}" if lat else "-"

        return [self.phase, str(self.notifications), str(self.targets), str(self.pushes),
                f"{self.seconds:.2f}", f"{self.notifications / self.accept_seconds:,.0f}",
                f"{self.targets / self.accept_seconds:,.0f}",
                f"{self.pushes / self.seconds:,.0f}", pct(0.5), pct(0.99), pct(0.999),
                f"{100 * self.server_cpu / self.seconds:.0f}%",
                f"{100 * self.bench_cpu / self.seconds:.0f}%"]


async def drain(tally: Tally, expected: int, deadline: float) -> None:
    """Wait until ``expected`` pushes arrived or the deadline passed."""
    while tally.pushes < expected and time.monotonic() < deadline:
        tally.changed.clear()
        try:
            await asyncio.wait_for(tally.changed.wait(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            break


async def run_phase(phase: str, http: aiohttp.ClientSession, api: str, tally: Tally,
                    batches: list[list[str]], devices: int, concurrency: int,
                    max_seconds: float, server_pid: int) -> Result:
    tally.pushes = 0
    tally.latencies_ns = []
    cpu0, mine0 = cpu_seconds(server_pid), time.process_time()
    start = time.monotonic()
    deadline = start + max_seconds
    gate = asyncio.Semaphore(concurrency)
    answered = 0
    targets = 0
    last_answer = start

    async def send(users: list[str]) -> None:
        nonlocal answered, targets, last_answer
        async with gate:
            if time.monotonic() > deadline:
                return
            body = orjson.dumps({"users": users, "title": "bench", "category": "bench",
                                 "data": {"t": time.perf_counter_ns()}})
            async with http.post(f"{api}/v1/notify", data=body,
                                 headers={"Authorization": f"Bearer {API_KEY}",
                                          "Content-Type": "application/json"}) as r:
                reply = await r.json(loads=orjson.loads)
                if r.status != 200:
                    tally.errors += 1
                    return
            answered += 1
            targets += int(reply["targets"])
            last_answer = time.monotonic()

    await asyncio.gather(*(send(b) for b in batches))
    await drain(tally, targets * devices, deadline + 10.0)
    end = time.monotonic()
    return Result(phase, answered, targets, tally.pushes, end - start,
                  max(last_answer - start, 1e-9), list(tally.latencies_ns),
                  cpu_seconds(server_pid) - cpu0, time.process_time() - mine0)


def table(rows: list[list[str]]) -> str:
    head = ["phase", "notifies", "targets", "pushes", "seconds", "notify/s", "inbox writes/s",
            "pushes/s", "p50 ms", "p99 ms", "p99.9 ms", "node cpu", "bench cpu"]
    cols = list(zip(head, *rows, strict=True))
    widths = [max(len(c) for c in col) for col in cols]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> int:
    conns = args.users * args.devices
    soft = raise_nofile(conns * 2 + 1000)
    if soft < conns + 200:
        print(f"RLIMIT_NOFILE is {soft}: too low for {conns} connections", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as data:
        server = Server(free_port(), free_port(), data)
        server.start()
        tally = Tally()
        clients: list[tuple[ClientConnection, asyncio.Task[None]]] = []
        try:
            users = [f"u{i:05d}" for i in range(args.users)]
            t0 = time.monotonic()
            clients = await connect_all(f"ws://127.0.0.1:{server.ws_port}/ws", users,
                                        args.devices, tally)
            connect_s = time.monotonic() - t0
            print(f"{len(clients)} WebSocket devices of {args.users} users connected in "
                  f"{connect_s:.1f}s ({len(clients) / connect_s:,.0f}/s)", flush=True)
            api = f"http://127.0.0.1:{server.api_port}"
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                rows = []
                single = [[users[i % len(users)]] for i in range(args.single)]
                assert server.proc is not None
                pid = server.proc.pid
                res = await run_phase("single", http, api, tally, single, args.devices,
                                      args.concurrency, args.max_seconds, pid)
                rows.append(res.row())
                wide = [users for _ in range(args.broadcast)]
                res = await run_phase("broadcast", http, api, tally, wide, args.devices,
                                      min(args.concurrency, 2), args.max_seconds, pid)
                rows.append(res.row())
            print()
            print(table(rows))
            print(f"\nusers={args.users} devices/user={args.devices} "
                  f"concurrency={args.concurrency} errors={tally.errors}; latency = POST "
                  f"sent -> push received, per push; notify/s and inbox writes/s count "
                  f"answered requests; cpu = CPU time / wall time (100% = one core) on "
                  f"{os.cpu_count()} cores")
        finally:
            for ws, task in clients:
                task.cancel()
                ws.transport.abort()
            server.stop()
    return 0


# -- targeted send (issue 12) ----------------------------------------------------------


async def tag_users(store: Any, users: Sequence[str], parallel: int) -> None:
    """Tag every user ``bench`` and give each a ``first_name`` (the set-up, not measured)."""
    gate = asyncio.Semaphore(parallel)

    async def one(user: str) -> None:
        async with gate:
            await store.set_user_tags(user, ["bench"], max_tags=100)
            await store.set_user_attributes(user, {"first_name": user.upper()})

    await asyncio.gather(*(one(u) for u in users))


async def prepare_audience(args: argparse.Namespace, data: str, redis_url: str | None
                           ) -> None:
    from tidings.store.redis import RedisStore
    from tidings.store.sqlite import SqliteStore

    store: Any = RedisStore(redis_url) if redis_url else SqliteStore(data)
    await store.open()
    try:
        users = [f"t{i:06d}" for i in range(args.targeted)]
        t0 = time.monotonic()
        await tag_users(store, users, 200 if redis_url else 1)
        print(f"tagged {len(users):,} users in {time.monotonic() - t0:.1f}s (set-up)",
              flush=True)
    finally:
        await store.close()


@dataclass
class Pinger:
    """One more WS client sending ``ping`` ops every 25 ms (under ws.commands_per_second):
    the node's answer times, as (sent at, in ``time.monotonic_ns``, round trip ns)."""

    rtts: list[tuple[int, int]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, url: str, token: str, max_seconds: float) -> None:
        async with websockets.connect(url, subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                                      ping_interval=None, compression=None) as ws:
            await ws.send(orjson.dumps({"op": "connect", "id": 1, "token": token}).decode())
            await ws.recv()
            self.ready.set()
            deadline = time.monotonic() + max_seconds
            n = 1
            while not self.stop.is_set() and time.monotonic() < deadline:
                n += 1
                t = time.monotonic_ns()
                await ws.send(orjson.dumps({"op": "ping", "id": n}).decode())
                while orjson.loads(await ws.recv()).get("id") != n:
                    pass
                self.rtts.append((t, time.monotonic_ns() - t))
                await asyncio.sleep(0.025)


async def pinger_process(url: str, token: str, max_seconds: float) -> int:
    """``--pinger``: the pinger in a process of its own, so the 2,000 devices this
    bench reads pushes for (a burst of JSON decoding in the bench's own loop) do not
    delay its round trips: what it measures is the node. Prints ``ready`` once
    connected, runs until stdin closes (or ``max_seconds``), then prints its
    (sent at, round trip) pairs as one JSON line. CLOCK_MONOTONIC is one clock for
    every process of the machine, so the parent can cut the window of the send."""
    pinger = Pinger()
    task = asyncio.get_running_loop().create_task(pinger.run(url, token, max_seconds))
    await pinger.ready.wait()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    pinger.stop.set()
    await task
    print(orjson.dumps(pinger.rtts).decode(), flush=True)
    return 0


async def targeted(args: argparse.Namespace) -> int:
    soft = raise_nofile(args.online * 2 + 1000)
    if soft < args.online + 200:
        print(f"RLIMIT_NOFILE is {soft}: too low for {args.online} connections", file=sys.stderr)
        return 2
    redis_proc: subprocess.Popen[bytes] | None = None
    pinger: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as data:
        env = {"TIDINGS_NODE_LOG_LEVEL": "WARNING"}
        redis_url = None
        if args.store == "redis":
            redis_proc, redis_url = start_redis(data)
            env.update({"TIDINGS_STORE_BACKEND": "redis", "TIDINGS_REDIS_URL": redis_url})
        server = Server(free_port(), free_port(), data, env=env)
        tally = Tally()
        clients: list[tuple[ClientConnection, asyncio.Task[None]]] = []
        try:
            await prepare_audience(args, data, redis_url)
            server.start()
            url = f"ws://127.0.0.1:{server.ws_port}/ws"
            online = [f"t{i:06d}" for i in range(0, args.targeted, args.targeted // args.online)]
            online = online[:args.online]
            clients = await connect_all(url, online, 1, tally)
            print(f"{len(clients)} of them online over WebSocket", flush=True)
            tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=86400)
            pinger = subprocess.Popen(  # noqa: ASYNC220 -- started once, read at the end
                [sys.executable, __file__, "--pinger", url, tokens.issue("pinger", ttl=86400),
                 "--max-seconds", str(args.max_seconds)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert pinger.stdout is not None and pinger.stdin is not None
            ready = await asyncio.to_thread(pinger.stdout.readline)
            if ready.strip() != "ready":
                print(f"the pinger did not start: {ready!r}", file=sys.stderr)
                return 1
            api = f"http://127.0.0.1:{server.api_port}"
            headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
            assert server.proc is not None
            cpu0 = cpu_seconds(server.proc.pid)
            async with aiohttp.ClientSession() as http:
                sent = time.perf_counter_ns()
                window = time.monotonic_ns()
                t0 = time.monotonic()
                body = {"tags": ["bench"], "title": "Hello {{first_name|there}}",
                        "body": "targeted", "data": {"t": sent}}
                async with http.post(f"{api}/v1/notify", data=orjson.dumps(body),
                                     headers=headers) as r:
                    reply = await r.json(loads=orjson.loads)
                    if r.status != 200:
                        print(f"notify failed: {r.status} {reply}", file=sys.stderr)
                        return 1
                answered = time.monotonic() - t0
                status: dict[str, Any] = {}
                deadline = t0 + args.max_seconds
                while time.monotonic() < deadline:
                    async with http.get(f"{api}/v1/notifications/{reply['id']}",
                                        headers=headers) as r:
                        status = await r.json(loads=orjson.loads)
                    if status.get("status") in ("sent", "cancelled"):
                        break
                    await asyncio.sleep(0.05)
                written = time.monotonic() - t0
                cpu = cpu_seconds(server.proc.pid) - cpu0
                await drain(tally, len(clients), deadline)
            window_end = time.monotonic_ns()
            out, _ = await asyncio.to_thread(pinger.communicate, "", args.max_seconds + 10)
            rtts = orjson.loads(out.strip().splitlines()[-1])
            lat = sorted(tally.latencies_ns)
            # answers to pings sent while the send ran (the pinger is its own process)
            during = sorted(rtt for at, rtt in rtts if window <= at <= window_end) or [0]
            print()
            print(f"store={args.store} targets={reply['targets']:,} "
                  f"status={status.get('status')} outcomes={status.get('outcomes')}")
            print(f"answer: {answered * 1000:.0f} ms; users written: "
                  f"{int(reply['targets']) / written:,.0f}/s ({written:.2f} s to 'sent'); node "
                  f"CPU {cpu / max(1, int(reply['targets'])) * 1e6:.0f} us/user")
            if lat:
                print(f"online pushes: {len(lat)}/{len(clients)}; first {lat[0] / 1e6:.0f} ms, "
                      f"last {lat[-1] / 1e6:.0f} ms after the request")
            print(f"ping answers during the send: {len(during)}; p50 "
                  f"{during[len(during) // 2] / 1e6:.1f} ms, max {during[-1] / 1e6:.1f} ms")
        finally:
            for ws, task in clients:
                task.cancel()
                ws.transport.abort()
            server.stop()
            if pinger is not None and pinger.poll() is None:  # a run that failed early
                pinger.kill()
                pinger.wait(10)
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)
    return 0


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of our own on a free loopback port, no persistence; (process, URL)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", folder],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--devices", type=int, default=2, help="WS devices per user")
    p.add_argument("--single", type=int, default=5000,
                   help="notifications to one user each (phase 'single')")
    p.add_argument("--broadcast", type=int, default=20,
                   help="notifications to all users each (phase 'broadcast')")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--max-seconds", type=float, default=60.0, help="bound on each phase")
    p.add_argument("--targeted", type=int, default=0,
                   help="run the targeted send instead: this many users tagged 'bench'")
    p.add_argument("--online", type=int, default=2000,
                   help="targeted: tagged users connected over WebSocket")
    p.add_argument("--store", choices=("sqlite", "redis"), default="sqlite",
                   help="targeted: the node's store")
    p.add_argument("--pinger", nargs=2, metavar=("URL", "TOKEN"),
                   help=argparse.SUPPRESS)  # the targeted run's pinger process
    args = p.parse_args(argv)
    if args.pinger:
        url, token = args.pinger
        return asyncio.run(pinger_process(url, token, args.max_seconds))
    run = targeted if args.targeted else bench
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
