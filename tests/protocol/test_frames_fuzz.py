"""Property tests for the WS command decoder, JSON and msgpack (hypothesis).

:func:`~tidings.protocol.frames.decode_command` takes whatever a client sends
in one frame. For random bytes, random values of any shape, commands built
from the op table with wrong and right field types, and byte mutations of
valid commands, in both encodings:

- the only exception that escapes is the documented ``BadRequest`` (a
  :class:`~tidings.errors.TidingsError`, codes ``malformed``, ``bad_request``
  or ``unknown_op``), with a ``request_id`` that is None or a valid id;
- whatever is accepted obeys the op table: a known op, only its fields,
  each of an accepted type, every required one present, an id in range.

A coverage-guided fuzzer for the same decoder is tests/fuzz/ws_command_fuzz.py
(not run by the suite). ``WS_FUZZ_EXAMPLES`` raises the count for a longer run.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidings.errors import BadRequest, TidingsError
from tidings.protocol.frames import OPS, Command, Encoding, _type_ok, decode_command

FUZZ = settings(max_examples=int(os.environ.get("WS_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CODES = {"malformed", "bad_request", "unknown_op"}

encodings = st.sampled_from(list(Encoding))
scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True) | st.text(max_size=12) | st.binary(max_size=12))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
field_names = st.sampled_from(sorted({k for spec in OPS.values() for k in spec}
                                     | {"op", "id", "x", ""}))
ids = st.none() | st.integers(-5, 2 ** 54) | st.booleans() | st.text(max_size=3)


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly well-formed commands from the op table, with some fields wrong."""
    op = draw(st.sampled_from([*OPS, "nope", ""]))
    obj: dict[str, Any] = {"op": op}
    if draw(st.booleans()):
        obj["id"] = draw(ids)
    for key in OPS.get(op, {}):
        if draw(st.booleans()):
            obj[key] = draw(values)
    for key in draw(st.lists(field_names, max_size=2)):
        obj[key] = draw(values)
    return obj


def pack(obj: Any, encoding: Encoding) -> bytes | None:
    """``obj`` in the encoding, or None when that encoding cannot carry it."""
    try:
        if encoding is Encoding.JSON:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
        return bytes(msgpack.packb(obj, use_bin_type=True))
    except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
        return None


def check(raw: bytes, encoding: Encoding) -> Command | None:
    """Decode; only a documented BadRequest may escape; an accepted command obeys the table."""
    try:
        cmd = decode_command(raw, encoding)
    except BadRequest as e:
        assert e.code in CODES, e.code
        assert e.request_id is None or (type(e.request_id) is int
                                        and 0 <= e.request_id < 2 ** 53)
        assert e.message and len(e.message) < 200
        return None
    except TidingsError as e:  # pragma: no cover - the failure message
        raise AssertionError(f"undocumented {type(e).__name__}: {e.code}") from e
    spec = OPS[cmd.op]
    assert cmd.id is None or (type(cmd.id) is int and 0 <= cmd.id < 2 ** 53)
    for key, value in cmd.args.items():
        types, _ = spec[key]
        assert _type_ok(value, types), (key, value)
    for key, (_, required) in spec.items():
        assert not required or key in cmd.args, key
    return cmd


@FUZZ
@given(raw=st.binary(max_size=200), encoding=encodings)
@example(raw=b"\xff" * 8, encoding=Encoding.JSON)
@example(raw=b"[" * 5000, encoding=Encoding.JSON)  # nesting past orjson's limit
@example(raw=b"\x91" * 5000, encoding=Encoding.MSGPACK)  # nesting past msgpack's stack
@example(raw=b"\x81\x01\x02", encoding=Encoding.MSGPACK)  # an int map key
@example(raw=b"\xc1", encoding=Encoding.MSGPACK)  # a reserved byte
@example(raw=b"\xd6\xff\x00\x00\x00\x01", encoding=Encoding.MSGPACK)  # a timestamp
@example(raw=b'{"op":"ping"}{}', encoding=Encoding.JSON)  # trailing data
@example(raw=b"\x81\xa2op\xa4ping\xc0", encoding=Encoding.MSGPACK)
def test_random_bytes(raw: bytes, encoding: Encoding) -> None:
    check(raw, encoding)


@FUZZ
@given(obj=values, encoding=encodings)
def test_random_values(obj: Any, encoding: Encoding) -> None:
    raw = pack(obj, encoding)
    if raw is not None:
        check(raw, encoding)


@FUZZ
@given(obj=commands(), encoding=encodings)
def test_commands_from_the_op_table(obj: dict[str, Any], encoding: Encoding) -> None:
    raw = pack(obj, encoding)
    if raw is None:
        return
    cmd = check(raw, encoding)
    if cmd is not None:
        assert cmd.op == obj["op"]


@FUZZ
@given(obj=commands(), encoding=encodings, data=st.data())
def test_mutated_commands(obj: dict[str, Any], encoding: Encoding, data: st.DataObject
                          ) -> None:
    raw = pack(obj, encoding)
    if not raw:
        return
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        how = data.draw(st.sampled_from(["flip", "drop", "dup", "cut"]))
        if how == "flip":
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "drop" and len(buf) > 1:
            del buf[i]
        elif how == "dup":
            buf[i:i] = buf[i:i + data.draw(st.integers(1, 8))]
        else:
            del buf[i:]
            if not buf:
                return
    check(bytes(buf), encoding)


def test_a_valid_command_is_accepted_in_both_encodings() -> None:
    """The checker accepts what it should: a fuzz run that only sees errors proves little."""
    obj = {"op": "subscribe", "id": 7, "topic": "news/+", "since": {"news/a": "e:1"}}
    for encoding in Encoding:
        raw = pack(obj, encoding)
        assert raw is not None
        cmd = check(raw, encoding)
        assert cmd == Command("subscribe", 7, {"topic": "news/+", "since": {"news/a": "e:1"}})
