"""The client codec with literal bytes: commands in, replies and pushes out, server frames.

Every command of every op is given as the literal bytes a client sends, in
both encodings (``tidings.v1.json`` and ``tidings.v1.msgpack``), so a change
to the wire format shows up here as a failing literal, not as a silent
round trip through the same encoder.
"""

from __future__ import annotations

import base64
from typing import Any

import msgpack
import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from tidings.errors import BadRequest
from tidings.protocol.frames import (
    OPS,
    Command,
    Encoding,
    decode_command,
    encode,
    encode_message,
    error_reply,
    message_fields,
    ok_reply,
    ws_frame,
)
from tidings.types import Offset, PayloadKind, Publication

J = Encoding.JSON
M = Encoding.MSGPACK

# -- valid commands: (json bytes, msgpack bytes, expected command) ---------------

VALID = [
    (b'{"op":"connect","id":1,"token":"t","device":"d","since":"e:1"}',
     b"\x85\xa2op\xa7connect\xa2id\x01\xa5token\xa1t\xa6device\xa1d\xa5since\xa3e:1",
     Command("connect", 1, {"token": "t", "device": "d", "since": "e:1"})),
    (b'{"op":"subscribe","id":2,"topic":"a/+","since":"e:3"}',
     b"\x84\xa2op\xa9subscribe\xa2id\x02\xa5topic\xa3a/+\xa5since\xa3e:3",
     Command("subscribe", 2, {"topic": "a/+", "since": "e:3"})),
    (b'{"op":"subscribe","id":2,"topic":"a/+","since":{"a/b":"e:3"}}',
     b"\x84\xa2op\xa9subscribe\xa2id\x02\xa5topic\xa3a/+\xa5since\x81\xa3a/b\xa3e:3",
     Command("subscribe", 2, {"topic": "a/+", "since": {"a/b": "e:3"}})),
    (b'{"op":"unsubscribe","id":3,"topic":"a/+"}',
     b"\x83\xa2op\xabunsubscribe\xa2id\x03\xa5topic\xa3a/+",
     Command("unsubscribe", 3, {"topic": "a/+"})),
    (b'{"op":"publish","id":4,"topic":"a/b","data":{"x":1},"retain":true}',
     b"\x85\xa2op\xa7publish\xa2id\x04\xa5topic\xa3a/b\xa4data\x81\xa1x\x01\xa6retain\xc3",
     Command("publish", 4, {"topic": "a/b", "data": {"x": 1}, "retain": True})),
    (b'{"op":"ping","id":5}',
     b"\x82\xa2op\xa4ping\xa2id\x05",
     Command("ping", 5, {})),
    (b'{"op":"inbox","id":6,"limit":10,"before":"n1","unread_only":false}',
     b"\x85\xa2op\xa5inbox\xa2id\x06\xa5limit\n\xa6before\xa2n1\xabunread_only\xc2",
     Command("inbox", 6, {"limit": 10, "before": "n1", "unread_only": False})),
    (b'{"op":"read","id":7,"ids":["n1"]}',
     b"\x83\xa2op\xa4read\xa2id\x07\xa3ids\x91\xa2n1",
     Command("read", 7, {"ids": ["n1"]})),
    (b'{"op":"unread","id":8,"all":true}',
     b"\x83\xa2op\xa6unread\xa2id\x08\xa3all\xc3",
     Command("unread", 8, {"all": True})),
    (b'{"op":"archive","id":9,"ids":["n1","n2"]}',
     b"\x83\xa2op\xa7archive\xa2id\t\xa3ids\x92\xa2n1\xa2n2",
     Command("archive", 9, {"ids": ["n1", "n2"]})),
    (b'{"op":"track","id":10,"notification":"n1","event":"clicked","action":"open"}',
     (b"\x85\xa2op\xa5track\xa2id\n\xacnotification\xa2n1\xa5event\xa7clicked"
      b"\xa6action\xa4open"),
     Command("track", 10, {"notification": "n1", "event": "clicked", "action": "open"})),
    (b'{"op":"devices","id":11}',
     b"\x82\xa2op\xa7devices\xa2id\x0b",
     Command("devices", 11, {})),
    (b'{"op":"preferences","id":12}',
     b"\x82\xa2op\xabpreferences\xa2id\x0c",
     Command("preferences", 12, {})),
    (b'{"op":"set_preferences","id":13,"preferences":{"locale":"en"},"merge":true}',
     (b"\x84\xa2op\xafset_preferences\xa2id\r\xabpreferences\x81\xa6locale\xa2en"
      b"\xa5merge\xc3"),
     Command("set_preferences", 13, {"preferences": {"locale": "en"}, "merge": True})),
    (b'{"op":"register_push","id":14,"kind":"fcm","token":"t1"}',
     b"\x84\xa2op\xadregister_push\xa2id\x0e\xa4kind\xa3fcm\xa5token\xa2t1",
     Command("register_push", 14, {"kind": "fcm", "token": "t1"})),
    (b'{"op":"unregister_push","id":15}',
     b"\x82\xa2op\xafunregister_push\xa2id\x0f",
     Command("unregister_push", 15, {})),
    (b'{"op":"feedback","id":16,"notification":"n1","reason":"too_many","comment":"hi"}',
     (b"\x85\xa2op\xa8feedback\xa2id\x10\xacnotification\xa2n1\xa6reason\xa8too_many"
      b"\xa7comment\xa2hi"),
     Command("feedback", 16, {"notification": "n1", "reason": "too_many", "comment": "hi"})),
]


