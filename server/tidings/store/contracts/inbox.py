"""The inbox contract: each user's notifications, their marks and the unread count.

The rules every backend keeps (``tests/store/test_inbox_contract.py``):

* Each user's notifications are listed newest first, with read / archived
  flags and an optional expiry. The unread count is always the number of the
  user's unread, non-archived, unexpired items. It is kept as a counter per
  user (never by counting rows), so a notify costs the same with 0 or 50,000
  unread items.
* ``notify`` and ``mark`` change items, count, the user's stream
  (``users/{uid}/notifications`` or ``users/{uid}/events`` history) and the
  retained ``users/{uid}/unread`` in one atomic step per user, and return the
  publications to fan out (in the order they were stored).
* Inbox cap: a user keeps at most ``max_inbox`` items (a constructor argument
  of each backend; archived ones included). A notify that goes over prunes the
  oldest read or archived items first, then the oldest unread ones; a pruned
  unread item no longer counts, so the count drops with it. The push names the
  pruned unarchived ids in ``pruned``. One notify prunes at most
  :data:`PRUNE_STEP` items, so an inbox from before a lower cap shrinks over a
  few notifies and no push grows large.
* Expired items are invisible to every read and can no longer be marked or
  counted; :meth:`tidings.store.base.Store.sweep` deletes them and tells the
  user.
* Ids of another user, unknown, pruned, expired or archived ids change
  nothing (archive is final).
* Every call raises :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound; none reports success for what was not stored.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...types import Publication
from .topics import PolicyFor

__all__ = [
    "FEEDBACK_REASONS",
    "MAX_EVENT_IDS",
    "NOTIFICATION_ID_MAX",
    "PRUNE_STEP",
    "RECENT_KEPT",
    "STAT_EVENTS",
    "TRACK_EVENTS",
    "InboxItem",
    "InboxPage",
    "InboxStore",
    "MarkAction",
    "NotifyResult",
    "UserChange",
    "events_topic",
    "is_notification_id",
    "notifications_topic",
    "routed_away",
    "unread_topic",
]

MarkAction = Literal["read", "unread", "archive"]
PRUNE_STEP = 100  # items one notify prunes at most (see "Inbox cap")
TRACK_EVENTS = ("delivered", "opened", "clicked", "dismissed")
"""What a device reports with ``track`` (counted once per user and notification)."""
RECENT_KEPT = 1000
"""Notifications ``recent_notifications`` can list (Redis keeps this many ids)."""
NOTIFICATION_ID_MAX = 128
"""The longest notification id ``track`` and ``feedback`` take (the server makes
ids of 18 characters, ``n_`` and 16 hex digits; the bound leaves room)."""
FEEDBACK_REASONS = ("not_interested", "too_many", "wrong_time", "other")
"""Why a user gives ``feedback`` on a notification (issue 13)."""
STAT_EVENTS = (*TRACK_EVENTS, "feedback")
"""Everything counted once per user and notification in the stats: the tracked
events and ``feedback`` (recorded as one more event, its reason beside it)."""

MAX_EVENT_IDS = 1000
"""Most ids a read-family event lists: an ``all: true`` change of more lists
none (the event still says ``all``), so the push stays bounded whatever the
inbox holds (Redis's script has the same number)."""


def is_notification_id(value: object) -> bool:
    """Whether a client's ``value`` can name a notification: a non-empty string of
    at most :data:`NOTIFICATION_ID_MAX` characters (what ``track``, its list
    form and ``feedback`` accept; anything else is a 400 / ``bad_request``)."""
    return isinstance(value, str) and 0 < len(value) <= NOTIFICATION_ID_MAX


def notifications_topic(user: str) -> str:
    return f"users/{user}/notifications"


def routed_away(publication: Publication, edge: str) -> bool:
    """Whether a push on a ``users/{uid}/notifications`` stream is not for ``edge``:
    its payload names the edges that may deliver it (``"edges": [...]``, written
    by :meth:`~tidings.store.contracts.notifications.NotificationStore.deliver`
    when the user's preferences route the category to some edges only) and
    ``edge`` is not one of them. Live delivery and recovery both ask this, so a
    push never leaks to the other edge. Cheap for every other publication."""
    topic = publication.topic
    if not topic.endswith("/notifications") or b'"edges"' not in publication.payload:
        return False
    data = publication.data()
    edges = data.get("edges") if isinstance(data, dict) else None
    return isinstance(edges, list) and edge not in edges


def events_topic(user: str) -> str:
    return f"users/{user}/events"


def unread_topic(user: str) -> str:
    return f"users/{user}/unread"


@dataclass(frozen=True, slots=True)
class UserChange:
    """What one atomic inbox change did for one user."""

    user: str
    unread: int  # the count after the change
    changed: list[str] = field(default_factory=list)  # notification ids affected
    publications: list[Publication] = field(default_factory=list)  # to fan out, in order


@dataclass(frozen=True, slots=True)
class NotifyResult:
    id: str
    targets: int
    changes: list[UserChange]
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class InboxItem:
    fields: dict[str, Any]  # id, title, body, data, category, priority, media, ts
    read: bool
    archived: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.fields, "read": self.read, "archived": self.archived}


