"""A load generator fast enough not to be the bottleneck.

Subscribers are raw asyncio Protocols on uvloop: no WebSocket or MQTT
library on the receive path. A WebSocket client does its own opening
handshake (RFC 6455 section 4.1), then walks the server's frames (servers
never mask, section 5.1, so a frame is a 2-10 byte header and the payload)
and counts *messages*, not frames: every message the harness publishes
carries the marker ``"s":`` followed by the send time in microseconds, so a
frame that holds several messages (nats-server coalesces NATS ``MSG`` lines
into one WebSocket frame) counts each. An MQTT client sends CONNECT and
SUBSCRIBE bytes itself and parses QoS 0 PUBLISH packets (MQTT 3.1.1
section 3.3).

The connections are split over several worker processes (``multiprocessing``
with the ``spawn`` start method), each pinned to the load-generator CPUs and
owning a share of the connections. Workers publish their running counters
in shared memory, so the parent (which also runs the publisher) can pace
publishing on what has been delivered, and send their latency samples back
through a pipe when a run ends.

A run of :class:`LoadGen` goes: spawn workers (they wait) -> ``connect()``
(every connection does its handshake and its subscribe; connections/s is
measured here) -> ``measure()`` opens the window in which latency is sampled
-> ``finish()`` collects reports and closes every connection with a RST
(``SO_LINGER`` 0) so 10,000 connections leave no ``TIME_WAIT`` behind.

Benchmarks measure; nothing here asserts a figure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import multiprocessing as mp
import os
import resource
import socket
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

__all__ = [
    "MARKER",
    "Endpoint",
    "LoadGen",
    "WorkerReport",
    "client_frame",
    "make_payload",
    "mqtt_connect",
    "now_us",
    "raise_nofile",
]

MARKER = b'"s":'  # followed by 16 digits: send time in microseconds since the epoch
_TS_DIGITS = 16
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3

# Phases, in the shared array's slot 0. Workers poll it.
PHASE_WAIT, PHASE_CONNECT, PHASE_MEASURE, PHASE_STOP = 0, 1, 2, 3
# Per-worker slots in the shared array: prepared, ready, failed, closed, received.
_SLOTS = 5
_PREPARED, _READY, _FAILED, _CLOSED, _RECEIVED = range(_SLOTS)


def now_us() -> int:
    """Wall-clock microseconds; the same clock in every process of the run."""
    return time.time_ns() // 1000


def make_payload(size: int = 100, ts: int | None = None) -> bytes:
    """A JSON object of exactly ``size`` bytes carrying the send time.

    ``{"s":1733000000123456,"p":"xxx..."}``: valid JSON, so Tidings can carry
    it as ``data``, and the same bytes for every server.
    """
    head = b'{"s":%016d,"p":"' % (now_us() if ts is None else ts)
    pad = size - len(head) - 2
    if pad < 0:
        raise ValueError(f"payload size {size} is below the {len(head) + 2}-byte minimum")
    return head + b"x" * pad + b'"}'


def raise_nofile() -> int:
    """Raise the open-file limit to its hard maximum (10k connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame (RFC 6455 section 5.3: clients must mask)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if n:
        key = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        masked = b""
    return header + mask + masked


@dataclass(frozen=True)
class Endpoint:
    """Where and how subscribers connect.

    ``dialect`` says what a client says after connecting and when it counts
    as ready:
      * ``plain``: WebSocket; ready on the server's first frame (``ready``);
      * ``tidings``: WebSocket, subprotocol ``tidings.v1.json``; sends
        ``connect`` (a JWT minted here) and ``subscribe``; ready on the reply;
      * ``nats``: WebSocket carrying the NATS protocol; ``CONNECT``, ``SUB``,
        ``PING``; ready on ``PONG``;
      * ``mqtt``: MQTT 3.1.1 over TCP; CONNECT, then SUBSCRIBE at ``qos`` (a
        QoS 1 PUBLISH is answered with PUBACK, section 3.4); ready on SUBACK.
        With ``jwt_secret`` set (Tidings) the CONNECT carries a token as the
        password.
    ``topic`` may hold ``{i}``, the connection's index in the run (personal topics).
    """

    dialect: str
    host: str
    port: int
    path: str = "/"
    topic: str = "bench/t"
    jwt_secret: str = ""
    qos: int = 0  # mqtt: the subscription's QoS; 1: every PUBLISH is acknowledged

    @property
    def is_ws(self) -> bool:
        return self.dialect != "mqtt"


@dataclass
class WorkerSpec:
    index: int
    endpoint: Endpoint
    first: int  # global index of this worker's first connection
    count: int
    cpus: tuple[int, ...]
    sample_every: int
    max_samples: int
    concurrency: int
    connect_timeout: float


@dataclass
class WorkerReport:
    index: int
    ready: int = 0
    failed: int = 0
    closed: int = 0
    received: int = 0
    samples: bytes = b""  # array('q') of latencies in microseconds, measure phase only
    errors: list[str] = field(default_factory=list)  # a few distinct failure texts


class _Worker:
    """State shared by one worker's connections; counters go to shared memory."""

    def __init__(self, spec: WorkerSpec, shared: Any) -> None:
        self.spec = spec
        self.shared = shared
        self.base = 1 + spec.index * _SLOTS
        self.received = 0
        self.ready = 0
        self.failed = 0
        self.closed = 0
        self.measuring = False
        self.next_sample = 0
        self.every = max(1, spec.sample_every)
        self.samples = array("q")
        self.max_samples = spec.max_samples
        self.errors: set[str] = set()
        self.protocols: list[_Sub] = []
        self.done = asyncio.Event()

    def publish(self) -> None:
        """Copy the counters into shared memory (cheap: a few ctypes stores)."""
        s, b = self.shared, self.base
        s[b + _READY] = self.ready
        s[b + _FAILED] = self.failed
        s[b + _CLOSED] = self.closed
        s[b + _RECEIVED] = self.received

    def fail(self, why: str) -> None:
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.add(why[:200])
        self.publish()
        self._maybe_done()

    def became_ready(self) -> None:
        self.ready += 1
        self.publish()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.ready + self.failed >= self.spec.count:
            self.done.set()


class _Sub(asyncio.Protocol):
    """Common parts of a subscriber connection."""

    def __init__(self, w: _Worker, index: int) -> None:
        self.w = w
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.is_ready = False
        self.gone = False
        self.settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.w.protocols.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.gone:
            return
        self.gone = True
        self._settle()
        if self.is_ready:
            self.w.closed += 1
            self.w.publish()
        else:
            self.w.fail(f"closed before ready: {exc!r}" if exc else "closed before ready")

    def _ready(self) -> None:
        if not self.is_ready:
            self.is_ready = True
            self._settle()
            self.w.became_ready()

    def _bad(self, why: str) -> None:
        """A peer we cannot go on with: count it and drop the connection."""
        if not self.is_ready and not self.gone:
            self.gone = True
            self._settle()
            self.w.fail(why)
        if self.transport is not None:
            self.transport.abort()

    def _count(self, data: bytearray | bytes, start: int, end: int, now: int) -> None:
        """Count the messages in ``data[start:end]``; maybe take a latency sample."""
        w = self.w
        n = data.count(MARKER, start, end)
        if not n:
            return
        w.received += n
        if w.measuring and w.received >= w.next_sample:
            w.next_sample = w.received + w.every
            j = data.find(MARKER, start, end) + 4
            try:
                ts = int(data[j:j + _TS_DIGITS])
            except ValueError:
                return
            if len(w.samples) < w.max_samples:
                w.samples.append(now - ts)

    def reset(self) -> None:
        """Close with a RST so no TIME_WAIT is left behind."""
        t = self.transport
        if t is None or t.is_closing():
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()


class WsSub(_Sub):
    """A WebSocket subscriber: handshake, then frames (RFC 6455 section 5.2)."""

    def __init__(self, w: _Worker, index: int) -> None:
        super().__init__(w, index)
        self.open = False
        self.key = base64.b64encode(os.urandom(16))
        ep = w.spec.endpoint
        self.dialect = ep.dialect

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ep = self.w.spec.endpoint
        lines = [
            b"GET %s HTTP/1.1" % ep.path.encode(),
            b"Host: %s:%d" % (ep.host.encode(), ep.port),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + self.key,
            b"Sec-WebSocket-Version: 13",
        ]
        if self.dialect == "tidings":
            lines.append(b"Sec-WebSocket-Protocol: tidings.v1.json")
        assert self.transport is not None
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def _handshake(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self._bad("handshake response too long")
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[:end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            self._bad(f"handshake refused: {status}")
            return
        accept = base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest()).decode()
        if accept not in head:
            self._bad("bad Sec-WebSocket-Accept")
            return
        self.open = True
        self._hello()

    def _send(self, payload: bytes, opcode: int = 0x1) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload, opcode))

    def _hello(self) -> None:
        ep = self.w.spec.endpoint
        topic = ep.topic.format(i=self.index)
        if self.dialect == "tidings":
            token = _mint(ep.jwt_secret, f"b{self.index}")
            self._send(b'{"op":"connect","id":1,"token":"%s"}' % token.encode())
            self._send(b'{"op":"subscribe","id":2,"topic":"%s"}' % topic.encode())
        elif self.dialect == "nats":
            subject = topic.replace("/", ".").encode()
            self._send(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n'
                       b"SUB " + subject + b" 1\r\nPING\r\n")

    def _control(self, payload: bytes) -> None:
        """Readiness and errors, from a frame that carries no benchmark message."""
        d = self.dialect
        if d == "plain":
            self._ready()
        elif d == "tidings":
            if b'"ok":false' in payload:
                self._bad(f"tidings error: {payload[:200]!r}")
            elif b'"id":2,' in payload:
                self._ready()
        elif d == "nats":
            if b"PING\r\n" in payload:
                self._send(b"PONG\r\n")
            if b"PONG\r\n" in payload:
                self._ready()
            if b"-ERR" in payload:
                self._bad(f"nats error: {payload[:200]!r}")

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.open:
            self._handshake()
            if not self.open:
                return
        w = self.w
        now = now_us()
        measuring = w.measuring
        n = len(buf)
        i = 0
        while n - i >= 2:
            b0 = buf[i]
            ln = buf[i + 1]
            if ln & 0x80:
                self._bad("masked server frame")
                return
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2:i + 10], "big")
                h = 10
            end = i + h + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op <= 2:
                before = w.received
                if measuring:
                    self._count(buf, i + h, end, now)
                else:
                    w.received += buf.count(MARKER, i + h, end)
                if w.received == before:
                    self._control(bytes(buf[i + h:end]))
            elif op == 0x9:  # ping: answer with a pong carrying the same data
                self._send(bytes(buf[i + h:end]), 0xA)
            elif op == 0x8:  # close: echo it, then let the server close the TCP
                self._send(bytes(buf[i + h:i + h + 2]), 0x8)
                del buf[:]
                return
            i = end
        if i:
            del buf[:i]
        w.shared[w.base + _RECEIVED] = w.received


