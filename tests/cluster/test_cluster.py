"""Several Tidings nodes form one deployment on Redis (issue 7).

Three real ``tidings serve`` processes (``cluster_nodes.py``) on one real
``redis-server`` and on a real 3-master Redis Cluster (sharded pub/sub;
``redis_servers.py``), with real clients: ``websockets`` for browsers,
paho-mqtt for devices, aiohttp for backends.

* A publish through any node's API reaches subscribers on every node, for
  exact topics and for wildcard filters (literal and wildcard first level),
  once each and in order.
* Alice's laptop (WS, node 1), phone (WS, node 2) and kitchen display (MQTT,
  node 3): a notify through node 2's API reaches all three; a read on one
  device updates the other two, from either edge.
* Every node lists every device of a user (``GET /v1/users/{uid}/devices``).
* Tags, segments and preferences are the same through every node; a
  preference change on any node and edge reaches the user's devices on the
  others.
* ``tidings serve --workers 2``: both workers accept on the same ports and
  a publish reaches subscribers on both.

Failures (a node SIGKILLed, Redis restarted, pub/sub connections killed) are
in ``test_cluster_failures.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Client
from support.cluster_nodes import (
    Cluster,
    NodeFactory,
    TidingsNode,
    cluster,
    masters,
    redis_env,
    tidings_nodes,
    wait_for,
)
from support.mqtt import Paho, clients, paho
from support.redis_servers import RedisClusterProcs, RedisFactory, RedisServer
from tidings import config
from tidings.redis_wire import channel_for

pytest_plugins = ["support.redis_servers"]
__all__ = ["clients", "cluster", "tidings_nodes"]  # fixtures used here, defined elsewhere


@dataclass
class Deployment:
    """Three nodes on one Redis (``kind`` "redis") or on a Redis Cluster."""

    kind: str
    redis: RedisServer | RedisClusterProcs
    nodes: list[TidingsNode]


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Deployment]:
    """Started once per backend for this module; tests use their own users and topics."""
    target: RedisServer | RedisClusterProcs = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    target.flushall()
    factory = NodeFactory(tmp_path_factory.mktemp(f"nodes-{request.param}"))
    try:
        nodes = factory.start(3, redis_env(target.url))
        yield Deployment(request.param, target, nodes)
    finally:
        factory.stop()


async def pushes(client: Client, count: int) -> list[dict[str, Any]]:
    return [await client.push() for _ in range(count)]


async def mqtt_by_topic(device: Paho, count: int) -> dict[str, list[Any]]:
    """The next ``count`` MQTT messages, JSON-decoded, grouped by topic (in order)."""
    got: dict[str, list[Any]] = {}
    for _ in range(count):
        m = await device.message()
        got.setdefault(m.topic, []).append(orjson.loads(m.payload))
    return got


# -- publish ----------------------------------------------------------------------------


async def test_a_publish_through_any_node_reaches_subscribers_on_every_node(
        deployment: Deployment, cluster: Cluster) -> None:
    """Exact subscribers on nodes 1 and 2, wildcard ones on nodes 1 and 3 (literal and
    wildcard first level); three publishes through node 2's API reach every one of
    them once, in order, with the offsets the API returned."""
    n1, n2, n3 = deployment.nodes
    topic = f"scores/{deployment.kind}/live"
    subs = {
        "exact@1": (await cluster.client(n1, "fan1"), topic),
        "exact@2": (await cluster.client(n2, "fan2"), topic),
        "literal-first@1": (await cluster.client(n1, "fan3"), "scores/+/live"),
        "wild-first@3": (await cluster.client(n3, "fan4"), f"+/{deployment.kind}/#"),
    }
    for client, flt in subs.values():
        reply = await client.request("subscribe", topic=flt)
        assert reply["ok"], reply
    offsets = [await cluster.publish(n2, topic, {"goal": i}) for i in range(3)]
    for name, (client, _) in subs.items():
        got = await pushes(client, 3)
        assert [(m["topic"], m["offset"], m["data"]) for m in got] == [
            (topic, offsets[i], {"goal": i}) for i in range(3)], name
    for client, _ in subs.values():
        await client.no_push()  # once each, although node 1 hears two channels
    assert_channel_placement(deployment, topic)


def assert_channel_placement(deployment: Deployment, topic: str) -> None:
    """On a Redis Cluster the topic's channel is a shard channel, subscribed only on the
    master that owns its slot (so a message goes to that shard alone); on one Redis a
    classic channel."""
    channel = channel_for(topic)
    owner = (deployment.redis.server_for(channel)
             if isinstance(deployment.redis, RedisClusterProcs) else None)
    for server in masters(deployment.redis):
        with server.client() as c:
            shard = {x.decode() for x in c.execute_command("PUBSUB", "SHARDCHANNELS")}
            classic = {x.decode() for x in c.execute_command("PUBSUB", "CHANNELS")}
        if owner is None:
            assert channel in classic
        else:
            assert (channel in shard) == (server is owner), server.port
            assert channel not in classic


async def test_a_publish_reaches_only_matching_filters_across_nodes(
        deployment: Deployment, cluster: Cluster) -> None:
    """Wildcard interest on another node carries the first level's traffic to it, but
    the node's hub delivers only what each filter matches."""
    n1, n2, _ = deployment.nodes
    kind = deployment.kind
    temps = await cluster.client(n1, "thermo")
    assert (await temps.request("subscribe", topic=f"home-{kind}/+/temp"))["ok"]
    await cluster.publish(n2, f"home-{kind}/kitchen/humidity", 40)
    await cluster.publish(n2, f"home-{kind}/kitchen/temp", 21)
    m = await temps.push()
    assert (m["topic"], m["data"]) == (f"home-{kind}/kitchen/temp", 21)
    await temps.no_push()


