"""MQTT 5.0 completeness: what the broker keeps, announces and answers beyond the basics.

- a message's properties (User Properties, Content Type, Payload Format
  Indicator, Response Topic, Correlation Data, Message Expiry) kept unaltered on
  retained messages and on messages queued for an offline session, across a
  restart, on SQLite and on Redis; the expiry counting down while kept;
- Server Keep Alive whenever the server's keep-alive differs from the client's;
- enhanced authentication refused with 0x8C (no method is configured);
- Response Information for a client that asks;
- server-to-client Topic Aliases, an LRU over the client's Topic Alias Maximum.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Node, start_node
from support.mqtt import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    SERVER_KEEP_ALIVE,
    SUBACK,
    TOPIC_ALIAS,
    Paho,
    Raw,
    ack_packet,
    broker,
    clients,
    connect_packet,
    make_node,
    offline,
    open_broker,
    paho,
    prop,
    props,
    pub_token,
    raw,
    stop_all,
    subscribe_packet,
    u16,
    utf8,
    wait_until,
)
from tidings.edges.mqtt.session import retained_template
from tidings.protocol.mqtt import Properties
from tidings.types import Offset, PayloadKind, Publication

pytest_plugins = ["support.redis_servers"]
_FIXTURES = (clients, make_node, open_broker)  # fixtures used by name
TOPIC_ALIAS_MAXIMUM = 0x22

# Every property of a message a subscriber must get unaltered (5.0 section 3.3.2.3):
# [MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-15] Response Topic,
# [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17], [MQTT-3.3.2-18] User
# Properties (in order, repeats kept), [MQTT-3.3.2-20] Content Type.
PROPS: dict[str, Any] = {
    "UserProperty": [("room", "hall"), ("room", "porch"), ("by", "test")],
    "ContentType": "text/plain; charset=utf-8", "ResponseTopic": "answers/light",
    "CorrelationData": b"\x00\x01\xfe", "PayloadFormatIndicator": 1,
}
_NAMES = tuple(PROPS)


def _same_properties(m: Any) -> bool:
    return {k: prop(m, k) for k in _NAMES} == PROPS


def _expiry(m: Any) -> int:
    value: int = prop(m, "MessageExpiryInterval")
    return value


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Node settings for each store: SQLite in the test's folder, or Redis."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("redis_server")
    server.flushall()
    return {"store__backend": "redis", "redis__url": server.url}


# --- properties kept ------------------------------------------------------------------

async def test_retained_message_keeps_its_properties_across_a_restart(
        tmp_path: Path, clients: list[Any], backend: dict[str, Any]) -> None:
    """A retained message is delivered with every property it was published with,
    unaltered, also after a restart (the store keeps them), and with what is left
    of its Message Expiry Interval [MQTT-3.3.2-6]."""
    n = await start_node(tmp_path, **backend)
    try:
        pub = await paho(clients, n.app.mqtt_port, "r-pub", token=pub_token(n), v5=True)
        assert await pub.publish("lamp/state", b"on", 1, retain=True,
                                 props={**PROPS, "MessageExpiryInterval": 600}) == 0
        first = await paho(clients, n.app.mqtt_port, "r-sub1", token=pub_token(n), v5=True)
        await first.subscribe(("lamp/#", 1))
        m = await first.message()
        assert (m.topic, m.payload, m.retain) == ("lamp/state", b"on", True)
        assert _same_properties(m) and 0 < _expiry(m) <= 600
    finally:
        await stop_all(n, clients)
    n = await start_node(tmp_path, **backend)
    try:
        again = await paho(clients, n.app.mqtt_port, "r-sub2", token=pub_token(n), v5=True)
        await again.subscribe(("lamp/state", 1))
        m = await again.message()
        assert (m.payload, m.retain) == (b"on", True)
        assert _same_properties(m) and 0 < _expiry(m) <= 600
        old = await paho(clients, n.app.mqtt_port, "r-311", token=pub_token(n))
        await old.subscribe(("lamp/state", 1))
        assert (await old.message()).payload == b"on"  # 3.1.1: the message, no properties
    finally:
        await stop_all(n, clients)


async def test_queued_message_keeps_its_properties_across_a_restart(
        tmp_path: Path, clients: list[Any], backend: dict[str, Any]) -> None:
    """A message queued for an offline session keeps its properties, through the
    store and a restart; its expiry is lowered by the time it waited [MQTT-3.3.2-6]."""
    keep = {"SessionExpiryInterval": 300}
    n = await start_node(tmp_path, **backend)
    try:
        sub = await paho(clients, n.app.mqtt_port, "q-sub", token=pub_token(n), v5=True,
                         clean=False, connect_props=keep)
        await sub.subscribe(("queue/#", 1))
        await asyncio.to_thread(sub.close)
        await offline(n, "q-sub")
        pub = await paho(clients, n.app.mqtt_port, "q-pub", token=pub_token(n), v5=True)
        assert await pub.publish("queue/job", b"work", 1,
                                 props={**PROPS, "MessageExpiryInterval": 600}) == 0
    finally:
        await stop_all(n, clients)
    n = await start_node(tmp_path, **backend)
    try:
        back = Paho(n.app.mqtt_port, "q-sub", token=pub_token(n), v5=True, clean=False,
                    connect_props=keep)
        clients.append(back)
        assert (await back.connack()).session_present
        m = await back.message()
        assert (m.topic, m.payload, m.qos) == ("queue/job", b"work", 1)
        assert _same_properties(m) and 0 < _expiry(m) <= 600
    finally:
        await stop_all(n, clients)


async def test_an_expired_retained_message_is_not_delivered(node: Node,
                                                            clients: list[Any]) -> None:
    """Past its Message Expiry Interval a retained message is no longer sent to new
    subscribers [MQTT-3.3.2-5]; before, they get what is left of it [MQTT-3.3.2-6]."""
    pub = await paho(clients, node.app.mqtt_port, "e-pub", token=pub_token(node), v5=True)
    sent = time.time()
    await pub.publish("short/lived", b"soon gone", 1, retain=True,
                      props={"MessageExpiryInterval": 1})
    await pub.publish("long/lived", b"stays", 1, retain=True)
    early = await paho(clients, node.app.mqtt_port, "e-early", token=pub_token(node), v5=True)
    await early.subscribe(("short/lived", 1))
    m = await early.message()
    assert m.payload == b"soon gone" and _expiry(m) == 1
    await wait_until(lambda: time.time() > sent + 1.5, what="the expiry to pass")
    late = await paho(clients, node.app.mqtt_port, "e-late", token=pub_token(node), v5=True)
    await late.subscribe(("short/lived", 1), ("long/lived", 1))
    assert (await late.message()).payload == b"stays"
    await late.no_message()


def test_retained_expiry_counts_down_on_the_clock() -> None:
    """What a retained message is sent with at a given moment: the properties as
    published, the expiry lowered by whole seconds kept (rounded up), none once run
    out [MQTT-3.3.2-5], [MQTT-3.3.2-6]; a message without expiry never runs out."""
    meta = Properties(message_expiry_interval=10, content_type="c",
                      user_properties=(("k", "v"),))
    pub = Publication("t", Offset("e:1"), b"x", PayloadKind.TEXT, 1_000_000, retained=True,
                      meta=meta)

    def expiry(now_ms: int) -> int | None:
        t = retained_template(pub, now_ms)
        return None if t is None else t.properties.message_expiry_interval

    assert [expiry(1_000_000 + ms) for ms in (0, 1, 999, 1000, 9001, 9999, 10_000)] == [
        10, 10, 10, 9, 1, 1, None]
    t = retained_template(pub, 1_004_000)
    assert t is not None and (t.properties.content_type, t.properties.user_properties) == (
        "c", (("k", "v"),))
    plain = Publication("t", Offset("e:1"), b"x", PayloadKind.TEXT, 0, retained=True)
    kept = retained_template(plain, 10**13)
    assert kept is not None and kept.properties.message_expiry_interval is None


# --- CONNACK: Server Keep Alive, Response Information -------------------------------------

@pytest.mark.parametrize(("asked", "sent"), [(120, 60), (60, None), (30, None), (0, 60)])
async def test_server_keep_alive_whenever_it_differs(make_node: Any, clients: list[Any],
                                                     asked: int, sent: int | None) -> None:
    """Server Keep Alive is in the CONNACK whenever the server's keep-alive differs from
    the one the client asked: lowered by ``mqtt.max_keepalive``, or enforced on a
    client that asked for none (0); the client must use it [MQTT-3.2.2-21]. The
    client's own stands otherwise, and no Server Keep Alive is sent."""
    n = await make_node(mqtt__max_keepalive=60)
    r, ack = await Raw.connect(n.app.mqtt_port, f"ka-{asked}", v5=True, keepalive=asked,
                               username="d", password=pub_token(n))
    clients.append(r)
    assert ack.properties().get(SERVER_KEEP_ALIVE) == (None if sent is None else [sent])


