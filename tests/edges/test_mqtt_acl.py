"""ACL by delivery on the MQTT edge, with ``config/open-broker.toml`` as shipped
(its deny rule on ``test/nosubscribe``) and real paho clients in 3.1.1 and 5.0.

A wildcard that reaches into the deny (``#``, ``+/+``, ``test/#``) is granted and
gets every message but those on ``test/nosubscribe``: live, retained, queued for
an offline session, or through a shared subscription. The denied filter itself is
refused in its SUBACK slot (3.1.1 0x80, 5.0 0x87 Not authorized). What the ACL
kept from a subscriber is counted in ``tidings_acl_denied_messages_total``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conftest import JWT_SECRET, Node, make_settings, start_with, stop_node
from support.mqtt import (
    OPEN_BROKER,
    Paho,
    broker,
    clients,
    metric,
    open_broker,
    paho,
    wait_until,
)
from tidings import config

_FIXTURES = (clients, open_broker)  # fixtures from support.mqtt
V5 = pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
DENIED = "test/nosubscribe"


async def received(c: Paho, n: int) -> list[tuple[str, bytes, bool]]:
    """The next ``n`` messages as (topic, payload, retain)."""
    return [(m.topic, bytes(m.payload), bool(m.retain)) for m in
            [await c.message() for _ in range(n)]]


async def offline(node: Node, client_id: str) -> None:
    def gone() -> bool:
        s = broker(node).sessions.get(client_id)
        return s is not None and s.conn is None

    await wait_until(gone, what=f"{client_id} offline")


@V5
async def test_wildcards_reaching_into_the_deny_are_granted_and_screened(
        open_broker: Node, clients: list[Any], v5: bool) -> None:
    """``#``, ``+/+`` and ``test/#`` are granted (a SUBACK code per filter, in order,
    showing the granted QoS [MQTT-3.8.4-6] [MQTT-3.8.4-7] [MQTT-3.9.3-1]) and each
    gets what its filter matches [MQTT-3.3.2-3] except ``test/nosubscribe``;
    ``test/nosubscribe`` itself is refused with 0x80 / 0x87, the filters beside
    it in the same SUBSCRIBE granted [MQTT-3.8.4-5]."""
    n = open_broker
    port = n.app.mqtt_port
    refused = 0x87 if v5 else 0x80
    subs = {}
    for flt in ("#", "+/+", "test/#"):
        subs[flt] = await paho(clients, port, f"sub-{flt}", v5=v5)
        assert await subs[flt].subscribe((flt, 1)) == [1]
    exact = await paho(clients, port, "exact", v5=v5)
    assert await exact.subscribe(("home/x", 1), (DENIED, 1), ("test/ok", 0)) == [1, refused, 0]
    sensor = await paho(clients, port, "sensor", v5=v5)
    for topic in ("test/ok", DENIED, "home/x", "a/b/c", DENIED):
        assert await sensor.publish(topic, topic.encode(), 1) == 0  # publishing is allowed
    ok, home, abc = ((t, t.encode(), False) for t in ("test/ok", "home/x", "a/b/c"))
    assert await received(subs["#"], 3) == [ok, home, abc]
    assert await received(subs["+/+"], 2) == [ok, home]
    assert await received(subs["test/#"], 1) == [ok]
    assert sorted(await received(exact, 2)) == [home, ok]
    for c in (*subs.values(), exact):
        await c.no_message()
    # each of the three wildcard subscribers was kept from the two denied messages
    assert await metric(n, "tidings_acl_denied_messages_total", edge="mqtt") == 6


@V5
async def test_no_retained_message_on_the_denied_topic(open_broker: Node, clients: list[Any],
                                                       v5: bool) -> None:
    """The retained messages sent for a new ``#`` or ``test/#`` subscription
    [MQTT-3.3.1-9] leave out the one on ``test/nosubscribe``; each left out is counted."""
    n = open_broker
    port = n.app.mqtt_port
    sensor = await paho(clients, port, "sensor", v5=v5)
    for topic in (DENIED, "test/kept"):
        assert await sensor.publish(topic, b"r-" + topic.encode(), 1, retain=True) == 0
    for i, flt in enumerate(("#", "test/#")):
        c = await paho(clients, port, f"late-{i}", v5=v5)
        assert await c.subscribe((flt, 1)) == [1]
        assert await received(c, 1) == [("test/kept", b"r-test/kept", True)]
        await c.no_message()
    assert await metric(n, "tidings_acl_denied_messages_total", edge="mqtt") == 2


@V5
async def test_offline_queue_skips_the_denied_topic(open_broker: Node, clients: list[Any],
                                                    v5: bool) -> None:
    """A persistent session with ``#`` (3.1.1 clean session 0, 5.0 Session Expiry):
    the QoS 1 messages published while it is away are kept [MQTT-3.1.2-5]
    [MQTT-3.1.2-23], except those on ``test/nosubscribe``."""
    n = open_broker
    port = n.app.mqtt_port
    kw: dict[str, Any] = {"v5": v5, "clean": False}
    if v5:
        kw["connect_props"] = {"SessionExpiryInterval": 300}
    first = await paho(clients, port, "away", **kw)
    assert await first.subscribe(("#", 1)) == [1]
    await asyncio.to_thread(first.close)
    await offline(n, "away")
    sensor = await paho(clients, port, "sensor", v5=v5)
    for topic in ("q/one", DENIED, "q/two"):
        assert await sensor.publish(topic, topic.encode(), 1) == 0
    again = Paho(port, "away", **kw)
    clients.append(again)
    assert (await again.connack()).session_present
    assert await received(again, 2) == [("q/one", b"q/one", False), ("q/two", b"q/two", False)]
    await again.no_message()


@V5
async def test_unsubscribing_a_screened_wildcard(open_broker: Node, clients: list[Any],
                                                 v5: bool) -> None:
    """``#`` can be unsubscribed like any filter [MQTT-3.10.4-1]: nothing more arrives
    through it [MQTT-3.10.4-2]; once only ``home/#`` is left, which overlaps no
    deny, the session is no longer asked per message."""
    n = open_broker
    port = n.app.mqtt_port
    c = await paho(clients, port, "watcher", v5=v5)
    assert await c.subscribe(("#", 1), ("home/#", 1)) == [1, 1]
    session = broker(n).sessions["watcher"]
    assert session.restricted  # '#' reaches into the deny
    sensor = await paho(clients, port, "sensor", v5=v5)
    assert await sensor.publish("garden/x", b"1", 1) == 0
    assert await received(c, 1) == [("garden/x", b"1", False)]
    c.c.unsubscribe("#")
    await wait_until(lambda: "#" not in session.subs, what="the unsubscribe")
    assert not session.restricted  # home/# overlaps no deny: nothing to ask per message
    for topic in ("garden/x", DENIED, "home/y"):
        assert await sensor.publish(topic, b"2", 1) == 0
    assert await received(c, 1) == [("home/y", b"2", False)]
    await c.no_message()


async def test_shared_subscription_is_screened(open_broker: Node, clients: list[Any]) -> None:
    """``$share/g/#`` (5.0 section 4.8.2) is granted; its member is not handed
    ``test/nosubscribe``; ``$share/g/test/nosubscribe`` is refused."""
    n = open_broker
    port = n.app.mqtt_port
    member = await paho(clients, port, "member", v5=True)
    assert await member.subscribe(("$share/g/#", 1), (f"$share/g/{DENIED}", 1)) == [1, 0x87]
    sensor = await paho(clients, port, "sensor", v5=True)
    for topic in (DENIED, "s/x"):
        assert await sensor.publish(topic, b"m", 1) == 0
    assert await received(member, 1) == [("s/x", b"m", False)]
    await member.no_message()


async def test_a_restored_session_is_screened(tmp_path: Path, clients: list[Any]) -> None:
    """A persistent ``#`` session read back from the store after a restart is screened
    again: what is published before its client returns skips the denied topic."""
    env = {"TIDINGS_AUTH_JWT_SECRET": JWT_SECRET}
    settings = make_settings(tmp_path)
    settings.acl = config.load(OPEN_BROKER, env).acl
    settings.auth.allow_anonymous = True
    n = await start_with(settings)
    try:
        port = n.app.mqtt_port
        c = await paho(clients, port, "sleeper", clean=False)
        assert await c.subscribe(("#", 1)) == [1]
        await asyncio.to_thread(c.close)
        await offline(n, "sleeper")
    finally:
        await stop_node(n)
    n = await start_with(settings)
    try:
        port = n.app.mqtt_port
        assert broker(n).sessions["sleeper"].restricted
        for topic in (DENIED, "r/x"):
            await n.publish(topic, topic)
        again = Paho(port, "sleeper", clean=False)
        clients.append(again)
        assert (await again.connack()).session_present
        assert await received(again, 1) == [("r/x", b'"r/x"', False)]
        await again.no_message()
    finally:
        await stop_node(n)
