"""The WebSocket edge end to end: a real node on loopback, real ``websockets`` clients.

Each test names the user-visible behaviour it pins (DESIGN.md, "WebSocket
protocol", "Topics and permissions", "Guarantees"). Negative checks ("this
client got nothing") are made deterministic with a *marker*: every client
also subscribes to ``sync/marker``; after the publications under test, one
marker is published, and since one node delivers in publish order on each
connection, whatever a client got before the marker is all it will get.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Origin, Subprotocol

from conftest import JWT_SECRET, WAIT, Client, MakeNode, Node
from tidings.auth import TokenAuthority

MARKER = "sync/marker"


# -- helpers -------------------------------------------------------------------------



async def with_marker(c: Client) -> Client:
    """Subscribe ``c`` to the marker topic (see the module docstring)."""
    r = await c.request("subscribe", topic=MARKER)
    assert r["ok"], r
    return c


async def until_marker(node: Node, *clients: Client) -> list[list[dict[str, Any]]]:
    """Publish a marker; return, per client, every push that arrived before it."""
    await node.publish(MARKER, {"marker": True})
    got: list[list[dict[str, Any]]] = []
    for c in clients:
        pushes: list[dict[str, Any]] = []
        while True:
            p = await c.push()
            if p.get("topic") == MARKER:
                break
            pushes.append(p)
        got.append(pushes)
    return got


async def raw_connect(node: Node, subprotocols: list[str] | None = None,
                      **kw: Any) -> ClientConnection:
    """A bare ``websockets`` connection (no Tidings helper reading in the background)."""
    protos = [Subprotocol(p) for p in subprotocols] if subprotocols is not None else None
    return await websockets.connect(node.ws_url, subprotocols=protos, open_timeout=WAIT,
                                    max_size=None, **kw)


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), WAIT)


async def metric(node: Node, name: str, **labels: str) -> float:
    """One sample from ``GET /metrics`` (0 when the series is absent)."""
    status, text = await node.api("GET", "/metrics", key=None)
    assert status == 200, text
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{inner}}}" if inner else name
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == series:
            return float(value)
    return 0.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it is true, at most ``WAIT`` seconds."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def error_of(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    assert set(reply["error"]) == {"code", "message"} and reply["error"]["message"], reply
    return str(reply["error"]["code"])


def past_authority(seconds_ago: float) -> TokenAuthority:
    """Issues tokens as if it were ``seconds_ago`` earlier (a fake clock, not a sleep)."""
    return TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=60,
                          clock=lambda: time.time() - seconds_ago)


# -- connect ---------------------------------------------------------------------------


async def test_connect_reply_fields(node: Node) -> None:
    c = await node.client("alice", device="kitchen-display")
    hello = c.hello
    assert hello["user"] == "alice"
    assert hello["device"] == "kitchen-display"
    assert hello["node"] == "test-node"
    assert hello["unread"] == 0
    assert "offset" in hello and (hello["offset"] is None or isinstance(hello["offset"], str))
    assert hello["recovered"] == []
    assert hello["complete"] is True


async def test_connect_without_device_gets_a_distinct_generated_id(node: Node) -> None:
    a = await node.client("alice")
    b = await node.client("alice")
    assert isinstance(a.hello["device"], str) and a.hello["device"]
    assert a.hello["device"] != b.hello["device"]


async def test_bad_device_id_is_an_error_then_close_4400(node: Node) -> None:
    c = await node.client(connect=False)
    r = await c.request("connect", token=node.token("alice"), device="x" * 200)
    assert error_of(r) == "bad_request" and "device" in r["error"]["message"]
    assert (await c.closed())[0] == 4400


# -- encodings -------------------------------------------------------------------------


async def test_json_is_the_default_when_no_subprotocol_is_offered(node: Node) -> None:
    ws = await raw_connect(node, subprotocols=None)
    try:
        assert ws.subprotocol is None
        await ws.send(orjson.dumps({"op": "connect", "id": 1,
                                    "token": node.token("alice")}).decode())
        raw = await recv(ws)
        assert isinstance(raw, str)  # a text frame
        reply = orjson.loads(raw)
        assert reply["id"] == 1 and reply["ok"] is True and reply["user"] == "alice"
    finally:
        await ws.close()


async def test_json_subprotocol_is_selected_when_offered(node: Node) -> None:
    ws = await raw_connect(node, subprotocols=["tidings.v1.json"])
    try:
        assert ws.subprotocol == "tidings.v1.json"
    finally:
        await ws.close()


async def test_msgpack_uses_binary_frames(node: Node) -> None:
    ws = await raw_connect(node, subprotocols=["tidings.v1.msgpack"])
    try:
        assert ws.subprotocol == "tidings.v1.msgpack"
        await ws.send(msgpack.packb({"op": "connect", "id": 1, "token": node.token("alice")}))
        raw = await recv(ws)
        assert isinstance(raw, bytes)  # a binary frame
        assert msgpack.unpackb(raw)["user"] == "alice"
        await ws.send(msgpack.packb({"op": "subscribe", "id": 2, "topic": "news/sports"}))
        reply = msgpack.unpackb(await recv(ws))
        assert reply["id"] == 2 and reply["ok"] is True
        await node.publish("news/sports", {"score": "1-0"})
        raw = await recv(ws)
        assert isinstance(raw, bytes)
        msg = msgpack.unpackb(raw)
        assert msg["type"] == "message" and msg["topic"] == "news/sports"
        assert msg["data"] == {"score": "1-0"} and msg["retained"] is False
    finally:
        await ws.close()


async def test_msgpack_carries_raw_bytes_data(node: Node) -> None:
    blob = bytes(range(256))
    pub = await node.client("alice", encoding="msgpack",
                            token=node.token("alice", publish=["blobs/#"]))
    sub_mp = await node.client("bob", encoding="msgpack")
    sub_json = await node.client("carol")
    for c in (sub_mp, sub_json):
        assert (await c.request("subscribe", topic="blobs/raw"))["ok"]
    r = await pub.request("publish", topic="blobs/raw", data=blob)
    assert r["ok"], r
    got = await sub_mp.push()
    assert got["data"] == blob and isinstance(got["data"], bytes)
    assert got["offset"] == r["offset"]
    # DESIGN.md "Payloads": bytes that are not JSON reach a JSON client as data_b64.
    import base64
    got_json = await sub_json.push()
    assert "data" not in got_json
    assert base64.b64decode(got_json["data_b64"]) == blob


# -- subscribe and routing -------------------------------------------------------------


async def test_wildcard_and_exact_routing(node: Node) -> None:
    filters = ["news/+", "news/#", "+/sports", "news/sports"]
    clients = {}
    for f in filters:
        c = await with_marker(await node.client("alice"))
        r = await c.request("subscribe", topic=f)
        assert r["ok"], r
        clients[f] = c
    topics = ["news/sports", "news/tech", "news/sports/live", "weather/sports", "news"]
    for t in topics:
        await node.publish(t, {"t": t})
    got = await until_marker(node, *clients.values())
    seen = {f: [p["topic"] for p in pushes] for f, pushes in zip(filters, got, strict=True)}
    assert seen == {
        "news/+": ["news/sports", "news/tech"],
        "news/#": ["news/sports", "news/tech", "news/sports/live", "news"],
        "+/sports": ["news/sports", "weather/sports"],
        "news/sports": ["news/sports"],
    }


async def test_overlapping_subscriptions_deliver_once(node: Node) -> None:
    c = await with_marker(await node.client("alice"))
    for f in ("news/+", "news/#", "news/sports", "+/sports"):
        assert (await c.request("subscribe", topic=f))["ok"]
    await node.publish("news/sports", {"n": 1})
    await node.publish("news/sports", {"n": 2})
    (pushes,) = await until_marker(node, c)
    assert [p["data"] for p in pushes] == [{"n": 1}, {"n": 2}]


async def test_unsubscribe_stops_delivery(node: Node) -> None:
    c = await with_marker(await node.client("alice"))
    assert (await c.request("subscribe", topic="news/+"))["ok"]
    await node.publish("news/a", {"n": 1})
    assert (await c.push())["data"] == {"n": 1}
    r = await c.request("unsubscribe", topic="news/+")
    assert r["ok"], r
    await node.publish("news/a", {"n": 2})
    (pushes,) = await until_marker(node, c)
    assert pushes == []


async def test_retained_from_http_is_delivered_on_subscribe(node: Node) -> None:
    await node.publish("status/door", {"open": False}, retain=True)
    await node.publish("status/door", {"open": True}, retain=True)
    for flt in ("status/door", "status/+"):
        c = await node.client("alice")
        r = await c.request("subscribe", topic=flt)
        assert r["ok"], r
        m = await c.push()
        assert m["type"] == "message" and m["topic"] == "status/door"
        assert m["retained"] is True and m["data"] == {"open": True}  # the latest only
        await c.no_push()


async def test_retained_from_ws_publish_is_delivered_on_subscribe(node: Node) -> None:
    live = await node.client("bob")
    assert (await live.request("subscribe", topic="status/lamp"))["ok"]
    pub = await node.client("alice", token=node.token("alice", publish=["status/#"]))
    r = await pub.request("publish", topic="status/lamp", data={"on": True}, retain=True)
    assert r["ok"], r
    m = await live.push()
    assert m["retained"] is False  # live delivery is not "retained"
    late = await node.client("carol")
    assert (await late.request("subscribe", topic="status/lamp"))["ok"]
    m = await late.push()
    assert m["retained"] is True and m["data"] == {"on": True} and m["offset"] == r["offset"]


# -- recovery ----------------------------------------------------------------------------


async def test_recovery_after_reconnect_returns_exactly_the_missed_messages(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="feed/1"))["ok"]
    await node.publish("feed/1", {"n": 0})
    last = (await c.push())["offset"]
    await c.close()
    missed = [await node.publish("feed/1", {"n": n}) for n in range(1, 6)]
    c2 = await with_marker(await node.client("alice"))
    r = await c2.request("subscribe", topic="feed/1", since=last)
    assert r["ok"], r
    assert [m["data"] for m in r["recovered"]] == [{"n": n} for n in range(1, 6)]
    assert [m["offset"] for m in r["recovered"]] == missed
    assert all(m["type"] == "message" and m["topic"] == "feed/1" for m in r["recovered"])
    assert r["complete"] is True and r["offset"] == missed[-1]
    (pushes,) = await until_marker(node, c2)
    assert pushes == []  # neither repeated live nor as retained


async def test_recovery_from_the_offset_of_an_empty_topic_gets_everything(node: Node
                                                                         ) -> None:
    c = await node.client("alice")
    r = await c.request("subscribe", topic="feed/2")
    assert r["ok"] and isinstance(r["offset"], str), r
    start = r["offset"]
    await c.close()
    sent = [await node.publish("feed/2", {"n": n}) for n in range(3)]
    c2 = await node.client("alice")
    r = await c2.request("subscribe", topic="feed/2", since=start)
    assert [m["offset"] for m in r["recovered"]] == sent and r["complete"] is True


async def test_recovery_reports_incomplete_when_history_was_trimmed(make_node: MakeNode
                                                                    ) -> None:
    node = await make_node(history__size=3)
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="feed/1"))["ok"]
    await node.publish("feed/1", {"n": 0})
    last = (await c.push())["offset"]
    await c.close()
    for n in range(1, 7):
        await node.publish("feed/1", {"n": n})
    c2 = await node.client("alice")
    r = await c2.request("subscribe", topic="feed/1", since=last)
    assert r["ok"], r
    assert [m["data"] for m in r["recovered"]] == [{"n": 4}, {"n": 5}, {"n": 6}]
    assert r["complete"] is False


async def test_recovery_for_a_wildcard_takes_since_per_topic(node: Node) -> None:
    a0 = await node.publish("scores/a", {"a": 0})
    b0 = await node.publish("scores/b", {"b": 0})
    await node.publish("scores/a", {"a": 1})
    await node.publish("scores/b", {"b": 1})
    await node.publish("scores/a", {"a": 2})
    c = await node.client("alice")
    r = await c.request("subscribe", topic="scores/+", since={"scores/a": a0, "scores/b": b0})
    assert r["ok"], r
    by_topic: dict[str, list[Any]] = {}
    for m in r["recovered"]:
        by_topic.setdefault(m["topic"], []).append(m["data"])
    assert by_topic == {"scores/a": [{"a": 1}, {"a": 2}], "scores/b": [{"b": 1}]}
    assert r["complete"] is True


async def test_since_string_with_a_wildcard_filter_is_an_error(node: Node) -> None:
    off = await node.publish("scores/a", {"a": 0})
    c = await node.client("alice")
    r = await c.request("subscribe", topic="scores/+", since=off)
    assert error_of(r) == "bad_request" and "object" in r["error"]["message"]
    r = await c.request("subscribe", topic="scores/+", since={"weather/x": off})
    assert error_of(r) == "bad_request"  # names a topic the filter does not match
    assert (await c.request("ping"))["ok"]  # still usable


# -- publish over WS ---------------------------------------------------------------------


async def test_ws_publish_returns_offset_and_reaches_other_subscribers(node: Node) -> None:
    sub = await node.client("bob")
    assert (await sub.request("subscribe", topic="chat/+"))["ok"]
    pub = await node.client("alice", token=node.token("alice", publish=["chat/#"]))
    r = await pub.request("publish", topic="chat/room1", data={"text": "hi"})
    assert r["ok"] and isinstance(r["offset"], str), r
    m = await sub.push()
    assert m["topic"] == "chat/room1" and m["data"] == {"text": "hi"}
    assert m["offset"] == r["offset"]
    status, body = await node.api("GET", "/v1/topics/chat/room1/history")
    assert status == 200 and [i["offset"] for i in body["items"]] == [r["offset"]]


async def test_ws_publish_without_a_grant_is_forbidden(node: Node) -> None:
    sub = await with_marker(await node.client("bob"))
    assert (await sub.request("subscribe", topic="chat/+"))["ok"]
    pub = await node.client("alice")  # a token without a publish claim
    r = await pub.request("publish", topic="chat/room1", data={"text": "spam"})
    assert error_of(r) == "forbidden"
    limited = await node.client("alice", token=node.token("alice", publish=["chat/room2"]))
    r = await limited.request("publish", topic="chat/room1", data={"text": "spam"})
    assert error_of(r) == "forbidden"
    (pushes,) = await until_marker(node, sub)
    assert pushes == []


# -- permissions -------------------------------------------------------------------------


async def test_another_users_private_topic_is_forbidden(node: Node) -> None:
    alice = await node.client("alice")
    for flt in ("users/bob/x", "users/bob/#", "users/+/x", "users/#"):
        r = await alice.request("subscribe", topic=flt)
        assert error_of(r) == "forbidden", flt


async def test_own_private_topic_is_allowed(node: Node) -> None:
    alice = await node.client("alice")
    r = await alice.request("subscribe", topic="users/alice/x")
    assert r["ok"], r
    await node.publish("users/alice/x", {"for": "alice"})
    assert (await alice.push())["data"] == {"for": "alice"}


async def test_private_messages_never_reach_another_user_through_hash(node: Node) -> None:
    alice = await with_marker(await node.client("alice"))
    assert (await alice.request("subscribe", topic="#"))["ok"]
    bob = await node.client("bob")
    assert (await bob.request("subscribe", topic="users/bob/x"))["ok"]
    await node.publish("users/bob/x", {"secret": 1})
    await node.publish("users/alice/x", {"mine": 1})
    assert (await bob.push())["data"] == {"secret": 1}
    (pushes,) = await until_marker(node, alice)
    assert [p["topic"] for p in pushes] == ["users/alice/x"]


async def test_token_subscribe_claim_limits_subscriptions(node: Node) -> None:
    c = await node.client("alice", token=node.token("alice", subscribe=["news/#"]))
    assert (await c.request("subscribe", topic="news/sports"))["ok"]
    assert (await c.request("subscribe", topic="news/+"))["ok"]
    assert error_of(await c.request("subscribe", topic="weather/today")) == "forbidden"
    assert error_of(await c.request("subscribe", topic="#")) == "forbidden"  # no widening


# -- authentication ----------------------------------------------------------------------


async def test_bad_token_gets_an_error_then_close_4001(node: Node) -> None:
    c = await node.client(connect=False)
    r = await c.request("connect", token="not.a.token")
    assert error_of(r) == "token_invalid"
    assert (await c.closed())[0] == 4001


async def test_token_signed_with_another_secret_is_rejected(node: Node) -> None:
    other = TokenAuthority("another-secret-0123456789-abcdefghij", max_ttl=86400,
                           default_ttl=60)
    c = await node.client(connect=False)
    r = await c.request("connect", token=other.issue("alice"))
    assert error_of(r) == "token_invalid"
    assert (await c.closed())[0] == 4001


async def test_expired_token_closes_4001(node: Node) -> None:
    c = await node.client(connect=False)
    r = await c.request("connect", token=past_authority(7200).issue("alice", ttl=60))
    assert error_of(r) == "token_expired"
    assert (await c.closed())[0] == 4001


async def test_token_expiring_while_connected_closes_4001(node: Node) -> None:
    # Issued "58.5 s ago" with a 60 s lifetime: it expires within about 1.5 s.
    token = past_authority(58.5).issue("alice", ttl=60)
    c = await node.client("alice", token=token)
    assert (await c.closed())[0] == 4001


async def test_no_token_without_anonymous_access_closes_4001(node: Node) -> None:
    c = await node.client(connect=False)
    r = await c.request("connect")
    assert error_of(r) == "token_missing"
    assert (await c.closed())[0] == 4001


async def test_anonymous_client_reads_public_topics_only(make_node: MakeNode) -> None:
    node = await make_node(auth__allow_anonymous=True)
    c = await node.client(None)
    assert c.hello["user"] is None
    assert (await c.request("subscribe", topic="news/+"))["ok"]
    for flt in ("users/alice/x", "users/#"):
        assert error_of(await c.request("subscribe", topic=flt)) == "forbidden", flt
    r = await c.request("publish", topic="news/x", data=1)
    assert error_of(r) == "forbidden"
    await node.publish("news/x", {"hello": "anyone"})
    assert (await c.push())["data"] == {"hello": "anyone"}


# -- protocol errors and bounds ----------------------------------------------------------


async def test_first_frame_not_connect_closes_4400(node: Node) -> None:
    c = await node.client(connect=False)
    r = await c.request("subscribe", topic="news/+")
    assert error_of(r) == "connect_required"
    assert (await c.closed())[0] == 4400


async def test_connect_timeout_closes_1008(make_node: MakeNode) -> None:
    node = await make_node(ws__connect_timeout=0.3)
    c = await node.client(connect=False)
    assert (await c.closed())[0] == 1008


async def test_oversized_frame_closes_1009(make_node: MakeNode) -> None:
    node = await make_node(ws__max_message_size=1024, limits__max_message_size=512)
    c = await node.client("alice")
    await c.send_raw(orjson.dumps({"op": "ping", "id": 99, "pad": "x" * 2048}).decode())
    assert (await c.closed())[0] == 1009


async def test_command_flood_closes_4029(make_node: MakeNode) -> None:
    node = await make_node(ws__commands_per_second=1, ws__commands_burst=3)
    c = await node.client("alice")
    try:
        for i in range(20):
            await c.send_raw(orjson.dumps({"op": "ping", "id": 1000 + i}).decode())
    except websockets.ConnectionClosed:
        pass
    assert (await c.closed())[0] == 4029
    assert await metric(node, "tidings_errors_total", code="rate_limited") == 1


@pytest.mark.parametrize(("frame", "code", "words"), [
    ("{not json", "malformed", "JSON"),
    ("[1, 2, 3]", "malformed", "object"),
    ('"connect"', "malformed", "object"),
    ('{"op": "frobnicate", "id": 7}', "unknown_op", "frobnicate"),
    ('{"op": 5, "id": 7}', "bad_request", "op"),
    ('{"op": "subscribe", "id": 7, "topic": 5}', "bad_request", "topic"),
    ('{"op": "subscribe", "id": 7}', "bad_request", "topic is required"),
    ('{"op": "subscribe", "id": 7, "topic": "a", "colour": 1}', "bad_request", "colour"),
    ('{"op": "publish", "id": 7, "topic": "a", "data": 1, "retain": "yes"}',
     "bad_request", "retain"),
    ('{"op": "ping", "id": "seven"}', "bad_request", "id"),
])
async def test_malformed_frames_get_error_replies_and_the_connection_stays(
        node: Node, frame: str, code: str, words: str) -> None:
    c = await node.client("alice")
    await c.send_raw(frame)
    reply = await c.unmatched()  # sent without request(): the reply matches no waiter
    assert error_of(reply) == code, reply
    assert words in reply["error"]["message"], reply
    assert reply["id"] == (7 if '"id": 7' in frame else None)
    assert (await c.request("subscribe", topic="after/error"))["ok"]
    await node.publish("after/error", {"still": "here"})
    assert (await c.push())["data"] == {"still": "here"}


async def test_binary_frame_on_json_subprotocol_closes_4400(node: Node) -> None:
    c = await node.client("alice")
    await c.send_raw(orjson.dumps({"op": "ping", "id": 1}))  # bytes: a binary frame
    assert (await c.closed())[0] == 4400


async def test_subscription_limit(make_node: MakeNode) -> None:
    node = await make_node(ws__max_subscriptions=2)
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="a"))["ok"]
    assert (await c.request("subscribe", topic="b/+"))["ok"]
    assert (await c.request("subscribe", topic="a"))["ok"]  # again: not a new one
    assert error_of(await c.request("subscribe", topic="c")) == "too_many_subscriptions"
    assert (await c.request("unsubscribe", topic="a"))["ok"]
    assert (await c.request("subscribe", topic="c"))["ok"]


async def test_topic_too_long_or_too_deep_is_bad_topic(node: Node) -> None:
    c = await node.client("alice", token=node.token("alice", publish=["#"]))
    too_long = "t/" + "x" * node.settings.topics.max_length
    too_deep = "/".join(["l"] * (node.settings.topics.max_depth + 1))
    for topic in (too_long, too_deep, "a/#/b", "a+/b", ""):
        assert error_of(await c.request("subscribe", topic=topic)) == "bad_topic", topic
    for topic in (too_long, too_deep, "a/+"):
        r = await c.request("publish", topic=topic, data=1)
        assert error_of(r) == "bad_topic", topic
    assert (await c.request("ping"))["ok"]


async def test_origin_allowlist(make_node: MakeNode) -> None:
    node = await make_node(ws__origins=["https://good.example"])
    with pytest.raises(websockets.InvalidStatus) as info:
        await raw_connect(node, origin=Origin("https://evil.example"))
    assert info.value.response.status_code == 403
    ws = await raw_connect(node, origin=Origin("https://good.example"))
    try:
        await ws.send(orjson.dumps({"op": "connect", "id": 1,
                                    "token": node.token("alice")}).decode())
        assert orjson.loads(await recv(ws))["ok"] is True
    finally:
        await ws.close()


# -- isolation ---------------------------------------------------------------------------


async def _paused_subscriber(node: Node, topic: str) -> ClientConnection:
    """A subscriber that stops reading: a tiny receive window, transport paused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", node.app.ws_port))
    ws = await websockets.connect(node.ws_url, sock=sock, open_timeout=WAIT, max_size=None,
                                  ping_interval=None)
    await ws.send(orjson.dumps({"op": "connect", "id": 1, "token": node.token("slow")}).decode())
    assert orjson.loads(await recv(ws))["ok"]
    await ws.send(orjson.dumps({"op": "subscribe", "id": 2, "topic": topic}).decode())
    assert orjson.loads(await recv(ws))["ok"]
    ws.transport.pause_reading()
    return ws


