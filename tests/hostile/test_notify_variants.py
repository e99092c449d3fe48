"""Issue 13: hostile ``variants`` and ``experiment`` in ``POST /v1/notify``, over real
HTTP on a real node.

Every refusal is a 4xx whose message starts with the field it names, before
anything is stored (no job, no inbox item); a normal notification goes through
afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Node

AB = [{"name": "A", "title": "a"}, {"name": "B", "title": "b"}]
EXPERIMENT = {"fraction": 0.2, "metric": "opened", "decide_after": "4h"}

BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"variants": [{"name": "A"}]}, 400, "variants"),  # one variant
    ({"variants": [{"name": f"v{i}"} for i in range(9)]}, 400, "variants"),  # nine
    ({"variants": []}, 400, "variants"),
    ({"variants": {"A": {}}}, 400, "variants"),
    ({"variants": [{"name": "A", "weight": 0}, {"name": "B"}]}, 400, "variants[0].weight"),
    ({"variants": [{"name": "A", "weight": -2}, {"name": "B"}]}, 400, "variants[0].weight"),
    ({"variants": [{"name": "A"}, {"name": "B", "weight": "3"}]}, 400, "variants[1].weight"),
    ({"variants": [{"name": "A"}, {"name": "B", "weight": None}, {"name": "C", "weight": []}]},
     400, "variants[2].weight"),
    ({"variants": [{"name": "A"}, {"name": "A"}]}, 400, "variants[1].name"),
    ({"variants": [{"name": "A"}, {"name": "x" * 65}]}, 400, "variants[1].name"),
    ({"variants": [{"name": "A"}, {"title": "no name"}]}, 400, "variants[1].name"),
    ({"variants": [{"name": "A"}, {"name": "B", "locales": {}}]}, 400,
     "variants[1].locales"),
    ({"variants": [{"name": "A"}, {"name": "B", "title": 7}]}, 400, "variants[1].title"),
    ({"variants": [{"name": "A"}, {"name": "B", "body": "x" * 4097}]}, 400,
     "variants[1].body"),
    ({"variants": [{"name": "A"}, {"name": "B", "title": "{{ ''.__class__ }}"}]}, 400,
     "variants[1].title"),
    ({"variants": [{"name": "A", "data": {"k": ["{% raw %}"]}}, {"name": "B"}]}, 400,
     "variants[0].data.k[0]"),
    ({"variants": [{"name": "A"}, {"name": "B", "media": {"image": "file:///etc/passwd"}}]},
     400, "variants[1].media.image"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "metric": "revenue"}}, 400,
     "experiment.metric"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "fraction": 0}}, 400,
     "experiment.fraction"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "fraction": 1}}, 400,
     "experiment.fraction"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "fraction": -0.5}}, 400,
     "experiment.fraction"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "decide_after": "forever"}}, 400,
     "experiment.decide_after"),
    ({"variants": AB, "experiment": {**EXPERIMENT, "decide_after": "365d"}}, 400,
     "experiment.decide_after"),
    ({"variants": AB, "experiment": "A/B"}, 400, "experiment"),
    ({"experiment": EXPERIMENT}, 400, "experiment"),  # nothing to compare
    ({"variants": AB, "experiment": EXPERIMENT, "send_at_local": "09:00"}, 400,
     "experiment"),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD,
                         ids=[f"{i}-{f}" for i, (_, _, f) in enumerate(BAD)])
async def test_bad_variants_and_experiments_are_refused_naming_the_field(
        node: Node, body: dict[str, Any], status: int, field: str) -> None:
    got, reply = await node.api("POST", "/v1/notify", {"users": ["a"], "title": "t", **body})
    assert got == status, reply
    message = reply["error"]["message"]
    assert message.startswith(field) and message[len(field)] in ": ", reply
    for st in ("scheduled", "sending", "sent"):
        _, listed = await node.api("GET", f"/v1/notifications?status={st}")
        assert listed["notifications"] == []
    _, unread = await node.api("GET", "/v1/users/a/unread")
    assert unread["unread"] == 0
    ok, _ = await node.api("POST", "/v1/notify", {"users": ["a"], "title": "fine"})
    assert ok == 200


async def test_a_variant_holding_template_code_in_an_attribute_is_sent_as_text(
        node: Node) -> None:
    store = node.app.node.store
    await store.set_user_attributes("ann", {"name": "{{ 7*7 }}"})
    ws = await node.client("ann")
    got, sent = await node.api("POST", "/v1/notify", {
        "users": ["ann"], "title": "t",
        "variants": [{"name": "A", "title": "Hi {{name}}"}, {"name": "B", "title": "Yo {{name}}"}]})
    assert got == 200, sent
    while True:
        push = await ws.push()
        if push["type"] == "notification":
            break
    assert push["id"] == sent["id"]
    assert push["title"] == {"A": "Hi {{ 7*7 }}", "B": "Yo {{ 7*7 }}"}[push["variant"]]
