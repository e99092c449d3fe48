"""The MQTT broker with real clients: paho-mqtt (3.1.1 and 5.0) and raw sockets.

Every test runs a whole in-process node (real sockets, real SQLite) and
talks to it as a device would. paho-mqtt runs on its own network thread;
its callbacks land in queues the test awaits with bounded timeouts. Where
the exact bytes matter (the QoS 2 exactly-once flow, DUP, reason codes,
malformed input) a :class:`Raw` client writes literal packets over a real
TCP socket and parses what comes back.

Restarts and offline queues are in ``test_mqtt_persist.py``; the Debian
``mosquitto_pub`` / ``mosquitto_sub`` clients in ``test_mqtt_clients.py``.
The client helpers
(``Paho``, ``Raw``, packet builders, fixtures) are in ``support/mqtt.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import WAIT, Node, make_settings, start_with, stop_node
from support.mqtt import (
    CONNACK,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    OPEN_BROKER,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    QUIET,
    RECEIVE_MAXIMUM,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY,
    SUBACK,
    TOPIC_ALIAS,
    UNSUBACK,
    WILL_DELAY,
    NodeMaker,
    Paho,
    Raw,
    RawPacket,
    ack_packet,
    broker,
    clients,
    connect_packet,
    frame,
    make_node,
    metric,
    open_broker,
    paho,
    prop,
    props,
    pub_token,
    publish_packet,
    raw,
    subscribe_packet,
    u16,
    u32,
    utf8,
    wait_until,
)
from support.tls import self_signed
from tidings import config
from tidings.config import AclRule

_FIXTURES = (clients, make_node, open_broker)  # fixtures from support.mqtt


# --- QoS 0, 1, 2 both directions ---------------------------------------------------------

@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_qos_levels_both_directions(node: Node, clients: list[Any], v5: bool) -> None:
    """Each publish QoS to each subscription QoS arrives once, at the lower of the two
    [MQTT-3.8.4-8]; the publisher's QoS 1/2 flows complete with success."""
    port = node.app.mqtt_port
    sub = await paho(clients, port, "sub", token=node.token("alice"), v5=v5)
    pub = await paho(clients, port, "pub", token=pub_token(node), v5=v5)
    assert await sub.subscribe(("qos/0", 0), ("qos/1", 1), ("qos/2", 2)) == [0, 1, 2]
    for pub_qos in (0, 1, 2):
        for sub_qos in (0, 1, 2):
            payload = f"{pub_qos}->{sub_qos}".encode()
            assert await pub.publish(f"qos/{sub_qos}", payload, pub_qos) == 0
            m = await sub.message()
            assert (m.topic, m.payload, m.qos) == (f"qos/{sub_qos}", payload,
                                                   min(pub_qos, sub_qos))
    await sub.no_message()


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_qos2_duplicate_publish_is_delivered_once(v5: bool, make_node: NodeMaker,
                                                       clients: list[Any]) -> None:
    """[MQTT-4.3.3-10] (3.1.1 [MQTT-4.3.3-2]): a PUBLISH resent with the same packet id
    while the broker awaits PUBREL is acknowledged again and not delivered twice."""
    n = await make_node(auth__allow_anonymous=True,
                        acl=[AclRule("qos2/#", users=["anonymous"], publish=True)])
    port = n.app.mqtt_port
    sub = await paho(clients, port, "q2sub", token=n.token("alice"), v5=True)
    assert await sub.subscribe(("qos2/#", 2)) == [2]
    r = await Raw.open(port, v5=v5)
    clients.append(r)
    if v5:  # CONNECT "q2pub", level 5, clean start, keepalive 60, no properties
        await r.send(bytes.fromhex("1012 0004 4d515454 05 02 003c 00 0005 7132707562"))
    else:  # the same in 3.1.1 (level 4, no property length)
        await r.send(bytes.fromhex("1011 0004 4d515454 04 02 003c 0005 7132707562"))
    assert (await r.recv()).body[:2] == b"\x00\x00"  # CONNACK, accepted
    props = "00" if v5 else ""
    length = "0f" if v5 else "0e"
    # PUBLISH QoS 2, packet id 7, topic "qos2/t", payload "once"
    first = bytes.fromhex(f"34 {length} 0006 716f73322f74 0007 {props} 6f6e6365")
    again = bytes.fromhex(f"3c {length} 0006 716f73322f74 0007 {props} 6f6e6365")  # DUP
    await r.send(first)
    assert await r.recv() == RawPacket(PUBREC, 0, b"\x00\x07", v5)
    await r.send(again)
    assert await r.recv() == RawPacket(PUBREC, 0, b"\x00\x07", v5)  # acknowledged again
    await r.send(bytes.fromhex("6202 0007"))  # PUBREL 7
    assert await r.recv() == RawPacket(PUBCOMP, 0, b"\x00\x07", v5)
    # The id is free again: a PUBLISH with it now is a new message.
    await r.send(bytes.fromhex(f"34 {length} 0006 716f73322f74 0007 {props} 6e657874"))
    assert await r.recv() == RawPacket(PUBREC, 0, b"\x00\x07", v5)
    await r.send(bytes.fromhex("6202 0007"))
    assert await r.recv() == RawPacket(PUBCOMP, 0, b"\x00\x07", v5)
    got = [(await sub.message()).payload for _ in range(2)]
    assert got == [b"once", b"next"]
    await sub.no_message()


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_qos2_flow_to_a_subscriber(node: Node, clients: list[Any], v5: bool) -> None:
    """The broker's side of an outgoing QoS 2 flow: PUBLISH, PUBREC -> PUBREL, PUBCOMP
    [MQTT-4.3.3-1..4]; a second message then goes out under a fresh flow."""
    r = await raw(clients, node.app.mqtt_port, "q2out", v5=v5, username="d",
                  password=node.token("alice"))
    await r.send(subscribe_packet(1, ("out/q2", 2), v5=v5))
    assert (await r.recv()).codes() == [2]
    await node.publish("out/q2", "first")  # HTTP publications travel at QoS 1
    p = await r.recv_publish()
    topic, payload, qos, _, pid, _, dup = p.publish()
    assert (topic, payload, qos, dup) == ("out/q2", b'"first"', 1, False)
    await r.send(ack_packet(PUBACK, pid or 0))
    # A QoS 2 publication from a device reaches the QoS 2 subscriber at QoS 2.
    pub = await paho(clients, node.app.mqtt_port, "q2src", token=pub_token(node), v5=v5)
    await pub.publish("out/q2", b"two", 2)
    p = await r.recv_publish()
    topic, payload, qos, _, pid, _, _ = p.publish()
    assert (topic, payload, qos) == ("out/q2", b"two", 2) and pid
    await r.send(ack_packet(PUBREC, pid))
    rel = await r.recv()
    assert (rel.type, rel.flags, rel.pid) == (PUBREL, 2, pid)
    await r.send(ack_packet(PUBCOMP, pid))
    await pub.publish("out/q2", b"three", 2)
    p = await r.recv_publish()
    assert p.publish()[:3] == ("out/q2", b"three", 2)


# --- retained messages ---------------------------------------------------------------------

