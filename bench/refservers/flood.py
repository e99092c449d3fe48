"""A trivial server that floods pre-built messages: the load generator's ceiling.

It does no work per message: once told to start (SIGUSR1, sent by the
harness after every connection is in, so the handshakes are not starved),
each connection gets the same pre-built batch
of frames (WebSocket) or PUBLISH packets (MQTT) written again and again
while its transport accepts more (``pause_writing``/``resume_writing``). The
deliveries/s the load generator counts against it is the most the load
generator itself can count on this machine; a server measured near that
figure is limited by the load generator, not by itself.

    python bench/refservers/flood.py PORT --mode ws|mqtt

Prints ``READY <port>``; floods on SIGUSR1; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import struct
import sys
from pathlib import Path
from typing import cast

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadgen import make_payload

__all__ = ["main"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_BATCH = 64  # messages per write


def ws_frame(payload: bytes) -> bytes:
    return bytes((0x81, len(payload))) + payload if len(payload) < 126 else \
        struct.pack("!BBH", 0x81, 126, len(payload)) + payload


def mqtt_publish(topic: bytes, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + payload
    n, rl = len(body), bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        rl.append(b | 0x80 if n else b)
        if not n:
            break
    return b"\x30" + bytes(rl) + body


GO = asyncio.Event()  # set on SIGUSR1
WAITING: list[Flood] = []


class Flood(asyncio.Protocol):
    def __init__(self, mode: str, batch: bytes) -> None:
        self.mode = mode
        self.batch = batch
        self.buf = b""
        self.flooding = False
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=65536)

    def data_received(self, data: bytes) -> None:
        if self.flooding:
            return
        self.buf += data
        if self.mode == "ws":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in self.buf[:end].split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                                 b"\r\n\r\n" + ws_frame(b"ready"))
            self._start()
        else:
            while len(self.buf) >= 2:
                kind, ln = self.buf[0] >> 4, self.buf[1]  # client packets here are < 128 bytes
                if len(self.buf) < 2 + ln:
                    return
                pkt, self.buf = self.buf[:2 + ln], self.buf[2 + ln:]
                assert self.transport is not None
                if kind == 1:
                    self.transport.write(b"\x20\x02\x00\x00")
                elif kind == 8:
                    self.transport.write(b"\x90\x03" + pkt[2:4] + b"\x00")
                    self._start()
                    return

    def _start(self) -> None:
        self.flooding = True
        if GO.is_set():
            self._pump()
        else:
            WAITING.append(self)

    def _pump(self) -> None:
        t = self.transport
        while t is not None and not self.paused and not t.is_closing():
            t.write(self.batch)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        asyncio.get_running_loop().call_soon(self._pump)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def run(host: str, port: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    def go() -> None:
        GO.set()
        for f in WAITING:
            f._pump()
        WAITING.clear()

    loop.add_signal_handler(signal.SIGUSR1, go)
    payload = make_payload(100, ts=0)
    one = ws_frame(payload) if mode == "ws" else mqtt_publish(b"bench/t", payload)
    batch = one * _BATCH
    server = await loop.create_server(lambda: Flood(mode, batch), host, port, backlog=4096)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        await stop
    finally:
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mode", choices=("ws", "mqtt"), default="ws")
    a = p.parse_args()
    uvloop.run(run(a.host, a.port, a.mode))


if __name__ == "__main__":
    main()