# -- notifications and reads --------------------------------------------------------------


async def test_notify_and_read_stay_in_sync_across_nodes_and_edges(
        deployment: Deployment, cluster: Cluster, clients: list[Any]) -> None:
    """Alice's laptop (WS, node 1), phone (WS, node 2), kitchen display (MQTT, node 3).
    A notify through node 2's API reaches all three with the same unread count; the
    laptop's read updates phone and display; the display's read updates both tabs."""
    n1, n2, n3 = deployment.nodes
    user = f"alice-{deployment.kind}"
    laptop = await cluster.client(n1, user, device="laptop")
    phone = await cluster.client(n2, user, device="phone")
    kitchen = await paho(clients, n3.mqtt_port, f"kitchen-{deployment.kind}",
                         token=cluster.token(user))
    assert await kitchen.subscribe((f"users/{user}/notifications", 1),
                                   (f"users/{user}/unread", 1),
                                   (f"users/{user}/events", 1)) == [1, 1, 1]

    status, body = await cluster.api(n2, "POST", "/v1/notify",
                                     {"users": [user], "title": "Dinner", "body": "ready"})
    assert status == 200, body
    first = body["id"]
    for device in (laptop, phone):
        note = await device.push()
        assert (note["type"], note["id"], note["title"], note["unread"]) == (
            "notification", first, "Dinner", 1)
    got = await mqtt_by_topic(kitchen, 2)
    assert [(n["id"], n["title"]) for n in got[f"users/{user}/notifications"]] == [
        (first, "Dinner")]
    assert got[f"users/{user}/unread"] == [{"count": 1}]

    reply = await laptop.request("read", ids=[first])
    assert reply["ok"] and reply["unread"] == 0, reply
    event = await phone.push()
    assert (event["type"], event["ids"], event["unread"], event["device"]) == (
        "read", [first], 0, "laptop")
    got = await mqtt_by_topic(kitchen, 2)
    assert got[f"users/{user}/unread"] == [{"count": 0}]
    [seen] = got[f"users/{user}/events"]
    assert (seen["type"], seen["ids"], seen["device"]) == ("read", [first], "laptop")

    status, body = await cluster.api(n3, "POST", "/v1/notify",
                                     {"users": [user], "title": "Door", "body": "open"})
    assert status == 200, body
    second = body["id"]
    await mqtt_by_topic(kitchen, 2)  # the notification and {"count": 1}
    for device in (laptop, phone):
        while (await device.push())["type"] != "notification":
            pass  # the laptop may first hear its own read event
    assert await kitchen.publish(f"users/{user}/read", orjson.dumps({"ids": [second]}), 1) == 0
    for device in (laptop, phone):
        event = await device.push()
        assert (event["type"], event["ids"], event["unread"], event["device"]) == (
            "read", [second], 0, f"kitchen-{deployment.kind}")
    for node in (n1, n2, n3):
        status, body = await cluster.api(node, "GET", f"/v1/users/{user}/unread")
        assert (status, body["unread"]) == (200, 0), node.name


