"""Schedule times (issue 12, scope 4): send_at, send_at_local across zones and DST, best_time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.errors import BadRequest
from tidings.schedule import best_time, local_fire_time, parse_send_at, parse_send_at_local

NY = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0, microsecond: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


@pytest.mark.parametrize(("text", "when"), [
    ("2026-12-24T09:00:00Z", utc(2026, 12, 24, 9)),
    ("2026-12-24t09:00:00z", utc(2026, 12, 24, 9)),
    ("2026-12-24 09:00:00Z", utc(2026, 12, 24, 9)),
    ("2026-12-24T09:00:00+08:00", utc(2026, 12, 24, 1)),
    ("2026-12-24T09:00:00-05:30", utc(2026, 12, 24, 14, 30)),
    ("2026-12-24T09:00:00.5Z", utc(2026, 12, 24, 9, 0, 0, 500000)),
    ("2026-12-24T09:00:00.123456789Z", utc(2026, 12, 24, 9, 0, 0, 123456)),
    ("2026-12-31T23:30:00-01:00", utc(2027, 1, 1, 0, 30)),
])
def test_send_at_is_rfc_3339(text: str, when: datetime) -> None:
    got = parse_send_at(text)
    assert got == when and got.tzinfo is UTC


@pytest.mark.parametrize("text", [
    "2026-12-24T09:00:00",         # no offset: which zone?
    "2026-12-24",
    "09:00",
    "tomorrow",
    "2026-12-24T9:00:00Z",
    "2026-02-30T09:00:00Z",        # no such day
    "2026-12-24T24:00:00Z",
    "2026-12-24T09:00:60Z",        # leap second: not representable
    "2026-12-24T09:00:00+24:00",   # offset out of range
    "2026-12-24T09:00:00.Z",
    " 2026-12-24T09:00:00Z",
    5,
    None,
])
def test_bad_send_at_is_refused_naming_the_field(text: Any) -> None:
    with pytest.raises(BadRequest) as e:
        parse_send_at(text)
    assert e.value.message.startswith("send_at: ")


def test_send_at_local_is_the_next_wall_time_in_each_users_zone() -> None:
    nine = parse_send_at_local("09:00")
    now = utc(2026, 6, 15, 12)  # New York 08:00 EDT, Shanghai 20:00
    assert local_fire_time(nine, NY, now) == utc(2026, 6, 15, 13)        # today 09:00 EDT
    assert local_fire_time(nine, SHANGHAI, now) == utc(2026, 6, 16, 1)   # tomorrow 09:00
    assert local_fire_time(nine, KOLKATA, now) == utc(2026, 6, 16, 3, 30)
    # at exactly 09:00 it is due now; a second later, tomorrow
    assert local_fire_time(nine, NY, utc(2026, 6, 15, 13)) == utc(2026, 6, 15, 13)
    assert local_fire_time(nine, NY, utc(2026, 6, 15, 13, 0, 1)) == utc(2026, 6, 16, 13)
    assert local_fire_time(parse_send_at_local("09:00:30"), NY, now) == utc(2026, 6, 15, 13, 0, 30)


def test_send_at_local_with_a_date() -> None:
    when = parse_send_at_local("2026-12-24T09:00")
    now = utc(2026, 6, 15)
    assert local_fire_time(when, NY, now) == utc(2026, 12, 24, 14)       # EST
    assert local_fire_time(when, SHANGHAI, now) == utc(2026, 12, 24, 1)
    # already past in the user's zone: that instant, the caller fires it at once
    assert local_fire_time(when, SHANGHAI, utc(2026, 12, 24, 2)) == utc(2026, 12, 24, 1)
    assert local_fire_time(parse_send_at_local("2026-12-24 09:00:15"), SHANGHAI, now) == utc(
        2026, 12, 24, 1, 0, 15)


def test_send_at_local_across_dst_changes() -> None:
    nine = parse_send_at_local("09:00")
    # New York 2026-03-08 spring forward: 09:00 is EDT (13:00 UTC), the day before EST
    assert local_fire_time(nine, NY, utc(2026, 3, 7, 15)) == utc(2026, 3, 8, 13)
    assert local_fire_time(nine, NY, utc(2026, 3, 7, 12)) == utc(2026, 3, 7, 14)
    # 2026-11-01 fall back: 09:00 is EST again (14:00 UTC)
    assert local_fire_time(nine, NY, utc(2026, 10, 31, 14)) == utc(2026, 11, 1, 14)


def test_send_at_local_in_a_dst_gap_fires_the_gap_later() -> None:
    # 02:30 does not exist in New York on 2026-03-08: it fires at 03:30 EDT
    gap = parse_send_at_local("02:30")
    assert local_fire_time(gap, NY, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7, 30)
    assert local_fire_time(parse_send_at_local("2026-03-08T02:30"), NY,
                           utc(2026, 1, 1)) == utc(2026, 3, 8, 7, 30)


def test_send_at_local_in_a_dst_overlap_fires_at_the_first() -> None:
    # 01:30 happens twice in New York on 2026-11-01: 05:30 UTC (EDT), then 06:30 UTC (EST)
    twice = parse_send_at_local("01:30")
    assert local_fire_time(twice, NY, utc(2026, 11, 1, 4)) == utc(2026, 11, 1, 5, 30)
    # during the second 01:30 hour, the first has passed: the next day's 01:30 EST
    assert local_fire_time(twice, NY, utc(2026, 11, 1, 6, 40)) == utc(2026, 11, 2, 6, 30)


@pytest.mark.parametrize("text", [
    "9:00", "09:00Z", "09:00+08:00", "24:00", "09:60", "2026-13-01T09:00",
    "2026-12-24T09:00:00Z", "2026-12-24", "09:00:61", "", 900, None,
])
def test_bad_send_at_local_is_refused_naming_the_field(text: Any) -> None:
    with pytest.raises(BadRequest) as e:
        parse_send_at_local(text)
    assert e.value.message.startswith("send_at_local: ")


# --- best_time ---------------------------------------------------------------

def test_best_time_without_history_is_now() -> None:
    now = utc(2026, 6, 15, 12, 34)
    assert best_time([], SHANGHAI, now) == now
    # only history older than 30 days, or from the future: none
    old = [now - timedelta(days=31), now + timedelta(hours=1)]
    assert best_time(old, SHANGHAI, now) == now


def test_best_time_is_the_next_busiest_local_hour() -> None:
    now = utc(2026, 6, 15, 4)  # Shanghai 12:00
    # opened at Shanghai 20:xx on 3 days, at 08:xx on 2 days
    engaged = ([utc(2026, 6, d, 12, 15) for d in (10, 11, 12)]
               + [utc(2026, 6, d, 0, 40) for d in (13, 14)])
    assert best_time(engaged, SHANGHAI, now) == utc(2026, 6, 15, 12)   # 20:00 today
    # the same instants for a user in New York: 08:xx EDT (3) beats 20:xx (2)
    assert best_time(engaged, NY, now) == utc(2026, 6, 15, 12)         # 08:00 EDT today
    # inside the busiest hour already: now
    inside = utc(2026, 6, 15, 12, 30)
    assert best_time(engaged, SHANGHAI, inside) == inside
    # just after it: tomorrow's
    assert best_time(engaged, SHANGHAI, utc(2026, 6, 15, 13)) == utc(2026, 6, 16, 12)


def test_best_time_ties_go_to_the_sooner_hour() -> None:
    now = utc(2026, 6, 15, 4)  # Shanghai 12:00
    engaged = [utc(2026, 6, 14, 1), utc(2026, 6, 14, 10)]  # Shanghai 09:00 and 18:00
    assert best_time(engaged, SHANGHAI, now) == utc(2026, 6, 15, 10)  # 18:00 today


@settings(max_examples=200, deadline=None)
@given(offsets=st.lists(st.integers(1, 30 * 86400 - 1), max_size=40),
       start=st.integers(0, 365 * 86400),
       zone=st.sampled_from(["America/New_York", "Asia/Shanghai", "Europe/Paris",
                             "Asia/Kolkata", "Australia/Lord_Howe"]))
def test_best_time_is_within_a_day_in_the_busiest_hour(
        offsets: list[int], start: int, zone: str) -> None:
    tz = ZoneInfo(zone)
    now = utc(2026, 1, 1) + timedelta(seconds=start)
    engaged = [now - timedelta(seconds=s) for s in offsets]
    fire = best_time(engaged, tz, now)
    # within the next day (25 h across a fall-back night)
    assert now <= fire <= now + timedelta(hours=25)
    if not engaged:
        assert fire == now
        return
    counts: dict[int, int] = {}
    for t in engaged:
        h = t.astimezone(tz).hour
        counts[h] = counts.get(h, 0) + 1
    local = fire.astimezone(tz)
    if counts.get(local.hour) != max(counts.values()):
        # only when the busiest hour's start was skipped by a DST change that day
        skipped = [h for h, n in counts.items() if n == max(counts.values())
                   and not _exists(local.replace(hour=h, minute=0, second=0, microsecond=0,
                                                 tzinfo=None), tz)]
        assert skipped, (fire, counts)


def _exists(wall: datetime, tz: ZoneInfo) -> bool:
    return wall.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == wall


def test_best_time_when_the_busiest_hour_is_skipped_by_dst() -> None:
    # opened at New York 02:xx; on 2026-03-08 02:00 does not exist: 03:00 EDT
    engaged = [utc(2026, 3, d, 7, 15) for d in (1, 2, 3)]
    assert best_time(engaged, NY, utc(2026, 3, 8, 5)) == utc(2026, 3, 8, 7)
