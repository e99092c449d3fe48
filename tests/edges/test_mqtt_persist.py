"""MQTT sessions that outlive connections and restarts.

Clean and persistent sessions (3.1.1 clean session 0, 5.0 session expiry),
the bounded offline queue, redelivery with DUP of what was in flight, the
inbound QoS 2 state, and restarts of the node (in-process on the same data
folder, and ``tidings serve`` as a process) with sessions and queued
messages surviving them.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from conftest import API_KEY, JWT_SECRET, WAIT, Node, ServerProcess, start_node, stop_node
from support.mqtt import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    SESSION_EXPIRY,
    NodeMaker,
    Paho,
    Raw,
    ack_packet,
    broker,
    clients,
    connect_packet,
    make_node,
    metric,
    offline,
    paho,
    prop,
    props,
    pub_token,
    publish_packet,
    subscribe_packet,
    u32,
    wait_until,
)
from tidings.auth import TokenAuthority

__all__: list[str] = []
_FIXTURES = (clients, make_node)  # re-exported fixtures from test_mqtt


# --- clean and persistent sessions ---------------------------------------------------------

async def test_clean_session_false_keeps_subscriptions_and_queues(
        node: Node, clients: list[Any]) -> None:
    """3.1.1 clean session 0: the session (subscriptions, QoS 1 messages published
    meanwhile) outlives the connection, CONNACK says session present [MQTT-3.2.2-2];
    clean session 1 discards it [MQTT-3.1.2-6]."""
    port = node.app.mqtt_port
    token = node.token("alice")
    first = await paho(clients, port, "keeper", token=token, clean=False)
    assert await first.subscribe(("p/#", 1), ("p0/#", 0)) == [1, 0]
    await asyncio.to_thread(first.close)
    await offline(node, "keeper")
    for i in range(3):
        await node.publish("p/x", i)
    await node.publish("p0/x", "qos 0 subscription: not kept")
    again = Paho(port, "keeper", token=token, clean=False)
    clients.append(again)
    assert (await again.connack()).session_present
    assert [orjson.loads((await again.message()).payload) for _ in range(3)] == [0, 1, 2]
    await node.publish("p/x", "live")
    assert (await again.message()).payload == b'"live"'
    await again.no_message()
    await asyncio.to_thread(again.close)
    await offline(node, "keeper")

    fresh = Paho(port, "keeper", token=token, clean=True)
    clients.append(fresh)
    assert not (await fresh.connack()).session_present
    await node.publish("p/x", "nobody listens")
    await fresh.no_message()


async def test_v5_session_expiry(node: Node, clients: list[Any]) -> None:
    """5.0 Session Expiry Interval: a session lives that long after its connection
    [MQTT-3.1.2-23]; 0 ends it with the connection; DISCONNECT may shorten it."""
    port = node.app.mqtt_port
    token = node.token("alice")

    async def connect(expiry: int, clean: bool) -> Paho:
        return await paho(clients, port, "expiring", token=token, v5=True, clean=clean,
                          connect_props={"SessionExpiryInterval": expiry})

    c = await connect(60, True)
    await c.subscribe(("e/#", 1))
    await asyncio.to_thread(c.close)
    await offline(node, "expiring")
    await node.publish("e/x", "while away")
    c = Paho(port, "expiring", token=token, v5=True, clean=False,
             connect_props={"SessionExpiryInterval": 1})
    clients.append(c)
    assert (await c.connack()).session_present
    assert (await c.message()).payload == b'"while away"'
    await asyncio.to_thread(c.close)
    await wait_until(lambda: "expiring" not in broker(node).sessions, limit=WAIT + 1,
                     what="the session to expire after 1 s")
    c = Paho(port, "expiring", token=token, v5=True, clean=False,
             connect_props={"SessionExpiryInterval": 60})
    clients.append(c)
    assert not (await c.connack()).session_present

    # Session Expiry Interval 0 in DISCONNECT: the session ends now [MQTT-3.14.2-?].
    await c.subscribe(("e/#", 1))
    r, ack = await Raw.connect(port, "expiring", v5=True, clean=False, username="d",
                               password=token, properties=props(u32(SESSION_EXPIRY, 60)))
    clients.append(r)
    assert ack.session_present
    await r.send(bytes.fromhex("e0 07 00 05 11 00000000"))  # DISCONNECT, expiry 0
    await r.closed()
    await wait_until(lambda: "expiring" not in broker(node).sessions,
                     what="the session to end at DISCONNECT")


async def test_offline_queue_is_bounded_and_drops_counted(make_node: NodeMaker,
                                                          clients: list[Any]) -> None:
    """At most ``mqtt.max_queued`` messages wait for an offline session; the rest are
    dropped and counted in ``tidings_mqtt_dropped_total{reason="queue_full"}``."""
    n = await make_node(mqtt__max_queued=3)
    port = n.app.mqtt_port
    token = n.token("alice")
    c = await paho(clients, port, "bounded", token=token, clean=False)
    await c.subscribe(("q/#", 1))
    await asyncio.to_thread(c.close)
    await offline(n, "bounded")
    for i in range(5):
        await n.publish("q/x", i)

    async def dropped() -> bool:
        return await metric(n, "tidings_mqtt_dropped_total", reason="queue_full") == 2

    await wait_until(dropped, what="two drops counted")
    c = Paho(port, "bounded", token=token, clean=False)
    clients.append(c)
    assert (await c.connack()).session_present
    got = [orjson.loads((await c.message()).payload) for _ in range(3)]
    assert got == [0, 1, 2]
    await c.no_message()


async def test_notifications_not_lost_while_offline(node: Node, clients: list[Any]) -> None:
    """A device's notifications published while it is offline arrive when it is back,
    in order, and its unread count ends where the store has it."""
    port = node.app.mqtt_port
    token = node.token("alice")
    dev = await paho(clients, port, "fridge", token=token, clean=False)
    await dev.subscribe(("users/alice/notifications", 1), ("users/alice/unread", 1))
    await asyncio.to_thread(dev.close)
    await offline(node, "fridge")
    ids = []
    for title in ("a", "b"):
        status, body = await node.api("POST", "/v1/notify", {"users": ["alice"],
                                                              "title": title})
        assert status == 200
        ids.append(body["id"])
    dev = Paho(port, "fridge", token=token, clean=False)
    clients.append(dev)
    assert (await dev.connack()).session_present
    got: dict[str, list[Any]] = {}
    for _ in range(4):
        m = await dev.message()
        got.setdefault(m.topic, []).append(orjson.loads(m.payload))
    assert [n["id"] for n in got["users/alice/notifications"]] == ids
    assert got["users/alice/unread"][-1] == {"count": 2}


async def test_message_expiry_while_queued(node: Node, clients: list[Any]) -> None:
    """5.0 Message Expiry Interval: a message whose interval ran out while it waited for
    an offline session is not delivered [MQTT-3.3.2-5]; one still alive arrives with the
    interval less the time it waited [MQTT-3.3.2-6]."""
    port = node.app.mqtt_port
    token = node.token("alice")
    connect = {"SessionExpiryInterval": 300}
    c = await paho(clients, port, "expiry-dev", token=token, v5=True, connect_props=connect)
    await c.subscribe(("mx/#", 1))
    await asyncio.to_thread(c.close)
    await offline(node, "expiry-dev")
    pub = await paho(clients, port, "expiry-pub", token=pub_token(node), v5=True)
    await pub.publish("mx/short", b"stale", 1, props={"MessageExpiryInterval": 1})
    await pub.publish("mx/long", b"fresh", 1, props={"MessageExpiryInterval": 100})
    await asyncio.sleep(2.1)  # the time that passes is the subject here
    c = Paho(port, "expiry-dev", token=token, v5=True, clean=False, connect_props=connect)
    clients.append(c)
    assert (await c.connack()).session_present
    m = await c.message()
    assert (m.topic, m.payload) == ("mx/long", b"fresh")
    assert 90 <= prop(m, "MessageExpiryInterval") <= 98
    await c.no_message()


async def test_stored_session_of_another_user_is_refused(make_node: NodeMaker,
                                                         clients: list[Any]) -> None:
    """A persistent session another node keeps in the shared store (here: two nodes on
    one data folder) cannot be resumed, nor wiped with a clean start, with another
    user's token (0x05); its owner resumes it."""
    a = await make_node()
    b = await make_node()  # started before alice's session exists: it only has the store
    alice = await paho(clients, a.app.mqtt_port, "phone", token=a.token("alice"), clean=False)
    await alice.subscribe(("users/alice/notifications", 1))
    await asyncio.to_thread(alice.close)
    await offline(a, "phone")
    for clean in (False, True):  # neither resume it nor wipe it
        r = await Raw.open(b.app.mqtt_port)
        clients.append(r)
        await r.send(connect_packet("phone", clean=clean, username="d",
                                    password=b.token("bob")))
        ack = await r.recv()
        assert (ack.type, ack.body) == (CONNACK, b"\x00\x05")
    back = Paho(b.app.mqtt_port, "phone", token=b.token("alice"), clean=False)
    clients.append(back)
    assert (await back.connack()).session_present


