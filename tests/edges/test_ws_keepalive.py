"""Keepalive: a peer that stops answering pings is closed; a live one is not."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import orjson

from conftest import WAIT, start_node, stop_node


async def _raw_connect(port: int, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made WebSocket client that never answers pings (and never reads after connect)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await reader.readuntil(b"\r\n\r\n")
    payload = orjson.dumps({"op": "connect", "id": 1, "token": token})
    assert len(payload) < 65536
    header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    writer.write(header + b"\0\0\0\0" + payload)  # masked with a zero key
    return reader, writer


async def test_silent_peer_is_closed_and_live_peer_kept(tmp_path: Path) -> None:
    node = await start_node(tmp_path, ws__ping_interval=0.2)
    try:
        live = await node.client("alice")
        reader, writer = await _raw_connect(node.app.ws_port, node.token("bob"))

        async def bob_gone() -> None:
            while await reader.read(65536):
                pass  # drain until the server closes the TCP connection

        await asyncio.wait_for(bob_gone(), WAIT)
        writer.close()
        # the live client answered every ping and is still served
        assert (await live.request("ping"))["ok"] is True
        _, text = await node.api("GET", "/metrics")
        assert 'tidings_errors_total{code="keepalive_timeout"} 1.0' in text
    finally:
        await stop_node(node)
