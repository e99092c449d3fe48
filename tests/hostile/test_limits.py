"""Hostile probes of issue 10 on memory and time, kept as regression tests.

Each test repeats a probe that once succeeded against the server (the
figures in the docstrings are what the probe measured) and checks the bound
that stops it now: subscriptions per user over all connections, MQTT
connections per address, persistent MQTT sessions per user, a packet larger
than the maximum refused from its fixed header, and MQTT sessions ended when
their token runs out. Real sockets and clients; every loop is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

from conftest import WAIT, Node
from support.mqtt import (
    CONNACK,
    DISCONNECT,
    Raw,
    broker,
    clients,
    connect_packet,
    make_node,
    metric,
    paho,
    raw,
    subscribe_packet,
    vbi,
    wait_until,
)
from tidings.protocol.mqtt import ReasonCode

_FIXTURES = (clients, make_node)


# --- subscriptions per user, over every connection and edge -----------------------------

async def test_one_user_cannot_pile_subscriptions_over_many_ws_connections(
        make_node: Any) -> None:
    """Probe: 256 deep wildcard filters on each of 1,000 connections of one user took
    RSS from 56 MB to 2.55 GB. Now the user's total is bounded on the node."""
    node = await make_node(topics__max_user_subscriptions=6, ws__max_subscriptions=4)
    first = await node.client("mallory")
    second = await node.client("mallory")
    deep = "/".join(["+", "x"] * 7)
    for i in range(4):
        assert (await first.request("subscribe", topic=f"a{i}/{deep}"))["ok"]
    for i in range(2):
        assert (await second.request("subscribe", topic=f"b{i}/{deep}"))["ok"]
    refused = await second.request("subscribe", topic=f"b9/{deep}")
    assert refused["ok"] is False and refused["error"]["code"] == "too_many_subscriptions"
    # another user is not affected by mallory's budget
    other = await node.client("bob")
    assert (await other.request("subscribe", topic=f"c/{deep}"))["ok"]
    # an unsubscribe gives one back; closing a connection gives back all of its own
    assert (await first.request("unsubscribe", topic=f"a0/{deep}"))["ok"]
    assert (await second.request("subscribe", topic=f"b9/{deep}"))["ok"]
    await first.close()
    tally = node.app.node.user_subscriptions
    await wait_until(lambda: tally["mallory"] == 3, what="the closed connection's share back")
    third = await node.client("mallory")
    for i in range(3):
        assert (await third.request("subscribe", topic=f"t{i}/{deep}"))["ok"]
    assert (await third.request("subscribe", topic=f"t9/{deep}"))["ok"] is False
    assert tally["mallory"] == 6


async def test_mqtt_subscriptions_count_against_the_same_user_budget(
        make_node: Any, clients: list[Any]) -> None:
    node = await make_node(topics__max_user_subscriptions=3)
    ws = await node.client("mallory")
    assert (await ws.request("subscribe", topic="w/+"))["ok"]
    token = node.token("mallory")
    port = broker(node).ports[0]
    v5 = await paho(clients, port, "m5", token=token, v5=True)
    codes = await v5.subscribe(("d/1/#", 0), ("d/2/#", 0), ("d/3/#", 0))
    assert codes == [0, 0, ReasonCode.QUOTA_EXCEEDED]  # 0x97 in a 5.0 SUBACK
    v3 = await paho(clients, port, "m3", token=token)
    assert await v3.subscribe(("e/#", 0)) == [0x80]  # 3.1.1: Failure
    assert await metric(node, "tidings_errors_total", code="mqtt_suback_0x97") == 2
    # a persistent session's subscriptions stay counted while it is offline, and
    # are given back when it ends
    await asyncio.to_thread(v5.close)
    await wait_until(lambda: node.app.node.user_subscriptions["mallory"] == 1,
                     what="the ended session's subscriptions given back")


# --- MQTT connections per address ------------------------------------------------------

async def test_mqtt_connections_per_ip_are_capped(make_node: Any, clients: list[Any]) -> None:
    """Probe: MQTT had no per-IP connection cap (WS closes at 1,000 per address)."""
    node = await make_node(mqtt__max_connections_per_ip=3)
    port = broker(node).ports[0]
    held = [await Raw.open(port) for _ in range(3)]
    clients.extend(held)
    await wait_until(lambda: len(broker(node).connections) == 3, what="three connections")
    extra = await Raw.open(port)
    clients.append(extra)
    assert await extra.closed() == []  # closed at once, before any packet is read
    assert await metric(node, "tidings_errors_total", code="too_many_connections") >= 1
    # the held ones still work, and closing one lets a new one in
    await held[0].send(connect_packet("ok", password=node.token("alice"), username="d"))
    ack = await held[0].recv()
    assert ack.type == CONNACK and ack.reason == 0
    held[1].abort()
    await wait_until(lambda: broker(node).per_ip["127.0.0.1"] == 2, what="a slot freed")
    await raw(clients, port, "late", password=node.token("alice"), username="d")


# --- persistent MQTT sessions per user -------------------------------------------------

