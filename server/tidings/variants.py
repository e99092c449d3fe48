"""A/B variants of one notification: the request's shape, and who gets which.

``POST /v1/notify`` may carry ``variants`` (issue 13)::

    "variants": [{"name": "A", "weight": 1, "title": "...", "body": "...",
                  "data": {...}, "media": {...}}, ...]
    "experiment": {"fraction": 0.2, "metric": "opened", "decide_after": "4h"}

2 to 8 variants, names distinct (1-64 characters), weights positive finite
numbers (equal when left out). Each variant's content replaces the top-level
``title`` / ``body`` / ``data`` / ``media`` it names; what it leaves out comes
from the top level. The first variant is the control every other is compared
with.

Assignment is a pure function of the notification id and the user: a 64-bit
BLAKE2b hash of both picks a point in [0, 1) that falls into one variant's
share of the cumulative weights. A retry, a resume after a crash or a resend
on another node therefore gives every user the same variant, and no state is
kept to make it so. With an ``experiment``, a second, independent hash puts
``fraction`` of the audience in the test group (sent the variants first); the
rest wait until ``decide_after`` and then all get the winning variant by
``metric``.

Every error is a :class:`~tidings.errors.BadRequest` naming the field.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from .audience import parse_duration
from .content import Content
from .errors import BadRequest

__all__ = [
    "CONTENT_KEYS",
    "METRICS",
    "Experiment",
    "Variant",
    "Variants",
    "compile_variants",
    "in_test_group",
    "parse_experiment",
    "parse_variants",
    "variant_content",
]

MIN_VARIANTS = 2
MAX_VARIANTS = 8
CONTENT_KEYS = ("title", "body", "data", "media")
METRICS = ("opened", "clicked")
_VARIANT_KEYS = frozenset({"name", "weight", *CONTENT_KEYS})
_EXPERIMENT_KEYS = frozenset({"fraction", "metric", "decide_after"})
MAX_DECIDE_AFTER = 30 * 86400.0


def _unit(*parts: str) -> float:
    """A point in [0, 1) from a stable hash of ``parts`` (never Python's ``hash``)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Variant:
    """One version: its name, its weight and the content fields it sets."""

    name: str
    weight: float
    content: Mapping[str, Any]  # a subset of CONTENT_KEYS, as given


@dataclass(frozen=True, slots=True)
class Variants:
    """The variants of one notification, with their cumulative weights."""

    items: tuple[Variant, ...]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.items]

    def assign(self, notification_id: str, user: str) -> Variant:
        """The variant ``user`` gets for ``notification_id``: stable, by weight."""
        bounds = list(accumulate(v.weight for v in self.items))
        point = _unit("variant", notification_id, user) * bounds[-1]
        return self.items[min(bisect_right(bounds, point), len(self.items) - 1)]

    def named(self, name: str) -> Variant | None:
        return next((v for v in self.items if v.name == name), None)

    def to_json(self) -> list[dict[str, Any]]:
        """As the job stores it: :func:`parse_variants` reads it back the same."""
        return [{"name": v.name, "weight": v.weight, **v.content} for v in self.items]


@dataclass(frozen=True, slots=True)
class Experiment:
    """Send the variants to ``fraction`` of the audience, then the winner by
    ``metric`` to the rest after ``decide_after`` seconds."""

    fraction: float
    metric: str
    decide_after: float

    def to_json(self) -> dict[str, Any]:
        """As the job stores it: :func:`parse_experiment` reads it back the same."""
        return {"fraction": self.fraction, "metric": self.metric,
                "decide_after": self.decide_after}


def in_test_group(experiment: Experiment, notification_id: str, user: str) -> bool:
    """Whether ``user`` is in the experiment's test group (stable, independent
    of the variant hash, so the test group is split by weight like everyone)."""
    return _unit("test-group", notification_id, user) < experiment.fraction


def _weight(value: Any, where: str) -> float:
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value <= 0:
        raise BadRequest(f"{where}: must be a positive number")
    return float(value)


