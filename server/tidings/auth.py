"""Tokens (HS256 JWT), API keys, and the permission questions edges ask.

Who may do what:

* ``$`` topics are reserved; only ``$SYS/...`` may be subscribed to, and
  nothing starting with ``$`` may be published by a client.
* ``users/{uid}/...`` is private: only user ``uid`` may subscribe; the
  server-written ``notifications``, ``unread``, ``events`` and ``preferences``
  leaves are not client-publishable (preferences change through
  ``users/{uid}/preferences/set``). Wildcard filters are allowed but the hub never delivers
  another user's private topic through them.
* ``[[acl]]`` rules, first match deciding, may allow or deny. They are
  applied by delivery: a message on a topic is handed over only when the
  first rule matching the topic does not deny it. A filter is refused only
  when the rules wholly deny it (the first rule that overlaps it is a deny
  that covers it: ``secret/x`` under a deny on ``secret/#``); a wider filter
  (``#``, ``+/x``) is granted, and its messages on denied topics are not
  delivered. Which rules can decide a message on a filter is computed once,
  at subscribe time (:meth:`Acl.screen`): a filter that no deny overlaps
  costs nothing per message.
* A token's ``subscribe`` / ``publish`` claims, when present, are grants: a
  request must be covered by one of them (a wildcard cannot widen a grant).
* Without a claim or an allowing rule: subscribe is allowed, publish denied.

Subscribing is asked of a filter; whether a message may be handed to a
session is asked of its concrete topic, by :meth:`Acl.may_see`. Every path
that gives a client a message (live delivery in the hub, retained messages,
``since`` recovery, MQTT shared subscriptions, offline queues) calls it, or
on the hub's path the same question narrowed to the rules of the session's
screens (:func:`screened`, pinned to ``may_see`` by a property test), so a
wildcard, a ``since`` map or a share group can never reach around a rule.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeGuard

import jwt
import orjson

from .config import AclRule
from .errors import BadRequest, Unauthorized
from .protocol.topics import TopicError, covers, overlaps, private_owner, validate_filter
from .types import UserId

__all__ = ["Acl", "ApiKeys", "Principal", "Screen", "ScreenMatch", "ScreenRule", "ScreenRules",
           "Screens", "TokenAuthority", "guarded", "is_reserved", "merge_screens", "screened"]

_SERVER_LEAVES = frozenset({"notifications", "unread", "events", "preferences"})


def is_reserved(topic: str) -> bool:
    """Whether ``topic`` is reserved for the server (``$SYS/...`` and every other
    ``$`` topic): no client, not even the backend's API key, may publish there."""
    return topic[:1] == "$"


_MAX_TIME = 2 ** 53  # seconds: beyond any real date, and exact as a float


def guarded(topic: str) -> bool:
    """Whether :meth:`Acl.may_see` looks at ``topic`` itself: ``$`` topics and
    ``users/...``. For any other topic, and a principal that :meth:`Acl.restricts`
    does not restrict, it answers what :func:`screened` says of the screens of
    the filters that match the topic: True where none of them holds a deny, so
    the hub asks only a session whose screens do (without a call per subscriber
    on the hot path)."""
    return topic.startswith(("$", "users/"))


def _is_time(value: object) -> TypeGuard[float]:
    """Whether a JWT time claim is a finite number of seconds (a bool is not).

    JSON ints are unbounded: ``exp = 10**400`` must be refused here, before
    anything converts it to a float (OverflowError, not a token error).
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_MAX_TIME < value < _MAX_TIME
    return isinstance(value, float) and math.isfinite(value) and abs(value) < _MAX_TIME


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a session acts for. ``user`` is None for an anonymous session."""

    user: UserId | None
    subscribe: tuple[str, ...] | None = None  # token grants, None: no claim
    publish: tuple[str, ...] | None = None
    expires: float | None = None