# --- redelivery ----------------------------------------------------------------------------

@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_redelivery_with_dup_on_reconnect(node: Node, clients: list[Any],
                                                v5: bool) -> None:
    """Unacknowledged QoS 1 messages are resent with DUP=1 and the same packet id when a
    persistent session reconnects [MQTT-4.4.0-1], [MQTT-3.3.1-1]; an outgoing QoS 2 whose
    PUBREC arrived is resumed with PUBREL, not a second PUBLISH."""
    port = node.app.mqtt_port
    token = node.token("alice")
    session = props(u32(SESSION_EXPIRY, 300))
    r, _ = await Raw.connect(port, "slow", v5=v5, clean=False, username="d",
                             password=token, properties=session)
    clients.append(r)
    await r.send(subscribe_packet(1, ("dup/#", 2), v5=v5))
    assert (await r.recv()).codes() == [2]
    await node.publish("dup/one", "first")
    p = await r.recv_publish()
    topic, payload, qos, _, _, _, dup = p.publish()
    assert (topic, payload, qos, dup) == ("dup/one", b'"first"', 1, False)
    pid = p.pid
    pub = await paho(clients, port, "dup-src", token=pub_token(node), v5=v5)
    await pub.publish("dup/two", b"second", 2)
    p2 = await r.recv_publish()
    pid2 = p2.pid
    await r.send(ack_packet(PUBREC, pid2))
    assert (await r.recv()).type == PUBREL
    r.abort()  # PUBLISH 1 not acknowledged, PUBREL 2 not answered
    await offline(node, "slow")

    r, ack = await Raw.connect(port, "slow", v5=v5, clean=False, username="d",
                               password=token, properties=session)
    clients.append(r)
    assert ack.session_present
    again = await r.recv_publish()
    topic, payload, qos, _, pid_again, _, dup = again.publish()
    assert (topic, payload, qos, pid_again, dup) == ("dup/one", b'"first"', 1, pid, True)
    rel = await r.recv()
    assert (rel.type, rel.pid) == (PUBREL, pid2)
    await r.send(ack_packet(PUBACK, pid), ack_packet(PUBCOMP, pid2))
    await r.silent()
    await node.publish("dup/three", "third")
    assert (await r.recv_publish()).publish()[:2] == ("dup/three", b'"third"')


