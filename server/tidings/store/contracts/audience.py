"""The audience contract: tags, attributes, segments and the facts segments select on.

Issue 12, Scope 1. What the store keeps per user, and how an audience is
resolved to user ids (``tests/store/test_audience_contract.py``):

* **Tags**: a set of strings per user. ``set_user_tags`` replaces it,
  ``change_user_tags`` adds then removes, both in one atomic step per user,
  and refuse (``BadRequest`` naming ``tags``, nothing changed) a result of
  more than ``max_tags`` tags. Reads return the tags sorted.
* **Attributes**: a flat object per user whose values are strings, numbers
  (finite) or booleans (:func:`check_attribute_values`); ``set_user_attributes``
  replaces it atomically.
* **Segments**: a saved audience definition (the JSON object as given,
  validated by :mod:`tidings.audience` before it gets here) by name.
* **Last seen**: ``seen(user)`` records "online now" (the store's clock);
  ``seen_many`` the same for a batch. The presence layer calls it when a
  device connects and disconnects.
* **Engagement**: ``engage`` records an ``opened`` or ``clicked`` of a
  notification of a category by a user, once per (notification, event), at
  the store's time; ``track`` of those events records one too. Engagement
  older than :data:`ENGAGEMENT_KEEP` may be dropped, so ``within`` is bounded
  by it.
* **Preferences**: the user's preferences document, as normalised by
  :mod:`tidings.preferences` (``Preferences.to_dict()``); the store keeps it
  as given and does not validate it. ``set_user_preferences`` replaces it
  atomically (``{}`` removes it); ``preferences_many`` reads many users' in
  one round trip per chunk (the send pipeline's batch read). A user with
  preferences alone is not "known" to selection.
* **Selection**: :meth:`AudienceStore.audience_page` resolves an
  :class:`AudienceQuery` to user ids in ascending id order, in pages: at most
  ``limit`` users, scanning a bounded number of candidates per call, so a
  page may hold fewer users (even none) while ``next`` is not None; ``next``
  is None only at the end. Pass ``next`` back as ``cursor``. A user is
  selected when every part of the query holds (:func:`matches`). Users the
  store knows nothing about (no tags, attributes, seen time or engagement)
  are never selected. Pages are not a snapshot: a user changed between two
  pages may be seen by either.

Atomicity: each write is one atomic step for its user (SQLite: one
transaction; Redis: one script in the user's slot ``{u:<uid>}``). On Redis
the tag index (one sorted set per tag, in its own slot) and the list of
known users are updated around that step, never inside it: entries are added
before the user's step and removed after it, so an index is always a
superset of the truth and every candidate is checked against the user's own
keys. The index never makes a user selected who should not be.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import BadRequest

__all__ = [
    "ATTRIBUTE_OPS",
    "ENGAGEMENT_EVENTS",
    "ENGAGEMENT_KEEP",
    "SCAN_FACTOR",
    "AttributeTest",
    "AudiencePage",
    "AudienceQuery",
    "AudienceStore",
    "Engaged",
    "Profile",
    "check_attribute_values",
    "check_tag_values",
    "matches",
]

ENGAGEMENT_EVENTS = ("opened", "clicked")
ENGAGEMENT_KEEP = 90 * 86400.0
"""Seconds of engagement history kept per user and category; the longest ``within``."""

SCAN_FACTOR = 10
"""One ``audience_page`` call looks at no more than ``SCAN_FACTOR * limit`` candidates."""

AttributeOp = Literal["eq", "in", "gte", "gt", "lte", "lt"]
ATTRIBUTE_OPS: tuple[str, ...] = ("eq", "in", "gte", "gt", "lte", "lt")

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class AttributeTest:
    """One comparison of an attribute: ``eq`` and ``in`` compare by value and
    type (``true`` is not ``1``); the numeric ones hold only for numbers."""

    name: str
    op: AttributeOp
    value: Any  # a scalar; a tuple of scalars for "in"


@dataclass(frozen=True, slots=True)
class Engaged:
    """At least ``min`` opened/clicked events of ``category`` within ``within`` seconds."""

    category: str
    within: float
    min: int


@dataclass(frozen=True, slots=True)
class AudienceQuery:
    """A parsed audience (see :func:`tidings.audience.parse_audience`); every part optional."""

    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    tags_none: tuple[str, ...] = ()
    attributes: tuple[AttributeTest, ...] = ()
    active_within: float | None = None  # seconds
    engaged: Engaged | None = None

    def source_tags(self) -> tuple[str, ...] | None:
        """The tags whose users are the candidates (None: every known user)."""
        if self.tags_all:
            return self.tags_all[:1]
        if self.tags_any:
            return self.tags_any
        return None


@dataclass(frozen=True, slots=True)
class Profile:
    """What the store knows of one user, as a query needs it."""

    user: str
    tags: frozenset[str] = frozenset()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    seen_ago: float | None = None  # seconds since last seen online; None: never
    engaged: int = 0  # engagement events of the query's category within its window


@dataclass(frozen=True, slots=True)
class AudiencePage:
    users: list[str]  # ascending
    next: str | None  # cursor for the next page; None at the end


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return bool(a == b)
    return type(a) is type(b) and a == b


def _test(t: AttributeTest, attrs: Mapping[str, Any]) -> bool:
    if t.name not in attrs:
        return False
    v = attrs[t.name]
    if t.op == "eq":
        return _same(v, t.value)
    if t.op == "in":
        return any(_same(v, x) for x in t.value)
    if not _number(v):
        return False
    if t.op == "gte":
        return bool(v >= t.value)
    if t.op == "gt":
        return bool(v > t.value)
    if t.op == "lte":
        return bool(v <= t.value)
    return bool(v < t.value)


def matches(query: AudienceQuery, p: Profile) -> bool:
    """Whether every part of ``query`` holds for ``p``."""
    if any(t not in p.tags for t in query.tags_all):
        return False
    if query.tags_any and not any(t in p.tags for t in query.tags_any):
        return False
    if any(t in p.tags for t in query.tags_none):
        return False
    if not all(_test(t, p.attributes) for t in query.attributes):
        return False
    if query.active_within is not None and (
            p.seen_ago is None or p.seen_ago > query.active_within):
        return False
    return query.engaged is None or p.engaged >= query.engaged.min


def check_tag_values(tags: Any, name: str = "tags") -> list[str]:
    """``tags`` as a list of distinct non-empty strings (order kept); else
    ``BadRequest`` naming ``name``."""
    if not isinstance(tags, (list, tuple)):
        raise BadRequest(f"{name}: must be a list of strings")
    out: dict[str, None] = {}
    for t in tags:
        if not isinstance(t, str) or not t:
            raise BadRequest(f"{name}: every tag must be a non-empty string")
        out[t] = None
    return list(out)


def check_attribute_values(attrs: Any, name: str = "attributes") -> dict[str, Scalar]:
    """``attrs`` if it is a flat object of strings, finite numbers and booleans
    with non-empty string keys; else ``BadRequest`` naming the field."""
    if not isinstance(attrs, dict):
        raise BadRequest(f"{name}: must be an object")
    for k, v in attrs.items():
        if not isinstance(k, str) or not k:
            raise BadRequest(f"{name}: names must be non-empty strings")
        if isinstance(v, float) and not math.isfinite(v):
            raise BadRequest(f"{name}.{k}: must be a finite number")
        if not isinstance(v, (str, int, float, bool)):
            raise BadRequest(f"{name}.{k}: must be a string, number or boolean")
    return dict(attrs)


class AudienceStore(abc.ABC):
    """Tags, attributes, segments, last-seen times and engagement, and selection."""

    # -- tags and attributes ----------------------------------------------------------------

    @abc.abstractmethod
    async def user_tags(self, user: str) -> list[str]:
        """The user's tags, sorted (empty for a stranger)."""

    async def set_user_tags(self, user: str, tags: Sequence[str], *, max_tags: int
                            ) -> list[str]:
        """Replace the user's tags; returns them sorted. More than ``max_tags``:
        ``BadRequest`` naming ``tags``, nothing changed."""
        return await self._write_tags(user, check_tag_values(tags), [], max_tags, True)

    async def change_user_tags(self, user: str, add: Sequence[str], remove: Sequence[str],
                               *, max_tags: int) -> list[str]:
        """Add ``add`` then remove ``remove`` (a tag in both ends up removed), in
        one step; returns the tags after it, sorted. A result of more than
        ``max_tags``: ``BadRequest`` naming ``tags``, nothing changed."""
        return await self._write_tags(user, check_tag_values(add, "add"),
                                      check_tag_values(remove, "remove"), max_tags, False)

    @abc.abstractmethod
    async def _write_tags(self, user: str, add: list[str], remove: list[str], max_tags: int,
                          replace: bool) -> list[str]:
        """The backend's one step behind both: ``replace`` the tags with ``add``, or
        add ``add`` then remove ``remove`` (values already checked)."""

    @abc.abstractmethod
    async def user_attributes(self, user: str) -> dict[str, Any]:
        """The user's attributes (empty for a stranger)."""

    @abc.abstractmethod
    async def set_user_attributes(self, user: str, attributes: Mapping[str, Any]
                                  ) -> dict[str, Any]:
        """Replace the user's attributes (checked by :func:`check_attribute_values`)."""

    # -- segments ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def segment_put(self, name: str, definition: Mapping[str, Any]) -> bool:
        """Store a segment's definition; True if it is new, False if it replaced one."""

    @abc.abstractmethod
    async def segment_get(self, name: str) -> dict[str, Any] | None:
        """The stored definition, or None."""

    @abc.abstractmethod
    async def segment_delete(self, name: str) -> bool:
        """Delete a segment; False if there was none."""

    # -- preferences ------------------------------------------------------------------------

    @abc.abstractmethod
    async def user_preferences(self, user: str) -> dict[str, Any]:
        """The user's stored preferences document (``{}`` for none)."""

    @abc.abstractmethod
    async def set_user_preferences(self, user: str, doc: Mapping[str, Any]
                                   ) -> dict[str, Any]:
        """Replace the user's document (``{}``: remove it); returns it. The caller
        validated it (``tidings.preferences``)."""

    @abc.abstractmethod
    async def preferences_many(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Every user of ``users`` -> their document (``{}`` for none), in one
        round trip (per node on a cluster); pass a bounded chunk."""

    # -- what segments select on ------------------------------------------------------------

    @abc.abstractmethod
    async def seen(self, user: str) -> None:
        """Record that the user is (or just was) online, at the store's time."""

    async def seen_many(self, users: Sequence[str]) -> None:
        """:meth:`seen` for each of ``users`` (a bounded batch), in one round trip
        where the backend can (SQLite: one transaction; Redis: one pipeline)."""
        for user in users:
            await self.seen(user)

    @abc.abstractmethod
    async def last_seen(self, user: str) -> float | None:
        """When the user was last recorded online (seconds), or None."""

    @abc.abstractmethod
    async def engage(self, user: str, category: str, event: str, notification_id: str
                     ) -> bool:
        """Record ``event`` (one of :data:`ENGAGEMENT_EVENTS`) of a notification of
        ``category`` by ``user`` at the store's time; False if that notification's
        event was already recorded for the user."""

    @abc.abstractmethod
    async def engagements(self, user: str, category: str, within: float) -> int:
        """How many engagement events of ``category`` the user has within the last
        ``within`` seconds."""

    # -- selection --------------------------------------------------------------------------

    @abc.abstractmethod
    async def _audience_candidates(self, tags: tuple[str, ...] | None, after: str | None,
                                   limit: int) -> list[str]:
        """Up to ``limit`` distinct user ids above ``after``, ascending: the users
        with any of ``tags`` (a superset is fine), or every known user (None)."""

    @abc.abstractmethod
    async def _audience_profiles(self, users: list[str], query: AudienceQuery
                                 ) -> list[Profile]:
        """One :class:`Profile` per user, in order, with what ``query`` needs."""

    async def audience_page(self, query: AudienceQuery, *, cursor: str | None = None,
                            limit: int = 1000) -> AudiencePage:
        """One page of the users ``query`` selects, ascending (see the module doc)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        users: list[str] = []
        after = cursor or None
        source = query.source_tags()
        budget = SCAN_FACTOR * limit
        while budget > 0:
            batch = min(limit, budget)
            candidates = await self._audience_candidates(source, after, batch)
            budget -= len(candidates)
            for p in await self._audience_profiles(candidates, query):
                after = p.user
                if matches(query, p):
                    users.append(p.user)
                    if len(users) == limit:
                        return AudiencePage(users, after)
            if len(candidates) < batch:
                return AudiencePage(users, None)
        return AudiencePage(users, after)

    async def audience_count(self, query: AudienceQuery, *, page: int = 1000) -> int:
        """How many users ``query`` selects (pages through them; memory stays bounded)."""
        count, cursor = 0, None
        while True:
            result = await self.audience_page(query, cursor=cursor, limit=page)
            count += len(result.users)
            if result.next is None:
                return count
            cursor = result.next
