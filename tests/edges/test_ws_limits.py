"""Compression's slower path and the per-address connection limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import websockets

from conftest import WAIT, Client, start_node, stop_node


async def test_compressed_and_plain_sessions_both_receive(tmp_path: Path) -> None:
    node = await start_node(tmp_path, ws__compression=True)
    try:
        ws = await websockets.connect(node.ws_url, compression="deflate", open_timeout=WAIT)
        assert ws.protocol.extensions, "permessage-deflate was negotiated"
        zipped = Client(ws)
        node.clients.append(zipped)
        assert (await zipped.request("connect", token=node.token("alice")))["ok"]
        plain = Client(await websockets.connect(node.ws_url, compression=None,
                                                open_timeout=WAIT))
        node.clients.append(plain)
        assert (await plain.request("connect", token=node.token("bob")))["ok"]
        assert not plain.ws.protocol.extensions
        for c in (zipped, plain):
            assert (await c.request("subscribe", topic="z/+"))["ok"]
        big = {"text": "tidings " * 500}
        for i in range(20):
            await node.publish(f"z/{i}", {**big, "i": i})
        for c in (zipped, plain):
            got = [await c.push() for _ in range(20)]
            assert [m["data"]["i"] for m in got] == list(range(20))
            assert all(m["data"]["text"] == big["text"] for m in got)
    finally:
        await stop_node(node)


async def test_connections_per_address_are_bounded(tmp_path: Path) -> None:
    node = await start_node(tmp_path, ws__max_connections_per_ip=2)
    try:
        a = await node.client("alice")
        await node.client("alice")
        with pytest.raises(websockets.InvalidStatus) as info:
            await websockets.connect(node.ws_url, open_timeout=WAIT)
        assert info.value.response.status_code == 429
        await a.close()
        # the slot is given back once a connection ends
        for _ in range(50):
            try:
                ws = await websockets.connect(node.ws_url, open_timeout=WAIT)
                break
            except websockets.InvalidStatus:
                await asyncio.sleep(0.05)  # the server's handler is still finishing
        else:
            raise AssertionError("the closed connection's slot was never released")
        await ws.close()
    finally:
        await stop_node(node)
