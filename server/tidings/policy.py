"""The decision: what happens to one notification for one user, per edge.

:func:`decide` is pure: the notification, the user's preferences, the
operator's rules, the user's recent live pushes in the notification's category
and ``now`` in, a :class:`Decision` out. The rules, in the order they apply
(the first that matches decides; the outcome names are the public contract of
issue 12)::

    expired               now >= expires_at, or a hold would end after it:
                          nothing is written or pushed
    suppressed_category   the user turned the category off ("enabled": false):
                          nothing is written or pushed; or, per edge and
                          platform channel, the category's "edges" leave it
                          out (the inbox is written as the other rules say;
                          "edges": [] means inbox only, never held or capped)
    held                  inside the user's quiet hours and the operator's
                          policy for the category is "hold": written to the
                          inbox and pushed live at ``hold_until`` (the end of
                          the quiet hours, in the user's zone), when the caller
                          decides again
    silent_quiet_hours    inside quiet hours, policy "silent": written to the
                          inbox now, no live push
    silent_capped         the category's live pushes in the rolling hour / day
                          reached the user's cap: written to the inbox, no push
    pushed                written to the inbox and pushed live

``priority: "urgent"`` skips the quiet-hours rules in the operator's
``urgent_bypass`` categories (never the caps, a muted category or expiry).

Quiet hours: a period starts on each listed day at ``start`` local time and
lasts until the next ``end`` (the following day when ``end <= start``). Local
times become instants with ``zoneinfo``, fold 0: a start or end skipped by a
DST change (spring forward) falls the length of the gap later (02:30 ->
03:30), one that happens twice (fall back) is its first occurrence. So a
22:00-07:00 period is 8 or 10 hours long on the nights the clocks change.

Caps: ``recent`` are the instants of the user's live pushes in the category
(the caller records one per notification pushed on any edge). A rolling hour is
``(now - 1h, now]``; a push is allowed while fewer than ``per_hour`` of them
fall in it, likewise ``per_day`` over ``(now - 24h, now]``: no window of an
hour (a day) ever holds more than the cap. All instants are aware datetimes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .preferences import LIVE_EDGES, PLATFORMS, Preferences, QuietHours, Rules

__all__ = [
    "DAY",
    "HOUR",
    "Decision",
    "Notice",
    "Outcome",
    "decide",
    "quiet_until",
]

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class Outcome(enum.StrEnum):
    PUSHED = "pushed"
    HELD = "held"
    SILENT_QUIET_HOURS = "silent_quiet_hours"
    SILENT_CAPPED = "silent_capped"
    SUPPRESSED_CATEGORY = "suppressed_category"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Notice:
    """What the decision needs of a notification: ``category`` (default
    ``general``), ``priority`` (``"urgent"`` may bypass quiet hours) and the
    instant it expires (``created + ttl``; None: never)."""

    category: str = "general"
    priority: str = "normal"
    expires_at: datetime | None = None

    @property
    def urgent(self) -> bool:
        return self.priority == "urgent"


@dataclass(frozen=True)
class Decision:
    """The outcome per live edge (``ws``, ``mqtt``) and, in ``platforms``, per
    platform channel (``webpush``, ``fcm``, ``apns``: the same rules, quiet
    hours and caps included, apply to them alike), and what happens to the inbox:
    ``inbox`` True: write it now; ``hold_until`` set: write and push it then
    (decide again at that instant); neither: nothing is written."""

    edges: Mapping[str, Outcome]
    inbox: bool
    hold_until: datetime | None = None
    platforms: Mapping[str, Outcome] = field(default_factory=dict)

    @property
    def pushed(self) -> bool:
        """Whether any edge or platform pushes now (the caller records a push for caps)."""
        return Outcome.PUSHED in (*self.edges.values(), *self.platforms.values())


def _all(outcome: Outcome, *, inbox: bool, hold_until: datetime | None = None) -> Decision:
    return Decision({e: outcome for e in LIVE_EDGES}, inbox, hold_until,
                    {c: outcome for c in PLATFORMS})


def _routed(edges: frozenset[str] | None, outcome: Outcome, *, inbox: bool,
            hold_until: datetime | None = None) -> Decision:
    """``outcome`` on the edges and platforms the category allows,
    ``suppressed_category`` on the others."""
    return Decision(_route(edges, outcome, LIVE_EDGES), inbox, hold_until,
                    _route(edges, outcome, PLATFORMS))


def _instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The instant of local ``day`` at ``wall`` in ``zone`` (fold 0), in UTC."""
    return datetime.combine(day, wall, tzinfo=zone).astimezone(UTC)


