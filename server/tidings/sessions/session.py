"""One client's session, whatever carries it: what it may do, and doing it.

A :class:`Session` is created when a connection is accepted and lives until
it closes. It authenticates (token or anonymous, device id, token expiry),
holds the client's subscriptions and quotas, recovers missed messages,
delivers retained ones, publishes, and runs the inbox operations. It talks
to the node, the notifier and presence through :class:`Operations`, never to
the store. It is the hub's :class:`~tidings.hub.Subscriber`: ``may_see`` is
the one visibility check on every path that hands a client a message.

It reaches its client only through a :class:`Transport` (after centrifuge's
``Transport``): pre-encoded bytes onto a bounded outbox, a reply or push
object, an end with a :class:`~tidings.errors.TidingsError` the transport
turns into its protocol's close. An edge decodes frames into calls on a
session and turns its results and errors into wire replies.

Operations that answer before they push (``connect`` and ``subscribe``) take
a ``reply`` callback: live messages arriving meanwhile are held, and released
after the reply and what recovery sent, without duplicates.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import orjson

from ..auth import Principal, Screens
from ..errors import BadRequest, Forbidden, TidingsError, Unauthorized
from ..protocol.frames import Encoding, encode, push_fields
from ..protocol.topics import is_wildcard, matches
from ..store.base import (
    MarkAction,
    PublishResult,
    events_topic,
    notifications_topic,
    routed_away,
)
from ..store.contracts.inbox import is_notification_id
from ..types import PayloadKind, Publication, UserId, parse_offset
from .operations import Operations

__all__ = ["Reply", "Session", "Transport", "payload_of"]

_RECOVER_LIMIT = 1000  # notifications recovered at connect, at most (then bytes bound it)
_RECOVER_PAGE = 64  # messages read from history at once while recovering
TRACK_MANY = 100  # ids one `track` command may list

Reply = Callable[[dict[str, Any]], None]  # sends a successful reply's fields
A = TypeVar("A")
B = TypeVar("B")


class Transport(Protocol):
    """What a session needs of the connection that carries it."""

    @property
    def encoding(self) -> Encoding:
        """How replies and recovered pushes are encoded."""

    @property
    def closing(self) -> bool:
        """Whether the connection is closing: nothing more is sent."""

    @property
    def bound(self) -> int:
        """The outbound bound in bytes (messages held while subscribing count too)."""

    def deliver(self, publication: Publication | None, data: Any) -> None:
        """Queue ``data``, already in this transport's wire form (bounded; never blocks).

        ``publication`` is what it encodes (None for a reply): a transport whose
        wire form depends on the subscription (MQTT: QoS, retain flag) needs it."""

    def send(self, obj: dict[str, Any]) -> None:
        """Encode and queue a reply or push."""

    async def pace(self) -> bool:
        """After a push the server chose (retained messages): once a chunk is
        queued, write it and wait for the peer to read it. True if it waited."""

    def overflow(self) -> None:
        """The session holds more than ``bound`` bytes for its client: close it."""

    def end(self, error: TidingsError) -> None:
        """Close because of ``error`` (e.g. the token expired), in the protocol's terms."""


