"""Tokens (HS256 JWT), API keys, and the permission questions edges ask.

Who may do what:

* ``$`` topics are reserved; only ``$SYS/...`` may be subscribed to, and
  nothing starting with ``$`` may be published by a client.
* ``users/{uid}/...`` is private: only user ``uid`` may subscribe; the
  server-written ``notifications``, ``unread`` and ``events`` leaves are not
  client-publishable. Wildcard filters are allowed but the hub never delivers
  another user's private topic through them.
* ``[[acl]]`` rules, first match deciding, may allow or deny. An allowing
  rule matches a request it covers; a denying rule matches any request that
  overlaps it, so ``#`` cannot reach around a deny on ``secret/#``.
* A token's ``subscribe`` / ``publish`` claims, when present, are grants: a
  request must be covered by one of them (a wildcard cannot widen a grant).
* Without a claim or an allowing rule: subscribe is allowed, publish denied.

Subscribing is asked of a filter; whether a message may be handed to a
session is asked of its concrete topic, by :meth:`Acl.may_see` alone. Every
path that gives a client a message (live delivery in the hub, retained
messages, ``since`` recovery, MQTT shared subscriptions) calls it, so a
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import jwt
import orjson

from .config import AclRule
from .errors import BadRequest, Unauthorized
from .protocol.topics import TopicError, covers, overlaps, private_owner, validate_filter
from .types import UserId

__all__ = ["Acl", "ApiKeys", "Principal", "TokenAuthority", "guarded", "is_reserved"]

_SERVER_LEAVES = frozenset({"notifications", "unread", "events"})


def is_reserved(topic: str) -> bool:
    """Whether ``topic`` is reserved for the server (``$SYS/...`` and every other
    ``$`` topic): no client, not even the backend's API key, may publish there."""
    return topic[:1] == "$"


_MAX_TIME = 2 ** 53  # seconds: beyond any real date, and exact as a float


def guarded(topic: str) -> bool:
    """Whether :meth:`Acl.may_see` looks at ``topic`` itself: ``$`` topics and
    ``users/...``. For any other topic it answers True to every principal that
    :meth:`Acl.restricts` does not restrict, so the hub asks only when either
    holds (the same answer, without a call per subscriber on the hot path)."""
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
        :func:`guarded`: when there are ``[[acl]]`` rules, when ``p`` has
        ``subscribe`` grants, or when there is no principal yet."""
        return p is None or bool(self._rules) or p.subscribe is not None

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
            if p.user is None:
                if "anonymous" not in r.users:
                    continue
                grant = r.filter
                if "{uid}" in grant:
                    continue
            else:
                if "*" not in r.users and p.user not in r.users:
                    continue
                grant = r.filter.replace("{uid}", p.user)
            # an allow must cover the whole request (a wildcard cannot widen it);
            # a deny applies to any request that reaches into it
            if covers(grant, flt) or (not decision and overlaps(grant, flt)):
                return bool(decision)
        return None

    def can_subscribe(self, p: Principal, flt: str) -> bool:
        if flt.startswith("$") and not (flt == "$SYS" or flt.startswith("$SYS/")):
            return False  # '$' is reserved; only '$SYS' may be read
        first, _, rest = flt.partition("/")
        if first == "users":
            owner = rest.partition("/")[0]
            if p.user is None or owner != p.user:
                return False  # 'users/+/...' and other users' topics
        decision = self._rule(p, flt, "subscribe")
        if decision is False:
            return False
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