@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_retained_set_replace_clear(node: Node, clients: list[Any], v5: bool) -> None:
    """A retained message is sent with RETAIN=1 to each new subscription [MQTT-3.3.1-6];
    a newer one replaces it [MQTT-3.3.1-5]; an empty one clears it [MQTT-3.3.1-10/11].
    Live subscribers get RETAIN=0 (3.1.1 [MQTT-3.3.1-9]; 5.0 without retain-as-published)."""
    port = node.app.mqtt_port
    token = node.token("alice")
    pub = await paho(clients, port, "rpub", token=pub_token(node), v5=v5)
    live = await paho(clients, port, "rlive", token=token, v5=v5)
    assert await live.subscribe(("ret/#", 1)) == [1]
    await pub.publish("ret/a", b"one", 1, retain=True)
    m = await live.message()
    assert (m.payload, m.retain) == (b"one", False)

    first = await paho(clients, port, "rsub1", token=token, v5=v5)
    await first.subscribe(("ret/a", 1))
    m = await first.message()
    assert (m.topic, m.payload, m.retain, m.qos) == ("ret/a", b"one", True, 1)

    await pub.publish("ret/a", b"two", 1, retain=True)
    await pub.publish("ret/b", b"bee", 0, retain=True)
    await pub.publish("ret/c", b"not kept", 1, retain=False)
    second = await paho(clients, port, "rsub2", token=token, v5=v5)
    await second.subscribe(("ret/+", 1))
    got = sorted([(m.topic, m.payload, m.retain) for m in
                  [await second.message(), await second.message()]])
    assert got == [("ret/a", b"two", True), ("ret/b", b"bee", True)]
    await second.no_message()

    await pub.publish("ret/a", b"", 1, retain=True)  # clears
    third = await paho(clients, port, "rsub3", token=token, v5=v5)
    await third.subscribe(("ret/#", 1))
    m = await third.message()
    assert (m.topic, m.payload) == ("ret/b", b"bee")
    await third.no_message()


async def test_retain_handling_and_retain_as_published(node: Node, clients: list[Any]) -> None:
    """5.0 subscription options: Retain Handling 0 sends retained messages on every
    SUBSCRIBE, 1 only when the subscription is new, 2 never [MQTT-3.3.1-9..11];
    Retain As Published keeps the publisher's RETAIN on live deliveries [MQTT-3.3.1-12]."""
    port = node.app.mqtt_port
    pub = await paho(clients, port, "rhpub", token=pub_token(node), v5=True)
    await pub.publish("rh/x", b"kept", 1, retain=True)
    sub = await paho(clients, port, "rhsub", token=node.token("alice"), v5=True)

    def opts(rh: int, rap: bool = False) -> Any:
        return lambda q: SubscribeOptions(qos=q, retainHandling=rh,
                                               retainAsPublished=rap)

    for _ in range(2):  # 0: at every subscribe, new or not
        await sub.subscribe(("rh/x", 1), options=opts(0))
        assert (await sub.message()).payload == b"kept"
    await sub.subscribe(("rh/+", 1), options=opts(1))  # 1: the first time only
    assert (await sub.message()).payload == b"kept"
    await sub.subscribe(("rh/+", 1), options=opts(1))
    await sub.subscribe(("rh/#", 1), options=opts(2))  # 2: never
    await sub.no_message()

    plain = await paho(clients, port, "rhplain", token=node.token("alice"), v5=True)
    rap = await paho(clients, port, "rhrap", token=node.token("alice"), v5=True)
    await plain.subscribe(("rap/t", 1), options=opts(0, False))
    await rap.subscribe(("rap/t", 1), options=opts(0, True))
    await pub.publish("rap/t", b"r", 1, retain=True)
    await pub.publish("rap/t", b"n", 1, retain=False)
    assert [(m.payload, m.retain) for m in [await plain.message(), await plain.message()]] \
        == [(b"r", False), (b"n", False)]
    assert [(m.payload, m.retain) for m in [await rap.message(), await rap.message()]] \
        == [(b"r", True), (b"n", False)]


# --- wills -------------------------------------------------------------------------------

async def will_watcher(clients: list[Any], node: Node) -> Paho:
    w = await paho(clients, node.app.mqtt_port, "watcher", token=node.token("alice"))
    assert await w.subscribe(("wills/#", 1)) == [1]
    return w


async def no_will(node: Node, watcher: Paho, within: float = QUIET) -> None:
    """No will arrives: a marker published now comes first, and none was counted."""
    await node.publish("wills/marker", "m")
    assert (await watcher.message()).topic == "wills/marker"
    await watcher.no_message(within)
    assert await metric(node, "tidings_mqtt_wills_total") == 0


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_will_on_network_failure_not_on_disconnect(node: Node, clients: list[Any],
                                                         v5: bool) -> None:
    """The will is published when the connection ends without DISCONNECT [MQTT-3.1.2-8],
    with its QoS and RETAIN; a DISCONNECT discards it [MQTT-3.1.2-10]."""
    port = node.app.mqtt_port
    watcher = await will_watcher(clients, node)
    polite = await paho(clients, port, "polite", token=pub_token(node), v5=v5,
                        will=("wills/polite", b"gone", 1, False))
    await asyncio.to_thread(polite.close)
    await wait_until(lambda: "polite" not in broker(node).sessions, what="session end")
    await no_will(node, watcher)

    dev = await paho(clients, port, "dev", token=pub_token(node), v5=v5,
                     will=("wills/dev", b"offline", 1, True))
    await asyncio.to_thread(dev.drop)
    m = await watcher.message()
    assert (m.topic, m.payload, m.qos) == ("wills/dev", b"offline", 1)
    late = await paho(clients, port, "late", token=node.token("alice"), v5=v5)
    await late.subscribe(("wills/dev", 1))
    m = await late.message()
    assert (m.payload, m.retain) == (b"offline", True)  # the will was retained


async def test_will_delay(node: Node, clients: list[Any]) -> None:
    """5.0 Will Delay Interval: a client back within the delay cancels the will
    [MQTT-3.1.3-9]; one that stays away gets its will published after the delay."""
    port = node.app.mqtt_port
    watcher = await will_watcher(clients, node)
    token = pub_token(node)
    will = ("wills/delayed", b"late", 1, False)
    session = props(u32(SESSION_EXPIRY, 60))
    delay = props(u32(WILL_DELAY, 1))
    r = await raw(clients, port, "wd", v5=True, username="d", password=token, will=will,
                  properties=session, will_properties=delay)
    r.abort()
    r2, ack = await Raw.connect(port, "wd", v5=True, clean=False, username="d",
                                password=token, properties=session)
    clients.append(r2)
    assert ack.session_present
    await no_will(node, watcher, within=1.5)  # past the delay: cancelled, not late

    r3 = await raw(clients, port, "wd2", v5=True, username="d", password=token, will=will,
                   properties=session, will_properties=delay)
    loop = asyncio.get_running_loop()
    gone = loop.time()
    r3.abort()
    m = await watcher.message()
    assert m.payload == b"late" and loop.time() - gone >= 0.9


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_takeover_closes_old_connection_without_will(node: Node, clients: list[Any],
                                                           v5: bool) -> None:
    """A CONNECT with a client id in use closes the old connection [MQTT-3.1.4-3]; 5.0
    tells it with DISCONNECT 0x8E; the old connection's will is not published."""
    port = node.app.mqtt_port
    watcher = await will_watcher(clients, node)
    token = pub_token(node)
    old = await raw(clients, port, "same", v5=v5, username="d", password=token,
                    will=("wills/same", b"x", 0, False))
    new = await raw(clients, port, "same", v5=v5, username="d", password=token)
    before_close = await old.closed()
    if v5:
        assert [(p.type, p.reason) for p in before_close] == [(DISCONNECT, 0x8E)]
    else:
        assert before_close == []
    await no_will(node, watcher)
    await new.send(subscribe_packet(1, ("after/takeover", 0), v5=v5))  # the new one works
    assert (await new.recv()).codes() == [0]


async def test_takeover_leaves_one_device_online(node: Node, clients: list[Any]) -> None:
    """After a takeover the user's device list has the new connection only, and when
    that one goes the device is gone too (presence does not keep the old one)."""
    port = node.app.mqtt_port
    tab = await node.client("alice", device="tab")
    token = node.token("alice")
    await raw(clients, port, "lamp", username="d", password=token)
    newer = await raw(clients, port, "lamp", username="d", password=token)

    async def devices() -> list[str]:
        reply = await tab.request("devices")
        assert reply["ok"], reply
        return sorted(d["device"] for d in reply["devices"])

    assert await devices() == ["lamp", "tab"]
    await newer.disconnect()
    await wait_until(lambda: "lamp" not in broker(node).sessions, what="lamp gone")

    async def only_tab() -> bool:
        return await devices() == ["tab"]

    await wait_until(only_tab, what="the device list without lamp")


