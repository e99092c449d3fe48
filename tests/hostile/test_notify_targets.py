"""Issue 12: hostile input to ``POST /v1/notify``'s audiences and schedules, and to
the notification endpoints, over real HTTP on a real node.

Every refusal is a clear 4xx whose message starts with the field, before
anything is stored (no job, no inbox item); an attribute value holding
template code reaches the user as text. Nothing here harms the node: a
normal notification goes through afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Node

BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"users": "ann"}, 400, "users"),
    ({"segment": ["a"]}, 400, "segment"),
    ({"segment": "../../etc"}, 400, "segment"),
    ({"tags": "vip"}, 400, "tags"),
    ({"tags": {"all": "vip"}}, 400, "tags.all"),
    ({"tags": [""]}, 400, "tags"),
    ({"audience": []}, 400, "audience"),
    ({"audience": {"attributes": {"a": {"in": []}}}}, 400, "audience.attributes.a.in"),
    ({"audience": {"engaged": {"category": "x", "within": "1000d"}}}, 400,
     "audience.engaged.within"),
    ({"audience": {"active_within": "-1d"}}, 400, "audience.active_within"),
    ({"users": ["a"], "send_at": 1767225600}, 400, "send_at"),
    ({"users": ["a"], "send_at": ["2026-01-01T00:00:00Z"]}, 400, "send_at"),
    ({"users": ["a"], "send_at": "2026-06-30T23:59:60Z"}, 400, "send_at"),
    ({"users": ["a"], "send_at": "2026-01-01T00:00:00+25:00"}, 400, "send_at"),
    ({"users": ["a"], "send_at": "BEST_TIME"}, 400, "send_at"),
    ({"users": ["a"], "send_at_local": "09:00Z"}, 400, "send_at_local"),
    ({"users": ["a"], "send_at_local": {"at": "09:00"}}, 400, "send_at_local"),
    ({"users": ["a"], "send_at": "best_time", "send_at_local": "09:00"}, 400,
     "send_at, send_at_local"),
    ({"users": ["a"], "locales": ["en"]}, 400, "locales"),
    ({"users": ["a"], "locales": {"../x": {"title": "t"}}}, 400, "locales"),
    ({"users": ["a"], "title": "{{ cycler.__init__.__globals__ }}"}, 400, "title"),
    ({"users": ["a"], "data": {f"k{k}": f"{{{{v{k}}}}}" for k in range(100)}}, 413,
     "data.k"),  # ... more than 64 strings with placeholders (notify.max_templates)
]


@pytest.mark.parametrize(("body", "status", "field"), BAD,
                         ids=[f"{i}-{f}" for i, (_, _, f) in enumerate(BAD)])
async def test_bad_targets_and_times_are_refused_naming_the_field(
        node: Node, body: dict[str, Any], status: int, field: str) -> None:
    got, reply = await node.api("POST", "/v1/notify", {"title": "t", **body})
    assert got == status, reply
    assert reply["error"]["message"].startswith(field), reply
    for st in ("scheduled", "sending", "sent"):
        _, listed = await node.api("GET", f"/v1/notifications?status={st}")
        assert listed["notifications"] == []
    _, unread = await node.api("GET", "/v1/users/a/unread")
    assert unread["unread"] == 0
    ok, _ = await node.api("POST", "/v1/notify", {"users": ["a"], "title": "fine"})
    assert ok == 200


@pytest.mark.parametrize("query", ["status=", "status=SCHEDULED", "status=scheduled&limit=0",
                                   "status=scheduled&limit=100000", "status=sent&cursor=abc",
                                   "status=sent&cursor=%C2%B2", "status=sent&limit=x"])
async def test_bad_list_queries_are_400(node: Node, query: str) -> None:
    got, reply = await node.api("GET", f"/v1/notifications?{query}")
    assert got == 400, reply


async def test_unknown_and_odd_ids_are_404(node: Node) -> None:
    for nid in ("n_missing", "x" * 500, "%00", "..%2F..%2Fetc"):
        for method in ("GET", "DELETE"):
            got, reply = await node.api(method, f"/v1/notifications/{nid}")
            assert got == 404, (method, nid, reply)


async def test_an_attribute_holding_template_code_is_sent_as_text(node: Node) -> None:
    store = node.app.node.store
    await store.set_user_attributes("ann", {"name": "{{ 7*7 }}{% raw %}"})
    ws = await node.client("ann")
    got, sent = await node.api("POST", "/v1/notify", {"users": ["ann"],
                                                      "title": "Hi {{name}}"})
    assert got == 200
    while True:
        push = await ws.push()
        if push["type"] == "notification":
            break
    assert (push["id"], push["title"]) == (sent["id"], "Hi {{ 7*7 }}{% raw %}")
