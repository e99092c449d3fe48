"""User preferences (issue 12, scope 3): validation, PUT vs PATCH, the operator's settings."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest

from tidings import config
from tidings.errors import BadRequest
from tidings.preferences import (
    Cap,
    CategoryPreference,
    Preferences,
    QuietHours,
    Rules,
    check_category,
    halve_cap,
    merge,
    merge_patch,
    parse,
)

RULES = Rules.default()

FULL = {
    "timezone": "Asia/Shanghai",
    "locale": "zh-CN",
    "categories": {"marketing": {"enabled": False}, "social": {"edges": ["ws"]}},
    "quiet_hours": {"start": "22:00", "end": "07:00", "days": ["mon", "fri"]},
    "caps": {"marketing": {"per_hour": 1, "per_day": 3}},
}


def test_the_issue_document_parses_and_round_trips() -> None:
    p = parse(FULL, RULES)
    assert p.timezone == "Asia/Shanghai"
    assert p.locale == "zh-CN"
    assert p.categories == {"marketing": CategoryPreference(enabled=False),
                            "social": CategoryPreference(edges=frozenset({"ws"}))}
    assert p.quiet_hours == QuietHours(time(22), time(7), frozenset({0, 4}))
    assert p.caps == {"marketing": Cap(1, 3)}
    assert p.to_dict() == FULL
    assert parse(p.to_dict(), RULES) == p


def test_edges_may_name_the_platform_channels() -> None:
    doc = {"categories": {"social": {"edges": ["apns", "ws", "webpush"]},
                          "digest": {"edges": ["fcm"]}}}
    p = parse(doc, RULES)
    assert p.category("social").edges == frozenset({"ws", "webpush", "apns"})
    # stored in one order (live edges, then the platforms)
    assert p.to_dict()["categories"] == {"social": {"edges": ["ws", "webpush", "apns"]},
                                         "digest": {"edges": ["fcm"]}}
    assert parse(p.to_dict(), RULES) == p


def test_empty_document_is_a_user_who_set_nothing() -> None:
    p = parse({}, RULES)
    assert p == Preferences()
    assert p.to_dict() == {}
    assert p.zone(RULES).key == "UTC"
    assert p.category("marketing") == CategoryPreference()


def test_effective_cap_is_the_lower_of_user_and_operator() -> None:
    assert Preferences().cap("marketing", RULES) == Cap(2, 6)       # operator default
    assert parse(FULL, RULES).cap("marketing", RULES) == Cap(1, 3)  # the user lowered both
    p = parse({"caps": {"marketing": {"per_day": 4}}}, RULES)
    assert p.cap("marketing", RULES) == Cap(2, 4)
    # no operator cap on social: the user's is the only one
    assert parse({"caps": {"social": {"per_hour": 50}}}, RULES).cap("social", RULES) == Cap(50)
    assert Preferences().cap("social", RULES) == Cap()


BAD: list[tuple[dict[str, Any], str]] = [
    ({"timezone": "Mars/Olympus"}, "timezone: "),
    ({"timezone": "../../etc/passwd"}, "timezone: "),
    ({"timezone": 5}, "timezone: "),
    ({"locale": "not a tag"}, "locale: "),
    ({"locale": "x" * 40}, "locale: "),
    ({"colour": "red"}, "colour: "),
    ({"categories": []}, "categories: "),
    ({"categories": {"news": {}}}, "categories.news: "),
    ({"categories": {"social": {"enabled": "no"}}}, "categories.social.enabled: "),
    ({"categories": {"social": {"edges": ["sms"]}}}, "categories.social.edges: "),
    ({"categories": {"social": {"edges": "ws"}}}, "categories.social.edges: "),
    ({"categories": {"social": {"edges": ["ws", "gcm"]}}}, "categories.social.edges: "),
    ({"categories": {"social": {"mute": True}}}, "categories.social.mute: "),
    ({"categories": {"security": {"enabled": False}}}, "categories.security: "),
    ({"categories": {"transactional": {"edges": []}}}, "categories.transactional: "),
    ({"quiet_hours": "22-7"}, "quiet_hours: "),
    ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end: "),
    ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start: "),
    ({"quiet_hours": {"start": "22:00", "end": "7:00"}}, "quiet_hours.end: "),
    ({"quiet_hours": {"start": "22:00", "end": "07:60"}}, "quiet_hours.end: "),
    ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours.end: "),
    ({"quiet_hours": {"start": "22:00", "end": "07:00", "days": ["funday"]}},
     "quiet_hours.days: "),
    ({"quiet_hours": {"start": "22:00", "end": "07:00", "days": []}}, "quiet_hours.days: "),
    ({"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "UTC"}}, "quiet_hours.tz: "),
    ({"caps": {"marketing": {"per_hour": 3}}}, "caps.marketing.per_hour: "),
    ({"caps": {"marketing": {"per_day": 7}}}, "caps.marketing.per_day: "),
    ({"caps": {"marketing": {"per_day": -1}}}, "caps.marketing.per_day: "),
    ({"caps": {"marketing": {"per_day": 1.5}}}, "caps.marketing.per_day: "),
    ({"caps": {"marketing": {"per_day": True}}}, "caps.marketing.per_day: "),
    ({"caps": {"marketing": {"per_week": 1}}}, "caps.marketing.per_week: "),
    ({"caps": {"security": {"per_day": 1}}}, "caps.security: "),
    ({"caps": {"news": {"per_day": 1}}}, "caps.news: "),
]


@pytest.mark.parametrize(("doc", "prefix"), BAD)
def test_bad_preferences_are_refused_naming_the_field(doc: dict[str, Any], prefix: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse(doc, RULES)
    assert e.value.message.startswith(prefix), e.value.message
    assert e.value.status == 400


def test_a_cap_above_the_operators_says_so() -> None:
    with pytest.raises(BadRequest) as e:
        parse({"caps": {"marketing": {"per_hour": 3}}}, RULES)
    assert "above the operator's cap of 2" in e.value.message


def test_a_huge_or_deep_bad_value_gives_a_short_message() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    for doc in ({"locale": deep}, {"timezone": "A" * 100_000}):
        with pytest.raises(BadRequest) as e:
            parse(doc, RULES)
        assert len(e.value.message) < 200


def test_put_replaces_and_patch_merges() -> None:
    current = parse(FULL, RULES)
    # PUT: what is not given is gone
    assert parse({"locale": "en"}, RULES).to_dict() == {"locale": "en"}
    # PATCH: objects merge key by key, null removes, values replace
    patched = merge(current, {"locale": "en", "timezone": None,
                              "categories": {"marketing": None, "digest": {"enabled": False}},
                              "quiet_hours": {"days": None}}, RULES)
    assert patched.to_dict() == {
        "locale": "en",
        "categories": {"social": {"edges": ["ws"]}, "digest": {"enabled": False}},
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "caps": {"marketing": {"per_hour": 1, "per_day": 3}},
    }
    # a patch that makes the document invalid is refused, naming the field
    with pytest.raises(BadRequest) as e:
        merge(current, {"quiet_hours": {"end": "22:00"}}, RULES)
    assert e.value.message.startswith("quiet_hours.end: ")
    with pytest.raises(BadRequest) as e:
        merge(current, {"caps": {"marketing": {"per_day": 9}}}, RULES)
    assert e.value.message.startswith("caps.marketing.per_day: ")
    with pytest.raises(BadRequest):
        merge(current, ["locale"], RULES)


def test_merge_patch_is_rfc_7396() -> None:
    # RFC 7396 appendix A, a selection
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}
    target = {"a": {"b": 1}}
    merge_patch(target, {"a": {"b": 2}})
    assert target == {"a": {"b": 1}}


def test_a_deep_patch_is_refused_without_recursion() -> None:
    deep: Any = {}
    for _ in range(100_000):
        deep = {"caps": deep}
    with pytest.raises(BadRequest):
        merge(Preferences(), deep, RULES)


def test_operator_rules_come_from_the_config(tmp_path: Any) -> None:
    env = {"TIDINGS_PREFERENCES_CATEGORIES": "general,news,promo",
           "TIDINGS_PREFERENCES_ALWAYS_ON": "news",
           "TIDINGS_PREFERENCES_QUIET_HOURS_SILENT": "promo",
           "TIDINGS_PREFERENCES_URGENT_BYPASS": "news",
           "TIDINGS_PREFERENCES_CAPS": "promo per_day=2,general per_hour=10",
           "TIDINGS_PREFERENCES_DEFAULT_TIMEZONE": "America/New_York"}
    rules = Rules.from_settings(config.load(None, env).preferences)
    assert rules.categories == ("general", "news", "promo")
    assert rules.caps == {"promo": {"per_day": 2}, "general": {"per_hour": 10}}
    assert rules.default_zone.key == "America/New_York"
    with pytest.raises(BadRequest) as e:
        parse({"categories": {"news": {"enabled": False}}}, rules)
    assert e.value.message.startswith("categories.news: ")
    with pytest.raises(BadRequest) as e:
        parse({"categories": {"marketing": {"enabled": False}}}, rules)
    assert e.value.message.startswith("categories.marketing: ")


@pytest.mark.parametrize(("env", "key"), [
    ({"TIDINGS_PREFERENCES_CATEGORIES": "news"}, "preferences.categories"),
    ({"TIDINGS_PREFERENCES_CATEGORIES": "general,Bad Name"}, "preferences.categories"),
    ({"TIDINGS_PREFERENCES_ALWAYS_ON": "nope"}, "preferences.always_on"),
    ({"TIDINGS_PREFERENCES_QUIET_HOURS_SILENT": "nope"}, "preferences.quiet_hours_silent"),
    ({"TIDINGS_PREFERENCES_URGENT_BYPASS": "nope"}, "preferences.urgent_bypass"),
    ({"TIDINGS_PREFERENCES_CAPS": "marketing"}, "preferences.caps[0]"),
    ({"TIDINGS_PREFERENCES_CAPS": "marketing per_hour=x"}, "preferences.caps[0]"),
    ({"TIDINGS_PREFERENCES_CAPS": "marketing per_week=1"}, "preferences.caps[0]"),
    ({"TIDINGS_PREFERENCES_CAPS": "marketing per_day=1,marketing per_day=2"},
     "preferences.caps[1]"),
    ({"TIDINGS_PREFERENCES_CAPS": "nope per_day=1"}, "preferences.caps"),
    ({"TIDINGS_PREFERENCES_DEFAULT_TIMEZONE": "Mars/Olympus"},
     "preferences.default_timezone"),
    ({"TIDINGS_NOTIFY_MAX_TEMPLATES": "-1"}, "notify.max_templates"),
    ({"TIDINGS_NOTIFY_MAX_PLACEHOLDERS": "-1"}, "notify.max_placeholders"),
])
def test_bad_operator_settings_stop_the_start_naming_the_key(
        env: dict[str, str], key: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.load(None, env)
    assert str(e.value).startswith(f"{key}: "), str(e.value)


def test_a_notifications_category_is_one_of_the_operators() -> None:
    assert check_category(None, RULES) == "general"
    assert check_category("marketing", RULES) == "marketing"
    for bad in ("news", 5, ["general"]):
        with pytest.raises(BadRequest) as e:
            check_category(bad, RULES)
        assert e.value.message.startswith("category: ")


# -- too_many feedback (issue 13) ------------------------------------------------------


@pytest.mark.parametrize(("mine", "want"), [
    (None, Cap(1, 3)),  # the operator's marketing cap (2 an hour, 6 a day), halved
    (Cap(per_day=4), Cap(1, 2)),  # the lower of the user's and the operator's
    (Cap(1, 1), Cap(1, 1)),  # never below 1
    (Cap(0, 0), Cap(0, 0)),  # a cap of 0 is not raised
])
def test_halve_cap_halves_the_cap_in_force(mine: Cap | None, want: Cap) -> None:
    current = Preferences(caps={} if mine is None else {"marketing": mine})
    halved = halve_cap(current, "marketing", RULES, 10)
    assert halved is not None and halved.caps["marketing"] == want
    assert parse(halved.to_dict(), RULES) == halved  # the result is a valid document


def test_halve_cap_of_an_uncapped_or_uncappable_category() -> None:
    assert halve_cap(Preferences(), "social", RULES, 10) == Preferences(
        caps={"social": Cap(per_day=5)})
    assert halve_cap(Preferences(), "social", RULES, 1) == Preferences(
        caps={"social": Cap(per_day=1)})
    kept = Preferences(locale="fr", caps={"marketing": Cap(per_hour=1)})
    assert halve_cap(kept, "social", RULES, 10) == Preferences(
        locale="fr", caps={"marketing": Cap(per_hour=1), "social": Cap(per_day=5)})
    assert halve_cap(Preferences(), "transactional", RULES, 10) is None  # always_on
    assert halve_cap(Preferences(), "unknown", RULES, 10) is None


def test_feedback_cap_per_day_must_be_positive() -> None:
    with pytest.raises(config.ConfigError, match="feedback_cap_per_day"):
        config.load(None, env={"TIDINGS_PREFERENCES_FEEDBACK_CAP_PER_DAY": "0"})