async def test_packets_sent_before_connack_are_handled(node: Node, clients: list[Any]) -> None:
    """A client may send packets right after CONNECT without waiting for CONNACK
    (section 3.1.4): they are handled once the CONNACK is out, with no more bytes needed."""
    r = await Raw.open(node.app.mqtt_port)
    clients.append(r)
    await r.send(connect_packet("eager", username="d", password=pub_token(node))
                 + subscribe_packet(1, ("eager/#", 1))
                 + publish_packet("eager/x", b"hi", qos=1, pid=2))
    assert (await r.recv()).type == CONNACK
    got = [await r.recv() for _ in range(3)]
    assert sorted(p.type for p in got) == [PUBLISH, PUBACK, SUBACK]


async def test_unsubscribe(node: Node, clients: list[Any]) -> None:
    """UNSUBSCRIBE stops delivery [MQTT-3.10.4-2]; 5.0 says 0x11 for a filter that was
    not subscribed."""
    r = await raw(clients, node.app.mqtt_port, "unsub", v5=True, username="d",
                  password=node.token("alice"))
    await r.send(subscribe_packet(1, ("u/#", 0), ("v/#", 0), v5=True))
    assert (await r.recv()).codes() == [0, 0]
    await r.send(frame(0xA2, b"\x00\x02\x00" + utf8("u/#") + utf8("never")))
    unsuback = await r.recv()
    assert (unsuback.type, unsuback.codes()) == (UNSUBACK, [0x00, 0x11])
    await node.publish("u/x", "gone")
    await node.publish("v/x", "kept")
    assert (await r.recv_publish()).publish()[0] == "v/x"
    await r.silent()


async def test_v5_properties_travel_with_the_message(node: Node, clients: list[Any]) -> None:
    """User Properties, Content Type, Response Topic, Correlation Data and Payload Format
    Indicator reach 5.0 subscribers unchanged [MQTT-3.3.2-17..20], [MQTT-3.3.2-4]."""
    port = node.app.mqtt_port
    sub = await paho(clients, port, "props-sub", token=node.token("alice"), v5=True)
    await sub.subscribe(("req/#", 1))
    old = await paho(clients, port, "props-311", token=node.token("alice"))
    await old.subscribe(("req/#", 1))
    pub = await paho(clients, port, "props-pub", token=pub_token(node), v5=True)
    await pub.publish("req/light", b"on", 1, props={
        "UserProperty": [("room", "hall"), ("by", "test")], "ContentType": "text/plain",
        "ResponseTopic": "resp/light", "CorrelationData": b"\x01\x02",
        "PayloadFormatIndicator": 1})
    m = await sub.message()
    names = ("UserProperty", "ContentType", "ResponseTopic", "CorrelationData",
             "PayloadFormatIndicator")
    assert tuple(prop(m, k) for k in names) == (
        [("room", "hall"), ("by", "test")], "text/plain", "resp/light", b"\x01\x02", 1)
    assert (await old.message()).payload == b"on"


async def test_assigned_client_identifier(node: Node, clients: list[Any]) -> None:
    """5.0: an empty client id gets an Assigned Client Identifier [MQTT-3.2.2-16];
    3.1.1: accepted with clean session 1, refused (0x02) with clean session 0
    [MQTT-3.1.3-8]."""
    r, ack = await Raw.connect(node.app.mqtt_port, "", v5=True, username="d",
                               password=node.token("alice"))
    clients.append(r)
    assigned = ack.properties()[0x12][0].decode()
    assert assigned and assigned in broker(node).sessions
    await raw(clients, node.app.mqtt_port, "", username="d", password=node.token("alice"))
    await raw(clients, node.app.mqtt_port, "", clean=False, expect=0x02, username="d",
              password=node.token("alice"))


async def test_disconnect_with_will_message(node: Node, clients: list[Any]) -> None:
    """5.0 DISCONNECT with reason 0x04 asks for the will to be published."""
    watcher = await will_watcher(clients, node)
    r = await raw(clients, node.app.mqtt_port, "willing", v5=True, username="d",
                  password=pub_token(node), will=("wills/willing", b"asked", 0, False))
    await r.send(bytes.fromhex("e0 01 04"))
    assert await r.closed() == []
    assert (await watcher.message()).payload == b"asked"


# --- keepalive -----------------------------------------------------------------------------

@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_silent_client_is_dropped_and_its_will_sent(node: Node, clients: list[Any],
                                                         v5: bool) -> None:
    """Silent for 1.5 x Keep Alive: disconnected as on a network failure, so the will
    goes out [MQTT-3.1.2-24] (5.0 [MQTT-3.1.2-22], with DISCONNECT 0x8D)."""
    watcher = await will_watcher(clients, node)
    r = await raw(clients, node.app.mqtt_port, "sleepy", v5=v5, keepalive=1, username="d",
                  password=pub_token(node), will=("wills/sleepy", b"timeout", 0, False))
    await r.send(b"\xc0\x00")  # PINGREQ
    assert (await r.recv()).type == PINGRESP
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    before_close = await r.closed()
    assert loop.time() - quiet_since >= 1.4
    assert [(p.type, p.reason) for p in before_close] == ([(DISCONNECT, 0x8D)] if v5 else [])
    assert (await watcher.message()).payload == b"timeout"


async def test_server_keep_alive_caps_the_keepalive(make_node: NodeMaker,
                                                    clients: list[Any]) -> None:
    """5.0: a Keep Alive over ``mqtt.max_keepalive`` (or 0) is answered with Server Keep
    Alive [MQTT-3.2.2-21], and the server holds the client to it."""
    n = await make_node(mqtt__max_keepalive=1)
    r = await Raw.open(n.app.mqtt_port, v5=True)
    clients.append(r)
    await r.send(connect_packet("ka", v5=True, keepalive=120, username="d",
                                password=n.token("alice")))
    ack = await r.recv()
    assert ack.reason == 0 and ack.properties()[SERVER_KEEP_ALIVE] == [1]
    assert [(p.type, p.reason) for p in await r.closed()] == [(DISCONNECT, 0x8D)]
    p = await paho(clients, n.app.mqtt_port, "ka2", token=n.token("alice"), v5=True,
                   keepalive=0)
    assert p.c._keepalive == 1  # paho adopts it and pings in time
    await p.subscribe(("k", 0))


# --- wildcards, $SYS, shared subscriptions --------------------------------------------------

async def collect(client: Paho, count: int) -> list[tuple[str, bytes]]:
    """Exactly ``count`` messages (then nothing more), as (topic, payload)."""
    got = [(m.topic, bytes(m.payload)) for m in [await client.message() for _ in range(count)]]
    await client.no_message()
    return got


async def test_wildcards(node: Node, clients: list[Any]) -> None:
    """``+`` matches one level, ``#`` the rest including the parent [MQTT-4.7.1-2];
    ``#`` does not reach ``$`` topics [MQTT-4.7.2-1] nor other users' private topics."""
    port = node.app.mqtt_port
    token = node.token("alice")
    subs = {}
    for i, flt in enumerate(["home/+/temp", "home/#", "+/kitchen/+", "#"]):
        subs[flt] = await paho(clients, port, f"wc{i}", token=token)
        assert await subs[flt].subscribe((flt, 1)) == [1]
    pub = await paho(clients, port, "wcpub", token=pub_token(node))
    topics = ["home/kitchen/temp", "home/hall/temp", "home", "home/kitchen/light",
              "office/kitchen/x", "home/kitchen/temp/raw"]
    for t in topics:
        await pub.publish(t, t.encode(), 1)
    await node.publish("users/bob/secret", "for bob only")
    expected = {
        "home/+/temp": ["home/kitchen/temp", "home/hall/temp"],
        "home/#": ["home/kitchen/temp", "home/hall/temp", "home", "home/kitchen/light",
                   "home/kitchen/temp/raw"],
        "+/kitchen/+": ["home/kitchen/temp", "home/kitchen/light", "office/kitchen/x"],
        "#": topics,
    }
    for flt, want in expected.items():
        got = await collect(subs[flt], len(want))
        assert [t for t, _ in got] == want, flt
    # '$SYS/broker/...' is retained from the start, yet '#' got none of it above.
    assert await node.app.node.store.retained("$SYS/broker/version")