def test_every_op_has_a_valid_literal() -> None:
    assert {c.op for _, _, c in VALID} == set(OPS)


@pytest.mark.parametrize("raw_json, raw_msgpack, expected", VALID,
                         ids=[f"{c.op}-{i}" for i, (_, _, c) in enumerate(VALID)])
def test_valid_commands_both_encodings(raw_json: bytes, raw_msgpack: bytes,
                                       expected: Command) -> None:
    assert decode_command(raw_json, J) == expected
    assert decode_command(raw_json.decode(), J) == expected  # a text frame arrives as str
    assert decode_command(raw_msgpack, M) == expected


def test_id_is_optional() -> None:
    assert decode_command(b'{"op":"ping"}', J) == Command("ping", None, {})
    assert decode_command(b"\x81\xa2op\xa4ping", M) == Command("ping", None, {})


def test_id_zero_and_largest_safe_integer_accepted() -> None:
    assert decode_command(b'{"op":"ping","id":0}', J).id == 0
    assert decode_command(b'{"op":"ping","id":9007199254740991}', J).id == 2**53 - 1


def test_publish_data_may_be_any_json_value_including_null() -> None:
    for literal, value in ((b"null", None), (b"3", 3), (b'"s"', "s"), (b"[1,{}]", [1, {}]),
                           (b"false", False)):
        cmd = decode_command(b'{"op":"publish","topic":"a","data":' + literal + b"}", J)
        assert cmd.args == {"topic": "a", "data": value}


def test_publish_binary_data_in_msgpack_stays_bytes() -> None:
    cmd = decode_command(b"\x83\xa2op\xa7publish\xa5topic\xa1a\xa4data\xc4\x02\x00\xff", M)
    assert cmd.args == {"topic": "a", "data": b"\x00\xff"}


def test_null_optional_argument_is_treated_as_absent() -> None:
    cmd = decode_command(b'{"op":"subscribe","id":1,"topic":"a","since":null}', J)
    assert cmd.args == {"topic": "a"}


# -- errors: (encoding, raw, code, request_id, message fragment) ------------------

