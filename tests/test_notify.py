"""The notification pipeline on its own (``tidings/notify.py``): no edge, no HTTP.

A real :class:`~tidings.node.Node` on the memory bus and SQLite in ``tmp_path``;
a subscriber on the user's topics stands in for every device of the user. What
the pipeline promises: a request is validated before anything is written, each
target's inbox gets the notification once (an idempotency key makes a retry a
no-op), every change reaches the user's topics through the bus, and read /
track / stats keep their rules (DESIGN.md "The path of a notification and of a
read"). The HTTP and WS paths over it are in ``edges/`` and ``test_inbox.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from conftest import WAIT
from support.pipeline import memory_node
from tidings.config import NotifySettings
from tidings.errors import BadRequest, NotFound, TidingsError, TooLarge
from tidings.node import Node
from tidings.notify import Notifier
from tidings.types import Publication


class Device:
    """Every publication on ``users/{user}/#``, decoded, in arrival order."""

    wire = "raw"

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    restricted = True  # the hub asks may_see of every topic

    def may_see(self, topic: str) -> bool:
        return True

    def deliver(self, pub: Publication, data: bytes) -> None:
        self.got.put_nowait((pub.topic, orjson.loads(data)))

    async def next(self, topic: str) -> dict[str, Any]:
        """The next push on ``topic`` (others on the way are skipped), bounded by WAIT."""
        async with asyncio.timeout(WAIT):
            while True:
                got_topic, body = await self.got.get()
                if got_topic == topic:
                    return body


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with memory_node(tmp_path) as n:
        yield n


@pytest.fixture
def notifier(node: Node) -> Notifier:
    return Notifier(node, NotifySettings(max_users=3, max_data_size=64))


async def device_of(node: Node, user: str) -> Device:
    d = Device()
    await node.subscribe(f"users/{user}/#", d)
    return d


async def test_notify_writes_each_inbox_once_and_pushes_to_every_target(
        node: Node, notifier: Notifier) -> None:
    alice, bob = await device_of(node, "alice"), await device_of(node, "bob")
    result = await notifier.notify({"users": ["alice", "bob", "alice"], "title": "Hi"})
    assert result.targets == 2 and not result.duplicate  # a repeated id counts once
    for d, user in ((alice, "alice"), (bob, "bob")):
        pushed = await d.next(f"users/{user}/notifications")
        assert (pushed["id"], pushed["title"]) == (result.id, "Hi")
        assert (await d.next(f"users/{user}/unread"))["count"] == 1
        page = await node.store.inbox(user, limit=10)
        assert [item.fields["id"] for item in page.items] == [result.id]
    assert node.metrics.get("tidings_notifications_total") == 1


async def test_a_retry_with_the_same_idempotency_key_changes_nothing(
        node: Node, notifier: Notifier) -> None:
    alice = await device_of(node, "alice")
    first = await notifier.notify({"users": ["alice"], "title": "once"}, "key-1")
    await alice.next("users/alice/notifications")
    again = await notifier.notify({"users": ["alice"], "title": "once"}, "key-1")
    assert again.duplicate and again.id == first.id
    marker = await notifier.notify({"users": ["alice"], "title": "marker"})
    assert (await alice.next("users/alice/notifications"))["id"] == marker.id  # not a repeat
    assert await node.store.unread("alice") == 2
    assert node.metrics.get("tidings_notifications_total") == 2