async def test_sys_topics(make_node: NodeMaker, clients: list[Any]) -> None:
    """``$SYS/broker/...`` statistics are retained and kept current; a client cannot
    publish there."""
    n = await make_node(mqtt__sys_interval=0.1)
    port = n.app.mqtt_port

    async def first_round_done() -> bool:
        return bool(await n.app.node.store.retained("$SYS/broker/subscriptions/count"))

    await wait_until(first_round_done, what="the first $SYS round")
    watcher = await paho(clients, port, "sys", token=n.token("alice"))
    assert await watcher.subscribe(("$SYS/broker/#", 0)) == [0]
    want = {"$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected",
            "$SYS/broker/messages/received", "$SYS/broker/messages/sent",
            "$SYS/broker/subscriptions/count"}
    first: dict[str, bytes] = {}
    for _ in range(200):  # retained copies, mixed with live updates (RETAIN=0)
        m = await watcher.message()
        if m.retain:
            first[m.topic] = bytes(m.payload)
        if set(first) >= want:
            break
    assert set(first) >= want, first
    assert first["$SYS/broker/version"].startswith(b"tidings")

    pub = await paho(clients, port, "syspub", token=pub_token(n))
    await pub.publish("$SYS/broker/version", b"fake", 1)
    for i in range(3):
        await pub.publish("sys/count", str(i).encode(), 1)

    async def current(key: str) -> bytes:
        while True:
            m = await watcher.message()
            if m.topic == f"$SYS/broker/{key}":
                return bytes(m.payload)

    received = int(await current("messages/received"))
    while received < 3:
        received = int(await current("messages/received"))
    assert int(await current("clients/connected")) == 2
    late = await paho(clients, port, "syslate", token=n.token("alice"))
    await late.subscribe(("$SYS/broker/version", 0))
    m = await late.message()
    assert m.retain and m.payload.startswith(b"tidings")  # not b"fake"


async def test_shared_subscription(node: Node, clients: list[Any]) -> None:
    """``$share/g/jobs/#``: each message goes to exactly one member of the group
    [MQTT-4.8.2-x], 5.0 and 3.1.1 members alike; a plain subscriber gets every one."""
    port = node.app.mqtt_port
    token = node.token("alice")
    a = await paho(clients, port, "worker-a", token=token, v5=True)
    b = await paho(clients, port, "worker-b", token=token)
    everyone = await paho(clients, port, "audit", token=token, v5=True)
    assert await a.subscribe(("$share/g/jobs/#", 1)) == [1]
    assert await b.subscribe(("$share/g/jobs/#", 1)) == [1]
    assert await everyone.subscribe(("jobs/#", 1)) == [1]
    pub = await paho(clients, port, "boss", token=pub_token(node))
    sent = [f"job-{i}".encode() for i in range(10)]
    for payload in sent:
        await pub.publish("jobs/run", payload, 1)
    assert [p for _, p in await collect(everyone, 10)] == sent
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    while len(got_a) + len(got_b) < len(sent):
        for q, into in ((a, got_a), (b, got_b)):
            with contextlib.suppress(AssertionError):  # nothing for this one just now
                into.append(bytes((await q.message(QUIET)).payload))
    await a.no_message()
    await b.no_message()
    assert sorted(got_a + got_b) == sorted(sent)
    assert got_a and got_b


# --- 5.0 features ------------------------------------------------------------------------

async def test_no_local(node: Node, clients: list[Any]) -> None:
    """No Local: a client's own publications are not sent back to it [MQTT-3.8.3-3];
    other clients' are."""
    port = node.app.mqtt_port
    me = await paho(clients, port, "nl-me", token=pub_token(node), v5=True)
    other = await paho(clients, port, "nl-other", token=pub_token(node), v5=True)
    await me.subscribe(("nl/t", 1), options=lambda q: SubscribeOptions(q, noLocal=True))
    await other.subscribe(("nl/t", 1))
    await me.publish("nl/t", b"mine", 1)
    assert (await other.message()).payload == b"mine"
    await other.publish("nl/t", b"theirs", 1)
    assert (await me.message()).payload == b"theirs"
    assert (await other.message()).payload == b"theirs"  # no No Local: own comes back
    await me.no_message()


async def test_subscription_identifiers(node: Node, clients: list[Any]) -> None:
    """A message carries the Subscription Identifier of every matching subscription
    [MQTT-3.3.4-3], and none for a subscription made without one."""
    port = node.app.mqtt_port
    c = await paho(clients, port, "sid", token=pub_token(node), v5=True)
    await c.subscribe(("sid/+", 1), props={"SubscriptionIdentifier": 7})
    await c.subscribe(("sid/#", 1), props={"SubscriptionIdentifier": 300})
    await c.subscribe(("other/x", 1))
    await c.publish("sid/a", b"1", 1)
    m = await c.message()
    assert sorted(prop(m, "SubscriptionIdentifier")) == [7, 300]
    await c.publish("other/x", b"2", 1)
    m = await c.message()
    assert not hasattr(m.properties, "SubscriptionIdentifier")


async def test_topic_alias_from_the_client(node: Node, clients: list[Any]) -> None:
    """A client sets a Topic Alias with a topic, then publishes with the alias alone
    [MQTT-3.3.2-12]; subscribers see the full topic. An alias over the announced
    Topic Alias Maximum is a protocol error: DISCONNECT 0x94 [MQTT-3.3.2-9]."""
    port = node.app.mqtt_port
    sub = await paho(clients, port, "ta-sub", token=node.token("alice"), v5=True)
    await sub.subscribe(("ta/#", 1))
    pub = await paho(clients, port, "ta-pub", token=pub_token(node), v5=True)
    await pub.publish("ta/a/rather/long/topic/name", b"1", 1, props={"TopicAlias": 1})
    await pub.publish("", b"2", 1, props={"TopicAlias": 1})
    got = [(m.topic, m.payload) for m in [await sub.message(), await sub.message()]]
    assert got == [("ta/a/rather/long/topic/name", b"1"), ("ta/a/rather/long/topic/name", b"2")]

    r, ack = await Raw.connect(port, "ta-raw", v5=True, username="d", password=pub_token(node))
    clients.append(r)
    limit = ack.properties()[0x22][0]
    assert limit >= 1
    await r.send(publish_packet("ta/b", b"x", v5=True, properties=props(u16(TOPIC_ALIAS,
                                                                              limit + 1))))
    assert [(p.type, p.reason) for p in await r.closed()] == [(DISCONNECT, 0x94)]


