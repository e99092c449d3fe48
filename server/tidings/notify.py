"""The notification pipeline: validate, write every target's inbox, fan out.

``POST /v1/notify`` and the WS/MQTT ``read`` family end here. The store does
each user's change atomically (item, unread count, stream offset, retained
count); this module turns requests into store calls and hands the resulting
publications to the bus, so every device of the user, on any node, sees the
change.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson

from .audience import TARGET_KEYS, NotifyTarget, parse_audience, parse_notify_target
from .audience import count as audience_count
from .config import AudienceSettings, NotifySettings
from .content import Content
from .errors import BadRequest, Conflict, NotFound, TooLarge
from .node import Node
from .preferences import Rules
from .rates import report
from .schedule import BEST_TIME, LocalTime, parse_send_at, parse_send_at_local
from .sending import Sender
from .store.base import (
    FEEDBACK_REASONS,
    JOB_STATUSES,
    OUTCOMES,
    TRACK_EVENTS,
    Job,
    MarkAction,
    NewJob,
    NotifyResult,
    UserChange,
)
from .store.contracts.inbox import is_notification_id
from .types import is_cursor
from .variants import compile_variants, parse_experiment, parse_variants

__all__ = ["FEEDBACK_COMMENT_MAX", "FEEDBACK_FIELDS", "NOTIFY_FIELDS", "PRIORITIES",
           "TEXT_LIMITS", "Notifier", "Request"]

FEEDBACK_COMMENT_MAX = 500  # characters of a feedback's optional comment
# the fields of a feedback document (HTTP body, MQTT payload); anything else is refused
FEEDBACK_FIELDS = frozenset({"notification", "reason", "comment"})

PRIORITIES = ("low", "normal", "high", "urgent")
TEXT_LIMITS = {"title": 256, "body": 4096}
"""Characters a notification's title and body may hold, at the top level and in
each variant."""
_MEDIA = ("image", "video", "audio")
# Every field a notify request may carry; anything else is a 400 naming it.
NOTIFY_FIELDS = frozenset({*TARGET_KEYS, "title", "body", "data", "locales", "category",
                           "priority", "media", "ttl", "collapse_key", "send_at",
                           "send_at_local", "variants", "experiment"})


@dataclass
class Request:
    """A validated ``POST /v1/notify``: who, what, when.

    ``stored`` is the request as the job keeps it (JSON): everything a node
    needs to send it later, on any node, after a restart."""

    target: NotifyTarget
    users: list[str] | None  # the ids of a ``users`` request, deduplicated
    fields: dict[str, Any]  # id, title, body, data, category, priority, media
    content: Content
    ttl: float | None
    collapse_key: str | None
    send_at: float | None = None  # epoch seconds; None: now (or per user)
    local: LocalTime | None = None
    best_time: bool = False
    stored: dict[str, Any] = field(default_factory=dict)

    @property
    def immediate(self) -> bool:
        """Sent as the request is answered, the same moment for everyone."""
        return self.send_at is None and self.local is None and not self.best_time


def _str(body: dict[str, Any], key: str, limit: int, *, required: bool = False,
         default: str | None = None) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key} is required")
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    if len(value) > limit:
        raise BadRequest(f"{key} is longer than {limit} characters")
    return value


def valid_user(user: Any) -> str:
    if not isinstance(user, str) or not 0 < len(user) <= 128 or any(
            c in user for c in "/+#") or not user.isprintable():
        raise BadRequest("user ids are 1-128 printable characters without '/', '+' or '#'")
    return user


class Notifier:
    """Notify requests, read marks, tracking and the notification endpoints.

    ``sender`` is the node's :class:`~tidings.sending.Sender`: it sends jobs in
    the background and runs the scheduler (the app starts and closes it)."""

    def __init__(self, node: Node, settings: NotifySettings,
                 audience: AudienceSettings | None = None, rules: Rules | None = None
                 ) -> None:
        self.node = node
        self.settings = settings
        self.audience = audience or AudienceSettings()
        self.rules = rules or Rules.default()
        self.sender = Sender(node, settings, self.audience, self.rules)

    def parse(self, body: dict[str, Any]) -> Request:
        """Validate a notify request (everything a 400 can name is checked here,
        templates compiled, before anything is stored)."""
        target = parse_notify_target(body, self.audience)
        users = None
        if target.kind == "users":
            users = body.get("users")
            if not isinstance(users, list) or not users:
                raise BadRequest("users must be a non-empty list of user ids")
            if len(users) > self.settings.max_users:
                raise BadRequest(f"users lists at most {self.settings.max_users} ids")
            users = list(dict.fromkeys(valid_user(u) for u in users))
        fields: dict[str, Any] = {
            "id": "n_" + secrets.token_hex(8),
            "title": _str(body, "title", TEXT_LIMITS["title"], default=""),
            "body": _str(body, "body", TEXT_LIMITS["body"], default=""),
            "data": body.get("data"),
            "category": _str(body, "category", 64, default="general"),
            "priority": _str(body, "priority", 16, default="normal"),
            "media": self._media(body.get("media")),
        }
        if len(orjson.dumps(fields["data"])) > self.settings.max_data_size:
            raise TooLarge(f"data is over {self.settings.max_data_size} bytes as JSON")
        if fields["priority"] not in PRIORITIES:
            raise BadRequest(f"priority must be one of {', '.join(PRIORITIES)}")
        ttl = body.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or not 0 < ttl <= self.settings.max_ttl):
            raise BadRequest(f"ttl must be a number of seconds in (0, {self.settings.max_ttl}]")
        collapse = _str(body, "collapse_key", 128)
        content = Content.compile(title=fields["title"], body=fields["body"],
                                  data=fields["data"], locales=body.get("locales"),
                                  max_templates=self.settings.max_templates,
                                  max_placeholders=self.settings.max_placeholders)
        send_at, local, best = self._when(body)
        stored: dict[str, Any] = {
            "target": {target.kind: users if users is not None else body[target.kind]},
            **{k: fields[k] for k in ("title", "body", "data", "priority", "media")},
            "locales": body.get("locales"), "collapse_key": collapse, "ttl": ttl,
            "send_at_local": body.get("send_at_local"), "best_time": best}
        stored.update(self._variants(body, stored, local is not None or best))
        return Request(target, users, fields, content,
                       float(ttl) if ttl is not None else None, collapse, send_at, local,
                       best, stored)

    def _variants(self, body: dict[str, Any], stored: dict[str, Any], per_user: bool
                  ) -> dict[str, Any]:
        """``variants`` and ``experiment`` (issue 13) as the job stores them, each
        variant's content checked like the top level's (limits, media, templates)."""
        raw, experiment = body.get("variants"), body.get("experiment")
        if raw is None:
            if experiment is not None:
                raise BadRequest("experiment: needs variants to compare")
            return {}
        variants = parse_variants(raw)
        for i, v in enumerate(variants.items):
            where = f"variants[{i}]"
            for key, limit in TEXT_LIMITS.items():
                if key in v.content and not (isinstance(v.content[key], str)
                                             and len(v.content[key]) <= limit):
                    raise BadRequest(f"{where}.{key}: must be a string of at most "
                                     f"{limit} characters")
            if len(orjson.dumps(v.content.get("data"))) > self.settings.max_data_size:
                raise TooLarge(f"{where}.data: over {self.settings.max_data_size} bytes "
                               f"as JSON")
            if "media" in v.content:
                try:
                    self._media(v.content["media"])
                except BadRequest as e:
                    raise BadRequest(f"{where}.{e.message}") from None
        compile_variants(stored, variants, max_templates=self.settings.max_templates,
                         max_placeholders=self.settings.max_placeholders)
        out: dict[str, Any] = {"variants": variants.to_json()}
        if experiment is not None:
            if per_user:
                raise BadRequest("experiment: not with send_at_local or send_at "
                                 "\"best_time\" (the test group is sent at one time)")
            out["experiment"] = parse_experiment(experiment).to_json()
        return out

    def _when(self, body: dict[str, Any]) -> tuple[float | None, LocalTime | None, bool]:
        """``send_at`` (RFC 3339 or ``"best_time"``) and ``send_at_local``: at most one."""
        send_at, local = body.get("send_at"), body.get("send_at_local")
        if send_at is not None and local is not None:
            raise BadRequest("send_at, send_at_local: give one, not both")
        if local is not None:
            return None, parse_send_at_local(local), False
        if send_at == BEST_TIME:
            return None, None, True
        if send_at is not None:
            return parse_send_at(send_at).timestamp(), None, False
        return None, None, False

    @staticmethod
    def _media(media: Any) -> dict[str, str] | None:
        if media is None:
            return None
        if not isinstance(media, dict) or not set(media) <= set(_MEDIA):
            raise BadRequest(f"media must be an object with {', '.join(_MEDIA)} URLs")
        for key, url in media.items():
            if not isinstance(url, str) or len(url) > 2048 or urlparse(url).scheme not in (
                    "http", "https") or not urlparse(url).netloc:
                raise BadRequest(f"media.{key} must be an http(s) URL")
        return dict(media)

    async def notify(self, body: dict[str, Any], idempotency_key: str | None = None
                     ) -> NotifyResult:
        """Validate and send (a list of users, now: before answering) or record a
        job the sender sends in the background (an audience, or a schedule)."""
        req = self.parse(body)
        store = self.node.store
        if req.target.kind == "segment":
            assert req.target.segment is not None
            definition = await store.segment_get(req.target.segment)
            if definition is None:
                raise NotFound(f"segment: no segment {req.target.segment!r}")
            req.stored["target"] = {"audience": definition, "segment": req.target.segment}
        if req.users is not None and req.immediate:
            if "variants" not in req.stored and await self._plain(req):
                result = await store.notify(req.users, req.fields, ttl=req.ttl,
                                            collapse_key=req.collapse_key,
                                            policy=self.node.policy,
                                            idempotency_key=idempotency_key)
                if not result.duplicate:
                    self.node.metrics.inc("tidings_notifications_total")
                    self.node.metrics.inc("tidings_notification_outcomes_total",
                                          result.targets, outcome="pushed")
                    for change in result.changes:
                        await self.node.fan_out(change.publications)
                    if self.node.push is not None:  # live first (push/channel.py)
                        item = {**req.fields, "id": result.id}
                        await self.node.push.live_first(
                            result.id, {u: item for u in req.users},
                            ttl=int(req.ttl) if req.ttl else 86400,
                            collapse_key=req.collapse_key)
                return result
            job, duplicate = await self._create(req, len(req.users), idempotency_key,
                                                owner=self.sender.owner)
            if not duplicate:
                self.node.metrics.inc("tidings_notifications_total")
                await self.sender.run(job)
            return NotifyResult(job.id, job.targets, [], duplicate)
        if req.users is not None:
            targets = len(req.users)
        else:
            query = (parse_audience(req.stored["target"]["audience"], "segment",
                                    self.audience)
                     if req.target.kind == "segment" else req.target.query)
            assert query is not None
            targets = await audience_count(store, query, limits=self.audience)
        job, duplicate = await self._create(req, targets, idempotency_key)
        if not duplicate:
            self.node.metrics.inc("tidings_notifications_total")
            self.sender.kick()
        return NotifyResult(job.id, job.targets, [], duplicate)

    async def _plain(self, req: Request) -> bool:
        """Whether every user gets the same content pushed on every edge now, as
        before preferences existed: nobody in the list stored preferences, no
        placeholders or locales, and the operator caps not the category. Then the
        one-transaction inbox write of the store serves (the fast path)."""
        if req.content.personal or req.fields["category"] in self.rules.caps:
            return False
        assert req.users is not None
        docs = await self.node.store.preferences_many(req.users)
        return not any(docs.values())

    async def _create(self, req: Request, targets: int, idempotency_key: str | None, *,
                      owner: str | None = None) -> tuple[Job, bool]:
        now = self.node.clock.now()
        due = now if req.send_at is None else req.send_at
        expires = None if req.ttl is None else now + req.ttl
        spec = NewJob(req.fields["id"], req.fields["category"], req.stored, targets, due,
                      expires)
        return await self.node.store.job_create(spec, idempotency_key=idempotency_key,
                                                owner=owner, lease=self.settings.lease)

    # -- the notification endpoints ------------------------------------------------------

    async def get(self, notification_id: str) -> dict[str, Any]:
        """``GET /v1/notifications/{id}``: the job (status, outcomes) and its stats."""
        stats = await self.node.store.stats(notification_id)
        job = await self.node.store.job_get(notification_id)
        if stats is None:
            raise NotFound(f"no notification {notification_id[:64]!r}")
        push = {"push": await self.node.store.push_counts(notification_id)}
        if job is None:  # sent at once to a list of users (the fast path): all pushed
            # in seconds like a job's times (the stats endpoint keeps milliseconds)
            return {**stats, "created": stats["created"] / 1000, "status": "sent",
                    "pending": 0,
                    "outcomes": {o: stats["targets"] if o == "pushed" else 0
                                 for o in OUTCOMES}, **push}
        out = {**stats, **job.to_dict(), **push}
        if job.request.get("experiment") is not None:
            # its phase: "testing" until the verdict, then "decided" with the winner
            state = job.request.get("experiment_state") or {}
            out["experiment"] = {**job.request["experiment"],
                                 "phase": state.get("phase", "testing"),
                                 "decide_at": state.get("decide_at"),
                                 "winner": state.get("winner"),
                                 "significant": state.get("significant")}
        return out

    async def notifications(self, status: Any, cursor: Any, limit: Any) -> dict[str, Any]:
        """``GET /v1/notifications?status=&cursor=&limit=``: jobs by status, oldest first."""
        if status not in JOB_STATUSES:
            raise BadRequest(f"status: must be one of {', '.join(JOB_STATUSES)}")
        if cursor is not None and (not isinstance(cursor, str) or not is_cursor(cursor)):
            raise BadRequest("cursor: not a cursor from a previous page")
        page = await self.node.store.jobs(status, cursor=cursor, limit=limit)
        return {"notifications": [j.to_dict() for j in page.jobs], "next": page.next}

    async def cancel(self, notification_id: str) -> dict[str, Any]:
        """``DELETE /v1/notifications/{id}``: cancel what has not been sent."""
        job = await self.node.store.job_cancel(notification_id)
        if job is None:
            if await self.node.store.stats(notification_id) is not None:
                raise Conflict("this notification was already sent")
            raise NotFound(f"no notification {notification_id[:64]!r}")
        if job.status == "sent":
            raise Conflict("this notification was already sent")
        return job.to_dict()

    async def mark(self, user: str, action: MarkAction, ids: Sequence[Any] | None,
                   everything: bool, device: str) -> UserChange:
        if everything:
            if ids:
                raise BadRequest(f"{action}: give ids or all, not both")
            ids = None
        else:
            if not ids:
                raise BadRequest(f"{action}: ids (a non-empty list) or all: true is required")
            if len(ids) > 1000 or not all(isinstance(i, str) and len(i) <= 128 for i in ids):
                raise BadRequest(f"{action}: ids must be at most 1000 notification ids")
        change = await self.node.store.mark(user, action, ids, device=device,
                                            policy=self.node.policy)
        await self.node.fan_out(change.publications)
        push = self.node.push
        if push is not None and action != "unread" and change.changed:
            # read or archived anywhere: the OS notification goes everywhere (the
            # first push.channel.WITHDRAW_MOST of a large change; the devices' lists
            # hold the rest)
            push.submit(push.withdraw_many(user, change.changed))
        return change

    async def track(self, user: str, notification_id: Any, event: Any) -> bool:
        if event not in TRACK_EVENTS:
            raise BadRequest(f"event must be one of {', '.join(TRACK_EVENTS)}")
        if not is_notification_id(notification_id):
            raise BadRequest("notification must be a notification id")
        recorded = await self.node.store.track(notification_id, user, event)
        if event == "delivered" and self.node.push is not None:
            # live first: a device reported it, so no platform fallback (per user)
            self.node.push.acknowledged(user, notification_id)
        if recorded and self.node.events is not None:
            self.node.events.emit(event, user=user, notification=notification_id)
        return recorded

    async def feedback(self, user: str, notification_id: Any, reason: Any, comment: Any
                       ) -> bool:
        """Record the user's feedback on a notification in their inbox (issue 13):
        counted once per user and notification (the first wins; False when not
        recorded, as :meth:`track`), then emitted as the event ``feedback``.
        Bad input: ``bad_request`` naming the field."""
        if not is_notification_id(notification_id):
            raise BadRequest("notification must be a notification id")
        if reason not in FEEDBACK_REASONS:
            raise BadRequest(f"reason must be one of {', '.join(FEEDBACK_REASONS)}")
        if comment is not None and (not isinstance(comment, str)
                                    or len(comment) > FEEDBACK_COMMENT_MAX):
            raise BadRequest(f"comment must be a string of at most {FEEDBACK_COMMENT_MAX} "
                             "characters")
        recorded = await self.node.store.feedback(notification_id, user, reason, comment)
        if recorded and self.node.events is not None:
            self.node.events.emit("feedback", user=user, notification=notification_id,
                                  reason=reason, comment=comment)
        return recorded

    async def stats(self, notification_id: str) -> dict[str, Any]:
        """``GET /v1/notifications/{id}/stats``: the store's row (id, category,
        targets counted at acceptance, created, the event counts) and the
        report of :func:`tidings.rates.report` (``total``, ``variants``,
        ``metric``, ``winner``); the platform push outcomes in ``total.push``."""
        stats = await self.node.store.stats(notification_id)
        if stats is None:
            raise NotFound(f"no notification {notification_id[:64]!r}")
        job = await self.node.store.job_get(notification_id)
        per_variant = await self.node.store.variant_counts(notification_id)
        if job is None:  # sent at once to a list of users (the fast path): all pushed
            out = {**stats, **report({"pushed": stats["targets"]}, stats, per_variant, {})}
        else:
            out = {**stats, **report(job.outcomes, stats, per_variant, job.request)}
        out["total"]["push"] = await self.node.store.push_counts(notification_id)
        return out