async def test_open_broker_announces_its_keep_alive(open_broker: Node,
                                                    clients: list[Any]) -> None:
    """The shipped open broker holds devices to a minute: a paho 5.0 client asking
    for two is told, and adopts it [MQTT-3.2.2-21]."""
    r, ack = await Raw.connect(open_broker.app.mqtt_port, "keen-raw", v5=True, keepalive=120)
    clients.append(r)
    assert ack.properties()[SERVER_KEEP_ALIVE] == [60]
    p = await paho(clients, open_broker.app.mqtt_port, "keen", v5=True, keepalive=120)
    assert p.c._keepalive == 60


@pytest.mark.parametrize("asked", [1, 0, None])
async def test_response_information_when_asked(node: Node, clients: list[Any],
                                               asked: int | None) -> None:
    """Request Response Information 1 gets Response Information, the user's own
    prefix (``mqtt.response_information``); 0 or absent gets none [MQTT-3.1.2-28]."""
    ask = {} if asked is None else {"RequestResponseInformation": asked}
    p = Paho(node.app.mqtt_port, f"rr-{asked}", token=node.token("alice"), v5=True,
             connect_props=ask)
    clients.append(p)
    ack = await p.connack()
    info = getattr(ack.properties, "ResponseInformation", None)
    assert info == ("users/alice/responses/" if asked == 1 else None)