class MqttSub(_Sub):
    """An MQTT 3.1.1 subscriber: CONNECT, SUBSCRIBE QoS 0, count PUBLISH packets."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        secret = self.w.spec.endpoint.jwt_secret
        user = f"b{self.index}"
        token = _mint(secret, user) if secret else None
        assert self.transport is not None
        self.transport.write(mqtt_connect(f"bench-{os.getpid()}-{self.index}", user, token))

    def _subscribe(self) -> None:
        ep = self.w.spec.endpoint
        topic = ep.topic.format(i=self.index).encode()
        body = b"\x00\x01" + struct.pack("!H", len(topic)) + topic + bytes((ep.qos,))
        assert self.transport is not None
        self.transport.write(b"\x82" + _remaining(len(body)) + body)  # section 3.8

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        w = self.w
        now = now_us()
        measuring = w.measuring
        n = len(buf)
        i = 0
        acks: list[bytes] = []
        while n - i >= 2:
            b0 = buf[i]
            # Remaining length: 1-4 bytes, 7 bits each (section 2.2.3).
            ln = 0
            shift = 0
            j = i + 1
            while True:
                if j >= n:
                    ln = -1
                    break
                b = buf[j]
                ln |= (b & 0x7F) << shift
                j += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self._bad("malformed remaining length")
                    return
            if ln < 0:
                break
            end = j + ln
            if end > n:
                break
            kind = b0 >> 4
            if kind == 3:  # PUBLISH
                w.received += 1
                if b0 & 0x06:  # QoS 1: PUBACK the packet id after the topic (section 3.3.2)
                    k = j + 2 + ((buf[j] << 8) | buf[j + 1])
                    acks.append(b"\x40\x02" + bytes(buf[k:k + 2]))
                if measuring and w.received >= w.next_sample:
                    w.next_sample = w.received + w.every
                    k = buf.find(MARKER, j, end) + 4
                    if k >= 4 and len(w.samples) < w.max_samples:
                        with contextlib.suppress(ValueError):
                            w.samples.append(now - int(buf[k:k + _TS_DIGITS]))
            elif kind == 2:  # CONNACK: return code in the second byte (section 3.2.2.3)
                if ln >= 2 and buf[j + 1] != 0:
                    self._bad(f"CONNACK refused: {buf[j + 1]}")
                    return
                self._subscribe()
            elif kind == 9:  # SUBACK: 0x80 is failure (section 3.9.3)
                if buf[end - 1] == 0x80:
                    self._bad("SUBACK refused")
                    return
                self._ready()
            i = end
        if i:
            del buf[:i]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))
        w.shared[w.base + _RECEIVED] = w.received


def mqtt_connect(client_id: str, user: str | None = None, password: str | None = None
                 ) -> bytes:
    """An MQTT 3.1.1 CONNECT (section 3.1): clean session, keepalive 0 (off).

    With ``password`` (a Tidings token) the username and password flags are set.
    """
    flags = 0x02
    payload = _utf8(client_id)
    if password is not None:
        flags |= 0xC0
        payload += _utf8(user or "") + _utf8(password)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + b"\x00\x00" + payload
    return b"\x10" + _remaining(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("!H", len(raw)) + raw


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


_jwt_cache: dict[tuple[str, str], str] = {}


def _mint(secret: str, user: str) -> str:
    """An HS256 token for ``user`` (claims sub, iat, exp), signed with the run's secret."""
    import jwt

    key = (secret, user)
    tok = _jwt_cache.get(key)
    if tok is None:
        now = int(time.time())
        tok = jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret,
                         algorithm="HS256")
        _jwt_cache[key] = tok
    return tok


