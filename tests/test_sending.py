"""The send pipeline on its own (``tidings/sending.py`` behind ``tidings/notify.py``).

A real :class:`~tidings.node.Node` on the memory bus and SQLite in ``tmp_path``,
driven by a fake clock: the scheduler is stepped by hand (``sender.step()``),
never by waiting. A subscriber on ``users/{uid}/#`` stands in for every device
of a user. What users rely on: each preference rule gives its outcome (and the
inbox and pushes that go with it), held and per-user scheduled deliveries
arrive at their time, a job interrupted mid-send is resumed without sending
anyone anything twice, and cancel stops what has not been sent.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import orjson
import pytest

from conftest import API_KEY, WAIT, ServerProcess
from support.clock import FakeClock, at
from support.mqtt import wait_until
from support.pipeline import clocked_node, fake_clock, notifier_of
from tidings.clock import utc
from tidings.errors import BadRequest, Conflict, NotFound
from tidings.node import Node
from tidings.notify import Notifier
from tidings.policy import Decision, Notice, decide
from tidings.preferences import Rules, parse
from tidings.push.channel import EVERYWHERE, Route
from tidings.sending import outcome_of, route_of
from tidings.store.base import JOB_STATUSES, events_topic, notifications_topic, unread_topic
from tidings.store.sqlite import SqliteStore
from tidings.types import Publication

__all__ = ["clocked_node", "fake_clock"]  # the fixtures clock and node

HOUR = 3600.0
RULES = Rules.default()


class Device:
    """Every publication on ``users/{user}/#``, decoded, in arrival order."""

    wire = "raw"
    restricted = True

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []

    def may_see(self, topic: str) -> bool:
        return True

    def deliver(self, pub: Publication, data: bytes) -> None:
        self.got.append((pub.topic, orjson.loads(data)))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [body for t, body in self.got if t == topic]


@pytest.fixture
def notifier(node: Node) -> Notifier:
    return notifier_of(node)


async def device_of(node: Node, user: str) -> Device:
    d = Device()
    await node.subscribe(f"users/{user}/#", d)
    return d


async def settle(condition: Any) -> None:
    """Wait (bounded by WAIT) until the memory bus has handed over what was fanned out."""
    await wait_until(condition, what="the pushes")


async def marker(notifier: Notifier, users: list[str], devices: dict[str, Device]) -> None:
    """Send a marker to ``users`` and wait until every device has it: whatever was
    fanned out before it has arrived too (the bus keeps a topic's order)."""
    sent = await notifier.notify({"users": users, "title": "marker"})
    await settle(lambda: all(any(p["id"] == sent.id for p in d.on(notifications_topic(u)))
                             for u, d in devices.items()))


async def prefer(node: Node, user: str, doc: dict[str, Any]) -> None:
    await node.store.set_user_preferences(user, parse(doc, RULES).to_dict())


async def tag(node: Node, tags: list[str], *users: str) -> None:
    for u in users:
        await node.store.set_user_tags(u, tags, max_tags=10)


async def ids(node: Node, user: str) -> list[str]:
    return [i.fields["id"] for i in (await node.store.inbox(user, limit=100)).items]


async def status(notifier: Notifier, nid: str) -> dict[str, Any]:
    return await notifier.get(nid)


# -- audiences ----------------------------------------------------------------------------


async def test_tags_reach_exactly_the_tagged_users_in_chunks(node: Node,
                                                             notifier: Notifier) -> None:
    await tag(node, ["vip"], "u1", "u2", "u3", "u4", "u5")
    await tag(node, ["free"], "u6")
    devices = {u: await device_of(node, u) for u in ("u1", "u5", "u6")}
    result = await notifier.notify({"tags": ["vip"], "title": "Sale"})
    assert result.targets == 5
    assert (await status(notifier, result.id))["status"] == "scheduled"
    assert await notifier.sender.step() == 5  # three chunks of page_size 2
    for u in ("u1", "u2", "u3", "u4", "u5"):
        assert await ids(node, u) == [result.id]
    assert await ids(node, "u6") == []
    await settle(lambda: devices["u5"].on(notifications_topic("u5")))
    assert devices["u1"].on(notifications_topic("u1"))[0]["title"] == "Sale"
    assert devices["u6"].got == []
    got = await status(notifier, result.id)
    assert (got["status"], got["targets"], got["outcomes"]["pushed"]) == ("sent", 5, 5)
    assert node.metrics.get("tidings_notification_outcomes_total", outcome="pushed") == 5


