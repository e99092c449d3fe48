"""Tokens, API keys and the ACL: who may connect, subscribe and publish where.

Time is a fake clock handed to :class:`TokenAuthority`; tokens with hostile
headers or claims are built by hand (base64url + HMAC) so each test shows
exactly what an attacker would send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tidings.auth import (
    Acl,
    ApiKeys,
    Principal,
    Screens,
    TokenAuthority,
    guarded,
    merge_screens,
    screened,
)
from tidings.config import AclRule
from tidings.errors import BadRequest, Unauthorized
from tidings.protocol.topics import matches
from tidings.types import UserId

SECRET = "unit-test-secret-" + "0123456789abcdef" * 3  # 65 bytes: long enough for HS512
T0 = 1_700_000_000.0


class Clock:
    """A fake clock: ``now`` seconds since the epoch, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> TokenAuthority:
    return TokenAuthority(SECRET, max_ttl=86400, default_ttl=3600, clock=clock)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], secret: str | None = SECRET,
          digest: Any = hashlib.sha256) -> str:
    """A JWT with any header, signed with HMAC(``digest``) or unsigned (secret None)."""
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    sig = "" if secret is None else _b64(
        hmac.new(secret.encode(), signing_input.encode(), digest).digest())
    return f"{signing_input}.{sig}"


def _claims(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "iat": int(T0), "exp": int(T0) + 60}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


HS256 = {"alg": "HS256", "typ": "JWT"}


def _code(tokens: TokenAuthority, token: object) -> str:
    with pytest.raises(Unauthorized) as info:
        tokens.verify(token)
    assert info.value.close_code == 4001 and info.value.status == 401
    return info.value.code


# -- TokenAuthority -------------------------------------------------------------------


def test_issue_verify_round_trip(tokens: TokenAuthority) -> None:
    p = tokens.verify(tokens.issue("alice"))
    assert p == Principal(UserId("alice"), None, None, T0 + 3600)


def test_round_trip_with_grants_and_ttl(tokens: TokenAuthority) -> None:
    t = tokens.issue("bob", ttl=60, subscribe=["news/#", "chat/+"], publish=[])
    p = tokens.verify(t)
    assert p.user == "bob"
    assert p.subscribe == ("news/#", "chat/+")
    assert p.publish == ()  # an empty claim grants nothing; it is not "no claim"
    assert p.expires == T0 + 60


def test_issued_token_is_hs256_with_sub_iat_exp(tokens: TokenAuthority) -> None:
    t = tokens.issue("alice", ttl=60)
    assert jwt.get_unverified_header(t)["alg"] == "HS256"
    assert jwt.decode(t, options={"verify_signature": False}) == {
        "sub": "alice", "iat": int(T0), "exp": int(T0) + 60}


def test_token_expires_by_the_authority_clock(tokens: TokenAuthority, clock: Clock) -> None:
    t = tokens.issue("alice", ttl=60)
    clock.now = T0 + 59
    assert tokens.verify(t).user == "alice"
    clock.now = T0 + 60  # exp is the first instant the token is no longer valid
    assert _code(tokens, t) == "token_expired"
    clock.now = T0 + 10_000
    assert _code(tokens, t) == "token_expired"


def test_forged_expired_token(tokens: TokenAuthority) -> None:
    t = forge(HS256, _claims(iat=int(T0) - 120, exp=int(T0) - 60))
    assert _code(tokens, t) == "token_expired"


def test_token_not_yet_valid_is_invalid(tokens: TokenAuthority) -> None:
    assert _code(tokens, forge(HS256, _claims(nbf=int(T0) + 30))) == "token_invalid"
    assert tokens.verify(forge(HS256, _claims(nbf=int(T0) - 30))).user == "alice"


@pytest.mark.parametrize("token", [None, "", 5])
def test_missing_token(tokens: TokenAuthority, token: object) -> None:
    assert _code(tokens, token) == "token_missing"


def test_wrong_secret(tokens: TokenAuthority) -> None:
    other = TokenAuthority("another-secret-" + "0123456789abcdef" * 2, max_ttl=86400,
                           default_ttl=60, clock=Clock())
    assert _code(tokens, other.issue("alice")) == "token_invalid"
    assert _code(tokens, forge(HS256, _claims(), secret="wrong")) == "token_invalid"


