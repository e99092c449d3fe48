"""The store contract: what must outlive a connection.

Every implementation (``sqlite`` embedded, ``redis`` for clusters) passes the
same contract tests (``tests/test_store_contract.py``). The rules:

* Every method is a coroutine and every multi-step change is one call, made
  atomic by the implementation (one SQLite transaction, one Redis script).
* Offsets are per topic, strictly increasing, opaque strings
  (:func:`tidings.types.format_offset`). A topic's epoch changes only if its
  history is lost, so a stale offset is detected, never misread.
* History is bounded by a :class:`HistoryPolicy` per publish: at most
  ``size`` messages, none older than ``ttl`` seconds. Reads never return an
  expired message.
* Retained: at most one message per topic, with the QoS it was published at
  (a subscriber gets at most that [MQTT-3.8.4-8]); publishing an empty
  payload with ``retain=True`` clears it (as in MQTT).
* Idempotency: a publish carrying an ``idempotency_key`` already seen within
  the idempotency TTL stores nothing and returns the first publication with
  ``duplicate=True``.
* Inbox: each user's notifications (newest first), with read / archived
  flags and an optional expiry. The unread count is always the number of
  the user's unread, non-archived, unexpired items. ``notify`` and ``mark``
  change items, count, the user's stream (``users/{uid}/notifications`` or
  ``users/{uid}/events`` history) and the retained ``users/{uid}/unread``
  in one atomic step per user, and return the publications to fan out.
  The count is kept as a counter per user (never by counting rows), so a
  notify costs the same with 0 or 50,000 unread items.
* Inbox cap: a user keeps at most ``max_inbox`` items (a constructor
  argument; archived ones included). A notify that goes over prunes the
  oldest read or archived items first, then the oldest unread ones; a pruned
  unread item no longer counts, so the count drops with it. The push names
  the pruned unarchived ids in ``pruned``. One notify prunes at most
  ``PRUNE_STEP`` items, so an inbox from before a lower cap shrinks over a
  few notifies and no push grows large.
* Expiry: :meth:`Store.sweep` deletes what is past its time (history,
  inbox items, idempotency keys), bounded per call, and for each user who
  lost unarchived items appends ``{"type": "expire", "ids", "unread"}`` to
  ``users/{uid}/events`` and updates the retained count, as ``mark`` does.
* Methods raise :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound; they never report success for what was not stored.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..health import StoreHealth
from ..types import Offset, PayloadKind, Publication

__all__ = [
    "MAX_EVENT_IDS",
    "PRUNE_STEP",
    "HistoryPage",
    "HistoryPolicy",
    "InboxItem",
    "InboxPage",
    "MarkAction",
    "MqttSessionState",
    "MqttSubscription",
    "NotifyResult",
    "PublishResult",
    "QueuedMessage",
    "Store",
    "SweepResult",
    "UserChange",
    "events_topic",
    "notifications_topic",
    "unread_topic",
]

MarkAction = Literal["read", "unread", "archive"]
PRUNE_STEP = 100  # items one notify prunes at most (see "Inbox cap")
TRACK_EVENTS = ("delivered", "opened", "clicked", "dismissed")


def notifications_topic(user: str) -> str:
    return f"users/{user}/notifications"


MAX_EVENT_IDS = 1000
"""Most ids a read-family event lists: an ``all: true`` change of more lists
none (the event still says ``all``), so the push stays bounded whatever the
inbox holds (Redis's script has the same number)."""


def events_topic(user: str) -> str:
    return f"users/{user}/events"


def unread_topic(user: str) -> str:
    return f"users/{user}/unread"


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    size: int  # messages kept; 0 keeps none
    ttl: float  # seconds


@dataclass(frozen=True, slots=True)
class PublishResult:
    publication: Publication
    duplicate: bool = False  # an idempotent retry: nothing was stored


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[Publication]  # oldest first
    offset: Offset | None  # the topic's latest offset (as latest() gives it)
    complete: bool  # False: history no longer reaches back to ``since``


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


PolicyFor = Callable[[str], HistoryPolicy]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one :meth:`Store.sweep` call deleted.

    Counts are what this call removed itself; a backend whose keys also expire
    on their own (Redis TTLs) does not count what the backend dropped.
    """

    history: int = 0  # expired history messages
    inbox: int = 0  # expired inbox items
    keys: int = 0  # expired idempotency keys
    changes: list[UserChange] = field(default_factory=list)  # users told (fan these out)
    more: bool = False  # the limit was reached: more may be due now


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message held for an MQTT session: queued while offline, or in flight.

    ``packet_id`` is set once the message was sent (it is then resent with
    DUP on reconnect [MQTT-4.4.0-1]); ``pubrel`` marks an outgoing QoS 2
    message whose PUBREC arrived (resend PUBREL, not PUBLISH).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    packet_id: int | None = None
    pubrel: bool = False
    expires: int | None = None  # ms since the epoch (v5 message expiry)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MqttSubscription:
    """One filter of an MQTT session and its options (5.0 section 3.8.3.1)."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    subscription_id: int | None = None


@dataclass(frozen=True, slots=True)
class MqttSessionState:
    """What a persistent MQTT session keeps between connections, besides its queue.

    ``subscribe`` / ``publish`` are the token's grants when the session was
    saved (None: no restriction, as in :class:`tidings.auth.Principal`);
    ``expiry`` the seconds it outlives its connection, from
    ``disconnected_at`` (seconds since the epoch; None while connected);
    ``awaiting_pubrel`` the inbound QoS 2 ids PUBRECed and not yet released
    [MQTT-4.3.3-10].

    Stored as JSON (:meth:`to_json`) in the format written before this class
    existed, so a session saved by an older server still loads
    (:meth:`from_json` takes a missing field as its default).
    """

    user: str | None = None
    subscribe: tuple[str, ...] | None = None
    publish: tuple[str, ...] | None = None
    expiry: int = 0
    disconnected_at: float | None = None
    subs: dict[str, MqttSubscription] = field(default_factory=dict)
    awaiting_pubrel: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The stored form: a JSON object (``subs`` as ``{filter: [qos, no_local,
        retain_as_published, subscription_id]}``)."""
        return {
            "user": self.user,
            "subscribe": None if self.subscribe is None else list(self.subscribe),
            "publish": None if self.publish is None else list(self.publish),
            "expiry": self.expiry,
            "disconnected_at": self.disconnected_at,
            "subs": {f: [s.qos, s.no_local, s.retain_as_published, s.subscription_id]
                     for f, s in self.subs.items()},
            "awaiting_pubrel": sorted(self.awaiting_pubrel),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> MqttSessionState:
        """Read the stored form; a field it lacks gets its default."""
        subscribe, publish = d.get("subscribe"), d.get("publish")
        return cls(
            user=d.get("user"),
            subscribe=None if subscribe is None else tuple(subscribe),
            publish=None if publish is None else tuple(publish),
            expiry=int(d.get("expiry") or 0),
            disconnected_at=d.get("disconnected_at"),
            subs={f: MqttSubscription(int(qos), bool(nl), bool(rap), sid)
                  for f, (qos, nl, rap, sid) in (d.get("subs") or {}).items()},
            awaiting_pubrel=tuple(d.get("awaiting_pubrel") or ()),
        )


class Store(abc.ABC):
    """Durable state of a Tidings deployment."""

    shared_presence: bool = False
    """True when presence entries live in the store (every node sees them);
    False: each node knows only its own devices (one node: everything)."""

    announces: bool = False
    """True when the store itself puts every publication it writes on the bus,
    inside the same atomic step (Redis: the script PUBLISHes); the node then
    does not publish again."""

    monitor: StoreHealth | None = None
    """Told of every commit: its time, or that the backend failed it (see health.py)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create the schema. Called once before any other method."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release. Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers now (for ``/readyz``)."""

    @abc.abstractmethod
    async def publish(
        self,
        topic: str,
        payload: bytes,
        kind: PayloadKind,
        *,
        retain: bool,
        policy: HistoryPolicy,
        idempotency_key: str | None = None,
        qos: int = 1,
        origin: str | None = None,
        meta: Any = None,
    ) -> PublishResult:
        """Assign the topic's next offset, append to history, update retained.

        All in one atomic step, together with recording ``idempotency_key``.
        ``qos``, ``origin`` and ``meta`` are not stored; a store that
        ``announces`` sends them with the publication it puts on the bus.
        """

    @abc.abstractmethod
    async def history(self, topic: str, since: str | None, limit: int) -> HistoryPage:
        """Messages of ``topic`` after ``since`` (oldest first, at most ``limit``).

        With ``since`` None: the newest ``limit`` messages. ``complete`` is False
        when messages after ``since`` are no longer all kept (trimmed, expired,
        or ``since`` is from another epoch or not an offset), or when more than
        ``limit`` follow it.
        """

    @abc.abstractmethod
    async def latest(self, topic: str) -> Offset:
        """The topic's latest offset. For a topic never published to it is the
        start offset (sequence 0), so a client can recover from the very first
        message with ``since`` set to it. Never writes."""

    @abc.abstractmethod
    async def retained(self, flt: str) -> list[Publication]:
        """The retained message of every topic matching the filter ``flt``."""

    # -- inbox ------------------------------------------------------------------

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
        replaces that user's older unread one; the item is inserted; the
        notification (its fields plus ``unread``) is appended to
        ``users/{uid}/notifications``; the retained ``users/{uid}/unread``
        becomes ``{"count": N}``. A repeated ``idempotency_key`` returns the
        first result with ``duplicate=True`` and changes nothing.
        """

    @abc.abstractmethod
    async def inbox(self, user: str, *, limit: int, before: str | None = None,
                    unread_only: bool = False) -> InboxPage:
        """The user's unarchived, unexpired items, newest first, paged by cursor."""

    @abc.abstractmethod
    async def unread(self, user: str) -> int:
        """The number of unread, non-archived, unexpired items."""

    @abc.abstractmethod
    async def read_states(self, user: str, ids: Sequence[str]) -> dict[str, bool]:
        """Whether each of ``ids`` (the user's, still in the inbox) is read."""

    @abc.abstractmethod
    async def mark(self, user: str, action: MarkAction, ids: Sequence[str] | None, *,
                   device: str, policy: PolicyFor) -> UserChange:
        """Mark ``ids`` (None: all) read / unread / archived, atomically.

        When anything changed, appends ``{"type": action, "ids" | "all",
        "unread", "device"}`` to ``users/{uid}/events`` and updates the retained
        unread count; the publications are returned to fan out.
        """

    @abc.abstractmethod
    async def sweep(self, *, policy: PolicyFor, limit: int) -> SweepResult:
        """Delete expired history messages, inbox items and idempotency keys.

        At most about ``limit`` of each kind per call (``more`` says whether
        some were left), so one call holds the backend briefly; call again
        while ``more``. Expired items are already invisible to every read;
        this frees their space and tells the user: per user who lost
        unarchived items, atomically with the deletion, ``{"type": "expire",
        "ids", "unread"}`` is appended to ``users/{uid}/events`` and the
        retained ``users/{uid}/unread`` updated; the publications are
        returned to fan out (as ``mark`` returns them).
        """

    @abc.abstractmethod
    async def track(self, notification_id: str, user: str, event: str) -> bool:
        """Record ``event`` (one of ``TRACK_EVENTS``) once per user; False if already."""

    @abc.abstractmethod
    async def stats(self, notification_id: str) -> dict[str, Any] | None:
        """``{id, category, targets, delivered, opened, clicked, dismissed}`` or None."""

    @abc.abstractmethod
    async def category_stats(self) -> dict[str, dict[str, int]]:
        """Totals by category: notifications, targets and each tracked event."""

    # -- MQTT sessions --------------------------------------------------------------

    @abc.abstractmethod
    async def mqtt_session(self, client_id: str
                           ) -> tuple[MqttSessionState, list[QueuedMessage]] | None:
        """The persistent session's state and its queue (oldest first), or None."""

    @abc.abstractmethod
    async def mqtt_save(self, client_id: str, state: MqttSessionState,
                        queue: list[QueuedMessage] | None = None) -> None:
        """Create or replace the session state; with ``queue``, replace its queue too."""

    @abc.abstractmethod
    async def mqtt_delete(self, client_id: str) -> None:
        """Forget the session and its queue."""

    @abc.abstractmethod
    async def mqtt_enqueue(self, items: Sequence[tuple[str, QueuedMessage]], limit: int
                           ) -> int:
        """Append to offline sessions' queues (one call for a batch). A queue at
        ``limit`` drops the new message; returns how many were dropped."""

    @abc.abstractmethod
    async def mqtt_sessions(self) -> list[tuple[str, MqttSessionState]]:
        """Every stored session (client id, state), to re-register at start."""

    # -- presence (stores with ``shared_presence``) -------------------------------------

    async def presence_put(self, user: str, entry: str, info: dict[str, Any],
                           ttl: float) -> int:
        """Add or refresh one online device entry that lives ``ttl`` seconds unless
        refreshed; returns how many live entries the user has now."""
        raise NotImplementedError

    async def presence_remove(self, user: str, entry: str) -> int:
        """Remove an entry; returns how many live entries the user has left."""
        raise NotImplementedError

    async def presence_list(self, user: str) -> list[dict[str, Any]]:
        """The user's live entries' infos."""
        raise NotImplementedError