def quiet_until(quiet: QuietHours, zone: ZoneInfo, now: datetime) -> datetime | None:
    """The end (UTC) of the quiet period ``now`` falls in, or None outside quiet hours.

    Periods start on local day D (if listed in ``days``) and last under a day,
    so only the periods starting on D-1 and D can hold ``now``. Comparisons are
    made in UTC (aware datetimes sharing a ZoneInfo compare by wall time).
    """
    today = now.astimezone(zone).date()
    overnight = quiet.end <= quiet.start
    for day in (today - timedelta(days=1), today):
        if quiet.days is not None and day.weekday() not in quiet.days:
            continue
        start = _instant(day, quiet.start, zone)
        end = _instant(day + timedelta(days=1) if overnight else day, quiet.end, zone)
        if start <= now < end:
            return end
    return None


def _capped(prefs: Preferences, rules: Rules, category: str,
            recent: Iterable[datetime], now: datetime) -> bool:
    cap = prefs.cap(category, rules)
    if cap.per_hour is None and cap.per_day is None:
        return False
    in_hour = in_day = 0
    for t in recent:
        if now - DAY < t <= now:
            in_day += 1
            if now - HOUR < t:
                in_hour += 1
    return ((cap.per_hour is not None and in_hour >= cap.per_hour)
            or (cap.per_day is not None and in_day >= cap.per_day))


def decide(notice: Notice, prefs: Preferences, rules: Rules,
           recent: Iterable[datetime], now: datetime) -> Decision:
    """Decide, for one user at ``now``, what each edge does with ``notice``
    (the rules are in the module docstring). ``recent``: the user's live pushes
    in ``notice.category`` (only the last day matters)."""
    if notice.expires_at is not None and now >= notice.expires_at:
        return _all(Outcome.EXPIRED, inbox=False)
    cat = prefs.category(notice.category)
    always_on = notice.category in rules.always_on
    if not always_on and not cat.enabled:
        return _all(Outcome.SUPPRESSED_CATEGORY, inbox=False)
    edges = None if always_on and cat.edges == frozenset() else cat.edges
    if edges == frozenset():  # inbox only, on no edge live: nothing to hold or cap
        return _all(Outcome.SUPPRESSED_CATEGORY, inbox=True)
    quiet = None
    if prefs.quiet_hours is not None and not (
            notice.urgent and notice.category in rules.urgent_bypass):
        quiet = quiet_until(prefs.quiet_hours, prefs.zone(rules), now)
    if quiet is not None and notice.category not in rules.silent_in_quiet_hours:
        if notice.expires_at is not None and notice.expires_at <= quiet:
            return _all(Outcome.EXPIRED, inbox=False)
        return _routed(edges, Outcome.HELD, inbox=False, hold_until=quiet)
    if quiet is not None:
        outcome = Outcome.SILENT_QUIET_HOURS
    elif _capped(prefs, rules, notice.category, recent, now):
        outcome = Outcome.SILENT_CAPPED
    else:
        outcome = Outcome.PUSHED
    return _routed(edges, outcome, inbox=True)


def _route(edges: frozenset[str] | None, outcome: Outcome, names: tuple[str, ...]
           ) -> dict[str, Outcome]:
    return {e: outcome if edges is None or e in edges else Outcome.SUPPRESSED_CATEGORY
            for e in names}
