"""The notification contract (``tidings.store.contracts.notifications.NotificationStore``).

On the one ``store`` / ``open_store`` / ``clock`` fixture of ``support/stores.py``,
on every backend that implements the contract (``backends_for``: SQLite now;
Redis and Redis Cluster join when they implement it). Time is the fake clock:
leases expire and queue entries fall due by moving it. The rules under test:
a job is claimed by one node at a time and resumed after its lease expires;
a chunk replayed after a crash writes nobody anything twice; held users get
no inbox item (and no unread) until the due queue fires them; each target's
first recorded variant stays, and its states and events count for it.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest

from support.inbox import ids_in, payload, policy
from support.stores import Clock, OpenStore, backends_for
from tidings.store.base import (
    STAT_EVENTS,
    TARGET_STATES,
    Delivery,
    NewJob,
    NotificationStore,
    Store,
    events_topic,
    notifications_topic,
    unread_topic,
)

pytest_plugins = ["support.redis_servers"]  # the redis backends' session servers
pytestmark = pytest.mark.parametrize("open_store", backends_for(NotificationStore),
                                     indirect=True)

LEASE = 30.0


def new_job(*, due: float, targets: int = 3, category: str = "general",
            expires_at: float | None = None) -> NewJob:
    return NewJob("n_" + secrets.token_hex(8), category,
                  {"title": "hi", "audience": {"tags": ["x"]}}, targets, due, expires_at)


def fields(title: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"title": title, "body": "", "data": None, "category": "general",
            "priority": "normal", "media": None, **extra}


async def deliver(store: Store, nid: str, deliveries: list[Delivery], *, due: bool = False,
                  collapse_key: str | None = None) -> Any:
    return await store.deliver(nid, deliveries, category="general", expires_at=None,
                               collapse_key=collapse_key, policy=policy, due=due)


# -- jobs -----------------------------------------------------------------------------------


async def test_a_created_job_is_scheduled_and_has_stats(store: Store, clock: Clock) -> None:
    spec = new_job(due=clock.now + 60, targets=7, category="news")
    job, duplicate = await store.job_create(spec)
    assert not duplicate
    assert (job.id, job.status, job.category, job.targets) == (spec.id, "scheduled", "news", 7)
    assert (job.created, job.due, job.cursor, job.outcomes) == (clock.now, clock.now + 60,
                                                                None, {})
    assert job.request == spec.request
    assert await store.job_get(spec.id) == job
    assert await store.job_get("n_unknown") is None
    stats = await store.stats(spec.id)
    assert stats is not None and stats["targets"] == 7 and stats["category"] == "news"


async def test_a_repeated_idempotency_key_returns_the_first_job(store: Store,
                                                                clock: Clock) -> None:
    first, _ = await store.job_create(new_job(due=clock.now), idempotency_key="k1")
    again, duplicate = await store.job_create(new_job(due=clock.now), idempotency_key="k1")
    assert duplicate and again.id == first.id
    assert len((await store.jobs("scheduled")).jobs) == 1


async def test_a_job_made_with_an_owner_is_its_to_send(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now), owner="a", lease=LEASE)
    assert (job.status, job.lease_owner, job.lease_until) == ("sending", "a", clock.now + LEASE)
    assert await store.job_claim("b", lease=LEASE) == []
    clock.advance(LEASE)  # "a" died before it finished: another node resumes it
    assert [j.id for j in await store.job_claim("b", lease=LEASE)] == [job.id]


async def test_claim_takes_due_jobs_only_and_once(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now + 10))
    assert await store.job_claim("a", lease=LEASE) == []
    clock.advance(10)
    (claimed,) = await store.job_claim("a", lease=LEASE)
    assert (claimed.id, claimed.status, claimed.lease_owner) == (job.id, "sending", "a")
    assert claimed.lease_until == clock.now + LEASE
    assert await store.job_claim("b", lease=LEASE) == []  # leased: nobody else


async def test_two_nodes_claiming_at_once_get_each_job_once(open_store: OpenStore,
                                                            clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    made = [(await one.job_create(new_job(due=clock.now)))[0].id for _ in range(6)]
    got = await asyncio.gather(*(s.job_claim(name, lease=LEASE, limit=10)
                                 for s, name in ((one, "a"), (two, "b"), (one, "c"))))
    ids = [j.id for jobs in got for j in jobs]
    assert sorted(ids) == sorted(made)


async def test_an_expired_lease_is_resumed_by_another_node_from_its_cursor(
        store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await store.job_claim("a", lease=LEASE)
    assert await store.job_progress(job.id, "a", "u0100", lease=LEASE)
    clock.advance(LEASE)  # "a" died: its lease ran out
    (resumed,) = await store.job_claim("b", lease=LEASE)
    assert (resumed.id, resumed.cursor, resumed.lease_owner) == (job.id, "u0100", "b")
    # the old owner, back from a pause, can neither move the job nor finish it
    assert not await store.job_progress(job.id, "a", "u0200", lease=LEASE)
    assert not await store.job_finish(job.id, "a")
    assert await store.job_progress(job.id, "b", "u0200", lease=LEASE)
    clock.advance(LEASE - 1)  # renewed by progress: still "b"'s
    assert await store.job_claim("c", lease=LEASE) == []
    assert await store.job_finish(job.id, "b")
    done = await store.job_get(job.id)
    assert done is not None and (done.status, done.cursor, done.lease_owner) == (
        "sent", None, None)
    clock.advance(3 * LEASE)
    assert await store.job_claim("c", lease=LEASE) == []  # sent is final


async def test_requeue_schedules_the_next_phase_for_one_node(open_store: OpenStore,
                                                              clock: Clock) -> None:
    one, two = await open_store(), await open_store()
    job, _ = await one.job_create(new_job(due=clock.now))
    await one.job_claim("a", lease=LEASE)
    assert await one.job_progress(job.id, "a", "u0100", lease=LEASE)
    phase = {**job.request, "experiment_state": {"phase": "testing"}}
    assert not await one.job_requeue(job.id, "b", phase, due=clock.now + 60)  # not b's
    assert await one.job_requeue(job.id, "a", phase, due=clock.now + 60)
    again = await two.job_get(job.id)
    assert again is not None
    assert (again.status, again.due, again.cursor, again.lease_owner, again.request) == (
        "scheduled", clock.now + 60, None, None, phase)
    assert [j.id for j in (await two.jobs("scheduled")).jobs] == [job.id]
    assert (await two.jobs("sending")).jobs == []
    assert not await one.job_requeue(job.id, "a", job.request, due=clock.now)  # lease gone
    assert not await one.job_finish(job.id, "a")
    assert await two.job_claim("b", lease=LEASE) == []  # not due yet
    clock.advance(60)
    got = await asyncio.gather(one.job_claim("a", lease=LEASE), two.job_claim("b", lease=LEASE))
    claimed = [j for jobs in got for j in jobs]
    assert [(j.id, j.request, j.cursor) for j in claimed] == [(job.id, phase, None)]
    assert await (one if got[0] else two).job_finish(job.id, claimed[0].lease_owner or "")
    # a cancelled job is not requeued
    other, _ = await one.job_create(new_job(due=clock.now))
    await one.job_claim("a", lease=LEASE)
    await one.job_cancel(other.id)
    assert not await one.job_requeue(other.id, "a", phase, due=clock.now)
    cancelled = await one.job_get(other.id)
    assert cancelled is not None and cancelled.status == "cancelled"


async def test_cancel_stops_what_is_not_sent(store: Store, clock: Clock) -> None:
    waiting, _ = await store.job_create(new_job(due=clock.now + 60))
    cancelled = await store.job_cancel(waiting.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    clock.advance(60)
    assert await store.job_claim("a", lease=LEASE) == []
    # a sending job stops at its next chunk
    sending, _ = await store.job_create(new_job(due=clock.now))
    await store.job_claim("a", lease=LEASE)
    await deliver(store, sending.id, [Delivery("u1", "held", due_at=clock.now + 5)])
    assert (await store.job_cancel(sending.id)) is not None
    assert not await store.job_progress(sending.id, "a", "x", lease=LEASE)
    assert not await store.job_finish(sending.id, "a")
    clock.advance(10)
    assert await store.due_claim("a", lease=LEASE, limit=10) == []  # its queue went too
    # a sent job is returned as it is
    sent, _ = await store.job_create(new_job(due=clock.now))
    await store.job_claim("a", lease=LEASE)
    await store.job_finish(sent.id, "a")
    after = await store.job_cancel(sent.id)
    assert after is not None and after.status == "sent"
    # unless some of its users still wait in the due queue
    waiting, _ = await store.job_create(new_job(due=clock.now))
    await store.job_claim("a", lease=LEASE)
    await deliver(store, waiting.id, [Delivery("u2", "scheduled", due_at=clock.now + 60)])
    await store.job_finish(waiting.id, "a")
    after = await store.job_cancel(waiting.id)
    assert after is not None and after.status == "cancelled"
    clock.advance(60)
    assert await store.due_claim("a", lease=LEASE, limit=10) == []
    assert await store.job_cancel("n_unknown") is None


async def test_jobs_are_listed_by_status_in_pages(store: Store, clock: Clock) -> None:
    made = []
    for _ in range(5):
        made.append((await store.job_create(new_job(due=clock.now + 100)))[0].id)
        clock.advance(1)
    await store.job_cancel(made[2])
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # bounded
        page = await store.jobs("scheduled", cursor=cursor, limit=2)
        assert len(page.jobs) <= 2
        seen += [j.id for j in page.jobs]
        if page.next is None:
            break
        cursor = page.next
    assert seen == [made[0], made[1], made[3], made[4]]
    assert [j.id for j in (await store.jobs("cancelled")).jobs] == [made[2]]
    assert (await store.jobs("sent")).jobs == []


async def test_a_job_survives_a_reopen(open_store: OpenStore, clock: Clock) -> None:
    first = await open_store()
    job, _ = await first.job_create(new_job(due=clock.now + 60))
    await first.close()
    again = await open_store()
    assert [j.id for j in (await again.jobs("scheduled")).jobs] == [job.id]
    clock.advance(60)
    assert [j.id for j in await again.job_claim("b", lease=LEASE)] == [job.id]


# -- delivery -------------------------------------------------------------------------------


async def test_deliver_writes_each_users_own_fields_and_counts_outcomes(
        store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    result = await deliver(store, job.id, [
        Delivery("ann", "pushed", fields(title="Hi Ann"), edges=None),
        Delivery("bob", "silent_capped", fields(title="Hi Bob"), edges=()),
        Delivery("cy", "suppressed_category"),
    ])
    assert result.recorded == ["ann", "bob", "cy"]
    assert [c.user for c in result.changes] == ["ann", "bob"]
    ann = payload(result.changes[0], notifications_topic("ann"))
    assert (ann["id"], ann["title"], ann["unread"]) == (job.id, "Hi Ann", 1)
    assert "edges" not in ann  # every edge
    # silent: the item, an event that names it and the count; no live notification
    assert [p.topic for p in result.changes[1].publications] == [events_topic("bob"),
                                                                 unread_topic("bob")]
    assert payload(result.changes[1], events_topic("bob")) == {
        "type": "silent", "ids": [job.id], "unread": 1}
    assert payload(result.changes[1], unread_topic("bob")) == {"count": 1}
    assert (await store.inbox("bob", limit=10)).items[0].fields["title"] == "Hi Bob"
    assert await ids_in(store, "cy") == [] and await store.unread("cy") == 0
    got = await store.job_get(job.id)
    assert got is not None and got.outcomes == {"pushed": 1, "silent_capped": 1,
                                                "suppressed_category": 1}
    # tracking works on the delivered targets
    assert await store.track(job.id, "ann", "opened")
    assert not await store.track(job.id, "cy", "opened")


async def test_a_push_for_some_edges_names_them(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    result = await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=("ws",))])
    assert payload(result.changes[0], notifications_topic("ann"))["edges"] == ["ws"]
    history = await store.history(notifications_topic("ann"), None, 10)
    assert history.items[0].data()["edges"] == ["ws"]  # recovery sees it too


async def test_a_replayed_chunk_sends_nobody_anything_twice(store: Store,
                                                            clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    chunk = [Delivery(u, "pushed", fields(), edges=None) for u in ("ann", "bob")]
    await deliver(store, job.id, chunk[:1])  # the node died after the first user
    again = await deliver(store, job.id, chunk)
    assert again.recorded == ["bob"] and [c.user for c in again.changes] == ["bob"]
    for user in ("ann", "bob"):
        assert await ids_in(store, user) == [job.id] and await store.unread(user) == 1
    got = await store.job_get(job.id)
    assert got is not None and got.outcomes == {"pushed": 2}
    assert (await store.recent_pushes(["ann", "bob"], "general", clock.now - 1)) == {
        "ann": [clock.now], "bob": [clock.now]}


async def test_a_held_user_gets_it_when_the_queue_fires(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "held", due_at=clock.now + 3600)])
    assert await ids_in(store, "ann") == [] and await store.unread("ann") == 0
    assert await store.due_claim("a", lease=LEASE, limit=10) == []  # not due yet
    # replaying the chunk neither delivers nor queues it again
    await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None)])
    assert await ids_in(store, "ann") == []
    clock.advance(3600)
    (entry,) = await store.due_claim("a", lease=LEASE, limit=10)
    assert (entry.notification, entry.user, entry.due) == (job.id, "ann", clock.now)
    assert await store.due_claim("b", lease=LEASE, limit=10) == []  # leased to "a"
    result = await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None)],
                           due=True)
    assert result.recorded == ["ann"]
    assert await ids_in(store, "ann") == [job.id] and await store.unread("ann") == 1
    got = await store.job_get(job.id)
    assert got is not None and got.outcomes == {"pushed": 1}
    clock.advance(2 * LEASE)
    assert await store.due_claim("b", lease=LEASE, limit=10) == []  # done: gone
    # a second firing (a node that lost its lease) changes nothing
    late = await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None)],
                         due=True)
    assert late.recorded == [] and await store.unread("ann") == 1


async def test_an_unfinished_firing_is_handed_out_again_after_its_lease(
        store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "scheduled", due_at=clock.now)])
    assert [e.user for e in await store.due_claim("a", lease=LEASE, limit=10)] == ["ann"]
    clock.advance(LEASE)  # "a" died before delivering
    assert [e.user for e in await store.due_claim("b", lease=LEASE, limit=10)] == ["ann"]
    got = await store.job_get(job.id)
    assert got is not None and got.outcomes == {"scheduled": 1}


async def test_recent_pushes_read_a_chunk_in_one_call(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=("mqtt",))])
    t1 = clock.now
    clock.advance(100)
    other, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, other.id, [Delivery("ann", "pushed", fields(), edges=None),
                                    Delivery("bob", "silent_capped", fields(), edges=())])
    got = await store.recent_pushes(["ann", "bob", "cy"], "general", t1 - 1)
    assert got == {"ann": [t1, clock.now]}
    assert await store.recent_pushes(["ann"], "general", t1) == {"ann": [clock.now]}
    assert await store.recent_pushes(["ann"], "marketing", 0) == {}


async def test_engagement_times_read_a_chunk_in_one_call(store: Store, clock: Clock) -> None:
    await store.engage("ann", "news", "opened", "n_1")
    t1 = clock.now
    clock.advance(3600)
    await store.engage("ann", "sports", "clicked", "n_2")
    await store.engage("bob", "news", "clicked", "n_3")
    got = await store.engagement_times(["ann", "bob", "cy"], t1 - 1)
    assert got == {"ann": [t1, clock.now], "bob": [clock.now]}
    assert await store.engagement_times(["ann"], t1) == {"ann": [clock.now]}


# -- counts per variant ---------------------------------------------------------------------


def counted(**fields: int) -> dict[str, int]:
    """One variant's ``variant_counts`` entry: the named counts, every other zero."""
    row = {"targets": 0, **dict.fromkeys(TARGET_STATES, 0), **dict.fromkeys(STAT_EVENTS, 0)}
    for name, n in fields.items():
        assert name in row, name
        row[name] = n
    return row