async def test_slow_consumer_is_disconnected_and_others_get_everything(make_node: MakeNode
                                                                       ) -> None:
    node = await make_node(ws__outbound_buffer=64 * 1024, limits__max_message_size=4096,
                           limits__max_reply_size=16384, notify__max_data_size=4096)
    healthy = await node.client("alice")
    assert (await healthy.request("subscribe", topic="firehose"))["ok"]
    slow = await _paused_subscriber(node, "firehose")
    assert await metric(node, "tidings_ws_connections") == 2
    chunk = "x" * 4000  # under limits.max_message_size
    sent: list[str] = []
    deadline = time.monotonic() + WAIT * 2
    for n in range(2000):  # bounded: ~16 MB at most, far beyond any loopback buffer
        sent.append(await node.publish("firehose", {"n": n, "pad": chunk}))
        if n % 16 == 0 and await metric(node, "tidings_slow_consumers_total") >= 1:
            break
        assert time.monotonic() < deadline, "the paused client was never cut off"
    assert await metric(node, "tidings_slow_consumers_total") == 1
    got = [(await healthy.push())["offset"] for _ in sent]
    assert got == sent  # every message, in order
    await healthy.no_push(0.05)

    async def only_healthy_left() -> bool:
        return await metric(node, "tidings_ws_connections") == 1
    await eventually(only_healthy_left, "the slow connection to be dropped")
    slow.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed):  # what was buffered, then the end
        async with asyncio.timeout(WAIT):
            while True:
                await slow.recv()


async def test_bad_input_from_one_client_harms_nobody_else(node: Node) -> None:
    good = await node.client("alice")
    assert (await good.request("subscribe", topic="news/+"))["ok"]
    bad = await node.client("mallory")
    for frame in ("{oops", "[]", '{"op": "nope"}', '{"op": "subscribe", "topic": 1}'):
        await bad.send_raw(frame)
        assert (await bad.unmatched())["ok"] is False
    await bad.send_raw(b"\x00\x01binary")
    assert (await bad.closed())[0] == 4400
    await node.publish("news/a", {"n": 1})
    assert (await good.push())["data"] == {"n": 1}
    assert (await good.request("ping"))["ok"]