@dataclass(frozen=True, slots=True)
class InboxPage:
    items: list[InboxItem]  # newest first
    unread: int
    next: str | None  # cursor for the next (older) page, None at the end


class InboxStore(abc.ABC):
    """Users' inboxes, the unread counters and notification tracking."""

    @abc.abstractmethod
    async def notify(
        self,
        users: Sequence[str],
        notification: dict[str, Any],
        *,
        ttl: float | None,
        collapse_key: str | None,
        policy: PolicyFor,
        idempotency_key: str | None = None,
    ) -> NotifyResult:
        """Write ``notification`` (with ``id`` and ``category``) to every user's inbox.

        Per user, atomically: a newer item with the same ``collapse_key``
        replaces that user's older unread one (a read one is kept; the push
        names the replaced ids in ``replaces``); the item is inserted and the
        cap applied (see "Inbox cap"); the notification (its fields plus
        ``unread``) is appended to ``users/{uid}/notifications``; the retained
        ``users/{uid}/unread`` becomes ``{"count": N}``. ``changes`` has one
        entry per user, in the order of ``users``. Across users it is not one
        step. A repeated ``idempotency_key`` (within the idempotency TTL)
        returns the first result's id and targets with ``duplicate=True`` and
        no changes, and changes nothing.
        """

    @abc.abstractmethod
    async def inbox(self, user: str, *, limit: int, before: str | None = None,
                    unread_only: bool = False) -> InboxPage:
        """The user's unarchived, unexpired items, newest first, at most ``limit``.

        ``next`` is the cursor to pass as ``before`` for the next (older) page,
        None on the last one. ``unread`` is the user's count. Never writes.
        """

    @abc.abstractmethod
    async def unread(self, user: str) -> int:
        """The number of unread, non-archived, unexpired items (0 for a stranger)."""

    @abc.abstractmethod
    async def read_states(self, user: str, ids: Sequence[str]) -> dict[str, bool]:
        """Whether each of ``ids`` (the user's, still in the inbox) is read.

        Ids that are not the user's, archived, expired or unknown are left out.
        """

    @abc.abstractmethod
    async def mark(self, user: str, action: MarkAction, ids: Sequence[str] | None, *,
                   device: str, policy: PolicyFor) -> UserChange:
        """Mark ``ids`` (None: all) read / unread / archived, in one atomic step.

        Only items whose state changes count (a repeated id, or a second mark,
        changes nothing). When anything changed, appends ``{"type": action,
        "ids" | "all", "unread", "device"}`` to ``users/{uid}/events`` and
        updates the retained unread count; the publications are returned to fan
        out (an ``all`` change of more than :data:`MAX_EVENT_IDS` items lists no
        ``ids``, so the push stays bounded). When nothing changed, nothing is
        published.
        """

    @abc.abstractmethod
    async def track(self, notification_id: str, user: str, event: str) -> bool:
        """Record ``event`` (one of :data:`TRACK_EVENTS`) once per target user.

        False if already recorded, or if the user was not a target, or the
        notification is unknown.
        """

    @abc.abstractmethod
    async def feedback(self, notification_id: str, user: str, reason: str,
                       comment: str | None) -> bool:
        """Record the user's feedback (``reason`` one of :data:`FEEDBACK_REASONS`,
        an optional ``comment``) on a notification in their inbox.

        It is the event ``feedback`` where :meth:`track` records its events, so
        it is counted once per user and notification like them: the first
        feedback wins, a later one changes nothing and returns False (as does
        feedback on a notification the user was not a target of, or an unknown
        one). The reason and comment are kept beside it, counted per reason in
        :meth:`stats`. A recorded ``not_interested`` also forgets the user's
        engagement (:meth:`~.audience.AudienceStore.engagements`) in the
        notification's category, in the same step where the backend can, so a
        segment's ``engaged`` condition on that category stops selecting them
        until they engage again.
        """

    @abc.abstractmethod
    async def stats(self, notification_id: str) -> dict[str, Any] | None:
        """``{id, category, targets, <each of STAT_EVENTS>, feedback_reasons}``
        or None; ``feedback_reasons`` maps every reason of
        :data:`FEEDBACK_REASONS` to its count."""

    @abc.abstractmethod
    async def category_stats(self) -> dict[str, dict[str, int]]:
        """Totals by category: notifications, targets and each of :data:`STAT_EVENTS`."""

    @abc.abstractmethod
    async def recent_notifications(self, limit: int) -> list[str]:
        """Ids of the newest notifications (sent at once or as jobs), newest first,
        at most ``limit`` (up to :data:`RECENT_KEPT`): the dashboard's list."""
