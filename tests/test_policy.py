"""The per-edge decision (issue 12, scope 3 rules): quiet hours, caps, categories, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings import config
from tidings.policy import DAY, HOUR, Notice, Outcome, decide, quiet_until
from tidings.preferences import CategoryPreference, Preferences, Rules, parse

RULES = Rules.default()
NY = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
PARIS = ZoneInfo("Europe/Paris")
NIGHT = {"start": "22:00", "end": "07:00"}

PUSHED = {"ws": Outcome.PUSHED, "mqtt": Outcome.PUSHED}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def prefs(**doc: Any) -> Preferences:
    return parse(doc, RULES)


def quiet(zone: str, **qh: Any) -> Preferences:
    return prefs(timezone=zone, quiet_hours={**NIGHT, **qh})


# --- quiet hours -------------------------------------------------------------

def test_quiet_hours_across_midnight_in_two_time_zones_at_one_instant() -> None:
    now = utc(2026, 6, 15, 14, 0)  # Paris 16:00 (CEST), Shanghai 22:00
    paris = decide(Notice(), quiet("Europe/Paris"), RULES, [], now)
    shanghai = decide(Notice(), quiet("Asia/Shanghai"), RULES, [], now)
    assert paris.edges == PUSHED and paris.inbox
    assert shanghai.edges == {"ws": Outcome.HELD, "mqtt": Outcome.HELD}
    assert not shanghai.inbox
    assert shanghai.hold_until == utc(2026, 6, 15, 23, 0)  # Shanghai 07:00 next morning


def test_quiet_hours_boundaries() -> None:
    q = quiet("Asia/Shanghai").quiet_hours
    assert q is not None
    # Shanghai is UTC+8: 22:00 local = 14:00 UTC, 07:00 local = 23:00 UTC
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 15, 13, 59)) is None
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 15, 14, 0)) == utc(2026, 6, 15, 23)
    # after midnight local: the period started the evening before
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 15, 20, 0)) == utc(2026, 6, 15, 23)
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 15, 23, 0)) is None


def test_quiet_hours_within_one_day() -> None:
    p = prefs(timezone="Europe/Paris", quiet_hours={"start": "13:00", "end": "14:30"})
    q = p.quiet_hours
    assert q is not None
    # June: Paris is UTC+2
    assert quiet_until(q, PARIS, utc(2026, 6, 15, 10, 59)) is None
    assert quiet_until(q, PARIS, utc(2026, 6, 15, 11, 0)) == utc(2026, 6, 15, 12, 30)
    assert quiet_until(q, PARIS, utc(2026, 6, 15, 12, 30)) is None


def test_days_are_the_days_a_quiet_period_starts() -> None:
    q = quiet("Asia/Shanghai", days=["fri"]).quiet_hours
    assert q is not None
    # 2026-06-19 is a Friday. Shanghai Fri 23:00 / Sat 03:00: Friday's period
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 19, 15, 0)) == utc(2026, 6, 19, 23)
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 19, 19, 0)) == utc(2026, 6, 19, 23)
    # Thu 23:00 / Fri 03:00 (Thursday's period: not listed), Sat 23:00
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 18, 15, 0)) is None
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 18, 19, 0)) is None
    assert quiet_until(q, SHANGHAI, utc(2026, 6, 20, 15, 0)) is None


def test_quiet_hours_on_the_spring_forward_night_are_an_hour_shorter() -> None:
    # New York 2026-03-08: 02:00 EST -> 03:00 EDT
    q = quiet("America/New_York").quiet_hours
    assert q is not None
    start = utc(2026, 3, 8, 3, 0)   # Sat 22:00 EST
    end = utc(2026, 3, 8, 11, 0)    # Sun 07:00 EDT
    assert quiet_until(q, NY, start - timedelta(seconds=1)) is None
    assert quiet_until(q, NY, start) == end
    assert quiet_until(q, NY, end - timedelta(seconds=1)) == end
    assert quiet_until(q, NY, end) is None
    assert end - start == timedelta(hours=8)


def test_quiet_hours_on_the_fall_back_night_are_an_hour_longer() -> None:
    # New York 2026-11-01: 02:00 EDT -> 01:00 EST
    q = quiet("America/New_York").quiet_hours
    assert q is not None
    start = utc(2026, 11, 1, 2, 0)  # Sat 22:00 EDT
    end = utc(2026, 11, 1, 12, 0)   # Sun 07:00 EST
    assert quiet_until(q, NY, start) == end
    assert quiet_until(q, NY, utc(2026, 11, 1, 6, 30)) == end  # the second 01:30
    assert quiet_until(q, NY, end) is None
    assert end - start == timedelta(hours=10)


def test_quiet_hours_starting_in_a_dst_gap_or_overlap() -> None:
    # 02:30 does not exist on 2026-03-08 in New York: it starts at 03:30 EDT
    q = prefs(timezone="America/New_York",
              quiet_hours={"start": "02:30", "end": "06:00"}).quiet_hours
    assert q is not None
    assert quiet_until(q, NY, utc(2026, 3, 8, 7, 29)) is None  # 03:29 EDT
    assert quiet_until(q, NY, utc(2026, 3, 8, 7, 30)) == utc(2026, 3, 8, 10, 0)
    # 01:30 happens twice on 2026-11-01: the first (EDT, 05:30 UTC) starts it
    q = prefs(timezone="America/New_York",
              quiet_hours={"start": "01:30", "end": "05:00"}).quiet_hours
    assert q is not None
    assert quiet_until(q, NY, utc(2026, 11, 1, 5, 29)) is None
    assert quiet_until(q, NY, utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 1, 10, 0)


def test_users_without_a_zone_get_the_operators_default() -> None:
    p = prefs(quiet_hours=NIGHT)
    assert decide(Notice(), p, RULES, [], utc(2026, 6, 15, 23)).hold_until == utc(2026, 6, 16, 7)
    rules = Rules.from_settings(
        config.load(None, {"TIDINGS_PREFERENCES_DEFAULT_TIMEZONE": "Asia/Shanghai"}).preferences)
    assert decide(Notice(), p, rules, [], utc(2026, 6, 15, 23)).edges == PUSHED


def test_silent_categories_go_to_the_inbox_without_a_push() -> None:
    d = decide(Notice("marketing"), quiet("Asia/Shanghai"), RULES, [], utc(2026, 6, 15, 15))
    assert d.edges == {"ws": Outcome.SILENT_QUIET_HOURS, "mqtt": Outcome.SILENT_QUIET_HOURS}
    assert d.inbox and d.hold_until is None and not d.pushed


def test_urgent_bypasses_quiet_hours_where_the_category_allows_it() -> None:
    p = quiet("Asia/Shanghai")
    now = utc(2026, 6, 15, 15)
    assert decide(Notice("general", "urgent"), p, RULES, [], now).edges == PUSHED
    assert decide(Notice("security", "urgent"), p, RULES, [], now).edges == PUSHED
    assert decide(Notice("general", "high"), p, RULES, [], now).edges["ws"] == Outcome.HELD
    # marketing is not in preferences.urgent_bypass: urgent changes nothing
    assert decide(Notice("marketing", "urgent"), p, RULES, [],
                  now).edges["ws"] == Outcome.SILENT_QUIET_HOURS


def test_held_delivery_at_the_end_of_quiet_hours() -> None:
    p = quiet("Asia/Shanghai")
    d = decide(Notice(), p, RULES, [], utc(2026, 6, 15, 15))
    assert d.hold_until is not None
    # the caller decides again when the hold ends: now it is pushed and written
    again = decide(Notice(), p, RULES, [], d.hold_until)
    assert again.edges == PUSHED and again.inbox


def test_a_hold_past_the_expiry_is_expired() -> None:
    p = quiet("Asia/Shanghai")
    now = utc(2026, 6, 15, 15)
    d = decide(Notice(expires_at=utc(2026, 6, 15, 22)), p, RULES, [], now)
    assert d.edges == {"ws": Outcome.EXPIRED, "mqtt": Outcome.EXPIRED} and not d.inbox
    d = decide(Notice(expires_at=utc(2026, 6, 16, 1)), p, RULES, [], now)
    assert d.edges["ws"] == Outcome.HELD


def test_expired_before_anything_else() -> None:
    now = utc(2026, 6, 15, 12)
    d = decide(Notice(expires_at=now), Preferences(), RULES, [], now)
    assert d.edges == {"ws": Outcome.EXPIRED, "mqtt": Outcome.EXPIRED}
    assert not d.inbox
    assert decide(Notice(expires_at=now + timedelta(seconds=1)), Preferences(), RULES, [],
                  now).edges == PUSHED


# --- categories and edges ----------------------------------------------------

def test_a_muted_category_is_suppressed_everywhere() -> None:
    p = prefs(categories={"marketing": {"enabled": False}})
    d = decide(Notice("marketing"), p, RULES, [], utc(2026, 6, 15, 12))
    assert d.edges == {"ws": Outcome.SUPPRESSED_CATEGORY, "mqtt": Outcome.SUPPRESSED_CATEGORY}
    assert not d.inbox
    assert decide(Notice("social"), p, RULES, [], utc(2026, 6, 15, 12)).edges == PUSHED


def test_edge_routing_per_category() -> None:
    p = prefs(timezone="Asia/Shanghai", categories={"social": {"edges": ["ws"]}},
              quiet_hours=NIGHT)
    day, night = utc(2026, 6, 15, 4), utc(2026, 6, 15, 15)
    d = decide(Notice("social"), p, RULES, [], day)
    assert d.edges == {"ws": Outcome.PUSHED, "mqtt": Outcome.SUPPRESSED_CATEGORY}
    assert d.inbox and d.pushed
    d = decide(Notice("social"), p, RULES, [], night)
    assert d.edges == {"ws": Outcome.HELD, "mqtt": Outcome.SUPPRESSED_CATEGORY}
    assert decide(Notice("general"), p, RULES, [], day).edges == PUSHED


def test_platform_channels_are_switched_per_category_like_the_edges() -> None:
    """``"edges"`` may name the platform channels (issue 16): one left out gets
    no OS push of the category, the live edges keep their outcome, and quiet
    hours and caps decide for the platforms the same way."""
    p = prefs(timezone="Asia/Shanghai", categories={"social": {"edges": ["ws", "mqtt", "fcm"]}},
              quiet_hours=NIGHT, caps={"social": {"per_hour": 1}})
    day, night = utc(2026, 6, 15, 4), utc(2026, 6, 15, 15)
    d = decide(Notice("social"), p, RULES, [], day)
    assert d.edges == PUSHED
    assert d.platforms == {"webpush": Outcome.SUPPRESSED_CATEGORY, "fcm": Outcome.PUSHED,
                           "apns": Outcome.SUPPRESSED_CATEGORY}
    d = decide(Notice("social"), p, RULES, [], night)
    assert d.platforms["fcm"] == Outcome.HELD and d.edges["ws"] == Outcome.HELD
    d = decide(Notice("social"), p, RULES, [day - timedelta(minutes=5)], day)
    assert d.platforms["fcm"] == Outcome.SILENT_CAPPED and not d.pushed
    # a platform alone: nothing live, the OS push only (and that is a push for caps)
    only = prefs(categories={"social": {"edges": ["apns"]}})
    d = decide(Notice("social"), only, RULES, [], day)
    assert set(d.edges.values()) == {Outcome.SUPPRESSED_CATEGORY}
    assert d.platforms["apns"] == Outcome.PUSHED and d.pushed and d.inbox
    # no list: every channel; a muted category: none
    assert set(decide(Notice("general"), p, RULES, [], day).platforms.values()) == {
        Outcome.PUSHED}
    muted = prefs(categories={"social": {"enabled": False}})
    assert set(decide(Notice("social"), muted, RULES, [], day).platforms.values()) == {
        Outcome.SUPPRESSED_CATEGORY}


def test_no_edges_means_inbox_only() -> None:
    p = prefs(categories={"digest": {"edges": []}})
    d = decide(Notice("digest"), p, RULES, [], utc(2026, 6, 15, 12))
    assert d.edges == {"ws": Outcome.SUPPRESSED_CATEGORY, "mqtt": Outcome.SUPPRESSED_CATEGORY}
    assert d.inbox and d.hold_until is None


def test_always_on_categories_ignore_a_stored_mute() -> None:
    # validation refuses it; a mute kept from before the operator made the
    # category always-on must still not silence it
    p = Preferences(categories={"security": CategoryPreference(False, frozenset())})
    assert decide(Notice("security"), p, RULES, [], utc(2026, 6, 15, 12)).edges == PUSHED


# --- caps --------------------------------------------------------------------

def test_rolling_hour_cap() -> None:
    now = utc(2026, 6, 15, 12)
    n = Notice("marketing")  # operator default: 2 per hour, 6 per day
    p = Preferences()
    assert decide(n, p, RULES, [now - timedelta(minutes=10)], now).edges == PUSHED
    two = [now - timedelta(minutes=10), now - timedelta(minutes=59, seconds=59)]
    d = decide(n, p, RULES, two, now)
    assert d.edges == {"ws": Outcome.SILENT_CAPPED, "mqtt": Outcome.SILENT_CAPPED}
    assert d.inbox and not d.pushed
    # exactly an hour ago has left the window (now - 1h, now]
    assert decide(n, p, RULES, [now - timedelta(minutes=10), now - HOUR], now).edges == PUSHED
    # pushes in other categories are not the caller's "recent" for this one
    assert decide(Notice("general"), p, RULES, two * 10, now).edges == PUSHED


def test_rolling_day_cap_and_a_lower_user_cap() -> None:
    now = utc(2026, 6, 15, 12)
    n = Notice("marketing")
    six = [now - timedelta(hours=3 * i + 2) for i in range(6)]  # 2h .. 17h ago
    assert decide(n, Preferences(), RULES, six, now).edges["ws"] == Outcome.SILENT_CAPPED
    assert decide(n, Preferences(), RULES, six[:5], now).edges == PUSHED
    assert decide(n, Preferences(), RULES, [*six[:5], now - DAY], now).edges == PUSHED
    mine = prefs(caps={"marketing": {"per_hour": 1, "per_day": 3}})
    assert decide(n, mine, RULES, six[:3], now).edges["ws"] == Outcome.SILENT_CAPPED
    assert decide(n, mine, RULES, [now - timedelta(minutes=5)], now).edges["ws"] == (
        Outcome.SILENT_CAPPED)
    assert decide(n, mine, RULES, six[:2], now).edges == PUSHED


def test_a_zero_cap_means_no_live_push() -> None:
    p = prefs(caps={"social": {"per_day": 0}})
    d = decide(Notice("social"), p, RULES, [], utc(2026, 6, 15, 12))
    assert d.edges["ws"] == Outcome.SILENT_CAPPED and d.inbox


def test_urgent_does_not_bypass_caps() -> None:
    now = utc(2026, 6, 15, 12)
    p = prefs(caps={"general": {"per_hour": 1}})
    d = decide(Notice("general", "urgent"), p, RULES, [now - timedelta(minutes=1)], now)
    assert d.edges["ws"] == Outcome.SILENT_CAPPED


@settings(max_examples=150, deadline=None)
@given(per_hour=st.integers(0, 4), per_day=st.integers(0, 10),
       gaps=st.lists(st.integers(1, 4 * 3600), min_size=1, max_size=120))
def test_a_rolling_cap_never_lets_more_than_n_through_in_any_window(
        per_hour: int, per_day: int, gaps: list[int]) -> None:
    """Attempts at random instants: in every window of an hour (a day) at most
    per_hour (per_day) pushes, and an attempt is only capped when a window
    ending at it is full (the cap never holds back more than it must)."""
    p = prefs(caps={"social": {"per_hour": per_hour, "per_day": per_day}})
    now = utc(2026, 6, 15)
    pushes: list[datetime] = []
    for gap in gaps:
        now += timedelta(seconds=gap)
        d = decide(Notice("social"), p, RULES, pushes, now)
        in_hour = sum(1 for t in pushes if now - HOUR < t)
        in_day = sum(1 for t in pushes if now - DAY < t)
        if d.pushed:
            pushes.append(now)
        else:
            assert d.edges["ws"] == Outcome.SILENT_CAPPED
            assert in_hour >= per_hour or in_day >= per_day
    for t in pushes:
        assert sum(1 for u in pushes if t - HOUR < u <= t) <= per_hour
        assert sum(1 for u in pushes if t - DAY < u <= t) <= per_day
