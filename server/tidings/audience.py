"""Audiences (issue 12, Scope 1): who a notification goes to, beyond a list of ids.

The public shapes (the HTTP API and the docs use exactly these):

* Tags per user: ``{"tags": [...]}`` (replace) and ``{"add": [...], "remove":
  [...]}``; at most ``audience.max_tags`` tags of at most
  ``audience.max_tag_length`` characters (:func:`check_tags`).
* Attributes per user: a flat JSON object of strings, numbers and booleans;
  at most ``audience.max_attributes``, names and string values at most
  ``audience.max_attribute_size`` characters (:func:`check_attributes`).
* A segment or inline audience (:func:`parse_audience`)::

      {"tags": {"all": [...], "any": [...], "none": [...]},
       "attributes": {"plan": "pro", "country": {"in": ["CN", "TW"]},
                      "age": {"gte": 18, "lt": 30}},
       "active_within": "7d",
       "engaged": {"category": "sports", "within": "30d", "min": 2}}

  Every part is optional; all parts must hold. ``tags`` may be a list, which
  means ``{"any": [...]}``. An attribute's condition is a value (equality:
  same value and type, so ``true`` is not ``1``) or an object of operators,
  all of which must hold: ``eq``, ``in`` (a non-empty list of values),
  ``gte``, ``gt``, ``lte``, ``lt`` (numbers; they hold only for a numeric
  attribute). A user without the attribute matches no condition on it.
  ``active_within`` keeps users recorded online within that duration;
  ``engaged`` keeps users who opened or clicked notifications of
  ``category`` at least ``min`` times within ``within``. Durations are a
  whole number and a unit: ``"45s"``, ``"15m"``, ``"12h"``, ``"30d"``,
  ``"2w"`` (:func:`parse_duration`); ``engaged.within`` is at most 90 days
  (the engagement the store keeps).
* ``POST /v1/notify`` takes exactly one of ``users``, ``tags``, ``segment``
  (a name) or ``audience`` (an inline segment): :func:`parse_notify_target`.

Every error is a :class:`tidings.errors.BadRequest` whose message starts with
the field it is about (``audience.attributes.age: unknown operator 'between'``),
so the HTTP layer answers 400 naming it; an unknown segment is
:class:`tidings.errors.NotFound` (404). An audience that selects nobody is
not an error.

Selection goes through the store (:class:`tidings.store.contracts.audience.AudienceStore`)
in pages of ``audience.page_size`` users: :func:`pages` yields them, so a send
to 100,000 users never holds them all.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .config import AudienceSettings
from .errors import BadRequest, NotFound
from .store.contracts.audience import (
    ATTRIBUTE_OPS,
    ENGAGEMENT_KEEP,
    AttributeTest,
    AudienceQuery,
    AudienceStore,
    Engaged,
    check_attribute_values,
    check_tag_values,
)

__all__ = [
    "AUDIENCE_KEYS",
    "MAX_DURATION",
    "TARGET_KEYS",
    "NotifyTarget",
    "check_attributes",
    "check_segment_name",
    "check_tags",
    "count",
    "pages",
    "parse_audience",
    "parse_duration",
    "parse_notify_target",
    "parse_tag_selector",
    "segment_query",
]

AUDIENCE_KEYS = ("tags", "attributes", "active_within", "engaged")
TARGET_KEYS = ("users", "tags", "segment", "audience")
MAX_DURATION = 366 * 86400.0  # the longest active_within
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION = re.compile(r"([0-9]{1,9})([smhdw])")
_SEGMENT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT = AudienceSettings()


def parse_duration(value: Any, name: str, *, maximum: float = MAX_DURATION) -> float:
    """Seconds in a duration such as ``"30d"``, ``"12h"``, ``"15m"`` (more than
    zero, at most ``maximum``); else ``BadRequest`` naming ``name``."""
    m = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise BadRequest(f"{name}: must be a duration such as \"30d\", \"12h\" or \"15m\"")
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise BadRequest(f"{name}: must be longer than zero")
    if seconds > maximum:
        raise BadRequest(f"{name}: must be at most {int(maximum // 86400)}d")
    return seconds


def check_tags(tags: Any, name: str = "tags", limits: AudienceSettings = _DEFAULT
               ) -> list[str]:
    """A list of distinct tags (order kept), each within ``max_tag_length``, at
    most ``max_tags`` of them; else ``BadRequest`` naming ``name``."""
    out = check_tag_values(tags, name)
    if len(out) > limits.max_tags:
        raise BadRequest(f"{name}: at most {limits.max_tags} tags")
    for t in out:
        if len(t) > limits.max_tag_length:
            raise BadRequest(f"{name}: a tag is at most {limits.max_tag_length} characters")
    return out


def check_attributes(attrs: Any, name: str = "attributes",
                     limits: AudienceSettings = _DEFAULT) -> dict[str, Any]:
    """A user's attributes: a flat object of strings, finite numbers and booleans,
    within the limits; else ``BadRequest`` naming the field."""
    out = check_attribute_values(attrs, name)
    if len(out) > limits.max_attributes:
        raise BadRequest(f"{name}: at most {limits.max_attributes} attributes")
    size = limits.max_attribute_size
    for k, v in out.items():
        if len(k) > size:
            raise BadRequest(f"{name}: a name is at most {size} characters")
        if isinstance(v, str) and len(v) > size:
            raise BadRequest(f"{name}.{k}: at most {size} characters")
    return out


def check_segment_name(name: Any) -> str:
    """A segment name: 1-64 of ``A-Z a-z 0-9 _ . -`` (it sits in a URL path)."""
    if not isinstance(name, str) or _SEGMENT_NAME.fullmatch(name) is None:
        raise BadRequest("segment: a name is 1-64 letters, digits, '_', '.' or '-'")
    return name


def parse_tag_selector(value: Any, name: str = "tags", limits: AudienceSettings = _DEFAULT
                       ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(all, any, none)`` of a tag selector: a non-empty list (any of them) or
    ``{"all", "any", "none"}`` (each optional; an empty list is no condition)."""
    if isinstance(value, list):
        if not value:
            raise BadRequest(f"{name}: give at least one tag")
        return (), tuple(_selector_tags(value, name, limits)), ()
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: must be a list of tags or an object with all, any, none")
    unknown = sorted(set(value) - {"all", "any", "none"})
    if unknown:
        raise BadRequest(f"{name}.{unknown[0]}: unknown; use all, any or none")
    all_, any_, none = (tuple(_selector_tags(value.get(k, []), f"{name}.{k}", limits))
                        for k in ("all", "any", "none"))
    if not (all_ or any_ or none):
        raise BadRequest(f"{name}: give at least one tag")
    return all_, any_, none