async def test_receive_maximum(make_node: NodeMaker, clients: list[Any]) -> None:
    """The client's Receive Maximum bounds our unacknowledged QoS 1 sends [MQTT-4.9.0-2]:
    the rest wait, in order, for acks. Ours (``mqtt.receive_maximum``) is announced and
    a client over it is disconnected with 0x93 [MQTT-3.3.4-9]."""
    n = await make_node(mqtt__receive_maximum=2)
    port = n.app.mqtt_port
    r, ack = await Raw.connect(port, "rm", v5=True, username="d", password=pub_token(n),
                               properties=props(u16(RECEIVE_MAXIMUM, 2)))
    clients.append(r)
    assert ack.properties()[RECEIVE_MAXIMUM] == [2]
    await r.send(subscribe_packet(1, ("rm/t", 1), v5=True))
    assert (await r.recv()).codes() == [1]
    for i in range(4):
        await n.publish("rm/t", i)
    first = [await r.recv_publish() for _ in range(2)]
    assert [p.publish()[1] for p in first] == [b"0", b"1"]
    await r.silent()
    await r.send(ack_packet(PUBACK, first[0].pid))
    third = await r.recv_publish()
    assert third.publish()[1] == b"2"
    await r.silent()
    await r.send(ack_packet(PUBACK, first[1].pid), ack_packet(PUBACK, third.pid))
    assert (await r.recv_publish()).publish()[1] == b"3"

    # Three QoS 2 PUBLISHes without PUBREL: one more than we allow in flight.
    await r.send(*(publish_packet("rm/in", b"x", qos=2, pid=i, v5=True) for i in (1, 2, 3)))
    got = await r.closed()
    assert {p.type for p in got[:-1]} <= {PUBREC}  # the first two may be acknowledged
    assert (got[-1].type, got[-1].reason) == (DISCONNECT, 0x93)


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_maximum_packet_size(make_node: NodeMaker, clients: list[Any],
                                   v5: bool) -> None:
    """Over ``mqtt.max_packet_size``: 5.0 DISCONNECT 0x95 [MQTT-3.2.2-15], 3.1.1 close;
    the broker and the other clients go on."""
    n = await make_node(mqtt__max_packet_size=1024, limits__max_message_size=960)
    port = n.app.mqtt_port
    watcher = await paho(clients, port, "mps-w", token=n.token("alice"), v5=True)
    await watcher.subscribe(("mps/#", 1))
    r, ack = await Raw.connect(port, "mps", v5=v5, username="d", password=pub_token(n))
    clients.append(r)
    if v5:
        assert ack.properties()[MAXIMUM_PACKET_SIZE] == [1024]
    await r.send(publish_packet("mps/ok", b"x" * 900, qos=1, pid=1, v5=v5))
    assert (await r.recv()).type == PUBACK
    await r.send(publish_packet("mps/big", b"x" * 1100, qos=1, pid=2, v5=v5))
    got = await r.closed()
    assert [(p.type, p.reason) for p in got] == ([(DISCONNECT, 0x95)] if v5 else [])
    assert (await watcher.message()).payload == b"x" * 900
    other = await paho(clients, port, "mps-o", token=pub_token(n), v5=v5)
    await other.publish("mps/after", b"still here", 1)
    m = await watcher.message()
    assert (m.topic, m.payload) == ("mps/after", b"still here")


async def test_client_maximum_packet_size(node: Node, clients: list[Any]) -> None:
    """A message over the client's Maximum Packet Size is not sent to it [MQTT-3.1.2-24]
    (counted as dropped); smaller ones are."""
    r = await raw(clients, node.app.mqtt_port, "small", v5=True, username="d",
                  password=node.token("alice"), properties=props(u32(MAXIMUM_PACKET_SIZE, 64)))
    await r.send(subscribe_packet(1, ("cmps/#", 1), v5=True))
    assert (await r.recv()).codes() == [1]
    await node.publish("cmps/big", "y" * 100)
    await node.publish("cmps/small", "ok")
    p = await r.recv_publish()
    assert p.publish()[:2] == ("cmps/small", b'"ok"')
    assert await metric(node, "tidings_mqtt_dropped_total", reason="too_large") == 1


async def test_subscription_limit(make_node: NodeMaker, clients: list[Any]) -> None:
    """Over ``mqtt.max_subscriptions``: 0x97 Quota exceeded (5.0) / 0x80 (3.1.1); a
    filter already held may be subscribed again (its options replaced)."""
    n = await make_node(mqtt__max_subscriptions=2)
    for v5, over in ((True, 0x97), (False, 0x80)):
        c = await paho(clients, n.app.mqtt_port, f"lim-{v5}", token=n.token("alice"), v5=v5)
        assert await c.subscribe(("a", 0), ("b", 0), ("c", 0)) == [0, 0, over]
        assert await c.subscribe(("a", 1)) == [1]


async def test_slow_consumer_is_disconnected(make_node: NodeMaker, clients: list[Any]) -> None:
    """A subscriber that stops reading is dropped once its unsent bytes pass
    ``ws.outbound_buffer`` (counted as a slow consumer); the others keep receiving."""
    n = await make_node(ws__outbound_buffer=65536, limits__max_message_size=4096,
                        limits__max_reply_size=16384, notify__max_data_size=4096)
    port = n.app.mqtt_port
    fine = await paho(clients, port, "fast", token=n.token("alice"))
    await fine.subscribe(("flood/#", 0))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    stuck = Raw(reader, writer, False)
    clients.append(stuck)
    await stuck.send(connect_packet("stuck", username="d", password=n.token("alice")))
    assert (await stuck.recv()).type == CONNACK
    await stuck.send(subscribe_packet(1, ("flood/#", 0)))
    assert (await stuck.recv()).type == SUBACK
    cast(asyncio.Transport, writer.transport).pause_reading()  # and never read again
    pub = await paho(clients, port, "flooder", token=pub_token(n))
    chunk = b"z" * 4096  # limits.max_message_size
    slow = "tidings_slow_consumers_total"
    for i in range(2000):
        await pub.publish("flood/x", chunk, 0)
        if i % 50 == 49 and await metric(n, slow) >= 1:
            break
    await wait_until(lambda: "stuck" not in broker(n).sessions, what="the stuck client dropped")
    assert await metric(n, slow) == 1
    await pub.publish("flood/after", b"still", 1)
    while (m := await fine.message()).topic != "flood/after":
        pass
    assert m.payload == b"still"


async def test_tls_listener(make_node: NodeMaker, clients: list[Any], tmp_path: Path) -> None:
    """With ``mqtt.tls_cert`` and ``tls_key`` a second listener speaks MQTT over TLS."""
    cert, key = self_signed(tmp_path)
    n = await make_node(mqtt__tls_cert=str(cert), mqtt__tls_key=str(key), mqtt__tls_port=0)
    plain_port, tls_port = broker(n).ports
    p = Paho(tls_port, "secure", token=n.token("alice"), tls_ca=str(cert))
    clients.append(p)
    await p.connack()
    assert await p.subscribe(("secure/#", 1)) == [1]
    await n.publish("secure/x", "over tls")
    assert (await p.message()).payload == b'"over tls"'
    plain = await paho(clients, plain_port, "plain", token=pub_token(n))
    await plain.publish("secure/y", b"from plain", 1)
    assert (await p.message()).payload == b"from plain"


# --- auth ---------------------------------------------------------------------------------

async def test_token_auth_v5(node: Node, clients: list[Any]) -> None:
    """The password is a Tidings token; a bad one is refused with 0x86, none at all
    (anonymous not allowed) with 0x87."""
    port = node.app.mqtt_port
    ok = await paho(clients, port, "t-ok", token=node.token("alice"), v5=True)
    assert await ok.subscribe(("users/alice/notifications", 1)) == [1]
    await paho(clients, port, "t-bad", token="not-a-token", v5=True, expect=0x86)
    expired_issuer = node.app.tokens
    forged = expired_issuer.issue("alice")[:-4] + "AAAA"
    await paho(clients, port, "t-forged", token=forged, v5=True, expect=0x86)
    await paho(clients, port, "t-none", v5=True, expect=0x87)


async def test_token_auth_v311_return_codes(node: Node, clients: list[Any]) -> None:
    """3.1.1 CONNACK return codes: 0x04 bad user name or password, 0x05 not authorized."""
    port = node.app.mqtt_port
    for creds, code in ((("d", "nope"), 0x04), ((None, None), 0x05)):
        r = await Raw.open(port)
        clients.append(r)
        await r.send(connect_packet("rc", username=creds[0], password=creds[1]))
        ack = await r.recv()
        assert (ack.type, ack.body) == (CONNACK, bytes([0, code]))
        assert await r.closed() == []