async def test_takeover_carries_unacknowledged_messages(node: Node, clients: list[Any]) -> None:
    """A takeover with clean session 0 resumes the session: what the old connection had
    not acknowledged is resent with DUP on the new one."""
    port = node.app.mqtt_port
    token = node.token("alice")
    old, _ = await Raw.connect(port, "roaming", clean=False, username="d", password=token)
    clients.append(old)
    await old.send(subscribe_packet(1, ("roam/#", 1)))
    await old.recv()
    await node.publish("roam/x", "unacked")
    first = await old.recv_publish()
    new, ack = await Raw.connect(port, "roaming", clean=False, username="d", password=token)
    clients.append(new)
    assert ack.session_present
    again = await new.recv_publish()
    assert (again.pid, again.publish()[1], again.publish()[6]) == (first.pid, b'"unacked"',
                                                                   True)
    assert await old.closed() == []


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_inbound_qos2_state_survives_reconnect(node: Node, clients: list[Any],
                                                     v5: bool) -> None:
    """The QoS 2 messages received but not released are part of the session state
    (section 4.1): a PUBLISH resent with DUP after a reconnect, for an id awaiting PUBREL,
    is acknowledged and not delivered a second time."""
    port = node.app.mqtt_port
    sub = await paho(clients, port, "q2-watch", token=node.token("alice"), v5=True)
    await sub.subscribe(("q2s/#", 2))
    token = pub_token(node)
    session = props(u32(SESSION_EXPIRY, 300))
    r, _ = await Raw.connect(port, "q2-dev", v5=v5, clean=False, username="d",
                             password=token, properties=session)
    clients.append(r)
    await r.send(publish_packet("q2s/t", b"exactly once", qos=2, pid=9, v5=v5))
    assert (await r.recv()).type == PUBREC
    r.abort()  # as if the PUBREC was lost on the way
    await offline(node, "q2-dev")
    r, ack = await Raw.connect(port, "q2-dev", v5=v5, clean=False, username="d",
                               password=token, properties=session)
    clients.append(r)
    assert ack.session_present
    await r.send(publish_packet("q2s/t", b"exactly once", qos=2, pid=9, dup=True, v5=v5))
    rec = await r.recv()
    assert (rec.type, rec.pid) == (PUBREC, 9)
    await r.send(ack_packet(PUBREL, 9))
    comp = await r.recv()
    assert (comp.type, comp.pid, comp.reason) == (PUBCOMP, 9, 0)
    await r.send(publish_packet("q2s/t", b"marker", qos=1, pid=10, v5=v5))
    assert (await r.recv()).type == PUBACK
    assert [(await sub.message()).payload for _ in range(2)] == [b"exactly once", b"marker"]


