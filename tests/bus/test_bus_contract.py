"""The Bus contract (``tidings/bus/base.py``), one suite for every implementation.

Each test takes the ``buses`` fixture (or ``bus_node``, one started bus) and
nothing that knows which backend it is. To run the suite against another
implementation, add its name to ``params`` of :func:`buses` and one branch
to :meth:`Buses.make`; a bus that connects nodes joins ``NETWORKED`` too, for
the tests that need two nodes or a connection to lose (``networked_buses``).
The Redis buses are built as the server builds them (the MQTT meta codec,
the default bound on calls) but with no unsubscribe delay (the delay has its
own test).

Redis pub/sub may drop, but not on loopback with a healthy server and a few
hundred messages: the tests below expect every publication, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from support.cluster_nodes import wait_for
from support.redis_servers import RedisClusterProcs, RedisServer
from tidings.bus.base import Bus
from tidings.bus.memory import MemoryBus
from tidings.bus.redis import RedisBus, wildcard_channel
from tidings.errors import Unavailable
from tidings.protocol.mqtt.properties import PROPERTIES_MAP, Properties
from tidings.protocol.topics import matches
from tidings.redis_wire import encode_publication, parse_redis_url
from tidings.types import Offset, PayloadKind, Publication

pytest_plugins = ["support.redis_servers"]

NETWORKED = ("redis", "redis-cluster")


class Received:
    """A node's ``deliver``: what arrived, in order."""

    def __init__(self) -> None:
        self.items: list[Publication] = []

    def __call__(self, publication: Publication) -> None:
        self.items.append(publication)

    def of(self, topic: str) -> list[Publication]:
        """The publications of ``topic``, each offset once (a repeat is allowed)."""
        seen: set[str] = set()
        out = []
        for p in self.items:
            if p.topic == topic and p.offset not in seen:
                seen.add(p.offset)
                out.append(p)
        return out

    async def until(self, topic: str, count: int) -> list[Publication]:
        await wait_for(lambda: len(self.of(topic)) >= count,
                       what=f"{count} publications of {topic!r}")
        return self.of(topic)


class BusNode:
    """A started bus (one node) and what it received."""

    def __init__(self, bus: Bus, received: Received, backend: Any) -> None:
        self.bus = bus
        self.received = received
        self.backend = backend  # the Redis server or cluster; None for memory
        self._seq = 0

    async def publish(self, topic: str, payload: bytes = b"{}", *, announced: bool = False,
                      **kw: Any) -> Publication:
        self._seq += 1
        p = Publication(topic, Offset(f"e0:{self._seq}"), payload, PayloadKind.JSON,
                        1_700_000_000_000 + self._seq, **kw)
        await self.bus.publish(p, announced=announced)
        return p

    async def unsubscribed(self, flt: str) -> None:
        """Until an unsubscribe of the wildcard ``flt`` took effect in the backend
        (Redis: nobody listens on its channel any more). The memory bus has
        nothing to undo."""
        if self.backend is None:
            return
        channel = wildcard_channel(flt)
        servers = (self.backend.servers if isinstance(self.backend, RedisClusterProcs)
                   else [self.backend])

        def listeners() -> int:
            total = 0
            for server in servers:
                with server.client() as c:
                    total += int(c.pubsub_numsub(channel)[0][1])
            return total

        await wait_for(lambda: listeners() == 0, what=f"nobody listening on {channel}")