async def test_variant_counts_count_targets_states_and_events_per_variant(
        store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    assert await store.variant_counts(job.id) == {}  # nothing delivered yet
    await deliver(store, job.id, [
        Delivery("ann", "pushed", fields(), edges=None, variant="A"),
        Delivery("bob", "silent_capped", fields(), edges=(), variant="B"),
        Delivery("cy", "suppressed_category", variant="A"),
        Delivery("dee", "pushed", fields(), edges=None),  # no variant: not listed
    ])
    assert await store.track(job.id, "ann", "opened")
    assert not await store.track(job.id, "ann", "opened")  # once per user
    assert await store.track(job.id, "ann", "clicked")
    assert await store.track(job.id, "bob", "delivered")
    assert await store.track(job.id, "dee", "opened")
    assert await store.variant_counts(job.id) == {
        "A": counted(targets=2, pushed=1, suppressed_category=1, opened=1, clicked=1),
        "B": counted(targets=1, silent_capped=1, delivered=1),
    }
    # the notification's totals still count every target's events
    stats = await store.stats(job.id)
    assert stats is not None and stats["opened"] == 2
    assert await store.variant_counts("n_unknown") == {}


async def test_feedback_counts_per_variant_like_a_tracked_event(store: Store,
                                                                clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [
        Delivery("ann", "pushed", fields(), edges=None, variant="A"),
        Delivery("bob", "pushed", fields(), edges=None, variant="B"),
        Delivery("cy", "pushed", fields(), edges=None, variant="B"),
    ])
    assert await store.feedback(job.id, "ann", "too_many", None)
    assert not await store.feedback(job.id, "ann", "other", None)  # once per user
    assert await store.feedback(job.id, "bob", "not_interested", "no")
    assert await store.track(job.id, "cy", "opened")
    assert await store.variant_counts(job.id) == {
        "A": counted(targets=1, pushed=1, feedback=1),
        "B": counted(targets=2, pushed=2, feedback=1, opened=1),
    }
    stats = await store.stats(job.id)
    assert stats is not None and stats["feedback"] == 2


async def test_variant_counts_are_empty_without_variants(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None)])
    assert await store.track(job.id, "ann", "opened")
    assert await store.variant_counts(job.id) == {}


