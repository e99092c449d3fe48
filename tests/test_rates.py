"""Wilson intervals and two-proportion tests, checked against values computed
another way: the interval's bounds by bisection on its defining inequality,
the p-value as Pearson's chi-square on the 2x2 table (z squared is that
statistic), and textbook closed forms."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from tidings.rates import Z95, compare, rates, summary, wilson, winner


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
    assert b["name"] == "B" and "vs_control" in b and "vs_control" not in out["variants"][0]
    assert b["vs_control"]["p_value"] < 0.05
    assert b["vs_control"]["diff"] == pytest.approx(
        (groups[1][1]["opened"] - groups[0][1]["opened"]) / 4000)
    interval = b["rates"]["opened"]
    assert interval["low"] < interval["rate"] < interval["high"]
