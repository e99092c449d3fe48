"""MQTT CONNECT cost in a cluster (issue 15): claims and takeovers across nodes.

    python bench/mqtt_takeover.py                  # 200 connects, 100 takeovers each
    python bench/mqtt_takeover.py --rounds 400

Two Tidings nodes (bench/cluster.py's ``RedisNode``) on one Redis; one
MQTT 5.0 client at a time, over raw TCP, the CONNECT's time to its CONNACK:

* ``fresh``: a new client id on node 1 (the claim: one Redis round trip);
* ``same-node``: a kept session (one subscription) connected again on the
  node that holds it while its old connection is open (the local takeover);
* ``cross-node``: the same, alternately on node 2 and node 1, so each
  CONNECT moves the session from the other node (hold, release, resume).

Prints p50 / p90 / p99 / max in milliseconds. Benchmarks measure; nothing
here asserts a figure. Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from servers import HOST, JWT_SECRET  # noqa: E402

from cluster import RedisNode, RedisProc  # noqa: E402

_STARTED: list[RedisProc | RedisNode] = []


def _mint(user: str) -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, JWT_SECRET,
                      algorithm="HS256")


def _utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def _frame(first: int, body: bytes) -> bytes:
    n, out = len(body), bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(out) + body


def _connect(client_id: str, token: str) -> bytes:
    """A 5.0 CONNECT, clean start 0, Session Expiry Interval 300, password ``token``."""
    props = b"\x05\x11" + (300).to_bytes(4, "big")
    var = _utf8("MQTT") + bytes([5, 0xC0]) + (60).to_bytes(2, "big") + props
    return _frame(0x10, var + _utf8(client_id) + _utf8("bench") + _utf8(token))


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


class Device:
    """One raw MQTT 5.0 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, client_id: str, token: str) -> tuple[Device, float]:
        """Connected, and the seconds from CONNECT written to CONNACK read."""
        reader, writer = await asyncio.open_connection(HOST, port)
        start = time.perf_counter()
        writer.write(_connect(client_id, token))
        kind, body = await asyncio.wait_for(_read_packet(reader), 10)
        took = time.perf_counter() - start
        if kind != 2 or body[1] != 0:
            raise RuntimeError(f"CONNACK refused: {body!r}")
        return cls(reader, writer), took

    async def subscribe(self, flt: str) -> None:
        self.writer.write(_frame(0x82, (1).to_bytes(2, "big") + b"\x00" + _utf8(flt) + b"\x01"))
        kind, _ = await asyncio.wait_for(_read_packet(self.reader), 10)
        if kind != 9:
            raise RuntimeError("no SUBACK")

    def close(self) -> None:
        self.writer.transport.abort()


def _ms(samples: list[float]) -> str:
    """Nearest-rank p50 / p90 / p99 / max of ``samples`` (seconds), in milliseconds."""
    s = sorted(samples)
    rank = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    return " ".join(f"{k}={s[max(0, math.ceil(q * len(s)) - 1)] * 1000:.2f}"
                    for k, q in rank.items())


async def measure(nodes: list[RedisNode], rounds: int) -> dict[str, list[float]]:
    token = _mint("bench-device")
    out: dict[str, list[float]] = {"fresh": [], "same-node": [], "cross-node": []}
    users = [_mint(f"bench-user-{i}") for i in range(rounds)]  # kept sessions per user
    for i in range(rounds):
        device, took = await Device.connect(nodes[0].mqtt_port, f"fresh-{i}", users[i])
        out["fresh"].append(took)
        device.close()
    for kind, ports in (("same-node", [nodes[0].mqtt_port] * 2),
                        ("cross-node", [n.mqtt_port for n in nodes])):
        old, _ = await Device.connect(ports[0], kind, token)
        await old.subscribe(f"bench/{kind}/#")
        for i in range(rounds):
            new, took = await Device.connect(ports[(i + 1) % 2], kind, token)
            out[kind].append(took)
            old.close()
            old = new
        old.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100, help="CONNECTs per kind (max 10000)")
    o = ap.parse_args(argv)
    rounds = max(1, min(o.rounds, 10000))
    atexit.register(lambda: [t.stop() for t in reversed(_STARTED)])
    redis_proc = RedisProc(cpu=0)
    redis_proc.start()
    _STARTED.append(redis_proc)
    nodes = [RedisNode(0, f"bench-{i + 1}", redis_proc.url) for i in range(2)]
    for n in nodes:
        n.start()
        _STARTED.append(n)
    results = asyncio.run(measure(nodes, rounds))
    for kind, samples in results.items():
        print(f"{kind:11s} CONNECT->CONNACK ms ({len(samples)}): {_ms(samples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
