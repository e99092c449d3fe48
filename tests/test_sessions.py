"""The session layer on its own: a real Node (memory bus, SQLite in tmp_path),
real tokens and ACL, and a Transport of our own that records what it is handed.

The recorder is a test double of our own interface (``sessions.Transport``),
not of a real part: each test asserts what a client would see through any
edge (the reply, the pushes and their order, the error and its code).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import JWT_SECRET, WAIT, make_settings
from tidings.auth import Acl, TokenAuthority
from tidings.bus.memory import MemoryBus
from tidings.config import AclRule
from tidings.errors import BadRequest, Forbidden, TidingsError, TooLarge, Unauthorized
from tidings.metrics import Metrics
from tidings.node import Node
from tidings.notify import Notifier
from tidings.presence import Presence
from tidings.protocol.frames import Encoding
from tidings.sessions import Operations, Session
from tidings.store.sqlite import SqliteStore
from tidings.types import PayloadKind, Publication, format_offset

WIRE = "test-raw"


class Recorder:
    """A Transport that keeps everything: ``log`` holds ("reply", fields) and
    ("push", bytes) in the order the session handed them over."""

    encoding = Encoding.JSON

    def __init__(self, bound: int = 1 << 20) -> None:
        self.bound = bound
        self.log: list[tuple[str, Any]] = []
        self.ended: list[TidingsError] = []
        self.overflows = 0
        self.closing = False
        self.changed = asyncio.Event()  # set whenever something is handed over

    def deliver(self, publication: Publication | None, data: bytes) -> None:
        self.log.append(("push", data))
        self.changed.set()

    def send(self, obj: dict[str, Any]) -> None:
        self.log.append(("send", obj))

    async def pace(self) -> bool:
        return False

    def overflow(self) -> None:
        self.overflows += 1
        self.closing = True

    def end(self, error: TidingsError) -> None:
        self.ended.append(error)
        self.closing = True
        self.changed.set()

    def reply(self, fields: dict[str, Any]) -> None:
        """Kept as a client reads it (JSON on the wire)."""
        self.log.append(("reply", orjson.loads(orjson.dumps(fields))))

    def pushes(self) -> list[Any]:
        return [orjson.loads(d) for kind, d in self.log if kind == "push"]


@dataclass
class World:
    node: Node
    ops: Operations
    tokens: TokenAuthority

    def session(self, *, max_subscriptions: int = 100, bound: int = 1 << 20) -> Session:
        return Session(self.ops, Recorder(bound), WIRE, edge="test",
                       max_subscriptions=max_subscriptions, burst=5)

    async def connect(self, user: str | None, **kw: Any) -> Session:
        s = self.session(**kw)
        token = self.tokens.issue(user) if user is not None else None
        await s.connect(token, None, None, recorder(s).reply)
        return s

    async def publish(self, topic: str, data: Any, *, retain: bool = False) -> str:
        result = await self.ops.publish(topic, orjson.dumps(data), PayloadKind.JSON,
                                        retain=retain)
        return result.publication.offset


def recorder(s: Session) -> Recorder:
    assert isinstance(s.transport, Recorder)
    return s.transport


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    settings = make_settings(tmp_path, limits__max_message_size=1024,
                             auth__allow_anonymous=True)
    metrics = Metrics()
    node = Node("n1", SqliteStore(tmp_path / "data"), MemoryBus(), settings.history, metrics)
    node.limit_user_subscriptions(3)
    node.hub.register_wire(WIRE, lambda p: orjson.dumps({"topic": p.topic, "data": p.data()}))
    await node.start()
    tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=3600)
    presence = Presence("n1", settings.presence, metrics)
    ops = Operations(settings, node, tokens, Acl(settings.acl), Notifier(node, settings.notify),
                     presence, metrics)
    try:
        yield World(node, ops, tokens)
    finally:
        await presence.close()
        await node.close()


async def wait_for(rec: Recorder, cond: Any) -> None:
    """Until ``cond()`` holds, woken by each thing ``rec`` is handed (bounded by WAIT)."""
    async with asyncio.timeout(WAIT):
        while not cond():
            rec.changed.clear()
            await rec.changed.wait()


# -- connect ------------------------------------------------------------------------------

async def test_connect_with_a_token_replies_with_user_device_and_unread(world: World) -> None:
    s = await world.connect("alice")
    (kind, reply), = recorder(s).log
    assert kind == "reply"
    assert reply["user"] == "alice" and reply["unread"] == 0 and reply["node"] == "n1"
    assert reply["device"] == s.device and len(s.device) == 16
    assert [d["device"] for d in await world.ops.devices("alice")] == [s.device]


async def test_connect_anonymous_and_with_a_bad_token_or_device(world: World) -> None:
    anon = await world.connect(None)
    assert recorder(anon).log == [("reply", {"user": None, "device": anon.device, "node": "n1",
                                             "unread": 0, "offset": None, "recovered": [],
                                             "complete": True})]
    s = world.session()
    with pytest.raises(Unauthorized):
        await s.connect("not-a-token", None, None, recorder(s).reply)
    with pytest.raises(BadRequest, match="device"):
        await world.session().connect(world.tokens.issue("a"), "x" * 129, None, print)
    with pytest.raises(BadRequest, match="since"):
        await world.session().connect(world.tokens.issue("a"), None, "nope", print)


async def test_token_expiry_ends_the_session_with_unauthorized(world: World) -> None:
    # issued 3599 s "ago" with a 3600 s lifetime: it runs out within a second
    early = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=3600,
                           clock=lambda: time.time() - 3599)
    s = world.session()
    await s.connect(early.issue("alice"), "laptop", None, recorder(s).reply)
    await wait_for(recorder(s), lambda: recorder(s).ended)
    (err,) = recorder(s).ended
    assert isinstance(err, Unauthorized) and err.close_code == 4001


async def test_connect_recovers_missed_notifications(world: World) -> None:
    s = await world.connect("alice")
    offset = recorder(s).log[0][1]["offset"]
    await s.close()
    await world.ops.notifier.notify({"users": ["alice"], "title": "hello"})
    again = world.session()
    await again.connect(world.tokens.issue("alice"), "laptop", offset, recorder(again).reply)
    reply = recorder(again).log[0][1]
    assert [r["title"] for r in reply["recovered"]] == ["hello"]
    assert reply["unread"] == 1 and reply["complete"] is True


# -- subscribe ----------------------------------------------------------------------------

async def test_subscribe_replies_before_retained_and_then_gets_live(world: World) -> None:
    await world.publish("news/a", 1, retain=True)
    s = await world.connect("alice")
    await s.subscribe("news/+", None, recorder(s).reply)
    log = recorder(s).log[1:]
    assert [k for k, _ in log] == ["reply", "push"]
    assert log[0][1]["offset"] is None  # a wildcard has no single offset
    assert recorder(s).pushes() == [{"topic": "news/a", "data": 1}]
    await world.publish("news/b", 2)
    await wait_for(recorder(s), lambda: len(recorder(s).pushes()) == 2)
    assert recorder(s).pushes()[1] == {"topic": "news/b", "data": 2}


async def test_subscribe_with_since_recovers_and_skips_retained(world: World) -> None:
    first = await world.publish("t", "a", retain=True)
    await world.publish("t", "b")
    s = await world.connect("alice")
    await s.subscribe("t", first, recorder(s).reply)
    reply = recorder(s).log[1][1]
    assert [r["data"] for r in reply["recovered"]] == ["b"]
    assert reply["complete"] is True and recorder(s).pushes() == []


async def test_wildcard_retained_never_hands_out_another_users_topic(world: World) -> None:
    await world.publish("users/bob/secret", "for bob", retain=True)
    await world.publish("users/alice/note", "for alice", retain=True)
    s = await world.connect("alice")
    await s.subscribe("#", None, recorder(s).reply)
    assert recorder(s).pushes() == [{"topic": "users/alice/note", "data": "for alice"}]
    since = {"users/bob/secret": await world.node.latest("users/bob/secret")}
    with pytest.raises(Forbidden):  # recovery is refused before any history is read
        await s.subscribe("#", since, print)


async def test_bad_filters_are_bad_topic(world: World) -> None:
    s = await world.connect("alice")
    for value in ("a/#/b", "", "x" * 100_000, 7):
        with pytest.raises(BadRequest) as e:
            await s.subscribe(value, None, print)
        assert e.value.code == "bad_topic"


async def test_quotas_per_session_and_per_user(world: World) -> None:
    s = await world.connect("alice", max_subscriptions=2)
    await s.subscribe("a", None, print)
    await s.subscribe("a", None, print)  # the same filter again costs nothing
    await s.subscribe("b", None, print)
    with pytest.raises(BadRequest, match="more than 2 subscriptions") as e:
        await s.subscribe("c", None, print)
    assert e.value.code == "too_many_subscriptions"
    other = await world.connect("alice")  # the user's limit is 3 over every session
    await other.subscribe("c", None, print)
    with pytest.raises(BadRequest, match="for this user"):
        await other.subscribe("d", None, print)
    await s.close()  # gives its two back, and leaves the hub
    await other.subscribe("d", None, print)
    assert not world.node.hub.subscribers("a")


async def test_command_rate_is_a_token_bucket(world: World) -> None:
    s = world.session()
    assert [s.allow_command(5, 0.0) for _ in range(6)] == [True] * 5 + [False]


# -- publish ------------------------------------------------------------------------------

async def test_publish_checks_topic_acl_reserved_and_size_in_one_place(world: World) -> None:
    s = await world.connect("alice")
    with pytest.raises(BadRequest) as bad:
        await s.publish("a/+", 1, False)
    assert bad.value.code == "bad_topic"
    with pytest.raises(Forbidden) as reserved:
        await s.publish("$SYS/x", 1, False)
    assert reserved.value.code == "forbidden"  # a session is refused by its ACL
    with pytest.raises(Forbidden):
        await s.publish("users/bob/x", 1, False)
    with pytest.raises(TooLarge):
        await s.publish("users/alice/x", "x" * 2000, False)
    assert await s.publish("users/alice/x", 1, False) == await world.node.latest("users/alice/x")
    with pytest.raises(Forbidden) as backend:
        world.ops.authorize_publish(None, "$SYS/x", "messages[0]: ")
    assert backend.value.code == "reserved_topic"
    assert backend.value.message.startswith("messages[0]: ")


async def test_published_message_reaches_a_subscribed_session(world: World) -> None:
    reader = await world.connect("alice")
    await reader.subscribe("users/alice/x", None, recorder(reader).reply)
    writer = await world.connect("alice")
    await writer.publish("users/alice/x", {"n": 1}, False)
    await wait_for(recorder(reader), lambda: recorder(reader).pushes())
    assert recorder(reader).pushes() == [{"topic": "users/alice/x", "data": {"n": 1}}]


# -- inbox --------------------------------------------------------------------------------

async def test_inbox_operations_need_a_user_and_check_cursors(world: World) -> None:
    anon = await world.connect(None)
    with pytest.raises(Forbidden, match="inbox needs a signed-in user"):
        await anon.inbox(20, None, False)
    s = await world.connect("alice")
    with pytest.raises(BadRequest, match="inbox: before must be a cursor"):
        await s.inbox(20, "garbage", False)
    with pytest.raises(BadRequest, match="inbox: limit must be between 1 and 100"):
        await s.inbox(101, None, False)
    await world.ops.notifier.notify({"users": ["alice"], "title": "one"})
    page = await s.inbox(20, None, False)
    assert [i["title"] for i in page["items"]] == ["one"] and page["unread"] == 1
    unread, changed = await s.mark("read", None, True)
    assert unread == 0 and changed == [page["items"][0]["id"]]
    assert await s.track(changed[0], "opened") is True


async def test_close_releases_presence_and_hub(world: World) -> None:
    s = await world.connect("alice")
    assert world.node.hub.subscribers("users/alice/notifications") == {s}
    await s.close()
    assert not world.node.hub.subscribers("users/alice/notifications")
    assert await world.ops.devices("alice") == []


async def test_live_messages_during_subscribe_wait_behind_the_reply(world: World) -> None:
    """A message that arrives while subscribe is running comes after the reply."""
    s = await world.connect("alice")
    pub = Publication("users/alice/x", format_offset("e", 1), b"1", PayloadKind.JSON, 1)
    seen: list[str] = []

    def reply(fields: dict[str, Any]) -> None:
        s.deliver(pub, b'"live"')  # the hub hands a message over mid-subscribe
        seen.append("reply")
        recorder(s).reply(fields)

    await s.subscribe("users/alice/x", None, reply)
    kinds = [k for k, _ in recorder(s).log[1:]]
    assert kinds == ["reply", "push"] and seen == ["reply"]


async def test_restricted_follows_the_principal_the_session_connected_with(world: World) -> None:
    """The hub skips may_see for an unguarded topic only where the session is not
    restricted: before connect it is; after, exactly as Acl.restricts says."""
    assert world.session().restricted is True
    free = await world.connect("alice")
    assert free.restricted is False and free.restricted == world.ops.acl.restricts(free.principal)
    granted = world.session()
    await granted.connect(world.tokens.issue("bob", subscribe=["news/#"]), None, None,
                          recorder(granted).reply)
    assert granted.restricted is True
    await world.node.subscribe("#", granted)  # past subscribe's own check: the hub's is left
    await world.publish("sport/x", 1)  # not covered by bob's grant: may_see says no
    await world.publish("news/x", 2)
    rec = recorder(granted)
    await wait_for(rec, lambda: any(p["topic"] == "news/x" for p in rec.pushes()))
    assert [p["topic"] for p in rec.pushes()] == ["news/x"]


async def test_restricted_follows_the_screens_of_the_session_filters(world: World) -> None:
    """A filter that reaches into a deny rule is granted and makes the session
    restricted (the hub asks it per message, and it keeps the denied topic back) for
    as long as it holds that filter; a filter that overlaps no deny costs nothing."""
    ops = replace(world.ops, acl=Acl([AclRule("test/nosubscribe", users=["*"],
                                              subscribe=False)]))
    s = Session(ops, Recorder(), WIRE, edge="test", max_subscriptions=100, burst=5)
    rec = recorder(s)
    await s.connect(world.tokens.issue("alice"), None, None, rec.reply)
    await s.subscribe("home/#", None, rec.reply)
    assert s.restricted is False
    await s.subscribe("test/+", None, rec.reply)
    assert s.restricted is True
    with pytest.raises(Forbidden):
        await s.subscribe("test/nosubscribe", None, rec.reply)  # wholly denied
    await world.publish("test/nosubscribe", 1)
    await world.publish("test/ok", 2)
    await wait_for(rec, lambda: len(rec.pushes()) == 1)
    assert rec.pushes() == [{"topic": "test/ok", "data": 2}]
    # counted by the edge its wire was registered for (here, unnamed: the wire)
    assert world.ops.metrics.get("tidings_acl_denied_messages_total", edge=WIRE) == 1
    await s.unsubscribe("test/+")
    assert s.restricted is False
    await s.close()