class Buses:
    """Starts buses (one per node) of one backend, all on the same backing Redis."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.kind: str = request.param
        self.backend: RedisServer | RedisClusterProcs | None = None
        if self.kind in NETWORKED:
            self.backend = request.getfixturevalue(
                "redis_server" if self.kind == "redis" else "redis_cluster")
        self.opened: list[Bus] = []

    def make(self, **kw: Any) -> Bus:
        """A new bus, not started."""
        bus: Bus
        if self.kind == "memory":
            bus = MemoryBus()
        elif self.backend is not None:
            url, cluster = parse_redis_url(self.backend.url)
            kw.setdefault("unsubscribe_delay", 0.0)
            bus = RedisBus(url, cluster=cluster, meta_codec=PROPERTIES_MAP, **kw)
        else:  # pragma: no cover - a new backend adds its branch here
            raise AssertionError(f"no bus backend {self.kind!r}")
        self.opened.append(bus)
        return bus

    async def start(self, **kw: Any) -> BusNode:
        """A new bus, started and healthy: one more node."""
        bus = self.make(**kw)
        received = Received()
        await bus.start(received)
        await wait_for(lambda: bus.healthy, what="the bus to be healthy")
        return BusNode(bus, received, self.backend)

    async def close(self) -> None:
        for bus in self.opened:
            await bus.close()


@pytest.fixture(params=["memory", *NETWORKED])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    made = Buses(request)
    yield made
    await made.close()


@pytest.fixture(params=NETWORKED)
async def networked_buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    """Only the buses that connect nodes (the memory bus has one node and no
    connection to lose)."""
    made = Buses(request)
    yield made
    await made.close()


@pytest.fixture
async def bus_node(buses: Buses) -> BusNode:
    return await buses.start()


# -- delivery ---------------------------------------------------------------------------


async def test_an_exact_subscriber_gets_the_publication_as_published(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("home/kitchen/temp")
    sent = await bus_node.publish("home/kitchen/temp", b'{"c":21}', qos=0,
                              published_retain=True, origin="sensor-1")
    assert await bus_node.received.until("home/kitchen/temp", 1) == [sent]


async def test_every_payload_kind_and_byte_arrives_intact(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("raw")
    kinds = [(PayloadKind.BINARY, bytes(range(256))), (PayloadKind.TEXT, "é☕".encode()),
             (PayloadKind.JSON, b"[]"), (PayloadKind.BINARY, b""),
             (PayloadKind.BINARY, b"\x00" * 70_000)]
    sent = []
    for i, (kind, payload) in enumerate(kinds, 1):
        p = Publication("raw", Offset(f"e0:{i}"), payload, kind, 1_700_000_000_000 + i)
        await bus_node.bus.publish(p)
        sent.append(p)
    assert await bus_node.received.until("raw", len(sent)) == sent


async def test_mqtt_properties_travel_with_the_publication(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("dev/1/cmd")
    props = Properties(content_type="application/json", response_topic="dev/1/reply",
                       correlation_data=b"\x01", user_properties=(("k", "v"), ("k", "w")))
    sent = await bus_node.publish("dev/1/cmd", meta=props, qos=2)
    (got,) = await bus_node.received.until("dev/1/cmd", 1)
    assert got == sent and got.meta == props


@pytest.mark.parametrize("flt, topics", [
    ("home/+/temp", ["home/kitchen/temp", "home/hall/temp"]),
    ("sport/#", ["sport", "sport/tennis", "sport/tennis/live/score"]),  # [MQTT-4.7.1-2]
    ("+/status", ["dev1/status", "dev2/status"]),
    ("+", ["alone", "other"]),
    ("#", ["a", "b/c", "users/alice/notifications"]),
])
async def test_wildcard_filters_get_every_topic_they_match(bus_node: BusNode, flt: str,
                                                           topics: list[str]) -> None:
    await bus_node.bus.subscribe(flt)
    sent = [await bus_node.publish(t) for t in topics]
    for p in sent:
        assert matches(flt, p.topic)
        assert await bus_node.received.until(p.topic, 1) == [p]


@pytest.mark.parametrize("topic", [
    "a}b", "a%7Db", "{t:x}", "users/al}ice/notifications", "users//x", "café/☕", "a/b/",
])
async def test_topics_that_need_escaping_on_redis_arrive(bus_node: BusNode, topic: str) -> None:
    await bus_node.bus.subscribe(topic)
    sent = await bus_node.publish(topic)
    assert await bus_node.received.until(topic, 1) == [sent]


async def test_a_topic_matched_by_two_filters_arrives_under_each_offset_once(
        bus_node: BusNode) -> None:
    # exact and wildcard both match: the bus may hand it over twice, never lose it
    await bus_node.bus.subscribe("x/1")
    await bus_node.bus.subscribe("x/+")
    sent = await bus_node.publish("x/1")
    assert await bus_node.received.until("x/1", 1) == [sent]
    assert all(p == sent for p in bus_node.received.items)


async def test_announced_publications_still_reach_wildcard_filters(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("meter/+")
    sent = await bus_node.publish("meter/7", announced=True)
    assert await bus_node.received.until("meter/7", 1) == [sent]


# -- order ------------------------------------------------------------------------------


async def test_each_topic_arrives_in_publish_order(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("seq/a")  # exact
    await bus_node.bus.subscribe("seq/+")  # and wildcard: seq/b and seq/c only through it
    topics = ["seq/a", "seq/b", "seq/c"]
    sent: dict[str, list[Publication]] = {t: [] for t in topics}
    for i in range(150):  # interleaved
        topic = topics[i % 3]
        sent[topic].append(await bus_node.publish(topic, b"%d" % i))
    for topic in topics:
        assert await bus_node.received.until(topic, 50) == sent[topic]


# -- subscribing and unsubscribing ------------------------------------------------------


async def test_unsubscribing_one_filter_keeps_an_overlapping_one(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("room/+")
    await bus_node.bus.subscribe("room/1")
    await bus_node.bus.unsubscribe("room/+")
    await bus_node.unsubscribed("room/+")
    sent = await bus_node.publish("room/1")
    assert await bus_node.received.until("room/1", 1) == [sent]


async def test_a_filter_subscribed_again_after_unsubscribing_receives_again(
        bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("lamp/+")
    await bus_node.bus.unsubscribe("lamp/+")
    await bus_node.unsubscribed("lamp/+")
    await bus_node.bus.subscribe("lamp/+")
    sent = await bus_node.publish("lamp/3")
    assert await bus_node.received.until("lamp/3", 1) == [sent]


async def test_subscribing_again_within_the_unsubscribe_delay_keeps_the_filter(
        buses: Buses) -> None:
    # a client that reconnects at once: its node unsubscribes and subscribes again
    bus_node = await buses.start(unsubscribe_delay=60.0)
    await bus_node.bus.subscribe("flap/+")
    await bus_node.bus.unsubscribe("flap/+")
    await bus_node.bus.subscribe("flap/+")
    sent = await bus_node.publish("flap/1")
    assert await bus_node.received.until("flap/1", 1) == [sent]


async def test_unsubscribing_a_filter_never_subscribed_is_harmless(bus_node: BusNode) -> None:
    await bus_node.bus.unsubscribe("never/+")
    await bus_node.bus.unsubscribe("never")
    await bus_node.bus.subscribe("kept")
    sent = await bus_node.publish("kept")
    assert await bus_node.received.until("kept", 1) == [sent]


# -- lifecycle --------------------------------------------------------------------------


async def test_close_is_idempotent_and_ends_delivery(bus_node: BusNode) -> None:
    await bus_node.bus.subscribe("t")
    await bus_node.publish("t")
    await bus_node.received.until("t", 1)
    await bus_node.bus.close()
    assert bus_node.bus.healthy is False
    await bus_node.bus.close()
    assert bus_node.bus.healthy is False
    with pytest.raises(Unavailable):
        await bus_node.publish("t")
    assert len(bus_node.received.of("t")) == 1


async def test_publish_before_start_is_unavailable(buses: Buses) -> None:
    bus = buses.make()
    assert bus.healthy is False
    with pytest.raises(Unavailable):
        await bus.publish(Publication("t", Offset("e0:1"), b"{}", PayloadKind.JSON, 1))
    await bus.close()  # never started: still fine
    assert bus.healthy is False


# -- between nodes (buses that connect nodes) -------------------------------------------


async def test_a_publication_reaches_every_subscribed_node_the_publisher_included(
        networked_buses: Buses) -> None:
    a, b, c = [await networked_buses.start() for _ in range(3)]
    await a.bus.subscribe("news/+")
    await b.bus.subscribe("news/sports")
    await c.bus.subscribe("users/alice/notifications")
    sent = await a.publish("news/sports")
    private = await b.publish("users/alice/notifications")
    assert await a.received.until("news/sports", 1) == [sent]
    assert await b.received.until("news/sports", 1) == [sent]
    assert await c.received.until("users/alice/notifications", 1) == [private]


async def test_after_losing_its_connections_the_bus_resubscribes_and_says_so(
        networked_buses: Buses) -> None:
    bus_node = await networked_buses.start()
    resubscribed = asyncio.Event()
    bus_node.bus.on_resubscribed = resubscribed.set
    await bus_node.bus.subscribe("door/1")
    await bus_node.bus.subscribe("window/+")
    servers = (bus_node.backend.servers if isinstance(bus_node.backend, RedisClusterProcs)
               else [bus_node.backend])
    for server in servers:
        with server.client() as c:
            c.client_kill_filter(_type="pubsub")
    await wait_for(lambda: resubscribed.is_set() and bus_node.bus.healthy,
                   what="the bus back and resubscribed")
    sent = [await bus_node.publish("door/1"), await bus_node.publish("window/2")]
    assert await bus_node.received.until("door/1", 1) == sent[:1]
    assert await bus_node.received.until("window/2", 1) == sent[1:]


# -- groups -----------------------------------------------------------------------------


class Passes(Received):
    """A ``deliver`` that also counts the event-loop passes it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0
        self._open = False

    def __call__(self, publication: Publication) -> None:
        super().__call__(publication)
        if not self._open:
            self._open = True
            self.passes += 1
            asyncio.get_running_loop().call_soon(self._close)

    def _close(self) -> None:
        self._open = False


