"""MQTT rules that span the nodes of a cluster (issue 15, scope 4).

Real ``tidings serve`` processes (``cluster_nodes.py``) on a real
``redis-server`` and on a real 3-master Redis Cluster (sharded pub/sub carries
the nodes' requests to each other), real paho-mqtt clients (3.1.1 and 5.0), messages published
through the nodes' HTTP API (QoS 1, as every API publish).

* Client-id takeover across nodes [MQTT-3.1.4-2]: the old connection gets
  DISCONNECT 0x8E (5.0; 3.1.1: closed), the session (subscriptions, the
  unacknowledged and the waiting QoS 1 messages) resumes on the new node
  [MQTT-3.2.2-2], and every message published during the takeover arrives,
  in order [MQTT-4.6.0-6]. Another user's token cannot take a session over.
* ``$share`` (5.0 section 4.8.2, [MQTT-4.8.2-2]: each message to one
  member): members on two nodes get each message once in total; when a
  member's node is killed, the rest of the group gets the messages once the
  dead node's roster entry is gone (``mqtt.cluster_ttl``, 1 s here).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from conftest import WAIT
from support.cluster_nodes import (
    Cluster,
    NodeFactory,
    TidingsNode,
    cluster,
    redis_env,
    tidings_nodes,
    wait_for,
)
from support.mqtt import Paho, clients, paho
from support.redis_servers import RedisClusterProcs, RedisServer
from tidings.store.redis import RedisStore

pytest_plugins = ["support.redis_servers"]
__all__ = ["clients", "cluster", "tidings_nodes"]  # fixtures used here, defined elsewhere

TTL = "1"  # mqtt.cluster_ttl of these nodes: rosters refreshed every third of a second
SESSION = {"SessionExpiryInterval": 300}
TAKEN_OVER = 0x8E  # DISCONNECT reason: Session taken over (5.0 section 3.14.2.1)


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """One Redis or a Redis Cluster (session servers: tests use their own names)."""
    target: RedisServer | RedisClusterProcs = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster")
    return target.url


@pytest.fixture(scope="module")
def pair(redis_url: str, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[list[TidingsNode]]:
    """Two nodes, started once per backend for this module's takeover tests (each
    test has its own client ids, users and topics)."""
    factory = NodeFactory(tmp_path_factory.mktemp("mqtt-pair"))
    try:
        yield factory.start(2, redis_env(redis_url, TIDINGS_MQTT_CLUSTER_TTL=TTL))
    finally:
        factory.stop()


async def metric(cluster: Cluster, node: TidingsNode, name: str) -> float:
    """One unlabelled sample of the node's ``GET /metrics`` (0 when absent)."""
    status, text = await cluster.api(node, "GET", "/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def numbers(device: Paho, count: int) -> list[int]:
    """The ``n`` of the next ``count`` messages, in arrival order."""
    return [orjson.loads((await device.message()).payload)["n"] for _ in range(count)]


async def publish_all(cluster: Cluster, node: TidingsNode, topic: str, ns: range) -> None:
    for n in ns:
        await cluster.publish(node, topic, {"n": n})


async def collect_until(device: Paho, wanted: set[int]) -> list[int]:
    """Messages until every ``n`` in ``wanted`` came (bounded by WAIT per message)."""
    got: list[int] = []
    while not wanted <= set(got):
        got += await numbers(device, 1)
    return got


def first_seen(got: list[int]) -> list[int]:
    return list(dict.fromkeys(got))


# -- takeover -------------------------------------------------------------------------------


async def publish_during(cluster: Cluster, node: TidingsNode, topic: str, first: int,
                         connecting: Paho) -> int:
    """Publish ``{"n": first}``, ``first + 1``, ... while ``connecting`` waits for its
    CONNACK, then 10 more (at most 1000 in all); returns the next ``n``."""
    n, after = first, 10
    while after and n < first + 1000:
        await cluster.publish(node, topic, {"n": n})
        n += 1
        if not connecting.connacks.empty():
            after -= 1
    return n


def drain(device: Paho) -> list[int]:
    """The ``n`` of every message already received, without waiting."""
    out = []
    while not device.messages.empty():
        out.append(orjson.loads(device.messages.get_nowait().payload)["n"])
    return out


# -- takeover -------------------------------------------------------------------------------


async def test_takeover_moves_a_v5_session_to_the_newer_node(
        pair: list[TidingsNode], cluster: Cluster, clients: list[Any]) -> None:
    """[MQTT-3.1.4-2] across nodes. The old client (node 1) holds message 0 without
    acknowledging it, message 1 waits behind it (Receive Maximum 1); the same client
    id connects to node 2 while messages are being published. The old client reads
    DISCONNECT 0x8E; the new one has its session (Session Present [MQTT-3.2.2-2]),
    gets 0 and 1 again and every later message once, in order [MQTT-4.6.0-6], and
    its subscription lives on node 2."""
    n1, n2 = pair
    token = cluster.token("tara")
    topic = "plant/tara/line"
    moved = await metric(cluster, n2, "tidings_mqtt_cluster_takeovers_total")
    old = await paho(clients, n1.mqtt_port, "press-7", token=token, v5=True, clean=False,
                     connect_props={**SESSION, "ReceiveMaximum": 1})
    old.c.manual_ack_set(True)  # read, never acknowledged: in flight on node 1
    assert await old.subscribe((topic, 1)) == [1]
    await publish_all(cluster, n2, topic, range(2))
    assert await numbers(old, 1) == [0]

    new = Paho(n2.mqtt_port, "press-7", token=token, v5=True, clean=False,
               connect_props=SESSION)
    clients.append(new)
    end = await publish_during(cluster, n2, topic, 2, new)
    assert (await new.connack()).session_present
    code, _ = await old.disconnected()
    assert code == TAKEN_OVER
    assert await metric(cluster, n2, "tidings_mqtt_cluster_takeovers_total") == moved + 1
    # each once: what node 1 had handed over is not replayed by node 2 [MQTT-4.3.2]
    assert await numbers(new, end) == list(range(end))
    # the subscription is node 2's now: a message published after all of it arrives once
    await cluster.publish(n1, topic, {"n": end})
    assert await numbers(new, 1) == [end]
    await new.no_message()


async def test_takeover_across_nodes_on_3_1_1(
        pair: list[TidingsNode], cluster: Cluster, clients: list[Any]) -> None:
    """3.1.1 has no server DISCONNECT: the old connection (node 2) is closed
    [MQTT-3.1.4-2]; the new one (node 1, clean session 0) resumes the session
    (session present [MQTT-3.2.2-2]). Every message published meanwhile reaches the
    old client before the close or the new one after it, the new one in order."""
    n1, n2 = pair
    token = cluster.token("otto")
    topic = "plant/otto/valve"
    old = await paho(clients, n2.mqtt_port, "valve-3", token=token, clean=False)
    assert await old.subscribe((topic, 1)) == [1]
    await publish_all(cluster, n1, topic, range(1))
    assert await numbers(old, 1) == [0]

    new = Paho(n1.mqtt_port, "valve-3", token=token, clean=False)
    clients.append(new)
    end = await publish_during(cluster, n1, topic, 1, new)
    assert (await new.connack()).session_present
    await old.disconnected()
    before = [0, *drain(old)]
    after = await collect_until(new, set(range(end)) - set(before))
    assert set(before) | set(after) == set(range(end))
    assert first_seen(after) == sorted(set(after))


async def connections(cluster: Cluster, node: TidingsNode, count: int) -> None:
    """Wait until ``node`` has ``count`` MQTT connections open."""
    await wait_for(lambda: _is(metric(cluster, node, "tidings_mqtt_connections"), count),
                   what=f"{count} MQTT connections on {node.name}")


async def _queued(store: RedisStore, client_id: str, count: int) -> bool:
    kept = await store.mqtt_session(client_id)
    return kept is not None and len(kept[1]) == count


async def kept_offline(cluster: Cluster, clients: list[Any], node: TidingsNode,
                       client_id: str, token: str, topic: str) -> None:
    """A 5.0 persistent session on ``node``, subscribed to ``topic`` (QoS 1), whose
    client has disconnected (the node knows it: no connection open there)."""
    device = await paho(clients, node.mqtt_port, client_id, token=token, v5=True,
                        clean=False, connect_props=SESSION)
    assert await device.subscribe((topic, 1)) == [1]
    device.close()
    await connections(cluster, node, 0)


async def resumed(clients: list[Any], node: TidingsNode, client_id: str, token: str
                  ) -> Paho:
    """The client of a kept session connected again on ``node``: Session Present."""
    device = Paho(node.mqtt_port, client_id, token=token, v5=True, clean=False,
                  connect_props=SESSION)
    clients.append(device)
    assert (await device.connack()).session_present  # [MQTT-3.2.2-2]
    return device


async def test_an_offline_session_moves_and_stops_queueing_on_the_old_node(
        pair: list[TidingsNode], cluster: Cluster, clients: list[Any]) -> None:
    """A persistent session left offline on node 1 (its subscription followed there,
    its messages queued) is resumed on node 2 [MQTT-3.2.2-2] with what was queued
    [MQTT-4.4.0-1]; node 1 lets it go, so a message queued while the client is
    away again is queued once, by node 2, and arrives once."""
    n1, n2 = pair
    token = cluster.token("wendy")
    topic = "plant/wendy/tank"
    await kept_offline(cluster, clients, n1, "tank-2", token, topic)
    await cluster.publish(n1, topic, {"n": 0})

    second = await resumed(clients, n2, "tank-2", token)
    assert await numbers(second, 1) == [0]
    second.close()
    await connections(cluster, n2, 0)
    await cluster.publish(n1, topic, {"n": 1})

    third = await resumed(clients, n2, "tank-2", token)
    assert await numbers(third, 1) == [1]
    await third.no_message()


async def test_another_users_token_cannot_take_a_session_over(
        pair: list[TidingsNode], cluster: Cluster, clients: list[Any]) -> None:
    """A CONNECT on node 2 with the client id of a session another user holds on
    node 1 is refused with 0x87 Not authorized; the session stays where it is."""
    n1, n2 = pair
    topic = "plant/uma/door"
    old = await paho(clients, n1.mqtt_port, "door-1", token=cluster.token("uma"), v5=True,
                     clean=False, connect_props=SESSION)
    assert await old.subscribe((topic, 1)) == [1]
    await paho(clients, n2.mqtt_port, "door-1", token=cluster.token("mallory"), v5=True,
               clean=False, connect_props=SESSION, expect=0x87)
    await cluster.publish(n2, topic, {"n": 1})
    assert await numbers(old, 1) == [1]
    assert old.disconnects.empty()


# -- $share ---------------------------------------------------------------------------------


async def mosquitto_pub(node: TidingsNode, token: str, *args: str, stdin: bytes) -> None:
    """Run Debian's ``mosquitto_pub`` (mosquitto-clients) against ``node``, bounded."""
    if shutil.which("mosquitto_pub") is None:
        pytest.fail("mosquitto_pub not on PATH: apt-get install -y mosquitto-clients")
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(node.mqtt_port), "-u", "device",
        "-P", token, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), WAIT)
    except TimeoutError:
        proc.kill()  # by its pid
        await proc.wait()
        raise AssertionError("mosquitto_pub did not finish in time") from None
    assert proc.returncode == 0, (out, err)


async def share_nodes(cluster: Cluster, nodes: list[TidingsNode], count: int) -> None:
    """Wait until every node's roster of the one group it follows has ``count`` nodes."""
    for node in nodes:
        await wait_for(lambda n=node: _is(metric(cluster, n, "tidings_mqtt_share_nodes"),
                                          count),
                       what=f"{node.name} to see {count} nodes in the group")


async def _is(value: Any, want: float) -> bool:
    return bool(await value == want)


async def test_a_share_group_across_two_nodes_gets_each_message_once(
        tidings_nodes: NodeFactory, redis_url: str, cluster: Cluster,
        clients: list[Any]) -> None:
    """Members of ``$share/meters/...`` on node 1 and node 2: 40 messages published
    by ``mosquitto_pub`` (5.0, QoS 1) to node 1 reach the group once each in total
    [MQTT-4.8.2-2], both members get some (one node per message, by offset), and
    nothing comes twice."""
    n1, n2 = tidings_nodes.start(2, redis_env(redis_url, TIDINGS_MQTT_CLUSTER_TTL=TTL),
                                 names=["share-a", "share-b"])
    token = cluster.token("meter-reader")
    flt = "$share/meters/meters/reading/#"
    members = [await paho(clients, n.mqtt_port, f"reader-{i}", token=token, v5=True)
               for i, n in enumerate((n1, n2))]
    for m in members:
        assert await m.subscribe((flt, 1)) == [1]
    await share_nodes(cluster, [n1, n2], 2)

    lines = b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(40))
    meter = cluster.token("meter", publish=["meters/#"])
    await mosquitto_pub(n1, meter, "-V", "mqttv5", "-q", "1", "-t", "meters/reading/hall",
                        "-l", stdin=lines)
    got: list[list[int]] = [[], []]

    def drained() -> bool:
        for i, m in enumerate(members):
            while not m.messages.empty():
                got[i].append(orjson.loads(m.messages.get_nowait().payload)["n"])
        return sum(map(len, got)) >= 40

    await wait_for(drained, what="40 messages over the two members")
    assert sorted(got[0] + got[1]) == list(range(40))
    assert got[0] and got[1]
    for m in members:
        await m.no_message()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
