"""The resource test of issue 10: a ``tidings serve`` process at its documented
subscription limits stays under a stated memory bound.

The probe that failed: 256 deep wildcard filters on each of 1,000 connections
took RSS from 56 MB to 2.55 GB (about 11.5 KB per filter). Here CONNECTIONS
connections (one user each, so topics.max_user_subscriptions does not cut in)
each hold ws.max_subscriptions (256) distinct wildcard filters of
topics.max_depth (16) levels, the most the settings allow, and the server's
RSS must stay under RSS_BOUND. At the old 11.5 KB per filter this load alone
added about 290 MB.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import websockets

from conftest import JWT_SECRET, WAIT, ServerProcess
from tidings.auth import TokenAuthority

CONNECTIONS = 100
PER_CONNECTION = 256  # ws.max_subscriptions, the default
DEPTH = 16  # topics.max_depth, the default
RSS_BOUND_MB = 120  # the stated bound for this load (measured: 55 MB idle, 71 MB loaded)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def deep_filter(conn: int, i: int) -> str:
    """A distinct wildcard filter of DEPTH levels (nothing shared below its third)."""
    levels = [f"c{conn % 10}", f"s{conn}-{i}"] + ["+", "x"] * ((DEPTH - 3) // 2)
    levels += ["y"] * (DEPTH - 1 - len(levels)) + ["#"]
    return "/".join(levels)


async def fill(url: str, tokens: TokenAuthority, conn: int) -> websockets.ClientConnection:
    ws = await websockets.connect(url, subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                                  max_size=None, open_timeout=WAIT)
    await ws.send(orjson.dumps({"op": "connect", "id": 0,
                                "token": tokens.issue(f"user{conn}")}).decode())
    assert orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))["ok"]
    for i in range(PER_CONNECTION):
        await ws.send(orjson.dumps({"op": "subscribe", "id": i + 1,
                                    "topic": deep_filter(conn, i)}).decode())
    got = 0
    while got < PER_CONNECTION:
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), WAIT * 4))
        assert reply.get("ok") is True, reply
        got += 1
    return ws


async def test_rss_stays_bounded_at_the_subscription_limits(
        server_process: ServerProcess) -> None:
    sp = server_process
    # The command rate limit is a time bound, not a memory one: raised so the
    # load goes in quickly. The memory limits stay at their defaults.
    sp.env["TIDINGS_WS_COMMANDS_PER_SECOND"] = "100000"
    sp.env["TIDINGS_WS_COMMANDS_BURST"] = "100000"
    sp.start()
    assert sp.proc is not None
    tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=3600)
    before = rss_mb(sp.proc.pid)
    clients: list[websockets.ClientConnection] = []
    try:
        for start in range(0, CONNECTIONS, 20):  # 20 at a time: bounded concurrency
            clients += await asyncio.gather(*(fill(sp.ws_url, tokens, c)
                                              for c in range(start, start + 20)))
        after = rss_mb(sp.proc.pid)
        filters = CONNECTIONS * PER_CONNECTION
        if os.environ.get("TIDINGS_TEST_VERBOSE"):
            print(f"RSS {before:.0f} -> {after:.0f} MB for {filters} filters: "
                  f"{(after - before) * 1024 * 1024 / filters:.0f} bytes per filter")
        assert after < RSS_BOUND_MB, f"RSS {after:.0f} MB (from {before:.0f} MB)"
    finally:
        for ws in clients:
            await ws.close()
    assert sp.stop() == 0
