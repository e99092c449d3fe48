"""``GET /v1/notifications/{id}/stats`` (JSON and ``?format=csv``) and the
rates of ``GET /v1/stats/categories``, over real HTTP against a real node.

Most cases record variants by calling the node's store ``deliver`` with
``Delivery(..., variant=...)`` for a job created in the store (due far ahead,
so the sender leaves it alone), to set exact counts; events come from real
WebSocket ``track`` ops and from the store's ``track``, each counted once per
user. One case goes end to end: ``POST /v1/notify`` with ``variants``, the
sender stepped on a fake clock, opens tracked over WebSocket.
"""

from __future__ import annotations

import csv
import io
import math
import secrets
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest

from conftest import API_KEY, Node, start_node, stop_node
from support.clock import FakeClock
from support.http import assert_error
from tidings.rates import CSV_COLUMNS, FUNNEL
from tidings.store.base import Delivery, NewJob, Store
from tidings.variants import parse_variants

FIELDS = {"title": "hi", "body": "", "data": None, "category": "promo",
          "priority": "normal", "media": None}


async def stats(node: Node, nid: str) -> dict[str, Any]:
    status, body = await node.api("GET", f"/v1/notifications/{nid}/stats")
    assert status == 200, body
    return dict(body)


async def an_experiment(node: Node, opened: dict[str, int], per_variant: int = 100,
                        metric: str = "opened") -> str:
    """A job with variants B (the control, first in the request) and A, each
    given to ``per_variant`` users who all got it live; ``opened[v]`` of them open it."""
    store: Store = node.app.node.store
    nid = "n_" + secrets.token_hex(8)
    request = {"title": "hi", "variants": [{"name": "B"}, {"name": "A"}],
               "experiment": {"fraction": 0.2, "metric": metric, "decide_after": 3600}}
    await store.job_create(NewJob(nid, "promo", request, 2 * per_variant,
                                  node.app.clock.now() + 86400))
    for variant in ("B", "A"):
        users = [f"{variant.lower()}{i}" for i in range(per_variant)]
        await store.deliver(nid, [Delivery(u, "pushed", FIELDS, edges=None, variant=variant)
                                  for u in users], category="promo", expires_at=None,
                            collapse_key=None, policy=node.app.node.policy)
        for u in users[:opened[variant]]:
            assert await store.track(nid, u, metric)
    return nid


def z_test_p(s1: int, n1: int, s2: int, n2: int) -> float:
    """The pooled two-proportion z-test's two-sided p, from the normal CDF."""
    pooled = (s1 + s2) / (n1 + n2)
    z = (s2 / n2 - s1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return 2 * (1 - NormalDist().cdf(abs(z)))


async def test_stats_per_variant_with_a_verdict(node: Node) -> None:
    nid = await an_experiment(node, {"B": 20, "A": 45})
    # a device's own report counts once more, for its user's variant
    b0 = await node.client("b99")
    assert (await b0.request("track", notification=nid, event="dismissed"))["recorded"]
    got = await stats(node, nid)
    assert (got["id"], got["category"], got["opened"]) == (nid, "promo", 65)  # as before
    assert (got["metric"], got["winner"]) == ("opened", "A")
    total = got["total"]
    assert {k: total[k] for k in ("targets", "pushed", "silent", "suppressed", "delivered",
                                  "opened", "dismissed", "feedback")} == {
        "targets": 200, "pushed": 200, "silent": 0, "suppressed": 0, "delivered": 0,
        "opened": 65, "dismissed": 1, "feedback": 0}
    assert not any(total["push"].values())  # no platform channel configured: none sent
    b, a = got["variants"]
    assert (b["name"], b["targets"], b["opened"], b["dismissed"]) == ("B", 100, 20, 1)
    assert (a["name"], a["targets"], a["opened"], a["dismissed"]) == ("A", 100, 45, 0)
    assert b["vs_control"] is None  # B is the control: the request's first
    # nothing reported delivered: opened is a share of the targets
    assert (b["rates"]["opened"]["rate"], a["rates"]["opened"]["rate"]) == (0.2, 0.45)
    # 100 of 100 pushed: Wilson's lower bound is n / (n + z^2)
    assert b["rates"]["pushed"] == {"rate": 1.0, "low": pytest.approx(100 / (100 + 3.8415),
                                                                      abs=1e-4), "high": 1.0}
    assert a["vs_control"]["diff"] == pytest.approx(0.25)
    assert a["vs_control"]["p_value"] == pytest.approx(z_test_p(20, 100, 45, 100), rel=1e-6)


async def test_the_verdict_compares_the_metric_of_the_delivered(node: Node) -> None:
    store: Store = node.app.node.store
    nid = await an_experiment(node, {"B": 0, "A": 0})
    # every target reports delivered; B's users open 30 of 100, A's 52 of 100
    for variant, n in (("B", 30), ("A", 52)):
        for i in range(100):
            user = f"{variant.lower()}{i}"
            assert await store.track(nid, user, "delivered")
            if i < n:
                assert await store.track(nid, user, "opened")
    got = await stats(node, nid)
    b, a = got["variants"]
    assert (b["delivered"], b["opened"], a["delivered"], a["opened"]) == (100, 30, 100, 52)
    assert a["vs_control"]["diff"] == pytest.approx(0.22)
    assert a["vs_control"]["p_value"] == pytest.approx(z_test_p(30, 100, 52, 100), rel=1e-6)
    assert a["vs_control"]["p_value"] < 0.05 and got["winner"] == "A"
    low, high = a["rates"]["opened"]["low"], a["rates"]["opened"]["high"]
    assert low < 0.52 < high and b["rates"]["opened"]["high"] < 0.45


async def test_no_winner_until_significant_and_the_experiments_metric(node: Node) -> None:
    nid = await an_experiment(node, {"B": 3, "A": 5}, per_variant=10, metric="clicked")
    got = await stats(node, nid)
    assert got["metric"] == "clicked" and got["winner"] is None
    assert [v["clicked"] for v in got["variants"]] == [3, 5]
    assert got["variants"][1]["vs_control"]["p_value"] > 0.05


async def test_the_csv_is_the_same_table(node: Node) -> None:
    nid = await an_experiment(node, {"B": 12, "A": 30})
    got = await stats(node, nid)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{node.api_url}/v1/notifications/{nid}/stats?format=csv"
    async with node.http.get(url, headers=headers) as r:
        assert r.status == 200 and r.content_type == "text/csv"
        text = await r.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row["name"] for row in rows] == ["total", "B", "A"]
    for row, block in zip(rows, [got["total"], *got["variants"]], strict=True):
        assert {k: int(row[k]) for k in FUNNEL} == {k: block[k] for k in FUNNEL}
        assert {k: {p: float(row[f"{k}_{p}"]) for p in ("rate", "low", "high")}
                for k in block["rates"]} == block["rates"]
    assert rows[0]["diff"] == rows[1]["p_value"] == ""  # the total and the control
    vs = got["variants"][1]["vs_control"]
    assert (float(rows[2]["diff"]), float(rows[2]["p_value"])) == (vs["diff"], vs["p_value"])


