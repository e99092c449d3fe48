"""The one clock: everything that needs "now" reads a :class:`Clock`.

The scheduler, quiet hours, caps, best time and the store take their time from
the node's ``clock`` (a :class:`SystemClock` unless a test passes its own), so
tests move time by hand instead of sleeping. The store contracts take a plain
callable returning epoch seconds; pass ``clock.now``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol, cast, runtime_checkable

__all__ = ["CallableClock", "Clock", "SystemClock", "as_clock", "utc"]


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


class CallableClock:
    """A :class:`Clock` over a function returning epoch seconds (what the stores take)."""

    def __init__(self, fn: Callable[[], float]) -> None:
        self._fn = fn

    def now(self) -> float:
        return self._fn()


def as_clock(clock: Clock | Callable[[], float]) -> Clock:
    """``clock`` as a :class:`Clock` (a function of no arguments is wrapped; so is a
    callable whose ``now`` is not a method, such as a test clock with a ``now`` field)."""
    if callable(getattr(clock, "now", None)):
        return cast(Clock, clock)
    return CallableClock(cast(Callable[[], float], clock))


def utc(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime (what policy.py and schedule.py take)."""
    return datetime.fromtimestamp(seconds, UTC)