async def test_no_loss_while_reconnecting(node: Node, clients: list[Any]) -> None:
    """QoS 1 messages published while a persistent session reconnects again and again
    all arrive (at least once)."""
    port = node.app.mqtt_port
    token = node.token("alice")
    c = await paho(clients, port, "flappy", token=token, clean=False)
    await c.subscribe(("flap/#", 1))
    total = 150
    publisher = asyncio.create_task(_publish_many(node, "flap/x", total))
    seen: set[int] = set()

    def drain(client: Paho) -> None:
        while not client.messages.empty():
            seen.add(orjson.loads(client.messages.get_nowait().payload))

    try:
        for _ in range(5):
            await asyncio.to_thread(c.close)
            drain(c)
            await offline(node, "flappy")
            c = Paho(port, "flappy", token=token, clean=False)
            clients.append(c)
            assert (await c.connack()).session_present
    finally:
        await publisher
    while len(seen) < total:
        drain(c)
        if len(seen) < total:
            seen.add(orjson.loads((await c.message()).payload))
    assert seen == set(range(total))


async def _publish_many(node: Node, topic: str, count: int) -> None:
    for i in range(count):
        await node.publish(topic, i)
        await asyncio.sleep(0)


# --- restarts ----------------------------------------------------------------------------

async def test_restart_keeps_sessions_and_queued_messages(tmp_path: Path,
                                                          clients: list[Any]) -> None:
    """Persistent sessions live in the store: after a restart on the same data folder
    the subscriptions are still registered, QoS 1 messages queued before the restart
    arrive, and an in-flight one is resent with DUP and its packet id."""
    n = await start_node(tmp_path)
    try:
        port = n.app.mqtt_port
        token = n.token("alice")
        c = await paho(clients, port, "survivor", token=token, clean=False)
        await c.subscribe(("r/#", 1))
        await asyncio.to_thread(c.close)
        await offline(n, "survivor")
        r, _ = await Raw.connect(port, "inflight", v5=True, clean=False, username="d",
                                 password=token, properties=props(u32(SESSION_EXPIRY, 300)))
        clients.append(r)
        await r.send(subscribe_packet(1, ("r/#", 1), v5=True))
        await r.recv()
        for i in range(2):
            await n.publish("r/x", i)
        first = await r.recv_publish()
        second = await r.recv_publish()
        await r.send(ack_packet(PUBACK, second.pid))  # the first stays unacknowledged
    finally:
        await stop_node(n)
    got = await r.closed()
    assert [(p.type, p.reason) for p in got] == [(DISCONNECT, 0x8B)]  # server shutting down

    n = await start_node(tmp_path)
    try:
        port = n.app.mqtt_port
        await n.publish("r/x", 2)  # for both sessions, still offline after the restart
        c = Paho(port, "survivor", token=n.token("alice"), clean=False)
        clients.append(c)
        assert (await c.connack()).session_present
        assert [orjson.loads((await c.message()).payload) for _ in range(3)] == [0, 1, 2]
        r, ack = await Raw.connect(port, "inflight", v5=True, clean=False, username="d",
                                   password=n.token("alice"),
                                   properties=props(u32(SESSION_EXPIRY, 300)))
        clients.append(r)
        assert ack.session_present
        again = await r.recv_publish()
        assert (again.pid, again.publish()[1], again.publish()[6]) == (
            first.pid, b"0", True)
        nxt = await r.recv_publish()
        assert nxt.publish()[1] == b"2" and not nxt.publish()[6]
    finally:
        for cl in clients:
            await asyncio.to_thread(cl.close) if isinstance(cl, Paho) else cl.abort()
        clients.clear()
        await stop_node(n)