async def test_users_connected_here_get_it_first_and_nobody_twice(
        node: Node, notifier: Notifier, monkeypatch: pytest.MonkeyPatch) -> None:
    await tag(node, ["vip"], "u1", "u2", "u3", "u4", "u5", "u6", "u7")
    devices = {u: await device_of(node, u) for u in ("u6", "u9")}
    notifier.sender.online = lambda: ["u9", "u6"]  # u9 is online but not in the audience
    chunks: list[list[str]] = []
    real = notifier.sender.send_chunk

    async def recorded(job: Any, plan: Any, users: Any, *, due: bool) -> int:
        chunks.append(list(users))
        return await real(job, plan, users, due=due)

    monkeypatch.setattr(notifier.sender, "send_chunk", recorded)
    result = await notifier.notify({"tags": ["vip"], "title": "Now"})
    assert await notifier.sender.step() == 7  # each user recorded once
    assert chunks[0] == ["u6"]  # the connected user's chunk went before any page
    assert ["u6"] in chunks[:1] and all(u != "u9" for c in chunks for u in c)
    for u in ("u1", "u2", "u3", "u4", "u5", "u6", "u7"):
        assert await ids(node, u) == [result.id]
    await settle(lambda: devices["u6"].on(notifications_topic("u6")))
    assert len(devices["u6"].on(notifications_topic("u6"))) == 1
    assert devices["u9"].got == []
    got = await status(notifier, result.id)
    assert (got["status"], got["targets"], got["outcomes"]["pushed"]) == ("sent", 7, 7)


async def test_a_segment_is_looked_up_and_an_unknown_one_is_not_found(
        node: Node, notifier: Notifier) -> None:
    await node.store.set_user_attributes("ann", {"plan": "pro"})
    await node.store.set_user_attributes("bob", {"plan": "free"})
    await node.store.segment_put("pros", {"attributes": {"plan": "pro"}})
    result = await notifier.notify({"segment": "pros", "title": "Hi"})
    assert result.targets == 1
    await notifier.sender.step()
    assert await ids(node, "ann") == [result.id] and await ids(node, "bob") == []
    with pytest.raises(NotFound, match="segment"):
        await notifier.notify({"segment": "nobody-made-this", "title": "Hi"})
    empty = await notifier.notify({"audience": {"tags": ["none-has-it"]}, "title": "Hi"})
    assert empty.targets == 0
    await notifier.sender.step()
    assert (await status(notifier, empty.id))["status"] == "sent"


async def test_content_is_rendered_per_user_from_attributes_and_locale(
        node: Node, notifier: Notifier) -> None:
    await tag(node, ["t"], "ann", "li")
    await node.store.set_user_attributes("ann", {"first_name": "Ann"})
    await prefer(node, "li", {"locale": "zh-CN"})
    result = await notifier.notify({
        "tags": ["t"], "title": "Hi {{first_name|there}}", "body": "News",
        "data": {"link": "/u/{{first_name}}"},
        "locales": {"zh": {"title": "你好 {{first_name|朋友}}"}}})
    await notifier.sender.step()
    ann = (await node.store.inbox("ann", limit=1)).items[0].fields
    li = (await node.store.inbox("li", limit=1)).items[0].fields
    assert (ann["title"], ann["body"], ann["data"]) == ("Hi Ann", "News", {"link": "/u/Ann"})
    assert (li["title"], li["body"], li["data"]) == ("你好 朋友", "News", {"link": "/u/"})
    assert ann["id"] == li["id"] == result.id


# -- the rules -----------------------------------------------------------------------------


