"""A user's notification preferences: the model, its validation, PUT and PATCH.

The wire shape (issue 12, the public contract; every key optional)::

    {"timezone": "Europe/Paris",                      # IANA name (zoneinfo)
     "locale": "zh-CN",                               # BCP 47 tag, picks content
     "categories": {"marketing": {"enabled": false},  # on / off, per category
                    "social": {"edges": ["ws", "fcm"]}},  # pushed on these channels only
     "quiet_hours": {"start": "22:00", "end": "07:00",
                     "days": ["mon", "tue", ...]},    # optional: every day
     "caps": {"marketing": {"per_hour": 1, "per_day": 3}}}

Rules:

- ``timezone`` must be a name ``zoneinfo`` knows (``available_timezones()``);
  missing, the operator's ``preferences.default_timezone`` applies.
- ``categories`` keys are the operator's categories (``preferences.categories``);
  ``enabled`` is a boolean, ``edges`` a list drawn from :data:`EDGES`: the
  live edges ``ws`` and ``mqtt`` and the platform channels ``webpush``,
  ``fcm`` and ``apns`` (issue 16); a channel left out of the list gets no
  push of the category (the inbox still gets it); no list: every one. The
  operator's ``always_on`` categories cannot be muted: ``enabled: false`` or
  ``edges: []`` on them is refused.
- ``quiet_hours``: ``HH:MM`` 24-hour local times, ``start != end``; an end at
  or before the start runs across midnight into the next day. ``days`` are
  the days a quiet period *starts* on (``"fri"`` with 22:00-07:00 covers
  Friday night to Saturday morning). Which policy applies (``hold`` or
  ``silent``) is the operator's choice per category (policy.py).
- ``caps``: ``per_hour`` / ``per_day`` integers >= 0 on live pushes per
  rolling hour / day. Where the operator caps a category (``preferences.caps``)
  a user may only lower it; ``always_on`` categories cannot be capped.

``PUT`` replaces the whole document (:func:`parse`); ``PATCH`` is a JSON Merge
Patch (RFC 7396) over the current document (:func:`merge`): an object merges
key by key, ``null`` removes a key, anything else replaces it. Errors are
:class:`~tidings.errors.BadRequest` whose message starts with the field's path
(``quiet_hours.start: ...``), for a 400 naming the field.
"""

from __future__ import annotations

import functools
import re
import reprlib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time
from typing import Any

from .config import PreferencesSettings, operator_caps
from .errors import BadRequest

__all__ = [
    "DAYS",
    "EDGES",
    "LIVE_EDGES",
    "PLATFORMS",
    "Cap",
    "CategoryPreference",
    "Preferences",
    "QuietHours",
    "Rules",
    "check_category",
    "halve_cap",
    "merge",
    "merge_patch",
    "parse",
    "parse_hhmm",
    "preferences_topic",
    "zone_named",
]

LIVE_EDGES = ("ws", "mqtt")  # a connected device's
PLATFORMS = ("webpush", "fcm", "apns")  # the OS push channels (tidings.push)
EDGES = (*LIVE_EDGES, *PLATFORMS)  # what a category's "edges" may name
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
FIELDS = frozenset({"timezone", "locale", "categories", "quiet_hours", "caps"})
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
# RFC 5646 section 4.4.1: 35 characters hold any tag worth keeping.
_LOCALE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8}){0,7}")
_MAX_LOCALE = 35
_MAX_ZONE = 64  # the longest IANA name is ~32 characters
_MAX_KEY = 64  # characters of a peer's key quoted in an error message


def preferences_topic(user: str) -> str:
    """Where a user's document is retained and each change announced (MQTT and WS)."""
    return f"users/{user}/preferences"


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def zone_named(name: str, where: str = "timezone") -> zoneinfo.ZoneInfo:
    """The zone called ``name``; a name zoneinfo does not list is refused before
    any file is opened (no path probing with untrusted text)."""
    if not isinstance(name, str) or len(name) > _MAX_ZONE or name not in _zone_names():
        raise BadRequest(f"{where}: {_show(name)} is not an IANA time zone name "
                         f"(e.g. \"Europe/Paris\")")
    return zoneinfo.ZoneInfo(name)


def parse_hhmm(value: Any, where: str) -> time:
    """``"22:00"`` -> ``time(22, 0)``; anything but a 24-hour ``HH:MM`` is refused."""
    m = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise BadRequest(f"{where}: expected a time \"HH:MM\" (00:00-23:59), got {_show(value)}")
    return time(int(m[1]), int(m[2]))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 2, 40, 40, 4, 4


def _show(value: Any) -> str:
    """A short, safe rendering of a peer's value for an error message (reprlib
    bounds its depth and length, so a deeply nested value cannot blow the stack)."""
    return _REPR.repr(value)