def test_tampered_claims(tokens: TokenAuthority) -> None:
    t = tokens.issue("alice")
    head, _, sig = t.split(".")
    evil = _b64(orjson.dumps(_claims(sub="admin")))
    assert _code(tokens, f"{head}.{evil}.{sig}") == "token_invalid"


@pytest.mark.parametrize("header", [
    {"alg": "none", "typ": "JWT"},
    {"alg": "None"},
    {"alg": "NONE"},
])
def test_alg_none_rejected(tokens: TokenAuthority, header: dict[str, Any]) -> None:
    assert _code(tokens, forge(header, _claims(), secret=None)) == "token_invalid"
    # and with a valid HMAC signature attached, still not accepted
    assert _code(tokens, forge(header, _claims())) == "token_invalid"


def test_other_algorithms_rejected(tokens: TokenAuthority) -> None:
    # algorithm pinned: HS512 with the right secret is still refused
    assert _code(tokens, forge({"alg": "HS512"}, _claims(), digest=hashlib.sha512)) == \
        "token_invalid"
    assert _code(tokens, jwt.encode(_claims(), SECRET, algorithm="HS512")) == "token_invalid"
    # RS256 header with an HMAC signature (key confusion) is refused
    assert _code(tokens, forge({"alg": "RS256", "typ": "JWT"}, _claims())) == "token_invalid"
    assert _code(tokens, forge({"alg": "ES256"}, _claims())) == "token_invalid"


@pytest.mark.parametrize("token", ["x", "a.b", "a.b.c", "....", "eyJ.eyJ.", "\x00"])
def test_garbage_tokens(tokens: TokenAuthority, token: str) -> None:
    assert _code(tokens, token) == "token_invalid"


@pytest.mark.parametrize("claims", [
    _claims(sub=None),  # missing sub
    _claims(exp=None),  # missing exp
    _claims(sub=""),
    _claims(sub=5),
    _claims(sub="a/b"),  # a user id is one topic level
    _claims(sub="+"),
    _claims(sub="#"),
    _claims(exp="soon"),
    _claims(iat="then"),
])
def test_bad_sub_or_exp(tokens: TokenAuthority, claims: dict[str, Any]) -> None:
    assert _code(tokens, forge(HS256, claims)) == "token_invalid"


def test_lifetime_over_max_ttl(tokens: TokenAuthority) -> None:
    ok = forge(HS256, _claims(exp=int(T0) + 86400))
    assert tokens.verify(ok).user == "alice"
    assert _code(tokens, forge(HS256, _claims(exp=int(T0) + 86400 + 60))) == "token_invalid"
    # without iat the lifetime counts from now
    assert _code(tokens, forge(HS256, _claims(iat=None, exp=int(T0) + 86400 * 2))) == \
        "token_invalid"
    # a back-dated iat does not buy a longer life
    assert _code(tokens, forge(HS256, _claims(iat=int(T0) - 86400 * 365,
                                              exp=int(T0) + 60))) == "token_invalid"


@pytest.mark.parametrize("key, value", [
    ("subscribe", "news/#"),
    ("subscribe", {"news/#": True}),
    ("subscribe", ["news/#", 5]),
    ("publish", "chat/+"),
    ("publish", [None]),
    ("publish", 1),
])
def test_grant_claims_must_be_lists_of_strings(tokens: TokenAuthority, key: str,
                                               value: Any) -> None:
    assert _code(tokens, forge(HS256, _claims(**{key: value}))) == "token_invalid"


@pytest.mark.parametrize("user, ttl", [
    ("", None), ("a/b", None), ("a+", None), ("#", None), (5, None),
    ("alice", 0), ("alice", -1), ("alice", 86401),
])
def test_issue_rejects_bad_user_or_ttl(tokens: TokenAuthority, user: Any,
                                       ttl: int | None) -> None:
    with pytest.raises(BadRequest):
        tokens.issue(user, ttl=ttl)


def test_cached_token_still_expires(tokens: TokenAuthority, clock: Clock) -> None:
    """A token verified once is answered from the cache, but never after its exp."""
    t = tokens.issue("alice", ttl=60)
    first = tokens.verify(t)
    assert tokens.verify(t) is first  # from the cache: the same principal
    clock.now = T0 + 60
    assert _code(tokens, t) == "token_expired"
    clock.now = T0 + 59  # the entry was dropped: verified afresh (and valid again)
    assert tokens.verify(t) == first


