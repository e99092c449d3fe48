"""The minimal reference: a `websockets` + uvloop broadcast server, no Tidings logic.

Subscribers connect to any path but ``/publish``; each is added to a set and
greeted with one ``ready`` text frame (so the load generator knows it is
registered). Every message received on a ``/publish`` connection is passed
to ``websockets.asyncio.server.broadcast()`` for all subscribers: the
library's own fan-out, which frames the message once per connection and
writes it to each transport. Compression is off, as in the Tidings run.

    python bench/refservers/ws_broadcast.py PORT [--host 127.0.0.1]

Prints ``READY <port>`` once listening. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["main"]

SUBSCRIBERS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    if ws.request is not None and ws.request.path == "/publish":
        try:
            async for message in ws:
                broadcast(SUBSCRIBERS, message)
        except ConnectionClosed:
            pass
        return
    SUBSCRIBERS.add(ws)
    try:
        await ws.send("ready")
        await ws.wait_closed()
    finally:
        SUBSCRIBERS.discard(ws)


async def run(host: str, port: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, compression=None, max_size=1 << 20,
                     backlog=4096) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"READY {bound}", flush=True)
        await stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args()
    uvloop.run(run(a.host, a.port))


if __name__ == "__main__":
    main()