@dataclass(frozen=True)
class Rules:
    """The operator's rules (``[preferences]`` in the config), in the form the
    modules use. ``caps`` maps a category to ``{"per_hour": N, "per_day": M}``."""

    categories: tuple[str, ...]
    always_on: frozenset[str]
    silent_in_quiet_hours: frozenset[str]
    urgent_bypass: frozenset[str]
    caps: Mapping[str, Mapping[str, int]]
    default_zone: zoneinfo.ZoneInfo

    @classmethod
    def from_settings(cls, p: PreferencesSettings) -> Rules:
        return cls(tuple(p.categories), frozenset(p.always_on),
                   frozenset(p.quiet_hours_silent), frozenset(p.urgent_bypass),
                   operator_caps(p.caps), zoneinfo.ZoneInfo(p.default_timezone))

    @classmethod
    def default(cls) -> Rules:
        return cls.from_settings(PreferencesSettings())


@dataclass(frozen=True)
class CategoryPreference:
    """``{"enabled": bool, "edges": [...]}``; ``edges`` None: every edge."""

    enabled: bool = True
    edges: frozenset[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if not self.enabled:
            d["enabled"] = False
        if self.edges is not None:
            d["edges"] = [e for e in EDGES if e in self.edges]
        return d


@dataclass(frozen=True)
class QuietHours:
    """Local times; ``days`` (``date.weekday()`` numbers) None: every day."""

    start: time
    end: time
    days: frozenset[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"start": self.start.strftime("%H:%M"),
                             "end": self.end.strftime("%H:%M")}
        if self.days is not None:
            d["days"] = [DAYS[i] for i in sorted(self.days)]
        return d


@dataclass(frozen=True)
class Cap:
    """At most ``per_hour`` / ``per_day`` live pushes; None: no cap of that kind."""

    per_hour: int | None = None
    per_day: int | None = None

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in (("per_hour", self.per_hour), ("per_day", self.per_day))
                if v is not None}


@dataclass(frozen=True)
class Preferences:
    """One user's validated preferences. ``Preferences()`` is a user who set nothing."""

    timezone: str | None = None
    locale: str | None = None
    categories: Mapping[str, CategoryPreference] = field(default_factory=dict)
    quiet_hours: QuietHours | None = None
    caps: Mapping[str, Cap] = field(default_factory=dict)

    def zone(self, rules: Rules) -> zoneinfo.ZoneInfo:
        """The user's zone, or the operator's default for a user without one."""
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else rules.default_zone

    def category(self, name: str) -> CategoryPreference:
        return self.categories.get(name, _ALL_ON)

    def cap(self, category: str, rules: Rules) -> Cap:
        """The cap in force: the lower of the user's and the operator's."""
        op = rules.caps.get(category, {})
        mine = self.caps.get(category, _NO_CAP)
        return Cap(_lower(mine.per_hour, op.get("per_hour")),
                   _lower(mine.per_day, op.get("per_day")))

    def to_dict(self) -> dict[str, Any]:
        """The wire shape, holding only what the user set (so PATCH round-trips)."""
        d: dict[str, Any] = {}
        if self.timezone is not None:
            d["timezone"] = self.timezone
        if self.locale is not None:
            d["locale"] = self.locale
        if self.categories:
            d["categories"] = {k: v.to_dict() for k, v in self.categories.items()}
        if self.quiet_hours is not None:
            d["quiet_hours"] = self.quiet_hours.to_dict()
        if self.caps:
            d["caps"] = {k: v.to_dict() for k, v in self.caps.items()}
        return d


_ALL_ON = CategoryPreference()
_NO_CAP = Cap()


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object, got {_show(value)}")
    return value


def _only(d: Mapping[str, Any], allowed: frozenset[str] | tuple[str, ...], where: str) -> None:
    for k in d:
        if k not in allowed:
            prefix = f"{where}." if where else ""
            raise BadRequest(f"{prefix}{k[:_MAX_KEY]}: unknown field (expected one of "
                             f"{', '.join(sorted(allowed))})")


def _category_key(name: Any, rules: Rules, where: str) -> str:
    if name not in rules.categories:
        raise BadRequest(f"{where}.{str(name)[:_MAX_KEY]}: unknown category (expected one of "
                         f"{', '.join(rules.categories)})")
    return str(name)


def check_category(category: Any, rules: Rules, where: str = "category") -> str:
    """A notification's ``category``: one of the operator's (missing: ``general``)."""
    if category is None:
        return "general"
    if category not in rules.categories:
        raise BadRequest(f"{where}: {_show(category)} is not a category (expected one of "
                         f"{', '.join(rules.categories)})")
    return str(category)


def _parse_category(value: Any, name: str, rules: Rules) -> CategoryPreference:
    where = f"categories.{name}"
    d = _object(value, where)
    _only(d, ("enabled", "edges"), where)
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        raise BadRequest(f"{where}.enabled: expected true or false, got {_show(enabled)}")
    edges: frozenset[str] | None = None
    if d.get("edges") is not None:
        raw = d["edges"]
        if not isinstance(raw, list) or any(e not in EDGES for e in raw):
            raise BadRequest(f"{where}.edges: expected a list of {', '.join(EDGES)}, "
                             f"got {_show(raw)}")
        edges = frozenset(raw)
    if name in rules.always_on and (not enabled or edges == frozenset()):
        raise BadRequest(f"{where}: {name} notifications cannot be muted")
    return CategoryPreference(enabled, edges)


