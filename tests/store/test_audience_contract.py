"""The audience contract (``tidings.store.contracts.audience.AudienceStore``), per backend.

On the one ``store`` / ``open_store`` fixture of ``support/stores.py``: SQLite,
Redis and Redis Cluster. Tags, attributes, segments, last-seen times and
engagement, then selection: each part of an audience alone, and 10,000 users
with random tags and attributes (fixed seed) checked against a plain Python
model of the rules, page by page.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest

from support.audience import everyone
from support.inbox import send
from support.stores import Clock, OpenStore
from tidings.audience import parse_audience
from tidings.errors import BadRequest
from tidings.preferences import Rules, merge, parse
from tidings.store.base import Store
from tidings.store.contracts.audience import ENGAGEMENT_KEEP

pytest_plugins = ["support.redis_servers"]  # session-wide redis-server / cluster fixtures

DAY = 86400.0
MAX_TAGS = 10


async def select(store: Store, audience: dict[str, Any], limit: int = 1000) -> list[str]:
    return await everyone(store, parse_audience(audience), limit)


async def in_batches(calls: list[Callable[[], Awaitable[Any]]], size: int = 200) -> None:
    for i in range(0, len(calls), size):
        await asyncio.gather(*(c() for c in calls[i:i + size]))


# -- tags ------------------------------------------------------------------------------------

async def test_tags_replace_add_remove(store: Store) -> None:
    assert await store.user_tags("alice") == []
    assert await store.set_user_tags("alice", ["sports", "news"], max_tags=MAX_TAGS) == [
        "news", "sports"]
    assert await store.change_user_tags("alice", ["music"], ["news"], max_tags=MAX_TAGS) == [
        "music", "sports"]
    # a tag both added and removed ends up removed
    assert await store.change_user_tags("alice", ["x"], ["x", "nope"],
                                        max_tags=MAX_TAGS) == ["music", "sports"]
    assert await store.set_user_tags("alice", ["solo"], max_tags=MAX_TAGS) == ["solo"]
    assert await store.user_tags("alice") == ["solo"]
    assert await store.user_tags("bob") == []  # users never mix


async def test_tags_over_the_limit_are_refused_and_change_nothing(store: Store) -> None:
    await store.set_user_tags("alice", ["a", "b"], max_tags=3)
    with pytest.raises(BadRequest, match=r"^tags:"):
        await store.change_user_tags("alice", ["c", "d"], [], max_tags=3)
    with pytest.raises(BadRequest, match=r"^tags:"):
        await store.set_user_tags("alice", ["1", "2", "3", "4"], max_tags=3)
    assert await store.user_tags("alice") == ["a", "b"]
    # making room in the same call is fine
    assert await store.change_user_tags("alice", ["c", "d"], ["a"], max_tags=3) == [
        "b", "c", "d"]


@pytest.mark.parametrize(("call", "field"), [
    (lambda s: s.set_user_tags("u", "sports", max_tags=5), "tags"),
    (lambda s: s.set_user_tags("u", ["ok", ""], max_tags=5), "tags"),
    (lambda s: s.set_user_tags("u", ["ok", 3], max_tags=5), "tags"),
    (lambda s: s.change_user_tags("u", [None], [], max_tags=5), "add"),
    (lambda s: s.change_user_tags("u", [], {"x": 1}, max_tags=5), "remove"),
])
async def test_bad_tags_name_the_field(store: Store, call: Any, field: str) -> None:
    with pytest.raises(BadRequest, match=rf"^{field}:"):
        await call(store)
    assert await store.user_tags("u") == []


async def test_tags_with_any_characters_stay_apart(store: Store) -> None:
    odd = ["a}b", "{x}", "100%", "é", "a b", "a:b"]
    await store.set_user_tags("u}1", odd, max_tags=MAX_TAGS)
    await store.set_user_tags("u{2", ["a"], max_tags=MAX_TAGS)
    assert await store.user_tags("u}1") == sorted(odd)
    for tag in odd:
        assert await select(store, {"tags": [tag]}) == ["u}1"]
    assert await select(store, {"tags": ["a"]}) == ["u{2"]


# -- attributes ------------------------------------------------------------------------------

async def test_attributes_replace(store: Store) -> None:
    assert await store.user_attributes("alice") == {}
    attrs = {"plan": "pro", "age": 31, "score": 2.5, "vip": True, "name": "Zoë"}
    assert await store.set_user_attributes("alice", attrs) == attrs
    assert await store.user_attributes("alice") == attrs
    await store.set_user_attributes("alice", {"plan": "free"})
    assert await store.user_attributes("alice") == {"plan": "free"}
    assert await store.user_attributes("bob") == {}


@pytest.mark.parametrize(("attrs", "field"), [
    ([1, 2], "attributes"),
    ({"nested": {"a": 1}}, "attributes.nested"),
    ({"list": [1]}, "attributes.list"),
    ({"none": None}, "attributes.none"),
    ({"nan": float("nan")}, "attributes.nan"),
    ({"": 1}, "attributes"),
])
async def test_bad_attributes_name_the_field(store: Store, attrs: Any, field: str) -> None:
    await store.set_user_attributes("alice", {"plan": "pro"})
    with pytest.raises(BadRequest, match=rf"^{field}:"):
        await store.set_user_attributes("alice", attrs)
    assert await store.user_attributes("alice") == {"plan": "pro"}


# -- segments --------------------------------------------------------------------------------

async def test_segments_put_get_delete(store: Store) -> None:
    definition = {"tags": {"all": ["a"]}, "attributes": {"age": {"gte": 18}},
                  "active_within": "7d"}
    assert await store.segment_get("adults") is None
    assert await store.segment_put("adults", definition) is True
    assert await store.segment_get("adults") == definition
    assert await store.segment_put("adults", {"tags": ["b"]}) is False
    assert await store.segment_get("adults") == {"tags": ["b"]}
    assert await store.segment_delete("adults") is True
    assert await store.segment_delete("adults") is False
    assert await store.segment_get("adults") is None


async def test_segments_outlive_the_store(open_store: OpenStore) -> None:
    first = await open_store()
    await first.segment_put("pros", {"attributes": {"plan": "pro"}})
    await first.set_user_attributes("alice", {"plan": "pro"})
    await first.close()
    second = await open_store()
    assert await second.segment_get("pros") == {"attributes": {"plan": "pro"}}
    assert await select(second, {"attributes": {"plan": "pro"}}) == ["alice"]


# -- preferences -----------------------------------------------------------------------------

PREFS = {"timezone": "Asia/Shanghai", "locale": "zh-CN",
         "categories": {"marketing": {"enabled": False}, "social": {"edges": ["ws"]}},
         "quiet_hours": {"start": "22:00", "end": "07:00", "days": ["fri", "sat"]},
         "caps": {"digest": {"per_hour": 1, "per_day": 3}}}


async def test_preferences_replace_and_remove(store: Store) -> None:
    assert await store.user_preferences("alice") == {}
    doc = parse(PREFS, Rules.default()).to_dict()
    assert await store.set_user_preferences("alice", doc) == doc
    assert await store.user_preferences("alice") == doc
    assert await store.user_preferences("bob") == {}  # users never mix
    smaller = merge(parse(doc, Rules.default()), {"categories": None, "caps": None},
                    Rules.default()).to_dict()
    assert await store.set_user_preferences("alice", smaller) == smaller
    assert await store.user_preferences("alice") == smaller
    assert "categories" not in smaller and smaller["timezone"] == "Asia/Shanghai"
    assert await store.set_user_preferences("alice", {}) == {}
    assert await store.user_preferences("alice") == {}


async def test_preferences_alone_do_not_make_a_user_selectable(store: Store) -> None:
    await store.set_user_preferences("alice", {"locale": "en"})
    await store.set_user_tags("bob", ["x"], max_tags=MAX_TAGS)
    assert await select(store, {}) == ["bob"]


async def test_preferences_many_reads_each_user(store: Store) -> None:
    users = [f"user-{i:04}" for i in range(1200)]  # more than one SQLite parameter batch
    docs = {u: {"locale": "en", "timezone": "Europe/Paris" if i % 2 else "UTC"}
            for i, u in enumerate(users) if i % 3}
    await in_batches([partial(store.set_user_preferences, u, d) for u, d in docs.items()])
    asked = [*users, "stranger", users[1]]  # a stranger and a repeat
    got = await store.preferences_many(asked)
    assert set(got) == {*users, "stranger"}
    assert got == {u: docs.get(u, {}) for u in [*users, "stranger"]}
    assert await store.preferences_many([]) == {}


async def test_preferences_outlive_the_store(open_store: OpenStore) -> None:
    first = await open_store()
    await first.set_user_preferences("alice", {"timezone": "Europe/Paris"})
    await first.close()
    second = await open_store()
    assert await second.user_preferences("alice") == {"timezone": "Europe/Paris"}
    assert await second.preferences_many(["alice", "bob"]) == {
        "alice": {"timezone": "Europe/Paris"}, "bob": {}}


# -- last seen and engagement ----------------------------------------------------------------

async def test_seen_records_the_store_time(store: Store, clock: Clock) -> None:
    assert await store.last_seen("alice") is None
    await store.seen("alice")
    assert await store.last_seen("alice") == pytest.approx(clock.now)
    clock.advance(3 * DAY)
    assert await select(store, {"active_within": "4d"}) == ["alice"]
    assert await select(store, {"active_within": "2d"}) == []
    await store.seen("alice")
    assert await select(store, {"active_within": "1h"}) == ["alice"]


async def test_seen_many_records_each_user_once(store: Store, clock: Clock) -> None:
    users = [f"user-{i:04}" for i in range(600)]  # more than one SQLite parameter batch
    await store.seen_many([*users, users[0]])
    await store.seen_many([])
    assert await store.last_seen(users[599]) == pytest.approx(clock.now)
    clock.advance(DAY)
    await store.seen_many(users[:10])
    assert await select(store, {"active_within": "1h"}) == users[:10]
    assert len(await select(store, {"active_within": "2d"})) == 600


async def test_engagement_counts_once_per_notification_and_event(store: Store,
                                                                 clock: Clock) -> None:
    assert await store.engage("alice", "sports", "opened", "n1") is True
    assert await store.engage("alice", "sports", "opened", "n1") is False
    assert await store.engage("alice", "sports", "clicked", "n1") is True
    assert await store.engage("alice", "news", "opened", "n2") is True
    assert await store.engagements("alice", "sports", DAY) == 2
    assert await store.engagements("alice", "news", DAY) == 1
    assert await store.engagements("bob", "sports", DAY) == 0
    with pytest.raises(ValueError):
        await store.engage("alice", "sports", "delivered", "n3")
    clock.advance(2 * DAY)
    await store.engage("alice", "sports", "opened", "n4")
    assert await store.engagements("alice", "sports", DAY) == 1
    assert await store.engagements("alice", "sports", 3 * DAY) == 3


async def test_engagement_older_than_kept_is_dropped(store: Store, clock: Clock) -> None:
    await store.engage("alice", "sports", "opened", "old")
    clock.advance(ENGAGEMENT_KEEP + DAY)
    await store.engage("alice", "sports", "opened", "new")
    assert await store.engagements("alice", "sports", ENGAGEMENT_KEEP) == 1


async def test_track_of_opened_or_clicked_records_engagement(store: Store) -> None:
    result = await send(store, ["alice", "bob"], category="sports")
    assert await store.track(result.id, "alice", "opened")
    assert await store.track(result.id, "alice", "clicked")
    assert await store.track(result.id, "bob", "delivered")
    assert await store.track(result.id, "bob", "dismissed")
    assert not await store.track(result.id, "carol", "opened")  # not a target
    assert await store.engagements("alice", "sports", DAY) == 2
    assert await store.engagements("bob", "sports", DAY) == 0
    assert await store.engagements("carol", "sports", DAY) == 0
    engaged = {"engaged": {"category": "sports", "within": "1d", "min": 2}}
    assert await select(store, engaged) == ["alice"]


async def test_not_interested_feedback_forgets_the_categorys_engagement(store: Store) -> None:
    sports = [(await send(store, ["alice", "bob"], category="sports")).id for _ in range(3)]
    news = (await send(store, ["alice"], category="news")).id
    for nid in sports:
        assert await store.track(nid, "alice", "opened")
        assert await store.track(nid, "bob", "opened")
    assert await store.track(news, "alice", "clicked")
    engaged = {"engaged": {"category": "sports", "within": "1d", "min": 1}}
    assert await select(store, engaged) == ["alice", "bob"]
    # other reasons leave engagement alone
    assert await store.feedback(sports[0], "bob", "wrong_time", None)
    assert await store.engagements("bob", "sports", DAY) == 3
    assert await store.feedback(sports[1], "alice", "not_interested", "no more sports")
    assert await store.engagements("alice", "sports", DAY) == 0
    assert await store.engagements("alice", "news", DAY) == 1  # other categories stay
    assert await store.engagements("bob", "sports", DAY) == 3  # other users too
    assert await select(store, engaged) == ["bob"]
    # best-time sending reads the same instants: only the news click is left
    times = await store.engagement_times(["alice", "bob"], 0)
    assert (len(times["alice"]), len(times["bob"])) == (1, 3)
    # engaging again counts from then on; a second feedback changes nothing
    assert await store.track(sports[2], "alice", "clicked")
    assert not await store.feedback(sports[1], "alice", "not_interested", None)
    assert await store.engagements("alice", "sports", DAY) == 1


# -- selection -------------------------------------------------------------------------------

async def test_each_part_selects(store: Store, clock: Clock) -> None:
    await store.set_user_tags("a", ["x", "y"], max_tags=MAX_TAGS)
    await store.set_user_tags("b", ["x"], max_tags=MAX_TAGS)
    await store.set_user_tags("c", ["y", "z"], max_tags=MAX_TAGS)
    await store.set_user_attributes("a", {"plan": "pro", "age": 20, "vip": True})
    await store.set_user_attributes("b", {"plan": "free", "age": 40, "vip": 1})
    await store.set_user_attributes("d", {"plan": "pro", "age": "20"})
    assert await select(store, {"tags": ["x"]}) == ["a", "b"]
    assert await select(store, {"tags": ["x", "z"]}) == ["a", "b", "c"]
    assert await select(store, {"tags": {"all": ["x", "y"]}}) == ["a"]
    assert await select(store, {"tags": {"any": ["y"], "none": ["z"]}}) == ["a"]
    assert await select(store, {"tags": {"none": ["x"]}}) == ["c", "d"]
    assert await select(store, {"attributes": {"plan": "pro"}}) == ["a", "d"]
    assert await select(store, {"attributes": {"plan": {"in": ["free", "x"]}}}) == ["b"]
    # numbers compare as numbers only; true is not 1
    assert await select(store, {"attributes": {"age": {"gte": 20, "lt": 40}}}) == ["a"]
    assert await select(store, {"attributes": {"age": {"gt": 20}}}) == ["b"]
    assert await select(store, {"attributes": {"age": {"lte": 40}}}) == ["a", "b"]
    assert await select(store, {"attributes": {"vip": True}}) == ["a"]
    assert await select(store, {"attributes": {"vip": 1}}) == ["b"]
    assert await select(store, {"attributes": {"age": 20}}) == ["a"]
    assert await select(store, {"attributes": {"age": 20.0}}) == ["a"]
    assert await select(store, {"tags": ["x"], "attributes": {"plan": "free"}}) == ["b"]
    assert await select(store, {"tags": ["nobody-has-this"]}) == []
    assert await select(store, {}) == ["a", "b", "c", "d"]  # every known user
    assert await store.audience_count(parse_audience({"tags": ["y"]})) == 2


async def test_a_removed_tag_no_longer_selects(store: Store) -> None:
    await store.set_user_tags("a", ["x"], max_tags=MAX_TAGS)
    await store.set_user_tags("b", ["x"], max_tags=MAX_TAGS)
    await store.change_user_tags("a", [], ["x"], max_tags=MAX_TAGS)
    assert await select(store, {"tags": ["x"]}) == ["b"]
    await store.set_user_tags("b", ["y"], max_tags=MAX_TAGS)
    assert await select(store, {"tags": ["x"]}) == []
    assert await select(store, {"tags": ["y"]}) == ["b"]


async def test_a_refused_tag_change_selects_nobody(store: Store) -> None:
    """A change refused for too many tags is not half-applied to selection:
    neither the pages nor the count of a tags-only audience see the tags it
    named (Redis puts the user in those tags' indexes before the change)."""
    await store.set_user_tags("alice", ["a"], max_tags=2)
    await store.set_user_tags("bob", ["c"], max_tags=2)
    with pytest.raises(BadRequest, match=r"^tags:"):
        await store.change_user_tags("alice", ["b", "c"], [], max_tags=2)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"tags": ["b"]}, []), ({"tags": ["c"]}, ["bob"]),
        ({"tags": {"any": ["b", "c"], "none": ["a"]}}, ["bob"]),
        ({"tags": {"all": ["a", "c"]}}, []), ({"tags": ["a"]}, ["alice"])]
    for audience, who in cases:
        assert await select(store, audience) == who, audience
        assert await store.audience_count(parse_audience(audience)) == len(who), audience


