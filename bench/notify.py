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
``targeted``
    with ``--targeted N`` (issue 12): N users tagged in the data folder before
    the node starts (the connected users among them), one notification to the
    tag. Reports users written per second (request sent -> the job ``sent``),
    the time to the first and to the last online push, and the node's
    ``/healthz`` answer times meanwhile (does it keep answering while it sends).

Each notification carries its send time (``time.perf_counter_ns()`` taken
just before the request, in this process) in ``data``, so every push gives
one notify-to-push latency sample. Every phase is bounded in count and in
time (``--max-seconds``); the node is stopped by its PID when the run ends.
Benchmarks measure; nothing here asserts a figure.

    python bench/notify.py                      # 1,000 users x 2 devices
    python bench/notify.py --users 200 --single 2000 --broadcast 10
    python bench/notify.py --users 2000 --devices 1 --single 0 --broadcast 0 --targeted 100000
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

import aiohttp
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from tidings.auth import TokenAuthority
from tidings.store.sqlite import SqliteStore

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


async def tag_users(data: str, n: int, tag: str) -> None:
    """Tag ``n`` users (``u00000``...) in the data folder, before the node opens it."""
    store = SqliteStore(data)
    await store.open()
    try:
        for i in range(0, n, 2000):  # one group commit per batch
            await asyncio.gather(*(store.set_user_tags(f"u{j:05d}", [tag], max_tags=10)
                                   for j in range(i, min(n, i + 2000))))
    finally:
        await store.close()


async def targeted(http: aiohttp.ClientSession, api: str, tally: Tally, online: int,
                   max_seconds: float) -> str:
    """One notification to every tagged user (see the module doc): a report line."""
    tally.pushes = 0
    tally.latencies_ns = []
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    pings: list[float] = []
    stop = asyncio.Event()

    async def ping() -> None:  # the node keeps answering while it sends
        while not stop.is_set():
            t = time.perf_counter()
            async with http.get(f"{api}/healthz") as r:
                await r.read()
            pings.append(time.perf_counter() - t)
            await asyncio.sleep(0.02)

    pinger = asyncio.get_running_loop().create_task(ping())
    start_ns = time.perf_counter_ns()
    start = time.monotonic()
    body = orjson.dumps({"tags": ["bench"], "title": "bench", "data": {"t": start_ns}})
    async with http.post(f"{api}/v1/notify", data=body, headers=auth) as r:
        reply = await r.json(loads=orjson.loads)
    accepted = time.monotonic() - start
    deadline = start + max_seconds
    status = ""
    while time.monotonic() < deadline:
        async with http.get(f"{api}/v1/notifications/{reply['id']}", headers=auth) as r:
            status = (await r.json(loads=orjson.loads))["status"]
        if status == "sent":
            break
        await asyncio.sleep(0.05)
    sent = time.monotonic() - start
    await drain(tally, online, deadline + 10.0)
    stop.set()
    await pinger
    lat = sorted(tally.latencies_ns)
    first = f"{lat[0] / 1e6:.0f}" if lat else "-"
    last = f"{lat[-1] / 1e6:.0f}" if lat else "-"
    pings.sort()
    return (f"targeted: {reply['targets']:,} users ({status or 'unfinished'}) in {sent:.2f}s "
            f"= {reply['targets'] / sent:,.0f} users written/s; answered in "
            f"{accepted * 1000:.0f} ms; {tally.pushes}/{online} online pushes, first "
            f"{first} ms, last {last} ms after the request; /healthz p50 "
            f"{pings[len(pings) // 2] * 1000:.1f} ms, max {pings[-1] * 1000:.1f} ms "
            f"({len(pings)} pings)")


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
        if args.targeted:
            t0 = time.monotonic()
            await tag_users(data, args.targeted, "bench")
            print(f"{args.targeted:,} users tagged in {time.monotonic() - t0:.1f}s", flush=True)
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
                if single:
                    res = await run_phase("single", http, api, tally, single, args.devices,
                                          args.concurrency, args.max_seconds, pid)
                    rows.append(res.row())
                wide = [users for _ in range(args.broadcast)]
                if wide:
                    res = await run_phase("broadcast", http, api, tally, wide, args.devices,
                                          min(args.concurrency, 2), args.max_seconds, pid)
                    rows.append(res.row())
                line = ""
                if args.targeted:
                    online = min(args.users, args.targeted) * args.devices
                    line = await targeted(http, api, tally, online, args.max_seconds)
            print()
            if rows:
                print(table(rows))
            if line:
                print(line)
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--devices", type=int, default=2, help="WS devices per user")
    p.add_argument("--single", type=int, default=5000,
                   help="notifications to one user each (phase 'single')")
    p.add_argument("--broadcast", type=int, default=20,
                   help="notifications to all users each (phase 'broadcast')")
    p.add_argument("--targeted", type=int, default=0,
                   help="users tagged for the phase 'targeted' (0: no such phase)")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--max-seconds", type=float, default=60.0, help="bound on each phase")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(bench(args))
    return uvloop.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