async def test_restart_of_the_process(server_process: ServerProcess,
                                      clients: list[Any]) -> None:
    """``tidings serve`` stopped with SIGTERM and started again: a device's persistent
    session and the QoS 1 messages published while it was away survive."""
    port = int(server_process.env["TIDINGS_MQTT_PORT"])
    tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=3600)
    token = tokens.issue("alice")
    server_process.start()
    c = await paho(clients, port, "proc-dev", token=token, clean=False)
    await c.subscribe(("proc/#", 1))
    await asyncio.to_thread(c.close)
    await c.disconnected()  # its socket is closed: nothing more can reach this client

    async def publish(value: int) -> None:
        async with aiohttp.ClientSession() as http, http.post(
                f"{server_process.api_url}/v1/publish",
                json={"topic": "proc/x", "data": value},
                headers={"Authorization": f"Bearer {API_KEY}"}) as resp:
            assert resp.status == 200, await resp.text()

    await publish(1)
    assert await asyncio.to_thread(server_process.stop, signal.SIGTERM) == 0
    server_process.start()
    await publish(2)
    c = Paho(port, "proc-dev", token=token, clean=False)
    clients.append(c)
    assert (await c.connack()).session_present
    got = []
    try:
        for _ in range(2):
            got.append(orjson.loads((await c.message()).payload))
    except AssertionError:
        server_process.stop()
        raise AssertionError(f"got {got}; server said: {server_process.output[-3000:]}") from None
    assert got == [1, 2]
    await c.no_message()
