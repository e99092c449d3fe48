"""Rates with intervals and a verdict between variants (issue 13, statistics).

A rate is ``successes / trials`` with its 95% Wilson score interval (better
than the plain normal interval at small counts and near 0 or 1: it never
leaves [0, 1] and is not empty at 0 successes). Two variants are compared
with the two-proportion z-test (pooled variance, two-sided); the p-value is
``erfc(|z| / sqrt 2)``. Both are textbook (Wilson 1927; e.g. Agresti & Coull
1998, and any statistics text for the z-test); ``tests/test_rates.py`` checks
them against values computed another way.

Denominators (the funnel's public contract): the outcomes (``pushed``,
``held``, ``silent``, ``suppressed``, ``expired``) and ``delivered`` are
shares of the targets; ``opened``, ``clicked``, ``dismissed`` and ``feedback``
are shares of the delivered (a user who never got it cannot open it), falling
back to the targets while fewer were reported delivered than took the step
(clients that track only ``opened``, or not always ``delivered``), so a
share never passes 1. A rate is given for each of those counts present.

The verdict: the variant with the highest rate of the chosen metric wins once
its difference from every other variant is significant at ``alpha`` (0.05);
until then ``winner`` is None.

The funnel of one notification (:func:`funnel`) comes from the store: the
targets by their recorded state (``silent`` is both silent outcomes, each
also kept; ``suppressed`` is ``suppressed_category``) and the events counted
once per user. :func:`csv_table` writes a :func:`summary` as one row per
variant after a ``total`` row.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .store.contracts.notifications import TARGET_STATES

__all__ = [
    "CSV_COLUMNS",
    "FUNNEL",
    "RATED",
    "Rate",
    "compare",
    "csv_table",
    "funnel",
    "metric_of",
    "rates",
    "report",
    "summary",
    "variant_funnels",
    "wilson",
    "winner",
]

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
FUNNEL = ("targets", "pushed", "held", "silent", "silent_quiet_hours", "silent_capped",
          "suppressed", "expired", "scheduled", "delivered", "opened", "clicked", "dismissed",
          "feedback")
"""The counts of a stats block, in order (``scheduled``: still waiting for the
user's own send time)."""
_OF_TARGETS = ("pushed", "held", "silent", "suppressed", "expired", "delivered")
_OF_DELIVERED = ("opened", "clicked", "dismissed", "feedback")
RATED = (*_OF_TARGETS, *_OF_DELIVERED)
"""The counts that get a rate, in order."""
CSV_COLUMNS = ("name", *FUNNEL,
               *(f"{k}_{part}" for k in RATED for part in ("rate", "low", "high")),
               "diff", "p_value")


@dataclass(frozen=True, slots=True)
class Rate:
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "low": self.low, "high": self.high}


def wilson(successes: int, trials: int, z: float = Z95) -> Rate:
    """The rate and its Wilson score interval; all zero for zero trials. More
    successes than trials (counts a crash left short) count as all trials."""
    if trials <= 0:
        return Rate(0.0, 0.0, 0.0)
    p = min(successes, trials) / trials
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
    s1, s2 = min(s1, n1), min(s2, n2)  # as wilson: never a share above 1
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:
        return p2 - p1, 1.0
    z = (p2 - p1) / math.sqrt(var)
    return p2 - p1, math.erfc(abs(z) / math.sqrt(2))


def _denominator(counts: Mapping[str, int], key: str) -> int:
    delivered = counts.get("delivered", 0)
    if key in _OF_DELIVERED and delivered > 0 and delivered >= counts.get(key, 0):
        return delivered
    return counts.get("targets", 0)


def rates(counts: Mapping[str, int]) -> dict[str, Rate]:
    """Each count of :data:`RATED` in ``counts`` as a :class:`Rate` of its denominator."""
    return {k: wilson(counts[k], _denominator(counts, k)) for k in RATED if k in counts}


