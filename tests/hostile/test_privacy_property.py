"""Property: no session ever receives another user's ``users/...`` message.

Hypothesis draws ``[[acl]]`` rules, anonymous access on or off, and sessions:
a user (or anonymous), an edge (WS JSON, WS msgpack, MQTT over TCP, MQTT over
WebSocket), token ``subscribe`` grants, filters (wildcards, other users'
topics, shared subscriptions) and, on WS, ``since`` maps naming any user's
topics with foreign or real epochs. Every user has history, retained and live
messages. Whatever each session asked for and was granted, everything it
received (recovered, retained, live) belongs to it or to no user.

Each example runs a fresh node (its ACL rules are drawn) and ends with a
marker every session subscribed to, published after everything else: what
was sent before it has been read. Bounded by ``PRIVACY_EXAMPLES`` (default 50).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Client, Node, make_settings, start_with, stop_node
from support.mqtt import Paho
from tidings.config import AclRule

USERS = ("ann", "bob", "cy")
EDGES = ("ws-json", "ws-msgpack", "mqtt-tcp", "mqtt-ws")
FILTERS = ("#", "+/+/unread", "+/+/+", "+/+/#", "+/bob/#", "+/ann/#", "users/ann/#",
           "users/bob/#", "users/+/notifications", "users/cy/notifications", "news/#",
           "$share/g/#", "$share/g/users/ann/#", "$share/h/+/bob/#", "$share/g/+/+/unread")
SINCE_TOPICS = ("users/ann/notifications", "users/bob/notifications", "users/cy/events",
                "users/bob/profile", "users/ann/unread", "news/a")
GRANTS = ("#", "users/ann/#", "users/bob/#", "news/#", "+/+/unread", "users/+/notifications")
RULES = (
    AclRule("news/secret", ["*", "anonymous"], subscribe=False),
    AclRule("#", ["*", "anonymous"], subscribe=True, publish=True),
    AclRule("users/{uid}/#", ["*"], subscribe=True),
    AclRule("+/bob/#", ["*"], subscribe=True),
    AclRule("users/ann/#", ["bob", "anonymous"], subscribe=True),
)
END = "end/marker"
EXAMPLES = int(os.environ.get("PRIVACY_EXAMPLES", "50"))
_ids = itertools.count()


@dataclass
class Spec:
    user: str | None
    edge: str
    grants: list[str] | None
    filters: list[str]
    since: dict[str, str] = field(default_factory=dict)  # topic -> "foreign" / "real"


def specs(anonymous: bool) -> st.SearchStrategy[Spec]:
    return st.builds(
        Spec,
        user=st.sampled_from([*USERS, None] if anonymous else USERS),
        edge=st.sampled_from(EDGES),
        grants=st.none() | st.lists(st.sampled_from(GRANTS), min_size=1, max_size=3),
        filters=st.lists(st.sampled_from(FILTERS), min_size=1, max_size=3, unique=True),
        since=st.dictionaries(st.sampled_from(SINCE_TOPICS),
                              st.sampled_from(["foreign", "real"]), max_size=2),
    )


scenarios = st.booleans().flatmap(lambda anonymous: st.fixed_dictionaries({
    "anonymous": st.just(anonymous),
    "rules": st.lists(st.sampled_from(RULES), max_size=3, unique_by=lambda r: r.filter),
    "sessions": st.lists(specs(anonymous), min_size=1, max_size=4),
}))


def owner_of(item: dict[str, Any]) -> str | None:
    """Whose private data a WS push or recovered message carries (None: nobody's)."""
    topic = str(item.get("topic", ""))
    if topic.startswith("users/"):
        return topic.split("/")[1]
    title = str(item.get("title", ""))
    if item.get("type") == "notification" and title.startswith("for-"):
        return title.removeprefix("for-")
    return None


async def seed(node: Node, stage: str) -> None:
    """History, retained and live messages for every user, and some public ones."""
    for user in USERS:
        status, body = await node.api("POST", "/v1/notify",
                                      {"users": [user], "title": f"for-{user}"})
        assert status == 200, body
        await node.publish(f"users/{user}/profile", {"stage": stage}, retain=True)
    await node.publish("news/a", {"stage": stage}, retain=True)
    await node.publish("news/secret", {"stage": stage})


async def real_offset(node: Node, topic: str) -> str:
    _, body = await node.api("GET", f"/v1/topics/{topic}/history")
    items = body["items"]
    epoch = items[0]["offset"].rpartition(":")[0] if items else "none"
    return f"{epoch}:0"


class WsSession:
    def __init__(self, spec: Spec, client: Client) -> None:
        self.spec, self.client = spec, client
        self.got: list[dict[str, Any]] = []

    async def subscribe(self, node: Node) -> None:
        for flt in self.spec.filters:
            args: dict[str, Any] = {"topic": flt}
            if self.spec.since:
                args["since"] = {t: ("zz:0" if how == "foreign" else await real_offset(node, t))
                                 for t, how in self.spec.since.items()}
            reply = await self.client.request("subscribe", **args)
            self.got.extend(reply.get("recovered", []))
        reply = await self.client.request("subscribe", topic="end/#")
        assert reply["ok"], reply

    async def collect(self) -> None:
        while True:
            item = await self.client.push()
            if item.get("topic") == END:
                return
            self.got.append(item)

    def owners(self) -> set[str | None]:
        return {owner_of(i) for i in self.got}


class MqttSession:
    def __init__(self, spec: Spec, client: Paho) -> None:
        self.spec, self.client = spec, client
        self.got: list[str] = []

    async def subscribe(self, node: Node) -> None:
        for flt in self.spec.filters:
            await self.client.subscribe((flt, 1))
        assert await self.client.subscribe(("end/#", 1)) == [1]

    async def collect(self) -> None:
        while True:
            m = await self.client.message()
            if m.topic == END:
                return
            self.got.append(m.topic)

    def owners(self) -> set[str | None]:
        return {t.split("/")[1] if t.startswith("users/") else None for t in self.got}


async def open_session(node: Node, spec: Spec) -> WsSession | MqttSession:
    token = None
    if spec.user is not None:
        grants = None if spec.grants is None else [*spec.grants, "end/#"]
        token = node.token(spec.user, subscribe=grants)
    if spec.edge.startswith("ws-"):
        kw: dict[str, Any] = {} if token is None else {"token": token}
        client = await node.client(spec.user, encoding=spec.edge[3:], **kw)
        return WsSession(spec, client)
    tcp = spec.edge == "mqtt-tcp"
    paho = Paho(node.app.mqtt_port if tcp else node.app.ws_port, f"p{next(_ids)}",
                token=token, v5=True, transport="tcp" if tcp else "websockets")
    node.clients.append(PahoCloser(paho))
    await paho.connack(0)
    return MqttSession(spec, paho)


class PahoCloser:
    """Lets stop_node close a Paho client as it closes WS clients."""

    def __init__(self, paho: Paho) -> None:
        self.paho = paho

    async def close(self) -> None:
        await asyncio.to_thread(self.paho.close)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario=scenarios)
async def test_no_session_receives_another_users_private_messages(
        scenario: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = make_settings(Path(tmp), auth__allow_anonymous=scenario["anonymous"],
                          mqtt__sys_interval=0.0, ws__commands_burst=1000)
        s.acl = list(scenario["rules"])
        node = await start_with(s)
        try:
            await seed(node, "before")
            sessions = [await open_session(node, spec) for spec in scenario["sessions"]]
            for session in sessions:
                await session.subscribe(node)
            await seed(node, "live")
            await node.publish(END, {"end": True})
            for session in sessions:
                await session.collect()
            for session in sessions:
                foreign = session.owners() - {None, session.spec.user}
                assert not foreign, (session.spec, session.got)
        finally:
            await stop_node(node)


def test_owner_of_reads_topics_and_notification_titles() -> None:
    """The checker itself: it must see a leak to report one."""
    assert owner_of({"type": "message", "topic": "users/bob/unread"}) == "bob"
    assert owner_of({"type": "notification", "title": "for-bob"}) == "bob"
    assert owner_of({"type": "message", "topic": "news/a"}) is None
