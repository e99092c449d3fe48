"""Publishers: how the harness hands a message to each server, and how fast.

Each publisher takes ready-made payloads (:func:`loadgen.make_payload`,
stamped with the send time just before ``send``) and a topic, and speaks the
server's own publishing protocol:

* Tidings: ``POST /v1/publish`` on the HTTP API (what a backend does; the
  issue 2 benchmark), or ``publish`` commands pipelined over one WebSocket
  (personal topics, where every message is a separate publish);
* websockets / Node ``ws`` references: text frames on a ``/publish`` WebSocket;
* nats-server: ``PUB subject n`` over a raw NATS client connection;
* mosquitto: MQTT QoS 0 PUBLISH packets over a raw TCP connection.

Two pacing loops drive them: :func:`closed_loop` keeps a bounded number of
deliveries in flight (published but not yet counted by the load generator),
so the server is always busy yet no queue grows without bound; and
:func:`fixed_rate` publishes on a fixed schedule for latency runs, and stops
adding load if the server falls more than a second behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import websockets
from loadgen import make_payload, mqtt_connect
from websockets.asyncio.client import ClientConnection, connect

__all__ = [
    "HttpBatchPublisher",
    "HttpPublisher",
    "MqttPublisher",
    "NatsPublisher",
    "PaceResult",
    "PlainWsPublisher",
    "Publisher",
    "TidingsWsPublisher",
    "closed_loop",
    "fixed_rate",
    "random_topic",
]


class Publisher:
    """Base: ``start``, then ``send`` (may wait for capacity), then ``close``."""

    def __init__(self) -> None:
        self.sent = 0
        self.errors = 0
        self.last_error = ""

    async def start(self) -> None:
        raise NotImplementedError

    async def send(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def idle(self) -> None:
        """The pacing loop has nothing more to send right now (a batching publisher
        sends what it gathered)."""

    async def flush(self) -> None:
        """Wait until everything sent so far has left this process (bounded)."""

    async def close(self) -> None:
        raise NotImplementedError

    def _error(self, why: str) -> None:
        self.errors += 1
        self.last_error = why[:200]


class HttpPublisher(Publisher):
    """Tidings' HTTP API, a few requests in flight on keep-alive connections."""

    def __init__(self, base: str, key: str, concurrency: int = 64) -> None:
        super().__init__()
        self.base = base
        self.key = key
        self.gate = asyncio.Semaphore(concurrency)
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            headers={"Authorization": f"Bearer {self.key}",
                     "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=30))

    async def send(self, topic: str, payload: bytes) -> None:
        await self.gate.acquire()
        body = b'{"topic":"%s","data":%s}' % (topic.encode(), payload)
        self.sent += 1
        task = asyncio.get_running_loop().create_task(self._post(body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _post(self, body: bytes, path: str = "/v1/publish") -> None:
        assert self.session is not None
        try:
            async with self.session.post(self.base + path, data=body) as r:
                if r.status != 200:
                    self._error(f"HTTP {r.status}: {(await r.text())[:150]}")
                else:
                    await r.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            self._error(repr(e))
        finally:
            self.gate.release()

    async def flush(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=10)

    async def close(self) -> None:
        await self.flush()
        if self.session is not None:
            await self.session.close()


class HttpBatchPublisher(HttpPublisher):
    """Tidings' ``POST /v1/publish/batch``: messages gathered into batches of
    ``batch`` (or what was gathered when the pacing loop yields), a few
    requests in flight."""

    def __init__(self, base: str, key: str, batch: int = 100, concurrency: int = 8) -> None:
        super().__init__(base, key, concurrency)
        self.batch = batch
        self.pending: list[bytes] = []

    async def send(self, topic: str, payload: bytes) -> None:
        self.sent += 1
        self.pending.append(b'{"topic":"%s","data":%s}' % (topic.encode(), payload))
        if len(self.pending) >= self.batch:
            await self._post_pending()

    async def _post_pending(self) -> None:
        if not self.pending:
            return
        body = b'{"messages":[%s]}' % b",".join(self.pending)
        self.pending = []
        await self.gate.acquire()
        task = asyncio.get_running_loop().create_task(self._post(body, "/v1/publish/batch"))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def idle(self) -> None:
        await self._post_pending()

    async def flush(self) -> None:
        await self._post_pending()
        await super().flush()


class _WsPublisher(Publisher):
    def __init__(self, uri: str, subprotocol: str | None = None) -> None:
        super().__init__()
        self.uri = uri
        self.subprotocol = subprotocol
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        subs = [websockets.Subprotocol(self.subprotocol)] if self.subprotocol else None
        self.ws = await connect(self.uri, subprotocols=subs, compression=None,
                                max_size=1 << 22, ping_interval=None, open_timeout=10)

    async def _drain_replies(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if isinstance(msg, str) and '"ok":false' in msg:
                    self._error(msg)
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()


class PlainWsPublisher(_WsPublisher):
    """The reference servers: every text frame on ``/publish`` is broadcast."""

    async def send(self, topic: str, payload: bytes) -> None:
        assert self.ws is not None
        self.sent += 1
        await self.ws.send(payload.decode())


class TidingsWsPublisher(_WsPublisher):
    """``publish`` commands pipelined on one Tidings WebSocket (replies drained)."""

    def __init__(self, host: str, port: int, secret: str) -> None:
        super().__init__(f"ws://{host}:{port}/ws", "tidings.v1.json")
        self.secret = secret
        self.next_id = 10

    async def start(self) -> None:
        import jwt

        await super().start()
        assert self.ws is not None
        now = int(time.time())
        token = jwt.encode({"sub": "bench-publisher", "iat": now, "exp": now + 3600,
                            "publish": ["bench/#"]}, self.secret, algorithm="HS256")
        await self.ws.send(f'{{"op":"connect","id":1,"token":"{token}"}}')
        reply = await asyncio.wait_for(self.ws.recv(), 10)
        if '"ok":true' not in str(reply):
            raise RuntimeError(f"tidings publisher connect failed: {reply!r:.200}")
        self.reader = asyncio.get_running_loop().create_task(self._drain_replies())

    async def send(self, topic: str, payload: bytes) -> None:
        assert self.ws is not None
        self.next_id += 1
        self.sent += 1
        await self.ws.send(f'{{"op":"publish","id":{self.next_id},"topic":"{topic}",'
                           f'"data":{payload.decode()}}}')


class _StreamPublisher(Publisher):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.reader_stream: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        self.reader_stream, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), 10)

    async def _drain_incoming(self, on_data: Callable[[bytes], None]) -> None:
        assert self.reader_stream is not None
        try:
            while True:
                data = await self.reader_stream.read(65536)
                if not data:
                    return
                on_data(data)
        except (OSError, asyncio.CancelledError):
            return

    async def _write(self, data: bytes) -> None:
        assert self.writer is not None
        self.sent += 1
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > 1 << 16:
            await self.writer.drain()

    async def flush(self) -> None:
        if self.writer is not None:
            await asyncio.wait_for(self.writer.drain(), 10)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(self.writer.wait_closed(), 5)


class NatsPublisher(_StreamPublisher):
    """A raw NATS client: ``CONNECT``, then ``PUB subject n\\r\\npayload\\r\\n``."""

    async def start(self) -> None:
        await self._open()
        assert self.reader_stream is not None and self.writer is not None
        info = await asyncio.wait_for(self.reader_stream.readline(), 10)
        if not info.startswith(b"INFO"):
            raise RuntimeError(f"nats: unexpected greeting {info[:100]!r}")
        self.writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        pong = await asyncio.wait_for(self.reader_stream.readline(), 10)
        if not pong.startswith(b"PONG"):
            raise RuntimeError(f"nats: no PONG after CONNECT: {pong[:100]!r}")
        self.reader = asyncio.get_running_loop().create_task(self._drain_incoming(self._on))

    def _on(self, data: bytes) -> None:
        if b"PING\r\n" in data and self.writer is not None:
            self.writer.write(b"PONG\r\n")
        if b"-ERR" in data:
            self._error(data.decode(errors="replace"))

    async def send(self, topic: str, payload: bytes) -> None:
        subject = topic.replace("/", ".").encode()
        await self._write(b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload))


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


class MqttPublisher(_StreamPublisher):
    """A raw MQTT 3.1.1 client publishing QoS 0 (section 3.3, no packet id), or QoS 1
    (a packet id each; the server's PUBACKs are read and dropped)."""

    def __init__(self, host: str, port: int, secret: str = "", qos: int = 0) -> None:
        super().__init__(host, port)
        self.secret = secret
        self.qos = qos
        self.pid = 0

    async def start(self) -> None:
        await self._open()
        assert self.reader_stream is not None and self.writer is not None
        token = None
        if self.secret:  # Tidings: the password is a token allowed to publish bench/#
            import jwt

            now = int(time.time())
            token = jwt.encode({"sub": "bench-publisher", "iat": now, "exp": now + 3600,
                                "publish": ["bench/#"]}, self.secret, algorithm="HS256")
        self.writer.write(mqtt_connect("bench-publisher", "bench-publisher", token))
        ack = await asyncio.wait_for(self.reader_stream.readexactly(4), 10)
        if ack[0] != 0x20 or ack[3] != 0:
            raise RuntimeError(f"mqtt: CONNACK refused: {ack!r}")
        self.reader = asyncio.get_running_loop().create_task(self._drain_incoming(lambda d: None))

    async def send(self, topic: str, payload: bytes) -> None:
        t = topic.encode()
        if self.qos:
            self.pid = self.pid % 65535 + 1
            body = struct.pack("!H", len(t)) + t + struct.pack("!H", self.pid) + payload
            await self._write(b"\x32" + _remaining(len(body)) + body)
            return
        body = struct.pack("!H", len(t)) + t + payload
        await self._write(b"\x30" + _remaining(len(body)) + body)


# -- pacing -------------------------------------------------------------------------


@dataclass
class PaceResult:
    published: int = 0
    expected: int = 0  # deliveries the published messages should cause
    stalls: int = 0  # times nothing arrived for a second and the window was re-based
    overloaded: bool = False  # fixed rate: the server fell over a second behind
    skipped: int = 0  # fixed rate: sends left out while overloaded


TopicFn = Callable[[], str]


async def closed_loop(pub: Publisher, received: Callable[[], int], fanout: Callable[[], int],
                      topic: TopicFn, window: int, until: float, result: PaceResult,
                      size: int = 100) -> None:
    """Publish as fast as the server delivers, with at most ``window`` deliveries in flight.

    ``received()`` is the load generator's running total, ``fanout()`` how
    many deliveries one message causes now. Ends at ``until`` (monotonic).
    """
    last_progress = time.monotonic()
    last_received = received()
    while True:
        now = time.monotonic()
        if now >= until:
            return
        got = received()
        if got != last_received:
            last_received, last_progress = got, now
        elif now - last_progress > 1.0 and result.expected > got:
            result.stalls += 1  # something was lost: re-base so the run goes on
            result.expected = got
            last_progress = now
        sent_any = False
        for _ in range(64):
            if result.expected - got >= window:
                break
            f = fanout()
            if f <= 0:
                break
            await pub.send(topic(), make_payload(size))
            result.published += 1
            result.expected += f
            sent_any = True
        if not sent_any:
            await pub.idle()
            await asyncio.sleep(0.001)  # uvloop rounds below 1 ms to 0: a busy loop
        else:
            await asyncio.sleep(0)


async def fixed_rate(pub: Publisher, received: Callable[[], int], fanout: Callable[[], int],
                     topic: TopicFn, rate: float, until: float, result: PaceResult,
                     size: int = 100) -> None:
    """Publish ``rate`` messages/s on a fixed schedule until ``until`` (monotonic).

    If the deliveries in flight exceed one second's worth, sends are skipped
    (and counted) until the server catches up: the result is then flagged
    ``overloaded`` and its latency says so.
    """
    interval = 1.0 / rate
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= until:
            return
        if now < next_at:
            await asyncio.sleep(next_at - now)
            continue
        f = fanout()
        budget = rate * f  # one second of deliveries
        burst = 0
        while next_at <= now and burst < 100:
            if result.expected - received() > budget:
                result.overloaded = True
                result.skipped += 1
            else:
                await pub.send(topic(), make_payload(size))
                result.published += 1
                result.expected += f
            next_at += interval
            burst += 1
        if next_at < now - 1.0:  # far behind (a stalled loop): do not try to catch up
            next_at = now


def random_topic(template: str, n: int, rng: random.Random) -> TopicFn:
    """Personal topics: a random one of ``n`` per message."""
    return lambda: template.format(i=rng.randrange(n))
