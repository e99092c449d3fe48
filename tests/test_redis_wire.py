"""How Tidings lays out its data on Redis (``tidings/redis_wire.py``): the
envelope of a publication between nodes, its channel, key hash tags.

No I/O: bytes in, publications out. What the Redis scripts write is checked
against a real Redis in ``store/test_redis_store.py``. MQTT 5.0 properties travel
through the meta codec the server gives both Redis backends
(``PROPERTIES_MAP``); the envelope itself knows no protocol.
"""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from redis.crc import key_slot

import tidings
from tidings.protocol.mqtt.properties import PROPERTIES_MAP, Properties
from tidings.redis_wire import (
    channel_for,
    decode_publication,
    encode_publication,
    parse_redis_url,
    topic_base,
    user_of,
)
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
    data = encode_publication(publication, PROPERTIES_MAP)
    assert decode_publication(data, PROPERTIES_MAP) == publication


def test_retained_flag_and_unknown_meta_do_not_travel() -> None:
    p = pub(retained=True, meta={"not": "properties"})
    assert decode_publication(encode_publication(p, PROPERTIES_MAP), PROPERTIES_MAP) == pub()


# The bytes of two publications as the envelope was written before it moved out
# of bus/ (commit 4de8baa): nodes of both versions must read each other.
MQTT_PUB = pub(topic="users/a}b/x", qos=2, published_retain=True, origin="c1",
               meta=Properties(content_type="text/plain", correlation_data=b"\x01\x02",
                               message_expiry_interval=60, subscription_identifiers=(3, 9),
                               user_properties=(("k", "v"), ("k", "w"))))
MQTT_BYTES = bytes.fromhex(
    "99ab75736572732f617d622f78aa61316232633364343a37cf0000018bcfe5687bc40200ff0202c3a263"
    "3185b76d6573736167655f6578706972795f696e74657276616c3cac636f6e74656e745f74797065aa74"
    "6578742f706c61696eb0636f7272656c6174696f6e5f64617461c4020102b8737562736372697074696f"
    "6e5f6964656e74696669657273920309af757365725f70726f706572746965739292a16ba17692a16ba1"
    "77")
PLAIN_PUB = Publication("a", Offset("e:1"), b"{}", PayloadKind.JSON, 5)
PLAIN_BYTES = bytes.fromhex("99a161a3653a3105c4027b7d0001c2c0c0")


def test_the_bytes_on_the_wire_are_those_of_the_previous_version() -> None:
    assert encode_publication(MQTT_PUB, PROPERTIES_MAP) == MQTT_BYTES
    assert decode_publication(MQTT_BYTES, PROPERTIES_MAP) == MQTT_PUB
    assert encode_publication(PLAIN_PUB) == encode_publication(PLAIN_PUB, PROPERTIES_MAP)
    assert encode_publication(PLAIN_PUB) == PLAIN_BYTES


def test_without_a_meta_codec_meta_travels_as_nil_and_arrives_as_none() -> None:
    # a node without the codec drops the properties, never the publication
    assert decode_publication(MQTT_BYTES) == replace(MQTT_PUB, meta=None)
    assert encode_publication(MQTT_PUB) == encode_publication(replace(MQTT_PUB, meta=None))


def test_properties_a_newer_node_knows_are_ignored() -> None:
    items = msgpack.unpackb(PLAIN_BYTES)
    items[8] = {"content_type": "a/b", "some_future_property": 1}
    data = msgpack.packb(items, use_bin_type=True)
    assert decode_publication(data, PROPERTIES_MAP).meta == Properties(content_type="a/b")


def test_a_meta_map_the_codec_cannot_read_is_a_value_error() -> None:
    items = msgpack.unpackb(PLAIN_BYTES)
    items[8] = {"user_properties": 7}  # not a list of pairs
    with pytest.raises(ValueError):
        decode_publication(msgpack.packb(items, use_bin_type=True), PROPERTIES_MAP)


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


def _imports(path: Path, package: str) -> set[str]:
    """The modules ``path`` (a module of ``package``) imports, relative ones resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_the_bus_the_stores_and_the_envelope_know_no_mqtt() -> None:
    """MQTT properties cross nodes through the meta codec the app passes in;
    nothing below the edges imports the MQTT codec to do it."""
    root = Path(tidings.__file__).parent
    modules = [(p, "tidings.bus") for p in (root / "bus").glob("*.py")]
    modules += [(p, "tidings.store") for p in (root / "store").glob("*.py")]
    modules.append((root / "redis_wire.py", "tidings"))
    assert len(modules) >= 8
    for path, package in modules:
        bad = {m for m in _imports(path, package) if m.startswith("tidings.protocol.mqtt")}
        assert not bad, (path.name, bad)
