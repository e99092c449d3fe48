"""Property tests for the MQTT codec (hypothesis).

- Random bytes, and random mutations of valid packets, fed to the decoder in
  random chunks: the only exceptions allowed are the documented
  :class:`~tidings.protocol.mqtt.errors.MQTTError` types, and whatever is
  accepted re-encodes to the same packet.
- The same input fed to a :class:`Connection` never raises at all.
- Round trip: ``decode(encode(p, v), v) == p`` for generated valid packets
  of every type in both versions, whole and in random chunks.

A coverage-guided fuzzer for the same decoder is in tests/fuzz/ (not run by
the suite; see its docstring).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tidings.protocol.mqtt import (
    Auth,
    Connack,
    Connect,
    Connection,
    Decoder,
    Disconnect,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    PingReq,
    PingResp,
    Properties,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    QoS,
    RetainHandling,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Version,
    Will,
    decode,
    encode,
)
from tidings.protocol.mqtt.errors import ClientIdentifierNotValid
from tidings.protocol.mqtt.properties import SPECS, WILL, Kind
from tidings.protocol.mqtt.reason_codes import VALID_REASON_CODES

V3, V5 = Version.V311, Version.V5

# Every error type the decoder documents; anything else escaping is a bug.
DOCUMENTED = (MalformedPacket, ProtocolError, PacketTooLarge, UnsupportedProtocolVersion)

# MQTT_FUZZ_EXAMPLES raises the count for a longer local run (e.g. 5000).
FUZZ = settings(max_examples=int(os.environ.get("MQTT_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies for valid packets -----------------------------------------------------

texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                max_size=12)
topics = texts.filter(lambda t: t and "+" not in t and "#" not in t)
filters = texts.filter(lambda t: not t.startswith("$share/"))
blobs = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)
qos_values = st.sampled_from(list(QoS))

_BOOLEAN = {"payload_format_indicator", "request_problem_information",
            "request_response_information", "maximum_qos", "retain_available",
            "wildcard_subscription_available", "subscription_identifier_available",
            "shared_subscription_available"}


def _value(kind: Kind, name: str) -> st.SearchStrategy[Any]:
    if name in _BOOLEAN:
        return st.integers(0, 1)
    if kind is Kind.BYTE:
        return st.integers(0, 255)
    if kind is Kind.U16:
        return st.integers(1 if name in ("receive_maximum", "topic_alias") else 0, 0xFFFF)
    if kind is Kind.U32:
        return st.integers(1 if name == "maximum_packet_size" else 0, 0xFFFFFFFF)
    if kind is Kind.VBI:
        return st.integers(1, 268_435_455)
    if kind is Kind.STR:
        return texts
    if kind is Kind.BIN:
        return blobs
    return st.tuples(texts, texts)


def properties(context: int) -> st.SearchStrategy[Properties]:
    """Valid properties for a packet type (or WILL), straight from the table."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for spec in SPECS:
        if context not in spec.packets:
            continue
        value = _value(spec.kind, spec.field)
        if spec.field in ("user_properties", "subscription_identifiers"):
            most = 3 if context in spec.repeatable_in else 1
            fields[spec.field] = st.lists(value, max_size=most).map(tuple)
        else:
            fields[spec.field] = st.none() | value
    strategy = st.builds(Properties, **fields)
    # Authentication Data needs an Authentication Method (5.0 section 3.1.2.11.10).
    return strategy.filter(lambda p: p.authentication_data is None
                           or p.authentication_method is not None)


def _props(version: Version, context: int) -> st.SearchStrategy[Properties]:
    return properties(context) if version == V5 else st.just(Properties())


def _reason(version: Version, ptype: int) -> st.SearchStrategy[int]:
    if version == V5:
        return st.sampled_from(sorted(VALID_REASON_CODES[ptype]))
    return st.just(0)


@st.composite
def connects(draw: st.DrawFn, version: Version) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(draw(topics), draw(blobs), draw(qos_values), draw(st.booleans()),
                    draw(_props(version, WILL)))
    username = draw(st.none() | texts)
    password = draw(st.none() | blobs) if username is not None or version == V5 else None
    return Connect(draw(texts), version, draw(st.booleans()), draw(st.integers(0, 0xFFFF)),
                   username, password, will, draw(_props(version, 1)))


