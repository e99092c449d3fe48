"""The one clock: everything that needs "now" reads a :class:`Clock`.

The scheduler, quiet hours, caps, best time and the store take their time from
the node's ``clock`` (a :class:`SystemClock` unless a test passes its own), so
tests move time by hand instead of sleeping. The store contracts take a plain
callable returning epoch seconds; pass ``clock.now``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "utc"]


@runtime_checkable
class Clock(Protocol):
    """A source of the current time."""

    def now(self) -> float:
        """Seconds since the epoch (UTC), as ``time.time()`` gives them."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> float:
        return time.time()


def utc(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime (what policy.py and schedule.py take)."""
    return datetime.fromtimestamp(seconds, UTC)
