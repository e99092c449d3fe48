"""Topics: publish one message, publish a batch, read a topic's history."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, TidingsError, Unavailable
from ..protocol.frames import Encoding, message_fields
from ..sessions import Operations
from ..types import PayloadKind, parse_offset
from .common import NODE, OPS, field, idempotency_scope, int_query, json_body, json_response, only

__all__ = ["history", "publish", "publish_batch"]

_MAX_BATCH = 1000
_MESSAGE_FIELDS = frozenset({"topic", "data", "retain"})
_BATCH_FIELDS = frozenset({"messages"})


def _message(ops: Operations, body: Any, where: str = "") -> tuple[str, bytes, bool]:
    """A message to publish: topic, JSON payload, retain flag, all checked (the
    backend may publish anywhere but ``$`` topics)."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where}must be a JSON object")
    only(body, _MESSAGE_FIELDS, where)
    try:
        topic = ops.topic(field(body, "topic", str, required=True))
        if "data" not in body:
            raise BadRequest("data is required")
        retain = field(body, "retain", bool, default=False)
    except BadRequest as e:
        raise BadRequest(f"{where}{e.message}", code=e.code) from None
    ops.authorize_publish(None, topic, where)
    payload = orjson.dumps(body["data"])
    ops.check_size(payload, where)
    return topic, payload, retain


async def publish(request: web.Request) -> web.Response:
    """``POST /v1/publish``: ``{topic, data, retain}`` -> ``{"offset"}``."""
    ops = request.app[OPS]
    topic, payload, retain = _message(ops, await json_body(request))
    result = await ops.publish(topic, payload, PayloadKind.JSON, retain=retain,
                               idempotency_key=idempotency_scope(request, "publish"))
    return json_response({"offset": result.publication.offset})


async def publish_batch(request: web.Request) -> web.Response:
    """``{"messages": [{topic, data, retain}, ...]}`` -> ``{"offsets": [...]}``, in order.

    All messages are validated before any is stored. They join the node's
    next store group together, in the order given, so one batch costs about
    one store call and one fan-out pass; each keeps its own offset and result.
    """
    ops = request.app[OPS]
    body = await json_body(request)
    only(body, _BATCH_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    if len(messages) > _MAX_BATCH:
        raise BadRequest(f"messages holds at most {_MAX_BATCH} entries")
    parsed = [_message(ops, m, f"messages[{i}]: ") for i, m in enumerate(messages)]
    results = await asyncio.gather(*[
        ops.submit(t, p, PayloadKind.JSON, retain=r) for t, p, r in parsed],
        return_exceptions=True)
    offsets: list[str | None] = []
    errors = []
    for i, r in enumerate(results):
        if isinstance(r, BaseException):
            if not isinstance(r, TidingsError):
                raise r
            offsets.append(None)
            errors.append({"index": i, **r.to_dict()})
        else:
            offsets.append(r.publication.offset)
    if errors and len(errors) == len(results):
        raise Unavailable("no message of the batch could be stored")
    return json_response({"offsets": offsets, "errors": errors}, 207 if errors else 200)


async def history(request: web.Request) -> web.Response:
    """``GET /v1/topics/{topic}/history?since=&limit=``: a page of stored messages."""
    topic = request.app[OPS].topic(request.match_info["topic"])
    since = request.query.get("since") or None
    if since is not None and parse_offset(since) is None:
        raise BadRequest("since is not an offset")
    limit = int_query(request, "limit", 100, 1, 1000)
    page = await request.app[NODE].history(topic, since, limit)
    return json_response({
        "topic": topic,
        "offset": page.offset,
        "complete": page.complete,
        "items": [message_fields(p, Encoding.JSON) for p in page.items],
    })