async def test_persistent_sessions_per_user_are_capped(make_node: Any,
                                                        clients: list[Any]) -> None:
    """Probe: 4,000 client ids from one token kept 4,000 sessions queueing 80,000 rows."""
    node = await make_node(mqtt__max_sessions_per_user=3)
    port = broker(node).ports[0]
    token = node.token("mallory")
    for i in range(3):
        r = await raw(clients, port, f"keep-{i}", clean=False, password=token, username="d")
        await r.disconnect()
    # the fourth is refused: 5.0 0x97 Quota exceeded, 3.1.1 0x03 Server unavailable
    refused5, _ = await Raw.connect(port, "keep-3", v5=True, expect=ReasonCode.QUOTA_EXCEEDED,
                                    password=token, username="d",
                                    properties=b"\x05\x11\x00\x00\x0e\x10")
    clients.append(refused5)
    refused3, _ = await Raw.connect(port, "keep-4", clean=False, expect=0x03,
                                    password=token, username="d")
    clients.append(refused3)
    assert "keep-3" not in broker(node).sessions
    # resuming a kept one is fine; a clean (non-persistent) session is not counted;
    # another user has a budget of its own
    await raw(clients, port, "keep-0", clean=False, password=token, username="d")
    await raw(clients, port, "clean-1", password=token, username="d")
    await raw(clients, port, "bob-1", clean=False, password=node.token("bob"), username="d")
    # ending one (clean start on the same id) makes room
    await raw(clients, port, "keep-1", password=token, username="d")
    await raw(clients, port, "keep-5", clean=False, password=token, username="d")


# --- packets larger than the maximum ---------------------------------------------------

async def test_a_packet_over_the_maximum_is_refused_from_its_fixed_header(
        make_node: Any, clients: list[Any]) -> None:
    """Probe: three clients sending the headers of 150 MB packets added 430 MB. The
    Remaining Length alone is enough to refuse: nothing of the body is awaited."""
    node = await make_node(mqtt__max_packet_size=1 << 20)
    port = broker(node).ports[0]
    for v5 in (True, False):
        r = await raw(clients, port, f"big-{v5}", v5=v5, password=node.token("alice"),
                      username="d")
        # PUBLISH, QoS 0, remaining length 150 MB, then only the first 1 KiB of it
        await r.send(b"\x30" + vbi(150_000_000) + b"\x00\x01t" + bytes(1024))
        got = await r.closed()
        if v5:  # [MQTT-3.2.2-15]... a 5.0 client is told why: 0x95 Packet too large
            assert [(p.type, p.reason) for p in got] == [(DISCONNECT, 0x95)]
        else:
            assert got == []


async def test_bytes_sent_behind_a_connect_are_not_read_until_the_connack(
        make_node: Any, clients: list[Any]) -> None:
    """While a CONNECT is being answered, what the client sends behind it cannot be
    parsed yet (5.0 section 3.1.4); reading it anyway buffered it without bound.
    Here the CONNECT's answer is held up for real (another SQLite connection holds
    the write lock, so the session write waits), and the client keeps sending: the
    server must leave it in the socket (TCP pushes back) rather than take it all."""
    node = await make_node(mqtt__max_packet_size=1 << 20)
    port = broker(node).ports[0]
    db = sqlite3.connect(node.app.node.store.path, timeout=WAIT, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")  # the server's next write waits (busy_timeout)
        r = await Raw.open(port, v5=True)
        clients.append(r)
        await r.send(connect_packet("eager", v5=True, password=node.token("alice"),
                                    username="d") + b"\x30" + vbi(150_000_000) + b"\x00\x01t")
        chunk, sent, total = bytes(1 << 20), 0, 48 << 20
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        with contextlib.suppress(TimeoutError):
            while sent < total and loop.time() < deadline:
                r.writer.write(chunk)
                await asyncio.wait_for(r.writer.drain(), max(0.01, deadline - loop.time()))
                sent += len(chunk)
        # the kernel's socket buffers take a few MiB; the server took none of it
        assert sent < 24 << 20, f"the server read {sent >> 20} MiB before its CONNACK"
    finally:
        db.execute("ROLLBACK")
        db.close()
    got = [(p.type, p.reason) for p in await r.closed()]
    # once connected, the oversized header is refused; the DISCONNECT 0x95 may be
    # lost to the reset that closing a socket with unread bytes causes
    assert got in ([(CONNACK, 0), (DISCONNECT, 0x95)], [(CONNACK, 0)])
    assert await metric(node, "tidings_errors_total", code="mqtt_protocol") == 1


# --- time: MQTT sessions end with their token ------------------------------------------

async def test_mqtt_connection_ends_when_its_token_expires(node: Node,
                                                           clients: list[Any]) -> None:
    """Probe: MQTT sessions stayed connected and kept receiving after their token
    expired, while WS closes with 4001. Now 5.0 gets DISCONNECT 0xA0 Maximum connect
    time and 3.1.1 is closed; a client with a valid token is unaffected."""
    port = broker(node).ports[0]
    short = node.token("alice", ttl=1)
    r5 = await raw(clients, port, "exp5", v5=True, password=short, username="d")
    r3 = await raw(clients, port, "exp3", password=short, username="d")
    live = await raw(clients, port, "live", password=node.token("alice"), username="d")
    await live.send(subscribe_packet(1, ("x", 0)))
    assert (await live.recv()).type == 9  # SUBACK
    got5 = await r5.closed(within=WAIT + 2)
    assert [(p.type, p.reason) for p in got5] == [(DISCONNECT, ReasonCode.MAXIMUM_CONNECT_TIME)]
    assert await r3.closed(within=WAIT + 2) == []
    await live.send(b"\xc0\x00")  # PINGREQ
    assert (await live.recv()).type == 13  # PINGRESP: still connected
    assert await metric(node, "tidings_errors_total", code="token_expired") == 2
