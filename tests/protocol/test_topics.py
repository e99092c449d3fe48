"""Topic names, filters, matching, grants and the subscription trie (MQTT 3.1.1 section 4.7).

Literal inputs, each named after the rule it checks; the trie is also checked
against :func:`matches` by a property test over a small alphabet, so any
filter/topic pair the trie gets wrong is found and shrunk to a short example.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.protocol.topics import (
    TopicError,
    Trie,
    covers,
    is_wildcard,
    matches,
    overlaps,
    private_owner,
    validate_filter,
    validate_topic,
)

# -- validate_topic / validate_filter ------------------------------------------


@pytest.mark.parametrize("topic", [
    "a", "news/sports", "/finance", "finance/", "/", "a//b", "$SYS/broker/uptime",
    "home/küche/temp", "emoji/\U0001f600", " spaced / level ",
])
def test_valid_topic_names(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("topic, reason", [
    ("", "empty"),  # [MQTT-4.7.3-1]
    ("a\x00b", "U\\+0000"),  # [MQTT-4.7.3-2]
    ("a/\ud800", "UTF-8"),  # a lone surrogate cannot be encoded [MQTT-1.5.3-1]
    ("a/\udfff/b", "UTF-8"),
    ("a/+", "wildcard"),  # [MQTT-3.3.2-2]
    ("a/#", "wildcard"),
    ("a+b", "wildcard"),
    ("#", "wildcard"),
])
def test_invalid_topic_names(topic: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason):
        validate_topic(topic)


@pytest.mark.parametrize("value", [None, 5, b"a/b", ["a"]])
def test_topic_must_be_a_string(value: object) -> None:
    with pytest.raises(TopicError, match="string"):
        validate_topic(value)
    with pytest.raises(TopicError, match="string"):
        validate_filter(value)


@pytest.mark.parametrize("flt", [
    "#", "+", "+/+", "/+", "+/", "a/#", "a/+/b", "a/+/#", "+/+/#", "$SYS/#", "/#", "a//#",
])
def test_valid_filters(flt: str) -> None:
    assert validate_filter(flt) == flt


@pytest.mark.parametrize("flt, reason", [
    ("", "empty"),  # [MQTT-4.7.3-1]
    ("a/\x00", "U\\+0000"),  # [MQTT-4.7.3-2]
    ("\ud83d/x", "UTF-8"),
    ("a/#/b", "'#'"),  # '#' must be last [MQTT-4.7.1-2]
    ("#/a", "'#'"),
    ("a#", "'#'"),  # '#' must be a whole level
    ("a/b#", "'#'"),
    ("a/#b", "'#'"),
    ("a+", "'\\+'"),  # '+' must be a whole level [MQTT-4.7.1-3]
    ("a/+b", "'\\+'"),
    ("sport+", "'\\+'"),
    ("++", "'\\+'"),
])
def test_invalid_filters(flt: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason):
        validate_filter(flt)


def test_max_length_counts_utf8_bytes_not_characters() -> None:
    assert validate_topic("a" * 10, max_length=10)
    with pytest.raises(TopicError, match="longer than 10 bytes"):
        validate_topic("a" * 11, max_length=10)
    # 'ü' is two bytes in UTF-8: five characters, ten bytes
    assert validate_topic("ü" * 5, max_length=10)
    with pytest.raises(TopicError, match="longer than 9 bytes"):
        validate_topic("ü" * 5, max_length=9)
    # a four-byte character
    with pytest.raises(TopicError, match="longer than 3 bytes"):
        validate_filter("\U0001f600", max_length=3)


def test_default_max_length_is_256_bytes() -> None:
    assert validate_topic("x" * 256)
    with pytest.raises(TopicError, match="256"):
        validate_topic("x" * 257)


def test_max_depth_counts_levels() -> None:
    assert validate_topic("a/b/c", max_depth=3)
    with pytest.raises(TopicError, match="deeper than 3 levels"):
        validate_topic("a/b/c/d", max_depth=3)
    # empty levels count: "/a/" is three levels
    with pytest.raises(TopicError, match="deeper than 2 levels"):
        validate_topic("/a/", max_depth=2)
    assert validate_filter("a/+/#", max_depth=3)
    with pytest.raises(TopicError, match="deeper than 2 levels"):
        validate_filter("a/+/#", max_depth=2)


def test_default_max_depth_is_16() -> None:
    assert validate_topic("/".join("l" * 16))
    with pytest.raises(TopicError, match="16"):
        validate_topic("/".join("l" * 17))


@pytest.mark.parametrize("flt, wild", [
    ("a/b", False), ("a/+", True), ("#", True), ("$SYS", False), ("a/+/b", True),
])
def test_is_wildcard(flt: str, wild: bool) -> None:
    assert is_wildcard(flt) is wild


# -- matches: the examples of MQTT 3.1.1 section 4.7 ---------------------------

# (filter, topic, expected) with the rule each row illustrates.
MATCH_CASES = [
    # 4.7.1.2 multi-level wildcard: "sport/tennis/player1/#"
    ("sport/tennis/player1/#", "sport/tennis/player1", True),  # '#' matches the parent
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/tennis/player1/#", "sport/tennis", False),
    ("sport/#", "sport", True),  # [MQTT-4.7.1-2] "sport/#" also matches "sport"
    ("#", "sport/tennis/player1", True),
    ("#", "/", True),
    # 4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player2", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # an empty level is a level
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    # exact names: case and level structure matter [MQTT-4.7.3-4]
    ("ACCOUNTS", "Accounts", False),
    ("/finance", "finance", False),
    ("finance", "/finance", False),
    ("a/b", "a/b/", False),
    ("a//b", "a//b", True),
    # 4.7.2 topics beginning with '$' [MQTT-4.7.2-1]
    ("#", "$SYS/broker/uptime", False),
    ("#", "$SYS", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS", "$SYS", True),
    ("a/#", "a/$x", True),  # '$' only matters in the first level
    ("a/+", "a/$x", True),
]


@pytest.mark.parametrize("flt, topic, expected", MATCH_CASES)
def test_matches(flt: str, topic: str, expected: bool) -> None:
    assert matches(flt, topic) is expected


@pytest.mark.parametrize("flt, topic, expected", MATCH_CASES)
def test_trie_agrees_with_matches_on_spec_examples(flt: str, topic: str, expected: bool) -> None:
    t: Trie[str] = Trie()
    t.add(flt, "s")
    assert t.match(topic) == ({"s"} if expected else set())


# -- covers: a grant is never widened by a wildcard in the request --------------

@pytest.mark.parametrize("grant, flt, expected", [
    ("a/b", "a/b", True),
    ("a/b", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/+", True),
    ("a/#", "a/+", True),
    ("a/#", "a/b/c", True),
    ("a/#", "a/#", True),
    ("a/#", "a", True),  # "a/#" matches "a", so it covers a request for "a"
    ("#", "anything/at/all", True),
    ("#", "#", True),
    ("#", "+/x", True),
    # '+' in the request is covered only by '+' or '#'
    ("a/b", "a/+", False),
    ("a/+", "a/+/c", False),
    ("+/b", "+/b", True),
    ("x/b", "+/b", False),
    # '#' in the request only by '#'
    ("a/+", "a/#", False),
    ("a/+/#", "a/#", False),
    ("a/b/#", "a/#", False),
    ("a/b", "a/b/#", False),
    ("a/+", "a", False),
    ("a", "a/b", False),
    ("a/b/c", "a/b", False),
    # '$' topics are not covered by a leading wildcard [MQTT-4.7.2-1]
    ("#", "$SYS/x", False),
    ("#", "$SYS/#", False),
    ("+/x", "$SYS/x", False),
    ("+/#", "$SYS/#", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS/#", True),
    ("$SYS/+", "$SYS/x", True),
])
def test_covers(grant: str, flt: str, expected: bool) -> None:
    assert covers(grant, flt) is expected


@given(st.sampled_from(["a/b", "a/+", "a/#", "+/b", "#", "+", "a", "+/+", "$S/b", "a/b/c"]),
       st.lists(st.sampled_from(["a", "b", "c", "$S", ""]), min_size=1, max_size=4))
def test_covers_implies_every_matched_topic_is_granted(grant: str, levels: list[str]) -> None:
    """Soundness: if ``grant`` covers ``flt`` then any topic ``flt`` matches, ``grant`` matches."""
    topic = "/".join(levels)
    for flt in ("a/b", "a/+", "a/#", "+/b", "#", "+", "+/+", "$S/b", "$S/#", topic):
        if covers(grant, flt) and matches(flt, topic):
            assert matches(grant, topic), (grant, flt, topic)


# -- overlaps: some topic is matched by both filters (used for denials) -----------

@pytest.mark.parametrize("a, b, expected", [
    ("secret/#", "#", True),
    ("secret/#", "+/plans", True),
    ("secret/#", "secret", True),  # both match "secret"
    ("secret/#", "+/+/+", True),
    ("secret/#", "secrets/#", False),
    ("secret/a", "secret/b", False),
    ("a/+", "+/b", True),  # a/b
    ("a/+", "a", False),
    ("a/+", "a/+/c", False),
    ("a/+/#", "a", False),
    ("a/#", "a", True),
    ("a/b/#", "a", False),
    ("#", "$SYS/#", False),  # [MQTT-4.7.2-1]
    ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/+", True),
    ("#", "/", True),
])
def test_overlaps(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


def _short_filter(levels: list[str], hash_last: bool) -> str:
    if hash_last:
        levels = [*levels[:-1], "#"]
    return "/".join(levels)


_FILTER3 = st.builds(_short_filter,
                     st.lists(st.sampled_from(["a", "", "$x", "+"]), min_size=1, max_size=3),
                     st.booleans())
# every topic of up to 4 levels over the filters' literals plus one they never name
_UNIVERSE = ["/".join(p) for n in range(1, 5)
             for p in itertools.product(["a", "", "$x", "z"], repeat=n)]


@settings(max_examples=200, deadline=None)
@given(_FILTER3, _FILTER3)
def test_overlaps_equals_a_common_topic(a: str, b: str) -> None:
    witness = any(matches(a, t) and matches(b, t) for t in _UNIVERSE)
    assert overlaps(a, b) is witness


# -- private_owner ---------------------------------------------------------------

@pytest.mark.parametrize("topic, owner", [
    ("users/alice/notifications", "alice"),
    ("users/alice", "alice"),
    ("users/alice/", "alice"),
    ("users/bob/a/b/c", "bob"),
    ("users//x", None),  # no user id
    ("users/", None),
    ("users", None),
    ("user/alice/x", None),
    ("xusers/alice", None),
    ("news/users/alice", None),
    ("/users/alice", None),
])
def test_private_owner(topic: str, owner: str | None) -> None:
    assert private_owner(topic) == owner


# -- Trie ------------------------------------------------------------------------


def test_trie_exact_and_wildcard_match() -> None:
    t: Trie[str] = Trie()
    t.add("news/sports", "exact")
    t.add("news/+", "plus")
    t.add("news/#", "hash")
    t.add("#", "all")
    t.add("other", "other")
    assert t.match("news/sports") == {"exact", "plus", "hash", "all"}
    assert t.match("news/weather") == {"plus", "hash", "all"}
    assert t.match("news/sports/live") == {"hash", "all"}
    assert t.match("news") == {"hash", "all"}  # '#' matches the parent level
    assert t.match("other") == {"other", "all"}
    assert t.match("nothing/here") == {"all"}
    assert len(t) == 5


def test_trie_value_matched_by_several_filters_appears_once() -> None:
    t: Trie[str] = Trie()
    for flt in ("a/b", "a/+", "+/b", "#", "a/#"):
        t.add(flt, "s")
    assert t.match("a/b") == {"s"}
    assert len(t) == 5  # one per (filter, value)


def test_trie_duplicate_add_counts_once_and_one_remove_undoes_it() -> None:
    t: Trie[str] = Trie()
    for _ in range(3):
        t.add("a/b", "s")
        t.add("a/+", "s")
        t.add("a/#", "s")
    assert len(t) == 3
    t.remove("a/b", "s")
    t.remove("a/+", "s")
    t.remove("a/#", "s")
    assert len(t) == 0
    assert t.match("a/b") == set()


def test_trie_remove_only_the_named_pair() -> None:
    t: Trie[str] = Trie()
    t.add("a/+", "s1")
    t.add("a/+", "s2")
    t.add("a/+/c", "s1")
    t.remove("a/+", "s1")
    assert t.match("a/b") == {"s2"}
    assert t.match("a/b/c") == {"s1"}
    assert len(t) == 2


def test_trie_remove_unknown_is_a_no_op() -> None:
    t: Trie[str] = Trie()
    t.add("a/+", "s")
    t.add("x", "s")
    t.remove("a/+", "other")
    t.remove("a/#", "s")
    t.remove("b/+/c", "s")
    t.remove("x", "other")
    t.remove("y", "s")
    assert len(t) == 2
    assert t.match("a/b") == {"s"}
    assert t.match("x") == {"s"}


def test_trie_prunes_after_removal() -> None:
    t: Trie[int] = Trie()
    filters = ["a/b/c", "a/+/c", "a/+/+/d/#", "+", "#", "a/#", "+/+/+", "$SYS/#", "a//#"]
    for i, flt in enumerate(filters):
        t.add(flt, i)
    assert len(t) == len(filters)
    for i, flt in enumerate(filters):
        t.remove(flt, i)
    assert len(t) == 0
    for topic in ("a/b/c", "a", "a/x/y/d", "$SYS/x", "a//z"):
        assert t.match(topic) == set()
    assert list(t.filters()) == []
    # nothing left behind: the root has no children and no values
    assert not t._root.children and not t._root.values and not t._root.hash_values
    assert not t._exact


def test_trie_keeps_a_branch_still_in_use_when_pruning() -> None:
    t: Trie[str] = Trie()
    t.add("a/+/c/d", "deep")
    t.add("a/+", "short")
    t.remove("a/+/c/d", "deep")
    assert t.match("a/x") == {"short"}
    assert t.match("a/x/c/d") == set()
    t.add("a/+/c/#", "hash")
    t.remove("a/+", "short")
    assert t.match("a/x/c") == {"hash"}
    assert t.match("a/x") == set()


def test_trie_dollar_topics_not_matched_by_leading_wildcards() -> None:
    t: Trie[str] = Trie()
    t.add("#", "hash")
    t.add("+/uptime", "plus")
    t.add("+", "plus1")
    t.add("$SYS/#", "sys")
    t.add("$SYS/+", "sysplus")
    assert t.match("$SYS/uptime") == {"sys", "sysplus"}  # [MQTT-4.7.2-1]
    assert t.match("$SYS") == {"sys"}
    assert t.match("x/uptime") == {"hash", "plus"}
    assert t.match("x") == {"hash", "plus1"}


def test_trie_filters_lists_every_subscribed_filter() -> None:
    t: Trie[str] = Trie()
    filters = {"a/b", "a/+", "a/#", "#", "+", "x/+/y/#", "/"}
    for flt in filters:
        t.add(flt, "s")
    assert set(t.filters()) == filters


# -- property: the trie agrees with matches() --------------------------------------

_LEVEL = st.sampled_from(["a", "b", "", "$x"])
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def _filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "", "$x", "+"]), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels[-1] = "#"
    flt = "/".join(levels)
    return flt or "a"  # the empty filter is invalid [MQTT-4.7.3-1]


@settings(max_examples=300, deadline=None)
@given(subs=st.lists(st.tuples(_filters(), st.integers(0, 5)), max_size=12),
       removed=st.lists(st.integers(0, 11), max_size=6),
       topics=st.lists(_TOPIC, min_size=1, max_size=8))
def test_trie_match_equals_brute_force(subs: list[tuple[str, int]], removed: list[int],
                                       topics: list[str]) -> None:
    t: Trie[int] = Trie()
    for flt, v in subs:
        validate_filter(flt)
        t.add(flt, v)
    live = set(subs)
    for i in removed:
        if i < len(subs):
            t.remove(*subs[i])
            live.discard(subs[i])
    assert len(t) == len(live)
    for topic in topics:
        assert t.match(topic) == {v for (f, v) in live if matches(f, topic)}, topic


def _assert_compact(t: Trie[int]) -> None:
    """Every node below the root holds subscribers or is a fork: a run of levels
    without either is one node (what keeps deep filters cheap)."""
    stack = list((t._root.children or {}).values())
    while stack:
        node = stack.pop()
        forks = len(node.children or {})
        assert node.values or node.hash_values or forks >= 2, node.rest
        stack.extend((node.children or {}).values())


@settings(max_examples=300, deadline=None)
@given(subs=st.lists(st.tuples(_filters(), st.integers(0, 3)), max_size=12),
       removed=st.lists(st.integers(0, 11), max_size=8))
def test_trie_stays_compact_and_lists_its_filters(subs: list[tuple[str, int]],
                                                  removed: list[int]) -> None:
    t: Trie[int] = Trie()
    for flt, v in subs:
        t.add(flt, v)
    _assert_compact(t)
    live = set(subs)
    for i in removed:
        if i < len(subs):
            t.remove(*subs[i])
            live.discard(subs[i])
            _assert_compact(t)
    assert set(t.filters()) == {f for f, _ in live}


def test_trie_deep_filters_share_one_node_per_run() -> None:
    """256 deep wildcard filters (the hostile probe's shape) cost one node each."""
    t: Trie[int] = Trie()
    for i in range(256):
        t.add(f"a/f{i}/" + "/".join(["+", "x"] * 6) + "/l/#", i)
    fork = t._root.children["a"] if t._root.children else None
    assert fork is not None and len(fork.children or {}) == 256
    assert all(not c.children for c in (fork.children or {}).values())
    assert t.match("a/f7/" + "/".join(["q", "x"] * 6) + "/l/z") == {7}
