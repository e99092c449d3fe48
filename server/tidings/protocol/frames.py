"""The client protocol: decode and validate commands, encode replies and pushes.

Sans-I/O: bytes in, values out, and back. Two encodings share one shape:
``tidings.v1.json`` (UTF-8 JSON in text frames) and ``tidings.v1.msgpack``
(MessagePack in binary frames). :func:`ws_frame` builds the server-side
WebSocket frame (RFC 6455 section 5.2) once per message, so the hub can hand
the same bytes to every subscriber.
"""

from __future__ import annotations

import base64
import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from ..errors import BadRequest
from ..types import PayloadKind, Publication

__all__ = [
    "OPS",
    "Command",
    "Encoding",
    "decode_command",
    "encode",
    "encode_message",
    "error_reply",
    "message_fields",
    "ok_reply",
    "push_fields",
    "ws_frame",
]


class Encoding(enum.Enum):
    JSON = "tidings.v1.json"
    MSGPACK = "tidings.v1.msgpack"


@dataclass(frozen=True, slots=True)
class Command:
    op: str
    id: int | None
    args: dict[str, Any]


# Each op's arguments: name -> (accepted types, required). Anything else in
# the frame is an error, so a typo in a client surfaces at once.
_STR = (str,)
_INT = (int,)
_BOOL = (bool,)
_ANY = (object,)
_SINCE = (str, dict)
_IDS = (list,)
_Spec = dict[str, tuple[tuple[type, ...], bool]]

OPS: dict[str, _Spec] = {
    "connect": {"token": (_STR, False), "device": (_STR, False), "since": (_STR, False)},
    "subscribe": {"topic": (_STR, True), "since": (_SINCE, False)},
    "unsubscribe": {"topic": (_STR, True)},
    "publish": {"topic": (_STR, True), "data": (_ANY, True), "retain": (_BOOL, False)},
    "ping": {},
    "inbox": {"limit": (_INT, False), "before": (_STR, False), "unread_only": (_BOOL, False)},
    "read": {"ids": (_IDS, False), "all": (_BOOL, False)},
    "unread": {"ids": (_IDS, False), "all": (_BOOL, False)},
    "archive": {"ids": (_IDS, False), "all": (_BOOL, False)},
    "track": {"notification": (_STR, True), "event": (_STR, True), "action": (_STR, False)},
    "feedback": {"notification": (_STR, True), "reason": (_STR, True),
                 "comment": (_STR, False)},
    "devices": {},
    # platform push (issue 16): this device's endpoint, the forms of push/endpoints.py
    "register_push": {"kind": (_STR, True), "subscription": ((dict,), False),
                      "token": (_STR, False), "topic": (_STR, False)},
    "unregister_push": {},
    "preferences": {},
    "set_preferences": {"preferences": ((dict,), True), "merge": (_BOOL, False)},
}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list",
               dict: "an object", object: "any value"}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if bool in types:
        return isinstance(value, bool)
    if int in types and isinstance(value, bool):
        return False
    return isinstance(value, types)


