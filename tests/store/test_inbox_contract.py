"""The inbox contract (``tidings.store.contracts.inbox.InboxStore``, and ``sweep``), per backend.

Runs on the one ``store`` / ``open_store`` / ``clock`` fixture of
``support/stores.py``, so every backend added there runs these tests too.
Time is that fake clock, so expiry is checked without waiting. The rule
under test throughout (the inbox contract): the unread count is always
the number of the user's unread, non-archived, unexpired items, and every
change that alters it also returns the publications that tell the user's
devices.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine
from typing import Any

import orjson
import pytest

from support.inbox import ids_in, payload, policy, send
from support.stores import MAX_INBOX, Clock, OpenStore
from tidings.store.base import (
    NewJob,
    NotifyResult,
    Store,
    UserChange,
    events_topic,
    notifications_topic,
    unread_topic,
)
from tidings.types import parse_offset

pytest_plugins = ["support.redis_servers"]  # the redis backends' session servers

# -- notify ---------------------------------------------------------------------------


async def test_notify_writes_every_target_inbox_and_counts(store: Store) -> None:
    r = await send(store, ["alice", "bob"], title="Your order shipped", category="orders")
    assert (r.targets, r.duplicate) == (2, False)
    assert [c.user for c in r.changes] == ["alice", "bob"]
    for user in ("alice", "bob"):
        page = await store.inbox(user, limit=10)
        assert [i.fields["id"] for i in page.items] == [r.id]
        item = page.items[0]
        assert (item.read, item.archived) == (False, False)
        assert item.fields["title"] == "Your order shipped"
        assert item.fields["category"] == "orders"
        assert isinstance(item.fields["ts"], int)
        assert page.unread == 1 and await store.unread(user) == 1
    assert await store.unread("carol") == 0


async def test_notify_publishes_the_push_and_the_retained_count(store: Store) -> None:
    await send(store, ["alice"])
    r = await send(store, ["alice"], title="second")
    change = r.changes[0]
    assert change.unread == 2 and change.changed == [r.id]
    push = payload(change, notifications_topic("alice"))
    assert push["id"] == r.id and push["title"] == "second" and push["unread"] == 2
    assert "replaces" not in push
    assert payload(change, unread_topic("alice")) == {"count": 2}
    retained = await store.retained(unread_topic("alice"))
    assert [orjson.loads(p.payload) for p in retained] == [{"count": 2}]
    # The user's stream keeps the pushes, so a device can recover them by offset.
    page = await store.history(notifications_topic("alice"), None, 10)
    assert [p.data()["id"] for p in page.items][-1] == r.id
    assert page.offset == next(p for p in change.publications
                               if p.topic == notifications_topic("alice")).offset


async def test_stream_offsets_increase_per_user(store: Store) -> None:
    offsets = []
    for _ in range(3):
        r = await send(store, ["alice"])
        (pub,) = [p for p in r.changes[0].publications
                  if p.topic == notifications_topic("alice")]
        offsets.append(parse_offset(pub.offset))
    assert all(o is not None for o in offsets)
    assert [o[1] for o in offsets] == sorted({o[1] for o in offsets})  # type: ignore[index]
    assert len({o[0] for o in offsets}) == 1  # type: ignore[index]
    assert await store.latest(notifications_topic("alice")) == (
        f"{offsets[-1][0]}:{offsets[-1][1]}")  # type: ignore[index]


async def test_inbox_is_newest_first_and_pages_by_cursor(store: Store) -> None:
    sent = [(await send(store, ["alice"], title=f"t{i}")).id for i in range(5)]
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        page = await store.inbox("alice", limit=2, before=before)
        pages += 1
        seen += [i.fields["id"] for i in page.items]
        assert page.unread == 5
        if page.next is None:
            break
        before = page.next
    assert seen == list(reversed(sent)) and pages == 3


async def test_inbox_unread_only(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    b = (await send(store, ["alice"])).id
    await store.mark("alice", "read", [a], device="d", policy=policy)
    page = await store.inbox("alice", limit=10, unread_only=True)
    assert [i.fields["id"] for i in page.items] == [b] and page.unread == 1


# -- mark -----------------------------------------------------------------------------


async def test_read_changes_count_and_publishes_an_event(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    b = (await send(store, ["alice"])).id
    change = await store.mark("alice", "read", [a], device="phone", policy=policy)
    assert change.unread == 1 and change.changed == [a]
    event = payload(change, events_topic("alice"))
    assert event == {"type": "read", "ids": [a], "unread": 1, "device": "phone"}
    assert payload(change, unread_topic("alice")) == {"count": 1}
    assert await store.read_states("alice", [a, b]) == {a: True, b: False}


async def test_mark_twice_changes_nothing_the_second_time(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    await store.mark("alice", "read", [a, a], device="phone", policy=policy)
    again = await store.mark("alice", "read", [a], device="laptop", policy=policy)
    assert again.changed == [] and again.publications == [] and again.unread == 0


async def test_ids_of_another_user_change_nothing(store: Store) -> None:
    mine = (await send(store, ["alice"])).id
    for action in ("read", "archive", "unread"):
        change = await store.mark("bob", action, [mine, "n_unknown"], device="x",
                                  policy=policy)
        assert change.changed == [] and change.publications == []
    assert await store.unread("alice") == 1
    assert await ids_in(store, "alice") == [mine]
    assert await store.read_states("bob", [mine]) == {}


async def test_mark_all(store: Store) -> None:
    ids = [(await send(store, ["alice"])).id for _ in range(3)]
    await send(store, ["bob"])
    change = await store.mark("alice", "read", None, device="laptop", policy=policy)
    assert change.unread == 0 and sorted(change.changed) == sorted(ids)
    event = payload(change, events_topic("alice"))
    assert event["all"] is True and event["unread"] == 0 and event["device"] == "laptop"
    assert await store.unread("bob") == 1
    back = await store.mark("alice", "unread", None, device="laptop", policy=policy)
    assert back.unread == 3 and payload(back, events_topic("alice"))["type"] == "unread"


async def test_unread_makes_an_item_count_again(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    await store.mark("alice", "read", [a], device="d", policy=policy)
    change = await store.mark("alice", "unread", [a], device="tablet", policy=policy)
    assert change.unread == 1 and change.changed == [a]
    assert payload(change, events_topic("alice")) == {
        "type": "unread", "ids": [a], "unread": 1, "device": "tablet"}


async def test_archive_removes_from_inbox_and_count(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    b = (await send(store, ["alice"])).id
    c = (await send(store, ["alice"])).id
    await store.mark("alice", "read", [b], device="d", policy=policy)
    change = await store.mark("alice", "archive", [a, b], device="phone", policy=policy)
    assert sorted(change.changed) == sorted([a, b]) and change.unread == 1
    assert payload(change, events_topic("alice"))["type"] == "archive"
    assert await ids_in(store, "alice") == [c]
    # An archived item can be neither read nor made unread again.
    for action in ("read", "unread", "archive"):
        nothing = await store.mark("alice", action, [a], device="d", policy=policy)
        assert nothing.changed == [] and nothing.unread == 1
    assert a not in await store.read_states("alice", [a, c])


# -- collapse, ttl, idempotency ---------------------------------------------------------


async def test_collapse_key_replaces_the_older_unread_item(store: Store) -> None:
    old = (await send(store, ["alice", "bob"], collapse_key="score")).id
    new = await send(store, ["alice"], collapse_key="score", title="2-1")
    push = payload(new.changes[0], notifications_topic("alice"))
    assert push["replaces"] == [old] and push["unread"] == 1
    assert await ids_in(store, "alice") == [new.id]
    assert await store.unread("alice") == 1
    assert await ids_in(store, "bob") == [old]  # per user


async def test_collapse_key_keeps_a_read_item(store: Store) -> None:
    old = (await send(store, ["alice"], collapse_key="score")).id
    await store.mark("alice", "read", [old], device="d", policy=policy)
    new = await send(store, ["alice"], collapse_key="score")
    assert "replaces" not in payload(new.changes[0], notifications_topic("alice"))
    assert await ids_in(store, "alice") == [new.id, old]
    assert await store.unread("alice") == 1


async def test_ttl_expires_items_from_inbox_and_count(store: Store, clock: Clock) -> None:
    short = (await send(store, ["alice"], ttl=60)).id
    keep = (await send(store, ["alice"])).id
    assert await store.unread("alice") == 2
    clock.advance(59)
    assert await store.unread("alice") == 2
    clock.advance(2)
    assert await store.unread("alice") == 1
    page = await store.inbox("alice", limit=10)
    assert [i.fields["id"] for i in page.items] == [keep] and page.unread == 1
    # An expired item can no longer be marked, and is not reported as in the inbox.
    change = await store.mark("alice", "read", [short], device="d", policy=policy)
    assert change.changed == [] and change.unread == 1
    assert short not in await store.read_states("alice", [short, keep])
    assert (await store.mark("alice", "read", None, device="d", policy=policy)).changed == [keep]


async def test_idempotency_key_stores_nothing_twice(store: Store) -> None:
    first = await send(store, ["alice", "bob"], key="k1")
    again = await send(store, ["alice", "bob"], key="k1", title="retry")
    assert (again.id, again.targets, again.duplicate) == (first.id, 2, True)
    assert again.changes == []
    assert await ids_in(store, "alice") == [first.id]
    assert await store.unread("alice") == 1
    other = await send(store, ["alice"], key="k2")
    assert other.id != first.id and await store.unread("alice") == 2


# -- read_states, track, stats ------------------------------------------------------------


async def test_read_states_only_for_the_users_items(store: Store) -> None:
    a = (await send(store, ["alice"])).id
    b = (await send(store, ["bob"])).id
    await store.mark("alice", "read", [a], device="d", policy=policy)
    assert await store.read_states("alice", [a, b, "n_unknown"]) == {a: True}


async def test_track_counts_once_per_user_and_event(store: Store) -> None:
    r = await send(store, ["alice", "bob"], category="orders")
    assert await store.track(r.id, "alice", "delivered") is True
    assert await store.track(r.id, "alice", "delivered") is False
    assert await store.track(r.id, "bob", "delivered") is True
    assert await store.track(r.id, "alice", "opened") is True
    assert await store.track(r.id, "alice", "clicked") is True
    assert await store.track(r.id, "bob", "dismissed") is True
    assert await store.track(r.id, "carol", "opened") is False  # not a target
    assert await store.track("n_unknown", "alice", "opened") is False
    stats = await store.stats(r.id)
    assert stats is not None
    assert {k: stats[k] for k in ("id", "category", "targets", "delivered", "opened",
                                  "clicked", "dismissed")} == {
        "id": r.id, "category": "orders", "targets": 2, "delivered": 2, "opened": 1,
        "clicked": 1, "dismissed": 1}
    assert await store.stats("n_unknown") is None


async def test_category_stats(store: Store) -> None:
    a = await send(store, ["alice", "bob"], category="orders")
    await send(store, ["alice"], category="orders")
    await send(store, ["alice"], category="news")
    await store.track(a.id, "alice", "opened")
    await store.track(a.id, "bob", "opened")
    cats = await store.category_stats()
    assert cats["orders"]["notifications"] == 2 and cats["orders"]["targets"] == 3
    assert cats["orders"]["opened"] == 2 and cats["orders"]["clicked"] == 0
    assert cats["news"]["notifications"] == 1 and cats["news"]["opened"] == 0


async def test_feedback_counts_once_per_user_the_first_wins(store: Store) -> None:
    r = await send(store, ["alice", "bob", "carol"], category="orders")
    assert await store.feedback(r.id, "alice", "too_many", "three a day") is True
    assert await store.feedback(r.id, "alice", "other", None) is False  # the first wins
    assert await store.feedback(r.id, "bob", "too_many", None) is True
    assert await store.feedback(r.id, "carol", "wrong_time", "") is True
    assert await store.feedback(r.id, "dave", "other", None) is False  # not a target
    assert await store.feedback("n_unknown", "alice", "other", None) is False
    await store.track(r.id, "alice", "opened")  # feedback is no tracked event's twin
    stats = await store.stats(r.id)
    assert stats is not None
    assert stats["feedback"] == 3 and stats["opened"] == 1 and stats["dismissed"] == 0
    assert stats["feedback_reasons"] == {"not_interested": 0, "too_many": 2,
                                         "wrong_time": 1, "other": 0}
    cats = await store.category_stats()
    assert cats["orders"]["feedback"] == 3 and cats["orders"]["opened"] == 1


async def test_stats_count_feedback_zero_before_any(store: Store) -> None:
    r = await send(store, ["alice"], category="news")
    stats = await store.stats(r.id)
    assert stats is not None and stats["feedback"] == 0
    assert set(stats["feedback_reasons"].values()) == {0}
    assert (await store.category_stats())["news"]["feedback"] == 0


async def test_feedback_of_an_unknown_reason_is_a_caller_error(store: Store) -> None:
    r = await send(store, ["alice"])
    with pytest.raises(ValueError, match="reason"):
        await store.feedback(r.id, "alice", "boring", None)
    assert (await store.stats(r.id) or {})["feedback"] == 0


async def test_recent_notifications_newest_first_with_jobs(store: Store, clock: Clock
                                                           ) -> None:
    """The dashboard's list: notifications sent at once and jobs alike, newest
    first, at most ``limit``."""
    first = (await send(store, ["alice"])).id
    clock.advance(1)
    job = NewJob("n_" + secrets.token_hex(8), "news", {"title": "later",
                 "audience": {"tags": ["x"]}}, 5, clock.now + 60, None)
    await store.job_create(job)
    clock.advance(1)
    last = (await send(store, ["bob"])).id
    assert await store.recent_notifications(10) == [last, job.id, first]
    assert await store.recent_notifications(2) == [last, job.id]


# -- durability and atomicity ---------------------------------------------------------


async def test_inbox_and_counts_survive_reopen(open_store: OpenStore) -> None:
    s = await open_store()
    ids = [(await send(s, ["alice"])).id for _ in range(3)]
    await s.mark("alice", "read", [ids[0]], device="d", policy=policy)
    await s.mark("alice", "archive", [ids[1]], device="d", policy=policy)
    offset = await s.latest(notifications_topic("alice"))
    await s.close()
    s = await open_store()
    assert await s.unread("alice") == 1
    assert await ids_in(s, "alice") == [ids[2], ids[0]]
    assert await s.latest(notifications_topic("alice")) == offset
    assert await s.track(ids[2], "alice", "opened") is True


async def test_feedback_survives_reopen_and_still_counts_once(open_store: OpenStore) -> None:
    s = await open_store()
    nid = (await send(s, ["alice", "bob"], category="orders")).id
    assert await s.feedback(nid, "alice", "not_interested", "x" * 500)
    await s.close()
    s = await open_store()
    assert await s.feedback(nid, "alice", "other", None) is False
    assert await s.feedback(nid, "bob", "other", None) is True
    stats = await s.stats(nid)
    assert stats is not None and stats["feedback"] == 2
    assert (stats["feedback_reasons"]["not_interested"], stats["feedback_reasons"]["other"]) \
        == (1, 1)
    assert (await s.category_stats())["orders"]["feedback"] == 2


async def test_concurrent_feedback_of_one_user_is_recorded_once(store: Store) -> None:
    nid = (await send(store, ["alice"])).id
    reasons = ["not_interested", "too_many", "wrong_time", "other"] * 5
    results = await asyncio.gather(*(store.feedback(nid, "alice", r, None) for r in reasons))
    assert results.count(True) == 1
    stats = await store.stats(nid)
    assert stats is not None and stats["feedback"] == 1
    assert sum(stats["feedback_reasons"].values()) == 1


async def test_concurrent_changes_keep_the_count_exact(store: Store) -> None:
    """Many overlapping notify / read / unread / archive calls: count == model at the end."""
    ids = [(await send(store, ["alice"])).id for _ in range(20)]
    calls: list[Coroutine[Any, Any, UserChange | NotifyResult]] = []
    for i, nid in enumerate(ids):
        calls.append(store.mark("alice", "read", [nid], device=f"d{i % 3}", policy=policy))
        calls.append(store.mark("alice", "read", [nid], device="dup", policy=policy))
        if i % 4 == 0:
            calls.append(store.mark("alice", "archive", [nid], device="d", policy=policy))
    calls += [send(store, ["alice"]) for _ in range(5)]
    results = await asyncio.gather(*calls)
    # No read was applied twice: each id appears in at most one read change.
    read_ids = [nid for r in results if isinstance(r, UserChange) and r.publications
                and payload(r, events_topic("alice"))["type"] == "read" for nid in r.changed]
    assert len(read_ids) == len(set(read_ids))
    page = await store.inbox("alice", limit=100)
    truth = sum(1 for i in page.items if not i.read)
    assert truth == 5 and page.unread == 5 and await store.unread("alice") == 5
    assert len(page.items) == 20 - 5 + 5


# -- the cap (issue 10: an unbounded inbox) --------------------------------------------


async def test_inbox_cap_prunes_read_and_archived_first_then_oldest_unread(
        store: Store) -> None:
    cap = MAX_INBOX
    ids = [(await send(store, ["alice"])).id for _ in range(cap)]
    await store.mark("alice", "read", [ids[20], ids[10]], device="d", policy=policy)
    await store.mark("alice", "archive", [ids[30]], device="d", policy=policy)  # was unread
    assert await store.unread("alice") == cap - 3
    pushes = []
    for _ in range(4):
        r = await send(store, ["alice"])
        pushes.append(payload(r.changes[0], notifications_topic("alice")))
    # Oldest read / archived first, by age: 10, 20, then 30 (archived: not listed),
    # then the oldest unread item, 0, which no longer counts.
    assert [p.get("pruned") for p in pushes] == [[ids[10]], [ids[20]], None, [ids[0]]]
    assert [p["unread"] for p in pushes] == [cap - 2, cap - 1, cap, cap]
    page = await store.inbox("alice", limit=2 * cap)
    listed = [i.fields["id"] for i in page.items]
    assert len(listed) == cap and page.unread == cap == await store.unread("alice")
    assert not {ids[0], ids[10], ids[20], ids[30]} & set(listed)
    assert ids[1] in listed
    # A pruned item is gone: it can be neither marked nor tracked.
    gone = await store.mark("alice", "read", [ids[0], ids[10]], device="d", policy=policy)
    assert gone.changed == [] and gone.unread == cap
    assert await store.read_states("alice", [ids[0], ids[10]]) == {}


async def test_inbox_cap_is_per_user(store: Store) -> None:
    cap = MAX_INBOX
    await send(store, ["bob"])
    for _ in range(cap + 2):
        await send(store, ["alice"])
    assert await store.unread("alice") == cap and await store.unread("bob") == 1


async def test_count_stays_exact_through_every_change(store: Store, clock: Clock) -> None:
    """The counter follows notify, collapse, read, unread, archive, expiry and the cap."""
    a = (await send(store, ["alice"], collapse_key="k")).id
    b = (await send(store, ["alice"], ttl=30)).id
    c = (await send(store, ["alice"])).id
    assert await store.unread("alice") == 3
    await send(store, ["alice"], collapse_key="k")  # replaces a
    assert await store.unread("alice") == 3
    await store.mark("alice", "read", [c, c, "n_unknown"], device="d", policy=policy)
    await store.mark("alice", "read", [c], device="d", policy=policy)  # no change
    assert await store.unread("alice") == 2
    await store.mark("alice", "archive", [c], device="d", policy=policy)  # read: no change
    assert await store.unread("alice") == 2
    clock.advance(31)  # b expires
    assert await store.unread("alice") == 1
    await store.mark("alice", "unread", [b], device="d", policy=policy)  # expired: nothing
    assert await store.unread("alice") == 1
    await store.sweep(policy=policy, limit=100)
    assert await store.unread("alice") == 1
    r = await send(store, ["alice"])
    assert r.changes[0].unread == 2 == await store.unread("alice")
    assert a not in await ids_in(store, "alice")


# -- the sweeper (issue 10: expired rows kept forever) ---------------------------------


async def test_sweep_deletes_expired_items_and_tells_the_user(store: Store,
                                                              clock: Clock) -> None:
    soon = [(await send(store, ["alice"], ttl=60)).id for _ in range(3)]
    keep = (await send(store, ["alice"])).id
    await store.mark("alice", "read", [soon[0]], device="d", policy=policy)
    await store.mark("alice", "archive", [soon[1]], device="d", policy=policy)
    before = await store.sweep(policy=policy, limit=100)
    assert (before.inbox, before.changes) == (0, [])
    clock.advance(61)
    result = await store.sweep(policy=policy, limit=100)
    assert result.inbox == 3 and result.more is False
    (change,) = result.changes
    # The archived item was deleted too, but devices no longer list it.
    assert change.user == "alice" and sorted(change.changed) == sorted([soon[0], soon[2]])
    event = payload(change, events_topic("alice"))
    assert event["type"] == "expire" and sorted(event["ids"]) == sorted([soon[0], soon[2]])
    assert event["unread"] == 1 == change.unread
    assert payload(change, unread_topic("alice")) == {"count": 1}
    retained = await store.retained(unread_topic("alice"))
    assert [orjson.loads(p.payload) for p in retained] == [{"count": 1}]
    page = await store.history(events_topic("alice"), None, 10)
    assert page.items[-1].data() == event
    assert await ids_in(store, "alice") == [keep]
    again = await store.sweep(policy=policy, limit=100)
    assert (again.inbox, again.changes) == (0, [])
    # The item is gone, not hidden: marking it unread changes nothing.
    nothing = await store.mark("alice", "unread", [soon[0]], device="d", policy=policy)
    assert nothing.changed == [] and nothing.unread == 1


async def test_sweep_tells_nobody_when_only_archived_items_expired(
        store: Store, clock: Clock) -> None:
    a = (await send(store, ["alice"], ttl=10)).id
    await store.mark("alice", "archive", [a], device="d", policy=policy)
    clock.advance(11)
    result = await store.sweep(policy=policy, limit=100)
    assert result.inbox == 1 and result.changes == []


async def test_sweep_is_bounded_per_call_and_finishes(store: Store, clock: Clock) -> None:
    users = [f"u{i}" for i in range(5)]
    for user in users:
        await send(store, [user], ttl=5)
    await send(store, ["alice"], ttl=500)  # not due
    clock.advance(6)
    told: list[str] = []
    calls = 0
    while True:
        calls += 1
        assert calls <= 10
        result = await store.sweep(policy=policy, limit=2)
        told += [c.user for c in result.changes]
        if not result.more:
            break
    assert sorted(told) == users and calls >= 3
    for user in users:
        assert await store.unread(user) == 0 and await ids_in(store, user) == []
    assert await store.unread("alice") == 1


async def test_sweep_after_a_later_notify_of_the_same_user(store: Store,
                                                           clock: Clock) -> None:
    """An item with an earlier expiry notified after a later one is still swept on time."""
    late = (await send(store, ["alice"], ttl=1000)).id
    clock.advance(1)
    await store.sweep(policy=policy, limit=100)
    early = (await send(store, ["alice"], ttl=10)).id
    clock.advance(11)
    result = await store.sweep(policy=policy, limit=100)
    assert [c.changed for c in result.changes] == [[early]]
    clock.advance(1000)
    result = await store.sweep(policy=policy, limit=100)
    assert [c.changed for c in result.changes] == [[late]]
    assert await store.unread("alice") == 0
