"""How a publication travels between nodes over Redis, and on which channel.

Shared by the Redis store (whose scripts PUBLISH / SPUBLISH in the same atomic
step as the history append) and the Redis bus (which subscribes to the same
channels and decodes the same bytes). Nothing here does I/O.

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

Wire format
-----------
A msgpack array (strings as str, the payload as bin)::

    [topic, offset, ts, payload, kind, qos, published_retain, origin, meta]

``meta`` is nil or a map of the MQTT 5.0 properties that are present (field
name -> value; tuples as arrays). The store's Lua scripts build the same
bytes from :func:`wire_head` + offset + ts + payload + :func:`wire_tail`, so
a publication is encoded identically by Python and by Redis.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import msgpack

from ..protocol.mqtt.properties import NO_PROPERTIES, Properties
from ..types import Offset, PayloadKind, Publication

__all__ = [
    "CHANNEL_PREFIX",
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
_TUPLE_FIELDS = frozenset({"subscription_identifiers", "user_properties"})
_PROPERTY_FIELDS = frozenset(f.name for f in fields(Properties))


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


def _meta_to_wire(meta: Any) -> dict[str, Any] | None:
    if not isinstance(meta, Properties) or meta is NO_PROPERTIES or not meta:
        return None
    out: dict[str, Any] = {}
    for f in fields(meta):
        value = getattr(meta, f.name)
        if value is None or value == ():
            continue
        if f.name == "user_properties":
            value = [list(pair) for pair in value]
        elif f.name in _TUPLE_FIELDS:
            value = list(value)
        out[f.name] = value
    return out


def _meta_from_wire(data: Any) -> Properties | None:
    if not isinstance(data, dict) or not data:
        return None
    kw: dict[str, Any] = {}
    for name, value in data.items():
        if name not in _PROPERTY_FIELDS:
            continue  # a property a newer node knows: ignore it
        if name == "user_properties":
            value = tuple((str(k), str(v)) for k, v in value)
        elif name in _TUPLE_FIELDS:
            value = tuple(value)
        kw[name] = value
    return Properties(**kw)


def wire_head(topic: str) -> bytes:
    """The bytes before the offset: the array header and the topic."""
    return _ARRAY_9 + _pack(topic)


def wire_tail(kind: PayloadKind, qos: int = 1, published_retain: bool = False,
              origin: str | None = None, meta: Any = None) -> bytes:
    """The bytes after the payload: kind, qos, published_retain, origin, meta."""
    return (_pack(int(kind)) + _pack(qos) + _pack(published_retain) + _pack(origin)
            + _pack(_meta_to_wire(meta)))


def encode_publication(pub: Publication) -> bytes:
    """The bytes of ``pub`` on the wire (``retained`` is not carried: a live message)."""
    return (wire_head(pub.topic) + _pack(pub.offset) + _pack(pub.ts) + _pack(pub.payload)
            + wire_tail(pub.kind, pub.qos, pub.published_retain, pub.origin, pub.meta))


def decode_publication(data: bytes) -> Publication:
    """The publication in ``data``; raises ``ValueError`` for anything else."""
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
        properties = _meta_from_wire(meta)
    except (ValueError, TypeError) as e:
        raise ValueError("not a publication") from e
    return Publication(topic, Offset(offset), payload, payload_kind, ts, qos=qos,
                       published_retain=published_retain, origin=origin, meta=properties)