@pytest.mark.parametrize(("body", "error", "code"), [
    ({}, BadRequest, "bad_request"),
    ({"users": []}, BadRequest, "bad_request"),
    ({"users": ["a", "b", "c", "d"]}, BadRequest, "bad_request"),  # over max_users
    ({"users": ["a/b"]}, BadRequest, "bad_request"),
    ({"users": ["a"], "title": 5}, BadRequest, "bad_request"),
    ({"users": ["a"], "title": "x" * 257}, BadRequest, "bad_request"),
    ({"users": ["a"], "priority": "critical"}, BadRequest, "bad_request"),
    ({"users": ["a"], "ttl": 0}, BadRequest, "bad_request"),
    ({"users": ["a"], "ttl": True}, BadRequest, "bad_request"),
    ({"users": ["a"], "media": {"image": "file:///etc/passwd"}}, BadRequest, "bad_request"),
    ({"users": ["a"], "media": {"sound": "https://x.test/a"}}, BadRequest, "bad_request"),
    ({"users": ["a"], "data": {"pad": "x" * 64}}, TooLarge, "too_large"),  # max_data_size
    ({"users": ["a"], "tags": ["vip"]}, BadRequest, "bad_request"),  # two audiences
    ({"users": ["a"], "send_at": 1}, BadRequest, "bad_request"),  # not an RFC 3339 time
    ({"users": ["a"], "send_at": "2026-02-30T09:00:00Z"}, BadRequest, "bad_request"),
    ({"users": ["a"], "send_at_local": "25:00"}, BadRequest, "bad_request"),
    ({"users": ["a"], "send_at": "best_time", "send_at_local": "09:00"}, BadRequest,
     "bad_request"),
    ({"users": ["a"], "title": "{{ ''.__class__ }}"}, BadRequest, "bad_request"),
    ({"users": ["a"], "locales": {"en": {"title": "{% if x %}"}}}, BadRequest,
     "bad_request"),
    ({"users": ["a"], "variants": [{"name": "A"}]}, BadRequest, "bad_request"),
    ({"users": ["a"], "variants": [{"name": "A"}, {"name": "B", "title": "{{ x.y }}"}]},
     BadRequest, "bad_request"),
], ids=["no-users", "empty-users", "too-many-users", "bad-user-id", "title-not-text",
        "title-too-long", "bad-priority", "zero-ttl", "bool-ttl", "media-not-http",
        "media-unknown-kind", "data-too-large", "two-audiences", "send-at-not-text",
        "send-at-no-such-day", "send-at-local-bad", "two-schedules", "unsafe-template",
        "locale-statement", "one-variant", "variant-template"])
async def test_a_bad_request_is_refused_before_anything_is_written(
        node: Node, notifier: Notifier, body: dict[str, Any], error: type[TidingsError],
        code: str) -> None:
    with pytest.raises(error) as refused:
        await notifier.notify(body)
    assert refused.value.code == code
    assert await node.store.unread("a") == 0
    assert node.metrics.get("tidings_notifications_total") == 0


async def test_mark_read_pushes_the_event_and_count_once(node: Node, notifier: Notifier) -> None:
    alice = await device_of(node, "alice")
    sent = [await notifier.notify({"users": ["alice"], "title": str(i)}) for i in range(3)]
    change = await notifier.mark("alice", "read", [sent[0].id], False, "phone")
    assert (change.unread, change.changed) == (2, [sent[0].id])
    event = await alice.next("users/alice/events")
    assert (event["type"], event["ids"], event["device"]) == ("read", [sent[0].id], "phone")
    assert (await alice.next("users/alice/unread"))["count"] == 2

    again = await notifier.mark("alice", "read", [sent[0].id], False, "phone")
    assert (again.changed, again.publications) == ([], [])  # nothing changed: no push
    everything = await notifier.mark("alice", "read", None, True, "laptop")
    assert everything.unread == 0
    # the next event is the "all" one: the repeat in between pushed nothing
    event = await alice.next("users/alice/events")
    assert (event["type"], event.get("all"), event["device"]) == ("read", True, "laptop")


@pytest.mark.parametrize(("ids", "everything"), [
    (None, False), ([], False), (["n_1"], True), ([5], False), (["x" * 129], False),
    (["n"] * 1001, False)],
    ids=["neither", "empty", "ids-and-all", "not-text", "id-too-long", "too-many"])
async def test_mark_needs_ids_or_all(node: Node, notifier: Notifier, ids: list[Any] | None,
                                     everything: bool) -> None:
    await notifier.notify({"users": ["alice"]})
    with pytest.raises(BadRequest):
        await notifier.mark("alice", "read", ids, everything, "phone")
    assert await node.store.unread("alice") == 1


async def test_track_counts_each_event_once_per_target(notifier: Notifier) -> None:
    sent = await notifier.notify({"users": ["alice", "bob"], "category": "news"})
    assert await notifier.track("alice", sent.id, "opened") is True
    assert await notifier.track("alice", sent.id, "opened") is False  # once per user
    assert await notifier.track("carol", sent.id, "opened") is False  # not a target
    assert await notifier.track("bob", sent.id, "clicked") is True
    stats = await notifier.stats(sent.id)
    assert (stats["targets"], stats["opened"], stats["clicked"], stats["category"]) == (
        2, 1, 1, "news")


@pytest.mark.parametrize(("notification", "event"), [
    ("n_1", "liked"), (5, "opened"), ("x" * 129, "opened"), ("", "opened")],
    ids=["unknown-event", "id-not-text", "id-too-long", "id-empty"])
async def test_track_refuses_what_it_cannot_record(notifier: Notifier, notification: Any,
                                                   event: str) -> None:
    with pytest.raises(BadRequest):
        await notifier.track("alice", notification, event)


async def test_stats_of_an_unknown_notification_is_not_found(notifier: Notifier) -> None:
    with pytest.raises(NotFound):
        await notifier.stats("n_missing")
