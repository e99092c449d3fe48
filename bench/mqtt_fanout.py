"""MQTT fan-out, Tidings against mosquitto in one run: QoS 0 and QoS 1.

    python bench/mqtt_fanout.py                  # 1,000 and 5,000 subscribers, QoS 0 and 1
    python bench/mqtt_fanout.py --sizes 1000 --qos 1 --seconds 3 --repeat 1

For each server (Tidings' MQTT listener, then Debian's ``mosquitto`` with
``allow_duplicate_messages true`` and ``set_tcp_nodelay true``, anonymous, on
a free loopback port; both from ``servers.py``, each pinned to one core with
``taskset -c``), each subscriber count and each QoS:

1. subscriber processes (pinned to the other cores) open N raw MQTT 3.1.1
   connections: CONNECT (Tidings: a token as the password), SUBSCRIBE
   ``bench/t`` at the QoS; they parse PUBLISH packets, count them, PUBACK the
   QoS 1 ones (one write per read), and sample latency from the send time the
   payload carries (``loadgen.make_payload``);
2. one publisher (MQTT on the server itself, at the same QoS; QoS 1 waits
   for PUBACKs within a bound) is paced by ``publishers.closed_loop``: at most
   ``--window`` messages' worth of deliveries in flight;
3. after a warm-up second, deliveries are counted over ``--seconds``; then
   publishing stops and what is still in flight may arrive (bounded).

The servers take turns scenario by scenario, a fresh process each time, and
``--repeat`` rounds keep each one's best figure, so that other work on the
machine is less likely to decide a ratio.

It prints deliveries/s per server and the Tidings/mosquitto ratio per
scenario, and with ``--json PATH`` writes every figure. The load generator
is Python: check ``loadgen cpu`` in the table; a figure with the load core
near 100% is the load generator's limit, not the server's (so a ratio then
flatters the slower server). Nothing here asserts a figure.

The loadgen's own subscriber (``loadgen.MqttSub``) speaks QoS 0 only and its
workers cannot take another protocol class, so the QoS 0/1 subscriber and
its worker live here; the targets, the publisher, the pacing loop and the
helpers are reused from ``servers.py``, ``publishers.py`` and ``loadgen.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import MARKER, mqtt_connect, now_us, percentiles, raise_nofile
from publishers import MqttPublisher, PaceResult, Publisher, closed_loop
from servers import JWT_SECRET, Mosquitto, Target, TidingsMqtt, tool_versions

__all__ = ["Qos1Publisher", "Result", "Scenario", "main", "run"]

TOPIC = "bench/t"
_TS_DIGITS = 16
# shared array: [0] phase, then per worker: ready, failed, received
_PHASE_WAIT, _PHASE_CONNECT, _PHASE_STOP = 0, 1, 2
_SLOTS = 3
_READY, _FAILED, _RECEIVED = range(_SLOTS)


# --- subscribers (worker processes) ------------------------------------------------------

@dataclass
class WorkerSpec:
    index: int
    host: str
    port: int
    qos: int
    first: int
    count: int
    cpus: tuple[int, ...]
    secret: str  # Tidings: tokens are minted with it; empty for mosquitto
    sample_every: int
    connect_timeout: float


class _State:
    def __init__(self, spec: WorkerSpec, shared: Any) -> None:
        self.spec = spec
        self.shared = shared
        self.base = 1 + spec.index * _SLOTS
        self.ready = 0
        self.failed = 0
        self.received = 0
        self.next_sample = spec.sample_every
        self.samples = array("q")
        self.errors: set[str] = set()
        self.protos: list[QosSub] = []

    def publish(self) -> None:
        s, b = self.shared, self.base
        s[b + _READY], s[b + _FAILED], s[b + _RECEIVED] = self.ready, self.failed, self.received


class QosSub(asyncio.Protocol):
    """One MQTT 3.1.1 subscriber at QoS 0 or 1 (sections 3.1, 3.8, 3.3, 3.4)."""

    def __init__(self, st: _State, index: int, token: str | None) -> None:
        self.st = st
        self.index = index
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.ready = False
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.st.protos.append(self)
        self.transport.write(mqtt_connect(f"fan-{os.getpid()}-{self.index}",
                                          f"b{self.index}", self.token))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.settled.done():
            self._fail(f"closed before ready: {exc!r}")

    def _fail(self, why: str) -> None:
        st = self.st
        st.failed += 1
        if len(st.errors) < 5:
            st.errors.add(why[:200])
        st.publish()
        if not self.settled.done():
            self.settled.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        st = self.st
        acks: list[bytes] = []
        n, i = len(buf), 0
        while n - i >= 2:
            ln, shift, j = 0, 0, i + 1
            while True:  # Remaining Length, 1-4 bytes (section 2.2.3)
                if j >= n:
                    ln = -1
                    break
                b = buf[j]
                ln |= (b & 0x7F) << shift
                j += 1
                if not b & 0x80:
                    break
                shift += 7
            if ln < 0 or j + ln > n:
                break
            end = j + ln
            kind, flags = buf[i] >> 4, buf[i] & 0x0F
            if kind == 3:  # PUBLISH
                st.received += 1
                if (flags >> 1) & 3:  # QoS 1: PUBACK with the packet id after the topic
                    t = int.from_bytes(buf[j:j + 2], "big")
                    acks.append(b"\x40\x02" + bytes(buf[j + 2 + t:j + 4 + t]))
                if st.received >= st.next_sample:
                    st.next_sample = st.received + st.spec.sample_every
                    k = buf.find(MARKER, j, end) + len(MARKER)
                    if k >= len(MARKER):
                        with contextlib.suppress(ValueError):
                            st.samples.append(now_us() - int(buf[k:k + _TS_DIGITS]))
            elif kind == 2:  # CONNACK
                if buf[j + 1] != 0:
                    self._fail(f"CONNACK refused: {buf[j + 1]}")
                    return
                body = b"\x00\x01" + struct.pack("!H", len(TOPIC)) + TOPIC.encode()
                body += bytes((st.spec.qos,))
                assert self.transport is not None
                self.transport.write(b"\x82" + bytes((len(body),)) + body)
            elif kind == 9:  # SUBACK
                if buf[end - 1] == 0x80:
                    self._fail("SUBACK refused")
                    return
                self.ready = True
                st.ready += 1
                st.publish()
                if not self.settled.done():
                    self.settled.set_result(None)
            i = end
        if i:
            del buf[:i]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))
        st.shared[st.base + _RECEIVED] = st.received

    def reset(self) -> None:
        """Close with a RST so thousands of connections leave no TIME_WAIT."""
        t = self.transport
        if t is None or t.is_closing():
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()


def _mint(secret: str, user: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


async def _worker(spec: WorkerSpec, shared: Any) -> dict[str, Any]:
    st = _State(spec, shared)
    loop = asyncio.get_running_loop()
    tokens = {i: _mint(spec.secret, f"b{i}") if spec.secret else None
              for i in range(spec.first, spec.first + spec.count)}
    while shared[0] < _PHASE_CONNECT:  # noqa: ASYNC110 - the phase is in shared memory
        await asyncio.sleep(0.005)
    gate = asyncio.Semaphore(200)
    deadline = loop.time() + spec.connect_timeout

    async def one(i: int) -> None:
        async with gate:
            try:
                _, proto = await asyncio.wait_for(loop.create_connection(
                    lambda: QosSub(st, i, tokens[i]), spec.host, spec.port),
                    max(0.1, deadline - loop.time()))
            except (OSError, TimeoutError) as e:
                st.failed += 1
                st.errors.add(f"connect: {e!r}"[:200])
                st.publish()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.settled),
                                       max(0.1, deadline - loop.time()))

    await asyncio.gather(*(one(i) for i in range(spec.first, spec.first + spec.count)))
    st.publish()
    while shared[0] < _PHASE_STOP:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    st.publish()
    for p in st.protos:
        p.reset()
    await asyncio.sleep(0.05)
    return {"received": st.received, "samples": st.samples.tobytes(),
            "errors": sorted(st.errors)}


def _worker_main(spec: WorkerSpec, shared: Any, pipe: Connection) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, spec.cpus)
    raise_nofile()
    import uvloop

    pipe.send(uvloop.run(_worker(spec, shared)))
    pipe.close()


class Subscribers:
    """N subscribers split over worker processes; counters in shared memory."""

    def __init__(self, host: str, port: int, qos: int, count: int, *, workers: int,
                 cpus: tuple[int, ...], secret: str, sample_every: int = 50,
                 connect_timeout: float = 60.0) -> None:
        self.count = count
        ctx = mp.get_context("spawn")
        nworkers = max(1, min(workers, count))
        self.shared = ctx.Array("q", 1 + nworkers * _SLOTS, lock=False)
        self.procs: list[Any] = []
        self.pipes: list[Connection] = []
        share, extra = divmod(count, nworkers)
        first = 0
        for k in range(nworkers):
            n = share + (1 if k < extra else 0)
            spec = WorkerSpec(k, host, port, qos, first, n, cpus, secret, sample_every,
                              connect_timeout)
            first += n
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(spec, self.shared, child),
                               daemon=True, name=f"fanout-{k}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.pipes.append(parent)
        self.nworkers = nworkers
        self.reports: list[dict[str, Any]] = []

    def _sum(self, slot: int) -> int:
        return sum(self.shared[1 + k * _SLOTS + slot] for k in range(self.nworkers))

    def received(self) -> int:
        return self._sum(_RECEIVED)

    def ready(self) -> int:
        return self._sum(_READY)

    async def connect(self, within: float) -> tuple[int, int, float]:
        """Open every connection (bounded); (ready, failed, seconds)."""
        t0 = time.monotonic()
        self.shared[0] = _PHASE_CONNECT
        deadline = t0 + within
        while self.ready() + self._sum(_FAILED) < self.count:
            if time.monotonic() > deadline:
                break
            if any(not p.is_alive() for p in self.procs):
                raise RuntimeError("a subscriber worker died")
            await asyncio.sleep(0.01)
        return self.ready(), self._sum(_FAILED), time.monotonic() - t0

    async def finish(self, within: float = 30.0) -> None:
        self.shared[0] = _PHASE_STOP
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + within
        for pipe in self.pipes:
            if await loop.run_in_executor(None, pipe.poll, max(0.1, deadline - time.monotonic())):
                with contextlib.suppress(EOFError):
                    self.reports.append(pipe.recv())
        for proc in self.procs:  # ours, by handle
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for pipe in self.pipes:
            pipe.close()

    def samples(self) -> array[int]:
        out = array("q")
        for r in self.reports:
            a = array("q")
            a.frombytes(r["samples"])
            out.extend(a)
        return out

    def errors(self) -> list[str]:
        return sorted({e for r in self.reports for e in r["errors"]})[:5]


# --- the QoS 1 publisher -------------------------------------------------------------------

class Qos1Publisher(MqttPublisher):
    """``publishers.MqttPublisher`` at QoS 1: packet ids, at most ``max_unacked``
    PUBLISHes without their PUBACK (section 4.3.2)."""

    def __init__(self, host: str, port: int, secret: str = "", max_unacked: int = 500) -> None:
        super().__init__(host, port, secret)
        self.max_unacked = max_unacked
        self.acked = 0
        self._next_id = 0
        self._rest = bytearray()
        self._acked_event = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        assert self.reader is not None
        self.reader.cancel()  # replace the discarding reader with one that counts PUBACKs
        self.reader = asyncio.get_running_loop().create_task(self._drain_incoming(self._on))

    def _on(self, data: bytes) -> None:
        buf = self._rest
        buf += data
        i = 0
        while len(buf) - i >= 2 and len(buf) - i >= 2 + buf[i + 1]:
            if buf[i] >> 4 == 4:  # PUBACK
                self.acked += 1
            i += 2 + buf[i + 1]
        del buf[:i]
        self._acked_event.set()

    async def send(self, topic: str, payload: bytes) -> None:
        deadline = time.monotonic() + 10
        while self.sent - self.acked >= self.max_unacked:
            self._acked_event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                self._error("no PUBACK for 10 s")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_event.wait(), left)
        self._next_id = self._next_id % 0xFFFF + 1
        t = topic.encode()
        body = struct.pack("!H", len(t)) + t + struct.pack("!H", self._next_id) + payload
        n, rl = len(body), bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            rl.append(b | 0x80 if n else b)
            if not n:
                break
        await self._write(b"\x32" + bytes(rl) + body)


# --- a run -----------------------------------------------------------------------------------

@dataclass
class Scenario:
    subscribers: int
    qos: int

    @property
    def name(self) -> str:
        return f"qos{self.qos}-{self.subscribers // 1000}k" if self.subscribers >= 1000 \
            else f"qos{self.qos}-{self.subscribers}"


@dataclass
class Result:
    server: str
    scenario: str
    subscribers: int
    qos: int
    ready: int = 0
    failed: int = 0
    connect_seconds: float = 0.0
    deliveries_per_s: float = 0.0
    publishes_per_s: float = 0.0
    undelivered: int = 0
    stalls: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    errors: list[str] = field(default_factory=list)


def _ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


async def run_scenario(target: Target, sc: Scenario, o: argparse.Namespace) -> Result:
    secret = JWT_SECRET if isinstance(target, TidingsMqtt) else ""
    port = target.mqtt_port if isinstance(target, TidingsMqtt) else target.port
    r = Result(target.name, sc.name, sc.subscribers, sc.qos)
    subs = Subscribers("127.0.0.1", port, sc.qos, sc.subscribers, workers=o.workers,
                       cpus=o.load_cpus, secret=secret)
    pub: Publisher = (Qos1Publisher("127.0.0.1", port, secret) if sc.qos
                      else MqttPublisher("127.0.0.1", port, secret))
    try:
        r.ready, r.failed, r.connect_seconds = await subs.connect(within=90)
        if not r.ready:
            r.errors = ["no subscriber connected"]
            return r
        await pub.start()
        pace = PaceResult()
        loop_end = time.monotonic() + 1.0 + o.seconds
        pacer = asyncio.get_running_loop().create_task(closed_loop(
            pub, subs.received, subs.ready, lambda: TOPIC, o.window * r.ready, loop_end,
            pace, o.payload))
        await asyncio.sleep(1.0)  # warm-up: the window fills, caches settle
        hz = os.sysconf("SC_CLK_TCK")
        pids = [target.pid]
        t0, got0, pub0 = time.monotonic(), subs.received(), pace.published
        cpu_s0, cpu_l0 = _ticks(pids), _ticks([p.pid for p in subs.procs] + [os.getpid()])
        await pacer
        elapsed = time.monotonic() - t0
        r.deliveries_per_s = round((subs.received() - got0) / elapsed, 1)
        r.publishes_per_s = round((pace.published - pub0) / elapsed, 1)
        r.server_cpu_pct = round(100 * (_ticks(pids) - cpu_s0) / hz / elapsed, 1)
        r.loadgen_cpu_pct = round(100 * (_ticks([p.pid for p in subs.procs] + [os.getpid()])
                                         - cpu_l0) / hz / elapsed / len(o.load_cpus), 1)
        r.stalls = pace.stalls
        # what is in flight may take several seconds with thousands of subscribers
        drain_until = time.monotonic() + 30
        while subs.received() < pace.expected and time.monotonic() < drain_until:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the counters are in shared memory: poll them
        r.undelivered = max(0, pace.expected - subs.received())
        if pub.errors:
            r.errors.append(f"publisher: {pub.last_error}")
    finally:
        await pub.close()
        await subs.finish()
    pct = percentiles(subs.samples(), (0.5, 0.99))
    r.p50_ms, r.p99_ms = pct["p50_ms"], pct["p99_ms"]
    r.errors += subs.errors()
    return r


async def run(o: argparse.Namespace) -> list[Result]:
    """Every scenario on both servers, interleaved (Tidings, mosquitto, Tidings, ...) so
    that a disturbance on the machine hits both; ``--repeat`` rounds, the best kept."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, o.load_cpus)  # the publisher runs beside the subscribers
    raise_nofile()
    targets: list[Target] = []
    for cls in (TidingsMqtt, Mosquitto):
        candidate: Target = cls(o.server_cpu)
        why = candidate.available()
        if why:
            print(f"skipping {candidate.name}: {why}", file=sys.stderr)
        else:
            targets.append(candidate)
    rounds: list[Result] = []
    for n in range(o.repeat):
        for sc in (Scenario(size, q) for size in o.sizes for q in o.qos):
            for target in targets:  # a fresh server per scenario: nothing left from the last
                target.start()
                try:
                    res = await run_scenario(target, sc, o)
                finally:
                    target.stop()
                rounds.append(res)
                print(f"[round {n + 1}] {_line(res)}", flush=True)
    return best_of(rounds)


