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
from typing import Any
from urllib.parse import urlparse

import orjson

from .config import NotifySettings
from .errors import BadRequest, NotFound, TooLarge
from .node import Node
from .store.base import TRACK_EVENTS, MarkAction, NotifyResult, UserChange

__all__ = ["NOTIFY_FIELDS", "PRIORITIES", "Notifier"]

PRIORITIES = ("low", "normal", "high")
_MEDIA = ("image", "video", "audio")
_UNSUPPORTED = ("tags", "segment", "send_at", "variants")
# Every field a notify request may carry (the unsupported ones are refused by
# name in ``parse``); anything else is a 400 naming it.
NOTIFY_FIELDS = frozenset({"users", "title", "body", "data", "category", "priority", "media",
                           "ttl", "collapse_key", *_UNSUPPORTED})


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
    def __init__(self, node: Node, settings: NotifySettings) -> None:
        self.node = node
        self.settings = settings

    def parse(self, body: dict[str, Any]) -> tuple[list[str], dict[str, Any], float | None,
                                                   str | None]:
        """Validate a notify request; return (users, fields, ttl, collapse_key)."""
        for key in _UNSUPPORTED:
            if body.get(key) is not None:
                raise BadRequest(f"{key} targeting is not available on this server yet",
                                 code="unsupported")
        users = body.get("users")
        if not isinstance(users, list) or not users:
            raise BadRequest("users must be a non-empty list of user ids")
        if len(users) > self.settings.max_users:
            raise BadRequest(f"users lists at most {self.settings.max_users} ids")
        users = list(dict.fromkeys(valid_user(u) for u in users))
        fields: dict[str, Any] = {
            "id": "n_" + secrets.token_hex(8),
            "title": _str(body, "title", 256, default=""),
            "body": _str(body, "body", 4096, default=""),
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
        return users, fields, (float(ttl) if ttl is not None else None), collapse

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
        users, fields, ttl, collapse = self.parse(body)
        result = await self.node.store.notify(users, fields, ttl=ttl, collapse_key=collapse,
                                              policy=self.node.policy,
                                              idempotency_key=idempotency_key)
        if not result.duplicate:
            self.node.metrics.inc("tidings_notifications_total")
            for change in result.changes:
                await self.node.fan_out(change.publications)
        return result

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
        return change

    async def track(self, user: str, notification_id: Any, event: Any) -> bool:
        if event not in TRACK_EVENTS:
            raise BadRequest(f"event must be one of {', '.join(TRACK_EVENTS)}")
        if not isinstance(notification_id, str) or len(notification_id) > 128:
            raise BadRequest("notification must be a notification id")
        recorded = await self.node.store.track(notification_id, user, event)
        if recorded and self.node.events is not None:
            self.node.events.emit(event, user=user, notification=notification_id)
        return recorded

    async def stats(self, notification_id: str) -> dict[str, Any]:
        stats = await self.node.store.stats(notification_id)
        if stats is None:
            raise NotFound(f"no notification {notification_id[:64]!r}")
        return stats