async def test_a_burst_reaches_the_node_in_order_in_few_loop_passes(
        networked_buses: Buses) -> None:
    """Messages that arrive back to back (a node publishing a group: one pipeline)
    are read from the buffer before the reader yields and handed on in one pass,
    so each subscriber's outbox is written once for many of them, not once per
    message. (redis-py's ``get_message`` does not yield while it has buffered
    messages; this pins that the reader keeps it so.)"""
    n = 200
    bus = networked_buses.make()
    received = Passes()
    await bus.start(received)
    await wait_for(lambda: bus.healthy, what="the bus to be healthy")
    await bus.subscribe("burst/#")
    backend = networked_buses.backend
    server = backend.servers[0] if isinstance(backend, RedisClusterProcs) else backend
    assert server is not None
    pubs = [Publication("burst/t", Offset(f"e0:{i}"), b'"%s"' % (b"x" * 96), PayloadKind.JSON,
                        1_700_000_000_000 + i) for i in range(1, n + 1)]
    with server.client() as c:  # one pipeline: the messages go out back to back
        pipe = c.pipeline(transaction=False)
        for p in pubs:
            pipe.publish(wildcard_channel(p.topic), encode_publication(p, PROPERTIES_MAP))
        pipe.execute()
    assert await received.until("burst/t", n) == pubs
    assert received.passes <= n // 20, f"{received.passes} passes for {n} messages"


async def test_publish_many_keeps_each_topic_s_order(bus_node: BusNode) -> None:
    """A group (interleaved topics) arrives as if each were published in turn."""
    await bus_node.bus.subscribe("g/a")
    await bus_node.bus.subscribe("g/#")
    group = [Publication(f"g/{'ab'[i % 2]}", Offset(f"e0:{i}"), b"%d" % i, PayloadKind.JSON,
                         1_700_000_000_000 + i) for i in range(1, 41)]
    await bus_node.bus.publish_many(group)
    assert await bus_node.received.until("g/a", 20) == [p for p in group if p.topic == "g/a"]
    assert await bus_node.received.until("g/b", 20) == [p for p in group if p.topic == "g/b"]


async def test_publish_many_on_a_closed_bus_is_unavailable(buses: Buses) -> None:
    node = await buses.start()
    await node.bus.close()
    with pytest.raises(Unavailable):
        await node.bus.publish_many([Publication("t", Offset("e0:1"), b"1", PayloadKind.JSON,
                                                 1)])