async def test_audiences_and_preferences_are_the_same_on_every_node(
        deployment: Deployment, cluster: Cluster, clients: list[Any]) -> None:
    """Tags set through node 1 select through node 2's segment; a preference change
    on the MQTT display (node 3) reaches the WS tab on node 1, a change on that tab
    reaches the display, and node 2's API reads what they stored (issue 12)."""
    n1, n2, n3 = deployment.nodes
    user = f"pat-{deployment.kind}"
    status, body = await cluster.api(n1, "PUT", f"/v1/users/{user}/tags",
                                     {"tags": ["vip", deployment.kind]})
    assert (status, body) == (200, {"tags": sorted(["vip", deployment.kind])})
    segment = f"vips-{deployment.kind}"
    status, _ = await cluster.api(n3, "PUT", f"/v1/segments/{segment}",
                                  {"tags": {"all": ["vip", deployment.kind]}})
    assert status == 201
    status, body = await cluster.api(n2, "GET", f"/v1/segments/{segment}/users")
    assert (status, body) == (200, {"users": [user], "next": None})

    topic = f"users/{user}/preferences"
    tab = await cluster.client(n1, user, device="tab")
    assert (await tab.request("subscribe", topic=topic))["ok"]
    display = await paho(clients, n3.mqtt_port, f"display-{deployment.kind}",
                         token=cluster.token(user), v5=True)
    assert await display.subscribe((topic, 1)) == [1]
    assert await display.publish(topic + "/set", orjson.dumps({"timezone": "Asia/Taipei"}),
                                 1) == 0
    assert (await tab.push())["data"] == {"timezone": "Asia/Taipei"}
    assert orjson.loads((await display.message()).payload) == {"timezone": "Asia/Taipei"}
    reply = await tab.request("set_preferences", merge=True, preferences={"locale": "zh-TW"})
    assert reply["preferences"] == {"timezone": "Asia/Taipei", "locale": "zh-TW"}, reply
    assert orjson.loads((await display.message()).payload) == reply["preferences"]
    status, body = await cluster.api(n2, "GET", f"/v1/users/{user}/preferences")
    assert (status, body) == (200, reply["preferences"])


# -- presence ---------------------------------------------------------------------------


async def test_every_node_lists_every_device_of_a_user(
        deployment: Deployment, cluster: Cluster, clients: list[Any]) -> None:
    """Devices on three nodes, over both edges: each node's API lists all of them with
    the node that holds them; one that leaves vanishes from every node's list."""
    n1, n2, n3 = deployment.nodes
    user = f"carol-{deployment.kind}"
    await cluster.client(n1, user, device="laptop")
    phone = await cluster.client(n2, user, device="phone")
    await paho(clients, n3.mqtt_port, f"display-{deployment.kind}", token=cluster.token(user))
    want = {("laptop", "node1"), ("phone", "node2"), (f"display-{deployment.kind}", "node3")}

    for node in (n1, n2, n3):
        await wait_for(partial(lists, cluster, node, user, want),
                       what=f"every device listed on {node.name}")
    await phone.close()
    for node in (n1, n2, n3):
        await wait_for(partial(lists, cluster, node, user, want - {("phone", "node2")}),
                       what=f"the phone gone from {node.name}")


