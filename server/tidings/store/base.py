"""The store: what must outlive a connection, as the union of its contracts.

:class:`Store` is every concern's contract (:mod:`tidings.store.contracts`:
topics and history, inbox, MQTT sessions, presence, audience, notification
jobs) plus its lifecycle
(open, close, ping, sweep). Every implementation (``sqlite`` embedded,
``redis`` for clusters) passes the same contract tests, one module per concern
(``tests/store/test_*_contract.py``), on SQLite, Redis and Redis Cluster. The
rules shared by all of them:

* Every method is a coroutine and every multi-step change is one call, made
  atomic by the implementation (one SQLite transaction, one Redis script);
  each contract says where a call's atomicity ends (e.g. per user).
* The store takes all its time (timestamps, TTLs, expiry) from its clock, so
  tests move time by hand.
* Methods raise :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound (a closed store included); they never report
  success for what was not stored.
* Expiry: :meth:`Store.sweep` deletes what is past its time (history,
  inbox items, idempotency keys), bounded per call, and for each user who
  lost unarchived items appends ``{"type": "expire", "ids", "unread"}`` to
  ``users/{uid}/events`` and updates the retained count, as ``mark`` does.

The value types of every contract are importable from here too.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..health import StoreHealth
from .contracts import (
    FEEDBACK_REASONS,
    JOB_STATUSES,
    MAX_EVENT_IDS,
    OUTCOMES,
    PRUNE_STEP,
    RECENT_KEPT,
    STAT_EVENTS,
    TARGET_STATES,
    TRACK_EVENTS,
    AudiencePage,
    AudienceQuery,
    AudienceStore,
    DeliverResult,
    Delivery,
    DueEntry,
    HistoryPage,
    HistoryPolicy,
    InboxItem,
    InboxPage,
    InboxStore,
    Job,
    JobPage,
    JobStatus,
    MarkAction,
    MqttSessionState,
    MqttSessionStore,
    MqttSubscription,
    NewJob,
    NotificationStore,
    NotifyResult,
    PolicyFor,
    PresenceStore,
    PublishRequest,
    PublishResult,
    QueuedMessage,
    TopicStore,
    UserChange,
    events_topic,
    notifications_topic,
    routed_away,
    unread_topic,
)
from .contracts.events import EventStore
from .contracts.push import PushEndpointStore, Registered

__all__ = [
    "FEEDBACK_REASONS",
    "JOB_STATUSES",
    "MAX_EVENT_IDS",
    "OUTCOMES",
    "PRUNE_STEP",
    "RECENT_KEPT",
    "STAT_EVENTS",
    "TARGET_STATES",
    "TRACK_EVENTS",
    "AudiencePage",
    "AudienceQuery",
    "AudienceStore",
    "DeliverResult",
    "Delivery",
    "DueEntry",
    "EventStore",
    "HistoryPage",
    "HistoryPolicy",
    "InboxItem",
    "InboxPage",
    "InboxStore",
    "Job",
    "JobPage",
    "JobStatus",
    "MarkAction",
    "MqttSessionState",
    "MqttSessionStore",
    "MqttSubscription",
    "NewJob",
    "NotificationStore",
    "NotifyResult",
    "PolicyFor",
    "PresenceStore",
    "PublishRequest",
    "PublishResult",
    "PushEndpointStore",
    "QueuedMessage",
    "Registered",
    "Store",
    "SweepResult",
    "TopicStore",
    "UserChange",
    "events_topic",
    "notifications_topic",
    "routed_away",
    "unread_topic",
]


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


class Store(TopicStore, InboxStore, MqttSessionStore, PresenceStore, AudienceStore,
            PushEndpointStore, EventStore, NotificationStore, abc.ABC):
    """Durable state of a Tidings deployment: every contract, and its lifecycle."""

    announces: bool = False
    """True when the store itself puts every publication it writes (publish,
    notify, mark, sweep) on the bus, inside the same atomic step (Redis: the
    script PUBLISHes); the node then does not publish again."""

    monitor: StoreHealth | None = None
    """Told of every commit: its time, or that the backend failed it (see health.py)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create the schema. Called once before any other method.

        A backend that is down does not make this raise where the store can
        connect later (Redis): calls raise ``Unavailable`` until it is up."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release. Idempotent; afterwards calls raise ``Unavailable``."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """Whether the backend answers now (for ``/readyz``); False once closed.
        Never raises."""

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
        returned to fan out (as ``mark`` returns them). A user who lost only
        archived items is not told.
        """