async def test_anonymous_when_allowed(make_node: NodeMaker, clients: list[Any]) -> None:
    """``auth.allow_anonymous``: no password connects; anonymous clients still cannot
    reach ``users/``."""
    n = await make_node(auth__allow_anonymous=True)
    port = n.app.mqtt_port
    anon = await paho(clients, port, "anon")
    assert await anon.subscribe(("news/#", 0), ("users/alice/notifications", 1)) == [0, 0x80]
    await n.publish("news/x", "hello")
    assert (await anon.message()).payload == b'"hello"'
    anon5 = await paho(clients, port, "anon5", v5=True)
    assert await anon5.subscribe(("users/alice/#", 1)) == [0x87]


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_no_takeover_of_another_users_session(node: Node, clients: list[Any],
                                                    v5: bool) -> None:
    """A client id held by alice cannot be taken by bob's token (0x87 / 0x05); alice's
    connection is untouched. Alice herself can take it over."""
    port = node.app.mqtt_port
    alice = await paho(clients, port, "phone", token=node.token("alice"), v5=v5)
    await alice.subscribe(("users/alice/notifications", 1))
    # paho reports 3.1.1's return code 0x05 as 0x87 too; the raw client below sees the byte
    await paho(clients, port, "phone", token=node.token("bob"), v5=v5, expect=0x87)
    r = await Raw.open(port, v5=v5)
    clients.append(r)
    await r.send(connect_packet("phone", v5=v5, username="d", password=node.token("bob")))
    assert (await r.recv()).reason == (0x87 if v5 else 0x05)
    status, body = await node.api("POST", "/v1/notify", {"users": ["alice"], "title": "t"})
    assert status == 200
    m = await alice.message()
    assert orjson.loads(m.payload)["id"] == body["id"]
    await paho(clients, port, "phone", token=node.token("alice"), v5=v5)
    await alice.disconnected()


# --- ACL -----------------------------------------------------------------------------------

@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_acl_subscribe_denied(node: Node, clients: list[Any], v5: bool) -> None:
    """A denied filter gets 0x80 (3.1.1) / 0x87 (5.0) in its SUBACK slot, the others are
    granted; nothing from the denied topic arrives."""
    denied = 0x87 if v5 else 0x80
    c = await paho(clients, node.app.mqtt_port, "acl-s", token=node.token("alice"), v5=v5)
    codes = await c.subscribe(("users/bob/x", 1), ("users/alice/x", 1), ("users/+/x", 1),
                              ("$internal/x", 0), ("$SYS/broker/version", 0))
    assert codes == [denied, 1, denied, denied, 0]
    await node.publish("users/bob/x", "secret")
    await node.publish("users/alice/x", "mine")
    msgs = [await c.message() for _ in range(2)]
    assert sorted(m.topic for m in msgs) == ["$SYS/broker/version", "users/alice/x"]
    await c.no_message()


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_acl_publish_denied(node: Node, clients: list[Any], v5: bool) -> None:
    """A denied publish is dropped (3.1.1, still acknowledged) or refused with PUBACK
    0x87 (5.0), and never delivered."""
    port = node.app.mqtt_port
    spy = await paho(clients, port, "acl-spy", token=node.token("bob"), v5=True)
    await spy.subscribe(("users/bob/#", 1), ("news/#", 1), ("$SYS/fake", 0))
    c = await paho(clients, port, "acl-p", token=node.token("alice", publish=["home/#"]),
                   v5=v5)
    expect = 0x87 if v5 else 0
    for topic in ("users/bob/x", "news/x", "$SYS/fake", "users/alice/notifications",
                  "users/alice/unread"):
        assert await c.publish(topic, b"no", 1) == expect, topic
    assert await c.publish("home/x", b"yes", 1) == 0
    await spy.no_message()


async def test_grants_cannot_be_widened(node: Node, clients: list[Any]) -> None:
    """A token's grants are covers, not overlaps: ``+``, ``#`` and ``$`` reach nothing
    beyond them."""
    token = node.token("alice", subscribe=["home/kitchen/#"], publish=["home/kitchen/+"])
    c = await paho(clients, node.app.mqtt_port, "grant", token=token, v5=True)
    codes = await c.subscribe(("home/kitchen/temp", 1), ("home/kitchen/#", 1), ("#", 1),
                              ("home/#", 1), ("+/kitchen/temp", 1), ("home/+/temp", 1),
                              ("$SYS/#", 0), ("$share/g/home/kitchen/temp", 1),
                              ("$share/g/#", 1))
    assert codes == [1, 1, 0x87, 0x87, 0x87, 0x87, 0x87, 1, 0x87]
    assert await c.publish("home/kitchen/temp", b"1", 1) == 0
    assert await c.publish("home/kitchen/temp/raw", b"1", 1) == 0x87
    assert await c.publish("home/hall", b"1", 1) == 0x87


async def test_acl_rules_from_toml(tmp_path: Path, clients: list[Any]) -> None:
    """``[[acl]]`` rules read from a config file: first match decides, ``{uid}`` is the
    user, a deny cannot be reached around with a wider filter (``#`` is granted, and
    screened: it is not handed what the deny covers)."""
    path = tmp_path / "acl.toml"
    path.write_text('''
[[acl]]
filter = "secret/#"
users = ["*"]
subscribe = false
publish = false

[[acl]]
filter = "sensors/{uid}/#"
users = ["*"]
publish = true

[[acl]]
filter = "board/#"
users = ["alice"]
publish = true
''')
    from tidings import config
    loaded = config.load(path, {})
    settings = make_settings(tmp_path)
    settings.acl = loaded.acl
    n = await start_with(settings)
    try:
        port = n.app.mqtt_port
        alice = await paho(clients, port, "toml-a", token=n.token("alice"), v5=True)
        bob = await paho(clients, port, "toml-b", token=n.token("bob"), v5=True)
        assert await alice.subscribe(("secret/x", 1), ("#", 1), ("secret/+", 1),
                                     ("sensors/#", 1)) == [0x87, 1, 0x87, 1]
        assert await bob.publish("sensors/bob/t", b"b", 1) == 0
        assert await bob.publish("sensors/alice/t", b"b", 1) == 0x87
        assert await bob.publish("board/x", b"b", 1) == 0x87
        assert await alice.publish("board/x", b"a", 1) == 0
        assert await alice.publish("secret/x", b"a", 1) == 0x87
        await n.publish("secret/x", "from the backend")  # stored, but screened from '#'
        got = [(m.topic, m.payload) for m in [await alice.message(), await alice.message()]]
        assert got == [("sensors/bob/t", b"b"), ("board/x", b"a")]
        await alice.no_message()
    finally:
        for c in clients:
            await asyncio.to_thread(c.close)
        clients.clear()
        await stop_node(n)


# --- one topic space with WebSocket and HTTP ----------------------------------------------

async def test_mqtt_to_websocket_with_offsets_history_and_payloads(
        node: Node, clients: list[Any]) -> None:
    """A sensor's MQTT publications reach a browser subscribed over WS, with offsets, and
    stay in history for recovery. Payloads: a JSON value as itself, other UTF-8 text as
    ``data``, other bytes as ``data_b64`` (raw bytes over msgpack)."""
    browser = await node.client("alice")
    packed = await node.client("alice", encoding="msgpack")
    assert (await browser.request("subscribe", topic="home/+/temp"))["ok"]
    assert (await packed.request("subscribe", topic="home/+/temp"))["ok"]
    sensor = await paho(clients, node.app.mqtt_port, "sensor",
                        token=node.token("alice", publish=["home/#"]))
    payloads = [b'{"t": 21.5, "unit": "C"}', b"21.5", b"warm-ish", b"\xff\x00\x01"]
    for p in payloads:
        assert await sensor.publish("home/kitchen/temp", p, 1) == 0
    pushes = [await browser.push() for _ in payloads]
    assert all(m["type"] == "message" and m["topic"] == "home/kitchen/temp" for m in pushes)
    assert pushes[0]["data"] == {"t": 21.5, "unit": "C"}
    assert pushes[1]["data"] == 21.5
    assert pushes[2]["data"] == "warm-ish"
    assert "data" not in pushes[3] and base64.b64decode(pushes[3]["data_b64"]) == payloads[3]
    offsets = [m["offset"] for m in pushes]
    assert len(set(offsets)) == 4
    binary = [await packed.push() for _ in payloads][3]
    assert binary["data"] == payloads[3]

    late = await node.client("alice")
    reply = await late.request("subscribe", topic="home/kitchen/temp", since=offsets[0])
    assert reply["ok"] and reply["complete"], reply
    recovered = reply["recovered"]
    assert [m["offset"] for m in recovered] == offsets[1:]
    assert [m.get("data") for m in recovered[:2]] == [21.5, "warm-ish"]
    assert recovered[2]["data_b64"] == pushes[3]["data_b64"]
    status, page = await node.api("GET", "/v1/topics/home/kitchen/temp/history")
    assert status == 200, page
    assert [m["offset"] for m in page["items"]] == offsets


