"""Memory of one `subscribe` whose `since` map names many topics (issue 10's probe).

    python bench/since_rss.py                  # 100 topics (limits.max_since_topics)
    python bench/since_rss.py --topics 200 --env TIDINGS_LIMITS_MAX_SINCE_TOPICS=200
    python bench/since_rss.py --src /tmp/old/server   # measure another checkout's server

Starts `python -m tidings.cli serve` on free loopback ports with a temporary data
folder, publishes 100 messages of 4 KiB to each topic (`probe/0`, `probe/1`, ...),
then reads the server's VmRSS and peak VmHWM (from /proc) before and after one
WebSocket `subscribe "probe/#"` with a `since` map naming every topic from its
first offset. Prints the peak growth and what the reply held (its size, how many
messages, whether it was paged with `next`, or the close code). Before the
hardening round a 200-topic map raised the peak by about 250 MB and the client
was closed with 4008; now a reply is capped at `limits.max_reply_size`.

Measures; asserts nothing. The server process is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
MESSAGES_PER_TOPIC = 100
PAD = "p" * 4096


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) // 1024
    return out


async def wait_healthy(http: aiohttp.ClientSession, base: str, proc: subprocess.Popen[bytes]
                       ) -> None:
    for _ in range(200):  # bounded: 20 s
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            async with http.get(base + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not come up within 20 s")


async def fill(http: aiohttp.ClientSession, base: str, topics: int) -> dict[str, str]:
    """The first offset of each topic, then MESSAGES_PER_TOPIC x 4 KiB after it."""
    since: dict[str, str] = {}
    for i in range(topics):
        async with http.post(base + "/v1/publish", json={"topic": f"probe/{i}", "data": 0}) as r:
            since[f"probe/{i}"] = (await r.json())["offset"]
    messages = [{"topic": f"probe/{i}", "data": PAD}
                for i in range(topics) for _ in range(MESSAGES_PER_TOPIC)]
    for j in range(0, len(messages), 200):
        async with http.post(base + "/v1/publish/batch",
                             json={"messages": messages[j:j + 200]}) as r:
            if r.status != 200:
                raise SystemExit(f"publish failed: {r.status} {await r.text()}")
    return since


async def subscribe_once(ws_url: str, token: str, since: dict[str, str]) -> dict[str, Any]:
    async with websockets.connect(ws_url, max_size=None) as ws:
        await ws.send(orjson.dumps({"op": "connect", "id": 1, "token": token}).decode())
        await asyncio.wait_for(ws.recv(), 30)
        await ws.send(orjson.dumps({"op": "subscribe", "id": 2, "topic": "probe/#",
                                    "since": since}).decode())
        try:
            raw = await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as e:
            return {"closed": e.rcvd.code if e.rcvd else None}
        reply = orjson.loads(raw)
        return {"ok": reply.get("ok"), "error": reply.get("error"),
                "recovered": len(reply.get("recovered") or ()),
                "complete": reply.get("complete"), "next_topics": len(reply.get("next") or {}),
                "reply_bytes": len(raw)}


async def measure(proc: subprocess.Popen[bytes], ports: tuple[int, int], topics: int,
                  extra: list[str]) -> None:
    ws_port, api_port = ports
    base = f"http://127.0.0.1:{api_port}"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench-key"}) as http:
        await wait_healthy(http, base, proc)
        since = await fill(http, base, topics)
        async with http.post(base + "/v1/tokens", json={"user": "probe"}) as r:
            token = (await r.json())["token"]
    before = memory_mb(proc.pid)
    reply = await subscribe_once(f"ws://127.0.0.1:{ws_port}/ws", token, since)
    after = memory_mb(proc.pid)
    print(f"topics={topics} env={extra} RSS before={before['VmRSS']} MB "
          f"peak after={after['VmHWM']} MB "
          f"peak growth={after['VmHWM'] - before['VmRSS']} MB reply={reply}")


def run(args: argparse.Namespace) -> None:
    ws_port, api_port, mqtt_port = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(prefix="tidings-since-rss-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(TIDINGS_WS_PORT=str(ws_port), TIDINGS_API_PORT=str(api_port),
               TIDINGS_MQTT_PORT=str(mqtt_port), TIDINGS_STORE_PATH=data + "/data",
               TIDINGS_API_KEYS="bench-key", TIDINGS_AUTH_JWT_SECRET="b" * 32,
               TIDINGS_NODE_LOG_LEVEL="WARNING", PYTHONPATH=str(args.src))
    env.update(dict(pair.split("=", 1) for pair in args.env))
    proc = subprocess.Popen([sys.executable, "-m", "tidings.cli", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(measure(proc, (ws_port, api_port), args.topics, args.env))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--topics", type=int, default=100)
    p.add_argument("--src", type=Path, default=ROOT / "server",
                   help="the folder holding the tidings package to run (default: this checkout)")
    p.add_argument("--env", action="append", default=[], metavar="TIDINGS_X=V",
                   help="an extra setting for the server (repeatable)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
