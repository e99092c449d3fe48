"""MQTT reason codes come from the error catalogue, and only codes the packet may carry.

The probe: with the store down, a 5.0 client's QoS 1 PUBLISH was answered with
PUBACK 0x88 (Server unavailable), a code a PUBACK may not carry (5.0 section
3.4.2.1: a strict client takes the packet as malformed). Now the error's
reason code goes through the MQTT edge's one mapping (edges/mqtt/codes.py):
0x80 Unspecified error. 3.1.1 has no refusal in a PUBACK: the connection
closes and the client sends the message again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest

from conftest import WAIT, Node
from support.mqtt import (
    DISCONNECT,
    PUBACK,
    TOPIC_ALIAS,
    Raw,
    broker,
    clients,
    connect_packet,
    paho,
    props,
    pub_token,
    publish_packet,
    u16,
)
from support.tls import self_signed
from tidings.protocol.mqtt.reason_codes import VALID_REASON_CODES

pytest_plugins = ["support.redis_servers"]
_FIXTURES = (clients,)  # re-exported fixture from test_mqtt


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_publish_while_the_store_is_down(make_node: Any, redis_factory: Any,
                                               clients: list[Any], v5: bool) -> None:
    server = redis_factory.server()
    n = await make_node(store__backend="redis", redis__url=server.url)
    r, _ = await Raw.connect(n.app.mqtt_port, f"down-{v5}", v5=v5, username="d",
                             password=pub_token(n))
    clients.append(r)
    await r.send(publish_packet("t/up", b"1", qos=1, pid=1, v5=v5))
    ack = await r.recv()
    assert (ack.type, ack.reason) == (PUBACK, 0)  # the store takes it
    server.stop()
    try:
        await r.send(publish_packet("t/down", b"2", qos=1, pid=2, v5=v5))
        if v5:
            ack = await r.recv()
            assert ack.type == PUBACK
            assert ack.reason == 0x80 and ack.reason in VALID_REASON_CODES[PUBACK]
        else:
            assert await r.closed() == []  # no refusal to send: closed, the client retries
    finally:
        server.start()


# --- protocol errors reach the client ------------------------------------------------
# A client that breaks the protocol while it still has packets on the way used to
# get a reset: the server closed with unread input, the kernel answered with RST,
# and the client's stack threw the DISCONNECT away unread. The server now writes
# the DISCONNECT, closes its write side (FIN; TLS close_notify; a WebSocket close
# frame) and reads and discards for mqtt.close_drain seconds (5.0 section 4.13.1,
# [MQTT-3.14.4-1], [MQTT-3.14.4-2]).

_FLOOD = 200  # QoS 1 PUBLISHes written at once, far past a Receive Maximum of 2
_MORE = 20  # further writes after the error (bounded), as a busy client would


def _flood(start: int, count: int) -> bytes:
    return b"".join(publish_packet("flood/x", b"p" * 1000, qos=1, pid=start + i, v5=True)
                    for i in range(count))


async def _keep_sending(r: Raw) -> None:
    """Go on writing after the error, as a client that has not read it yet does;
    a write the server refuses (a reset) ends it."""
    for i in range(_MORE):
        try:
            await asyncio.wait_for(r.send(_flood(1000 + i * 10, 10)), WAIT)
        except (ConnectionError, ssl.SSLError):
            return


# (case, what the client sends once connected, the DISCONNECT reason)
ERRORS: list[tuple[str, bytes, int]] = [
    ("Receive Maximum exceeded [MQTT-3.3.4-9]", _flood(1, _FLOOD), 0x93),
    ("Topic Alias over the maximum [MQTT-3.3.2-9]",
     publish_packet("a", b"x", v5=True, properties=props(u16(TOPIC_ALIAS, 999))) + _flood(1, 50),
     0x94),
    ("packet over Maximum Packet Size [MQTT-3.2.2-15]",
     publish_packet("big", b"x" * 200_000, v5=True) + _flood(1, 50), 0x95),
    ("malformed: a PUBLISH with QoS 3 [MQTT-3.3.1-4]", b"\x36\x05\x00\x01a\x00\x01" + _flood(1, 50),
     0x81),
    ("a second CONNECT [MQTT-3.1.0-2]", connect_packet("again", v5=True) + _flood(1, 50), 0x82),
]


def _tls_client(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize(("case", "data", "code"), ERRORS, ids=[e[0] for e in ERRORS])
async def test_a_protocol_error_is_read_not_reset(make_node: Any, clients: list[Any],
                                                  tmp_path: Path, tls: bool, case: str,
                                                  data: bytes, code: int) -> None:
    """5.0: the client that keeps sending after its error reads DISCONNECT with the
    reason, then the server's orderly close (EOF; TLS: close_notify), not a reset."""
    cert, key = self_signed(tmp_path)
    n = await make_node(mqtt__receive_maximum=2, mqtt__tls_cert=str(cert),
                        mqtt__tls_key=str(key), mqtt__tls_port=0)
    port = broker(n).ports[1 if tls else 0]
    r = await Raw.open(port, v5=True, tls=_tls_client(cert) if tls else None)
    clients.append(r)
    await r.send(connect_packet("err", v5=True, username="d", password=pub_token(n)))
    assert (await r.recv()).reason == 0
    await r.send(data)
    await _keep_sending(r)
    got, reset = await r.ending()
    assert not reset, f"{case}: reset after {got}"
    assert got and (got[-1].type, got[-1].reason) == (DISCONNECT, code), got
    assert all(p.type == PUBACK for p in got[:-1]), got  # nothing after the DISCONNECT