async def test_websocket_and_http_to_mqtt(node: Node, clients: list[Any]) -> None:
    """WS and HTTP publications reach MQTT subscribers as JSON bytes; a retained one is
    sent to a later MQTT subscriber with RETAIN=1, and an MQTT retained one to a WS
    subscriber as ``retained: true``."""
    port = node.app.mqtt_port
    dev = await paho(clients, port, "wsdev", token=node.token("alice"), v5=True)
    await dev.subscribe(("lights/#", 1))
    tab = await node.client("alice", **{})
    tab_pub = await node.client(token=node.token("alice", publish=["lights/#"]))
    reply = await tab_pub.request("publish", topic="lights/hall", data={"on": True})
    assert reply["ok"], reply
    await node.publish("lights/porch", "dim", retain=True)
    got = [(m.topic, orjson.loads(m.payload)) for m in [await dev.message(), await dev.message()]]
    assert got == [("lights/hall", {"on": True}), ("lights/porch", "dim")]
    later = await paho(clients, port, "wsdev2", token=node.token("alice"))
    await later.subscribe(("lights/porch", 0))
    m = await later.message()
    assert (m.payload, m.retain) == (b'"dim"', True)

    pub = await paho(clients, port, "wspub", token=pub_token(node))
    await pub.publish("lamp/state", b"on", 1, retain=True)
    reply = await tab.request("subscribe", topic="lamp/state")
    assert reply["ok"]
    m2 = await tab.push()
    assert (m2["topic"], m2["data"], m2["retained"]) == ("lamp/state", "on", True)


async def test_notifications_and_unread_sync_between_device_and_tab(
        node: Node, clients: list[Any]) -> None:
    """One user, an MQTT device and a WS tab: a notification reaches the device at QoS 1
    with the unread count retained; the device's ``users/{uid}/read`` is applied (the
    tab sees the read) and never forwarded raw; the tab's read reaches the device on
    ``users/{uid}/events`` and ``users/{uid}/unread``."""
    port = node.app.mqtt_port
    tab = await node.client("alice", device="tab")
    dev = await paho(clients, port, "kitchen", token=node.token("alice"), v5=True)
    spy = await paho(clients, port, "spy", token=node.token("alice"))
    assert await spy.subscribe(("users/alice/#", 1)) == [1]
    assert await dev.subscribe(("users/alice/notifications", 1), ("users/alice/unread", 1),
                               ("users/alice/events", 1)) == [1, 1, 1]
    ids = []
    for title in ("one", "two"):
        status, body = await node.api("POST", "/v1/notify", {"users": ["alice"],
                                                              "title": title})
        assert status == 200, body
        ids.append(body["id"])
    by_topic: dict[str, list[Any]] = {}
    for _ in range(4):
        m = await dev.message()
        by_topic.setdefault(m.topic, []).append((m.qos, orjson.loads(m.payload)))
    notes = by_topic["users/alice/notifications"]
    assert [(q, n["id"], n["title"]) for q, n in notes] == [(1, ids[0], "one"),
                                                            (1, ids[1], "two")]
    tab_notes = [await tab.push() for _ in range(2)]
    assert [n for _, n in notes] == tab_notes  # the same fields as the WS push
    assert [c for _, c in by_topic["users/alice/unread"]] == [{"count": 1}, {"count": 2}]

    assert await dev.publish("users/alice/read", orjson.dumps({"ids": [ids[0]]}), 1) == 0
    ev = await tab.push()
    assert (ev["type"], ev["ids"], ev["unread"], ev["device"]) == ("read", [ids[0]], 1,
                                                                   "kitchen")
    got = {m.topic: orjson.loads(m.payload) for m in [await dev.message(), await dev.message()]}
    assert got["users/alice/unread"] == {"count": 1}
    assert got["users/alice/events"]["type"] == "read"
    assert got["users/alice/events"]["ids"] == [ids[0]]

    reply = await tab.request("read", ids=[ids[1]])
    assert reply["ok"] and reply["unread"] == 0
    got = {m.topic: orjson.loads(m.payload) for m in [await dev.message(), await dev.message()]}
    assert got["users/alice/unread"] == {"count": 0}
    assert (got["users/alice/events"]["ids"], got["users/alice/events"]["device"]) == (
        [ids[1]], "tab")
    await dev.no_message()

    seen = [m.topic for m in [await spy.message() for _ in range(8)]]
    assert "users/alice/read" not in seen
    await spy.no_message()
    assert await dev.publish("users/alice/read", b"not json", 1) == 0  # ignored, harmless
    fresh = await paho(clients, port, "kitchen-2", token=node.token("alice"))
    await fresh.subscribe(("users/alice/unread", 1))
    m = await fresh.message()
    assert (orjson.loads(m.payload), m.retain) == ({"count": 0}, True)
    status, body = await node.api("GET", "/v1/users/alice/unread")
    assert status == 200 and body["unread"] == 0


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_over_websocket(node: Node, clients: list[Any], v5: bool) -> None:
    """MQTT over WebSocket at ``/mqtt`` (subprotocol ``mqtt``) is the same broker: a
    browser-style MQTT client and a TCP client exchange messages both ways."""
    ws = await paho(clients, node.app.ws_port, "over-ws", token=pub_token(node), v5=v5,
                    transport="websockets")
    tcp = await paho(clients, node.app.mqtt_port, "over-tcp", token=pub_token(node), v5=v5)
    assert await ws.subscribe(("bridge/#", 2)) == [2]
    assert await tcp.subscribe(("bridge/#", 1)) == [1]
    big = node.settings.limits.max_message_size  # the largest: a frame over 64 KiB
    await tcp.publish("bridge/from-tcp", b"a" * big, 1)
    m = await ws.message()
    assert (m.topic, len(m.payload), m.qos) == ("bridge/from-tcp", big, 1)
    assert (await tcp.message()).topic == "bridge/from-tcp"
    assert await ws.publish("bridge/from-ws", b"b", 2) == 0
    assert [(await c.message()).payload for c in (tcp, ws)] == [b"b", b"b"]
    await node.publish("bridge/from-http", 1)
    assert (await ws.message()).payload == b"1"


async def test_mqtt_over_websocket_rejects_text_frames(node: Node, clients: list[Any]) -> None:
    """[MQTT-6.0.0-1]: MQTT travels in binary frames; a text frame ends the connection."""
    import websockets

    url = f"ws://127.0.0.1:{node.app.ws_port}/mqtt"
    async with websockets.connect(url, subprotocols=["mqtt"],  # type: ignore[list-item]
                                  open_timeout=WAIT) as conn:
        assert conn.subprotocol == "mqtt"
        await conn.send(connect_packet("txt", username="d", password=node.token("alice")))
        assert (await asyncio.wait_for(conn.recv(), WAIT))[:2] == b"\x20\x02"
        await conn.send("\x10\x00")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(conn.recv(), WAIT)


# --- bad input ---------------------------------------------------------------------------

