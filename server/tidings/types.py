"""Identifiers and the values that travel between layers."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, NewType

import orjson

__all__ = [
    "Offset",
    "PayloadKind",
    "Publication",
    "UserId",
    "classify_payload",
    "format_offset",
    "is_cursor",
    "parse_offset",
    "stored_publication",
]

UserId = NewType("UserId", str)
Offset = NewType("Offset", str)
"""Opaque to clients: ``"<epoch>:<seq>"``. The epoch changes when a topic's
history is lost (a store wiped), so an offset from before is never mistaken
for one after."""


class PayloadKind(enum.IntEnum):
    JSON = 0  # payload is one UTF-8 JSON document
    TEXT = 1  # UTF-8 text that is not JSON
    BINARY = 2  # anything else


def classify_payload(payload: bytes) -> PayloadKind:
    """How bytes from a publisher (e.g. an MQTT device) travel to WS clients."""
    try:
        orjson.loads(payload)
        return PayloadKind.JSON
    except orjson.JSONDecodeError:
        pass
    try:
        payload.decode("utf-8")
        return PayloadKind.TEXT
    except UnicodeDecodeError:
        return PayloadKind.BINARY


def format_offset(epoch: str, seq: int) -> Offset:
    return Offset(f"{epoch}:{seq}")


def is_cursor(value: object) -> bool:
    """Whether ``value`` is a sequence number as we write them: 1-19 ASCII digits.

    ``str.isdigit`` alone also accepts digits ``int()`` refuses (``"²"``) and
    other scripts' digits, which must be a clear bad request, not an internal error.
    """
    return (isinstance(value, str) and 0 < len(value) <= 19 and value.isascii()
            and value.isdigit())


def parse_offset(offset: str) -> tuple[str, int] | None:
    """``(epoch, seq)``, or None for a string that is not an offset of ours."""
    epoch, sep, seq = offset.rpartition(":")
    if not sep or not epoch or not is_cursor(seq):
        return None
    return epoch, int(seq)


@dataclass(frozen=True, slots=True)
class Publication:
    """One message on a topic, as stored and as fanned out."""

    topic: str
    offset: Offset
    payload: bytes
    kind: PayloadKind
    ts: int  # milliseconds since the epoch, assigned by the store
    retained: bool = False  # True only when delivered as the retained message
    # What the publisher asked for; not stored with history (recovered
    # messages get the defaults).
    qos: int = 1  # MQTT QoS it travels with (subscribers get at most this)
    published_retain: bool = False  # the publisher's RETAIN flag (for retain-as-published)
    origin: str | None = None  # the publishing MQTT client id (for no-local)
    meta: Any = None  # MQTT 5.0 properties of the message, when published over MQTT

    @property
    def seq(self) -> int:
        return int(self.offset.rpartition(":")[2])

    def data(self) -> Any:
        """The payload as a JSON value (TEXT as a string; BINARY has none)."""
        if self.kind is PayloadKind.JSON:
            return orjson.loads(self.payload)
        if self.kind is PayloadKind.TEXT:
            return self.payload.decode("utf-8")
        return None


_SLOTS = dataclasses.fields(Publication)
_SET_TOPIC, _SET_OFFSET, _SET_PAYLOAD, _SET_KIND, _SET_TS = (
    getattr(Publication, f.name).__set__ for f in _SLOTS[:5])
_DEFAULTS = tuple((getattr(Publication, f.name).__set__, f.default) for f in _SLOTS[5:])
assert [f.name for f in _SLOTS[:5]] == ["topic", "offset", "payload", "kind", "ts"]
assert all(d is not dataclasses.MISSING for _, d in _DEFAULTS)


def stored_publication(topic: str, offset: Offset, payload: bytes, kind: PayloadKind,
                       ts: int) -> Publication:
    """``Publication(topic, offset, payload, kind, ts)``, the other fields at their
    defaults, made by setting its slots directly: the generated ``__init__`` of a
    frozen dataclass sets each of its ten fields through ``object.__setattr__``,
    which made it the largest Python cost of a targeted send after SQLite's
    (two per user). Tests hold it equal to the constructed one."""
    pub: Publication = object.__new__(Publication)
    _SET_TOPIC(pub, topic)
    _SET_OFFSET(pub, offset)
    _SET_PAYLOAD(pub, payload)
    _SET_KIND(pub, kind)
    _SET_TS(pub, ts)
    for put, default in _DEFAULTS:
        put(pub, default)
    return pub