# -- the worker process ------------------------------------------------------------


def _worker_main(spec: WorkerSpec, shared: Any, pipe: Connection) -> None:
    """Entry point of a worker process: pin, raise limits, run the loop, report."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, spec.cpus)
    raise_nofile()
    import uvloop

    report = uvloop.run(_worker(spec, shared))
    pipe.send(report)
    pipe.close()


async def _wait_phase(shared: Any, phase: int, poll: float = 0.005) -> None:
    """The phase lives in shared memory written by another process: poll it."""
    while shared[0] < phase:  # noqa: ASYNC110 - no Event crosses processes
        await asyncio.sleep(poll)


async def _worker(spec: WorkerSpec, shared: Any) -> WorkerReport:
    w = _Worker(spec, shared)
    loop = asyncio.get_running_loop()
    ep = spec.endpoint
    factory: Callable[[int], _Sub]
    if ep.is_ws:
        factory = lambda i: WsSub(w, i)  # noqa: E731
        if ep.dialect == "tidings":
            for i in range(spec.first, spec.first + spec.count):
                _mint(ep.jwt_secret, f"b{i}")  # before the clock starts
    else:
        factory = lambda i: MqttSub(w, i)  # noqa: E731
    shared[w.base + _PREPARED] = 1
    await _wait_phase(shared, PHASE_CONNECT)

    gate = asyncio.Semaphore(spec.concurrency)
    deadline = loop.time() + spec.connect_timeout

    async def one(i: int) -> None:
        async with gate:
            left = deadline - loop.time()
            if left <= 0:
                w.fail("connect deadline passed")
                return
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: factory(i), ep.host, ep.port), left)
            except (OSError, TimeoutError) as e:
                w.fail(f"connect: {e!r}")
                return
            # Hold the slot until this connection is ready or gone, so the
            # concurrency bound covers handshakes too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.settled),
                                       max(0.0, deadline - loop.time()))

    tasks = [loop.create_task(one(i)) for i in range(spec.first, spec.first + spec.count)]
    await asyncio.gather(*tasks)
    for p in w.protocols:
        if not p.is_ready and not p.gone:
            p._bad("not ready before the connect deadline")
    w.publish()

    await _wait_phase(shared, PHASE_MEASURE)
    w.next_sample = w.received
    w.measuring = True
    await _wait_phase(shared, PHASE_STOP)
    w.measuring = False
    w.publish()
    report = WorkerReport(spec.index, w.ready, w.failed, w.closed, w.received,
                          w.samples.tobytes(), sorted(w.errors))
    for p in w.protocols:
        p.reset()
    await asyncio.sleep(0.05)
    return report


# -- the parent side ---------------------------------------------------------------


@dataclass
class ConnectResult:
    requested: int
    ready: int
    failed: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.ready / self.seconds if self.seconds > 0 else 0.0


class LoadGen:
    """The parent's handle on a set of worker processes for one run."""

    def __init__(self, endpoint: Endpoint, connections: int, *, workers: int,
                 cpus: tuple[int, ...], sample_every: int = 1,
                 max_samples: int = 400_000, concurrency: int = 200,
                 connect_timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.connections = connections
        nworkers = max(1, min(workers, connections))
        self._ctx = mp.get_context("spawn")
        self.shared = self._ctx.Array("q", 1 + nworkers * _SLOTS, lock=False)
        self._procs: list[Any] = []
        self._pipes: list[Connection] = []
        share, extra = divmod(connections, nworkers)
        first = 0
        self._specs: list[WorkerSpec] = []
        for k in range(nworkers):
            count = share + (1 if k < extra else 0)
            self._specs.append(WorkerSpec(k, endpoint, first, count, cpus, sample_every,
                                          max_samples, concurrency, connect_timeout))
            first += count
        self.reports: list[WorkerReport] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _sum(self, slot: int) -> int:
        s = self.shared
        return sum(s[1 + k * _SLOTS + slot] for k in range(len(self._specs)))

    def received(self) -> int:
        return self._sum(_RECEIVED)

    def ready(self) -> int:
        return self._sum(_READY)

    def failed(self) -> int:
        return self._sum(_FAILED)

    def closed(self) -> int:
        return self._sum(_CLOSED)

    def alive(self) -> int:
        return self.ready() - self.closed()

    async def start(self, within: float = 30.0) -> None:
        """Spawn the workers and wait until each is prepared (imports done, tokens minted)."""
        for spec in self._specs:
            parent, child = self._ctx.Pipe(duplex=False)
            proc = self._ctx.Process(target=_worker_main, args=(spec, self.shared, child),
                                     daemon=True, name=f"loadgen-{spec.index}")
            proc.start()
            child.close()
            self._procs.append(proc)
            self._pipes.append(parent)
        await self._until(lambda: self._sum(_PREPARED) >= len(self._specs), within,
                          "workers did not start")

    async def _until(self, cond: Callable[[], bool], within: float, what: str) -> None:
        """Poll ``cond`` (shared-memory counters) until true; bounded by ``within`` s."""
        deadline = time.monotonic() + within
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            if any(not p.is_alive() for p in self._procs):
                raise RuntimeError(f"{what}: a load-generator worker died")
            await asyncio.sleep(0.005)

    async def connect(self) -> ConnectResult:
        """Open every connection; bounded by the workers' connect deadline."""
        t0 = time.monotonic()
        self.shared[0] = PHASE_CONNECT
        spec_timeout = self._specs[0].connect_timeout + 5
        await self._until(lambda: self.ready() + self.failed() >= self.connections,
                          spec_timeout, "connections not settled")
        return ConnectResult(self.connections, self.ready(), self.failed(),
                             time.monotonic() - t0)

    def measure(self) -> None:
        """Open the measurement window: workers start sampling latency."""
        self.shared[0] = PHASE_MEASURE

    async def finish(self, within: float = 30.0) -> list[WorkerReport]:
        """Close the window, collect every worker's report, reap the workers."""
        self.shared[0] = PHASE_STOP
        loop = asyncio.get_running_loop()
        reports: list[WorkerReport] = []
        deadline = time.monotonic() + within
        for pipe in self._pipes:
            left = max(0.1, deadline - time.monotonic())
            ok = await loop.run_in_executor(None, pipe.poll, left)
            if ok:
                with contextlib.suppress(EOFError):
                    reports.append(pipe.recv())
        self.reports = reports
        self.close()
        return reports

    def close(self) -> None:
        """Stop every worker this LoadGen started (by its own handle), idempotent."""
        self.shared[0] = PHASE_STOP
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        for pipe in self._pipes:
            pipe.close()
        self._procs.clear()
        self._pipes.clear()

    def samples(self) -> array[int]:
        out = array("q")
        for r in self.reports:
            a = array("q")
            a.frombytes(r.samples)
            out.extend(a)
        return out

    def errors(self) -> list[str]:
        seen: list[str] = []
        for r in self.reports:
            for e in r.errors:
                if e not in seen:
                    seen.append(e)
        return seen[:5]


def percentiles(samples: array[int] | list[int], qs: tuple[float, ...] = (0.5, 0.99, 0.999)
                ) -> dict[str, float | None]:
    """Nearest-rank percentiles in milliseconds; None when there are no samples."""
    keys = {0.5: "p50_ms", 0.99: "p99_ms", 0.999: "p999_ms"}
    if not samples:
        return {keys.get(q, f"p{q}"): None for q in qs}
    s = sorted(samples)
    out: dict[str, float | None] = {}
    for q in qs:
        k = min(len(s) - 1, max(0, int(q * len(s) + 0.5) - 1))
        out[keys.get(q, f"p{q}")] = round(s[k] / 1000.0, 3)
    return out
