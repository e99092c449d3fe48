"""Connection setup rate and idle memory per connection, WS and MQTT (issue 14).

    python bench/connect.py                         # 2,000 connections per edge
    python bench/connect.py --count 4000 --concurrency 64
    python bench/connect.py --src /work/wt/base/server   # another checkout's server
    python bench/connect.py --profile /tmp/connect.prof  # cProfile the server

Starts ``python -m tidings.cli serve`` on free loopback ports (SQLite in a
temporary folder, memory bus), mints one distinct token per connection, then
for each edge opens ``--count`` connections, ``--concurrency`` at a time,
each to the point where the client may use it (WS: upgrade, ``connect``
command and its reply; MQTT: CONNECT with the token as password and the
CONNACK), and keeps them all open. It prints connections per second (wall
time of the opening phase), the server's CPU time per connection over that
phase (from /proc: steadier than wall time on a shared machine) and the
server's VmRSS growth per idle connection once all are open. The clients
speak the wire by hand (a raw upgrade and masked frames, raw CONNECT bytes) so
the load generator costs little of the machine's CPU next to the server.

Each edge gets a server process of its own. ``--profile PATH`` runs them under
cProfile and writes the stats to ``PATH.ws.prof`` / ``PATH.mqtt.prof`` when they
exit (the server is stopped with SIGINT, which it handles as a clean
shutdown). Measures; asserts nothing. The server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import jwt
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from servers import HOST, free_port, rss_bytes  # noqa: E402

SECRET = "c" * 32
_UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/PID/stat), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tokens(count: int, prefix: str) -> list[str]:
    """One distinct token per connection (distinct users, as real clients are)."""
    exp = int(time.time()) + 3600
    return [jwt.encode({"sub": f"{prefix}{i}", "exp": exp, "iat": exp - 3600}, SECRET,
                       algorithm="HS256") for i in range(count)]


def ws_text_frame(payload: bytes) -> bytes:
    """A masked client text frame (mask key 0: the payload bytes stay as they are)."""
    n = len(payload)
    head = bytes((0x81,)) + (bytes((0x80 | n,)) if n < 126 else
                             bytes((0x80 | 126,)) + struct.pack("!H", n))
    return head + b"\x00\x00\x00\x00" + payload


async def ws_open(port: int, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(_UPGRADE)
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"upgrade refused: {head[:80]!r}")
    writer.write(ws_text_frame(orjson.dumps({"op": "connect", "id": 1, "token": token})))
    first = await reader.readexactly(2)
    n = first[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    reply = orjson.loads(await reader.readexactly(n))
    if not reply.get("ok"):
        raise RuntimeError(f"connect refused: {reply}")
    return writer


def mqtt_connect_packet(client_id: str, token: str) -> bytes:
    def s(value: str) -> bytes:
        b = value.encode()
        return struct.pack("!H", len(b)) + b
    # 3.1.1, clean session, username and password flags, keep alive 0
    body = s("MQTT") + bytes((4, 0xC2)) + struct.pack("!H", 0) + s(client_id) + s("u") + s(token)
    n, vbi = len(body), b""
    while True:
        n, digit = divmod(n, 128)
        vbi += bytes((digit | (0x80 if n else 0),))
        if not n:
            break
    return b"\x10" + vbi + body


async def mqtt_open(port: int, client_id: str, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(mqtt_connect_packet(client_id, token))
    connack = await reader.readexactly(4)
    if connack[0] != 0x20 or connack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {connack!r}")
    return writer


async def _ws_nth(port: int, toks: list[str], i: int) -> asyncio.StreamWriter:
    return await ws_open(port, toks[i])


async def _mqtt_nth(port: int, toks: list[str], i: int) -> asyncio.StreamWriter:
    return await mqtt_open(port, f"c{i}", toks[i])


async def open_all(count: int, concurrency: int,
                   opener: Callable[[int], Awaitable[asyncio.StreamWriter]]
                   ) -> tuple[list[asyncio.StreamWriter], float]:
    """Open ``count`` connections, ``concurrency`` at a time; (writers, seconds)."""
    writers: list[asyncio.StreamWriter] = []
    index = iter(range(count))

    async def worker() -> None:
        for i in index:
            writers.append(await opener(i))

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(concurrency)]), 300)
    return writers, time.perf_counter() - started


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for w in writers:
        w.close()
    await asyncio.gather(*[w.wait_closed() for w in writers], return_exceptions=True)


async def measure(pid: int, ws_port: int, mqtt_port: int, count: int, concurrency: int,
                  edges: list[str]) -> None:
    for edge in edges:
        toks = tokens(count, f"{edge}-user-")
        before = rss_bytes(pid)
        cpu = cpu_seconds(pid)
        opener = functools.partial(_ws_nth, ws_port, toks) if edge == "ws" else \
            functools.partial(_mqtt_nth, mqtt_port, toks)
        writers, took = await open_all(count, concurrency, opener)
        cpu = cpu_seconds(pid) - cpu
        await asyncio.sleep(1.0)  # idle: whatever the server does after the reply is done
        after = rss_bytes(pid)
        print(f"{edge:4} connections={count} concurrency={concurrency} "
              f"conn/s={count / took:,.0f} server CPU/conn={cpu / count * 1e6:,.0f} µs "
              f"(conn per CPU-s={count / max(cpu, 1e-9):,.0f}) "
              f"idle RSS/conn={(after - before) / 1024 / count:.2f} KiB",
              flush=True)
        await close_all(writers)


def serve(args: argparse.Namespace, edge: str, profile: str) -> None:
    """One server process for one edge's phase (a fresh heap: memory freed by an
    earlier phase would otherwise be reused and hide the growth)."""
    ws_port, api_port, mqtt_port = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(prefix="tidings-connect-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_WS_PORT=str(ws_port), TIDINGS_API_PORT=str(api_port),
               TIDINGS_MQTT_PORT=str(mqtt_port), TIDINGS_STORE_PATH=data + "/data",
               TIDINGS_API_KEYS="bench-key", TIDINGS_AUTH_JWT_SECRET=SECRET,
               TIDINGS_NODE_LOG_LEVEL="WARNING", TIDINGS_WS_MAX_CONNECTIONS_PER_IP="100000",
               TIDINGS_MQTT_MAX_CONNECTIONS_PER_IP="100000", PYTHONPATH=args.src)
    env.update(dict(pair.split("=", 1) for pair in args.env))
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-o", profile]
    cmd += ["-m", "tidings.cli", "serve"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # bounded: 30 s
            try:
                socket.create_connection((HOST, mqtt_port), timeout=0.5).close()
                socket.create_connection((HOST, ws_port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not come up") from None
                time.sleep(0.1)
        asyncio.run(measure(proc.pid, ws_port, mqtt_port, args.count, args.concurrency,
                            [edge]))
    finally:
        proc.send_signal(signal.SIGINT)  # a clean stop: cProfile writes its stats
        _reap(proc)
        shutil.rmtree(data, ignore_errors=True)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the server to exit (30 s), then kill it."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
        return
    proc.kill()
    proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--edges", default="ws,mqtt", help="comma-separated: ws, mqtt")
    ap.add_argument("--src", default=str(ROOT / "server"),
                    help="the server package's parent folder (another checkout)")
    ap.add_argument("--profile", default="",
                    help="cProfile the server into PATH.EDGE.prof, one file per edge")
    ap.add_argument("--env", nargs="*", default=[], help="extra NAME=VALUE for the server")
    args = ap.parse_args()
    for edge in args.edges.split(","):
        serve(args, edge, f"{args.profile}.{edge}.prof" if args.profile else "")


if __name__ == "__main__":
    main()