class TokenAuthority:
    """Issues and verifies user tokens: HS256 only, ``sub`` and ``exp`` required."""

    def __init__(self, secret: str, *, max_ttl: int, default_ttl: int,
                 clock: Callable[[], float] = time.time, cache: int = 10000) -> None:
        self._secret = secret
        self._key = secret.encode()
        # verified tokens: digest -> principal, oldest first (see verify)
        self._cache: dict[bytes, Principal] = {}
        self._cache_size = cache
        self.max_ttl = max_ttl
        self.default_ttl = default_ttl
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return f"TokenAuthority(max_ttl={self.max_ttl})"

    def derived_key(self, purpose: str) -> bytes:
        """A key for ``purpose`` derived from the secret (HMAC-SHA256): other
        signatures (push tracking links) never share the tokens' key."""
        return hmac.new(self._secret.encode(), f"tidings:{purpose}".encode(),
                        hashlib.sha256).digest()

    def issue(self, user: str, *, ttl: int | None = None,
              subscribe: Sequence[str] | None = None,
              publish: Sequence[str] | None = None) -> str:
        if not isinstance(user, str) or not user or "/" in user or "+" in user or "#" in user:
            raise BadRequest("user must be a non-empty string without '/', '+' or '#'")
        ttl = self.default_ttl if ttl is None else ttl
        if not 0 < ttl <= self.max_ttl:
            raise BadRequest(f"ttl must be between 1 and {self.max_ttl} seconds")
        now = int(self._clock())
        claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + ttl}
        for key, grant in (("subscribe", subscribe), ("publish", publish)):
            if grant is None:
                continue
            if not _grants_ok(grant):
                raise BadRequest(f"{key} must be a list of valid topic filters",
                                 code="bad_topic")
            claims[key] = list(grant)
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: object) -> Principal:
        """The principal ``token`` stands for, or ``unauthorized``.

        A token seen before is answered from a bounded cache (``auth.token_cache``
        entries, keyed by a digest of the whole token, so a token differing in any
        byte is verified afresh); its expiry is checked on every use, so a cached
        token is refused from the second ``exp`` on, as a fresh one is.
        """
        if not isinstance(token, str) or not token:
            raise Unauthorized("a token is required", code="token_missing")
        key = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        cached = self._cache.get(key)
        if cached is not None:
            assert cached.expires is not None
            if cached.expires <= self._clock():  # RFC 7519 4.1.4, as below
                del self._cache[key]
                raise Unauthorized("token expired", code="token_expired")
            return cached
        principal = self._verify(token)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[key] = principal
        return principal

    def _verify(self, token: str) -> Principal:
        claims = self._claims(token)
        now = self._clock()
        sub, exp = claims.get("sub"), claims.get("exp")
        if sub is None or exp is None:
            raise Unauthorized("token invalid", code="token_invalid")
        if not _is_time(exp):
            raise Unauthorized("token invalid: bad exp", code="token_invalid")
        if exp <= now:  # RFC 7519 4.1.4: not accepted on or after exp
            raise Unauthorized("token expired", code="token_expired")
        for key in ("nbf", "iat"):  # RFC 7519 4.1.5: not accepted before nbf
            t = claims.get(key)
            if t is not None and (not _is_time(t) or t > now):
                raise Unauthorized(f"token invalid: {key} in the future", code="token_invalid")
        if not isinstance(sub, str) or not sub or "/" in sub or "+" in sub or "#" in sub:
            raise Unauthorized("token invalid: bad sub", code="token_invalid")
        iat = claims.get("iat", now)
        if not isinstance(exp, (int, float)) or not isinstance(iat, (int, float)) \
                or exp - iat > self.max_ttl + 1:
            raise Unauthorized("token lifetime exceeds the maximum", code="token_invalid")
        grants: list[tuple[str, ...] | None] = []
        for key in ("subscribe", "publish"):
            value = claims.get(key)
            if value is None:
                grants.append(None)
            elif isinstance(value, list) and _grants_ok(value):
                grants.append(tuple(value))
            else:
                raise Unauthorized(f"token invalid: {key} must be a list of filters",
                                   code="token_invalid")
        return Principal(UserId(sub), grants[0], grants[1], float(exp))

    def _claims(self, token: str) -> dict[str, Any]:
        """The claims of an HS256 JWS in compact form whose signature is ours.

        RFC 7515 section 5.2, for the one algorithm we accept (pinned: the
        header's ``alg`` must be ``HS256``, so ``none`` or an RSA/HMAC confusion
        is refused), with the checks PyJWT makes of a header and of the
        registered claims it knows (``crit``, ``b64``, ``aud``, ``jti``). Done
        with hmac and base64 rather than ``jwt.decode``: PyJWT spends about
        100 µs per token checking base64 alphabets in Python, most of a
        connection's setup. PyJWT still issues tokens, and the tests hold this
        to PyJWT's answers.
        """
        if _COMPACT.fullmatch(token) is None:
            raise Unauthorized("token invalid", code="token_invalid")
        head, body, sig = token.split(".")
        try:
            header = orjson.loads(_b64decode(head))
            signature = _b64decode(sig)
            expected = hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(signature, expected):
                raise Unauthorized("token invalid", code="token_invalid")
            if not isinstance(header, dict) or header.get("alg") != "HS256" \
                    or "crit" in header or header.get("b64", True) is not True \
                    or not isinstance(header.get("kid", ""), str):
                raise Unauthorized("token invalid", code="token_invalid")
            claims = orjson.loads(_b64decode(body))
        except (ValueError, binascii.Error, orjson.JSONDecodeError):
            raise Unauthorized("token invalid", code="token_invalid") from None
        if not isinstance(claims, dict) or "aud" in claims \
                or not isinstance(claims.get("jti", ""), str):
            raise Unauthorized("token invalid", code="token_invalid")  # no audience is ours
        return claims


