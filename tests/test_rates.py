"""Wilson intervals and two-proportion tests, checked against values computed
another way: the interval's bounds by bisection on its defining inequality
and a published table, the p-value as Pearson's chi-square on the 2x2 table
(z squared is that statistic), and textbook closed forms; then the stats
report built on them (funnel, variant order, metric, CSV)."""

from __future__ import annotations

import csv
import io
import math
import random
from statistics import NormalDist

import pytest

from tidings.rates import (
    CSV_COLUMNS,
    FUNNEL,
    Z95,
    compare,
    csv_table,
    funnel,
    metric_of,
    rates,
    report,
    summary,
    wilson,
    winner,
)


def bisect_bound(successes: int, trials: int, upper: bool) -> float:
    """The Wilson bound as the root of (p_hat - p)^2 = z^2 p (1 - p) / n on one
    side of p_hat, found by bisection (no closed form used)."""
    p_hat = successes / trials

    def outside(p: float) -> bool:
        return (p_hat - p) ** 2 > Z95**2 * p * (1 - p) / trials

    lo, hi = (p_hat, 1.0) if upper else (0.0, p_hat)
    for _ in range(200):
        mid = (lo + hi) / 2
        if outside(mid) == upper:  # upper: outside lies above the bound
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(("s", "n"), [(0, 10), (1, 10), (5, 10), (10, 10), (81, 263),
                                      (3, 1000), (500, 1000), (9999, 10000)])
def test_wilson_bounds_solve_the_score_inequality(s: int, n: int) -> None:
    r = wilson(s, n)
    assert r.rate == pytest.approx(s / n)
    assert r.low == pytest.approx(bisect_bound(s, n, upper=False), abs=1e-9)
    assert r.high == pytest.approx(bisect_bound(s, n, upper=True), abs=1e-9)
    assert 0.0 <= r.low <= r.rate <= r.high <= 1.0


def test_wilson_textbook_cases() -> None:
    # 0 of n: the upper bound is z^2 / (n + z^2), the lower 0
    assert wilson(0, 10).high == pytest.approx(Z95**2 / (10 + Z95**2))
    assert wilson(0, 10).low == 0.0
    # n of n mirrors it
    assert wilson(10, 10).low == pytest.approx(10 / (10 + Z95**2))
    # no trials: nothing to say
    assert wilson(0, 0).to_dict() == {"rate": 0.0, "low": 0.0, "high": 0.0}


@pytest.mark.parametrize(("s", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombes_published_table(s: int, n: int, low: float,
                                                  high: float) -> None:
    # Newcombe, "Two-sided confidence intervals for the single proportion:
    # comparison of seven methods", Statistics in Medicine 17 (1998) 857-872,
    # Table II, method 3 (score interval without continuity correction), 4 places
    r = wilson(s, n)
    assert (round(r.low, 4), round(r.high, 4)) == (low, high)


def chi_square_p(s1: int, n1: int, s2: int, n2: int) -> float:
    """Pearson's chi-square (no continuity correction) on the 2x2 table, 1 df."""
    table = [[s1, n1 - s1], [s2, n2 - s2]]
    total = n1 + n2
    cols = [s1 + s2, total - s1 - s2]
    x2 = sum((table[i][j] - rows * cols[j] / total) ** 2 / (rows * cols[j] / total)
             for i, rows in enumerate((n1, n2)) for j in range(2))
    return math.erfc(math.sqrt(x2 / 2))


@pytest.mark.parametrize(("s1", "n1", "s2", "n2"), [(30, 100, 45, 100), (120, 1000, 150, 1000),
                                                    (5, 40, 9, 35), (310, 1000, 350, 1000)])
def test_z_test_matches_chi_square_on_the_table(s1: int, n1: int, s2: int, n2: int) -> None:
    diff, p = compare(s1, n1, s2, n2)
    assert diff == pytest.approx(s2 / n2 - s1 / n1)
    assert p == pytest.approx(chi_square_p(s1, n1, s2, n2), rel=1e-9)
    pooled = (s1 + s2) / (n1 + n2)
    z = diff / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert p == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))), rel=1e-6)


def test_z_test_degenerate_cases() -> None:
    assert compare(0, 0, 5, 10) == (0.0, 1.0)
    assert compare(0, 10, 0, 10) == (0.0, 1.0)  # no variance: nothing to tell
    assert compare(10, 10, 10, 10)[1] == 1.0


def test_rates_use_delivered_as_the_denominator_once_known() -> None:
    r = rates({"targets": 100, "delivered": 50, "opened": 10})
    assert r["delivered"].rate == pytest.approx(0.5)
    assert r["opened"].rate == pytest.approx(0.2)
    r = rates({"targets": 100, "opened": 10})  # no delivered reports: of the targets
    assert r["opened"].rate == pytest.approx(0.1)
    # fewer reported delivered than opened: delivered is not reliable, of the targets
    r = rates({"targets": 100, "delivered": 10, "opened": 40})
    assert r["opened"].rate == pytest.approx(0.4) and r["delivered"].rate == 0.1


def test_counts_over_their_denominator_stay_within_one() -> None:
    # a crash can leave a target count short of the events (see the stores)
    assert wilson(12, 10).to_dict() == wilson(10, 10).to_dict()
    assert compare(12, 10, 5, 10) == compare(10, 10, 5, 10)