def test_cache_does_not_confuse_tokens(tokens: TokenAuthority) -> None:
    """Distinct tokens get their own principals; a token differing from a cached
    one in one byte (its signature) is verified, not matched to the cached one."""
    a, b = tokens.issue("alice", subscribe=["a/#"]), tokens.issue("bob", publish=["b/#"])
    assert tokens.verify(a).user == "alice" and tokens.verify(b).user == "bob"
    assert tokens.verify(a).subscribe == ("a/#",) and tokens.verify(b).publish == ("b/#",)
    head, body, sig = a.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert _code(tokens, f"{head}.{body}.{flipped}") == "token_invalid"
    evil = _b64(orjson.dumps(_claims(sub="bob")))
    assert _code(tokens, f"{head}.{evil}.{sig}") == "token_invalid"


def test_cache_is_bounded(clock: Clock) -> None:
    """At most ``cache`` tokens are kept; the oldest go first, and a token pushed
    out is verified again (still valid) rather than refused."""
    authority = TokenAuthority(SECRET, max_ttl=86400, default_ttl=3600, clock=clock, cache=3)
    issued = [authority.issue(f"u{i}") for i in range(10)]
    seen = [authority.verify(t) for t in issued]
    assert len(authority._cache) == 3  # the bound is the point
    assert authority.verify(issued[0]) == seen[0]
    off = TokenAuthority(SECRET, max_ttl=86400, default_ttl=3600, clock=clock, cache=0)
    off.verify(issued[0])
    assert not off._cache


def _pyjwt_accepts(token: str) -> bool:
    try:
        jwt.decode(token, SECRET, algorithms=["HS256"],
                   options={"require": ["sub", "exp"], "verify_exp": False,
                            "verify_nbf": False, "verify_iat": False})
    except jwt.InvalidTokenError:
        return False
    return True


_HEADERS = st.sampled_from([HS256, {"alg": "HS256"}, {"alg": "none"}, {"alg": "HS512"},
                            {"alg": "HS256", "crit": ["exp"]}, {"alg": "HS256", "b64": False},
                            {"alg": "HS256", "kid": 5}, {"alg": "hs256"}, {}])
_EXTRA = st.sampled_from([{}, {"aud": "x"}, {"jti": 7}, {"jti": "j"}, {"iss": "i"},
                          {"sub": 5}, {"exp": None}, {"sub": None}])


@settings(max_examples=200, deadline=None)
@given(header=_HEADERS, extra=_EXTRA, cut=st.integers(0, 400),
       junk=st.sampled_from(["", "=", "==", "!", ".", "A", " "]))
def test_verify_never_accepts_what_pyjwt_refuses(header: dict[str, Any], extra: dict[str, Any],
                                                 cut: int, junk: str) -> None:
    """The hand-made HS256 check agrees with PyJWT: whatever it accepts, PyJWT's
    decode with the same pins accepts too (headers, registered claims, bytes
    cut or added anywhere); and an untouched valid token is accepted by both."""
    authority = TokenAuthority(SECRET, max_ttl=86400, default_ttl=3600, clock=Clock())
    token = forge(header, _claims(**extra))
    token = token[:cut] + junk + token[cut:] if cut <= len(token) else token
    try:
        authority.verify(token)
        ours = True
    except Unauthorized:
        ours = False
    if ours:
        assert _pyjwt_accepts(token)
    if header in (HS256, {"alg": "HS256"}) and not extra and not junk:
        assert ours and _pyjwt_accepts(token)


def test_repr_hides_the_secret(tokens: TokenAuthority) -> None:
    assert SECRET not in repr(tokens)


# -- ApiKeys -----------------------------------------------------------------------------


def test_api_keys_check() -> None:
    keys = ApiKeys(["key-one-0123456789", "key-two-0123456789"])
    one, two = keys.check("key-one-0123456789"), keys.check("key-two-0123456789")
    assert one and two and one != two
    assert keys.check("key-one-0123456789") == one  # stable id
    assert "key-one" not in one and len(one) == 16
    assert keys.check("key-one-012345678") is None  # a prefix
    assert keys.check("key-one-0123456789x") is None  # an extension
    assert keys.check("KEY-ONE-0123456789") is None
    assert keys.check("wrong") is None
    assert keys.check("") is None
    assert keys.check("\udcff") is None  # not encodable: no crash
    assert "key-one" not in repr(keys)