def _parse_quiet_hours(value: Any) -> QuietHours:
    d = _object(value, "quiet_hours")
    _only(d, ("start", "end", "days"), "quiet_hours")
    for k in ("start", "end"):
        if k not in d:
            raise BadRequest(f"quiet_hours.{k}: required")
    start = parse_hhmm(d["start"], "quiet_hours.start")
    end = parse_hhmm(d["end"], "quiet_hours.end")
    if start == end:
        raise BadRequest("quiet_hours.end: must differ from quiet_hours.start")
    days: frozenset[int] | None = None
    if d.get("days") is not None:
        raw = d["days"]
        if (not isinstance(raw, list) or not raw
                or any(not isinstance(x, str) or x.lower() not in DAYS for x in raw)):
            raise BadRequest(f"quiet_hours.days: expected a non-empty list of "
                             f"{', '.join(DAYS)}, got {_show(raw)}")
        days = frozenset(DAYS.index(x.lower()) for x in raw)
    return QuietHours(start, end, days)


def _parse_cap(value: Any, name: str, rules: Rules) -> Cap:
    where = f"caps.{name}"
    d = _object(value, where)
    _only(d, ("per_hour", "per_day"), where)
    if name in rules.always_on:
        raise BadRequest(f"{where}: {name} notifications cannot be capped")
    limits: dict[str, int | None] = {}
    for kind in ("per_hour", "per_day"):
        n = d.get(kind)
        if n is not None:
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise BadRequest(f"{where}.{kind}: expected an integer >= 0, got {_show(n)}")
            ceiling = rules.caps.get(name, {}).get(kind)
            if ceiling is not None and n > ceiling:
                raise BadRequest(f"{where}.{kind}: {n} is above the operator's cap of "
                                 f"{ceiling}; a user may only lower it")
        limits[kind] = n
    return Cap(limits["per_hour"], limits["per_day"])


def parse(doc: Any, rules: Rules) -> Preferences:
    """Validate a whole preferences document (``PUT``): the result replaces the old one."""
    d = _object(doc, "preferences")
    _only(d, FIELDS, "")
    timezone = d.get("timezone")
    if timezone is not None:
        zone_named(timezone)
    locale = d.get("locale")
    if locale is not None and (not isinstance(locale, str) or len(locale) > _MAX_LOCALE
                               or not _LOCALE.fullmatch(locale)):
        raise BadRequest(f"locale: expected a language tag like \"en\" or \"zh-CN\", "
                         f"got {_show(locale)}")
    categories: dict[str, CategoryPreference] = {}
    if d.get("categories") is not None:
        for k, v in _object(d["categories"], "categories").items():
            name = _category_key(k, rules, "categories")
            categories[name] = _parse_category(v, name, rules)
    quiet = None if d.get("quiet_hours") is None else _parse_quiet_hours(d["quiet_hours"])
    caps: dict[str, Cap] = {}
    if d.get("caps") is not None:
        for k, v in _object(d["caps"], "caps").items():
            name = _category_key(k, rules, "caps")
            caps[name] = _parse_cap(v, name, rules)
    return Preferences(timezone, locale, categories, quiet, caps)


def _half(n: int | None) -> int | None:
    return None if n is None else n if n <= 1 else n // 2


def halve_cap(current: Preferences, category: str, rules: Rules, uncapped_per_day: int
              ) -> Preferences | None:
    """``current`` with the user's cap on ``category`` set to half the cap in
    force (:meth:`Preferences.cap`: the user's, else the operator's), each kind
    that has one, at least 1 (a cap of 0 stays 0); a category with no cap gets
    ``per_day`` half of ``uncapped_per_day``. What a ``too_many`` feedback does
    (issue 13). None where no cap may be set: an ``always_on`` or unknown
    category. The result stays within the operator's caps, so :func:`parse`
    takes it back, and the user may raise it again up to those."""
    if category in rules.always_on or category not in rules.categories:
        return None
    now = current.cap(category, rules)
    if now.per_hour is None and now.per_day is None:
        lowered = Cap(None, max(1, uncapped_per_day // 2))
    else:
        lowered = Cap(_half(now.per_hour), _half(now.per_day))
    return replace(current, caps={**current.caps, category: lowered})


_MERGE_DEPTH = 4  # deeper than any valid document: what is below is replaced whole


def merge_patch(target: Any, patch: Any, _depth: int = 0) -> Any:
    """RFC 7396 section 2 (MergePatch): objects merge key by key, ``null``
    removes, any other value replaces. Neither argument is modified. Below
    ``_MERGE_DEPTH`` the patch replaces whole (validation refuses it), so a
    deeply nested patch costs no recursion."""
    if not isinstance(patch, dict) or _depth >= _MERGE_DEPTH:
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v, _depth + 1)
    return result


def merge(current: Preferences, patch: Any, rules: Rules) -> Preferences:
    """``PATCH``: apply ``patch`` (RFC 7396) to ``current`` and validate the result."""
    _object(patch, "preferences")
    return parse(merge_patch(current.to_dict(), patch), rules)