async def test_a_replayed_chunk_keeps_the_first_variant(store: Store, clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None,
                                           variant="A")])
    again = await deliver(store, job.id, [
        Delivery("ann", "pushed", fields(), edges=None, variant="B"),
        Delivery("bob", "pushed", fields(), edges=None, variant="B")])
    assert again.recorded == ["bob"]
    assert await store.track(job.id, "ann", "opened")
    assert await store.variant_counts(job.id) == {"A": counted(targets=1, pushed=1, opened=1),
                                                  "B": counted(targets=1, pushed=1)}


async def test_a_fired_user_keeps_the_variant_and_moves_state(store: Store,
                                                              clock: Clock) -> None:
    job, _ = await store.job_create(new_job(due=clock.now))
    await deliver(store, job.id, [Delivery("ann", "held", due_at=clock.now + 60, variant="A"),
                                  Delivery("bob", "held", due_at=clock.now + 60, variant="B")])
    assert await store.variant_counts(job.id) == {"A": counted(targets=1, held=1),
                                                  "B": counted(targets=1, held=1)}
    clock.advance(60)
    assert len(await store.due_claim("a", lease=LEASE, limit=10)) == 2
    # a firing that names another variant, or none, keeps the first recorded
    await deliver(store, job.id, [Delivery("ann", "pushed", fields(), edges=None, variant="B"),
                                  Delivery("bob", "pushed", fields(), edges=None)], due=True)
    assert await store.track(job.id, "ann", "clicked")
    assert await store.track(job.id, "bob", "opened")
    assert await store.variant_counts(job.id) == {
        "A": counted(targets=1, pushed=1, clicked=1),
        "B": counted(targets=1, pushed=1, opened=1)}


async def test_variant_counts_survive_a_reopen(open_store: OpenStore, clock: Clock) -> None:
    first = await open_store()
    job, _ = await first.job_create(new_job(due=clock.now))
    await deliver(first, job.id, [Delivery("ann", "pushed", fields(), edges=None,
                                           variant="A")])
    await first.close()
    again = await open_store()
    assert await again.track(job.id, "ann", "opened")
    assert await again.variant_counts(job.id) == {"A": counted(targets=1, pushed=1, opened=1)}
