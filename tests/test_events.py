"""Events for backends: sortable ids, and the webhook sink's batching,
signatures, retries, ordering and dead-lettering, received by a real local
HTTP server (fake time for the retry waits only)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from conftest import WAIT
from support.push_standins import Reply, StandIn
from tidings.events import Event, EventIds, WebhookSink
from tidings.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_unique_and_sort_by_time_then_order() -> None:
    clock = FakeClock()
    ids = EventIds("node-a", clock)
    made = [ids.next()[0] for _ in range(5)]
    clock.now += 0.001
    made += [ids.next()[0] for _ in range(3)]
    clock.now -= 10  # a clock step back never reorders
    made.append(ids.next()[0])
    assert made == sorted(made) and len(set(made)) == len(made)
    other = EventIds("node-b", clock).next()[0]
    assert other.rsplit("-", 1)[1] != made[0].rsplit("-", 1)[1]


@dataclass
class Rig:
    hook: StandIn
    sink: WebhookSink
    waits: list[float]
    metrics: Metrics


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    hook = StandIn(Reply(204))
    url = await hook.start() + "/hooks/tidings"
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    metrics = Metrics(process=False)
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(url, session, secret="s3cret", batch=100, linger=0.05, retries=2,
                           metrics=metrics, sleep=sleep)
        yield Rig(hook, sink, waits, metrics)
        await sink.close()
    await hook.stop()


def events(n: int, start: int = 0) -> list[Event]:
    return [Event(f"{i:013d}-000000-aaaaaa", "opened", 1.0 + i, user=f"u{i}", notification="n_1")
            for i in range(start, start + n)]


async def received(rig: Rig, count: int) -> list[list[dict[str, object]]]:
    """Wait until ``count`` events arrived (over every request, retries included)
    and the sink has nothing left; the batches, in order."""
    async with asyncio.timeout(WAIT):
        await rig.sink.wait_empty()
    assert sum(len(orjson.loads(r.body)["events"]) for r in rig.hook.requests) == count
    return [orjson.loads(r.body)["events"] for r in rig.hook.requests]


async def test_batches_of_at_most_n_in_order(rig: Rig) -> None:
    for e in events(250):
        rig.sink.put(e)
    batches = await received(rig, 250)
    assert [len(b) for b in batches] == [100, 100, 50]
    ids = [e["id"] for b in batches for e in b]
    assert ids == [e.id for e in events(250)]
    assert batches[0][0] == {"id": events(1)[0].id, "type": "opened", "ts": 1.0, "user": "u0",
                             "notification": "n_1"}
    assert rig.metrics.get("tidings_events_sent_total") == 250


async def test_a_few_events_linger_into_one_batch(rig: Rig) -> None:
    for e in events(3):
        rig.sink.put(e)
    batches = await received(rig, 3)
    assert [len(b) for b in batches] == [3]


async def test_signature_and_delivery_id(rig: Rig) -> None:
    rig.sink.put(events(1)[0])
    await received(rig, 1)
    req = rig.hook.requests[0]
    want = "sha256=" + hmac.new(b"s3cret", req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-tidings-signature"] == want
    assert req.headers["x-tidings-delivery"] == events(1)[0].id
    forged = "sha256=" + hmac.new(b"other", req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-tidings-signature"] != forged


async def test_failures_are_retried_in_order_before_the_next_batch(rig: Rig) -> None:
    rig.hook.replies.extend([Reply(500), Reply(429, {"Retry-After": "3"})])
    for e in events(100):
        rig.sink.put(e)
    for e in events(10, start=100):
        rig.sink.put(e)
    await received(rig, 110 + 200)  # two failed tries of the first batch, then both
    bodies = [orjson.loads(r.body)["events"] for r in rig.hook.requests]
    assert [len(b) for b in bodies] == [100, 100, 100, 10]
    assert bodies[0] == bodies[1] == bodies[2]  # the same batch, retried
    assert bodies[3][0]["id"] == events(1, start=100)[0].id
    assert len(rig.waits) == 2 and rig.waits[1] == 3.0  # backoff, then Retry-After
    assert len({r.headers["x-tidings-delivery"] for r in rig.hook.requests[:3]}) == 1


async def test_a_batch_that_always_fails_is_dead_lettered_and_the_next_goes_on(rig: Rig) -> None:
    rig.hook.replies.extend([Reply(500)] * 3)  # the first try and both retries
    for e in events(100):
        rig.sink.put(e)
    for e in events(1, start=100):
        rig.sink.put(e)
    await received(rig, 301)
    assert rig.metrics.get("tidings_events_dead_lettered_total") == 100
    assert rig.metrics.get("tidings_events_sent_total") == 1


async def test_a_full_queue_drops_the_newest_and_counts_them(rig: Rig) -> None:
    rig.sink.queue_max = 5
    for e in events(8):
        rig.sink.put(e)
    assert len(rig.sink) == 5
    assert rig.metrics.get("tidings_events_dropped_total") == 3
    batches = await received(rig, 5)
    assert [e["user"] for b in batches for e in b] == ["u0", "u1", "u2", "u3", "u4"]