def decode_command(raw: bytes | str, encoding: Encoding) -> Command:
    """Parse one frame into a validated :class:`Command`; raise ``BadRequest``.

    The error carries the command's ``id`` (when one could be read) in
    ``BadRequest.request_id`` so the reply can be matched by the client.
    """
    try:
        if encoding is Encoding.JSON:
            obj = orjson.loads(raw)
        else:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (orjson.JSONDecodeError, ValueError, msgpack.UnpackException, TypeError):
        name = "JSON" if encoding is Encoding.JSON else "MessagePack"
        raise BadRequest(f"frame is not valid {name}", code="malformed") from None
    if not isinstance(obj, dict):
        raise BadRequest("frame must be an object", code="malformed")
    rid = obj.get("id")
    if rid is not None and not (isinstance(rid, int) and not isinstance(rid, bool)
                                and 0 <= rid < 2**53):
        raise BadRequest("id must be a non-negative integer", code="bad_request")
    try:
        op = obj.get("op")
        if not isinstance(op, str):
            raise BadRequest("op must be a string", code="bad_request")
        spec = OPS.get(op)
        if spec is None:
            raise BadRequest(f"unknown op {op[:32]!r}", code="unknown_op")
        args: dict[str, Any] = {}
        for key, value in obj.items():
            if key in ("op", "id"):
                continue
            if key not in spec:
                raise BadRequest(f"{op}: unknown field {str(key)[:32]!r}")
            types, _ = spec[key]
            if value is None and types is not _ANY:
                continue
            if not _type_ok(value, types):
                raise BadRequest(f"{op}: {key} must be {_TYPE_NAMES[types[0]]}")
            args[key] = value
        for key, (_, required) in spec.items():
            if required and key not in args:  # a null counts as missing, not as given
                raise BadRequest(f"{op}: {key} is required")
    except BadRequest as e:
        e.request_id = rid
        raise
    return Command(op, rid, args)


def encode(obj: dict[str, Any], encoding: Encoding) -> bytes:
    if encoding is Encoding.JSON:
        return orjson.dumps(obj)
    out: bytes = msgpack.packb(obj, use_bin_type=True)  # typed Any by msgpack; no copy
    return out


def ok_reply(rid: int | None, **fields: Any) -> dict[str, Any]:
    return {"id": rid, "ok": True, **fields}


def error_reply(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"id": rid, "ok": False, "error": {"code": code, "message": message}}


def message_fields(pub: Publication, encoding: Encoding) -> dict[str, Any]:
    """The ``message`` push for ``pub`` (DESIGN.md: type, topic, offset, data, retained, ts)."""
    out: dict[str, Any] = {"type": "message", "topic": pub.topic, "offset": pub.offset}
    if pub.kind is PayloadKind.JSON:
        out["data"] = (orjson.Fragment(pub.payload) if encoding is Encoding.JSON
                       else orjson.loads(pub.payload))
    elif pub.kind is PayloadKind.TEXT:
        out["data"] = pub.payload.decode("utf-8")
    elif encoding is Encoding.MSGPACK:
        out["data"] = pub.payload  # raw bytes in msgpack mode
    else:
        out["data_b64"] = base64.b64encode(pub.payload).decode("ascii")
    out["retained"] = pub.retained
    out["ts"] = pub.ts
    return out


def _stream_leaf(topic: str) -> str | None:
    """``notifications`` / ``events`` for a user's stream topic, else None."""
    if topic.startswith("users/") and topic.count("/") == 2:
        leaf = topic.rpartition("/")[2]
        if leaf in ("notifications", "events"):
            return leaf
    return None


def push_fields(pub: Publication, encoding: Encoding) -> dict[str, Any]:
    """The WS push for ``pub``: a ``notification`` or ``read``-family event on a
    user's stream topics (their payload is the push, the store wrote it), else
    a ``message``."""
    leaf = _stream_leaf(pub.topic)
    if leaf is None or pub.kind is not PayloadKind.JSON:
        return message_fields(pub, encoding)
    fields = orjson.loads(pub.payload)
    if not isinstance(fields, dict):
        return message_fields(pub, encoding)
    if leaf == "notifications":
        return {"type": "notification", **fields, "offset": pub.offset}
    return {**fields, "offset": pub.offset}


def encode_message(pub: Publication, encoding: Encoding) -> bytes:
    return encode(push_fields(pub, encoding), encoding)


_OP_TEXT = 0x1
_OP_BINARY = 0x2


def ws_frame(payload: bytes, *, text: bool) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 section 5.2: FIN=1, RSV=0).

    Servers must not mask frames they send (section 5.1), so the frame for a
    payload is the same bytes for every client.
    """
    first = 0x80 | (_OP_TEXT if text else _OP_BINARY)
    n = len(payload)
    if n < 126:
        header = bytes((first, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload
