"""Issue 10, sizes: the probes that dropped every subscriber as a slow consumer.

One ``limits.max_message_size`` holds at publish on every edge, and what the
server chooses to send at once (recovery, retained messages, the inbox, a
read-all event) is paged or paced, so a client that reads is never closed.
Each test replays a probe from the issue over real sockets.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from conftest import WAIT, MakeNode, Node
from support import inbox as inbox_store
from support.mqtt import (
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    PUBACK,
    Raw,
    clients,  # noqa: F401  (the fixture)
    metric,
    paho,
    pub_token,
    publish_packet,
)
from support.stores import clock, open_store, store

pytest_plugins = ["support.redis_servers"]  # the redis backends' session servers

KIB = 1024
SLOW = "tidings_slow_consumers_total"

# the store contract's fixtures: the read-all event test runs on every backend
_STORE_FIXTURES = (clock, open_store, store)


@pytest.fixture
def max_inbox() -> int:
    """The stores' inbox cap here: above MAX_EVENT_IDS, so one inbox can pass it."""
    from tidings.store.base import MAX_EVENT_IDS

    return 2 * MAX_EVENT_IDS


async def batch(node: Node, messages: list[dict[str, Any]]) -> list[str]:
    """POST /v1/publish/batch in bodies under api.max_body_size; the offsets, in order."""
    offsets: list[str] = []
    step = max(1, (768 * KIB) // max(len(orjson.dumps(messages[0])), 1))
    for i in range(0, len(messages), step):
        status, body = await node.api("POST", "/v1/publish/batch",
                                      {"messages": messages[i:i + step]})
        assert status == 200, body
        offsets += body["offsets"]
    return offsets


async def still_served(node: Node, *clients_: Any) -> None:
    """Each WS client still answers, and nobody was counted as a slow consumer."""
    for c in clients_:
        assert (await c.request("ping"))["ok"]
    assert await metric(node, SLOW) == 0


def reply_size(reply: dict[str, Any]) -> int:
    return len(orjson.dumps(reply))


# -- one limit at publish, on every edge --------------------------------------------------

async def test_http_publishes_over_the_limit_are_refused_and_nobody_is_dropped(
        node: Node) -> None:
    """Two 600 KiB HTTP publishes used to be accepted and close every subscriber 4008."""
    sub = await node.client("alice")
    assert (await sub.request("subscribe", topic="big/#"))["ok"]
    huge = "x" * (600 * KIB)
    for _ in range(2):
        status, body = await node.api("POST", "/v1/publish", {"topic": "big/a", "data": huge})
        assert (status, body["error"]["code"]) == (413, "too_large")
    status, body = await node.api("POST", "/v1/publish/batch", {"messages": [
        {"topic": "big/small", "data": 1}, {"topic": "big/a", "data": huge}]})
    assert (status, body["error"]["code"]) == (413, "too_large")
    assert "messages[1]" in body["error"]["message"]
    # exactly the limit passes (a JSON string of 65534 characters is 65536 bytes)
    limit = node.settings.limits.max_message_size
    await node.publish("big/max", "y" * (limit - 2))
    push = await sub.push()
    assert (push["topic"], len(push["data"])) == ("big/max", limit - 2)
    await sub.no_push(0.1)  # the batch stored nothing, not even its small message
    await still_served(node, sub)


async def test_ws_publish_over_the_limit_gets_too_large_and_stays_open(node: Node) -> None:
    """The frame bound leaves room for a publish of max_message_size data: data over
    the limit gets a too_large reply, not a 1009 close."""
    limit = node.settings.limits.max_message_size
    assert node.settings.ws.max_message_size > limit + node.settings.topics.max_length
    c = await node.client("alice", token=node.token("alice", publish=["#"]))
    ok = await c.request("publish", topic="t/max", data="a" * (limit - 2))
    assert ok["ok"], ok
    over = await c.request("publish", topic="t/max", data="a" * (limit - 1))
    assert over["error"]["code"] == "too_large"
    assert (await c.request("ping"))["ok"]


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_publish_over_the_limit_is_refused(
        node: Node, clients: list[Any], v5: bool) -> None:  # noqa: F811
    """A 2 MiB PUBLISH used to get PUBACK 0 and drop every subscriber. The packet
    bound now derives from limits.max_message_size and is advertised in CONNACK
    (5.0); over it, or over the data limit within it: DISCONNECT 0x95 (5.0), close
    (3.1.1). The subscribers stay."""
    port = node.app.mqtt_port
    limit = node.settings.limits.max_message_size
    packet_max = node.settings.mqtt.max_packet_size
    assert limit < packet_max < 2 * limit
    ws = await node.client("alice")
    assert (await ws.request("subscribe", topic="m/#"))["ok"]
    watcher = await paho(clients, port, "w", token=node.token("alice"), v5=True)
    await watcher.subscribe(("m/#", 1))
    for payload in (b"z" * (2048 * KIB), b"z" * (limit + 1)):  # over the packet; the data
        r, ack = await Raw.connect(port, "p", v5=v5, username="d", password=pub_token(node))
        clients.append(r)
        if v5:
            assert ack.properties()[MAXIMUM_PACKET_SIZE] == [packet_max]
        await r.send(publish_packet("m/big", payload, qos=1, pid=1, v5=v5))
        got = await r.closed()
        assert [(p.type, p.reason) for p in got] == ([(DISCONNECT, 0x95)] if v5 else [])
    r, _ = await Raw.connect(port, "p", v5=v5, username="d", password=pub_token(node))
    clients.append(r)
    await r.send(publish_packet("m/max", b"k" * limit, qos=1, pid=2, v5=v5))
    assert (await r.recv()).type == PUBACK
    assert len((await watcher.message()).payload) == limit
    assert (await ws.push())["topic"] == "m/max"
    await still_served(node, ws)


async def test_a_burst_of_largest_messages_reaches_a_reading_client(node: Node,
                                                                    clients: list[Any]  # noqa: F811
                                                                    ) -> None:
    """ws.outbound_buffer holds a burst of the largest pushes (validated at start), so
    eight maximum-size messages published at once reach WS and MQTT readers."""
    ws = await node.client("alice")
    assert (await ws.request("subscribe", topic="burst"))["ok"]
    mq = await paho(clients, node.app.mqtt_port, "b", token=node.token("alice"), v5=True)
    await mq.subscribe(("burst", 0))
    data = "q" * (node.settings.limits.max_message_size - 2)
    sent = await batch(node, [{"topic": "burst", "data": data}] * 8)
    assert [(await ws.push())["offset"] for _ in sent] == sent
    for _ in sent:
        assert len((await mq.message()).payload) == len(data) + 2
    await still_served(node, ws)


# -- server-chosen bursts: paged replies ---------------------------------------------------

async def follow(client: Any, topic: str, since: Any) -> tuple[list[dict[str, Any]], int]:
    """Subscribe with ``since`` and follow ``next`` to the end: (recovered, replies)."""
    got: list[dict[str, Any]] = []
    replies = 0
    deadline = time.monotonic() + WAIT * 4
    while True:
        reply = await client.request("subscribe", topic=topic, since=since)
        assert reply["ok"], reply
        replies += 1
        assert reply_size(reply) <= 300 * KIB  # limits.max_reply_size and the envelope
        got += reply["recovered"]
        if "next" not in reply:
            assert reply["complete"] is True
            return got, replies
        assert reply["complete"] is False
        since = reply["next"]
        assert time.monotonic() < deadline, "next never ended"


async def test_since_recovery_is_paged(make_node: MakeNode) -> None:
    """300 x 4 KiB messages recovered at once used to close the client 4008 with no
    reply; now each reply holds what fits, and `next` continues."""
    node = await make_node(history__size=1000)
    start = await node.publish("hist", "first")
    sent = await batch(node, [{"topic": "hist", "data": "h" * (4 * KIB)}] * 300)
    c = await node.client("alice")
    got, replies = await follow(c, "hist", start)
    assert [m["offset"] for m in got] == sent  # all, in order, once
    assert replies >= 4
    await still_served(node, c)


async def test_since_map_is_bounded_in_topics_and_bytes(make_node: MakeNode) -> None:
    """A 200-topic since map is refused (limits.max_since_topics); 100 topics with
    history are recovered a reply at a time, never more than limits.max_reply_size."""
    node = await make_node(history__size=1000)
    before = {f"many/{i}": await node.publish(f"many/{i}", 0) for i in range(200)}
    pad = "s" * (4 * KIB)
    sent = await batch(node, [{"topic": f"many/{i}", "data": pad}
                              for i in range(100) for _ in range(3)])
    c = await node.client("alice")
    refused = await c.request("subscribe", topic="many/#", since=before)
    assert refused["error"]["code"] == "bad_request"
    assert "limits.max_since_topics" in refused["error"]["message"]
    first100 = {t: o for t, o in before.items() if int(t.split("/")[1]) < 100}
    got, replies = await follow(c, "many/#", first100)
    assert sorted(m["offset"] + m["topic"] for m in got) == sorted(
        o + f"many/{i // 3}" for i, o in enumerate(sent))
    assert replies >= 4
    await still_served(node, c)


async def test_connect_recovery_is_paged(node: Node) -> None:
    """300 missed notifications of 4 KiB at connect: the reply holds what fits, with
    complete: false and `next`; the inbox has them all."""
    first = await node.client("alice")
    since = first.hello["offset"]
    await first.close()
    for i in range(0, 300, 50):
        await asyncio.gather(*[node.api("POST", "/v1/notify", {
            "users": ["alice"], "title": f"n{j}", "data": {"pad": "n" * (4 * KIB)}})
            for j in range(i, i + 50)])
    c = await node.client("alice", since=since)
    hello = c.hello
    assert hello["complete"] is False and 0 < len(hello["recovered"]) < 300
    assert reply_size(hello) <= 300 * KIB
    assert hello["next"] == hello["recovered"][-1]["offset"]
    assert hello["unread"] == 300
    await still_served(node, c)


async def test_inbox_reply_is_bounded(node: Node) -> None:
    """100 items of 64 KiB data (6 MiB) in one `inbox` reply used to close the client;
    now a page holds what fits and `next` continues to the end."""
    pad = "i" * (node.settings.notify.max_data_size - 32)
    for i in range(0, 100, 25):
        await asyncio.gather(*[node.api("POST", "/v1/notify", {
            "users": ["alice"], "title": f"n{j}", "data": {"pad": pad}})
            for j in range(i, i + 25)])
    c = await node.client("alice")
    ids: list[str] = []
    before = None
    for _ in range(100):  # bounded: at least one item per page
        args: dict[str, Any] = {"limit": 100}
        if before is not None:
            args["before"] = before
        page = await c.request("inbox", **args)
        assert page["ok"], page
        assert reply_size(page) <= 300 * KIB
        ids += [i["id"] for i in page["items"]]
        before = page["next"]
        if before is None:
            break
    assert len(ids) == len(set(ids)) == 100
    await still_served(node, c)


async def test_read_all_event_is_bounded(make_node: MakeNode) -> None:
    """`read` all on many unread used to send every id (52,000 in the probe) in the
    reply and the event, past the outbound bound. Now an `all` change of more than
    1000 lists none: the reply and the event say `all: true`."""
    node = await make_node(ws__outbound_buffer=64 * KIB, limits__max_message_size=4 * KIB,
                           notify__max_inbox=5000,  # above MAX_EVENT_IDS: 3000 stay
                           limits__max_reply_size=16 * KIB, notify__max_data_size=4 * KIB)
    for i in range(0, 3000, 100):
        await asyncio.gather(*[node.api("POST", "/v1/notify", {
            "users": ["alice"], "title": "t"}) for _ in range(i, i + 100)])
    other = await node.client("alice", device="other")
    me = await node.client("alice", device="me")
    reply = await me.request("read", all=True)
    assert reply["ok"] and reply["unread"] == 0
    assert reply["all"] is True and "changed" not in reply
    for c in (me, other):
        while (ev := await c.push())["type"] != "read":
            pass
        assert ev["all"] is True and "ids" not in ev and ev["unread"] == 0
    few = await me.request("unread", ids=[])
    assert few["ok"] is False  # (ids must be non-empty: unchanged behaviour)
    await still_served(node, me, other)


# -- server-chosen bursts: retained messages, paced ----------------------------------------

async def test_retained_burst_is_paced_over_websocket_and_mqtt(node: Node,
                                                               clients: list[Any]  # noqa: F811
                                                               ) -> None:
    """2,000 retained messages (2 MiB) on subscribe "#" used to close the client 4008;
    they now go out no faster than the client reads, WS and MQTT alike."""
    pad = "r" * KIB
    await batch(node, [{"topic": f"ret/{i}", "data": pad, "retain": True}
                       for i in range(2000)])
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="#"))["ok"]
    got: set[str] = set()
    while len(got) < 2000:
        p = await c.push()
        if p["topic"].startswith("ret/"):
            assert p["retained"] is True
            got.add(p["topic"])
    mq = await paho(clients, node.app.mqtt_port, "ret", token=node.token("alice"), v5=True)
    await mq.subscribe(("#", 0))
    seen: set[str] = set()
    while len(seen) < 2000:
        m = await mq.message()
        if m.topic.startswith("ret/"):
            assert m.retain
            seen.add(m.topic)
    await node.publish("ret/live", "after")
    while (p := await c.push())["topic"] != "ret/live":
        pass
    await still_served(node, c)


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
async def test_resumed_session_queue_is_paced(node: Node, clients: list[Any],  # noqa: F811
                                              transport: str) -> None:
    """A persistent session's queue (100 x 60 KiB, QoS 1) used to be sent at once on
    reconnect, one quota of it (64 messages, 3.8 MB) past the outbound bound: the
    client was dropped on every reconnect and could never catch up."""
    port = node.app.mqtt_port if transport == "tcp" else node.app.ws_port
    kw: dict[str, Any] = {"token": node.token("alice"), "clean": False,
                          "transport": transport}
    p = await paho(clients, port, f"persist-{transport}", **kw)
    await p.subscribe(("q/#", 1))
    await asyncio.to_thread(p.close)
    data = "d" * (60 * KIB)
    sent = await batch(node, [{"topic": "q/x", "data": data}] * 100)
    again = await paho(clients, port, f"persist-{transport}", **kw)
    for _ in sent:
        m = await again.message()
        assert (m.topic, len(m.payload)) == ("q/x", len(data) + 2)
    assert await metric(node, SLOW) == 0


