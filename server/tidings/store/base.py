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
* Retained: at most one message per topic; publishing an empty payload with
  ``retain=True`` clears it (as in MQTT).
* Idempotency: a publish carrying an ``idempotency_key`` already seen within
  the idempotency TTL stores nothing and returns the first publication with
  ``duplicate=True``.
* Methods raise :class:`tidings.errors.Unavailable` when the backend cannot
  answer within its bound; they never report success for what was not stored.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from ..types import Offset, PayloadKind, Publication

__all__ = ["HistoryPage", "HistoryPolicy", "PublishResult", "Store"]


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
    offset: Offset | None  # the topic's latest offset (None: never published)
    complete: bool  # False: history no longer reaches back to ``since``


class Store(abc.ABC):
    """Durable state of a Tidings deployment."""

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
    ) -> PublishResult:
        """Assign the topic's next offset, append to history, update retained.

        All in one atomic step, together with recording ``idempotency_key``.
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
    async def latest(self, topic: str) -> Offset | None:
        """The topic's latest offset, None if nothing was ever published to it."""

    @abc.abstractmethod
    async def retained(self, flt: str) -> list[Publication]:
        """The retained message of every topic matching the filter ``flt``."""
