"""When a scheduled notification fires for a user: ``send_at``, ``send_at_local``, best time.

Pure functions of their inputs and ``now`` (an aware datetime); the scheduler
that stores and fires notifications comes later. The rules (issue 12):

- ``send_at``: an RFC 3339 date-time with an offset (``2026-12-24T09:00:00Z``,
  ``...+08:00``), one instant for everyone (:func:`parse_send_at`). A past
  instant fires at once (a missed schedule fires when the server is back).
- ``send_at_local``: a wall time applied in each user's zone (the operator's
  ``preferences.default_timezone`` for users without one)
  (:func:`parse_send_at_local`, then :func:`local_fire_time` per user):

  * ``"09:00"``: the next 09:00 in the user's zone, at or after ``now``;
  * ``"2026-12-24T09:00"`` (seconds optional, no offset): that local date and
    time; already past in a user's zone, it fires for that user at once.

  DST: a wall time skipped by a change (02:30 on a spring-forward night) fires
  the length of the gap later (03:30); one that happens twice (fall back)
  fires at its first occurrence (fold 0, as ``zoneinfo`` gives it).
- ``send_at: "best_time"``: the user's engagement (opened / clicked instants)
  of the last 30 days, counted per local hour of day; the notification fires
  at the start of the next occurrence of the busiest hour (ties: the one that
  comes first), or now when ``now`` is inside that hour or there is no
  history (:func:`best_time`). It is within 24 hours of ``now`` (25 across a
  fall-back night); an hour whose start a DST change skips that day starts
  the gap later (02:00 -> 03:00), as for ``send_at_local``.

Errors are :class:`~tidings.errors.BadRequest` naming the field.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .errors import BadRequest

__all__ = [
    "BEST_TIME",
    "BEST_TIME_HISTORY",
    "LocalTime",
    "best_time",
    "local_fire_time",
    "parse_send_at",
    "parse_send_at_local",
]

BEST_TIME = "best_time"
BEST_TIME_HISTORY = timedelta(days=30)

# RFC 3339 section 5.6 date-time; "T" / "Z" may be lower case and a space may
# stand for "T" (section 5.6, NOTE). Leap seconds (:60) are refused below.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))")
_LOCAL = re.compile(
    r"(?:(\d{4})-(\d{2})-(\d{2})[Tt ])?(\d{2}):(\d{2})(?::(\d{2}))?")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def parse_send_at(value: Any, where: str = "send_at") -> datetime:
    """An RFC 3339 date-time (with ``Z`` or an offset) -> an aware UTC datetime."""
    m = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise BadRequest(f"{where}: expected an RFC 3339 time like "
                         f"\"2026-12-24T09:00:00Z\", got {_show(value)}")
    year, month, day, hour, minute, second = (int(m[i]) for i in range(1, 7))
    micro = int((m[7] or "0")[:6].ljust(6, "0"))
    try:
        if m[8]:
            tz = UTC
        else:
            off = timedelta(hours=int(m[10]), minutes=int(m[11]))
            tz = timezone(-off if m[9] == "-" else off)
        when = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as e:  # day 31 of a 30-day month, :60, offset over 24 h
        raise BadRequest(f"{where}: not a valid time ({e}), got {_show(value)}") from None
    return when.astimezone(UTC)


@dataclass(frozen=True)
class LocalTime:
    """A parsed ``send_at_local``: a time of day, on ``date`` or (None) the next one."""

    wall: time
    on: datetime | None = None  # naive local date-time when a date was given


def parse_send_at_local(value: Any, where: str = "send_at_local") -> LocalTime:
    """``"09:00"``, ``"09:00:30"`` or ``"2026-12-24T09:00[:00]"`` (no offset: a wall time)."""
    m = _LOCAL.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise BadRequest(f"{where}: expected a local time \"HH:MM\" or date and time "
                         f"\"YYYY-MM-DDTHH:MM\" without an offset, got {_show(value)}")
    try:
        wall = time(int(m[4]), int(m[5]), int(m[6] or 0))
        on = None if m[1] is None else datetime(int(m[1]), int(m[2]), int(m[3]),
                                                wall.hour, wall.minute, wall.second)
    except ValueError as e:
        raise BadRequest(f"{where}: not a valid time ({e}), got {_show(value)}") from None
    return LocalTime(wall, on)


def _at(local: datetime, zone: ZoneInfo) -> datetime:
    """A naive local date-time in ``zone`` (fold 0, see the module rules) -> UTC."""
    return local.replace(tzinfo=zone).astimezone(UTC)


def local_fire_time(when: LocalTime, zone: ZoneInfo, now: datetime) -> datetime:
    """The instant (UTC) ``when`` means for a user in ``zone``, seen at ``now``.

    A date-time is that instant even when past (the caller fires it at once);
    a time of day is the first occurrence at or after ``now``.
    """
    if when.on is not None:
        return _at(when.on, zone)
    today = now.astimezone(zone).date()
    for day in (today, today + timedelta(days=1)):
        fire = _at(datetime.combine(day, when.wall), zone)
        if fire >= now:
            return fire
    return _at(datetime.combine(today + timedelta(days=2), when.wall), zone)  # pragma: no cover


def best_time(engaged: Iterable[datetime], zone: ZoneInfo, now: datetime) -> datetime:
    """The user's best moment (UTC) within the next day, from ``engaged``
    (instants the user opened or clicked a notification): see the module rules.
    Engagement older than :data:`BEST_TIME_HISTORY` or in the future is ignored."""
    since = now - BEST_TIME_HISTORY
    hours = Counter(t.astimezone(zone).hour for t in engaged if since < t <= now)
    if not hours:
        return now
    top = max(hours.values())
    local_now = now.astimezone(zone)
    if hours.get(local_now.hour) == top:
        return now
    best: datetime | None = None
    for hour, count in hours.items():
        if count != top:
            continue
        fire = local_fire_time(LocalTime(time(hour)), zone, now)
        if best is None or fire < best:
            best = fire
    assert best is not None
    return best
