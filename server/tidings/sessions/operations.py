"""What any client may ask of the server, checked in one place.

:class:`Operations` is shared by every :class:`~tidings.sessions.Session`
and by the HTTP API (a backend acts with full rights for a user it names).
Topic and filter validation (``bad_topic``), the ``$`` refusal, the publish
ACL, the message size limit, inbox paging and its cursor check, and the
``device`` check live here and nowhere else; an edge only turns wire into
these calls and :class:`~tidings.errors.TidingsError` into its wire codes.

``where`` arguments prefix error messages (``"inbox: "``, ``"messages[3]: "``)
so each edge keeps telling the peer which part of its request was wrong.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import audience, preferences
from ..auth import Acl, Principal, TokenAuthority, is_reserved
from ..config import Settings
from ..errors import (
    BadPayload,
    BadRequest,
    BadTopic,
    Forbidden,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unavailable,
)
from ..metrics import Metrics
from ..node import Node
from ..notify import FEEDBACK_FIELDS, Notifier
from ..plumbing import Deadlines
from ..presence import Presence
from ..protocol.frames import Encoding, encode
from ..protocol.topics import TopicError, validate_filter, validate_topic
from ..push.channel import PushChannel
from ..store.base import AudienceQuery, MarkAction, PublishResult, UserChange
from ..types import PayloadKind, Publication, is_cursor

__all__ = ["INBOX_LIMIT", "SEGMENT_PAGE_LIMIT", "Operations", "fitting"]

INBOX_LIMIT = 100  # items in one inbox page, at most
SEGMENT_PAGE_LIMIT = 1000  # users in one page of a segment's listing, at most
_MAX_CURSOR = 256  # characters of a listing cursor (a user id)


class Expiring(Hashable, Protocol):
    """A session whose token runs out (see :attr:`Operations.expiries`)."""

    def token_expired(self) -> None: ...


def _token_expired(session: Expiring) -> None:
    session.token_expired()


@dataclass(frozen=True, slots=True, eq=False)
class Operations:
    """The node's services with every client-facing check in front of them."""

    settings: Settings
    node: Node
    tokens: TokenAuthority
    acl: Acl
    notifier: Notifier
    presence: Presence
    metrics: Metrics
    # every session's token expiry on one timer (none per connection)
    expiries: Deadlines[Expiring] = field(default_factory=lambda: Deadlines(_token_expired))

    # -- connect ------------------------------------------------------------------------

    def authenticate(self, token: Any) -> Principal:
        """Who presents ``token``: its principal (or ``unauthorized``); no token is
        the anonymous principal when ``auth.allow_anonymous``."""
        if token is None and self.settings.auth.allow_anonymous:
            return Principal(None)
        return self.tokens.verify(token)

    # -- topics -------------------------------------------------------------------------

    def topic(self, value: Any) -> str:
        """``value`` as a topic name (no wildcards), or ``bad_topic``."""
        return self._valid(validate_topic, value)

    def filter(self, value: Any) -> str:
        """``value`` as a topic filter (wildcards allowed), or ``bad_topic``."""
        return self._valid(validate_filter, value)

    def _valid(self, validate: Callable[..., str], value: Any) -> str:
        """The one place a bad topic or filter becomes ``bad_topic`` (topics.* limits)."""
        t = self.settings.topics
        try:
            return validate(value, max_length=t.max_length, max_depth=t.max_depth)
        except TopicError as e:
            raise BadTopic(f"topic: {e}") from None

    # -- subscribe ----------------------------------------------------------------------

    def subscribable(self, principal: Principal, value: Any) -> str:
        """``value`` as a filter ``principal`` may subscribe to, or ``bad_topic`` /
        ``forbidden``."""
        flt = self.filter(value)
        if not self.acl.can_subscribe(principal, flt):
            raise Forbidden(f"not allowed to subscribe to {flt!r}")
        return flt

    def take_subscription(self, user: str | None, held: int, most: int) -> None:
        """Count one more filter against a session holding ``held`` (at most
        ``most``) and against its user (``topics.max_user_subscriptions``), or
        refuse with ``too_many_subscriptions`` (MQTT: 0x97 Quota exceeded)."""
        if held >= most:
            raise QuotaExceeded(f"more than {most} subscriptions",
                                code="too_many_subscriptions")
        tally = self.node.user_subscriptions
        if user is not None and not tally.take(user):
            raise QuotaExceeded(f"more than {tally.limit} subscriptions for this user on "
                                "this node", code="too_many_subscriptions")

    def hold_subscriptions(self, user: str | None, n: int) -> None:
        """Count ``n`` subscriptions made earlier (a stored session's) against
        ``user``, even over a since lowered limit: they were allowed when made."""
        if user is not None and n:
            self.node.user_subscriptions.force(user, n)

    def give_back(self, user: str | None, n: int = 1) -> None:
        """Release ``n`` of ``user``'s subscriptions (topics.max_user_subscriptions)."""
        if user is not None and n:
            self.node.user_subscriptions.give(user, n)

    async def retained(self, principal: Principal, flt: str, edge: str) -> list[Publication]:
        """The retained messages ``flt`` matches that ``principal`` may see (a
        wildcard matches other users' topics and denied ones too); those it may
        not are counted as denied on ``edge`` (``ws``, ``mqtt``)."""
        seen = []
        for pub in await self.node.retained(flt):
            if self.acl.may_see(principal, pub.topic):
                seen.append(pub)
            else:
                self.metrics.inc("tidings_acl_denied_messages_total", edge=edge)
        return seen

    # -- publish ------------------------------------------------------------------------

    def authorize_publish(self, principal: Principal | None, topic: str,
                          where: str = "") -> None:
        """Whether ``principal`` may publish to ``topic``; None is the backend,
        which may publish anywhere but to the server's own ``$`` topics."""
        if principal is None:
            if is_reserved(topic):
                raise Forbidden(f"{where}topics starting with '$' are written by the server "
                                "only", code="reserved_topic")
        elif not self.acl.can_publish(principal, topic):  # refuses '$' topics too
            raise Forbidden(f"{where}not allowed to publish to {topic!r}")

    def check_size(self, payload: bytes, where: str = "") -> None:
        """``limits.max_message_size`` on a message's stored bytes."""
        most = self.settings.limits.max_message_size
        if len(payload) > most:
            raise TooLarge(f"{where}data over limits.max_message_size ({most} bytes)")

    def check_publish(self, principal: Principal, value: Any, payload: bytes) -> str:
        """``value`` as a topic ``principal`` may publish ``payload`` to (topic
        rules, ACL and ``$`` refusal, size), in that order."""
        topic = self.topic(value)
        self.authorize_publish(principal, topic)
        self.check_size(payload)
        return topic

    async def publish(self, topic: str, payload: bytes, kind: PayloadKind, *,
                      retain: bool = False, idempotency_key: str | None = None,
                      qos: int = 1, origin: str | None = None, meta: Any = None
                      ) -> PublishResult:
        """Store and fan out a message already passed through the checks above
        (``qos``, ``origin`` and ``meta``: what an MQTT subscriber is told)."""
        return await self.node.publish(topic, payload, kind, retain=retain,
                                       idempotency_key=idempotency_key, qos=qos,
                                       origin=origin, meta=meta)

    # -- audience (issue 12): tags, attributes, segments -------------------------------
    # Validation is tidings.audience's (400 naming the field); the limits are the
    # [audience] settings. A backend acts for any user; clients have no such ops.

    async def user_tags(self, user: str) -> list[str]:
        return await self.node.user_tags(user)

    async def set_user_tags(self, user: str, tags: Any) -> list[str]:
        limits = self.settings.audience
        return await self.node.set_user_tags(user, audience.check_tags(tags, "tags", limits),
                                             max_tags=limits.max_tags)

    async def change_user_tags(self, user: str, add: Any, remove: Any) -> list[str]:
        limits = self.settings.audience
        return await self.node.change_user_tags(
            user, audience.check_tags([] if add is None else add, "add", limits),
            audience.check_tags([] if remove is None else remove, "remove", limits),
            max_tags=limits.max_tags)

    async def user_attributes(self, user: str) -> dict[str, Any]:
        return await self.node.user_attributes(user)

    async def set_user_attributes(self, user: str, attributes: Any) -> dict[str, Any]:
        checked = audience.check_attributes(attributes, "attributes", self.settings.audience)
        return await self.node.set_user_attributes(user, checked)

    async def segment_put(self, name: str, definition: Any) -> bool:
        """Save a segment (its definition checked as :func:`audience.parse_audience`
        does); True if it is new."""
        name = audience.check_segment_name(name)
        audience.parse_audience(definition, "segment", self.settings.audience)
        return await self.node.segment_put(name, definition)

    async def segment_get(self, name: str) -> dict[str, Any]:
        """A saved segment's definition, or ``not_found``."""
        definition = await self.node.segment_get(audience.check_segment_name(name))
        if definition is None:
            raise NotFound(f"segment: no segment {name!r}")
        return definition

    async def segment_delete(self, name: str) -> None:
        if not await self.node.segment_delete(audience.check_segment_name(name)):
            raise NotFound(f"segment: no segment {name!r}")

    async def _segment_query(self, name: str) -> AudienceQuery:
        return audience.parse_audience(await self.segment_get(name), "segment",
                                       self.settings.audience)

    async def segment_count(self, name: str) -> int:
        """How many users the segment selects now (pages through them)."""
        query = await self._segment_query(name)
        return await self.node.audience_count(query, page=self.settings.audience.page_size)

    async def segment_users(self, name: str, cursor: Any, limit: int) -> dict[str, Any]:
        """One page of the segment's users, ascending, as ``{users, next}``; a page
        may be short (even empty) while ``next`` is not null."""
        if not 1 <= limit <= SEGMENT_PAGE_LIMIT:
            raise BadRequest(f"limit must be between 1 and {SEGMENT_PAGE_LIMIT}")
        if cursor is not None and (not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR):
            raise BadRequest("cursor must be a previous page's next")
        query = await self._segment_query(name)
        page = await self.node.audience_page(query, cursor=cursor or None, limit=limit)
        return {"users": page.users, "next": page.next}

    # -- preferences (issue 12) ---------------------------------------------------------
    # Validation is tidings.preferences' under the operator's [preferences] rules,
    # the same for a backend and for the user themself.

    def _rules(self) -> preferences.Rules:
        return preferences.Rules.from_settings(self.settings.preferences)

    async def preferences(self, user: str) -> dict[str, Any]:
        """The user's stored preferences document (``{}`` before any change)."""
        return await self.node.user_preferences(user)

    async def set_preferences(self, user: str, doc: Any, *, merge: bool) -> dict[str, Any]:
        """Replace (``merge`` False: PUT) or merge into (RFC 7396: PATCH) the user's
        preferences; returns the stored document, also published on
        ``users/{uid}/preferences``. Bad input: ``bad_request`` naming the field,
        nothing changed."""
        rules = self._rules()
        if not merge:
            fresh = preferences.parse(doc, rules).to_dict()  # checked before the lock
            return await self.node.change_user_preferences(user, lambda _: fresh)
        if not isinstance(doc, dict):
            raise BadRequest(f"preferences: expected an object, got {type(doc).__name__}")

        def patched(current: dict[str, Any]) -> dict[str, Any]:
            return preferences.merge(preferences.parse(current, rules), doc, rules).to_dict()

        return await self.node.change_user_preferences(user, patched)

    @staticmethod
    def is_preferences_set_topic(user: str | None, topic: str) -> bool:
        """Whether ``topic`` is ``users/{user}/preferences/set`` (MQTT): applied as a
        merge into the user's preferences, never published."""
        return user is not None and topic == f"users/{user}/preferences/set"

    async def device_preferences(self, user: str, payload: bytes) -> dict[str, Any]:
        """A ``users/{uid}/preferences/set`` message: a JSON object merged into
        the user's preferences; anything else ``bad_payload`` (MQTT 0x99)."""
        doc = _json_object(payload)
        if doc is None:
            raise BadPayload("preferences: not a JSON object")
        try:
            return await self.set_preferences(user, doc, merge=True)
        except BadRequest as e:
            raise BadPayload(e.message) from None

    def submit(self, topic: str, payload: bytes, kind: PayloadKind, *, retain: bool = False,
               qos: int = 1, origin: str | None = None, meta: Any = None
               ) -> asyncio.Future[PublishResult]:
        """:meth:`publish` without waiting (:meth:`tidings.node.Node.submit`): an edge
        that read many publishes submits each in order, then waits."""
        return self.node.submit(topic, payload, kind, retain=retain, qos=qos, origin=origin,
                                meta=meta)

    # -- inbox --------------------------------------------------------------------------

    def device(self, value: Any, where: str = "") -> str:
        """A device name as clients give it: 1-128 printable characters."""
        if not (isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable()):
            raise BadRequest(f"{where}device must be 1-128 printable characters")
        return value

    async def inbox(self, user: str, *, limit: int, before: Any, unread_only: bool,
                    where: str = "", encoding: Encoding | None = None) -> dict[str, Any]:
        """One page of ``user``'s inbox as ``{items, unread, next}``.

        With ``encoding``, a page over ``limits.max_reply_size`` once encoded is
        read again shorter, so its ``next`` continues right after its last item
        (the store makes the cursor).
        """
        if not 1 <= limit <= INBOX_LIMIT:
            raise BadRequest(f"{where}limit must be between 1 and {INBOX_LIMIT}")
        if before is not None and not is_cursor(before):
            raise BadRequest(f"{where}before must be a cursor from a previous page's next")
        page = await self.node.inbox(user, limit=limit, before=before,
                                     unread_only=unread_only)
        items = [i.to_dict() for i in page.items]
        if encoding is not None:
            fits = fitting(items, self.settings.limits.max_reply_size, encoding)
            if fits < len(items):
                page = await self.node.inbox(user, limit=fits, before=before,
                                             unread_only=unread_only)
                items = [i.to_dict() for i in page.items]
        return {"items": items, "unread": page.unread, "next": page.next}

    async def unread(self, user: str) -> int:
        return await self.node.unread(user)

    async def mark(self, user: str, action: MarkAction, ids: Sequence[Any] | None,
                   everything: bool, device: str) -> UserChange:
        """Mark notifications read, unread or archived on every device of ``user``."""
        return await self.notifier.mark(user, action, ids, everything, device)

    @staticmethod
    def is_read_topic(user: str | None, topic: str) -> bool:
        """Whether ``topic`` is ``users/{user}/read``, where a device (MQTT) says what
        it read: applied to the inbox, never published."""
        return user is not None and topic == f"users/{user}/read"

    async def device_read(self, user: str, payload: bytes, device: str) -> UserChange:
        """A ``users/{uid}/read`` message: ``{"ids": [...]}`` or ``{"all": true}``."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise BadRequest("read: not a JSON object", code="bad_read")
        return await self.mark(user, "read", body.get("ids"), body.get("all") is True, device)

    async def track(self, user: str, notification: Any, event: Any) -> bool:
        return await self.notifier.track(user, notification, event)

    # -- feedback (issue 13) ------------------------------------------------------------

    async def feedback(self, user: str, notification: Any, reason: Any, comment: Any
                       ) -> bool:
        """The user's feedback on a notification in their inbox (checked, counted
        once, emitted: :meth:`Notifier.feedback`); True if recorded. A recorded
        ``too_many`` halves the user's cap on the notification's category
        (:func:`preferences.halve_cap`), stored and announced like any change of
        their preferences."""
        recorded = await self.notifier.feedback(user, notification, reason, comment)
        if recorded and reason == "too_many":
            await self._fewer(user, notification)
        return recorded

    async def _fewer(self, user: str, notification_id: str) -> None:
        stats = await self.node.store.stats(notification_id)
        if stats is None:
            return
        rules, category = self._rules(), str(stats["category"])
        base = self.settings.preferences.feedback_cap_per_day
        if preferences.halve_cap(preferences.Preferences(), category, rules, base) is None:
            return  # always_on or not a category users may cap

        def lowered(current: dict[str, Any]) -> dict[str, Any]:
            try:
                halved = preferences.halve_cap(preferences.parse(current, rules), category,
                                               rules, base)
            except BadRequest:  # stored under older rules: left for the user to mend
                return current
            return current if halved is None else halved.to_dict()

        await self.node.change_user_preferences(user, lowered)

    @staticmethod
    def is_feedback_topic(user: str | None, topic: str) -> bool:
        """Whether ``topic`` is ``users/{user}/feedback`` (MQTT): recorded as the
        user's feedback, never published."""
        return user is not None and topic == f"users/{user}/feedback"

    async def device_feedback(self, user: str, payload: bytes) -> bool:
        """A ``users/{uid}/feedback`` message: ``{"notification", "reason",
        "comment"}``; anything else, or a bad field, ``bad_payload`` (MQTT 0x99)."""
        body = _json_object(payload)
        if body is None:
            raise BadPayload("feedback: not a JSON object")
        unknown = sorted(set(body) - FEEDBACK_FIELDS)
        if unknown:
            raise BadPayload(f"feedback: unknown field {unknown[0][:64]!r}")
        try:
            return await self.feedback(user, body.get("notification"), body.get("reason"),
                                       body.get("comment"))
        except BadRequest as e:
            raise BadPayload(f"feedback: {e.message}") from None

    # -- platform push (issue 16) ---------------------------------------------------------

    def _push(self) -> PushChannel:
        if self.node.push is None:
            raise Unavailable("platform push is not running on this node")
        return self.node.push

    def vapid_public_key(self) -> str | None:
        """What ``PushManager.subscribe`` takes as ``applicationServerKey``."""
        return None if self.node.push is None else self.node.push.vapid_public_key

    async def register_push(self, user: str, device: str, body: Any) -> list[dict[str, Any]]:
        """Store ``device``'s endpoint (400 naming the field if bad); the user's endpoints."""
        return [r.to_dict() for r in await self._push().register(user, device, body)]

    @staticmethod
    def is_push_register_topic(user: str | None, topic: str) -> bool:
        """Whether ``topic`` is ``users/{user}/push/register`` (MQTT): this device's
        push endpoint, stored, never published."""
        return user is not None and topic == f"users/{user}/push/register"

    async def device_push_register(self, user: str, payload: bytes, device: str
                                   ) -> list[dict[str, Any]]:
        """A ``users/{uid}/push/register`` message: an endpoint object (the forms of
        ``register_push``); anything else ``bad_payload`` (MQTT 0x99)."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise BadPayload("push/register: not a JSON object")
        try:
            return await self.register_push(user, device, body)
        except BadRequest as e:
            raise BadPayload(e.message) from None

    async def push_endpoints(self, user: str) -> list[dict[str, Any]]:
        return [r.to_dict() for r in await self._push().store.push_endpoints(user)]

    async def unregister_push(self, user: str, device: str | None) -> int:
        """Remove ``device``'s endpoint (None: all of the user's); how many went."""
        return await self._push().store.push_remove(user, device=device)

    async def devices(self, user: str) -> list[dict[str, Any]]:
        return await self.presence.devices(user)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    """An MQTT message's payload as a JSON object, or None if it is not one."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def fitting(items: list[dict[str, Any]], budget: int, encoding: Encoding) -> int:
    """How many of ``items`` (at least one) fit in ``budget`` bytes once encoded."""
    for n, item in enumerate(items):
        budget -= len(encode(item, encoding))
        if budget < 0:
            return max(1, n)
    return len(items)