class Session:
    """A client's session (see the module docstring); the hub's subscriber."""

    __slots__ = ("__weakref__", "_edge", "_expiry", "_hold", "_max_subscriptions", "_refill",
                 "_screens", "_streams", "_tokens", "device", "ops", "principal",
                 "restricted", "subscriptions", "transport", "user", "wire")

    def __init__(self, ops: Operations, transport: Transport, wire: str, *, edge: str,
                 max_subscriptions: int, burst: int = 0) -> None:
        self.ops = ops
        self.transport = transport
        self.wire = wire  # the hub's key for this session's wire form
        self.user: UserId | None = None
        self.principal: Principal | None = None
        # the hub's shortcut (see may_see): a plain attribute, read per delivery,
        # kept by _restrict wherever the principal or the screens change
        self.restricted = True
        self._screens = Screens(ops.acl)  # the [[acl]] rules its filters reach
        self.device = ""
        self.subscriptions: set[str] = set()
        self._streams: tuple[str, ...] = ()  # the user's own stream topics, followed at connect
        self._hold: list[tuple[Publication, Any]] | None = None
        self._expiry: float | None = None  # the token's exp, while on ops.expiries
        self._edge = edge
        self._max_subscriptions = max_subscriptions
        self._tokens = float(burst)
        self._refill = time.monotonic()

    # -- the hub's subscriber -----------------------------------------------------------

    def may_see(self, topic: str) -> bool:
        """Hub callback: whether this session may be handed a message on ``topic``,
        which one of its filters matches (:meth:`~tidings.auth.Screens.sees`)."""
        return self._screens.sees(topic)

    def _restrict(self) -> None:
        """Copy the hub's shortcut from the screens (a plain attribute: read per delivery)."""
        self.restricted = self._screens.restricted

    def deliver(self, publication: Publication, data: Any) -> None:
        """Hub callback: ``data`` is already this session's wire form (the hot path).
        A notification routed to other edges only (:func:`routed_away`) is skipped."""
        if self._streams and publication.topic == self._streams[0] \
                and routed_away(publication, self._edge):
            return
        if self._hold is not None:
            self._hold.append((publication, data))
        else:
            self.transport.deliver(publication, data)

    def deliver_many(self, publications: list[Publication], parts: list[Any],
                     joined: bytes) -> None:
        """Hub callback for a run of one topic in a joinable wire form: one append
        of ``joined``, or each held in turn while a recovery holds live messages."""
        if self._hold is not None:
            self._hold.extend(zip(publications, parts, strict=True))
        else:
            self.transport.deliver(publications[-1], joined)

    # -- quotas -------------------------------------------------------------------------

    def allow_command(self, burst: int, per_second: float) -> bool:
        """Take one command from the session's token bucket (``burst`` deep,
        refilled at ``per_second``); False when it is empty."""
        now = time.monotonic()
        self._tokens = min(float(burst), self._tokens + (now - self._refill) * per_second)
        self._refill = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def take_subscription(self) -> None:
        """Count one more filter against this session and its user, or refuse with
        ``too_many_subscriptions`` (:meth:`Operations.take_subscription`)."""
        self.ops.take_subscription(self.user, len(self.subscriptions), self._max_subscriptions)

    def give_back(self, n: int) -> None:
        """Release ``n`` of this user's subscriptions (topics.max_user_subscriptions)."""
        self.ops.give_back(self.user, n)

    # -- connect ------------------------------------------------------------------------

    async def connect(self, token: Any, device: Any, since: Any, reply: Reply) -> None:
        """Authenticate, follow the user's streams, reply with what was missed."""
        ops = self.ops
        principal = ops.authenticate(token)
        self.principal = principal
        self._screens.reset(principal, ())
        self._restrict()
        self.user = principal.user
        if device is not None:
            ops.device(device, "connect: ")
        self.device = device or secrets.token_hex(8)
        if principal.expires is not None:
            self._expiry = principal.expires
            ops.expiries.add(self, principal.expires)
        if self.user is None:
            reply({"user": None, "device": self.device, "node": ops.node.name, "unread": 0,
                   "offset": None, "recovered": [], "complete": True})
            return
        if since is not None and parse_offset(since) is None:
            raise BadRequest("connect: since is not an offset")
        ops.presence.online(self.user, self, self.device, self._edge)
        await self._open_stream(since, reply)

    async def _open_stream(self, since: str | None, reply: Reply) -> None:
        """Follow the user's notifications and events; reply with unread and what was missed."""
        assert self.user is not None
        node = self.ops.node
        topic = notifications_topic(self.user)
        encoding = self.transport.encoding
        self._hold = []
        try:
            for t in (topic, events_topic(self.user)):
                self._streams += (t,)
                await node.subscribe(t, self)
            recovered: list[dict[str, Any]] = []
            complete = True
            more: dict[str, Any] = {}
            seen: dict[str, str] = {}
            if since is not None:
                page = await node.history(topic, since, _RECOVER_LIMIT)
                complete = page.complete
                states = await node.read_states(self.user, [str(p.data()["id"])
                                                            for p in page.items])
                budget = self.ops.settings.limits.max_reply_size
                for p in page.items:
                    fields = push_fields(p, encoding)
                    nid = fields.get("id")
                    if nid not in states or routed_away(p, self._edge):
                        continue  # archived, expired or collapsed since
                    fields["read"] = states[nid]
                    budget -= len(encode(fields, encoding))
                    if recovered and budget < 0:
                        # the rest does not fit one reply: the inbox has them all
                        complete = False
                        more = {"next": seen[topic]}
                        break
                    recovered.append(fields)
                    seen[topic] = p.offset
            offset, unread = await _both(node.latest(topic), node.unread(self.user))
        except BaseException:
            self._release_hold({})
            raise
        vapid = self.ops.vapid_public_key()
        if vapid is not None:  # for PushManager.subscribe (tidings.push.enable())
            more["vapid_public_key"] = vapid
        reply({"user": self.user, "device": self.device, "node": node.name, "unread": unread,
               "offset": offset, "recovered": recovered, "complete": complete, **more})
        self._release_hold(seen)

    # -- subscribe ----------------------------------------------------------------------

    def _since_map(self, flt: str, since: Any) -> dict[str, str]:
        if isinstance(since, str):
            if is_wildcard(flt):
                raise BadRequest("subscribe: since for a wildcard filter must be an object "
                                 "mapping topics to offsets")
            since = {flt: since}
        most = self.ops.settings.limits.max_since_topics
        if len(since) > most:
            raise BadRequest(f"subscribe: since names more than {most} topics "
                             f"(limits.max_since_topics)")
        for topic, offset in since.items():
            if not isinstance(offset, str) or parse_offset(offset) is None:
                raise BadRequest(f"subscribe: since[{topic[:64]!r}] is not an offset")
            if not matches(flt, topic):
                raise BadRequest(f"subscribe: since names {topic[:64]!r}, "
                                 f"which the filter does not match")
            # checked before any history is read (and before the filter is screened):
            # recovery hands out messages too
            p = self.principal
            if p is None or not self.ops.acl.may_see(p, topic):
                raise Forbidden(f"not allowed to read {topic[:64]!r}")
        return dict(since)

    async def subscribe(self, value: Any, since: Any, reply: Reply) -> None:
        """Follow a filter; reply with what ``since`` missed, then push retained messages."""
        ops = self.ops
        assert self.principal is not None
        flt = ops.filter(value)
        since_map = self._since_map(flt, since) if since is not None else {}
        ops.subscribable(self.principal, flt)
        new = flt not in self.subscriptions and flt not in self._streams
        if new:
            self.take_subscription()
        self._hold = []  # live messages wait until the reply and recovery are out
        try:
            if new:
                self.subscriptions.add(flt)
                self._screens.add(flt, flt)  # before the hub can hand it a message
                self._restrict()
                await ops.node.subscribe(flt, self)
            recovered, complete, rest = await self._recover(since_map)
            offset_now = None if is_wildcard(flt) else await ops.node.latest(flt)
            retained = await ops.retained(self.principal, flt, self._edge) if since is None else []
        except BaseException:
            if new:
                self.subscriptions.discard(flt)
                self.give_back(1)
                await ops.node.unsubscribe(flt, self)
                self._unscreen(flt)
            self._release_hold({})
            raise
        seen: dict[str, str] = {}
        for pub, _ in recovered:
            seen[pub.topic] = pub.offset
        more = {"next": rest} if rest else {}
        reply({"offset": offset_now, "complete": complete and not rest,
               "recovered": [fields for _, fields in recovered], **more})
        try:
            await self._push_paced(retained, seen)
        finally:
            self._release_hold(seen)

    async def _recover(self, since: dict[str, str]
                       ) -> tuple[list[tuple[Publication, dict[str, Any]]], bool, dict[str, str]]:
        """History after each ``since`` offset, at most ``limits.max_reply_size`` bytes
        of pushes (always at least one), read a page at a time so one request
        never loads more than that from the store.

        Returns (publications with their push fields, whether history reached
        back everywhere, ``next``: the since map to continue with, empty when
        everything was recovered).
        """
        budget = self.ops.settings.limits.max_reply_size
        node = self.ops.node
        encoding = self.transport.encoding
        got: list[tuple[Publication, dict[str, Any]]] = []
        used = 0
        complete = True
        rest: dict[str, str] = {}
        for topic, offset in since.items():
            cursor = offset
            first = True
            while True:
                if used >= budget:
                    rest[topic] = cursor
                    break
                page = await node.history(topic, cursor, _RECOVER_PAGE)
                items = page.items
                if first and not page.complete and not (items and _follows(cursor,
                                                                         items[0].offset)):
                    complete = False  # trimmed or expired: history no longer reaches back
                first = False
                full = False
                for pub in items:
                    if routed_away(pub, self._edge):
                        cursor = pub.offset
                        continue
                    fields = push_fields(pub, encoding)
                    size = len(encode(fields, encoding))
                    if got and used + size > budget:
                        full = True
                        break
                    got.append((pub, fields))
                    used += size
                    cursor = pub.offset
                if full:
                    rest[topic] = cursor
                    break
                if not items or items[-1].offset == page.offset:
                    break  # caught up with the topic's latest offset
        return got, complete, rest

    async def _push_paced(self, pubs: list[Publication], seen: dict[str, str]) -> None:
        """Push server-chosen bursts (retained messages) no faster than the client
        reads, so the outbound bound only ever sees live traffic. ``pubs`` come from
        :meth:`Operations.retained`, which already kept only what this session may see."""
        transport = self.transport
        hub = self.ops.node.hub
        for pub in pubs:
            if transport.closing:
                return
            self.ops.metrics.inc("tidings_deliveries_total")
            transport.deliver(pub, hub.encode(self.wire, pub))
            seen[pub.topic] = pub.offset
            if await transport.pace():
                self._check_hold()

    def _check_hold(self) -> None:
        """Live messages held while a burst is paced count against the bound too."""
        if self._hold is not None and \
                sum(len(d) for _, d in self._hold) > self.transport.bound:  # only while pacing
            self._hold = []
            self.transport.overflow()

    def _release_hold(self, seen: dict[str, str]) -> None:
        """Send what arrived while subscribing, minus what recovery already sent."""
        held, self._hold = self._hold or [], None
        for pub, data in held:
            last = seen.get(pub.topic)
            if last is not None:
                a, b = parse_offset(last), parse_offset(pub.offset)
                if a is not None and b is not None and a[0] == b[0] and b[1] <= a[1]:
                    continue
            self.transport.deliver(pub, data)

    async def unsubscribe(self, value: Any) -> None:
        """Stop following a filter (the user's own streams stay)."""
        flt = self.ops.filter(value)
        if flt in self.subscriptions and flt not in self._streams:
            self.subscriptions.discard(flt)
            self.give_back(1)
            await self.ops.node.unsubscribe(flt, self)
            self._unscreen(flt)

    def _unscreen(self, flt: str) -> None:
        """Forget an ended subscription's screen (after the hub stopped matching it)."""
        self._screens.discard(flt)
        self._restrict()

    # -- publish ------------------------------------------------------------------------

    async def publish(self, topic_value: Any, data: Any, retain: bool) -> str:
        """Publish as this session's principal; returns the message's offset."""
        result = await self.submit(topic_value, data, retain)
        return result.publication.offset

    def submit(self, topic_value: Any, data: Any, retain: bool
               ) -> asyncio.Future[PublishResult]:
        """:meth:`publish` without waiting: checked now (a refusal raises here), then
        in the node's next group, behind every publish submitted before it."""
        ops = self.ops
        assert self.principal is not None
        payload, kind = payload_of(data)
        topic = ops.check_publish(self.principal, topic_value, payload)
        return ops.submit(topic, payload, kind, retain=retain)

    # -- inbox --------------------------------------------------------------------------

    def me(self, op: str) -> UserId:
        """The signed-in user, or ``forbidden`` for an anonymous session."""
        if self.user is None:
            raise Forbidden(f"{op} needs a signed-in user")
        return self.user

    async def inbox(self, limit: int, before: Any, unread_only: bool) -> dict[str, Any]:
        return await self.ops.inbox(self.me("inbox"), limit=limit, before=before,
                                    unread_only=unread_only, where="inbox: ",
                                    encoding=self.transport.encoding)

    async def mark(self, action: MarkAction, ids: Any, everything: bool) -> tuple[int, list[str]]:
        """(unread count after, ids changed) for ``read``, ``unread`` or ``archive``."""
        change = await self.ops.mark(self.me(action), action, ids, everything, self.device)
        return change.unread, change.changed

    async def track(self, notification: Any, event: Any) -> bool:
        if notification is None:
            raise BadRequest("track: notification is required (or notifications, a list)")
        return await self.ops.track(self.me("track"), notification, event)

    async def track_many(self, notifications: list[Any], event: Any, one: Any) -> list[str]:
        """``track`` of a list (at most :data:`TRACK_MANY` ids, one command): the ids
        newly recorded. The JS client reports ``delivered`` this way, a batch a
        second, so the reports cost the user's command budget little."""
        if one is not None:
            raise BadRequest("track: give notification or notifications, not both")
        if not notifications or len(notifications) > TRACK_MANY or not all(
                is_notification_id(n) for n in notifications):
            raise BadRequest(f"track: notifications must list 1 to {TRACK_MANY} ids")
        user = self.me("track")
        return [n for n in dict.fromkeys(notifications)
                if await self.ops.track(user, n, event)]

    async def feedback(self, notification: Any, reason: Any, comment: Any) -> bool:
        return await self.ops.feedback(self.me("feedback"), notification, reason, comment)

    async def devices(self) -> list[dict[str, Any]]:
        return await self.ops.devices(self.me("devices"))

    async def register_push(self, endpoint: Any) -> list[dict[str, Any]]:
        """This device's platform push endpoint (issue 16); the user's endpoints."""
        return await self.ops.register_push(self.me("register_push"), self.device, endpoint)

    async def unregister_push(self) -> int:
        return await self.ops.unregister_push(self.me("unregister_push"), self.device)
    # -- preferences --------------------------------------------------------------------

    async def preferences(self) -> dict[str, Any]:
        """The signed-in user's own preferences document."""
        return await self.ops.preferences(self.me("preferences"))

    async def set_preferences(self, doc: Any, merge: bool) -> dict[str, Any]:
        """Replace (or with ``merge``, merge into) the user's own preferences; the
        stored document."""
        return await self.ops.set_preferences(self.me("set_preferences"), doc, merge=merge)

    # -- end ----------------------------------------------------------------------------

    def token_expired(self) -> None:
        """The token's ``exp`` passed (``ops.expiries`` says so): the edge ends the
        connection. The error is made here, not at connect, so an idle connection
        holds no exception object."""
        self._expiry = None
        self.transport.end(Unauthorized("token expired", code="token_expired"))

    async def close(self) -> None:
        """The connection is gone: release presence, quotas and subscriptions. Idempotent."""
        if self._expiry is not None:
            self.ops.expiries.discard(self, self._expiry)
            self._expiry = None
        node = self.ops.node
        if self.user is not None:
            self.ops.presence.offline(self.user, self)
        subs = self.subscriptions | set(self._streams)
        self.give_back(len(self.subscriptions))
        self.subscriptions, self._streams = set(), ()
        for flt in subs:
            await node.unsubscribe(flt, self)


async def _both(a: Awaitable[A], b: Awaitable[B]) -> tuple[A, B]:
    """Two store reads in one loop pass, so the store answers both in one commit;
    the first error is raised once both have ended (none is left unretrieved)."""
    x, y = await asyncio.gather(a, b, return_exceptions=True)
    for r in (x, y):
        if isinstance(r, BaseException):
            raise r
    return cast(A, x), cast(B, y)


def _follows(before: str, offset: str) -> bool:
    """Whether ``offset`` is the one right after ``before`` (same epoch, next sequence)."""
    a, b = parse_offset(before), parse_offset(offset)
    return a is not None and b is not None and a[0] == b[0] and b[1] == a[1] + 1


def payload_of(data: Any) -> tuple[bytes, PayloadKind]:
    """A client's ``data`` as stored bytes: JSON values as JSON, raw bytes (msgpack) as is."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data), PayloadKind.BINARY
    try:
        return orjson.dumps(data), PayloadKind.JSON
    except TypeError:
        raise BadRequest("data must be a JSON value") from None