def test_api_keys_empty() -> None:
    assert ApiKeys([]).check("") is None
    assert ApiKeys([]).check("anything") is None
    # an empty configured key never lets an empty credential in
    assert ApiKeys([""]).check("") is None


# -- Acl ---------------------------------------------------------------------------------

ALICE = Principal(UserId("alice"))
BOB = Principal(UserId("bob"))
ANON = Principal(None)


@pytest.mark.parametrize("who, flt, allowed", [
    # users/{uid}/ is private to uid
    (ALICE, "users/alice/notifications", True),
    (ALICE, "users/alice/#", True),
    (ALICE, "users/alice/+", True),
    (ALICE, "users/alice", True),
    (ALICE, "users/bob/notifications", False),
    (ALICE, "users/bob/#", False),
    (ALICE, "users/+/notifications", False),
    (ALICE, "users/#", False),
    (ALICE, "users/+", False),
    (ANON, "users/alice/notifications", False),
    (ANON, "users/+/x", False),
    # $SYS may be read; other $ topics are reserved [MQTT-4.7.2-1 context]
    (ALICE, "$SYS/broker/uptime", True),
    (ALICE, "$SYS/#", True),
    (ALICE, "$SYS", True),
    (ANON, "$SYS/#", True),
    (ALICE, "$SYSX/a", False),
    (ALICE, "$share/g/news", False),
    (ALICE, "$foo/#", False),
    # otherwise subscribe is allowed by default
    (ALICE, "news/#", True),
    (ANON, "news/sports", True),
])
def test_subscribe_defaults(who: Principal, flt: str, allowed: bool) -> None:
    assert Acl([]).can_subscribe(who, flt) is allowed


@pytest.mark.parametrize("who, topic, allowed", [
    (ALICE, "users/alice/read", True),  # device -> server
    (ALICE, "users/alice/anything", True),
    (ALICE, "users/alice/a/b", True),
    # server-written leaves are not client-publishable
    (ALICE, "users/alice/notifications", False),
    (ALICE, "users/alice/unread", False),
    (ALICE, "users/alice/events", False),
    (ALICE, "users/bob/read", False),
    (ANON, "users/alice/read", False),
    # no client publishes to '$'
    (ALICE, "$SYS/broker/uptime", False),
    (ALICE, "$foo", False),
    # without a claim or an allowing rule publish is denied
    (ALICE, "news/sports", False),
    (ANON, "news/sports", False),
])
def test_publish_defaults(who: Principal, topic: str, allowed: bool) -> None:
    assert Acl([]).can_publish(who, topic) is allowed


def test_token_claims_are_grants_that_wildcards_cannot_widen() -> None:
    p = Principal(UserId("alice"), subscribe=("news/+", "chat/#"), publish=("chat/+",))
    acl = Acl([])
    assert acl.can_subscribe(p, "news/sports")
    assert acl.can_subscribe(p, "news/+")
    assert acl.can_subscribe(p, "chat/#")
    assert acl.can_subscribe(p, "chat/a/+")
    assert not acl.can_subscribe(p, "news/#")  # '#' is wider than '+'
    assert not acl.can_subscribe(p, "news/a/b")
    assert not acl.can_subscribe(p, "+/sports")  # '+' is wider than 'news'
    assert not acl.can_subscribe(p, "#")
    assert not acl.can_subscribe(p, "weather")
    assert acl.can_publish(p, "chat/room1")
    assert not acl.can_publish(p, "chat/room1/x")
    assert not acl.can_publish(p, "news/sports")
    # a claim never reaches another user's private topics or '$'
    wide = Principal(UserId("alice"), subscribe=("#",), publish=("#",))
    assert not acl.can_subscribe(wide, "users/bob/notifications")
    assert not acl.can_publish(wide, "users/bob/read")
    assert not acl.can_publish(wide, "users/alice/unread")
    assert not acl.can_publish(wide, "$SYS/x")
    assert not acl.can_subscribe(wide, "$foo/x")
    assert acl.can_publish(wide, "anything/else")


