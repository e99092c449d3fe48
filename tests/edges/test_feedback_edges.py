"""A user's feedback on a notification (issue 13) from every edge, with real
clients: the WS ``feedback`` op, MQTT's ``users/{uid}/feedback`` (paho, 3.1.1
and 5.0) and ``POST /v1/users/{uid}/feedback``. Each is counted once per user
and notification in the stats (the first wins), with its reason, and becomes a
``feedback`` event; ``not_interested`` stops a segment's ``engaged`` condition
selecting the user, ``too_many`` halves their cap on the category (announced on
the retained preferences topic, set back by the user). Bad input:
tests/hostile/test_feedback_input.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import Node
from support.events_api import read_events
from support.mqtt import clients, paho

__all__ = ["clients"]  # the fixture, imported by name


async def ok(node: Node, method: str, path: str, body: Any = None, want: int = 200) -> Any:
    status, reply = await node.api(method, path, body)
    assert status == want, reply
    return reply


async def notify(node: Node, user: str = "alice", category: str = "general") -> str:
    reply = await ok(node, "POST", "/v1/notify", {"users": [user], "title": "hi",
                                                  "category": category})
    return str(reply["id"])


async def stats(node: Node, nid: str) -> dict[str, Any]:
    reply: dict[str, Any] = await ok(node, "GET", f"/v1/notifications/{nid}/stats")
    return reply


async def test_ws_feedback_is_counted_once_and_becomes_an_event(node: Node) -> None:
    nid = await notify(node)
    await notify(node, "bob")
    tab = await node.client("alice")
    reply = await tab.request("feedback", notification=nid, reason="wrong_time",
                              comment="not at 3 am")
    assert reply == {"id": reply["id"], "ok": True, "recorded": True}
    # the first wins: a second one, of any reason, is not recorded
    again = await tab.request("feedback", notification=nid, reason="other")
    assert (again["ok"], again["recorded"]) == (True, False)
    # a notification the user does not have: answered, not recorded
    assert not (await tab.request("feedback", notification="n_nope", reason="other"))[
        "recorded"]
    got = await stats(node, nid)
    assert got["feedback"] == 1
    assert got["feedback_reasons"] == {"not_interested": 0, "too_many": 0, "wrong_time": 1,
                                       "other": 0}
    cats = (await ok(node, "GET", "/v1/stats/categories"))["categories"]
    assert cats["general"]["feedback"] == 1
    (event,), _ = await read_events(node, want=1, limit=1000, event_type="feedback")
    assert {k: event[k] for k in ("user", "notification", "reason", "comment")} == {
        "user": "alice", "notification": nid, "reason": "wrong_time",
        "comment": "not at 3 am"}


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_mqtt_feedback_on_the_users_topic(node: Node, clients: list[Any],
                                                v5: bool) -> None:
    nid = await notify(node)
    dev = await paho(clients, node.app.mqtt_port, "phone", token=node.token("alice"), v5=v5)
    assert await dev.subscribe(("users/alice/feedback", 1)) == [1]
    body = {"notification": nid, "reason": "other", "comment": "meh"}
    assert await dev.publish("users/alice/feedback", orjson.dumps(body), 1) == 0
    assert (await stats(node, nid))["feedback_reasons"]["other"] == 1
    # once per user: a repeat from another device is acknowledged and not counted
    tablet = await paho(clients, node.app.mqtt_port, "tab", token=node.token("alice"), v5=v5)
    again = {"notification": nid, "reason": "not_interested"}
    assert await tablet.publish("users/alice/feedback", orjson.dumps(again), 1) == 0
    got = await stats(node, nid)
    assert (got["feedback"], got["feedback_reasons"]["not_interested"]) == (1, 0)
    (event,), _ = await read_events(node, want=1, limit=1000, event_type="feedback")
    assert (event["user"], event["reason"], event["comment"]) == ("alice", "other", "meh")
    await dev.no_message()  # applied, never forwarded


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
async def test_only_the_user_gives_their_feedback(node: Node, clients: list[Any],
                                                  v5: bool) -> None:
    nid = await notify(node)
    mallory = await paho(clients, node.app.mqtt_port, "m", token=node.token("mallory"), v5=v5)
    forged = orjson.dumps({"notification": nid, "reason": "not_interested"})
    refused = 0x87 if v5 else 0  # 3.1.1 acknowledges and drops [MQTT-3.3.5-2]
    assert await mallory.publish("users/alice/feedback", forged, 1) == refused
    assert await mallory.publish("users/mallory/feedback", forged, 1) == 0  # not hers
    assert (await stats(node, nid))["feedback"] == 0


async def test_http_feedback_for_a_user(node: Node) -> None:
    nid = await notify(node, category="social")
    path = "/v1/users/alice/feedback"
    body = {"notification": nid, "reason": "other"}
    assert await ok(node, "POST", path, body) == {"recorded": True}
    assert await ok(node, "POST", path, body) == {"recorded": False}
    assert await ok(node, "POST", "/v1/users/bob/feedback", body) == {"recorded": False}
    status, _ = await node.api("POST", path, body, key=None)
    assert status == 401
    got = await stats(node, nid)
    assert (got["feedback"], got["feedback_reasons"]["other"]) == (1, 1)
    (event,), _ = await read_events(node, want=1, limit=1000, event_type="feedback")
    assert (event["user"], event["notification"], event["comment"]) == ("alice", nid, None)


async def test_not_interested_stops_an_engaged_segment_selecting_the_user(
        node: Node) -> None:
    await ok(node, "PUT", "/v1/segments/fans",
             {"engaged": {"category": "social", "within": "30d", "min": 1}}, 201)
    tab = await node.client("alice")
    bob = await node.client("bob")
    ids = {u: await notify(node, u, "social") for u in ("alice", "bob")}
    for user, c in (("alice", tab), ("bob", bob)):
        assert (await c.request("track", notification=ids[user], event="opened"))["recorded"]
    assert await ok(node, "GET", "/v1/segments/fans/users") == {"users": ["alice", "bob"],
                                                                 "next": None}
    other = await notify(node, "alice", "social")
    reply = await tab.request("feedback", notification=other, reason="not_interested")
    assert reply["recorded"]
    assert await ok(node, "GET", "/v1/segments/fans/users") == {"users": ["bob"],
                                                                 "next": None}
    # engaging again counts from then on
    assert (await tab.request("track", notification=other, event="clicked"))["recorded"]
    assert await ok(node, "GET", "/v1/segments/fans/count") == {"count": 2}


async def test_too_many_halves_the_cap_and_the_user_sets_it_back(
        node: Node, clients: list[Any]) -> None:
    """The operator caps marketing at 2 an hour, 6 a day (config's default)."""
    dev = await paho(clients, node.app.mqtt_port, "watch", token=node.token("alice"), v5=True)
    assert await dev.subscribe(("users/alice/preferences", 1)) == [1]
    tab = await node.client("alice")
    first = await notify(node, category="marketing")
    assert (await tab.request("feedback", notification=first, reason="too_many"))["recorded"]
    halved = {"caps": {"marketing": {"per_hour": 1, "per_day": 3}}}
    assert await ok(node, "GET", "/v1/users/alice/preferences") == halved
    m = await dev.message()  # fanned out like any change of preferences, retained
    assert orjson.loads(m.payload) == halved
    # halved again from the user's own cap, never below 1
    second = await notify(node, category="marketing")
    assert (await tab.request("feedback", notification=second, reason="too_many"))["recorded"]
    lowest = {"caps": {"marketing": {"per_hour": 1, "per_day": 1}}}
    assert await ok(node, "GET", "/v1/users/alice/preferences") == lowest
    assert orjson.loads((await dev.message()).payload) == lowest
    # the user sets it back: the operator's cap is in force again
    back = await tab.request("set_preferences", merge=True,
                             preferences={"caps": {"marketing": None}})
    assert back["preferences"] == {}
    assert orjson.loads((await dev.message()).payload) == {}
    # a category without any cap gets half of preferences.feedback_cap_per_day (10)
    social = await notify(node, category="social")
    assert (await tab.request("feedback", notification=social, reason="too_many"))["recorded"]
    assert await ok(node, "GET", "/v1/users/alice/preferences") == {
        "caps": {"social": {"per_day": 5}}}
    # a category users may not cap is left alone (the feedback still counts)
    receipt = await notify(node, category="transactional")
    assert (await tab.request("feedback", notification=receipt, reason="too_many"))[
        "recorded"]
    assert await ok(node, "GET", "/v1/users/alice/preferences") == {
        "caps": {"social": {"per_day": 5}}}
    assert (await stats(node, receipt))["feedback_reasons"]["too_many"] == 1
