"""How Tidings lays out its data on Redis: key names, channels, the envelope.

Shared by the Redis store (whose scripts PUBLISH / SPUBLISH in the same atomic
step as the history append) and the Redis bus (which subscribes to the same
channels and decodes the same bytes), so it belongs to neither: it sits below
both and imports no protocol. Nothing here does I/O.

Hash tags
---------
Every topic has a *base*: the part of its Redis key names and of its channel
name that carries the hash tag, so a topic's keys and its channel live in one
slot of a Redis Cluster:

* ``users/{uid}/...`` (a user's private topics): ``{u:<uid>}:t:<topic>``.
  Every key of user ``uid`` (inbox, counts, and all of the user's topics)
  shares the tag ``{u:<uid>}``, so one script changes the inbox and appends
  to ``users/{uid}/notifications`` atomically.
* any other topic: ``{t:<topic>}``.

Inside a tag, ``%`` and ``}`` are escaped (``%25``, ``%7D``) so the tag ends
at the first ``}`` and two different names never make the same key.

Envelope
--------
A publication between nodes is a msgpack array (strings as str, the payload
as bin)::

    [topic, offset, ts, payload, kind, qos, published_retain, origin, meta]

``meta`` is nil or a map of plain values: what the :class:`MetaCodec` given
by the caller makes of ``Publication.meta``. ``app.py`` gives both Redis
backends the MQTT one (:data:`tidings.protocol.mqtt.properties.PROPERTIES_MAP`:
the MQTT 5.0 properties that are present, field name -> value, tuples as
arrays); without a codec ``meta`` travels as nil and arrives as None. The store's Lua scripts
build the same bytes from :func:`wire_head` + offset + ts + payload +
:func:`wire_tail`, so a publication is encoded identically by Python and by
Redis.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack

from .types import Offset, PayloadKind, Publication

__all__ = [
    "CHANNEL_PREFIX",
    "MetaCodec",
    "channel_for",
    "decode_publication",
    "encode_publication",
    "escape_tag",
    "parse_redis_url",
    "topic_base",
    "user_of",
    "user_tag",
    "wire_head",
    "wire_tail",
]

CHANNEL_PREFIX = "tidings:"
_ARRAY_9 = b"\x99"  # msgpack fixarray of 9 elements


class MetaCodec(Protocol):
    """Turns ``Publication.meta`` (protocol metadata, such as MQTT 5.0
    properties) into the envelope's ``meta`` map and back.

    The hook through which an edge's metadata crosses nodes without this module
    (or the bus, or the store) knowing the protocol. ``encode`` returns None
    for a value it does not carry (absent, empty, or not its type); ``decode``
    gets a non-empty map, ignores names it does not know (a newer node's) and
    raises ``ValueError`` or ``TypeError`` for a map it cannot read.
    """

    def encode(self, meta: Any) -> dict[str, Any] | None: ...

    def decode(self, data: dict[str, Any]) -> Any: ...


def parse_redis_url(url: str) -> tuple[str, bool]:
    """``(url for redis-py, is a cluster)``. ``redis+cluster://host:port`` (or
    ``rediss+cluster://``) names any node of a Redis Cluster; ``redis://`` and
    ``rediss://`` one server. Store and bus read ``redis.url`` the same way."""
    for scheme in ("redis+cluster://", "rediss+cluster://"):
        if url.startswith(scheme):
            return url.replace("+cluster", "", 1), True
    return url, False


def escape_tag(name: str) -> str:
    """``name`` made safe inside a hash tag: no ``}`` (which would end it)."""
    if "%" in name or "}" in name:
        return name.replace("%", "%25").replace("}", "%7D")
    return name


def user_of(topic: str) -> str | None:
    """The user whose private topic this is (``users/{uid}/...``), else None."""
    if not topic.startswith("users/"):
        return None
    uid, sep, _ = topic[6:].partition("/")
    return uid if sep or uid else None


def user_tag(user: str) -> str:
    """The hash tag shared by every key of ``user``."""
    return "{u:" + escape_tag(user) + "}"


def topic_base(topic: str) -> str:
    """The hash-tagged base of a topic's key names and channel (see the module doc)."""
    user = user_of(topic)
    if user is not None:
        return user_tag(user) + ":t:" + topic
    return "{t:" + escape_tag(topic) + "}"


def channel_for(topic: str) -> str:
    """The pub/sub channel of ``topic``: in the slot of the topic's keys (SPUBLISH)."""
    return CHANNEL_PREFIX + topic_base(topic)


def _pack(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, use_bin_type=True)
    return out


def wire_head(topic: str) -> bytes:
    """The bytes before the offset: the array header and the topic."""
    return _ARRAY_9 + _pack(topic)


def wire_tail(kind: PayloadKind, qos: int = 1, published_retain: bool = False,
              origin: str | None = None, meta: Any = None,
              meta_codec: MetaCodec | None = None) -> bytes:
    """The bytes after the payload: kind, qos, published_retain, origin, meta
    (as ``meta_codec`` encodes it; nil without one)."""
    meta_map = meta_codec.encode(meta) if meta_codec is not None and meta is not None else None
    return (_pack(int(kind)) + _pack(qos) + _pack(published_retain) + _pack(origin)
            + _pack(meta_map or None))


def encode_publication(pub: Publication, meta_codec: MetaCodec | None = None) -> bytes:
    """The bytes of ``pub`` on the wire (``retained`` is not carried: a live message)."""
    return (wire_head(pub.topic) + _pack(pub.offset) + _pack(pub.ts) + _pack(pub.payload)
            + wire_tail(pub.kind, pub.qos, pub.published_retain, pub.origin, pub.meta,
                        meta_codec))


def decode_publication(data: bytes, meta_codec: MetaCodec | None = None) -> Publication:
    """The publication in ``data``; raises ``ValueError`` for anything else.

    ``meta`` is decoded by ``meta_codec``; without one (or when the map is
    nil or empty) the publication's ``meta`` is None."""
    try:
        items = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as e:  # msgpack raises several types; callers need one
        raise ValueError("not a publication") from e
    if not isinstance(items, list) or len(items) < 5:
        raise ValueError("not a publication")
    topic, offset, ts, payload, kind = items[:5]
    rest = items[5:] + [1, False, None, None][len(items) - 5:]
    qos, published_retain, origin, meta = rest[:4]
    if not (isinstance(topic, str) and isinstance(offset, str) and isinstance(ts, int)
            and isinstance(payload, bytes) and isinstance(kind, int)
            and isinstance(qos, int) and isinstance(published_retain, bool)
            and (origin is None or isinstance(origin, str))):
        raise ValueError("not a publication")
    try:
        payload_kind = PayloadKind(kind)
        decoded = (meta_codec.decode(meta)
                   if meta_codec is not None and isinstance(meta, dict) and meta else None)
    except (ValueError, TypeError) as e:
        raise ValueError("not a publication") from e
    return Publication(topic, Offset(offset), payload, payload_kind, ts, qos=qos,
                       published_retain=published_retain, origin=origin, meta=decoded)
