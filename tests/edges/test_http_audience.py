"""Audience and preference endpoints end to end (issue 12): real HTTP requests
against a real node on its real (SQLite) store; the store contract runs the
same calls on Redis and Redis Cluster (tests/store/test_audience_contract.py).

Tags, attributes and segments, then 10,000 users tagged through the API and
selected by a segment, checked against a plain model of the rules (count and
the paged listing); preferences: PUT replaces, PATCH merges (RFC 7396), the
reply is the stored document, and each change is announced to the user's
devices on ``users/{uid}/preferences``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest

from conftest import WAIT, Node
from support.http import assert_error

Call = Callable[[], Awaitable[tuple[int, Any]]]


async def ok(node: Node, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    got, reply = await node.api(method, path, body)
    assert got == status, (got, reply)
    return reply


# -- tags and attributes -----------------------------------------------------------------

async def test_tags_replace_add_remove(node: Node) -> None:
    assert await ok(node, "GET", "/v1/users/alice/tags") == {"tags": []}
    assert await ok(node, "PUT", "/v1/users/alice/tags", {"tags": ["sports", "news"]}) == {
        "tags": ["news", "sports"]}
    assert await ok(node, "POST", "/v1/users/alice/tags",
                    {"add": ["music"], "remove": ["news"]}) == {"tags": ["music", "sports"]}
    assert await ok(node, "POST", "/v1/users/alice/tags", {"add": ["jazz"]}) == {
        "tags": ["jazz", "music", "sports"]}
    assert await ok(node, "GET", "/v1/users/alice/tags") == {"tags": ["jazz", "music", "sports"]}
    assert await ok(node, "GET", "/v1/users/bob/tags") == {"tags": []}


async def test_attributes_replace(node: Node) -> None:
    assert await ok(node, "GET", "/v1/users/alice/attributes") == {}
    attrs = {"first_name": "Alice", "age": 31, "pro": True, "score": 1.5}
    assert await ok(node, "PUT", "/v1/users/alice/attributes", attrs) == attrs
    assert await ok(node, "PUT", "/v1/users/alice/attributes", {"plan": "free"}) == {
        "plan": "free"}
    assert await ok(node, "GET", "/v1/users/alice/attributes") == {"plan": "free"}


# -- segments ----------------------------------------------------------------------------

async def test_segment_put_get_count_users_delete(node: Node) -> None:
    for user, tags, age in (("u1", ["a"], 20), ("u2", ["a", "b"], 40), ("u3", ["b"], 25)):
        await ok(node, "PUT", f"/v1/users/{user}/tags", {"tags": tags})
        await ok(node, "PUT", f"/v1/users/{user}/attributes", {"age": age})
    definition = {"tags": {"any": ["a", "b"]}, "attributes": {"age": {"lt": 30}}}
    assert await ok(node, "PUT", "/v1/segments/young", definition, 201) == {
        "name": "young", "created": True}
    assert await ok(node, "GET", "/v1/segments/young") == definition
    assert await ok(node, "GET", "/v1/segments/young/count") == {"count": 2}
    assert await ok(node, "GET", "/v1/segments/young/users") == {"users": ["u1", "u3"],
                                                                  "next": None}
    page = await ok(node, "GET", "/v1/segments/young/users?limit=1")
    assert page["users"] == ["u1"] and page["next"] is not None
    rest = await ok(node, "GET", f"/v1/segments/young/users?limit=1&cursor={page['next']}")
    assert rest["users"] == ["u3"]
    # replacing answers 200 and the new definition selects
    assert await ok(node, "PUT", "/v1/segments/young", {"tags": ["b"]}) == {
        "name": "young", "created": False}
    assert await ok(node, "GET", "/v1/segments/young/count") == {"count": 2}
    assert (await ok(node, "GET", "/v1/segments/young/users"))["users"] == ["u2", "u3"]
    assert await ok(node, "DELETE", "/v1/segments/young") == {"name": "young", "deleted": True}
    for method, path in (("GET", "/v1/segments/young"), ("DELETE", "/v1/segments/young"),
                         ("GET", "/v1/segments/young/count"),
                         ("GET", "/v1/segments/young/users")):
        status, reply = await node.api(method, path)
        assert "young" in assert_error(status, reply, 404, "not_found")


async def test_ten_thousand_users_tagged_through_the_api_against_a_model(node: Node) -> None:
    """10,000 users get tags and attributes through the HTTP API; a segment's
    count and its paged listing equal what a plain model of the rules selects."""
    rng = random.Random(12)
    names = ["sports", "news", "music", "tech", "food"]
    model: dict[str, tuple[set[str], int]] = {}
    calls: list[Call] = []
    for i in range(10_000):
        user = f"user-{i:05}"
        tags = {t for t in names if rng.random() < 0.3}
        age = rng.randrange(10, 80)
        model[user] = (tags, age)
        calls.append(partial(node.api, "PUT", f"/v1/users/{user}/tags", {"tags": sorted(tags)}))
        calls.append(partial(node.api, "PUT", f"/v1/users/{user}/attributes", {"age": age}))
    async with asyncio.timeout(WAIT * 60):  # bounded: 20,000 requests, 50 at a time
        for i in range(0, len(calls), 50):
            for status, reply in await asyncio.gather(*(c() for c in calls[i:i + 50])):
                assert status == 200, reply
    definition = {"tags": {"any": ["sports", "news"], "none": ["food"]},
                  "attributes": {"age": {"gte": 18, "lt": 30}}}
    await ok(node, "PUT", "/v1/segments/young-readers", definition, 201)
    expected = sorted(u for u, (tags, age) in model.items()
                      if tags & {"sports", "news"} and "food" not in tags and 18 <= age < 30)
    assert expected  # the seed selects someone
    assert await ok(node, "GET", "/v1/segments/young-readers/count") == {"count": len(expected)}
    listed: list[str] = []
    cursor = ""
    for _ in range(10_000):  # bounded: every page moves the cursor on
        page = await ok(node, "GET", f"/v1/segments/young-readers/users?limit=100&cursor={cursor}")
        assert len(page["users"]) <= 100
        listed += page["users"]
        if page["next"] is None:
            break
        cursor = page["next"]
    assert listed == expected


# -- preferences -------------------------------------------------------------------------

PREFS = {"timezone": "Asia/Shanghai", "locale": "zh-CN",
         "categories": {"marketing": {"enabled": False}, "social": {"edges": ["ws"]}},
         "quiet_hours": {"start": "22:00", "end": "07:00"},
         "caps": {"marketing": {"per_hour": 1}}}


async def test_preferences_put_replaces_patch_merges(node: Node) -> None:
    assert await ok(node, "GET", "/v1/users/alice/preferences") == {}
    assert await ok(node, "PUT", "/v1/users/alice/preferences", PREFS) == PREFS
    assert await ok(node, "GET", "/v1/users/alice/preferences") == PREFS
    patched = await ok(node, "PATCH", "/v1/users/alice/preferences",
                       {"timezone": "Europe/Paris", "caps": None,
                        "categories": {"digest": {"enabled": False}}})
    assert patched["timezone"] == "Europe/Paris" and "caps" not in patched
    assert patched["categories"] == {"marketing": {"enabled": False},
                                     "social": {"edges": ["ws"]}, "digest": {"enabled": False}}
    assert patched["quiet_hours"] == PREFS["quiet_hours"]
    assert await ok(node, "GET", "/v1/users/alice/preferences") == patched
    # PUT replaces the whole document
    assert await ok(node, "PUT", "/v1/users/alice/preferences", {"locale": "en"}) == {
        "locale": "en"}
    assert await ok(node, "GET", "/v1/users/bob/preferences") == {}


async def test_a_preference_change_reaches_the_users_ws_devices(node: Node) -> None:
    phone = await node.client("alice")
    assert (await phone.request("subscribe", topic="users/alice/preferences"))["ok"]
    await ok(node, "PUT", "/v1/users/alice/preferences", {"locale": "fr"})
    push = await phone.push()
    assert push["topic"] == "users/alice/preferences" and push["data"] == {"locale": "fr"}
    # a device subscribing later gets the stored document, retained
    tablet = await node.client("alice")
    assert (await tablet.request("subscribe", topic="users/alice/preferences"))["ok"]
    assert (await tablet.push())["data"] == {"locale": "fr"}


@pytest.mark.parametrize(("body", "field"), [
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
    ({"quiet_hours": {"start": "22:00", "end": "7pm"}}, "quiet_hours.end"),
    ({"caps": {"marketing": {"per_hour": 5}}}, "caps.marketing.per_hour"),
    ({"categories": {"security": {"enabled": False}}}, "categories.security"),
    ({"categories": {"nope": {}}}, "categories.nope"),
    ({"colour": "red"}, "colour"),
])
async def test_bad_preferences_name_the_field_and_change_nothing(node: Node, body: Any,
                                                                 field: str) -> None:
    await ok(node, "PUT", "/v1/users/alice/preferences", {"locale": "en"})
    for method in ("PUT", "PATCH"):
        status, reply = await node.api(method, "/v1/users/alice/preferences", body)
        assert assert_error(status, reply, 400, "bad_request").startswith(field + ":"), reply
    assert await ok(node, "GET", "/v1/users/alice/preferences") == {"locale": "en"}


async def test_opened_and_clicked_over_ws_count_as_engagement(node: Node) -> None:
    """``track`` of ``opened`` / ``clicked`` records engagement in the notification's
    category, which a segment's ``engaged`` selects on (``delivered`` does not)."""
    tab = await node.client("alice")
    await ok(node, "PUT", "/v1/segments/fans",
             {"engaged": {"category": "social", "within": "30d", "min": 2}}, 201)
    ids = []
    for _ in range(2):
        ids.append((await ok(node, "POST", "/v1/notify", {"users": ["alice"], "title": "hi",
                                                          "category": "social"}))["id"])
    for event in ("delivered", "opened"):
        assert (await tab.request("track", notification=ids[0], event=event))["recorded"]
    assert await ok(node, "GET", "/v1/segments/fans/count") == {"count": 0}
    assert (await tab.request("track", notification=ids[1], event="clicked"))["recorded"]
    assert await ok(node, "GET", "/v1/segments/fans/users") == {"users": ["alice"],
                                                                 "next": None}
