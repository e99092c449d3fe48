"""The wire form of a publication between nodes, and its channel (``bus/wire.py``).

No I/O: bytes in, publications out. What the Redis scripts write is checked
against a real Redis in ``test_redis_store.py``.
"""

from __future__ import annotations

import msgpack
import pytest
from redis.crc import key_slot

from tidings.bus.wire import (
    channel_for,
    decode_publication,
    encode_publication,
    parse_redis_url,
    topic_base,
    user_of,
)
from tidings.protocol.mqtt.properties import Properties
from tidings.types import Offset, PayloadKind, Publication


def pub(**kw: object) -> Publication:
    fields: dict[str, object] = {"topic": "home/kitchen/temp", "offset": Offset("a1b2c3d4:7"),
                                 "payload": b"\x00\xff", "kind": PayloadKind.BINARY,
                                 "ts": 1_700_000_000_123}
    fields.update(kw)
    return Publication(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("publication", [
    pub(),
    pub(payload=b'{"a":1}', kind=PayloadKind.JSON, qos=0, published_retain=True,
        origin="sensor-1"),
    pub(payload=b"", kind=PayloadKind.TEXT, qos=2, origin=""),
    pub(payload=b"x" * 70_000),  # bin32 length
    pub(meta=Properties(content_type="text/plain", correlation_data=b"\x01\x02",
                        message_expiry_interval=60, subscription_identifiers=(3, 9),
                        user_properties=(("k", "v"), ("k", "w")))),
])
def test_round_trip(publication: Publication) -> None:
    assert decode_publication(encode_publication(publication)) == publication


def test_retained_flag_and_unknown_meta_do_not_travel() -> None:
    p = pub(retained=True, meta={"not": "properties"})
    assert decode_publication(encode_publication(p)) == pub()


@pytest.mark.parametrize("junk", [
    b"", b"\x00", b"\x93\x01\x02\x03", b"\xc1",
    msgpack.packb(["t", "o:1", 1, "not bytes", 0]),
    msgpack.packb(["t", "o:1", 1, b"p", 9]),  # no such kind
    msgpack.packb({"topic": "t"}),
])
def test_anything_else_is_a_value_error(junk: bytes) -> None:
    with pytest.raises(ValueError):
        decode_publication(junk)


def test_a_shorter_array_from_an_older_node_gets_defaults() -> None:
    data = msgpack.packb(["t", "e:1", 5, b"1", 0], use_bin_type=True)
    assert decode_publication(data) == Publication("t", Offset("e:1"), b"1", PayloadKind.JSON, 5)


def test_channels_share_the_slot_of_the_topics_keys() -> None:
    assert channel_for("news/sports") == "tidings:{t:news/sports}"
    assert key_slot(channel_for("news/sports").encode()) == key_slot(b"tidings:{t:news/sports}:m")
    # every topic of a user is in the user's slot, so one script covers inbox and streams
    slots = {key_slot(channel_for(f"users/alice/{leaf}").encode())
             for leaf in ("notifications", "events", "unread", "x/y")}
    assert slots == {key_slot(b"tidings:{u:alice}:items")}


def test_names_are_escaped_inside_the_tag() -> None:
    assert topic_base("a}b") == "{t:a%7Db}"
    assert topic_base("a%7Db") == "{t:a%257Db}"
    assert topic_base("users/a}b/unread") == "{u:a%7Db}:t:users/a}b/unread"
    assert len({topic_base(t) for t in ("a}b", "a%7Db", "a", "{t:a}")}) == 4


def test_user_of() -> None:
    assert user_of("users/alice/notifications") == "alice"
    assert user_of("users/alice") == "alice"
    assert user_of("users//x") == ""
    assert user_of("users/") is None and user_of("users") is None
    assert user_of("home/users/alice") is None


def test_parse_redis_url() -> None:
    assert parse_redis_url("redis://h:1/0") == ("redis://h:1/0", False)
    assert parse_redis_url("rediss://h:1") == ("rediss://h:1", False)
    assert parse_redis_url("redis+cluster://h:1") == ("redis://h:1", True)
    assert parse_redis_url("rediss+cluster://u:p@h:1") == ("rediss://u:p@h:1", True)
