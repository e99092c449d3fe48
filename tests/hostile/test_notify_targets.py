"""Issues 12 and 13: hostile input to ``POST /v1/notify``'s audiences, schedules,
variants and experiments, and to the notification endpoints, over real HTTP on
a real node.

Every refusal is a clear 4xx whose message starts with the field, before
anything is stored (no job, no inbox item); an attribute value holding
template code reaches the user as text. Nothing here harms the node: a
normal notification goes through afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Node

AB = [{"name": "A", "title": "a"}, {"name": "B", "title": "b"}]
EXPERIMENT = {"fraction": 0.2, "metric": "opened", "decide_after": "4h"}


def ab(variants: Any, experiment: Any = None) -> dict[str, Any]:
    """A notify body to user ``a`` with ``variants`` (and ``experiment``)."""
    return {"users": ["a"], "variants": variants, "experiment": experiment}


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
    # variants and experiments (issue 13)
    (ab([{"name": "A"}]), 400, "variants: "),  # one variant
    (ab([{"name": f"v{i}"} for i in range(9)]), 400, "variants: "),  # nine
    (ab([]), 400, "variants: "),
    (ab({"A": {}}), 400, "variants: "),
    (ab([{"name": "A", "weight": 0}, {"name": "B"}]), 400, "variants[0].weight: "),
    (ab([{"name": "A", "weight": -2}, {"name": "B"}]), 400, "variants[0].weight: "),
    (ab([{"name": "A"}, {"name": "B", "weight": "3"}]), 400, "variants[1].weight: "),
    (ab([{"name": "A"}, {"name": "B"}, {"name": "C", "weight": []}]), 400,
     "variants[2].weight: "),
    (ab([{"name": "A"}, {"name": "A"}]), 400, "variants[1].name: "),
    (ab([{"name": "A"}, {"name": "x" * 65}]), 400, "variants[1].name: "),
    (ab([{"name": "A"}, {"title": "no name"}]), 400, "variants[1].name: "),
    (ab([{"name": "A"}, {"name": "B", "locales": {}}]), 400, "variants[1].locales: "),
    (ab([{"name": "A"}, {"name": "B", "title": 7}]), 400, "variants[1].title: "),
    (ab([{"name": "A"}, {"name": "B", "body": "x" * 4097}]), 400, "variants[1].body: "),
    (ab([{"name": "A"}, {"name": "B", "title": "{{ ''.__class__ }}"}]), 400,
     "variants[1].title: "),
    (ab([{"name": "A", "data": {"k": ["{% raw %}"]}}, {"name": "B"}]), 400,
     "variants[0].data.k[0]: "),
    (ab([{"name": "A"}, {"name": "B", "media": {"image": "file:///etc/passwd"}}]), 400,
     "variants[1].media.image "),
    (ab(AB, {**EXPERIMENT, "metric": "revenue"}), 400, "experiment.metric: "),
    (ab(AB, {**EXPERIMENT, "fraction": 0}), 400, "experiment.fraction: "),
    (ab(AB, {**EXPERIMENT, "fraction": 1}), 400, "experiment.fraction: "),
    (ab(AB, {**EXPERIMENT, "fraction": -0.5}), 400, "experiment.fraction: "),
    (ab(AB, {**EXPERIMENT, "decide_after": "forever"}), 400, "experiment.decide_after: "),
    (ab(AB, {**EXPERIMENT, "decide_after": "365d"}), 400, "experiment.decide_after: "),
    (ab(AB, "A/B"), 400, "experiment: "),
    (ab(None, EXPERIMENT), 400, "experiment: "),  # nothing to compare
    ({**ab(AB, EXPERIMENT), "send_at_local": "09:00"}, 400, "experiment: "),
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


@pytest.mark.parametrize("variants", [None, [
    {"name": "A", "title": "Hi {{name}}"}, {"name": "B", "title": "Hi {{name}}", "body": "b"}]],
    ids=["plain", "variants"])
async def test_an_attribute_holding_template_code_is_sent_as_text(
        node: Node, variants: list[dict[str, Any]] | None) -> None:
    store = node.app.node.store
    await store.set_user_attributes("ann", {"name": "{{ 7*7 }}{% raw %}"})
    ws = await node.client("ann")
    got, sent = await node.api("POST", "/v1/notify", {"users": ["ann"],
                                                      "title": "Hi {{name}}",
                                                      "variants": variants})
    assert got == 200
    push = await ws.push_of("notification")
    assert (push["id"], push["title"]) == (sent["id"], "Hi {{ 7*7 }}{% raw %}")