def parse_variants(value: Any, field: str = "variants") -> Variants:
    """``variants`` from a notify request (content is checked by the caller, who
    compiles each variant's title/body/data like the top-level ones)."""
    if not isinstance(value, list):
        raise BadRequest(f"{field}: must be a list of {MIN_VARIANTS} to {MAX_VARIANTS} variants")
    if not MIN_VARIANTS <= len(value) <= MAX_VARIANTS:
        raise BadRequest(f"{field}: must list {MIN_VARIANTS} to {MAX_VARIANTS} variants, "
                         f"not {len(value)}")
    items: list[Variant] = []
    seen: set[str] = set()
    for i, raw in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(raw, Mapping):
            raise BadRequest(f"{where}: must be an object")
        unknown = sorted(set(raw) - _VARIANT_KEYS)
        if unknown:
            raise BadRequest(f"{where}.{unknown[0]}: unknown field")
        name = raw.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 64 or not name.isprintable():
            raise BadRequest(f"{where}.name: must be 1-64 printable characters")
        if name in seen:
            raise BadRequest(f"{where}.name: {name!r} is used twice")
        seen.add(name)
        content = {k: raw[k] for k in CONTENT_KEYS if k in raw}
        items.append(Variant(name, _weight(raw.get("weight"), f"{where}.weight"), content))
    return Variants(tuple(items))


def parse_experiment(value: Any, field: str = "experiment") -> Experiment:
    """``experiment`` from a notify request (it needs ``variants``; the caller checks)."""
    if not isinstance(value, Mapping):
        raise BadRequest(f"{field}: must be an object with fraction, metric and decide_after")
    unknown = sorted(set(value) - _EXPERIMENT_KEYS)
    if unknown:
        raise BadRequest(f"{field}.{unknown[0]}: unknown field")
    fraction = value.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0 < fraction < 1):
        raise BadRequest(f"{field}.fraction: must be a number between 0 and 1 (exclusive)")
    metric = value.get("metric", "opened")
    if metric not in METRICS:
        raise BadRequest(f"{field}.metric: must be one of {', '.join(METRICS)}")
    decide = value.get("decide_after")
    if isinstance(decide, (int, float)) and not isinstance(decide, bool):
        if not 0 < decide <= MAX_DECIDE_AFTER:
            raise BadRequest(f"{field}.decide_after: must be more than 0 and at most 30d")
        after = float(decide)
    else:
        after = parse_duration(decide, f"{field}.decide_after", maximum=MAX_DECIDE_AFTER)
    return Experiment(float(fraction), str(metric), after)


def variant_content(base: Mapping[str, Any], variant: Variant,
                    keys: Sequence[str] = CONTENT_KEYS) -> dict[str, Any]:
    """The content one variant's users get: the variant's fields over ``base``."""
    return {k: variant.content.get(k, base.get(k)) for k in keys}


def compile_variants(request: Mapping[str, Any], variants: Variants, *, max_templates: int,
                     max_placeholders: int) -> dict[str, Content]:
    """Each variant's :class:`~tidings.content.Content` (by name): its fields over
    the request's, and the request's ``locales`` for the fields it leaves to the
    top level (a variant that sets its own ``title`` is not translated by the
    top-level ``locales``). A bad template is a BadRequest naming
    ``variants[i].<field>``."""
    locales = request.get("locales")
    out: dict[str, Content] = {}
    for i, v in enumerate(variants.items):
        content = variant_content(request, v)
        own: Any = locales
        if isinstance(locales, Mapping):
            own = {tag: {k: x for k, x in fields.items() if k not in v.content}
                   for tag, fields in locales.items() if isinstance(fields, Mapping)}
            own = {tag: fields for tag, fields in own.items() if fields} or None
        out[v.name] = Content.compile(title=content["title"], body=content["body"],
                                      data=content["data"], locales=own,
                                      max_templates=max_templates,
                                      max_placeholders=max_placeholders,
                                      field=f"variants[{i}].")
    return out