def _selector_tags(value: Any, name: str, limits: AudienceSettings) -> list[str]:
    out = check_tag_values(value, name)
    for t in out:
        if len(t) > limits.max_tag_length:
            raise BadRequest(f"{name}: a tag is at most {limits.max_tag_length} characters")
    return out


def _scalar(v: Any, name: str, limits: AudienceSettings) -> Any:
    if isinstance(v, float) and v != v:  # NaN: orjson refuses it anyway
        raise BadRequest(f"{name}: must be a finite number")
    if not isinstance(v, (str, int, float, bool)):
        raise BadRequest(f"{name}: must be a string, number or boolean")
    if isinstance(v, str) and len(v) > limits.max_attribute_size:
        raise BadRequest(f"{name}: at most {limits.max_attribute_size} characters")
    return v


def _number(v: Any, name: str) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise BadRequest(f"{name}: must be a number")
    return v


def _attribute_tests(value: Any, name: str, limits: AudienceSettings
                     ) -> list[AttributeTest]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: must be an object of attribute conditions")
    out: list[AttributeTest] = []
    for attr, cond in value.items():
        field = f"{name}.{attr}"
        if not attr or len(attr) > limits.max_attribute_size:
            raise BadRequest(f"{name}: an attribute name is 1-"
                             f"{limits.max_attribute_size} characters")
        if not isinstance(cond, dict):
            out.append(AttributeTest(attr, "eq", _scalar(cond, field, limits)))
            continue
        if not cond:
            raise BadRequest(f"{field}: give a value or at least one operator")
        for op, arg in cond.items():
            if op not in ATTRIBUTE_OPS:
                raise BadRequest(f"{field}: unknown operator {op!r}; use "
                                 + ", ".join(ATTRIBUTE_OPS))
            if op == "eq":
                out.append(AttributeTest(attr, "eq", _scalar(arg, f"{field}.eq", limits)))
            elif op == "in":
                if not isinstance(arg, list) or not arg:
                    raise BadRequest(f"{field}.in: must be a non-empty list of values")
                values = tuple(_scalar(x, f"{field}.in", limits) for x in arg)
                out.append(AttributeTest(attr, "in", values))
            else:
                out.append(AttributeTest(attr, op, _number(arg, f"{field}.{op}")))
    return out


