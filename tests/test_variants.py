"""Variant assignment (stable, by weight), the test group, and bad input."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tidings.errors import BadRequest
from tidings.variants import (
    in_test_group,
    parse_experiment,
    parse_variants,
    variant_content,
)

CHI2_DF2_P001 = 13.816  # chi-square, 2 degrees of freedom, upper 0.1% point


def users(n: int, seed: int = 2026) -> list[str]:
    rng = random.Random(seed)
    return [f"u{rng.getrandbits(48):012x}" for _ in range(n)]


def test_assignment_follows_the_weights_chi_square() -> None:
    v = parse_variants([{"name": "A", "weight": 1}, {"name": "B", "weight": 2},
                        {"name": "C", "weight": 1}])
    counts = {"A": 0, "B": 0, "C": 0}
    people = users(10_000)
    for u in people:
        counts[v.assign("n_experiment", u).name] += 1
    expected = {"A": 2500, "B": 5000, "C": 2500}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < CHI2_DF2_P001, counts
    # and a skewed split is not mistaken for it: equal weights give another picture
    equal = parse_variants([{"name": "A"}, {"name": "B"}, {"name": "C"}])
    flat = {"A": 0, "B": 0, "C": 0}
    for u in people:
        flat[equal.assign("n_experiment", u).name] += 1
    chi2_vs_weighted = sum((flat[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2_vs_weighted > CHI2_DF2_P001, flat


def test_assignment_is_stable_and_depends_on_the_notification() -> None:
    v = parse_variants([{"name": "A"}, {"name": "B"}])
    people = users(500)
    first = [v.assign("n_1", u).name for u in people]
    assert [v.assign("n_1", u).name for u in people] == first  # a retry never switches
    other = [v.assign("n_2", u).name for u in people]
    assert other != first  # each notification splits the audience anew
    # the same definition parsed again (another node) agrees
    again = parse_variants([{"name": "A"}, {"name": "B"}])
    assert [again.assign("n_1", u).name for u in people] == first


def test_test_group_is_the_fraction_and_independent_of_variants() -> None:
    e = parse_experiment({"fraction": 0.2, "metric": "clicked", "decide_after": "4h"})
    assert (e.fraction, e.metric, e.decide_after) == (0.2, "clicked", 4 * 3600.0)
    people = users(10_000, seed=5)
    group = [u for u in people if in_test_group(e, "n_x", u)]
    # binomial(10000, 0.2): sd 40; 5 sd either side
    assert 1800 < len(group) < 2200
    v = parse_variants([{"name": "A"}, {"name": "B"}])
    in_a = sum(v.assign("n_x", u).name == "A" for u in group)
    assert 0.4 * len(group) < in_a < 0.6 * len(group)


def test_variant_content_overrides_the_top_level() -> None:
    v = parse_variants([{"name": "A", "title": "Sale {{first_name}}"},
                        {"name": "B", "body": "other body", "data": {"k": 1}}])
    base = {"title": "T", "body": "B", "data": None, "media": None}
    assert variant_content(base, v.items[0]) == {"title": "Sale {{first_name}}", "body": "B",
                                                 "data": None, "media": None}
    assert variant_content(base, v.items[1])["data"] == {"k": 1}


@pytest.mark.parametrize(("value", "field"), [
    ([{"name": "A"}], "variants"),
    ([{"name": f"v{i}"} for i in range(9)], "variants"),
    ("AB", "variants"),
    ([{"name": "A", "weight": 0}, {"name": "B"}], "variants[0].weight"),
    ([{"name": "A", "weight": -1}, {"name": "B"}], "variants[0].weight"),
    ([{"name": "A"}, {"name": "B", "weight": "2"}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "B", "weight": True}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "B", "weight": float("inf")}], "variants[1].weight"),
    ([{"name": "A"}, {"name": "A"}], "variants[1].name"),
    ([{"name": ""}, {"name": "B"}], "variants[0].name"),
    ([{"name": "A", "colour": "red"}, {"name": "B"}], "variants[0].colour"),
])
def test_bad_variants_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_variants(value)
    assert str(e.value).startswith(f"{field}:")


@pytest.mark.parametrize(("value", "field"), [
    ({"fraction": 0, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 1, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 1.5, "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": "0.2", "metric": "opened", "decide_after": "1h"}, "experiment.fraction"),
    ({"fraction": 0.2, "metric": "revenue", "decide_after": "1h"}, "experiment.metric"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": "soon"}, "experiment.decide_after"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": 0}, "experiment.decide_after"),
    ({"fraction": 0.2, "metric": "opened", "decide_after": "1h", "x": 1}, "experiment.x"),
    ([0.2], "experiment"),
])
def test_bad_experiments_name_the_field(value: Any, field: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_experiment(value)
    assert str(e.value).startswith(f"{field}:")