async def test_a_share_group_moves_to_the_members_left_when_a_node_goes(
        tidings_nodes: NodeFactory, redis_server: RedisServer, cluster: Cluster,
        clients: list[Any], how: str) -> None:
    """Node 2, with a member of ``$share/alarms/...``, is stopped by PID: killed
    (SIGKILL: its roster entry expires after ``mqtt.cluster_ttl``) or stopped
    (SIGTERM: it leaves the roster as it stops). Once node 1 has read the roster
    again (every third of ``cluster_ttl``), every message reaches node 1's member."""
    n1, n2 = tidings_nodes.start(2, redis_env(redis_server.url, TIDINGS_MQTT_CLUSTER_TTL=TTL),
                                 names=[f"alarm-a-{how}", f"alarm-b-{how}"])
    token = cluster.token("alarm-desk")
    flt = "$share/alarms/alarms/#"
    survivor = await paho(clients, n1.mqtt_port, "desk-1", token=token, v5=True)
    doomed = await paho(clients, n2.mqtt_port, "desk-2", token=token, v5=True)
    for m in (survivor, doomed):
        assert await m.subscribe((flt, 1)) == [1]
    await share_nodes(cluster, [n1, n2], 2)

    if how == "SIGKILL":
        n2.kill()
    else:
        n2.stop()
    await share_nodes(cluster, [n1], 1)
    await publish_all(cluster, n1, "alarms/fire/east", range(20))
    assert await numbers(survivor, 20) == list(range(20))
    await survivor.no_message()