# three base64url segments, unpadded (RFC 7515 sections 2 and 7.1)
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def _b64decode(segment: str) -> bytes:
    if len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _grants_ok(grants: object) -> bool:
    """Every grant a valid filter: a malformed one ('a/#/b') must not be read as a wider one."""
    if isinstance(grants, (str, bytes)) or not isinstance(grants, (list, tuple)):
        return False
    try:
        for g in grants:
            validate_filter(g, max_length=1 << 16, max_depth=1 << 10)
    except TopicError:
        return False
    return True


class ApiKeys:
    """Backend API keys, compared in constant time against every configured key."""

    def __init__(self, keys: Sequence[str]) -> None:
        # an empty key would let an empty credential in: never a key
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._digests)} keys)"

    def has_id(self, key_id: str) -> bool:
        """Whether a key with this id (see :meth:`check`) is still configured."""
        return any(hmac.compare_digest(d.hex()[:16], key_id) for d in self._digests)

    def check(self, presented: str) -> str | None:
        """A stable, non-secret id of the matching key (for idempotency scopes), or None."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for d in self._digests:  # no early exit: time does not depend on which key
            if hmac.compare_digest(d, digest):
                found = d.hex()[:16]
        return found


class Acl:
    """The ``[[acl]]`` rules, with the reserved-topic rules and token grants: who may
    subscribe to a filter, publish to a topic, and see a message on a topic."""

    def __init__(self, rules: Sequence[AclRule]) -> None:
        self._rules = list(rules)

    def restricts(self, p: Principal | None) -> bool:
        """Whether :meth:`may_see` can refuse ``p`` a topic that is not
        :func:`guarded` beyond what the screens of its subscriptions say
        (:func:`screened`): when ``p`` has ``subscribe`` grants, or when there is
        no principal yet. The ``[[acl]]`` rules are the screens' part."""
        return p is None or p.subscribe is not None

    def screen(self, p: Principal, flt: str) -> Screen:
        """The ``[[acl]]`` rules that can decide a message on ``flt`` for ``p``, in
        rule order: those that overlap ``flt``, up to the first one that covers it
        (a later rule is never the first to match a topic ``flt`` matches).

        Computed once per subscription, at subscribe time, so a message pays
        only for the rules its subscriber's filters reach (none, when no deny
        is among them). The first rule decides whether ``flt`` may be
        subscribed at all: a deny that covers it refuses it wholly.
        """
        out: list[ScreenRule] = []
        for i, r in enumerate(self._rules):
            if r.subscribe is None:
                continue
            grant = _grant(r, p)
            if grant is None or not overlaps(grant, flt):
                continue
            out.append((i, grant, bool(r.subscribe)))
            if covers(grant, flt):
                break
        return tuple(out)

    def may_see(self, p: Principal, topic: str) -> bool:
        """Whether a session acting for ``p`` may be handed a message on ``topic``.

        The one privacy decision, asked of a concrete topic name on every path
        that hands a client a message. In order: ``$`` topics other than
        ``$SYS/...`` are seen by no one; ``users/{uid}/...`` only by ``uid``
        (who always sees the server-written stream of their own inbox:
        ``notifications``, ``unread``, ``events``); a denying ``[[acl]]`` rule
        for the topic hides it; a token's ``subscribe`` grants, when present,
        must cover it.
        """
        first = topic[:1]  # the hub asks this per subscriber: cheap tests first
        if first == "$":
            if not topic.startswith("$SYS/"):
                return False
        elif first == "u" and topic.startswith("users/"):
            owner = private_owner(topic)
            if owner is not None:
                if owner != p.user:
                    return False
                leaf = topic[7 + len(owner):]
                if leaf in _SERVER_LEAVES:
                    return True  # the user's own inbox stream
        if self._rules and self._rule(p, topic, "subscribe") is False:
            return False
        grants = p.subscribe
        return grants is None or any(covers(g, topic) for g in grants)

    def _rule(self, p: Principal, flt: str, action: str) -> bool | None:
        for r in self._rules:
            decision = getattr(r, action)
            if decision is None:
                continue
            grant = _grant(r, p)
            if grant is None:
                continue
            # an allow must cover the whole request (a wildcard cannot widen it);
            # a deny applies to any request that reaches into it
            if covers(grant, flt) or (not decision and overlaps(grant, flt)):
                return bool(decision)
        return None

    def can_subscribe(self, p: Principal, flt: str) -> bool:
        """Whether ``p`` may subscribe to ``flt``: not a reserved ``$`` filter nor
        another user's ``users/...``, not wholly denied by the rules, covered by
        a token grant when ``p`` has grants."""
        if flt.startswith("$") and not (flt == "$SYS" or flt.startswith("$SYS/")):
            return False  # '$' is reserved; only '$SYS' may be read
        first, _, rest = flt.partition("/")
        if first == "users":
            owner = rest.partition("/")[0]
            if p.user is None or owner != p.user:
                return False  # 'users/+/...' and other users' topics
        if _wholly_denied(self.screen(p, flt), flt):
            return False  # a wider filter is granted: its messages are screened instead
        if p.subscribe is not None:
            return any(covers(g, flt) for g in p.subscribe)
        return True

    def can_publish(self, p: Principal, topic: str) -> bool:
        if is_reserved(topic):
            return False
        owner = private_owner(topic)
        if owner is not None:
            if p.user is None or owner != p.user:
                return False
            parts = topic.split("/")
            if len(parts) == 3 and parts[2] in _SERVER_LEAVES:
                return False
        decision = self._rule(p, topic, "publish")
        if decision is False:
            return False
        if p.publish is not None and any(covers(g, topic) for g in p.publish):
            return True
        if decision is True:
            return True
        return owner is not None  # a user may publish under their own users/{uid}/