def _mp(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


ERRORS = [
    # not the encoding at all
    (J, b"", "malformed", None, "not valid JSON"),
    (J, b"{", "malformed", None, "not valid JSON"),
    (J, b'{"op":"ping",}', "malformed", None, "not valid JSON"),
    (J, b"\xff\xfe", "malformed", None, "not valid JSON"),
    (M, b"", "malformed", None, "not valid MessagePack"),
    (M, b"\xc1", "malformed", None, "not valid MessagePack"),  # 0xc1 is never used
    (M, b"\x82\xa2op", "malformed", None, "not valid MessagePack"),  # truncated map
    (M, b"\x81\xa2op\xa4ping\x00", "malformed", None, "not valid MessagePack"),  # extra data
    (M, b"\x81\x01\xa4ping", "malformed", None, "not valid MessagePack"),  # int map key
    # not an object
    (J, b"[]", "malformed", None, "object"),
    (J, b'"ping"', "malformed", None, "object"),
    (J, b"null", "malformed", None, "object"),
    (J, b"42", "malformed", None, "object"),
    (M, b"\x90", "malformed", None, "object"),  # []
    (M, b"\xa4ping", "malformed", None, "object"),
    (M, b"\xc0", "malformed", None, "object"),  # nil
    # id: not a non-negative integer (the bad id itself is not echoed)
    (J, b'{"op":"ping","id":-1}', "bad_request", None, "id"),
    (J, b'{"op":"ping","id":true}', "bad_request", None, "id"),
    (J, b'{"op":"ping","id":1.5}', "bad_request", None, "id"),
    (J, b'{"op":"ping","id":1.0}', "bad_request", None, "id"),
    (J, b'{"op":"ping","id":"1"}', "bad_request", None, "id"),
    (J, b'{"op":"ping","id":9007199254740992}', "bad_request", None, "id"),
    (M, b"\x82\xa2op\xa4ping\xa2id\xff", "bad_request", None, "id"),  # -1 as negative fixint
    (M, b"\x82\xa2op\xa4ping\xa2id\xc3", "bad_request", None, "id"),  # true
    # op missing, not a string, unknown
    (J, b'{"id":1}', "bad_request", 1, "op"),
    (J, b'{"id":1,"op":7}', "bad_request", 1, "op"),
    (J, b'{"id":1,"op":"fly"}', "unknown_op", 1, "fly"),
    (J, b'{"id":1,"op":"PING"}', "unknown_op", 1, "PING"),
    (M, b"\x82\xa2op\xa3fly\xa2id\x01", "unknown_op", 1, "fly"),
    # unknown fields
    (J, b'{"op":"ping","id":2,"x":1}', "bad_request", 2, "unknown field 'x'"),
    (J, b'{"op":"subscribe","id":2,"topic":"a","Since":"e:1"}', "bad_request", 2,
     "unknown field 'Since'"),
    (M, _mp({"op": "ping", "id": 2, b"k": 1}), "bad_request", 2, "unknown field"),
    # missing required fields
    (J, b'{"op":"subscribe","id":3}', "bad_request", 3, "topic is required"),
    (J, b'{"op":"unsubscribe","id":3}', "bad_request", 3, "topic is required"),
    (J, b'{"op":"publish","id":3,"topic":"a"}', "bad_request", 3, "data is required"),
    (J, b'{"op":"publish","id":3,"data":1}', "bad_request", 3, "topic is required"),
    (J, b'{"op":"track","id":3,"event":"opened"}', "bad_request", 3, "notification is required"),
    (J, b'{"op":"track","id":3,"notification":"n"}', "bad_request", 3, "event is required"),
    (M, b"\x82\xa2op\xa9subscribe\xa2id\x03", "bad_request", 3, "topic is required"),
    # a required field given as null is still missing
    (J, b'{"op":"subscribe","id":3,"topic":null}', "bad_request", 3, "topic is required"),
    (J, b'{"op":"track","id":3,"notification":null,"event":"opened"}', "bad_request", 3,
     "notification is required"),
    # wrong types
    (J, b'{"op":"inbox","id":4,"limit":true}', "bad_request", 4, "limit must be an integer"),
    (J, b'{"op":"inbox","id":4,"limit":"10"}', "bad_request", 4, "limit must be an integer"),
    (J, b'{"op":"inbox","id":4,"limit":1.5}', "bad_request", 4, "limit must be an integer"),
    (J, b'{"op":"subscribe","id":4,"topic":5}', "bad_request", 4, "topic must be a string"),
    (J, b'{"op":"subscribe","id":4,"topic":["a"]}', "bad_request", 4, "topic must be a string"),
    (J, b'{"op":"subscribe","id":4,"topic":"a","since":7}', "bad_request", 4,
     "since must be"),
    (J, b'{"op":"publish","id":4,"topic":"a","data":1,"retain":1}', "bad_request", 4,
     "retain must be true or false"),
    (J, b'{"op":"publish","id":4,"topic":"a","data":1,"retain":"true"}', "bad_request", 4,
     "retain must be true or false"),
    (J, b'{"op":"read","id":4,"ids":"n1"}', "bad_request", 4, "ids must be a list"),
    (J, b'{"op":"read","id":4,"all":1}', "bad_request", 4, "all must be true or false"),
    (J, b'{"op":"connect","id":4,"token":123}', "bad_request", 4, "token must be a string"),
    (M, b"\x83\xa2op\xa5inbox\xa2id\x04\xa5limit\xc3", "bad_request", 4,
     "limit must be an integer"),  # bool where int
    (M, b"\x83\xa2op\xa9subscribe\xa2id\x04\xa5topic\x05", "bad_request", 4,
     "topic must be a string"),  # int where str
    (M, b"\x83\xa2op\xa9subscribe\xa2id\x04\xa5topic\xc4\x01a", "bad_request", 4,
     "topic must be a string"),  # bytes where str
]


@pytest.mark.parametrize("encoding, raw, code, request_id, fragment", ERRORS)
def test_bad_commands(encoding: Encoding, raw: bytes, code: str, request_id: int | None,
                      fragment: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_command(raw, encoding)
    err = info.value
    assert err.code == code
    assert err.request_id == request_id
    assert fragment in err.message
    assert err.status == 400 and err.close_code == 4400
    assert err.to_dict() == {"code": code, "message": err.message}


def test_error_message_does_not_echo_long_input() -> None:
    op = "x" * 10_000
    with pytest.raises(BadRequest) as info:
        decode_command(orjson.dumps({"op": op, "id": 1}), J)
    assert len(info.value.message) < 100


# -- replies ------------------------------------------------------------------------


def test_ok_and_error_replies_literal() -> None:
    assert encode(ok_reply(3, offset="e:1"), J) == b'{"id":3,"ok":true,"offset":"e:1"}'
    assert encode(error_reply(None, "malformed", "m"), J) == (
        b'{"id":null,"ok":false,"error":{"code":"malformed","message":"m"}}')
    assert encode(ok_reply(3), M) == b"\x82\xa2id\x03\xa2ok\xc3"
    assert msgpack.unpackb(encode(error_reply(4, "forbidden", "no"), M)) == {
        "id": 4, "ok": False, "error": {"code": "forbidden", "message": "no"}}


# -- message pushes -------------------------------------------------------------------


def _pub(payload: bytes, kind: PayloadKind, *, retained: bool = False) -> Publication:
    return Publication("home/kitchen/temp", Offset("ab12:7"), payload, kind, 1700000000123,
                       retained=retained)


def test_json_payload_is_embedded_as_itself_in_json() -> None:
    # the stored JSON text goes out byte for byte (encode once, no re-serialisation)
    pub = _pub(b'{"c": 21.5, "u": "C"}', PayloadKind.JSON)
    assert encode_message(pub, J) == (
        b'{"type":"message","topic":"home/kitchen/temp","offset":"ab12:7",'
        b'"data":{"c": 21.5, "u": "C"},"retained":false,"ts":1700000000123}')


def test_json_payload_in_msgpack_is_the_decoded_value() -> None:
    pub = _pub(b'{"c":21.5}', PayloadKind.JSON, retained=True)
    raw = encode_message(pub, M)
    assert msgpack.unpackb(raw) == {"type": "message", "topic": "home/kitchen/temp",
                                    "offset": "ab12:7", "data": {"c": 21.5},
                                    "retained": True, "ts": 1700000000123}


def test_text_payload_travels_as_a_string() -> None:
    pub = _pub(b"21.5 C", PayloadKind.TEXT)
    assert encode_message(pub, J) == (
        b'{"type":"message","topic":"home/kitchen/temp","offset":"ab12:7",'
        b'"data":"21.5 C","retained":false,"ts":1700000000123}')
    raw = encode_message(pub, M)
    assert b"\xa4data\xa621.5 C" in raw  # a msgpack str, not bin
    assert msgpack.unpackb(raw)["data"] == "21.5 C"


def test_binary_payload_is_data_b64_in_json() -> None:
    pub = _pub(b"\x00\xff\x80", PayloadKind.BINARY)
    fields = message_fields(pub, J)
    assert "data" not in fields
    assert fields["data_b64"] == "AP+A"
    assert base64.b64decode(fields["data_b64"]) == b"\x00\xff\x80"
    assert encode_message(pub, J) == (
        b'{"type":"message","topic":"home/kitchen/temp","offset":"ab12:7",'
        b'"data_b64":"AP+A","retained":false,"ts":1700000000123}')


def test_binary_payload_is_raw_bytes_in_msgpack() -> None:
    pub = _pub(b"\x00\xff\x80", PayloadKind.BINARY)
    raw = encode_message(pub, M)
    assert b"\xa4data\xc4\x03\x00\xff\x80" in raw  # bin 8, the bytes as they are
    decoded = msgpack.unpackb(raw)
    assert decoded["data"] == b"\x00\xff\x80" and "data_b64" not in decoded


def test_message_field_order_and_names() -> None:
    fields = message_fields(_pub(b"1", PayloadKind.JSON), M)
    assert list(fields) == ["type", "topic", "offset", "data", "retained", "ts"]


# -- server frames (RFC 6455 section 5.2) -------------------------------------------

@pytest.mark.parametrize("n, text, header", [
    (0, True, b"\x81\x00"),
    (0, False, b"\x82\x00"),
    (1, True, b"\x81\x01"),
    (125, True, b"\x81\x7d"),  # the largest 7-bit length
    (126, True, b"\x81\x7e\x00\x7e"),  # 16-bit extended length
    (126, False, b"\x82\x7e\x00\x7e"),
    (65535, True, b"\x81\x7e\xff\xff"),  # the largest 16-bit length
    (65536, False, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),  # 64-bit extended length
    (65536, True, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
])
def test_ws_frame_header(n: int, text: bool, header: bytes) -> None:
    payload = bytes(i % 251 for i in range(n)) if not text else b"x" * n
    frame = ws_frame(payload, text=text)
    assert frame[:len(header)] == header
    assert frame[len(header):] == payload  # unmasked: the payload follows as is
    # and a real WebSocket client parser reads the same frame back
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    parsed: Frame = done.value.value
    assert parsed.fin and parsed.opcode is (Opcode.TEXT if text else Opcode.BINARY)
    assert parsed.data == payload