def test_empty_grant_claim_grants_nothing() -> None:
    p = Principal(UserId("alice"), subscribe=(), publish=())
    assert not Acl([]).can_subscribe(p, "news/sports")
    assert not Acl([]).can_publish(p, "news/sports")


def test_acl_rules_first_match_decides() -> None:
    acl = Acl([
        AclRule("secret/#", users=["admin"], subscribe=True),
        AclRule("secret/#", users=["*"], subscribe=False),
        AclRule("secret/#", users=["*"], subscribe=True),  # never reached
    ])
    admin = Principal(UserId("admin"))
    assert acl.can_subscribe(admin, "secret/plans")
    assert not acl.can_subscribe(ALICE, "secret/plans")
    assert not acl.can_subscribe(ALICE, "secret/#")
    assert acl.can_subscribe(ALICE, "public/x")  # no rule applies: default


def test_acl_uid_placeholder() -> None:
    acl = Acl([AclRule("chat/{uid}/#", users=["*"], publish=True)])
    assert acl.can_publish(ALICE, "chat/alice/out")
    assert acl.can_publish(ALICE, "chat/alice")
    assert not acl.can_publish(ALICE, "chat/bob/out")
    assert acl.can_publish(BOB, "chat/bob/out")
    assert not acl.can_publish(ANON, "chat/{uid}/out")  # no uid: the rule never applies
    assert not acl.can_publish(ANON, "chat/anonymous/out")


def test_acl_star_and_anonymous() -> None:
    acl = Acl([
        AclRule("public/#", users=["anonymous"], publish=True),
        AclRule("members/#", users=["*"], publish=True),
        AclRule("vip/#", users=["bob"], publish=True),
    ])
    assert acl.can_publish(ANON, "public/x")
    assert not acl.can_publish(ALICE, "public/x")  # "anonymous" is not any user
    assert acl.can_publish(ALICE, "members/x")
    assert not acl.can_publish(ANON, "members/x")  # "*" is any authenticated user
    assert acl.can_publish(BOB, "vip/x")
    assert not acl.can_publish(ALICE, "vip/x")


def test_acl_rule_without_a_decision_for_the_action_is_skipped() -> None:
    acl = Acl([
        AclRule("news/#", users=["*"], subscribe=False),  # says nothing about publish
        AclRule("news/#", users=["*"], publish=True),
    ])
    assert not acl.can_subscribe(ALICE, "news/x")
    assert acl.can_publish(ALICE, "news/x")


def test_a_wildcard_wider_than_an_allow_sees_only_what_the_allow_covers() -> None:
    """A wildcard cannot widen an allow: ``feeds/#`` under ``allow feeds/+, deny #`` is
    granted (``feeds/a`` is allowed) but is handed only what ``feeds/+`` covers."""
    acl = Acl([AclRule("feeds/+", users=["anonymous"], subscribe=True),
               AclRule("#", users=["anonymous"], subscribe=False)])
    for flt in ("feeds/a", "feeds/+", "feeds/#"):
        assert acl.can_subscribe(ANON, flt), flt
    assert not acl.can_subscribe(ANON, "other")  # wholly denied
    assert not acl.can_subscribe(ANON, "other/#")
    rules = merge_screens([acl.screen(ANON, "feeds/#")])
    assert rules  # overlaps the deny: its messages are screened
    for topic, seen in (("feeds/a", True), ("feeds/a/b", False), ("feeds", False)):
        assert acl.may_see(ANON, topic) is seen, topic
        assert screened(rules, topic) is seen, topic