async def test_response_information_round_trip_on_the_open_broker(
        open_broker: Node, clients: list[Any]) -> None:
    """An anonymous requester gets ``responses/{client_id}/`` and can take answers
    there: it subscribes under it, a responder publishes to the Response Topic
    with the Correlation Data, and the answer comes back (5.0 section 4.10)."""
    port = open_broker.app.mqtt_port
    asker = Paho(port, "asker", v5=True, connect_props={"RequestResponseInformation": 1})
    clients.append(asker)
    prefix = getattr((await asker.connack()).properties, "ResponseInformation", None)
    assert prefix == "responses/asker/"
    assert await asker.subscribe((prefix + "#", 1)) == [1]
    responder = await paho(clients, port, "responder", v5=True)
    await responder.subscribe(("service/time", 1))
    await asker.publish("service/time", b"?", 1,
                        props={"ResponseTopic": prefix + "time", "CorrelationData": b"q1"})
    request = await responder.message()
    await responder.publish(prop(request, "ResponseTopic"), b"noon", 1,
                            props={"CorrelationData": prop(request, "CorrelationData")})
    answer = await asker.message()
    assert (answer.topic, answer.payload, prop(answer, "CorrelationData")) == (
        "responses/asker/time", b"noon", b"q1")


# --- enhanced authentication --------------------------------------------------------------