async def lists(cluster: Cluster, node: TidingsNode, user: str,
                want: set[tuple[str, str]]) -> bool:
    """Whether ``node`` lists exactly ``want`` (device, node) as ``user``'s devices."""
    status, body = await cluster.api(node, "GET", f"/v1/users/{user}/devices")
    assert status == 200, body
    return {(d["device"], d["node"]) for d in body["devices"]} == want


# -- serve --workers ----------------------------------------------------------------------


async def test_workers_share_the_ports_and_the_bus(redis_factory: RedisFactory,
                                                   tidings_nodes: NodeFactory,
                                                   cluster: Cluster) -> None:
    """``tidings serve --workers 2``: connections to the one WS port land on both
    workers (their connect replies name different nodes), and a publish through the
    one API port reaches subscribers on both."""
    redis = redis_factory.server()
    [server] = tidings_nodes.start(1, redis_env(redis.url), names=["w"], workers=2)
    by_worker: dict[str, Client] = {}
    for _ in range(200):  # bounded: the kernel spreads connections by a hash
        c = await cluster.client(server, "worker-fan")
        if c.hello["node"] in by_worker:
            await c.close()
        else:
            by_worker[c.hello["node"]] = c
        if len(by_worker) == 2:
            break
    assert sorted(by_worker) == ["w-1", "w-2"]
    for c in by_worker.values():
        assert (await c.request("subscribe", topic="workers/news"))["ok"]
    offset = await cluster.publish(server, "workers/news", {"hello": "both"})
    for name, c in by_worker.items():
        m = await c.push()
        assert (m["offset"], m["data"]) == (offset, {"hello": "both"}), name


# -- config/cluster.toml ------------------------------------------------------------------

CLUSTER_TOML = Path(__file__).resolve().parents[2] / "config" / "cluster.toml"


def test_cluster_toml_names_every_cluster_setting_and_its_variable() -> None:
    """The file loads, selects the Redis backends, and documents each setting a
    cluster operator must decide on, with its environment variable."""
    s = config.load(CLUSTER_TOML, env={})
    assert (s.store.backend, s.bus.backend) == ("redis", "redis")
    assert s.redis.url.startswith(("redis://", "redis+cluster://"))
    text = CLUSTER_TOML.read_text()
    for env in ("TIDINGS_BUS_BACKEND", "TIDINGS_STORE_BACKEND", "TIDINGS_REDIS_URL",
                "TIDINGS_NODE_NAME", "TIDINGS_NODE_REUSE_PORT", "TIDINGS_NODE_SHUTDOWN_TIMEOUT",
                "TIDINGS_AUTH_JWT_SECRET", "TIDINGS_API_KEYS", "TIDINGS_PRESENCE_TTL",
                "TIDINGS_HISTORY_SIZE", "TIDINGS_HISTORY_TTL", "TIDINGS_WS_HOST",
                "TIDINGS_API_HOST", "TIDINGS_MQTT_HOST", "TIDINGS_STORE_PATH"):
        assert env in text, env


async def test_cluster_toml_runs_two_nodes_that_talk(redis_factory: RedisFactory,
                                                     tidings_nodes: NodeFactory,
                                                     cluster: Cluster) -> None:
    """Two nodes started from config/cluster.toml (ports, Redis URL and secrets from
    the environment, as a deployment would set them) carry a publish between them."""
    redis = redis_factory.server()
    n1, n2 = tidings_nodes.start(2, {"TIDINGS_CONFIG": str(CLUSTER_TOML),
                                     "TIDINGS_REDIS_URL": redis.url})
    sub = await cluster.client(n1, "reader")
    assert (await sub.request("subscribe", topic="from/config"))["ok"]
    offset = await cluster.publish(n2, "from/config", "works")
    m = await sub.push()
    assert (m["offset"], m["data"]) == (offset, "works")