def test_acl_deny_refuses_only_the_filters_it_wholly_covers() -> None:
    """A deny refuses a filter it covers; a wider filter that reaches into it is
    granted, and its screen keeps the denied topics from it."""
    acl = Acl([AclRule("secret/#", users=["*"], subscribe=False)])
    for flt in ("secret/plans", "secret/#", "secret", "secret/+", "secret/+/x"):
        assert not acl.can_subscribe(ALICE, flt), flt
    for flt in ("#", "+/plans", "+/#", "+/+/+", "+"):
        assert acl.can_subscribe(ALICE, flt), flt
        rules = merge_screens([acl.screen(ALICE, flt)])
        assert [r[:2] for r in rules] == [("secret/#", False)], flt
    rules = merge_screens([acl.screen(ALICE, "#")])
    for topic in ("secret/plans", "secret/a/b", "secret"):
        assert not screened(rules, topic)
        assert not acl.may_see(ALICE, topic)
    for topic in ("public/plans", "secrets", "secrets/x"):
        assert screened(rules, topic)
    for flt in ("public/#", "news/+", "$SYS/#", "news/+/x", "secrets/#"):
        assert acl.can_subscribe(ALICE, flt), flt
        assert merge_screens([acl.screen(ALICE, flt)]) == (), flt  # nothing per message


def test_acl_screen_keeps_rule_order_across_filters() -> None:
    """An allow before a deny decides the topics it covers, whichever filter of the
    session matched: ``a/b`` stays visible to a session that also holds ``+/c``."""
    acl = Acl([AclRule("a/b", users=["*"], subscribe=True),
               AclRule("a/#", users=["*"], subscribe=False)])
    assert not acl.can_subscribe(ALICE, "a/c") and acl.can_subscribe(ALICE, "+/c")
    rules = merge_screens([acl.screen(ALICE, "a/b"), acl.screen(ALICE, "+/c")])
    assert screened(rules, "a/b") and acl.may_see(ALICE, "a/b")
    assert not screened(rules, "a/c") and not acl.may_see(ALICE, "a/c")
    assert screened(rules, "x/c")


def test_acl_screen_is_per_principal() -> None:
    """Rules for other users and ``{uid}`` rules are screened as they apply to the
    subscriber: alice's ``#`` is screened against her own deny, not bob's."""
    acl = Acl([AclRule("private/{uid}/#", users=["*"], subscribe=False),
               AclRule("ops/#", users=["bob"], subscribe=False)])
    rules = merge_screens([acl.screen(ALICE, "#")])
    assert [r[:2] for r in rules] == [("private/alice/#", False)]
    assert not screened(rules, "private/alice/x") and screened(rules, "ops/x")
    assert merge_screens([acl.screen(ANON, "#")]) == ()  # no {uid}: the rule never applies
    assert not acl.can_subscribe(BOB, "ops/+")


def test_acl_rules_cannot_open_private_or_dollar_topics() -> None:
    acl = Acl([AclRule("#", users=["*"], subscribe=True, publish=True),
               AclRule("users/bob/#", users=["*"], subscribe=True, publish=True),
               AclRule("$foo/#", users=["*"], subscribe=True, publish=True)])
    assert not acl.can_subscribe(ALICE, "users/bob/x")
    assert not acl.can_publish(ALICE, "users/bob/x")
    assert not acl.can_publish(ALICE, "users/alice/notifications")
    assert not acl.can_subscribe(ALICE, "$foo/x")
    assert not acl.can_publish(ALICE, "$foo/x")
    assert acl.can_publish(ALICE, "anything")


def test_acl_deny_beats_a_token_grant() -> None:
    acl = Acl([AclRule("news/#", users=["*"], subscribe=False, publish=False)])
    p = Principal(UserId("alice"), subscribe=("news/#",), publish=("news/#",))
    assert not acl.can_subscribe(p, "news/x")
    assert not acl.can_publish(p, "news/x")


_LEVELS = st.sampled_from(["users", "alice", "bob", "news", "$SYS", "$x", "notifications",
                           "a", "+", "#"])
_RULES = st.lists(st.builds(lambda f, users, sub: AclRule(filter=f, users=users, subscribe=sub),
                            st.sampled_from(["news/#", "a/#", "users/{uid}/#", "#", "a/news",
                                             "+/news", "a/+", "news"]),
                            st.sampled_from([["*"], ["alice"], ["anonymous"]]),
                            st.sampled_from([True, False, None])),
                  max_size=3)


def _filter(levels: list[str]) -> str | None:
    """``levels`` joined as a valid filter ('#' last only), else None."""
    if "#" in levels[:-1]:
        return None
    return "/".join(levels)


def _from_topic(levels: list[str], plus: list[bool], cut: int) -> str:
    """A filter made from a topic's levels: some of them '+', and '#' from ``cut`` on."""
    parts = ["+" if w else lvl for lvl, w in zip(levels, plus, strict=False)]
    return "/".join([*parts[:cut], "#"]) if cut <= len(parts) else "/".join(parts)


