"""The hub on its own: who gets a publication, encoded how many times, and the
flusher's one write per loop pass. No I/O: subscribers here are our own
:class:`~tidings.hub.Subscriber` implementations that record what they get."""

from __future__ import annotations

import asyncio
from typing import Any

from tidings.hub import Flusher, Hub
from tidings.metrics import Metrics
from tidings.types import PayloadKind, Publication, format_offset


def pub(topic: str, seq: int = 1) -> Publication:
    return Publication(topic, format_offset("e", seq), b"%d" % seq, PayloadKind.JSON, seq)


class Sub:
    def __init__(self, wire: str, *, allowed: bool = True, restricted: bool = True) -> None:
        self.wire = wire
        self.allowed = allowed
        self.restricted = restricted
        self.got: list[tuple[str, Any]] = []
        self.asked: list[str] = []

    def may_see(self, topic: str) -> bool:
        self.asked.append(topic)
        return self.allowed

    def deliver(self, publication: Publication, data: Any) -> None:
        self.got.append((publication.topic, data))


def counting_hub() -> tuple[Hub, list[str]]:
    hub = Hub()
    calls: list[str] = []
    for wire in ("a", "b"):
        def encoder(p: Publication, wire: str = wire) -> bytes:
            calls.append(wire)
            return f"{wire}:{p.topic}".encode()
        hub.register_wire(wire, encoder)
    return hub, calls


def test_each_wire_form_is_encoded_once_per_publication() -> None:
    hub, calls = counting_hub()
    subs = [Sub("a"), Sub("a"), Sub("b"), Sub("a")]
    for s in subs:
        hub.add("news/+", s)
    assert hub.deliver(pub("news/x")) == 4
    assert sorted(calls) == ["a", "b"]
    assert [s.got for s in subs] == [[("news/x", b"a:news/x")]] * 2 + \
        [[("news/x", b"b:news/x")], [("news/x", b"a:news/x")]]


def test_a_subscriber_that_may_not_see_the_topic_gets_nothing() -> None:
    hub, calls = counting_hub()
    allowed, refused = Sub("a"), Sub("b", allowed=False)
    hub.add("#", allowed)
    hub.add("#", refused)
    assert hub.deliver(pub("users/bob/x")) == 1
    assert refused.got == [] and calls == ["a"]  # never encoded for a refused wire


def test_refusals_are_counted_by_the_edge_of_the_wire() -> None:
    """Each message the ACL keeps from a subscriber counts once in
    ``tidings_acl_denied_messages_total``, labelled with the edge its wire was
    registered for (the wire's own name when none was given)."""
    metrics = Metrics()
    hub = Hub(metrics)
    hub.register_wire("ws-json", lambda p: b"w", edge="ws")
    hub.register_wire("mqtt", lambda p: b"m")
    subs = [Sub("ws-json", allowed=False), Sub("ws-json", allowed=False),
            Sub("mqtt", allowed=False), Sub("mqtt")]
    for s in subs:
        hub.add("#", s)
    assert hub.deliver(pub("test/x")) == 1
    assert metrics.get("tidings_acl_denied_messages_total", edge="ws") == 2
    assert metrics.get("tidings_acl_denied_messages_total", edge="mqtt") == 1


def test_an_unrestricted_subscriber_is_asked_only_of_guarded_topics() -> None:
    """The hub skips the may_see call where its answer cannot be no (an unguarded
    topic, a subscriber neither Acl.restricts nor its filters' screens restrict);
    it still asks of $ and users/ topics, and always asks a restricted subscriber."""
    hub, _ = counting_hub()
    free, bound = Sub("a", restricted=False), Sub("a", restricted=True)
    hub.add("#", free)
    hub.add("#", bound)
    hub.add("$SYS/#", free)
    assert hub.deliver(pub("news/x")) == 2
    assert free.asked == [] and bound.asked == ["news/x"]
    assert hub.deliver(pub("users/bob/x", 2)) == 2
    assert hub.deliver(pub("$SYS/x", 3)) == 1
    assert free.asked == ["users/bob/x", "$SYS/x"]
    refused = Sub("a", allowed=False, restricted=False)
    hub.add("#", refused)
    hub.deliver(pub("users/bob/y", 4))
    assert refused.got == []  # a guarded topic is asked, and refused