@st.composite
def connacks(draw: st.DrawFn, version: Version) -> Connack:
    if version == V5:
        reason = draw(st.sampled_from(sorted(VALID_REASON_CODES[2])))
    else:  # the five 3.1.1 refusals, as their 5.0 codes
        reason = draw(st.sampled_from([0, 0x84, 0x85, 0x88, 0x86, 0x87]))
    present = draw(st.booleans()) and reason < 0x80
    return Connack(present, reason, draw(_props(version, 2)))


@st.composite
def publishes(draw: st.DrawFn, version: Version) -> Publish:
    qos = draw(qos_values)
    props = draw(_props(version, 3))
    topic = draw(topics | st.just("")) if props.topic_alias is not None else draw(topics)
    return Publish(topic, draw(blobs), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False,
                   draw(packet_ids) if qos else None, props)


@st.composite
def acks(draw: st.DrawFn, version: Version) -> Any:
    kinds: list[type[PubAck | PubRec | PubRel | PubComp]] = [PubAck, PubRec, PubRel, PubComp]
    cls = draw(st.sampled_from(kinds))
    ptype = int(cls.packet_type)
    return cls(draw(packet_ids), draw(_reason(version, ptype)), draw(_props(version, ptype)))


@st.composite
def subscribes(draw: st.DrawFn, version: Version) -> Subscribe:
    def one() -> Subscription:
        if version == V3:
            return Subscription(draw(filters), draw(qos_values))
        return Subscription(draw(filters), draw(qos_values), draw(st.booleans()),
                            draw(st.booleans()), draw(st.sampled_from(list(RetainHandling))))

    subs = tuple(one() for _ in range(draw(st.integers(1, 3))))
    return Subscribe(draw(packet_ids), subs, draw(_props(version, 8)))


@st.composite
def subacks(draw: st.DrawFn, version: Version) -> SubAck:
    codes = sorted(VALID_REASON_CODES[9]) if version == V5 else [0, 1, 2, 0x80]
    return SubAck(draw(packet_ids), tuple(draw(st.lists(st.sampled_from(codes), min_size=1,
                                                        max_size=3))),
                  draw(_props(version, 9)))


@st.composite
def unsubscribes(draw: st.DrawFn, version: Version) -> Unsubscribe:
    return Unsubscribe(draw(packet_ids), tuple(draw(st.lists(filters, min_size=1, max_size=3))),
                       draw(_props(version, 10)))


@st.composite
def unsubacks(draw: st.DrawFn, version: Version) -> UnsubAck:
    if version == V3:
        return UnsubAck(draw(packet_ids))
    codes = st.lists(st.sampled_from(sorted(VALID_REASON_CODES[11])), min_size=1, max_size=3)
    return UnsubAck(draw(packet_ids), tuple(draw(codes)), draw(_props(version, 11)))


@st.composite
def reasoned(draw: st.DrawFn, version: Version) -> Any:
    if version == V3:
        return Disconnect()
    kinds: list[type[Disconnect | Auth]] = [Disconnect, Auth]
    cls = draw(st.sampled_from(kinds))
    ptype = int(cls.packet_type)
    return cls(draw(_reason(version, ptype)), draw(_props(version, ptype)))


def packets(version: Version) -> st.SearchStrategy[Any]:
    return st.one_of(connects(version), connacks(version), publishes(version), acks(version),
                     subscribes(version), subacks(version), unsubscribes(version),
                     unsubacks(version), reasoned(version), st.just(PingReq()),
                     st.just(PingResp()))


versions = st.sampled_from([V3, V5])


def stream_version(packet: Any, version: Version) -> Version | None:
    return None if isinstance(packet, Connect) else version


# --- round trip ---------------------------------------------------------------------

@FUZZ
@given(st.data())
def test_round_trip_every_generated_packet(data: st.DataObject) -> None:
    """decode(encode(p, v), v) == p for every packet type in both versions."""
    version = data.draw(versions)
    packet = data.draw(packets(version))
    assert decode(encode(packet, version), stream_version(packet, version)) == packet