_PLUS = st.lists(st.booleans(), min_size=4, max_size=4)


@settings(max_examples=400, deadline=None)
@given(levels=st.lists(_LEVELS.filter(lambda x: x not in ("+", "#")), min_size=1, max_size=4),
       user=st.sampled_from([None, "alice", "bob"]),
       grants=st.one_of(st.none(), st.lists(st.sampled_from(["news/#", "a/+", "#"]),
                                            max_size=2)),
       rules=_RULES, plus=_PLUS, cut=st.integers(0, 5),
       others=st.lists(st.lists(_LEVELS, min_size=1, max_size=4), max_size=2))
@example(levels=["a", "news"], user="alice", grants=None,  # an allow before a deny
         rules=[AclRule("a/news", users=["*"], subscribe=True),
                AclRule("a/#", users=["*"], subscribe=False)],
         plus=[False] * 4, cut=5, others=[["+", "b"]])
def test_the_hub_skips_may_see_only_where_it_cannot_refuse(
        levels: list[str], user: str | None, grants: list[str] | None,
        rules: list[AclRule], plus: list[bool], cut: int, others: list[list[str]]) -> None:
    """The hub's shortcut is exact. For a topic one of a session's filters matches,
    the session's answer (``Screens.sees``: the merged screens of its filters, or
    ``may_see`` itself where the topic or the principal needs it) is ``may_see``'s;
    and where the session is not ``restricted`` (no screen holds a deny, the
    principal has no grants) ``may_see`` is True for every topic not ``guarded``,
    so the hub need not ask."""
    topic = "/".join(levels)
    flt = _from_topic(levels, plus, cut)
    assume(matches(flt, topic))  # only a '$' topic under a leading wildcard is not
    acl = Acl(rules)
    p = Principal(UserId(user) if user else None,
                  tuple(grants) if grants is not None else None)
    flts = [flt] + [f for f in map(_filter, others) if f is not None]
    screens = Screens(acl)
    assert screens.restricted and not screens.sees(topic)  # no principal yet
    screens.reset(p, [(f, f) for f in flts])
    assert screens.sees(topic) is acl.may_see(p, topic)
    if not screens.restricted and not guarded(topic):
        assert acl.may_see(p, topic)
    if not acl.restricts(p) and not guarded(topic):
        merged = merge_screens([acl.screen(p, f) for f in flts])
        assert screened(merged, topic) is acl.may_see(p, topic)
        assert screens.restricted is bool(merged)
    for f in set(flts) - {flt}:  # dropping the other filters leaves the answer as it was
        screens.discard(f)
    assert screens.sees(topic) is acl.may_see(p, topic)


@settings(max_examples=300, deadline=None)
@given(levels=st.lists(_LEVELS.filter(lambda x: x not in ("+", "#")), min_size=1, max_size=4),
       user=st.sampled_from([None, "alice", "bob"]),
       rules=_RULES, plus=_PLUS, cut=st.integers(0, 5))
def test_a_refused_filter_would_have_been_handed_nothing(
        levels: list[str], user: str | None, rules: list[AclRule], plus: list[bool],
        cut: int) -> None:
    """A filter is refused only when the rules deny every topic it matches (else it
    is granted and screened): no refusal hides a message the filter could be handed.
    The filter is made from the topic (some levels '+', a '#' from ``cut`` on)."""
    topic, f = "/".join(levels), _from_topic(levels, plus, cut)
    assume(matches(f, topic))  # only a '$' topic under a leading wildcard is not
    p = Principal(UserId(user) if user else None)
    if not acl_refuses_for_reserved(f, p) and not Acl(rules).can_subscribe(p, f):
        assert not Acl(rules).may_see(p, topic)


def acl_refuses_for_reserved(flt: str, p: Principal) -> bool:
    """Whether ``flt`` is refused before any rule: ``$`` other than ``$SYS``, or
    ``users/...`` of someone else (those refusals are the privacy rules', not the ACL's)."""
    if flt.startswith("$"):
        return True
    first, _, rest = flt.partition("/")
    return first == "users" and rest.partition("/")[0] != p.user
