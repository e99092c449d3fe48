"""A fake :class:`tidings.clock.Clock` for tests that move time by hand (never sleep).

``FakeClock().now()`` is the time; ``advance`` moves it; calling it returns the
time too, so the same object serves where a store wants a function.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["START", "FakeClock", "at"]


def at(text: str) -> float:
    """Epoch seconds of an ISO 8601 time with an offset (``2026-01-15T12:00:00Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


START = at("2026-01-15T12:00:00Z")  # a Thursday; no DST change near it in the zones used


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, when: float) -> None:
        assert when >= self.t, "time only moves forward"
        self.t = when