def best_of(rounds: list[Result]) -> list[Result]:
    """Per server and scenario, the round with the most deliveries/s."""
    best: dict[tuple[str, str], Result] = {}
    for r in rounds:
        key = (r.server, r.scenario)
        if key not in best or r.deliveries_per_s > best[key].deliveries_per_s:
            best[key] = r
    return list(best.values())


def _line(r: Result) -> str:
    lat = f"p50 {r.p50_ms} ms p99 {r.p99_ms} ms" if r.p50_ms is not None else "no samples"
    return (f"{r.server:>12} {r.scenario:>8}: {r.deliveries_per_s:>11,.0f} deliveries/s "
            f"({r.publishes_per_s:,.0f} msg/s to {r.ready} subs; {lat}; server cpu "
            f"{r.server_cpu_pct}%, loadgen cpu {r.loadgen_cpu_pct}%; undelivered "
            f"{r.undelivered}, stalls {r.stalls}){' ' + '; '.join(r.errors) if r.errors else ''}")


def ratios(results: list[Result]) -> list[tuple[str, float | None]]:
    by = {(r.server, r.scenario): r for r in results}
    out = []
    for r in results:
        if r.server != TidingsMqtt.name:
            continue
        ref = by.get((Mosquitto.name, r.scenario))
        ratio = (round(r.deliveries_per_s / ref.deliveries_per_s, 3)
                 if ref is not None and ref.deliveries_per_s else None)
        out.append((r.scenario, ratio))
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000", help="subscriber counts (comma-separated)")
    p.add_argument("--qos", default="0,1", help="QoS levels (comma-separated, 0 and/or 1)")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per scenario")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of them is kept")
    p.add_argument("--window", type=int, default=16,
                   help="messages' worth of deliveries in flight (closed loop)")
    p.add_argument("--payload", type=int, default=100, help="payload bytes")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpus", default="", help="cores for the load (default: the others)")
    p.add_argument("--workers", type=int, default=0,
                   help="subscriber processes (default: one per load core)")
    p.add_argument("--json", default="", help="write the results here too")
    o = p.parse_args(argv)
    o.sizes = [int(x) for x in o.sizes.split(",") if x]
    o.qos = [int(x) for x in o.qos.split(",") if x]
    if any(q not in (0, 1) for q in o.qos):
        p.error("--qos takes 0 and/or 1")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0, 1]
    o.load_cpus = tuple(int(x) for x in o.load_cpus.split(",") if x) or \
        tuple(c for c in cpus if c != o.server_cpu) or (o.server_cpu,)
    o.workers = o.workers or len(o.load_cpus)
    return o


def main(argv: list[str] | None = None) -> int:
    o = parse(argv)
    import uvloop

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = uvloop.run(run(o))
    print()
    print(f"{'scenario':>10}  {'tidings':>14}  {'mosquitto':>14}  tidings/mosquitto")
    by = {(r.server, r.scenario): r for r in results}
    for scenario, ratio in ratios(results):
        t = by[(TidingsMqtt.name, scenario)].deliveries_per_s
        m = by.get((Mosquitto.name, scenario))
        print(f"{scenario:>10}  {t:>14,.0f}  {m.deliveries_per_s if m else 0:>14,.0f}  "
              f"{ratio if ratio is not None else 'n/a'}")
    if o.json:
        record = {"started": started, "repeat": o.repeat, "window": o.window,
                  "seconds": o.seconds, "command": " ".join(["python", *sys.argv]),
                  "server_cpu": o.server_cpu, "load_cpus": list(o.load_cpus),
                  "machine_cpus": os.cpu_count(), "versions": tool_versions(),
                  "results": [asdict(r) for r in results],
                  "ratios": dict(ratios(results))}
        Path(o.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
