"""The event log contract: what ``GET /v1/events`` reads (issue 13).

The rules every backend keeps (``tests/store/test_events_contract.py``):

* ``events_append`` stores events (JSON objects with an ``id``) in the order
  given, after every event appended before; appends from several nodes
  interleave but never reorder what one call gave.
* ``events_since(cursor)`` returns at most ``limit`` events after
  ``cursor`` (None: from the oldest kept), oldest first, and the cursor to
  pass next (the last event's position; the same cursor when nothing is
  new, so a poller can keep it). A cursor is opaque: a backend's own format.
  A malformed cursor is a :class:`~tidings.errors.BadRequest`.
* Retention: events older than ``keep`` seconds (the store's clock) are
  dropped by appends, at least eventually; a cursor older than what is kept
  reads from the oldest kept event.
* Every call raises :class:`tidings.errors.Unavailable` when the backend
  cannot answer within its bound.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["EventStore"]


class EventStore(abc.ABC):
    @abc.abstractmethod
    async def events_append(self, events: Sequence[Mapping[str, Any]], *, keep: float) -> None:
        """Append ``events`` (each JSON-able with an ``id``); drop those older than ``keep``."""

    @abc.abstractmethod
    async def events_since(self, cursor: str | None, *, limit: int
                           ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` events after ``cursor``, oldest first; and the next cursor."""