@FUZZ
@given(st.data())
def test_round_trip_in_random_chunks(data: st.DataObject) -> None:
    """A stream of packets cut at random places decodes to the same packets."""
    version = data.draw(versions)
    connect = data.draw(connects(version))
    rest = data.draw(st.lists(packets(version).filter(lambda p: not isinstance(p, Connect)),
                              max_size=6))
    wire = encode(connect, version) + b"".join(encode(p, version) for p in rest)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = Decoder()
    got: list[Any] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        decoder.receive_data(wire[start:end])
        got.extend(decoder)
    assert got == [connect, *rest]
    assert decoder.buffered == 0


# --- random and mutated input --------------------------------------------------------

def _decode_all(data: bytes, version: Version | None, max_size: int, chunk: int) -> list[Any]:
    """Feed ``data`` in chunks; return packets; let only documented errors escape."""
    decoder = Decoder(version=version, max_packet_size=max_size)
    got: list[Any] = []
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i:i + chunk])
            got.extend(decoder)
    except DOCUMENTED:
        pass
    return got


def _accepted_packets_re_encode(got: list[Any], version: Version | None) -> None:
    """Whatever the decoder accepted is a valid packet: it re-encodes to itself."""
    for packet in got:
        v = packet.version if isinstance(packet, Connect) else version
        if v is None:
            continue
        assert decode(encode(packet, v), stream_version(packet, v)) == packet
        if isinstance(packet, Connect):
            version = packet.version


@FUZZ
@given(data=st.binary(max_size=300), version=st.sampled_from([None, V3, V5]),
       max_size=st.sampled_from([8, 64, 1 << 20]), chunk=st.integers(1, 64))
@example(data=bytes.fromhex("30ffffff7f"), version=V3, max_size=64, chunk=1)
@example(data=bytes.fromhex("10ffffffff7f"), version=None, max_size=1 << 20, chunk=3)
def test_random_bytes_raise_only_documented_errors(data: bytes, version: Version | None,
                                                  max_size: int, chunk: int) -> None:
    got = _decode_all(data, version, max_size, chunk)
    _accepted_packets_re_encode(got, version)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, Version]:
    """A valid packet with a few bytes flipped, inserted, deleted, or cut off."""
    version = draw(versions)
    packet = draw(packets(version).filter(lambda p: not isinstance(p, Connect)))
    wire = bytearray(encode(packet, version))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(wire) - 1)))
        if op == "flip" and wire:
            wire[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and wire:
            wire[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0B, 0x26]))
        elif op == "insert":
            wire[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and wire:
            del wire[at]
        elif op == "truncate":
            del wire[at:]
    return bytes(wire), version


@FUZZ
@given(case=mutated(), chunk=st.integers(1, 16))
def test_mutated_packets_raise_only_documented_errors(case: tuple[bytes, Version],
                                                      chunk: int) -> None:
    data, version = case
    got = _decode_all(data, version, 1 << 20, chunk)
    _accepted_packets_re_encode(got, version)


@FUZZ
@given(connect=st.sampled_from([V3, V5]).flatmap(connects), tail=st.binary(max_size=200),
       chunk=st.integers(1, 32))
def test_mutated_connect_raises_only_documented_errors(connect: Connect, tail: bytes,
                                                       chunk: int) -> None:
    """CONNECT with its tail replaced by random bytes: the riskiest parser."""
    wire = encode(connect, connect.version)
    data = wire[:len(wire) // 2] + tail
    try:
        decoder = Decoder()
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i:i + chunk])
            list(decoder)
    except DOCUMENTED:
        pass


@FUZZ
@given(prefix=st.sampled_from([V3, V5]), data=st.binary(max_size=300),
       chunk=st.integers(1, 64))
def test_connection_never_raises_on_peer_input(prefix: Version, data: bytes, chunk: int) -> None:
    """Connection.receive_data turns every peer mistake into a ProtocolViolation event."""
    conn = Connection(max_packet_size=256)
    conn.receive_data(encode(Connect("fuzz", prefix), prefix), 0.0)
    conn.events_received()
    conn.send(Connack())
    for i in range(0, len(data), chunk):
        conn.receive_data(data[i:i + chunk], float(i))
        for event in conn.events_received():
            error = getattr(event, "error", None)
            assert error is None or isinstance(error, MQTTError)
            assert not isinstance(error, ClientIdentifierNotValid)
    conn.data_to_send()
