"""The topics-and-history contract: offsets, bounded history, retained, idempotency.

The rules every backend keeps (``tests/store/test_topics_contract.py``):

* Offsets are per topic, strictly increasing and consecutive (a gap is
  detectable), opaque strings (:func:`tidings.types.format_offset`). A topic's
  epoch changes only if its history is lost, so a stale offset is detected,
  never misread. Concurrent publishes to one topic get distinct consecutive
  offsets, and history holds them in offset order.
* History is bounded by a :class:`HistoryPolicy` per publish: at most
  ``size`` messages, none older than ``ttl`` seconds (the store's clock). Reads
  never return an expired message.
* Retained: at most one message per topic, with the QoS it was published at
  (a subscriber gets at most that [MQTT-3.8.4-8]); publishing an empty
  payload with ``retain=True`` clears it (as in MQTT 3.3.1.3).
* Idempotency: a publish carrying an ``idempotency_key`` already seen within
  the store's idempotency TTL stores nothing and returns the first publication
  with ``duplicate=True``. Keys survive a reopen.
* A group (:meth:`TopicStore.publish_many`) is the same publishes in one call:
  each keeps every rule above, and offsets follow the group's order, so two
  messages to one topic in a group get consecutive offsets in that order.
* Every call raises :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound (a closed store included); none reports success for
  what was not stored.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ...types import Offset, PayloadKind, Publication

__all__ = ["HistoryPage", "HistoryPolicy", "PolicyFor", "PublishRequest", "PublishResult",
           "TopicStore"]


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    size: int  # messages kept; 0 keeps none
    ttl: float  # seconds


PolicyFor = Callable[[str], HistoryPolicy]
"""The history policy of a topic (the node's per-topic rules), for calls that
write to topics they choose themselves (a user's streams)."""


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """One publish of a group (:meth:`TopicStore.publish_many`): the arguments of
    :meth:`TopicStore.publish`."""

    topic: str
    payload: bytes
    kind: PayloadKind
    policy: HistoryPolicy
    retain: bool = False
    idempotency_key: str | None = None
    qos: int = 1
    origin: str | None = None
    meta: Any = None


@dataclass(frozen=True, slots=True)
class PublishResult:
    publication: Publication
    duplicate: bool = False  # an idempotent retry: nothing was stored


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[Publication]  # oldest first
    offset: Offset | None  # the topic's latest offset (as latest() gives it)
    complete: bool  # False: history no longer reaches back to ``since``


class TopicStore(abc.ABC):
    """Topics: their offsets, history and retained message."""

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

        One atomic step, together with recording ``idempotency_key``: a reader
        sees all of it or none. The history is trimmed to ``policy`` in the same
        step. A key seen within the idempotency TTL changes nothing (retained
        included) and returns the first publication with ``duplicate=True``.
        ``qos``, ``origin`` and ``meta`` are not stored, except that the retained
        message keeps ``qos`` and ``meta`` (MQTT 5.0 properties, forwarded
        unaltered, 5.0 section 3.3.2.3, e.g. [MQTT-3.3.2-17]: through the meta
        codec, as the map it makes; without a codec ``meta`` is not kept); a store that
        ``announces`` sends them with the publication it puts on the bus.
        """

    @abc.abstractmethod
    async def reserve_offsets(self, topic: str, count: int) -> tuple[str, int]:
        """Take the topic's next ``count`` offsets for the caller to hand out without
        writing them: returns (epoch, first sequence); the caller owns sequences
        ``first .. first + count - 1``. Nothing is added to history or retained;
        ``latest`` reports the last reserved offset from now on, and the next
        publish or reservation continues after it, so offsets handed out from
        reservations still increase per topic (across restarts too), though not
        consecutively. For topics that keep no history (the node's memory-only
        topics): one store round trip per ``count`` messages."""

    @abc.abstractmethod
    async def publish_many(self, requests: Sequence[PublishRequest]) -> list[PublishResult]:
        """:meth:`publish` each request, in order, in one call; a result per request.

        What the node sends when an edge read many publishes at once (a
        pipelining client, concurrent API calls): one SQLite transaction, or
        one pipeline per Redis node, instead of a round trip each. Each
        request is one atomic step as in :meth:`publish` (the whole group
        need not be); offsets are assigned in the order given, so the
        messages of one topic are stored, and get offsets, in that order. An
        idempotency key seen earlier in the same group is a duplicate. If the
        call raises (``Unavailable``), none of the group may be reported as
        stored: the caller tells every sender it failed (some may have been
        stored, as when a single publish times out).
        """

    @abc.abstractmethod
    async def history(self, topic: str, since: str | None, limit: int) -> HistoryPage:
        """Messages of ``topic`` after ``since`` (oldest first, at most ``limit``).

        With ``since`` None: the newest ``limit`` messages. ``complete`` is False
        when messages after ``since`` are no longer all kept (trimmed, expired,
        or ``since`` is from another epoch or topic, or not an offset), or when
        more than ``limit`` follow it. Never returns an expired message; never
        writes.
        """

    @abc.abstractmethod
    async def latest(self, topic: str) -> Offset:
        """The topic's latest offset. For a topic never published to it is the
        start offset (sequence 0), so a client can recover from the very first
        message with ``since`` set to it. Stable until the next publish; never
        writes."""

    @abc.abstractmethod
    async def retained(self, flt: str) -> list[Publication]:
        """The retained message of every topic matching the filter ``flt``.

        One per topic, in no particular order. ``#`` also matches the parent
        level [MQTT-4.7.1-2]; filters starting with a wildcard do not match
        topics starting with ``$`` [MQTT-4.7.2-1]; characters that are
        wildcards in SQL or Redis patterns are literal.
        """