def _engaged(value: Any, name: str) -> Engaged:
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: must be an object with category, within and min")
    unknown = sorted(set(value) - {"category", "within", "min"})
    if unknown:
        raise BadRequest(f"{name}.{unknown[0]}: unknown; use category, within and min")
    category = value.get("category")
    if not isinstance(category, str) or not category or len(category) > 64:
        raise BadRequest(f"{name}.category: must be a category name")
    within = parse_duration(value.get("within"), f"{name}.within", maximum=ENGAGEMENT_KEEP)
    least = value.get("min", 1)
    if isinstance(least, bool) or not isinstance(least, int) or not 1 <= least <= 1_000_000:
        raise BadRequest(f"{name}.min: must be a whole number from 1")
    return Engaged(category, within, least)


def parse_audience(value: Any, name: str = "audience", limits: AudienceSettings = _DEFAULT
                   ) -> AudienceQuery:
    """The :class:`AudienceQuery` of a segment / inline audience (see the module doc)."""
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: must be an object")
    unknown = sorted(set(value) - set(AUDIENCE_KEYS))
    if unknown:
        raise BadRequest(f"{name}.{unknown[0]}: unknown; use " + ", ".join(AUDIENCE_KEYS))
    all_: tuple[str, ...] = ()
    any_: tuple[str, ...] = ()
    none: tuple[str, ...] = ()
    if "tags" in value:
        all_, any_, none = parse_tag_selector(value["tags"], f"{name}.tags", limits)
    tests = (_attribute_tests(value["attributes"], f"{name}.attributes", limits)
             if "attributes" in value else [])
    active = (parse_duration(value["active_within"], f"{name}.active_within")
              if "active_within" in value else None)
    engaged = _engaged(value["engaged"], f"{name}.engaged") if "engaged" in value else None
    terms = len(all_) + len(any_) + len(none) + sum(
        len(t.value) if t.op == "in" else 1 for t in tests)
    if terms > limits.max_terms:
        raise BadRequest(f"{name}: at most {limits.max_terms} tags and values in all")
    return AudienceQuery(all_, any_, none, tuple(tests), active, engaged)


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """Who a ``POST /v1/notify`` addresses: exactly one of the four forms.

    ``users``: the raw list (the notify handler validates ids as before);
    ``tags`` / ``audience``: ``query``; ``segment``: ``segment`` (a name, looked
    up with :func:`segment_query`, so an unknown one is a 404)."""

    kind: Literal["users", "tags", "segment", "audience"]
    users: list[Any] | None = None
    query: AudienceQuery | None = None
    segment: str | None = None


def parse_notify_target(body: Mapping[str, Any], limits: AudienceSettings = _DEFAULT
                        ) -> NotifyTarget:
    """Check that ``body`` names exactly one of ``users``, ``tags``, ``segment``,
    ``audience`` and parse it; else ``BadRequest`` naming the fields."""
    given = [k for k in TARGET_KEYS if k in body]
    if len(given) != 1:
        which = " and ".join(given) if given else "none of them"
        raise BadRequest(f"{', '.join(TARGET_KEYS)}: give exactly one (got {which})")
    kind = given[0]
    value = body[kind]
    if kind == "users":
        return NotifyTarget("users", users=value if isinstance(value, list) else None)
    if kind == "segment":
        return NotifyTarget("segment", segment=check_segment_name(value))
    if kind == "tags":
        all_, any_, none = parse_tag_selector(value, "tags", limits)
        return NotifyTarget("tags", query=AudienceQuery(all_, any_, none))
    return NotifyTarget("audience", query=parse_audience(value, "audience", limits))


async def segment_query(store: AudienceStore, name: str,
                        limits: AudienceSettings = _DEFAULT) -> AudienceQuery:
    """The query of a saved segment; ``NotFound`` when there is none."""
    definition = await store.segment_get(check_segment_name(name))
    if definition is None:
        raise NotFound(f"segment: no segment {name!r}")
    return parse_audience(definition, "segment", limits)


async def pages(store: AudienceStore, query: AudienceQuery, *,
                limits: AudienceSettings = _DEFAULT) -> AsyncIterator[list[str]]:
    """The users ``query`` selects, ascending, in non-empty pages of at most
    ``page_size``: what a chunked send iterates."""
    cursor: str | None = None
    while True:
        page = await store.audience_page(query, cursor=cursor, limit=limits.page_size)
        if page.users:
            yield page.users
        if page.next is None:
            return
        cursor = page.next


async def count(store: AudienceStore, query: AudienceQuery, *,
                limits: AudienceSettings = _DEFAULT) -> int:
    """How many users ``query`` selects (``GET /v1/segments/{name}/count``)."""
    return await store.audience_count(query, page=limits.page_size)
