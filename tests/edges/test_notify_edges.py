"""Targeted, scheduled and preference-routed notifications end to end.

A real node (its HTTP API, WS edge and MQTT broker, SQLite) on a fake clock,
real clients (``websockets`` for WS, paho-mqtt for MQTT). Time moves by hand:
due work fires when the test steps the node's sender (the node's own
scheduler task runs too; steps never overlap). What a backend and its users
rely on: a user with MQTT off for a category gets it on WS only (live and in
recovery), a held notification arrives when quiet hours end, a scheduled one
survives a restart, and the notification endpoints answer as documented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import Node, start_node, stop_node
from support.clock import FakeClock, at
from support.clocked_app import clocked_app_node
from support.mqtt import clients, metric, notifications_device, wait_until
from support.pipeline import fake_clock
from tidings.preferences import Rules, parse

__all__ = ["clients", "clocked_app_node", "fake_clock"]  # fixtures, by name

RULES = Rules.default()


async def prefer(node: Node, user: str, doc: dict[str, Any]) -> None:
    await node.app.node.store.set_user_preferences(user, parse(doc, RULES).to_dict())


async def notify(node: Node, **body: Any) -> dict[str, Any]:
    status, reply = await node.api("POST", "/v1/notify", body)
    assert status == 200, reply
    return dict(reply)


async def test_a_category_off_on_mqtt_reaches_ws_only_live_and_in_recovery(
        node: Node, clients: list[Any]) -> None:
    await prefer(node, "ann", {"categories": {"social": {"edges": ["ws"]},
                                              "digest": {"edges": ["mqtt"]}}})
    ws = await node.client("ann")
    mqtt = await notifications_device(node, "ann", clients)
    social = await notify(node, users=["ann"], title="friend request", category="social")
    digest = await notify(node, users=["ann"], title="weekly digest", category="digest")
    marker = await notify(node, users=["ann"], title="marker")
    # WS: the social one, then the marker (the digest never came)
    assert (await ws.push_of("notification"))["id"] == social["id"]
    assert (await ws.push_of("notification"))["id"] == marker["id"]
    # MQTT: the digest, then the marker (the social one never came)
    got = [orjson.loads((await mqtt.message()).payload)["id"] for _ in range(2)]
    assert got == [digest["id"], marker["id"]]
    status, inbox = await node.api("GET", "/v1/users/ann/inbox")
    assert status == 200 and {i["id"] for i in inbox["items"]} == {
        social["id"], digest["id"], marker["id"]}  # the inbox holds all three


async def test_recovery_skips_what_was_routed_to_the_other_edge(
        node: Node, clients: list[Any]) -> None:
    await prefer(node, "ann", {"categories": {"digest": {"edges": ["mqtt"]}}})
    await notify(node, users=["ann"], title="before")
    ws = await node.client("ann")
    since = ws.hello["offset"]
    await ws.close()
    digest = await notify(node, users=["ann"], title="digest", category="digest")
    plain = await notify(node, users=["ann"], title="plain")
    again = await node.client("ann", since=since)
    assert [n["id"] for n in again.hello["recovered"]] == [plain["id"]]
    assert again.hello["unread"] == 3  # the digest is in the inbox all the same
    status, inbox = await node.api("GET", "/v1/users/ann/inbox")
    assert status == 200 and digest["id"] in {i["id"] for i in inbox["items"]}


async def test_a_held_notification_arrives_when_quiet_hours_end(node: Node,
                                                                clock: FakeClock) -> None:
    await prefer(node, "ann", {"timezone": "Europe/Paris",
                               "quiet_hours": {"start": "22:00", "end": "07:00"}})
    clock.set(at("2026-01-15T22:30:00Z"))  # Paris 23:30
    ws = await node.client("ann")
    sent = await notify(node, users=["ann"], title="good morning")
    status, got = await node.api("GET", f"/v1/notifications/{sent['id']}")
    assert status == 200 and got["outcomes"]["held"] == 1 and got["status"] == "sent"
    status, unread = await node.api("GET", "/v1/users/ann/unread")
    assert unread["unread"] == 0  # not unread until delivered
    clock.set(at("2026-01-16T06:00:00Z"))  # Paris 07:00
    await node.app.notifier.sender.step()
    pushed = await ws.push_of("notification")
    assert (pushed["id"], pushed["title"], pushed["unread"]) == (sent["id"], "good morning", 1)
    status, got = await node.api("GET", f"/v1/notifications/{sent['id']}")
    assert (got["outcomes"]["held"], got["outcomes"]["pushed"]) == (0, 1)
    assert await metric(node, "tidings_notification_outcomes_total", outcome="held") == 1
    assert await metric(node, "tidings_notification_outcomes_total", outcome="pushed") == 1


async def test_tags_over_http_send_in_the_background_and_report_their_status(
        node: Node) -> None:
    store = node.app.node.store
    for user in ("ann", "bob"):
        await store.set_user_tags(user, ["sports"], max_tags=10)
    ws = await node.client("ann")
    sent = await notify(node, tags={"any": ["sports"], "none": ["muted"]}, title="Goal!")
    assert sent["targets"] == 2
    assert (await ws.push_of("notification"))["id"] == sent["id"]  # the node's sender sent it

    async def done() -> bool:
        _, got = await node.api("GET", f"/v1/notifications/{sent['id']}")
        return bool(got["status"] == "sent")

    await wait_until(done, what="the job to finish")
    _, got = await node.api("GET", f"/v1/notifications/{sent['id']}")
    assert (got["targets"], got["outcomes"]["pushed"], got["category"]) == (2, 2, "general")
    assert {"delivered", "opened", "clicked"} <= set(got)  # the stats are there too


async def test_scheduled_notifications_are_listed_cancelled_and_fired(
        node: Node, clock: FakeClock) -> None:
    ws = await node.client("ann")
    keep = await notify(node, users=["ann"], title="at one", send_at="2026-01-15T13:00:00Z")
    drop = await notify(node, users=["ann"], title="dropped", send_at="2026-01-15T13:00:00Z")
    status, listed = await node.api("GET", "/v1/notifications?status=scheduled&limit=1")
    assert status == 200 and [n["id"] for n in listed["notifications"]] == [keep["id"]]
    status, rest = await node.api("GET", f"/v1/notifications?status=scheduled&limit=1"
                                         f"&cursor={listed['next']}")
    assert [n["id"] for n in rest["notifications"]] == [drop["id"]] and rest["next"] is None
    status, cancelled = await node.api("DELETE", f"/v1/notifications/{drop['id']}")
    assert status == 200 and cancelled["status"] == "cancelled"
    status, err = await node.api("DELETE", "/v1/notifications/n_nobody")
    assert status == 404 and err["error"]["code"] == "not_found"
    clock.set(at("2026-01-15T13:00:00Z"))
    await node.app.notifier.sender.step()
    assert (await ws.push_of("notification"))["id"] == keep["id"]
    marker = await notify(node, users=["ann"], title="marker")
    assert (await ws.push_of("notification"))["id"] == marker["id"]  # the dropped one never came
    status, err = await node.api("DELETE", f"/v1/notifications/{keep['id']}")
    assert status == 409 and err["error"]["code"] == "conflict"


async def test_a_schedule_survives_a_restart_and_a_missed_one_fires_at_start(
        tmp_path: Path, clock: FakeClock) -> None:
    first = await start_node(tmp_path, clock=clock)
    try:
        sent = await notify(first, users=["ann"], title="later",
                            send_at="2026-01-15T13:00:00Z")
    finally:
        await stop_node(first)
    clock.set(at("2026-01-15T14:00:00Z"))  # the server was down at 13:00
    second = await start_node(tmp_path, clock=clock)
    try:
        async def delivered() -> bool:
            _, inbox = await second.api("GET", "/v1/users/ann/inbox")
            return [i["id"] for i in inbox["items"]] == [sent["id"]]

        await wait_until(delivered, what="the missed schedule to fire at start")
    finally:
        await stop_node(second)


@pytest.mark.parametrize(("body", "field"), [
    ({"users": ["a"], "tags": ["x"], "title": "t"}, "users, tags, segment, audience"),
    ({"users": ["a"], "send_at": "2026-13-01T00:00:00Z"}, "send_at"),
    ({"users": ["a"], "send_at": "2026-01-15 09:00"}, "send_at"),
    ({"users": ["a"], "send_at_local": "09:00+02:00"}, "send_at_local"),
    ({"segment": "no such/segment"}, "segment"),
    ({"audience": {"tags": {"some": ["x"]}}}, "audience.tags.some"),
    ({"users": ["a"], "body": "{{ x.__class__ }}"}, "body"),
], ids=["two-audiences", "no-month-13", "no-offset", "local-with-offset", "bad-segment-name",
        "unknown-selector", "unsafe-template"])
async def test_bad_input_is_a_400_naming_the_field(node: Node, body: dict[str, Any],
                                                   field: str) -> None:
    status, reply = await node.api("POST", "/v1/notify", body)
    assert status == 400, reply
    assert reply["error"]["message"].startswith(field), reply


async def test_an_unknown_segment_is_404_and_a_bad_status_400(node: Node) -> None:
    status, reply = await node.api("POST", "/v1/notify", {"segment": "ghosts", "title": "t"})
    assert status == 404 and "segment" in reply["error"]["message"]
    status, reply = await node.api("GET", "/v1/notifications?status=lost")
    assert status == 400 and reply["error"]["message"].startswith("status")
    status, reply = await node.api("GET", "/v1/notifications/n_nobody")
    assert status == 404
