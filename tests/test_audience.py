"""``tidings.audience``: the issue-12 audience shapes, their errors, and paged selection.

Parsing is pure; selection runs on a real SQLite store (the contract tests in
``tests/store/test_audience_contract.py`` run it on every backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidings import audience
from tidings.audience import (
    check_attributes,
    check_segment_name,
    check_tags,
    parse_audience,
    parse_duration,
    parse_notify_target,
    parse_tag_selector,
)
from tidings.config import AudienceSettings
from tidings.errors import BadRequest, NotFound
from tidings.store.contracts.audience import AttributeTest, AudienceQuery, Engaged
from tidings.store.sqlite import SqliteStore

LIMITS = AudienceSettings(max_tags=3, max_tag_length=8, max_attributes=2,
                          max_attribute_size=10, max_terms=6, page_size=4)


@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("15m", 900), ("12h", 43200), ("30d", 30 * 86400), ("2w", 14 * 86400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


@pytest.mark.parametrize("bad", ["", "30", "d", "1.5d", "-1d", "0d", "30 d", "30D", "1y",
                                 30, None, "9999999w", "367d"])
def test_bad_durations_name_the_field(bad: Any) -> None:
    with pytest.raises(BadRequest, match=r"^audience\.active_within:"):
        parse_audience({"active_within": bad})


def test_the_issue_example_parses() -> None:
    q = parse_audience({
        "tags": {"all": ["a"], "any": ["b", "c"], "none": ["d"]},
        "attributes": {"plan": "pro", "country": {"in": ["CN", "TW"]},
                       "age": {"gte": 18, "lt": 30}},
        "active_within": "7d",
        "engaged": {"category": "sports", "within": "30d", "min": 2}})
    assert q == AudienceQuery(
        ("a",), ("b", "c"), ("d",),
        (AttributeTest("plan", "eq", "pro"), AttributeTest("country", "in", ("CN", "TW")),
         AttributeTest("age", "gte", 18), AttributeTest("age", "lt", 30)),
        7 * 86400.0, Engaged("sports", 30 * 86400.0, 2))


def test_every_part_is_optional_and_a_list_of_tags_means_any() -> None:
    assert parse_audience({}) == AudienceQuery()
    assert parse_audience({"tags": ["a", "b", "a"]}) == AudienceQuery(tags_any=("a", "b"))
    assert parse_tag_selector({"none": ["x"], "any": []}) == ((), (), ("x",))
    assert parse_audience({"engaged": {"category": "c", "within": "1d"}}).engaged == Engaged(
        "c", 86400.0, 1)


@pytest.mark.parametrize(("value", "field"), [
    ([], "audience"),
    ({"tagz": []}, "audience.tagz"),
    ({"tags": "a"}, "audience.tags"),
    ({"tags": []}, "audience.tags"),
    ({"tags": {}}, "audience.tags"),
    ({"tags": {"some": ["a"]}}, "audience.tags.some"),
    ({"tags": {"all": "a"}}, "audience.tags.all"),
    ({"tags": {"none": [""]}}, "audience.tags.none"),
    ({"tags": ["x" * 9]}, "audience.tags"),
    ({"attributes": []}, "audience.attributes"),
    ({"attributes": {"age": {"between": [1, 2]}}}, "audience.attributes.age"),
    ({"attributes": {"age": {}}}, "audience.attributes.age"),
    ({"attributes": {"age": {"gte": "18"}}}, "audience.attributes.age.gte"),
    ({"attributes": {"age": {"lt": True}}}, "audience.attributes.age.lt"),
    ({"attributes": {"age": {"gt": None}}}, "audience.attributes.age.gt"),
    ({"attributes": {"c": {"in": []}}}, "audience.attributes.c.in"),
    ({"attributes": {"c": {"in": "CN"}}}, "audience.attributes.c.in"),
    ({"attributes": {"c": {"in": [["CN"]]}}}, "audience.attributes.c.in"),
    ({"attributes": {"c": None}}, "audience.attributes.c"),
    ({"attributes": {"c": [1]}}, "audience.attributes.c"),
    ({"attributes": {"c": "x" * 11}}, "audience.attributes.c"),
    ({"attributes": {"": 1}}, "audience.attributes"),
    ({"engaged": "sports"}, "audience.engaged"),
    ({"engaged": {"category": "s", "within": "1d", "max": 2}}, "audience.engaged.max"),
    ({"engaged": {"within": "1d"}}, "audience.engaged.category"),
    ({"engaged": {"category": "s"}}, "audience.engaged.within"),
    ({"engaged": {"category": "s", "within": "91d"}}, "audience.engaged.within"),
    ({"engaged": {"category": "s", "within": "1d", "min": 0}}, "audience.engaged.min"),
    ({"engaged": {"category": "s", "within": "1d", "min": 1.5}}, "audience.engaged.min"),
    ({"tags": ["a", "b", "c", "d"], "attributes": {"x": {"in": [1, 2, 3]}}}, "audience"),
])
def test_bad_audiences_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_audience(value, limits=LIMITS)
    assert e.value.message.startswith(field + ":"), e.value.message
    assert e.value.status == 400


def test_an_unknown_operator_is_named() -> None:
    with pytest.raises(BadRequest, match="unknown operator 'between'"):
        parse_audience({"attributes": {"age": {"between": [1, 2]}}})


def test_a_huge_audience_is_refused_before_any_work() -> None:
    with pytest.raises(BadRequest, match=r"^audience: at most 100 tags"):
        parse_audience({"tags": [f"t{i}" for i in range(10_000)]})
    with pytest.raises(BadRequest, match=r"^audience: at most 100"):
        parse_audience({"attributes": {"c": {"in": list(range(10_000))}}})


def test_user_tags_and_attributes_limits() -> None:
    assert check_tags(["a", "b", "a"], limits=LIMITS) == ["a", "b"]
    for bad in (["a", "b", "c", "d"], ["x" * 9], "a", [1]):
        with pytest.raises(BadRequest, match=r"^tags:"):
            check_tags(bad, limits=LIMITS)
    assert check_attributes({"a": 1, "b": True}, limits=LIMITS) == {"a": 1, "b": True}
    with pytest.raises(BadRequest, match=r"^attributes: at most 2"):
        check_attributes({"a": 1, "b": 2, "c": 3}, limits=LIMITS)
    with pytest.raises(BadRequest, match=r"^attributes\.a:"):
        check_attributes({"a": "x" * 11}, limits=LIMITS)
    with pytest.raises(BadRequest, match=r"^attributes: a name"):
        check_attributes({"x" * 11: 1}, limits=LIMITS)
    with pytest.raises(BadRequest, match=r"^attributes\.a:"):
        check_attributes({"a": float("inf")}, limits=LIMITS)


@pytest.mark.parametrize("name", ["", "a/b", "x" * 65, "a b", 3, None, "..%2f"])
def test_bad_segment_names(name: Any) -> None:
    with pytest.raises(BadRequest, match=r"^segment:"):
        check_segment_name(name)


def test_notify_takes_exactly_one_target() -> None:
    assert parse_notify_target({"users": ["a"]}).users == ["a"]
    assert parse_notify_target({"segment": "pros"}).segment == "pros"
    assert parse_notify_target({"tags": ["a"]}).query == AudienceQuery(tags_any=("a",))
    assert parse_notify_target({"tags": {"all": ["a"]}}).query == AudienceQuery(
        tags_all=("a",))
    target = parse_notify_target({"audience": {"attributes": {"plan": "pro"}}})
    assert target.kind == "audience"
    assert target.query == AudienceQuery(attributes=(AttributeTest("plan", "eq", "pro"),))
    for body, named in (({}, "none of them"),
                        ({"users": ["a"], "tags": ["b"]}, "users and tags"),
                        ({"segment": "s", "audience": {}}, "segment and audience")):
        with pytest.raises(BadRequest, match=named) as e:
            parse_notify_target(body)
        assert e.value.message.startswith("users, tags, segment, audience:")
    with pytest.raises(BadRequest, match=r"^audience\.tags:"):
        parse_notify_target({"audience": {"tags": 3}})
    with pytest.raises(BadRequest, match=r"^tags:"):
        parse_notify_target({"tags": []})


async def test_segments_and_pages_on_a_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    await store.open()
    try:
        users = [f"u{i:02d}" for i in range(10)]
        for i, u in enumerate(users):
            await store.set_user_tags(u, ["even" if i % 2 == 0 else "odd"], max_tags=3)
        await store.segment_put("evens", {"tags": ["even"]})
        query = await audience.segment_query(store, "evens")
        got = [page async for page in audience.pages(store, query, limits=LIMITS)]
        assert got == [["u00", "u02", "u04", "u06"], ["u08"]]
        assert await audience.count(store, query, limits=LIMITS) == 5
        with pytest.raises(NotFound, match=r"^segment:") as e:
            await audience.segment_query(store, "nope")
        assert e.value.status == 404
        nobody = parse_audience({"tags": ["none-such"]})
        assert [p async for p in audience.pages(store, nobody)] == []
        assert await audience.count(store, nobody) == 0
    finally:
        await store.close()