# -- settings ------------------------------------------------------------------------------

def test_old_size_settings_keep_working_or_say_what_to_set(tmp_path: Any) -> None:
    """The sizes derive from limits.max_message_size (0 = derived). The old
    mqtt.max_packet_size default still loads, lowered to ws.outbound_buffer (a
    larger packet could be published but never delivered); the
    old ws.max_message_size default is too small for a 64 KiB publish and its
    envelope, and the error says what to set; an outbound buffer that cannot hold a
    reply and a burst of the largest pushes is refused."""
    from tidings import config

    s = config.load(None, {})
    assert s.ws.max_message_size > 2 * s.limits.max_message_size
    assert s.limits.max_message_size < s.mqtt.max_packet_size < 2 * s.limits.max_message_size
    assert s.ws.outbound_buffer >= s.limits.max_reply_size + 4 * config.push_frame_bound(s)
    old = config.load(None, {"TIDINGS_MQTT_MAX_PACKET_SIZE": "268435455"})
    assert old.mqtt.max_packet_size == old.ws.outbound_buffer
    with pytest.raises(config.ConfigError, match=r"ws\.max_message_size: 65536 cannot hold "
                                                 r".* set at least \d+, or 0 to derive it"):
        config.load(None, {"TIDINGS_WS_MAX_MESSAGE_SIZE": "65536"})
    mib = {"TIDINGS_LIMITS_MAX_MESSAGE_SIZE": str(1024 * KIB)}
    with pytest.raises(config.ConfigError, match=r"limits\.max_reply_size: .*set at least"):
        config.load(None, mib)
    mib["TIDINGS_LIMITS_MAX_REPLY_SIZE"] = str(2048 * KIB)
    with pytest.raises(config.ConfigError, match=r"ws\.outbound_buffer: .*set at least \d+"):
        config.load(None, mib)
    big = config.load(None, {**mib, "TIDINGS_WS_OUTBOUND_BUFFER": str(8 * 1024 * KIB)})
    assert big.mqtt.max_packet_size > 1024 * KIB


async def test_read_all_event_lists_no_ids_past_1000_on_every_store(store: Any) -> None:
    """SQLite and Redis (plain and cluster) alike: an `all` change of more than
    MAX_EVENT_IDS items publishes an event without ids; up to it, with them."""
    from tidings.store.base import MAX_EVENT_IDS, events_topic

    for n in (3, MAX_EVENT_IDS + 1):
        user = f"u{n}"
        for i in range(0, n, 200):
            await asyncio.gather(*[inbox_store.send(store, [user])
                                   for _ in range(i, min(n, i + 200))])
        change = await store.mark(user, "read", None, device="d", policy=inbox_store.policy)
        assert len(change.changed) == n and change.unread == 0
        event = inbox_store.payload(change, events_topic(user))
        assert event["all"] is True and event["unread"] == 0
        assert ("ids" in event) is (n <= MAX_EVENT_IDS)