def _grant(r: AclRule, p: Principal) -> str | None:
    """The filter rule ``r`` applies to for ``p`` (``{uid}`` filled in), or None
    when it does not apply to ``p`` (an anonymous principal has no ``{uid}``)."""
    if p.user is None:
        if "anonymous" not in r.users or "{uid}" in r.filter:
            return None
        return r.filter
    if "*" not in r.users and p.user not in r.users:
        return None
    return r.filter.replace("{uid}", p.user)


ScreenRule = tuple[int, str, bool]
"""One ``[[acl]]`` rule as it applies to a principal: (its position among the
rules, its filter with ``{uid}`` filled in, whether it allows subscribing)."""

Screen = tuple[ScreenRule, ...]
"""The rules that can decide a message on one subscription (:meth:`Acl.screen`)."""

class ScreenMatch(NamedTuple):
    """One rule of merged screens, ready to be matched against a topic fast."""

    filter: str
    allows: bool
    exact: str | None  # the filter when it has no wildcard: only that topic matches
    under: str | None  # "a/b/" for "a/b/#" (no other wildcard): "a/b" and what is below


ScreenRules = tuple[ScreenMatch, ...]
"""Screens merged for :func:`screened`, in rule order."""


def _match(flt: str, allows: bool) -> ScreenMatch:
    """``flt`` with the shortcut its shape allows (a plain topic, a ``.../#``)."""
    if "+" not in flt and "#" not in flt:
        return ScreenMatch(flt, allows, flt, None)
    head = flt[:-2]
    if flt.endswith("/#") and "+" not in head and "#" not in head:
        return ScreenMatch(flt, allows, None, head + "/")
    return ScreenMatch(flt, allows, None, None)


def _wholly_denied(screen: Screen, flt: str) -> bool:
    """Whether every topic ``flt`` matches is denied: the first rule that
    overlaps it is a deny that covers it."""
    return bool(screen) and not screen[0][2] and covers(screen[0][1], flt)