def test_winner_needs_significance_against_every_other() -> None:
    a = {"targets": 1000, "delivered": 1000, "opened": 300}
    b = {"targets": 1000, "delivered": 1000, "opened": 360}
    close = {"targets": 1000, "delivered": 1000, "opened": 355}
    assert winner([("A", a), ("B", b)], "opened") == "B"
    assert winner([("A", a), ("B", b), ("C", close)], "opened") is None
    assert winner([("A", b), ("B", a)], "opened") == "A"  # the control can win
    small = {"targets": 20, "delivered": 20, "opened": 8}
    assert winner([("A", {"targets": 20, "delivered": 20, "opened": 6}), ("B", small)],
                  "opened") is None


def test_summary_shape_and_a_simulated_experiment() -> None:
    rng = random.Random(13)
    groups = []
    for name, p in (("A", 0.30), ("B", 0.36)):
        opened = sum(rng.random() < p for _ in range(4000))
        groups.append((name, {"targets": 4000, "pushed": 4000, "delivered": 4000,
                              "opened": opened}))
    total = {k: sum(g[1].get(k, 0) for g in groups) for k in ("targets", "delivered", "opened")}
    out = summary(total, groups, "opened")
    assert out["metric"] == "opened" and out["winner"] == "B"
    assert out["total"]["targets"] == 8000
    b = out["variants"][1]
    assert b["name"] == "B" and out["variants"][0]["vs_control"] is None  # A: the control
    assert b["vs_control"]["p_value"] < 0.05
    assert b["vs_control"]["diff"] == pytest.approx(
        (groups[1][1]["opened"] - groups[0][1]["opened"]) / 4000)
    interval = b["rates"]["opened"]
    assert interval["low"] < interval["rate"] < interval["high"]


def test_funnel_from_target_states_and_events() -> None:
    states = {"pushed": 5, "held": 1, "silent_quiet_hours": 2, "silent_capped": 3,
              "suppressed_category": 4, "expired": 1, "scheduled": 2}
    events = {"delivered": 4, "opened": 3, "feedback": 1, "id": "n_1", "targets": 99}
    got = funnel(states, events)
    assert list(got) == list(FUNNEL)
    assert got == {"targets": 18, "pushed": 5, "held": 1, "silent": 5,
                   "silent_quiet_hours": 2, "silent_capped": 3, "suppressed": 4,
                   "expired": 1, "scheduled": 2, "delivered": 4, "opened": 3,
                   "clicked": 0, "dismissed": 0, "feedback": 1}
    r = rates(got)
    assert r["silent"].rate == pytest.approx(5 / 18) and r["opened"].rate == 0.75
    assert set(rates({"targets": 2, "opened": 1})) == {"opened"}  # only what is counted


def test_the_metric_is_the_experiments_else_opened() -> None:
    assert metric_of({}) == "opened"
    assert metric_of({"experiment": {"metric": "clicked"}}) == "clicked"
    assert metric_of({"experiment": {"metric": "targets"}}) == "opened"
    assert metric_of({"experiment": None}) == "opened"


def test_report_lists_variants_in_the_requests_order() -> None:
    row = {"pushed": 10, "opened": 2}
    counted = {"A": row, "B": row, "Z": row}
    request = {"variants": [{"name": "B"}, {"name": "A"}, {"name": "C"}]}
    out = report({"pushed": 30}, {"opened": 6}, counted, request)
    # the control first; C has no targets yet; Z (not in the request) after, sorted
    assert [v["name"] for v in out["variants"]] == ["B", "A", "C", "Z"]
    assert out["variants"][2]["targets"] == 0 and out["total"]["targets"] == 30
    assert [v["name"] for v in report({}, {}, counted, {})["variants"]] == ["A", "B", "Z"]
    none = report({"pushed": 3}, {}, {}, {})
    assert none["variants"] == [] and none["winner"] is None and none["metric"] == "opened"


def test_csv_holds_the_summary_numbers() -> None:
    a = {"pushed": 1000, "delivered": 1000, "opened": 300}
    b = {"pushed": 1000, "delivered": 1000, "opened": 360}
    out = report({"pushed": 2000}, {"delivered": 2000, "opened": 660},
                 {"A": a, "B": b}, {"variants": [{"name": "A"}, {"name": "B"}]})
    rows = list(csv.DictReader(io.StringIO(csv_table(out))))
    assert [r["name"] for r in rows] == ["total", "A", "B"]
    assert list(rows[0]) == list(CSV_COLUMNS)
    for row, block in zip(rows, [out["total"], *out["variants"]], strict=True):
        assert {k: int(row[k]) for k in FUNNEL} == {k: block[k] for k in FUNNEL}
        for k, r in block["rates"].items():
            assert [float(row[f"{k}_{p}"]) for p in ("rate", "low", "high")] == [
                r["rate"], r["low"], r["high"]]
    assert rows[0]["diff"] == rows[1]["diff"] == rows[1]["p_value"] == ""
    vs = out["variants"][1]["vs_control"]
    assert (float(rows[2]["diff"]), float(rows[2]["p_value"])) == (vs["diff"], vs["p_value"])
