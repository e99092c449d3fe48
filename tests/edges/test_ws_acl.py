"""ACL by delivery on the WS edge, with ``config/open-broker.toml`` as shipped (its
deny rule on ``test/nosubscribe``) and real ``websockets`` clients.

The same rules as on MQTT: a wildcard that reaches into the deny is granted and
screened (live and retained messages on the denied topic are kept back, and
counted in ``/metrics``); the denied filter itself, and a ``since`` that names
the denied topic, get the ``forbidden`` error reply.
"""

from __future__ import annotations

from typing import Any

from conftest import Client, Node
from support.mqtt import metric, open_broker

_FIXTURES = (open_broker,)  # fixture from support.mqtt
DENIED = "test/nosubscribe"


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return str(reply["error"]["code"])


async def topics(c: Client, n: int) -> list[tuple[str, Any, bool]]:
    """The next ``n`` message pushes as (topic, data, retained)."""
    out = []
    for _ in range(n):
        m = await c.push()
        assert m["type"] == "message", m
        out.append((m["topic"], m["data"], m["retained"]))
    return out


async def test_ws_wildcards_reaching_into_the_deny_are_granted_and_screened(
        open_broker: Node) -> None:
    """``#`` and ``test/+`` are granted to an anonymous WS client; retained and live
    messages on ``test/nosubscribe`` are kept from it and counted (edge ``ws``);
    subscribing to ``test/nosubscribe`` itself gets ``forbidden``, as before."""
    n = open_broker
    await n.publish(DENIED, "old", retain=True)
    await n.publish("test/kept", "old", retain=True)
    c = await n.client(None)  # anonymous, as the open broker allows
    for flt in ("#", "test/+"):
        r = await c.request("subscribe", topic=flt)
        assert r["ok"], r
    # the retained message of test/kept, once per subscription that asked; never the denied one
    assert await topics(c, 2) == [("test/kept", "old", True)] * 2
    for topic in (DENIED, "test/ok", "home/x"):
        await n.publish(topic, "new")
    assert await topics(c, 2) == [("test/ok", "new", False), ("home/x", "new", False)]
    await c.no_push()
    # kept back: the retained one twice (one per subscription), the live one once
    assert await metric(n, "tidings_acl_denied_messages_total", edge="ws") == 3
    assert error_code(await c.request("subscribe", topic=DENIED)) == "forbidden"


async def test_ws_since_cannot_name_the_denied_topic(open_broker: Node) -> None:
    """Recovery hands out messages too: a ``since`` naming ``test/nosubscribe``
    under a granted ``test/#`` is refused before any history is read."""
    n = open_broker
    offset = await n.publish(DENIED, "secret")
    c = await n.client(None)
    r = await c.request("subscribe", topic="test/#", since={DENIED: offset})
    assert error_code(r) == "forbidden"
    await c.no_push()


async def test_ws_unsubscribe_from_a_screened_wildcard(open_broker: Node) -> None:
    """``#`` unsubscribed: only what ``home/#`` matches arrives from then on."""
    n = open_broker
    c = await n.client(None)
    for flt in ("#", "home/#"):
        assert (await c.request("subscribe", topic=flt))["ok"]
    assert (await c.request("unsubscribe", topic="#"))["ok"]
    for topic in ("garden/x", DENIED, "home/y"):
        await n.publish(topic, 1)
    assert await topics(c, 1) == [("home/y", 1, False)]
    await c.no_push()