async def test_a_notification_sent_at_once_has_total_counts(node: Node) -> None:
    status, sent = await node.api("POST", "/v1/notify", {"users": ["ann", "bob"],
                                                         "title": "hi", "category": "news"})
    assert status == 200, sent
    ann = await node.client("ann")
    assert (await ann.request("track", notification=sent["id"], event="opened"))["recorded"]
    got = await stats(node, sent["id"])
    assert (got["total"]["targets"], got["total"]["pushed"], got["total"]["opened"]) == (2, 2, 1)
    assert got["total"]["rates"]["opened"]["rate"] == 0.5  # nothing reported delivered
    assert (got["variants"], got["winner"], got["metric"]) == ([], None, "opened")
    assert got["targets"] == 2 and got["opened"] == 1  # the keys it had before


async def test_unknown_ids_and_bad_formats(node: Node) -> None:
    status, body = await node.api("GET", "/v1/notifications/n_missing/stats")
    assert_error(status, body, 404, "not_found")
    status, body = await node.api("GET", "/v1/notifications/n_missing/stats?format=csv")
    assert_error(status, body, 404, "not_found")
    nid = await an_experiment(node, {"B": 1, "A": 1}, per_variant=2)
    for bad in ("xml", "CSV", ""):
        status, body = await node.api("GET", f"/v1/notifications/{nid}/stats?format={bad}")
        assert "format" in assert_error(status, body, 400, "bad_request")


async def test_category_stats_carry_rates(node: Node) -> None:
    store: Store = node.app.node.store
    nid = await an_experiment(node, {"B": 10, "A": 30})
    for i in range(50):  # b0..b9 and a0..a29 opened; 50 users report delivered
        assert await store.track(nid, f"a{i}", "delivered")
    status, body = await node.api("GET", "/v1/stats/categories")
    assert status == 200, body
    promo = body["categories"]["promo"]
    assert (promo["targets"], promo["delivered"], promo["opened"]) == (200, 50, 40)
    rated = promo["rates"]
    # delivered of the targets, opened of the delivered
    assert (rated["delivered"]["rate"], rated["opened"]["rate"]) == (0.25, 0.8)
    for r in rated.values():
        assert 0.0 <= r["low"] <= r["rate"] <= r["high"] <= 1.0


async def test_variants_sent_through_notify_are_counted_per_variant(tmp_path: Path) -> None:
    clock = FakeClock()
    node = await start_node(tmp_path, clock=clock)
    try:
        users = [f"u{i}" for i in range(40)]
        variants = [{"name": "B", "title": "Last chance"}, {"name": "A", "title": "Sale"}]
        status, sent = await node.api("POST", "/v1/notify", {
            "users": users, "title": "Sale", "variants": variants,
            "send_at": "2026-01-15T12:01:00Z"})
        assert status == 200, sent
        nid = str(sent["id"])
        given = {u: parse_variants(variants).assign(nid, u).name for u in users}
        assert set(given.values()) == {"A", "B"}
        clock.advance(60)
        await node.app.notifier.sender.step()
        # two users of each variant open it from their WebSocket (twice: once counted)
        openers = [u for v in ("A", "B") for u in [u for u in users if given[u] == v][:2]]
        for user in openers:
            c = await node.client(user)
            for recorded in (True, False):
                r = await c.request("track", notification=nid, event="opened")
                assert r["ok"] and r["recorded"] is recorded, r
        got = await stats(node, nid)
        assert [v["name"] for v in got["variants"]] == ["B", "A"]  # the request's order
        for v in got["variants"]:
            n = sum(1 for u in users if given[u] == v["name"])
            assert (v["targets"], v["pushed"], v["opened"]) == (n, n, 2), v
            assert v["rates"]["opened"]["rate"] == pytest.approx(2 / n)
        assert (got["total"]["targets"], got["total"]["opened"]) == (40, 4)
        assert got["metric"] == "opened" and got["winner"] is None
    finally:
        await stop_node(node)
