"""The store's contracts, one per concern; :class:`tidings.store.base.Store` is their union.

* :mod:`.topics`: offsets, history, retained messages and idempotent publish
  (:class:`TopicStore`);
* :mod:`.inbox`: each user's notifications, the unread counter, read / archive
  marks and tracking (:class:`InboxStore`);
* :mod:`.mqtt_sessions`: persistent MQTT sessions and their offline queues
  (:class:`MqttSessionStore`);
* :mod:`.presence`: online device entries shared by every node
  (:class:`PresenceStore`);
* :mod:`.audience`: tags, attributes, segments, last-seen times, engagement
  and paged selection of users (:class:`AudienceStore`);
* :mod:`.notifications`: send jobs, per-user delivery, the due queue and push
  history (:class:`NotificationStore`).

Each is tested on its own, on every backend, by ``tests/store/test_*_contract.py``.
Callers that need one concern may take that contract rather than the whole store
(``tidings.presence.Presence`` takes a :class:`PresenceStore`). Modules here import
only :mod:`tidings.types`, :mod:`tidings.errors` and each other (inbox uses the
topic policy), never a backend.
"""

from __future__ import annotations

from .audience import AudiencePage, AudienceQuery, AudienceStore
from .inbox import (
    FEEDBACK_REASONS,
    MAX_EVENT_IDS,
    PRUNE_STEP,
    RECENT_KEPT,
    STAT_EVENTS,
    TRACK_EVENTS,
    InboxItem,
    InboxPage,
    InboxStore,
    MarkAction,
    NotifyResult,
    UserChange,
    events_topic,
    notifications_topic,
    routed_away,
    unread_topic,
)
from .mqtt_sessions import MqttSessionState, MqttSessionStore, MqttSubscription, QueuedMessage
from .notifications import (
    JOB_STATUSES,
    OUTCOMES,
    TARGET_STATES,
    DeliverResult,
    Delivery,
    DueEntry,
    Job,
    JobPage,
    JobStatus,
    NewJob,
    NotificationStore,
)
from .presence import PresenceStore
from .topics import (
    HistoryPage,
    HistoryPolicy,
    PolicyFor,
    PublishRequest,
    PublishResult,
    TopicStore,
)

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
    "QueuedMessage",
    "TopicStore",
    "UserChange",
    "events_topic",
    "notifications_topic",
    "routed_away",
    "unread_topic",
]