async def test_auth_packet_gets_bad_authentication_method(node: Node,
                                                          clients: list[Any]) -> None:
    """No authentication method is configured, so none was agreed at CONNECT: an AUTH
    packet is answered with DISCONNECT 0x8C and the connection closed [MQTT-4.12.0-5]
    (section 2.4 gives 0x8C to DISCONNECT)."""
    r, _ = await Raw.connect(node.app.mqtt_port, "auth", v5=True, username="d",
                             password=pub_token(node))
    clients.append(r)
    await r.send(b"\xf0\x00")  # AUTH, reason 0x00 (short form, section 3.15.2.1)
    got, reset = await r.ending()
    assert [(p.type, p.reason) for p in got] == [(DISCONNECT, 0x8C)] and not reset


async def test_connect_with_an_authentication_method_is_refused(node: Node,
                                                                clients: list[Any]) -> None:
    """A CONNECT that asks for enhanced authentication gets CONNACK 0x8C (Bad
    authentication method) and the connection is closed [MQTT-4.12.0-1]; paho reads it."""
    r = await Raw.open(node.app.mqtt_port, v5=True)
    clients.append(r)
    method = props(b"\x15" + utf8("SCRAM-SHA-256"), b"\x16" + utf8(b"\x01first"))
    await r.send(connect_packet("scram", v5=True, username="d", password=pub_token(node),
                                properties=method))
    got, reset = await r.ending()
    assert [(p.type, p.reason) for p in got] == [(CONNACK, 0x8C)] and not reset
    await paho(clients, node.app.mqtt_port, "scram-paho", token=pub_token(node), v5=True,
               connect_props={"AuthenticationMethod": "SCRAM-SHA-256"}, expect=0x8C)
    assert "scram" not in broker(node).sessions and "scram-paho" not in broker(node).sessions



# --- server-to-client topic aliases --------------------------------------------------------

async def test_topic_aliases_towards_a_client_that_allows_them(make_node: Any,
                                                               clients: list[Any]) -> None:
    """A client whose CONNECT has Topic Alias Maximum 2 gets a topic's first message
    with the topic and an alias, the next ones with an empty topic and the alias;
    a third topic takes the alias of the one sent least recently (re-mapped by
    sending it with its topic). Never an alias over its maximum [MQTT-3.3.2-11]."""
    n = await make_node(mqtt__topic_aliases=8)
    r, _ = await Raw.connect(n.app.mqtt_port, "aliased", v5=True, username="d",
                             password=pub_token(n), properties=props(u16(TOPIC_ALIAS_MAXIMUM, 2)))
    clients.append(r)
    await r.send(subscribe_packet(1, ("al/#", 0), v5=True))
    assert (await r.recv()).type == SUBACK
    for topic in ("al/one", "al/two", "al/one", "al/three", "al/two", "al/one"):
        await n.publish(topic, 1)
    got = []
    for _ in range(6):
        topic, _payload, _qos, _retain, _pid, properties, _dup = (await r.recv_publish()).publish()
        got.append((topic, properties.get(TOPIC_ALIAS)))
    assert got == [("al/one", [1]), ("al/two", [2]), ("", [1]), ("al/three", [2]),
                   ("al/two", [1]), ("al/one", [2])]


async def test_topic_aliases_only_when_allowed(node: Node, clients: list[Any]) -> None:
    """No Topic Alias to a client that set no Topic Alias Maximum [MQTT-3.1.2-27]; a
    paho client that allows them reads every message under its full topic."""
    plain = await raw(clients, node.app.mqtt_port, "no-alias", v5=True, username="d",
                      password=pub_token(node))
    await plain.send(subscribe_packet(1, ("pa/#", 1), v5=True))
    await plain.recv()
    p = await paho(clients, node.app.mqtt_port, "paho-alias", token=pub_token(node), v5=True,
                   connect_props={"TopicAliasMaximum": 3})
    await p.subscribe(("pa/#", 1))
    topics = [f"pa/{i % 5}" for i in range(12)]
    for t in topics:
        await node.publish(t, 1)
    assert [(await p.message()).topic for _ in topics] == topics
    for t in topics:
        m = await plain.recv_publish()
        await plain.send(ack_packet(PUBACK, m.pid))
        assert m.publish()[0] == t and TOPIC_ALIAS not in m.publish()[5]