def test_only_matching_filters_deliver_and_removal_stops_delivery() -> None:
    hub, _ = counting_hub()
    exact, wild, other = Sub("a"), Sub("a"), Sub("a")
    hub.add("t/1", exact)
    hub.add("t/#", wild)
    hub.add("u/#", other)
    assert hub.deliver(pub("t/1")) == 2
    hub.remove("t/#", wild)
    assert hub.deliver(pub("t/1", 2)) == 1
    assert hub.deliver(pub("v")) == 0
    assert (len(exact.got), len(wild.got), other.got) == (2, 1, [])
    assert hub.subscribers("t/1") == {exact}


async def test_flusher_flushes_each_marked_buffer_once_per_loop_pass() -> None:
    flushed: list[str] = []

    class Buf:
        def __init__(self, name: str) -> None:
            self.name = name

        def flush(self) -> None:
            flushed.append(self.name)

    flusher = Flusher()
    one, two = Buf("one"), Buf("two")
    flusher.mark(one)
    flusher.mark(two)
    assert flushed == []  # nothing is written inside the caller's pass
    await asyncio.sleep(0)  # one loop pass: the call_soon runs
    assert flushed == ["one", "two"]
    flusher.mark(one)
    await asyncio.sleep(0)
    assert flushed == ["one", "two", "one"]


class RunSub(Sub):
    """A subscriber of a joinable wire: also takes runs."""

    def __init__(self, wire: str, **kw: Any) -> None:
        super().__init__(wire, **kw)
        self.runs: list[tuple[list[str], list[Any], bytes]] = []

    def deliver_many(self, publications: list[Publication], parts: list[Any],
                     joined: bytes) -> None:
        self.runs.append(([p.offset for p in publications], parts, joined))


def test_a_run_is_encoded_once_and_a_joinable_subscriber_gets_it_in_one_call() -> None:
    hub = Hub()
    calls: list[str] = []
    for wire, joinable in (("frames", True), ("templates", False)):
        def encoder(p: Publication, wire: str = wire) -> bytes:
            calls.append(wire)
            return f"<{p.payload.decode()}>".encode()
        hub.register_wire(wire, encoder, joinable=joinable)
    framed, other, refused = RunSub("frames"), Sub("templates"), RunSub("frames", allowed=False)
    for s in (framed, RunSub("frames"), other, refused):
        hub.add("t", s)
    run = [pub("t", i) for i in (1, 2, 3)]
    assert hub.deliver_many(run) == 9  # three subscribers may see it, three messages each
    assert sorted(calls) == ["frames"] * 3 + ["templates"] * 3
    assert framed.runs == [([p.offset for p in run], [b"<1>", b"<2>", b"<3>"], b"<1><2><3>")]
    assert framed.got == [] and refused.runs == [] and refused.got == []
    assert other.got == [("t", b"<1>"), ("t", b"<2>"), ("t", b"<3>")]
    assert hub.deliver_many([pub("t", 4)]) == 3  # a run of one: plain deliver for all
    assert framed.got == [("t", b"<4>")] and len(framed.runs) == 1


def test_fitting_bounds_the_calls_a_run_costs_in_one_pass() -> None:
    """A joinable subscriber costs one call per run, any other one per message: the
    node hands over as much of a run as fits its budget of calls per loop pass."""
    hub = Hub()
    hub.register_wire("frames", lambda p: p.payload, joinable=True)
    hub.register_wire("templates", lambda p: p.payload)
    run = [pub("t", i) for i in range(1, 101)]
    for _ in range(10):
        hub.add("t", RunSub("frames"))
    assert hub.fitting(run, 50) == (100, 10)  # runs cost one call each: all of it
    for _ in range(4):
        hub.add("t", Sub("templates"))
    assert hub.fitting(run, 50) == (10, 50)  # 10 joinable + 4 x 10 messages
    assert hub.fitting(run, 5) == (1, 14)  # one message at least
    assert hub.fitting([pub("nobody")], 5) == (1, 0)
