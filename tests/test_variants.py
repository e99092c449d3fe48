"""Variant assignment (stable, by weight), the test group, and bad input; then the
send pipeline with variants and experiments (issue 13).

The pipeline tests run a real :class:`~tidings.node.Node` on the memory bus and
SQLite in ``tmp_path`` with a fake clock, stepping the sender by hand (like
``tests/test_sending.py``). What a product team relies on: the recorded
variants of a large audience follow the weights, a resumed send never switches
a user's variant, an experiment sends its test group first, decides once after
``decide_after`` (on whichever sender claims it, after a restart too) and sends
the winner to everyone else, and its status shows the phase.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from support.clock import FakeClock, at
from support.pipeline import clocked_node, fake_clock, notifier_of
from tidings.config import AudienceSettings, NotifySettings
from tidings.errors import BadRequest
from tidings.node import Node
from tidings.preferences import Rules
from tidings.sending import Sender
from tidings.variants import (
    in_test_group,
    parse_experiment,
    parse_variants,
    variant_content,
)

CHI2_DF2_P001 = 13.816  # chi-square, 2 degrees of freedom, upper 0.1% point


def users(n: int, seed: int = 2026) -> list[str]:
    rng = random.Random(seed)
    return [f"u{rng.getrandbits(48):012x}" for _ in range(n)]


def test_assignment_follows_the_weights_chi_square() -> None:
    v = parse_variants([{"name": "A", "weight": 1}, {"name": "B", "weight": 2},
                        {"name": "C", "weight": 1}])
    counts = {"A": 0, "B": 0, "C": 0}
    people = users(10_000)
    for u in people:
        counts[v.assign("n_experiment", u).name] += 1
    expected = {"A": 2500, "B": 5000, "C": 2500}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < CHI2_DF2_P001, counts
    # and a skewed split is not mistaken for it: equal weights give another picture
    equal = parse_variants([{"name": "A"}, {"name": "B"}, {"name": "C"}])
    flat = {"A": 0, "B": 0, "C": 0}
    for u in people:
        flat[equal.assign("n_experiment", u).name] += 1
    chi2_vs_weighted = sum((flat[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2_vs_weighted > CHI2_DF2_P001, flat


def test_assignment_is_stable_and_depends_on_the_notification() -> None:
    v = parse_variants([{"name": "A"}, {"name": "B"}])
    people = users(500)
    first = [v.assign("n_1", u).name for u in people]
    assert [v.assign("n_1", u).name for u in people] == first  # a retry never switches
    other = [v.assign("n_2", u).name for u in people]
    assert other != first  # each notification splits the audience anew
    # the same definition parsed again (another node) agrees
    again = parse_variants([{"name": "A"}, {"name": "B"}])
    assert [again.assign("n_1", u).name for u in people] == first


def test_test_group_is_the_fraction_and_independent_of_variants() -> None:
    e = parse_experiment({"fraction": 0.2, "metric": "clicked", "decide_after": "4h"})
    assert (e.fraction, e.metric, e.decide_after) == (0.2, "clicked", 4 * 3600.0)
    people = users(10_000, seed=5)
    group = [u for u in people if in_test_group(e, "n_x", u)]
    # binomial(10000, 0.2): sd 40; 5 sd either side
    assert 1800 < len(group) < 2200
    v = parse_variants([{"name": "A"}, {"name": "B"}])
    in_a = sum(v.assign("n_x", u).name == "A" for u in group)
    assert 0.4 * len(group) < in_a < 0.6 * len(group)


def test_variant_content_overrides_the_top_level() -> None:
    v = parse_variants([{"name": "A", "title": "Sale {{first_name}}"},
                        {"name": "B", "body": "other body", "data": {"k": 1}}])
    base = {"title": "T", "body": "B", "data": None, "media": None}
    assert variant_content(base, v.items[0]) == {"title": "Sale {{first_name}}", "body": "B",
                                                 "data": None, "media": None}
    assert variant_content(base, v.items[1])["data"] == {"k": 1}


@pytest.mark.parametrize(("value", "field"), [
    ([{"name": "A"}], "variants"),
    ([{"name": f"v{i}"} for i in range(9)], "variants"),
    ("AB", "variants"),
    ([{"name": "A", "weight": 0}, {"name": "B"}], "variants[0].weight"),
    ([{"name": "A", "weight": -1}, {"name": "B"}], "variants[0].weight"),
    ([{"name": "A"}, {"name": "B", "weight": "2"}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "B", "weight": True}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "B", "weight": float("inf")}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "A"}], "variants[1].name"),
    ([{"name": ""}, {"name": "B"}], "variants[0].name"),
    ([{"name": "A", "colour": "red"}, {"name": "B"}], "variants[0].colour"),
])
def test_bad_variants_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_variants(value)
    assert str(e.value).startswith(f"{field}:")


@pytest.mark.parametrize(("value", "field"), [
    ({"fraction": 0, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 1, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 1.5, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": "0.2", "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 0.2, "metric": "revenue", "decide_after": "1h"}, "experiment.metric"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": "soon"}, "experiment.decide_after"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": 0}, "experiment.decide_after"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": "1h", "x": 1}, "experiment.x"),
    ([0.2], "experiment"),
])
def test_bad_experiments_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_experiment(value)
    assert str(e.value).startswith(f"{field}:")


# -- the send pipeline ----------------------------------------------------------------------

__all__ = ["clocked_node", "fake_clock"]  # the fixtures clock and node

HOUR = 3600.0
RULES = Rules.default()
AB = [{"name": "A", "title": "Plain"}, {"name": "B", "title": "Bold"}]


def another_sender(node: Node, page_size: int = 2) -> Sender:
    """The sender of a node started again (a new owner; the same store)."""
    return Sender(node, NotifySettings(), AudienceSettings(page_size=page_size), RULES)


async def item_of(node: Node, user: str, nid: str) -> dict[str, Any] | None:
    for i in (await node.store.inbox(user, limit=100)).items:
        if i.fields["id"] == nid:
            return dict(i.fields)
    return None


async def test_the_recorded_variants_of_10000_targets_follow_the_weights(
        node: Node) -> None:
    notifier = notifier_of(node, page_size=1000)
    people = users(10_000, seed=13)
    sent = await notifier.notify({"users": people, "title": "T", "variants": [
        {"name": "A", "weight": 1}, {"name": "B", "weight": 2}, {"name": "C", "weight": 1}]})
    counts = await node.store.variant_counts(sent.id)
    got = {k: counts.get(k, {}).get("targets", 0) for k in ("A", "B", "C")}
    assert sum(got.values()) == 10_000
    expected = {"A": 2500, "B": 5000, "C": 2500}
    chi2 = sum((got[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < CHI2_DF2_P001, got
    v = parse_variants([{"name": "A", "weight": 1}, {"name": "B", "weight": 2},
                        {"name": "C", "weight": 1}])
    for u in people[:50]:  # each user's item names the variant the hash gave them
        item = await item_of(node, u, sent.id)
        assert item is not None and item["variant"] == v.assign(sent.id, u).name


async def test_a_resumed_send_gives_everyone_the_same_variant_once(
        node: Node, clock: FakeClock) -> None:
    notifier = notifier_of(node)
    people = [f"u{i}" for i in range(8)]
    for u in people:
        await node.store.set_user_tags(u, ["t"], max_tags=10)
    sent = await notifier.notify({"tags": ["t"], "title": "T", "variants": AB})
    # a node claims it, sends a chunk, and dies before moving its cursor
    (job,) = await node.store.job_claim("dead-node", lease=60, limit=1)
    first = notifier.sender
    await first.send_chunk(job, first.plan(job), people[:3], due=False)
    clock.advance(60)
    await another_sender(node).step()  # a restarted node resumes it from the start
    v = parse_variants(AB)
    for u in people:
        item = await item_of(node, u, sent.id)
        want = v.assign(sent.id, u).name
        assert item is not None and (item["variant"], item["title"]) == (
            want, {"A": "Plain", "B": "Bold"}[want])
        assert await node.store.unread(u) == 1
    counts = await node.store.variant_counts(sent.id)
    assert sum(c.get("targets", 0) for c in counts.values()) == 8
    assert (await notifier.get(sent.id))["status"] == "sent"


async def open_some(node: Node, nid: str, users_: list[str], variant: str, share: float
                    ) -> None:
    """``share`` of the test-group users given ``variant`` open it (stable: by index)."""
    v = parse_variants(AB)
    mine = [u for u in users_ if v.assign(nid, u).name == variant]
    for u in mine[:round(len(mine) * share)]:
        assert await node.store.track(nid, u, "opened")


EXPERIMENT = {"fraction": 0.3, "metric": "opened", "decide_after": "1h"}


async def test_an_experiment_sends_the_test_group_then_the_winner_to_the_rest(
        node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tidings.sending")
    notifier = notifier_of(node, page_size=100)
    people = users(600, seed=7)
    sent = await notifier.notify({"users": people, "title": "T", "variants": AB,
                                  "experiment": EXPERIMENT})
    e = parse_experiment(EXPERIMENT)
    group = [u for u in people if in_test_group(e, sent.id, u)]
    rest = [u for u in people if u not in set(group)]
    assert 120 < len(group) < 240
    for u in group:
        assert await item_of(node, u, sent.id) is not None
    for u in rest[:50]:
        assert await item_of(node, u, sent.id) is None  # not yet
    status = await notifier.get(sent.id)
    assert status["status"] == "scheduled" and status["outcomes"]["pushed"] == len(group)
    assert status["experiment"]["phase"] == "testing"
    assert status["experiment"]["decide_at"] == clock.now() + HOUR
    await open_some(node, sent.id, group, "A", 0.1)
    await open_some(node, sent.id, group, "B", 0.6)
    clock.advance(HOUR - 1)
    await notifier.sender.step()
    assert (await notifier.get(sent.id))["experiment"]["phase"] == "testing"
    stats = await notifier.stats(sent.id)  # the stats show the verdict to come
    assert (stats["metric"], stats["winner"]) == ("opened", "B")
    assert await item_of(node, rest[0], sent.id) is None
    clock.advance(1)
    await notifier.sender.step()
    status = await notifier.get(sent.id)
    assert status["status"] == "sent"
    assert (status["experiment"]["phase"], status["experiment"]["winner"],
            status["experiment"]["significant"]) == ("decided", "B", True)
    assert status["outcomes"]["pushed"] == len(people)
    v = parse_variants(AB)
    for u in rest:
        item = await item_of(node, u, sent.id)
        assert item is not None and (item["variant"], item["title"]) == ("B", "Bold")
    for u in group:  # the test group keeps what it got
        item = await item_of(node, u, sent.id)
        assert item is not None and item["variant"] == v.assign(sent.id, u).name
        assert await node.store.unread(u) == 1
    counts = await node.store.variant_counts(sent.id)
    assert counts["B"]["targets"] == len(rest) + sum(
        v.assign(sent.id, u).name == "B" for u in group)
    await notifier.sender.step()
    assert sum("wins" in r.getMessage() for r in caplog.records) == 1


async def test_without_a_significant_winner_the_best_observed_rate_wins_ties_the_control(
        node: Node, clock: FakeClock) -> None:
    notifier = notifier_of(node, page_size=100)
    people = users(200, seed=11)
    slight = await notifier.notify({"users": people, "title": "T", "variants": AB,
                                    "experiment": EXPERIMENT})
    tie = await notifier.notify({"users": people, "title": "T", "variants": AB,
                                 "experiment": EXPERIMENT})
    e = parse_experiment(EXPERIMENT)
    group = [u for u in people if in_test_group(e, slight.id, u)]
    v = parse_variants(AB)
    in_b = [u for u in group if v.assign(slight.id, u).name == "B"]
    assert await node.store.track(slight.id, in_b[0], "opened")  # one open: B leads
    clock.advance(HOUR)
    await notifier.sender.step()
    got = (await notifier.get(slight.id))["experiment"]
    assert (got["phase"], got["winner"], got["significant"]) == ("decided", "B", False)
    got = (await notifier.get(tie.id))["experiment"]  # nobody opened: the control
    assert (got["phase"], got["winner"], got["significant"]) == ("decided", "A", False)


async def test_a_restart_in_the_middle_still_decides_once_and_sends_everyone_once(
        node: Node, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "tidings.sending")
    notifier = notifier_of(node)
    people = [f"p{i:03d}" for i in range(60)]
    for u in people:  # a paged audience (2 a page), sent at a set time
        await node.store.set_user_tags(u, ["t"], max_tags=10)
    sent = await notifier.notify({"tags": ["t"], "title": "T", "variants": AB,
                                  "experiment": EXPERIMENT, "send_at": "2026-01-15T13:00:00Z"})
    await notifier.sender.step()
    assert (await notifier.get(sent.id))["outcomes"]["pushed"] == 0  # not its time
    clock.set(at("2026-01-15T13:00:00Z"))
    await another_sender(node).step()  # the node restarted before the send time
    e = parse_experiment(EXPERIMENT)
    group = {u for u in people if in_test_group(e, sent.id, u)}
    await open_some(node, sent.id, sorted(group), "B", 0.9)
    clock.advance(HOUR)
    # at the decision a node claims the job and dies before deciding
    (job,) = await node.store.job_claim("dead-node", lease=60, limit=1)
    one, two = another_sender(node), another_sender(node)
    await asyncio.gather(one.step(), two.step())
    assert (await notifier.get(sent.id))["experiment"]["phase"] == "testing"  # leased
    clock.advance(60)
    await asyncio.gather(one.step(), two.step())  # both restarted nodes try at once
    status = await notifier.get(sent.id)
    assert (status["status"], status["experiment"]["winner"]) == ("sent", "B")
    assert sum("wins" in r.getMessage() for r in caplog.records) == 1
    v = parse_variants(AB)
    for u in people:
        item = await item_of(node, u, sent.id)
        want = v.assign(sent.id, u).name if u in group else "B"
        assert item is not None and item["variant"] == want, u
        assert await node.store.unread(u) == 1
    assert job.id == sent.id