async def test_a_muted_category_writes_and_pushes_nothing(node: Node,
                                                          notifier: Notifier) -> None:
    await prefer(node, "ann", {"categories": {"social": {"enabled": False}}})
    ann = await device_of(node, "ann")
    result = await notifier.notify({"users": ["ann", "bob"], "title": "x",
                                    "category": "social"})
    assert result.targets == 2
    assert await ids(node, "ann") == [] and await node.store.unread("ann") == 0
    assert await ids(node, "bob") == [result.id]
    got = await status(notifier, result.id)
    assert got["outcomes"]["suppressed_category"] == 1 and got["outcomes"]["pushed"] == 1
    assert got["status"] == "sent"
    await marker(notifier, ["ann"], {"ann": ann})
    assert [p["title"] for p in ann.on(notifications_topic("ann"))] == ["marker"]


async def test_quiet_hours_across_midnight_in_two_zones_hold_then_deliver(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    quiet = {"start": "22:00", "end": "07:00"}
    await prefer(node, "ann", {"timezone": "Asia/Shanghai", "quiet_hours": quiet})
    await prefer(node, "bob", {"timezone": "America/New_York", "quiet_hours": quiet})
    ann, bob = await device_of(node, "ann"), await device_of(node, "bob")
    clock.set(at("2026-01-15T15:00:00Z"))  # Shanghai 23:00 (quiet), New York 10:00
    first = await notifier.notify({"users": ["ann", "bob"], "title": "one"})
    assert await ids(node, "ann") == [] and await node.store.unread("ann") == 0  # held
    assert await ids(node, "bob") == [first.id]
    got = await status(notifier, first.id)
    assert (got["outcomes"]["held"], got["outcomes"]["pushed"]) == (1, 1)
    clock.set(at("2026-01-15T22:59:59Z"))  # Shanghai 06:59:59: still quiet
    await notifier.sender.step()
    assert await ids(node, "ann") == []
    clock.set(at("2026-01-15T23:00:00Z"))  # Shanghai 07:00: the quiet hours ended
    await notifier.sender.step()
    assert await ids(node, "ann") == [first.id] and await node.store.unread("ann") == 1
    await settle(lambda: ann.on(notifications_topic("ann")))
    assert ann.on(notifications_topic("ann"))[0]["title"] == "one"
    got = await status(notifier, first.id)
    assert (got["outcomes"]["held"], got["outcomes"]["pushed"]) == (0, 2)
    # the other way round: New York 23:00 is quiet, Shanghai 12:00 is not
    clock.set(at("2026-01-16T04:00:00Z"))
    second = await notifier.notify({"users": ["ann", "bob"], "title": "two"})
    assert await ids(node, "bob") == [first.id]
    clock.set(at("2026-01-16T12:00:00Z"))  # New York 07:00
    await notifier.sender.step()
    assert await ids(node, "bob") == [second.id, first.id]
    await settle(lambda: len(bob.on(notifications_topic("bob"))) == 2)


async def test_a_silent_category_in_quiet_hours_goes_to_the_inbox_without_a_push(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    await prefer(node, "ann", {"quiet_hours": {"start": "10:00", "end": "14:00"}})
    ann = await device_of(node, "ann")
    result = await notifier.notify({"users": ["ann"], "title": "deal",
                                    "category": "marketing"})  # UTC 12:00: quiet
    assert await ids(node, "ann") == [result.id]
    await settle(lambda: ann.on(unread_topic("ann")))
    assert ann.on(unread_topic("ann"))[-1] == {"count": 1}  # the count is exact
    await settle(lambda: ann.on(events_topic("ann")))
    assert ann.on(events_topic("ann")) == [{"type": "silent", "ids": [result.id], "unread": 1}]
    assert ann.on(notifications_topic("ann")) == []  # no live notification
    assert (await status(notifier, result.id))["outcomes"]["silent_quiet_hours"] == 1


async def test_urgent_bypasses_quiet_hours_where_the_category_allows(
        node: Node, notifier: Notifier) -> None:
    await prefer(node, "ann", {"quiet_hours": {"start": "10:00", "end": "14:00"}})
    urgent = await notifier.notify({"users": ["ann"], "title": "now", "priority": "urgent"})
    normal = await notifier.notify({"users": ["ann"], "title": "later"})
    assert await ids(node, "ann") == [urgent.id]
    assert (await status(notifier, urgent.id))["outcomes"]["pushed"] == 1
    assert (await status(notifier, normal.id))["outcomes"]["held"] == 1


async def test_caps_count_live_pushes_in_a_rolling_hour(node: Node, notifier: Notifier,
                                                        clock: FakeClock) -> None:
    await prefer(node, "ann", {"caps": {"social": {"per_hour": 2}}})
    ann = await device_of(node, "ann")
    outcomes = []
    for minute in (0, 20, 40, 61, 81, 90):
        clock.set(at("2026-01-15T12:00:00Z") + minute * 60)
        r = await notifier.notify({"users": ["ann"], "title": str(minute),
                                   "category": "social"})
        got = await status(notifier, r.id)
        outcomes.append(next(o for o, n in got["outcomes"].items() if n))
    # 12:40 finds two pushes within the hour; at 13:01 the 12:00 one has left the
    # window, at 13:21 the 12:20 one has (a capped one is no push); 13:30 finds two
    assert outcomes == ["pushed", "pushed", "silent_capped", "pushed", "pushed",
                        "silent_capped"]
    assert await node.store.unread("ann") == 6  # capped ones are in the inbox all the same
    await settle(lambda: len(ann.on(unread_topic("ann"))) == 6)
    assert [p["title"] for p in ann.on(notifications_topic("ann"))] == ["0", "20", "61", "81"]


async def test_a_category_kept_to_a_platform_is_pushed_there_only_and_capped(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    """``"edges": ["fcm"]``: no live push (the entry names fcm, so no live edge
    delivers it), in the inbox, recorded ``pushed``, and counted for the cap."""
    await prefer(node, "ann", {"categories": {"social": {"edges": ["fcm"]}},
                               "caps": {"social": {"per_hour": 1}}})
    ann = await device_of(node, "ann")
    outcomes = []
    for minute in (0, 10):
        clock.set(at("2026-01-15T12:00:00Z") + minute * 60)
        r = await notifier.notify({"users": ["ann"], "title": str(minute),
                                   "category": "social"})
        got = await status(notifier, r.id)
        outcomes.append(next(o for o, n in got["outcomes"].items() if n))
    assert outcomes == ["pushed", "silent_capped"]
    assert await node.store.unread("ann") == 2
    await settle(lambda: len(ann.on(unread_topic("ann"))) == 2)
    [entry] = ann.on(notifications_topic("ann"))  # the stream holds it, for fcm only
    assert (entry["title"], entry["edges"]) == ("0", ["fcm"])


async def test_a_notification_past_its_ttl_is_not_sent(node: Node, notifier: Notifier,
                                                       clock: FakeClock) -> None:
    await tag(node, ["t"], "ann")
    result = await notifier.notify({"tags": ["t"], "title": "flash", "ttl": 60,
                                    "send_at": "2026-01-15T12:05:00Z"})
    clock.set(at("2026-01-15T12:05:00Z"))  # due, but expired at 12:01
    await notifier.sender.step()
    assert await ids(node, "ann") == []
    got = await status(notifier, result.id)
    assert (got["status"], got["outcomes"]["expired"]) == ("sent", 1)


async def test_edges_route_the_push_and_the_outcome_counts_it_once(
        node: Node, notifier: Notifier) -> None:
    await prefer(node, "ann", {"categories": {"social": {"edges": ["ws"]}}})
    ann = await device_of(node, "ann")
    result = await notifier.notify({"users": ["ann"], "title": "x", "category": "social"})
    await settle(lambda: ann.on(notifications_topic("ann")))
    assert ann.on(notifications_topic("ann"))[0]["edges"] == ["ws"]
    assert (await status(notifier, result.id))["outcomes"]["pushed"] == 1


# -- scheduling ----------------------------------------------------------------------------


async def test_send_at_waits_for_its_time_and_is_listed_until_then(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    await tag(node, ["t"], "ann")
    result = await notifier.notify({"tags": ["t"], "title": "x",
                                    "send_at": "2026-01-15T13:00:00+00:00"})
    await notifier.sender.step()
    assert await ids(node, "ann") == []
    listed = await notifier.notifications("scheduled", None, 10)
    assert [n["id"] for n in listed["notifications"]] == [result.id]
    assert listed["notifications"][0]["send_at"] == at("2026-01-15T13:00:00Z")
    clock.set(at("2026-01-15T13:00:00Z"))
    await notifier.sender.step()
    assert await ids(node, "ann") == [result.id]
    assert (await notifier.notifications("scheduled", None, 10))["notifications"] == []
    assert [n["id"] for n in (await notifier.notifications("sent", None, 10))["notifications"]] == [
        result.id]


async def test_send_at_local_fires_at_each_users_own_wall_time(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    await prefer(node, "ann", {"timezone": "Asia/Shanghai"})
    await prefer(node, "bob", {"timezone": "America/New_York"})
    # cy has no zone: the operator's default (UTC)
    result = await notifier.notify({"users": ["ann", "bob", "cy"], "title": "morning",
                                    "send_at_local": "09:00"})
    await notifier.sender.step()  # 12:00 UTC: nobody's 09:00 yet
    got = await status(notifier, result.id)
    assert (got["status"], got["pending"]) == ("sent", 3)
    checks = [("2026-01-15T14:00:00Z", "bob"),  # New York 09:00 (UTC-5)
              ("2026-01-16T01:00:00Z", "ann"),  # Shanghai 09:00 (UTC+8)
              ("2026-01-16T09:00:00Z", "cy")]
    for when, user in checks:
        clock.set(at(when) - 1)
        await notifier.sender.step()
        assert await ids(node, user) == []
        clock.set(at(when))
        await notifier.sender.step()
        assert await ids(node, user) == [result.id]
    got = await status(notifier, result.id)
    assert (got["pending"], got["outcomes"]["pushed"]) == (0, 3)


async def test_best_time_fires_at_the_users_busiest_hour(node: Node, notifier: Notifier,
                                                         clock: FakeClock) -> None:
    # ann opened notifications at 18:xx UTC on three days (and once at 09:xx); bob never did
    for when in ("2026-01-15T18:20:00Z", "2026-01-16T09:10:00Z", "2026-01-16T18:05:00Z",
                 "2026-01-17T18:45:00Z"):
        clock.set(at(when))
        await node.store.engage("ann", "general", "opened", f"n_{when}")
    clock.set(at("2026-01-18T12:00:00Z"))
    result = await notifier.notify({"users": ["ann", "bob"], "title": "x",
                                    "send_at": "best_time"})
    await notifier.sender.step()
    assert await ids(node, "bob") == [result.id]  # no history: now
    assert await ids(node, "ann") == []
    clock.set(at("2026-01-18T17:59:59Z"))
    await notifier.sender.step()
    assert await ids(node, "ann") == []
    clock.set(at("2026-01-18T18:00:00Z"))  # the start of ann's busiest hour
    await notifier.sender.step()
    assert await ids(node, "ann") == [result.id]


async def test_cancel_stops_what_is_not_sent(node: Node, notifier: Notifier,
                                             clock: FakeClock) -> None:
    await tag(node, ["t"], "ann")
    later = await notifier.notify({"tags": ["t"], "title": "x",
                                   "send_at": "2026-01-15T13:00:00Z"})
    assert (await notifier.cancel(later.id))["status"] == "cancelled"
    clock.set(at("2026-01-15T13:00:00Z"))
    await notifier.sender.step()
    assert await ids(node, "ann") == []
    assert (await notifier.cancel(later.id))["status"] == "cancelled"  # again: the same
    sent = await notifier.notify({"users": ["ann"], "title": "y"})
    with pytest.raises(Conflict):
        await notifier.cancel(sent.id)
    with pytest.raises(NotFound):
        await notifier.cancel("n_nobody")
    # a held delivery is dropped with its notification
    await prefer(node, "bob", {"quiet_hours": {"start": "12:00", "end": "14:00"}})
    held = await notifier.notify({"users": ["bob"], "title": "z"})
    await notifier.cancel(held.id)
    clock.set(at("2026-01-15T14:00:00Z"))
    await notifier.sender.step()
    assert await ids(node, "bob") == []


async def test_a_cancel_while_a_page_is_written_stops_before_the_next_page(
        node: Node, notifier: Notifier, monkeypatch: pytest.MonkeyPatch) -> None:
    # the sender decides the next page while the store writes one: a cancel that
    # lands meanwhile still stops it before that decided page is written
    users = [f"u{i}" for i in range(6)]
    await tag(node, ["t"], *users)
    devices = {u: await device_of(node, u) for u in users}
    result = await notifier.notify({"tags": ["t"], "title": "stop"})
    store = node.store
    deliver = store.deliver
    written: list[list[str]] = []

    async def cancelled_meanwhile(nid: str, deliveries: Any, **kw: Any) -> Any:
        got = await deliver(nid, deliveries, **kw)
        written.append([d.user for d in deliveries])
        if len(written) == 1:
            await notifier.cancel(nid)
        return got

    monkeypatch.setattr(store, "deliver", cancelled_meanwhile)
    assert await notifier.sender.step() == 2
    assert written == [["u0", "u1"]]
    for u in users:
        assert await ids(node, u) == ([result.id] if u in ("u0", "u1") else [])
    # the written page is pushed all the same (after its commit); nobody else
    await settle(lambda: all(devices[u].on(notifications_topic(u)) for u in ("u0", "u1")))
    assert all(not devices[u].on(notifications_topic(u)) for u in users[2:])
    got = await status(notifier, result.id)
    assert (got["status"], got["outcomes"]["pushed"]) == ("cancelled", 2)


async def test_a_send_interrupted_mid_way_resumes_without_duplicates(
        node: Node, notifier: Notifier, clock: FakeClock) -> None:
    users = [f"u{i}" for i in range(5)]
    await tag(node, ["t"], *users)
    devices = {u: await device_of(node, u) for u in users}
    result = await notifier.notify({"tags": ["t"], "title": "once"})
    # a node claims it, sends the first chunk, then dies before moving the cursor
    (job,) = await node.store.job_claim("dead-node", lease=60, limit=1)
    sender = notifier.sender
    await sender.send_chunk(job, sender.plan(job), ["u0", "u1"], due=False)
    await sender.step()  # the lease still holds: nobody else touches it
    assert await ids(node, "u2") == []
    clock.advance(60)
    await sender.step()  # resumed from the start (its cursor): u0, u1 are skipped
    for u in users:
        assert await ids(node, u) == [result.id]
        assert await node.store.unread(u) == 1
    await marker(notifier, users, devices)
    for u, d in devices.items():
        assert [p["title"] for p in d.on(notifications_topic(u))] == ["once", "marker"]
    got = await status(notifier, result.id)
    assert (got["status"], got["outcomes"]["pushed"]) == ("sent", 5)


async def test_a_users_list_without_preferences_keeps_the_one_step_path(
        node: Node, notifier: Notifier) -> None:
    result = await notifier.notify({"users": ["ann", "bob"], "title": "x"})
    assert await node.store.job_get(result.id) is None  # no job: sent in one transaction
    got = await status(notifier, result.id)
    assert (got["status"], got["targets"], got["outcomes"]["pushed"]) == ("sent", 2, 2)


async def test_an_idempotent_retry_of_a_job_returns_the_first(node: Node,
                                                              notifier: Notifier) -> None:
    await tag(node, ["t"], "ann")
    first = await notifier.notify({"tags": ["t"], "title": "x"}, "k")
    again = await notifier.notify({"tags": ["t"], "title": "x"}, "k")
    assert again.duplicate and again.id == first.id
    await notifier.sender.step()
    assert await ids(node, "ann") == [first.id]


@pytest.mark.parametrize(("body", "field"), [
    ({"users": ["a"], "segment": "s"}, "users, tags, segment, audience"),
    ({"tags": ["a"], "audience": {}}, "users, tags, segment, audience"),
    ({"tags": []}, "tags"),
    ({"audience": {"attributes": {"age": {"between": [1, 2]}}}}, "audience.attributes.age"),
    ({"users": ["a"], "send_at": "tomorrow"}, "send_at"),
    ({"users": ["a"], "send_at_local": "9am"}, "send_at_local"),
    ({"users": ["a"], "title": "{{ user.name }}"}, "title"),
    ({"users": ["a"], "data": {"x": ["{% for %}"]}}, "data.x[0]"),
    ({"users": ["a"], "locales": {"en": {"subject": "x"}}}, "locales.en.subject"),
], ids=["users-and-segment", "tags-and-audience", "no-tag", "unknown-operator",
        "send-at", "send-at-local", "attribute-access", "statement-in-data", "locale-field"])
async def test_bad_input_names_the_field_and_stores_nothing(
        node: Node, notifier: Notifier, body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        await notifier.notify(body)
    assert refused.value.message.startswith(field), refused.value.message
    for st in JOB_STATUSES:
        assert (await node.store.jobs(st)).jobs == []
    assert await node.store.unread("a") == 0


async def test_a_job_whose_request_no_longer_passes_is_cancelled_not_retried(
        node: Node, notifier: Notifier, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    await tag(node, ["t"], "ann")
    result = await notifier.notify({"tags": ["t"], "title": "{{a}}", "body": "{{b}}",
                                    "send_at": "2026-01-15T13:00:00Z"})
    notifier.settings.max_templates = 1  # the operator lowered the limit meanwhile
    clock.set(at("2026-01-15T13:00:00Z"))
    await notifier.sender.step()
    assert (await status(notifier, result.id))["status"] == "cancelled"
    assert "notify.max_templates" in caplog.text
    assert await ids(node, "ann") == []


async def test_a_process_killed_mid_send_resumes_on_restart_and_nobody_gets_it_twice(
        server_process: ServerProcess) -> None:
    """``kill -9`` while a notification to 4,000 tagged users is being sent, then a
    restart on the same data folder: once the lease has run out, the restarted
    node finishes the job; every user has it exactly once, the counts are exact."""
    users = [f"u{i:05d}" for i in range(4000)]
    store = SqliteStore(server_process.data)
    await store.open()
    await asyncio.gather(*(store.set_user_tags(u, ["t"], max_tags=10) for u in users))
    await store.close()
    server_process.env.update({"TIDINGS_NOTIFY_LEASE": "1",
                               "TIDINGS_AUDIENCE_PAGE_SIZE": "100"})
    server_process.start()
    api = server_process.api_url
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with http.post(f"{api}/v1/notify", json={"tags": ["t"], "title": "once"}) as r:
            assert r.status == 200
            sent = await r.json()
        assert sent["targets"] == 4000

        async def progress() -> dict[str, Any]:
            async with http.get(f"{api}/v1/notifications/{sent['id']}") as r:
                return dict(await r.json())

        async def under_way() -> bool:
            got = await progress()
            assert got["status"] != "sent", "sent before it could be killed"
            return bool(got["outcomes"]["pushed"] >= 100)

        await wait_until(under_way, what="the first chunks")
        server_process.stop(signal.SIGKILL)
        server_process.start()
        try:
            async def finished() -> bool:
                return bool((await progress())["status"] == "sent")

            await wait_until(finished, limit=WAIT * 6, what="the restarted node to finish")
            got = await progress()
            assert got["outcomes"]["pushed"] == 4000
        finally:
            server_process.stop()
    store = SqliteStore(server_process.data)
    await store.open()
    try:
        counts = [await store.unread(u) for u in users]
        assert counts == [1] * len(users)
        assert {tuple(i.fields["id"] for i in (await store.inbox(u, limit=5)).items)
                for u in users[::97]} == {(sent["id"],)}
    finally:
        await store.close()


def test_the_recorded_outcome_and_the_platform_route_of_a_decision() -> None:
    """Live outcomes are as before for ws/mqtt; a category kept to a platform
    channel is ``pushed`` with no live edge, and the route names the channel."""
    now = at("2026-06-15T12:00:00Z")

    def decision(edges: list[str] | None) -> Decision:
        doc: dict[str, Any] = {} if edges is None else {
            "categories": {"social": {"edges": edges}}}
        return decide(Notice("social"), parse(doc, RULES), RULES, [], utc(now))

    assert (outcome_of(decision(None)), route_of(decision(None))) == (("pushed", None),
                                                                     EVERYWHERE)
    assert outcome_of(decision(["ws"])) == ("pushed", ("ws",))
    assert route_of(decision(["ws"])) == Route(frozenset(), live=frozenset({"ws"}))
    assert outcome_of(decision(["fcm", "apns"])) == ("pushed", ("fcm", "apns"))
    assert route_of(decision(["fcm", "apns"])) == Route(frozenset({"fcm", "apns"}),
                                                        live=frozenset())
    assert route_of(decision(["ws", "mqtt", "webpush"])) == Route(frozenset({"webpush"}))
    assert outcome_of(decision([])) == ("suppressed_category", ())
