"""Rates with intervals and a verdict between variants (issue 13, statistics).

A rate is ``successes / trials`` with its 95% Wilson score interval (better
than the plain normal interval at small counts and near 0 or 1: it never
leaves [0, 1] and is not empty at 0 successes). Two variants are compared
with the two-proportion z-test (pooled variance, two-sided); the p-value is
``erfc(|z| / sqrt 2)``. Both are textbook (Wilson 1927; e.g. Agresti & Coull
1998, and any statistics text for the z-test); ``tests/test_rates.py`` checks
them against values computed another way.

Denominators (the funnel's public contract): ``delivered`` is a share of the
targets; ``opened``, ``clicked``, ``dismissed`` and ``feedback`` are shares of
the delivered (a user who never got it cannot open it), falling back to the
targets while nothing has been reported delivered (clients that track only
``opened``).

The verdict: the variant with the highest rate of the chosen metric wins once
its difference from every other variant is significant at ``alpha`` (0.05);
until then ``winner`` is None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FUNNEL",
    "Rate",
    "compare",
    "rates",
    "summary",
    "wilson",
    "winner",
]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
FUNNEL = ("targets", "pushed", "held", "silent", "suppressed", "delivered", "opened",
          "clicked", "dismissed", "feedback")
_OF_DELIVERED = ("opened", "clicked", "dismissed", "feedback")


@dataclass(frozen=True, slots=True)
class Rate:
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "low": self.low, "high": self.high}


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    """The rate and its Wilson score interval; all zero for zero trials."""
    if trials <= 0:
        return Rate(0.0, 0.0, 0.0)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    # the bounds hold p_hat exactly (rounding could put 1.0 just outside at n of n)
    return Rate(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def compare(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """``(diff, p_value)`` of rate 2 minus rate 1 by the pooled two-proportion
    z-test; p = 1.0 where it cannot be told (no trials, or no variance)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return p2 - p1, 1.0
    z = (p2 - p1) / math.sqrt(var)
    return p2 - p1, math.erfc(abs(z) / math.sqrt(2))


def _denominator(counts: Mapping[str, int], key: str) -> int:
    if key in _OF_DELIVERED and counts.get("delivered", 0) > 0:
        return counts["delivered"]
    return counts.get("targets", 0)


def rates(counts: Mapping[str, int]) -> dict[str, Rate]:
    """Each funnel step after the targets as a :class:`Rate` of its denominator."""
    return {k: wilson(counts.get(k, 0), _denominator(counts, k))
            for k in ("delivered", *_OF_DELIVERED)}


def winner(groups: Sequence[tuple[str, Mapping[str, int]]], metric: str,
           alpha: float = 0.05) -> str | None:
    """The best group by ``metric`` if it beats every other significantly."""
    if len(groups) < 2:
        return None

    def rate(c: Mapping[str, int]) -> float:
        n = _denominator(c, metric)
        return c.get(metric, 0) / n if n else 0.0

    best_name, best = max(groups, key=lambda g: rate(g[1]))
    for name, other in groups:
        if name == best_name:
            continue
        diff, p = compare(other.get(metric, 0), _denominator(other, metric),
                          best.get(metric, 0), _denominator(best, metric))
        if diff <= 0 or p >= alpha:
            return None
    return best_name


def summary(total: Mapping[str, int], variants: Sequence[tuple[str, Mapping[str, int]]],
            metric: str) -> dict[str, Any]:
    """The ``GET /v1/notifications/{id}/stats`` body: the funnel and rates in
    total and per variant, each variant against the first (the control), and
    the winner."""

    def block(counts: Mapping[str, int]) -> dict[str, Any]:
        return {**{k: int(counts.get(k, 0)) for k in FUNNEL},
                "rates": {k: r.to_dict() for k, r in rates(counts).items()}}

    out: list[dict[str, Any]] = []
    control = variants[0][1] if variants else None
    for i, (name, counts) in enumerate(variants):
        entry = {"name": name, **block(counts)}
        if control is not None and i > 0:
            diff, p = compare(control.get(metric, 0), _denominator(control, metric),
                              counts.get(metric, 0), _denominator(counts, metric))
            entry["vs_control"] = {"diff": diff, "p_value": p}
        out.append(entry)
    return {"total": block(total), "variants": out, "metric": metric,
            "winner": winner(variants, metric)}