_HUGE = bytes.fromhex("ffffff7f")  # Remaining Length 268,435,455
# (case, 5.0?, send CONNECT first?, bytes, what comes back before the close)
BAD_INPUT: list[tuple[str, bool, bool, bytes, list[tuple[int, int]]]] = [
    ("first packet PINGREQ [MQTT-3.1.0-1]", False, False, b"\xc0\x00", []),
    ("first packet SUBSCRIBE [MQTT-3.1.0-1]", False, False,
     subscribe_packet(1, ("a", 0)), []),
    ("first packet PUBLISH, huge length", False, False, b"\x30" + _HUGE, []),
    ("CONNECT, huge length (before the version is known)", False, False,
     b"\x10" + _HUGE, []),
    ("3.1.1 CONNECT reserved flag [MQTT-3.1.2-3]", False, False,
     bytes.fromhex("100f 0004 4d515454 04 03 003c 0003 626164"), []),
    ("5.0 CONNECT reserved flag [MQTT-3.1.2-3]", True, False,
     bytes.fromhex("1010 0004 4d515454 05 03 003c 00 0003 626164"), [(CONNACK, 0x81)]),
    ("protocol level 6 [MQTT-3.1.2-2]", False, False,
     bytes.fromhex("100f 0004 4d515454 06 02 003c 0003 626164"), [(CONNACK, 0x01)]),
    ("5.0 CONNECT with U+0000 in the client id [MQTT-1.5.4-2]", True, False,
     bytes.fromhex("1010 0004 4d515454 05 02 003c 00 0003 620064"), [(CONNACK, 0x81)]),
]
for _v5 in (False, True):
    _name = "5.0" if _v5 else "3.1.1"
    _props = b"\x00" if _v5 else b""

    def _after(code: int, v5: bool = _v5) -> list[tuple[int, int]]:
        return [(DISCONNECT, code)] if v5 else []

    BAD_INPUT += [
        (f"{_name} PUBLISH QoS 3 [MQTT-3.3.1-4]", _v5, True,
         frame(0x36, b"\x00\x01a\x00\x01" + _props + b"x"), _after(0x81)),
        (f"{_name} remaining length in 5 bytes [MQTT-1.5.5]", _v5, True,
         b"\x30\xff\xff\xff\xff\x01", _after(0x81)),
        (f"{_name} huge remaining length over max_packet_size", _v5, True,
         b"\x30" + _HUGE, _after(0x95)),
        (f"{_name} invalid UTF-8 in a topic [MQTT-1.5.4-1]", _v5, True,
         frame(0x30, b"\x00\x03a/\xff" + _props + b"x"), _after(0x81)),
        (f"{_name} U+0000 in a topic [MQTT-1.5.4-2]", _v5, True,
         frame(0x30, b"\x00\x03a\x00b" + _props + b"x"), _after(0x81)),
        (f"{_name} invalid UTF-8 in a filter [MQTT-1.5.4-1]", _v5, True,
         frame(0x82, b"\x00\x01" + _props + b"\x00\x02\xc3\x28\x00"), _after(0x81)),
        (f"{_name} SUBSCRIBE with reserved flags 0 [MQTT-3.8.1-1]", _v5, True,
         frame(0x80, b"\x00\x01" + _props + b"\x00\x01a\x00"), _after(0x81)),
        (f"{_name} second CONNECT [MQTT-3.1.0-2]", _v5, True,
         connect_packet("again", v5=_v5), _after(0x82)),
        (f"{_name} packet type 0 (reserved)", _v5, True, b"\x00\x00", _after(0x81)),
    ]


@pytest.fixture
async def hardened(make_node: NodeMaker) -> Node:
    return await make_node(mqtt__max_packet_size=1024, limits__max_message_size=512)


@pytest.mark.parametrize("case,v5,connect_first,data,expect", BAD_INPUT,
                         ids=[c[0] for c in BAD_INPUT])
async def test_bad_input(hardened: Node, clients: list[Any], case: str, v5: bool,
                         connect_first: bool, data: bytes,
                         expect: list[tuple[int, int]]) -> None:
    """Each kind of bad input gets the reason code the spec gives (5.0) or a plain close,
    never a buffer beyond the maximum packet size; another client keeps receiving."""
    n = hardened
    port = n.app.mqtt_port
    watcher = await paho(clients, port, "bystander", token=n.token("alice"), v5=True)
    await watcher.subscribe(("still/#", 1))
    r = await Raw.open(port, v5=v5)
    clients.append(r)
    if connect_first:
        await r.send(connect_packet("bad", v5=v5, username="d", password=n.token("alice")))
        assert (await r.recv()).reason == 0
    before = await metric(n, "tidings_errors_total", code="mqtt_protocol")
    await r.send(data)
    got = [(p.type, p.reason) for p in await r.closed()]
    assert got == expect
    await n.publish("still/here", case)
    assert orjson.loads((await watcher.message()).payload) == case

    async def counted() -> bool:
        return await metric(n, "tidings_errors_total", code="mqtt_protocol") == before + 1

    await wait_until(counted, what="the protocol error counted")


async def test_no_connect_in_time(make_node: NodeMaker, clients: list[Any]) -> None:
    """A connection that sends no CONNECT within ``ws.connect_timeout`` is closed."""
    n = await make_node(ws__connect_timeout=0.5)
    r = await Raw.open(n.app.mqtt_port)
    clients.append(r)
    await r.send(b"\x10")  # half a fixed header, then nothing
    assert await r.closed() == []


# --- config/open-broker.toml ----------------------------------------------------------------

def test_open_broker_config_loads() -> None:
    """The shipped file loads and says what it promises: anonymous, every interface for
    MQTT, the deny rule first, then '#' for everyone."""
    s = config.load(OPEN_BROKER, {})
    assert s.auth.allow_anonymous and s.mqtt.host == "0.0.0.0" and s.mqtt.port == 1883
    assert [(r.filter, r.users, r.subscribe, r.publish) for r in s.acl] == [
        ("test/nosubscribe", ["anonymous", "*"], False, None),
        ("#", ["anonymous", "*"], True, True)]


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_open_broker(open_broker: Node, clients: list[Any], v5: bool) -> None:
    """Anonymous clients publish and subscribe anywhere outside ``users/`` and ``$``;
    ``test/nosubscribe`` itself cannot be subscribed, and filters overlapping it are
    granted without its messages; a token holder still has its own ``users/{uid}/...``."""
    n = open_broker
    port = n.app.mqtt_port
    denied = 0x87 if v5 else 0x80
    sensor = await paho(clients, port, "sensor", v5=v5)
    board = await paho(clients, port, "board", v5=v5)
    assert await board.subscribe(("home/#", 1), ("garden/+/humidity", 1)) == [1, 1]
    stats = await paho(clients, port, "stats", v5=v5)
    assert await stats.subscribe(("$SYS/broker/#", 0)) == [0]
    assert await board.subscribe(("test/nosubscribe", 1), ("users/x", 1),
                                 ("users/+/x", 1)) == [denied] * 3
    watch = await paho(clients, port, "watch", v5=v5)
    assert await watch.subscribe(("#", 1), ("test/#", 1)) == [1, 1]
    assert await sensor.publish("home/kitchen/temp", b"21.5", 1) == 0
    assert await sensor.publish("garden/bed-1/humidity", b"40", 1) == 0
    assert await sensor.publish("test/nosubscribe", b"allowed", 1) == 0
    expect_refused = 0x87 if v5 else 0
    assert await sensor.publish("users/x/notifications", b"no", 1) == expect_refused
    assert await sensor.publish("users/x/stuff", b"no", 1) == expect_refused
    assert await sensor.publish("$SYS/broker/version", b"no", 1) == expect_refused
    got = [(m.topic, m.payload) for m in [await board.message(), await board.message()]]
    assert got == [("home/kitchen/temp", b"21.5"), ("garden/bed-1/humidity", b"40")]
    await board.no_message()
    got = [(m.topic, m.payload) for m in [await watch.message(), await watch.message()]]
    assert got == [("home/kitchen/temp", b"21.5"), ("garden/bed-1/humidity", b"40")]
    await watch.no_message()  # not test/nosubscribe, nor users/x/... (refused anyway)
    alice = await paho(clients, port, "alice-dev", token=n.token("alice"), v5=v5)
    assert await alice.subscribe(("users/alice/notifications", 1), ("home/#", 0)) == [1, 0]