def funnel(states: Mapping[str, int], events: Mapping[str, Any]) -> dict[str, int]:
    """A stats block's counts from the targets by recorded state and the
    events (each once per user): every :data:`FUNNEL` key, zero when absent."""
    out = {k: int(states.get(k, 0)) for k in ("pushed", "held", "silent_quiet_hours",
                                               "silent_capped", "expired", "scheduled")}
    out["silent"] = out["silent_quiet_hours"] + out["silent_capped"]
    out["suppressed"] = int(states.get("suppressed_category", 0))
    out["targets"] = sum(int(states.get(k, 0)) for k in TARGET_STATES)
    out.update({k: int(events.get(k, 0)) for k in (*_OF_DELIVERED, "delivered")})
    return {k: out[k] for k in FUNNEL}


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
        full = {k: int(counts.get(k, 0)) for k in FUNNEL}
        return {**full, "rates": {k: r.to_dict() for k, r in rates(full).items()}}

    out: list[dict[str, Any]] = []
    control = variants[0][1] if variants else None
    for i, (name, counts) in enumerate(variants):
        entry: dict[str, Any] = {"name": name, **block(counts), "vs_control": None}
        if control is not None and i > 0:  # the control itself: None
            diff, p = compare(control.get(metric, 0), _denominator(control, metric),
                              counts.get(metric, 0), _denominator(counts, metric))
            entry["vs_control"] = {"diff": diff, "p_value": p}
        out.append(entry)
    return {"total": block(total), "variants": out, "metric": metric,
            "winner": winner(variants, metric)}


def metric_of(request: Mapping[str, Any]) -> str:
    """The metric a job's stored request compares its variants by: its
    experiment's, else ``opened``."""
    experiment = request.get("experiment")
    metric = experiment.get("metric") if isinstance(experiment, Mapping) else None
    return metric if metric in _OF_DELIVERED else "opened"


def _variant_order(counted: Mapping[str, Any], request: Mapping[str, Any]) -> list[str]:
    """The request's variant names in its order (the first is the control), each
    listed even before any target has it; then any other counted name, sorted."""
    named = [v["name"] for v in request.get("variants") or ()
             if isinstance(v, Mapping) and isinstance(v.get("name"), str)]
    return [*dict.fromkeys(named), *sorted(set(counted) - set(named))]


def report(states: Mapping[str, int], events: Mapping[str, Any],
           per_variant: Mapping[str, Mapping[str, int]], request: Mapping[str, Any]
           ) -> dict[str, Any]:
    """The :func:`summary` of one notification from what the store counted: its
    targets by state and its events (each once per user), the store's
    ``variant_counts`` and the job's stored request (variants' order, metric)."""
    variants = variant_funnels(per_variant, _variant_order(per_variant, request))
    return summary(funnel(states, events), variants, metric_of(request))


def variant_funnels(per_variant: Mapping[str, Mapping[str, int]], names: Sequence[str]
                    ) -> list[tuple[str, dict[str, int]]]:
    """Each of ``names``' funnel from the store's ``variant_counts`` (a variant's
    targets by state and its events in one mapping), in that order: what the
    stats show and what an experiment's verdict compares."""
    return [(name, funnel(per_variant.get(name, {}), per_variant.get(name, {})))
            for name in names]


def csv_table(stats: Mapping[str, Any]) -> str:
    """A :func:`summary` as CSV (:data:`CSV_COLUMNS`): a ``total`` row, then one
    row per variant; ``diff`` and ``p_value`` empty where there is no control
    to compare with. Numbers are written as Python writes them, so reading
    them back gives the JSON's numbers exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for name, block in [("total", stats["total"]),
                        *((v["name"], v) for v in stats["variants"])]:
        vs = block.get("vs_control") or {}
        rated = block["rates"]
        writer.writerow([name, *(block[k] for k in FUNNEL),
                         *(rated[k][part] for k in RATED for part in ("rate", "low", "high")),
                         vs.get("diff", ""), vs.get("p_value", "")])
    return buf.getvalue()