async def test_no_client_reaches_the_nodes_control_topic(
        pair: list[TidingsNode], cluster: Cluster, clients: list[Any]) -> None:
    """The nodes' requests travel on ``$tidings/mqtt/{node}``, a ``$`` topic: a 5.0
    PUBLISH there is refused in its PUBACK, a SUBSCRIBE in its SUBACK
    [MQTT-4.7.2-1], the HTTP API refuses it, and a session on that node is not
    disturbed (it still gets its messages, no DISCONNECT)."""
    n1, n2 = pair
    control = f"$tidings/mqtt/{n1.name}"
    victim = await paho(clients, n1.mqtt_port, "gauge-9", token=cluster.token("vera"),
                        v5=True, clean=False, connect_props=SESSION)
    assert await victim.subscribe(("plant/vera/gauge", 1)) == [1]
    intruder = await paho(clients, n2.mqtt_port, "intruder", token=cluster.token("ivan"),
                          v5=True)
    release = orjson.dumps({"op": "release", "client": "gauge-9", "resume": False,
                            "id": 1, "from": n2.name})
    assert await intruder.publish(control, release, qos=1) >= 0x80
    codes = await intruder.subscribe((control, 1), ("$tidings/#", 1))
    assert len(codes) == 2 and min(codes) >= 0x80
    status, _ = await cluster.api(n2, "POST", "/v1/publish",
                                  {"topic": control, "data": orjson.loads(release)})
    assert 400 <= status < 500
    await cluster.publish(n2, "plant/vera/gauge", {"n": 1})
    assert await numbers(victim, 1) == [1]
    assert victim.disconnects.empty()