def merge_screens(screens: Iterable[Screen]) -> ScreenRules:
    """A session's screens as one list for :func:`screened`: the union of their
    rules in rule order, less the allows after the last deny (they change no
    answer); empty when no deny is among them (nothing to ask per message).

    Exact for every topic one of the screened filters matches: the rule that
    decides the topic (the first rule that matches it) overlaps that filter and
    comes no later than the first rule covering it, so it is in that filter's
    screen, and no rule before it in the union matches the topic either.
    """
    rules = sorted({r for screen in screens for r in screen})
    while rules and rules[-1][2]:
        rules.pop()
    return tuple(_match(flt, allows) for _, flt, allows in rules)


def screened(rules: ScreenRules, topic: str) -> bool:
    """Whether a message on ``topic`` passes merged screens: the first rule that
    matches the topic decides; when none does, it passes (as in :meth:`Acl.may_see`)."""
    for flt, allows, exact, under in rules:  # per message: the cheap tests first
        if exact is not None:
            hit = topic == exact
        elif under is not None:
            hit = topic.startswith(under) or topic == under[:-1]
        else:
            hit = covers(flt, topic)
        if hit:
            return allows
    return True


class Screens:
    """The screens of one session's subscriptions, kept as it subscribes and
    unsubscribes, merged into the one list its messages are checked against,
    and the session's answer to the hub (:meth:`sees`, :attr:`restricted`).

    ``rules`` (:func:`merge_screens`) is empty while no subscription overlaps a
    deny: the session is then not ``restricted`` and pays nothing per message
    (the hub does not ask it), unless its principal is restricted itself
    (:meth:`Acl.restricts`). Keys are the session's own names for its
    subscriptions (an MQTT ``$share/{group}/{filter}``), filters what the
    rules are asked of.
    """

    __slots__ = ("_acl", "_by_key", "_counts", "_fast", "_principal", "restricted", "rules")

    def __init__(self, acl: Acl) -> None:
        self._acl = acl
        self._principal: Principal | None = None
        # made on the first subscription that reaches a rule (most never do): an
        # idle session holds neither
        self._by_key: dict[str, Screen] | None = None  # only non-empty screens
        self._counts: Counter[ScreenRule] | None = None  # at most one entry per rule
        self.rules: ScreenRules = ()
        self._fast: ScreenRules | None = None  # None: sees asks the Acl itself
        self.restricted = True  # no principal yet

    def sees(self, topic: str) -> bool:
        """Whether the session may be handed a message on ``topic``, which one of
        its filters matches: :meth:`Acl.may_see` where the topic (``$``,
        ``users/``) or the principal (grants, none yet) needs it; else only the
        rules of its filters' screens (:func:`screened`, the same answer)."""
        rules = self._fast
        if rules is None or guarded(topic):
            p = self._principal
            return p is not None and self._acl.may_see(p, topic)
        return screened(rules, topic)

    def reset(self, principal: Principal, filters: Iterable[tuple[str, str]]) -> None:
        """Screen every ``(key, filter)`` anew for ``principal`` (a session that
        connects, resumes with a new token or is restored)."""
        self._principal = principal
        self._by_key = None
        self._counts = None
        for key, flt in filters:
            self._take(key, flt)
        self._merge()

    def add(self, key: str, flt: str) -> None:
        """Screen a new (or replaced) subscription; before it is registered in the
        hub, so its first message is checked too."""
        self.discard(key)
        if self._take(key, flt):
            self._merge()

    def discard(self, key: str) -> None:
        """Forget an ended subscription's screen (a no-op for an unknown key)."""
        screen = None if self._by_key is None else self._by_key.pop(key, None)
        if not screen:
            return
        counts = self._counts
        assert counts is not None  # a stored screen counted its rules
        gone = False
        for r in screen:
            counts[r] -= 1
            if counts[r] <= 0:
                del counts[r]
                gone = True
        if gone:
            self._merge()

    def _take(self, key: str, flt: str) -> bool:
        """Screen ``flt`` under ``key``; whether a rule new to the session came with it."""
        if self._principal is None:
            raise RuntimeError("Screens.reset names the principal first")
        screen = self._acl.screen(self._principal, flt)
        if not screen:
            return False
        if self._by_key is None:
            self._by_key = {}
        self._by_key[key] = screen
        counts = self._counts
        if counts is None:
            counts = self._counts = Counter()
        new = False
        for r in screen:
            new = new or r not in counts
            counts[r] += 1
        return new

    def _merge(self) -> None:
        self.rules = merge_screens([tuple(self._counts or ())])
        broad = self._acl.restricts(self._principal)
        self._fast = None if broad else self.rules
        self.restricted = broad or bool(self.rules)