async def test_concurrent_tag_changes_keep_selection_exact(store: Store) -> None:
    """Adds and removes of one tag for one user racing each other: whatever the
    order, what selection answers is what the user's tags say."""
    for round_ in range(20):
        calls = [store.change_user_tags("u", ["t"], [], max_tags=MAX_TAGS),
                 store.change_user_tags("u", [], ["t"], max_tags=MAX_TAGS)] * 3
        random.Random(round_).shuffle(calls)
        await asyncio.gather(*calls)
        has = "t" in await store.user_tags("u")
        assert await select(store, {"tags": ["t"]}) == (["u"] if has else [])


async def test_pages_are_bounded_and_cover_everyone(store: Store) -> None:
    users = [f"user{i:04d}" for i in range(250)]
    await in_batches([partial(store.set_user_tags, u, ["t"] if int(u[4:]) % 5 else ["s"],
                              max_tags=MAX_TAGS) for u in users])
    wanted = [u for u in users if int(u[4:]) % 5]
    for limit in (1, 7, 64, 200, 1000):
        assert await select(store, {"tags": ["t"]}, limit=limit) == wanted
        assert await select(store, {"tags": {"none": ["t"]}}, limit=limit) == [
            u for u in users if u not in wanted]
    # a page scans a bounded number of candidates: a rare match leaves pages
    # short (even empty) but the cursor moves on
    rare = parse_audience({"tags": {"none": ["t", "s"]}})
    page = await store.audience_page(rare, limit=2)
    assert page.users == [] and page.next is not None
    assert await everyone(store, rare, 2) == []