async def test_a_311_protocol_error_closes_without_a_reset(make_node: Any,
                                                           clients: list[Any]) -> None:
    """3.1.1 has no DISCONNECT from the server: it just closes [MQTT-4.8.0-1], and
    orderly too, what was sent before the error answered and nothing after."""
    n = await make_node()
    r = await Raw.open(n.app.mqtt_port)
    clients.append(r)
    await r.send(connect_packet("old", username="d", password=pub_token(n)))
    assert (await r.recv()).reason == 0
    await r.send(publish_packet("a", b"1", qos=1, pid=1) + b"\x36\x05\x00\x01a\x00\x01"
                 + b"".join(publish_packet("a", b"x" * 1000, qos=1, pid=i + 2)
                            for i in range(200)))
    await _keep_sending(r)
    got, reset = await r.ending()
    assert not reset
    assert [(p.type, p.pid) for p in got] in ([], [(PUBACK, 1)])


@pytest.mark.parametrize("transport", ["tcp", "tls", "websockets"])
async def test_paho_reads_receive_maximum_exceeded(make_node: Any, clients: list[Any],
                                                   tmp_path: Path, transport: str) -> None:
    """A paho 5.0 client that does not keep to the server's Receive Maximum is told
    0x93 in its on_disconnect [MQTT-3.3.4-9], on TCP, TLS and MQTT over WebSocket."""
    cert, key = self_signed(tmp_path)
    n = await make_node(mqtt__receive_maximum=1, mqtt__tls_cert=str(cert),
                        mqtt__tls_key=str(key), mqtt__tls_port=0)
    port = {"tcp": broker(n).ports[0], "tls": broker(n).ports[1],
            "websockets": n.app.ws_port}[transport]
    p = await paho(clients, port, "greedy", token=pub_token(n), v5=True, max_inflight=0,
                   transport="websockets" if transport == "websockets" else "tcp",
                   tls_ca=str(cert) if transport == "tls" else None)
    for _ in range(_FLOOD):
        p.c.publish("greedy/x", b"p" * 1000, 1)
    code, _ = await p.disconnected()
    assert code == 0x93


async def test_websocket_client_reads_the_disconnect_then_a_close_frame(
        node: Node, clients: list[Any]) -> None:
    """MQTT over WebSocket: the DISCONNECT comes in a binary frame, then a close frame
    (1000), while the client is still sending; no reset."""
    import websockets

    url = f"ws://127.0.0.1:{node.app.ws_port}/mqtt"
    async with websockets.connect(url, subprotocols=["mqtt"],  # type: ignore[list-item]
                                  open_timeout=WAIT) as conn:
        await conn.send(connect_packet("ws-err", v5=True, username="d",
                                       password=pub_token(node)))
        assert (await asyncio.wait_for(conn.recv(), WAIT))[:1] == b"\x20"
        await conn.send(publish_packet("a", b"x", v5=True,
                                       properties=props(u16(TOPIC_ALIAS, 999))))
        for i in range(_MORE):  # still sending: ignored, then the close handshake
            with contextlib.suppress(websockets.ConnectionClosed):
                await conn.send(_flood(1 + i * 10, 10))
        frames: list[bytes] = []
        with pytest.raises(websockets.ConnectionClosedOK) as closed:
            while True:
                got = await asyncio.wait_for(conn.recv(), WAIT)
                assert isinstance(got, bytes)  # binary frames only [MQTT-6.0.0-1]
                frames.append(got)
        assert frames[-1][:1] == b"\xe0" and frames[-1][2] == 0x94  # DISCONNECT 0x94
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