async def test_a_session_on_a_killed_node_resumes_from_the_store(
        tidings_nodes: NodeFactory, redis_server: RedisServer, cluster: Cluster,
        clients: list[Any]) -> None:
    """Node 1 holds a persistent session and is killed (SIGKILL, by PID) before its
    liveness entry expires (``cluster_ttl`` 30 s here): a CONNECT on node 2 asks it,
    gets no answer within ``mqtt.takeover_timeout`` (1 s) and resumes what the
    store holds: the subscription, and the message queued while it was offline."""
    env = redis_env(redis_server.url, TIDINGS_MQTT_CLUSTER_TTL="30",
                    TIDINGS_MQTT_TAKEOVER_TIMEOUT="1")
    n1, n2 = tidings_nodes.start(2, env, names=["held-a", "held-b"])
    token = cluster.token("kim")
    topic = "plant/kim/boiler"
    await kept_offline(cluster, clients, n1, "boiler-1", token, topic)
    await cluster.publish(n2, topic, {"n": 0})
    # node 1 queued it (its subscription, its session): wait until Redis has it
    store = RedisStore(redis_server.url)
    await store.open()
    try:
        await wait_for(lambda: _queued(store, "boiler-1", 1), what="node 1's queue written")
    finally:
        await store.close()

    n1.kill()
    second = await resumed(clients, n2, "boiler-1", token)
    assert await numbers(second, 1) == [0]
    await cluster.publish(n2, topic, {"n": 1})
    assert await numbers(second, 1) == [1]


async def test_a_restarted_node_leaves_another_nodes_sessions_alone(
        tidings_nodes: NodeFactory, redis_server: RedisServer, cluster: Cluster,
        clients: list[Any]) -> None:
    """Node 1 keeps an offline persistent session; node 2 restarts (SIGTERM by PID,
    then started again under its name) and does not take that session up from the
    shared store: a message published next is queued once, by node 1, and the
    client resuming there gets it once [MQTT-4.3.2]."""
    env = redis_env(redis_server.url, TIDINGS_MQTT_CLUSTER_TTL=TTL)
    n1, n2 = tidings_nodes.start(2, env, names=["keep-a", "keep-b"])
    token = cluster.token("lea")
    topic = "plant/lea/silo"
    await kept_offline(cluster, clients, n1, "silo-4", token, topic)

    n2.stop()
    n2.launch()
    n2.wait_ready()
    await cluster.publish(n2, topic, {"n": 0})
    again = await resumed(clients, n1, "silo-4", token)
    assert await numbers(again, 1) == [0]
    await again.no_message()