@pytest.mark.timeout(600)  # 10,000 users written and scanned a dozen times, on a busy machine
async def test_ten_thousand_users_against_a_model(store: Store, clock: Clock) -> None:
    rng = random.Random(12)
    n = 10_000
    tags_pool = [f"t{i}" for i in range(12)]
    model: dict[str, dict[str, Any]] = {}
    for i in range(n):
        user = f"u{rng.randrange(10**9):09d}-{i}"
        tags = set(rng.sample(tags_pool, rng.randrange(0, 5)))
        attrs: dict[str, Any] = {}
        if rng.random() < 0.9:
            attrs["plan"] = rng.choice(["free", "pro", "team"])
        if rng.random() < 0.8:
            attrs["age"] = rng.randrange(10, 70)
        if rng.random() < 0.5:
            attrs["country"] = rng.choice(["CN", "TW", "US", "FR", "BR"])
        if rng.random() < 0.3:
            attrs["vip"] = rng.random() < 0.5
        model[user] = {"tags": tags, "attrs": attrs,
                       "seen": rng.choice([None, 1, 3, 10]),  # days ago
                       "opens": rng.choice([0, 0, 1, 2, 3])}
    t0 = clock.now
    await in_batches([partial(store.set_user_tags, u, sorted(m["tags"]), max_tags=MAX_TAGS)
                      for u, m in model.items() if m["tags"]])
    await in_batches([partial(store.set_user_attributes, u, m["attrs"])
                      for u, m in model.items() if m["attrs"]])
    for days in (10, 3, 1):
        clock.now = t0 - days * DAY
        await in_batches([partial(store.seen, u)
                          for u, m in model.items() if m["seen"] == days])
        await in_batches([partial(store.engage, u, "sports", "opened", f"n{days}-{k}")
                          for u, m in model.items() if m["seen"] == days
                          for k in range(m["opens"])])
    clock.now = t0

    def attr(m: dict[str, Any], name: str) -> Any:
        return m["attrs"].get(name)

    def number(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"tags": ["t1", "t2"]}, lambda m: bool(m["tags"] & {"t1", "t2"})),
        ({"tags": {"all": ["t3", "t4"]}}, lambda m: {"t3", "t4"} <= m["tags"]),
        ({"tags": {"any": ["t5", "t6", "t7"], "none": ["t8"]}},
         lambda m: bool(m["tags"] & {"t5", "t6", "t7"}) and "t8" not in m["tags"]),
        ({"tags": {"all": ["t0"], "any": ["t1", "t9"], "none": ["t2"]},
          "attributes": {"plan": "pro"}},
         lambda m: "t0" in m["tags"] and bool(m["tags"] & {"t1", "t9"})
         and "t2" not in m["tags"] and attr(m, "plan") == "pro"),
        ({"attributes": {"country": {"in": ["CN", "TW"]}, "age": {"gte": 18, "lt": 30}}},
         lambda m: attr(m, "country") in ("CN", "TW") and number(attr(m, "age"))
         and 18 <= attr(m, "age") < 30),
        ({"attributes": {"vip": False, "plan": {"in": ["team", "free"]}}},
         lambda m: attr(m, "vip") is False and attr(m, "plan") in ("team", "free")),
        ({"active_within": "5d"}, lambda m: m["seen"] is not None and m["seen"] <= 5),
        ({"active_within": "2d", "tags": {"none": ["t0"]}},
         lambda m: m["seen"] == 1 and "t0" not in m["tags"]),
        ({"engaged": {"category": "sports", "within": "30d", "min": 2}},
         lambda m: m["opens"] >= 2 and m["seen"] is not None),
        ({"engaged": {"category": "sports", "within": "2d", "min": 1}},
         lambda m: m["opens"] >= 1 and m["seen"] == 1),
        ({"tags": ["t11"], "attributes": {"age": {"gt": 60}}, "active_within": "11d",
          "engaged": {"category": "sports", "within": "5d", "min": 3}},
         lambda m: "t11" in m["tags"] and number(attr(m, "age")) and attr(m, "age") > 60
         and m["seen"] in (1, 3) and m["opens"] >= 3),
    ]
    for audience, rule in cases:
        want = sorted(u for u, m in model.items() if rule(m))
        got = await select(store, audience, limit=700)
        assert got == want, audience
        if set(audience) == {"tags"}:  # Redis counts these in Redis
            assert await store.audience_count(parse_audience(audience)) == len(want), audience
    counted = parse_audience(cases[3][0])
    assert await store.audience_count(counted, page=1000) == len(
        [m for m in model.values() if cases[3][1](m)])
    # no condition: every user the store knows something about, and nobody else
    known = sorted(u for u, m in model.items() if m["tags"] or m["attrs"] or m["seen"])
    assert len(known) < n
    assert await select(store, {}, limit=2500) == known
