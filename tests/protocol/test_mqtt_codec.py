"""The MQTT codec against literal bytes written out from the spec's packet layouts.

Each vector was written by hand from the 3.1.1 / 5.0 figures (fixed header,
variable header, payload); each malformed case names the requirement it
checks. The last tests cross-check with paho-mqtt over a real loopback
socket: what paho sends decodes, and what we encode paho accepts.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import paho.mqtt.client as paho_client
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

from conftest import WAIT
from tidings.protocol.mqtt import (
    DEFAULT_MAX_PACKET_SIZE,
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
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
    PublishTemplate,
    PubRec,
    PubRel,
    QoS,
    ReasonCode,
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
from tidings.protocol.mqtt.properties import decode_vbi, encode_vbi

V3, V5 = Version.V311, Version.V5


def h(text: str) -> bytes:
    """Hex with spaces and '|' separators (fixed header | variable header | payload)."""
    return bytes.fromhex(text.replace("|", " "))


# (name, version, packet, bytes). Strings: 'MQTT' = 4d515454, 'a/b' = 612f62,
# 'c1' = 6331, 'hi' = 6869.
VECTORS: list[tuple[str, Version, object, bytes]] = [
    # CONNECT 3.1.1 (section 3.1): name, level 4, flags 0x02 clean, keep alive 60, empty id.
    ("connect-311-minimal", V3, Connect("", V3, True, 60),
     h("10 0c | 0004 4d515454 04 02 003c | 0000")),
    # flags 0xEE: user name, password, will retain, will QoS 1, will flag, clean session.
    ("connect-311-will-user-password", V3,
     Connect("c1", V3, True, 10, "u", b"p", Will("w", b"x", QoS(1), True)),
     h("10 1a | 0004 4d515454 04 ee 000a | 0002 6331 | 0001 77 | 0001 78 | 0001 75 | 0001 70")),
    # CONNECT 5.0: properties Session Expiry (0x11) 60 and Receive Maximum (0x21) 20.
    ("connect-5-properties", V5,
     Connect("c1", V5, True, 60, properties=Properties(session_expiry_interval=60,
                                                       receive_maximum=20)),
     h("10 17 | 0004 4d515454 05 02 003c | 08 11 0000003c 21 0014 | 0002 6331")),
    # CONNECT 5.0 with a will and will properties (Will Delay 0x18 = 5, Content Type 0x03 'j').
    ("connect-5-will-properties", V5,
     Connect("c1", V5, False, 0, will=Will("w", b"", QoS(0), False,
                                           Properties(content_type="j", will_delay_interval=5))),
     h("10 1e | 0004 4d515454 05 04 0000 | 00 | 0002 6331 | 09 03 0001 6a 18 00000005"
       " | 0001 77 | 0000")),
    ("connack-311-accepted", V3, Connack(False, 0), h("20 02 00 00")),
    ("connack-311-session-present", V3, Connack(True, 0), h("20 02 01 00")),
    # 3.1.1 return code 5 is 5.0's Not authorized (0x87).
    ("connack-311-not-authorized", V3, Connack(False, ReasonCode.NOT_AUTHORIZED), h("20 02 00 05")),
    ("connack-5-success", V5, Connack(False, 0), h("20 03 00 00 00")),
    # Assigned Client Identifier (0x12) 'ab', Topic Alias Maximum (0x22) 10.
    ("connack-5-properties", V5,
     Connack(True, 0, Properties(assigned_client_identifier="ab", topic_alias_maximum=10)),
     h("20 0b 01 00 | 08 12 0002 6162 22 000a")),
    ("publish-311-qos0", V3, Publish("a/b", b"hi"), h("30 07 | 0003 612f62 | 6869")),
    # First byte 0x3b: DUP, QoS 1, RETAIN.
    ("publish-311-qos1-dup-retain", V3, Publish("a/b", b"hi", QoS(1), True, True, 7),
     h("3b 09 | 0003 612f62 0007 | 6869")),
    ("publish-311-qos2", V3, Publish("a/b", b"", QoS(2), packet_id=0xFFFF),
     h("34 07 | 0003 612f62 ffff")),
    # 5.0 properties in identifier order: Payload Format 1, Message Expiry 60, Topic Alias 5.
    ("publish-5-properties", V5,
     Publish("a/b", b"hi", QoS(1), packet_id=7,
             properties=Properties(payload_format_indicator=1, message_expiry_interval=60,
                                   topic_alias=5)),
     h("32 14 | 0003 612f62 0007 | 0a 01 01 02 0000003c 23 0005 | 6869")),
    ("publish-5-alias-only", V5,
     Publish("", b"", properties=Properties(topic_alias=5)), h("30 06 | 0000 | 03 23 0005")),
    ("publish-5-subscription-ids", V5,
     Publish("a/b", b"", properties=Properties(subscription_identifiers=(1, 200))),
     h("30 0b | 0003 612f62 | 05 0b 01 0b c801")),
    ("puback-311", V3, PubAck(7), h("40 02 0007")),
    ("puback-5-short", V5, PubAck(7), h("40 02 0007")),
    ("puback-5-reason-only", V5, PubAck(7, ReasonCode.NO_MATCHING_SUBSCRIBERS), h("40 03 0007 10")),
    ("puback-5-reason-string", V5,
     PubAck(7, ReasonCode.NO_MATCHING_SUBSCRIBERS, Properties(reason_string="no")),
     h("40 09 0007 10 | 05 1f 0002 6e6f")),
    ("pubrec-311", V3, PubRec(7), h("50 02 0007")),
    ("pubrec-5-quota", V5, PubRec(7, ReasonCode.QUOTA_EXCEEDED), h("50 03 0007 97")),
    ("pubrel-311", V3, PubRel(7), h("62 02 0007")),
    ("pubrel-5-not-found", V5, PubRel(7, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND),
     h("62 03 0007 92")),
    ("pubcomp-311", V3, PubComp(7), h("70 02 0007")),
    ("pubcomp-5-user-property", V5, PubComp(7, 0, Properties(user_properties=(("k", "v"),))),
     h("70 0b 0007 00 | 07 26 0001 6b 0001 76")),
    ("subscribe-311", V3,
     Subscribe(10, (Subscription("a/+", QoS(1)), Subscription("#", QoS(2)))),
     h("82 0c | 000a | 0003 612f2b 01 0001 23 02")),
    # Options 0x1d: QoS 1, No Local, Retain As Published, Retain Handling 1.
    ("subscribe-5-options", V5,
     Subscribe(10, (Subscription("a/+", QoS(1), True, True,
                                 RetainHandling.SEND_IF_NEW_SUBSCRIPTION),),
               Properties(subscription_identifiers=(5,))),
     h("82 0b | 000a 02 0b 05 | 0003 612f2b 1d")),
    ("suback-311", V3, SubAck(10, (1, ReasonCode.UNSPECIFIED_ERROR)), h("90 04 000a | 01 80")),
    ("suback-5", V5, SubAck(10, (0, ReasonCode.NOT_AUTHORIZED)), h("90 05 000a 00 | 00 87")),
    ("unsubscribe-311", V3, Unsubscribe(11, ("a",)), h("a2 05 000b | 0001 61")),
    ("unsubscribe-5", V5, Unsubscribe(11, ("a",)), h("a2 06 000b 00 | 0001 61")),
    ("unsuback-311", V3, UnsubAck(11), h("b0 02 000b")),
    ("unsuback-5", V5, UnsubAck(11, (ReasonCode.NO_SUBSCRIPTION_EXISTED,)), h("b0 04 000b 00 11")),
    ("pingreq", V3, PingReq(), h("c0 00")),
    ("pingresp", V5, PingResp(), h("d0 00")),
    ("disconnect-311", V3, Disconnect(), h("e0 00")),
    ("disconnect-5-normal", V5, Disconnect(), h("e0 00")),
    ("disconnect-5-with-will", V5, Disconnect(ReasonCode.DISCONNECT_WITH_WILL), h("e0 01 04")),
    ("disconnect-5-properties", V5,
     Disconnect(0, Properties(session_expiry_interval=0, server_reference="s")),
     h("e0 0b 00 | 09 11 00000000 1c 0001 73")),
    ("auth-5-success", V5, Auth(), h("f0 00")),
    ("auth-5-continue", V5,
     Auth(ReasonCode.CONTINUE_AUTHENTICATION, Properties(authentication_method="m")),
     h("f0 06 18 | 04 15 0001 6d")),
]


@pytest.mark.parametrize(("version", "packet", "data"), [v[1:] for v in VECTORS],
                         ids=[v[0] for v in VECTORS])
def test_encode_matches_spec_layout(version: Version, packet: object, data: bytes) -> None:
    """Every packet type, both versions: exact bytes, shortest forms [MQTT-1.5.5-1]."""
    assert encode(packet, version) == data  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "packet", "data"), [v[1:] for v in VECTORS],
                         ids=[v[0] for v in VECTORS])
def test_decode_known_bytes(version: Version, packet: object, data: bytes) -> None:
    """Hand-written captures decode to the packet; the round trip is the identity."""
    stream_version = None if isinstance(packet, Connect) else version
    assert decode(data, stream_version) == packet
    assert decode(encode(packet, version), stream_version) == packet


def test_one_byte_at_a_time_gives_the_same_packets() -> None:
    """Chunking does not matter: byte-by-byte feeding yields the same packets in order."""
    for version in (V3, V5):
        stream = [p for _, v, p, _ in VECTORS if v == version and not isinstance(p, Connect)]
        connect = Connect("c", version)
        data = encode(connect, version) + b"".join(encode(p, version) for p in stream)  # type: ignore[arg-type]
        decoder = Decoder()
        got: list[object] = []
        for i in range(len(data)):
            decoder.receive_data(data[i:i + 1])
            got.extend(decoder)
        assert got == [connect, *stream]
        assert decoder.buffered == 0


def test_many_packets_in_one_chunk() -> None:
    decoder = Decoder(version=V3)
    decoder.receive_data(h("c0 00 c0 00 30 07 0003 612f62 6869 c0"))
    assert list(decoder) == [PingReq(), PingReq(), Publish("a/b", b"hi")]
    assert decoder.buffered == 1


# --- malformed input: (name with requirement id, version, bytes, error type) ---------

MALFORMED: list[tuple[str, Version | None, bytes, type[MQTTError]]] = [
    ("remaining-length-5-bytes [MQTT-1.5.5] 2.1.4", V3, h("30 ff ff ff ff 7f"), MalformedPacket),
    ("remaining-length-not-shortest [MQTT-1.5.5-1]", V3, h("c0 80 00"), MalformedPacket),
    ("reserved-type-0 [MQTT-2.2.2-1]", V3, h("00 00"), MalformedPacket),
    ("auth-in-311-is-reserved [MQTT-2.2.2-1]", V3, h("f0 00"), MalformedPacket),
    ("puback-flags [MQTT-2.2.2-1]", V3, h("41 02 0001"), MalformedPacket),
    ("pingreq-flags [MQTT-2.2.2-2]", V5, h("c8 00"), MalformedPacket),
    ("pubrel-flags [MQTT-3.6.1-1]", V3, h("60 02 0001"), MalformedPacket),
    ("subscribe-flags [MQTT-3.8.1-1]", V3, h("80 06 0001 0001 61 00"), MalformedPacket),
    ("unsubscribe-flags [MQTT-3.10.1-1]", V3, h("a0 05 0001 0001 61"), MalformedPacket),
    ("publish-qos-3 [MQTT-3.3.1-4]", V3, h("36 05 0001 61 0001"), MalformedPacket),
    ("publish-dup-on-qos0 [MQTT-3.3.1-2]", V3, h("38 03 0001 61"), MalformedPacket),
    ("utf8-invalid-byte [MQTT-1.5.3-1]", V3, h("30 05 0003 61 ff 62"), MalformedPacket),
    ("utf8-overlong [MQTT-1.5.3-1]", V3, h("30 04 0002 c0 af"), MalformedPacket),
    ("utf8-truncated-sequence [MQTT-1.5.3-1]", V3, h("30 04 0002 61 e2"), MalformedPacket),
    ("utf8-surrogate-d800 [MQTT-1.5.3-1]", V3, h("30 05 0003 eda080"), MalformedPacket),
    ("utf8-surrogate-dfff [MQTT-1.5.4-1]", V5, h("30 06 0003 edbfbf 00"), MalformedPacket),
    ("utf8-null [MQTT-1.5.3-2]", V3, h("30 05 0003 61 00 62"), MalformedPacket),
    ("utf8-null-in-filter [MQTT-1.5.4-2]", V5, h("82 07 0001 00 0001 00 00"), MalformedPacket),
    ("utf8-null-in-user-property [MQTT-1.5.4-2]", V5,
     h("40 0b 0001 00 07 26 0001 00 0001 76"), MalformedPacket),
    ("publish-topic-hash [MQTT-3.3.2-2]", V3, h("30 05 0003 612f23"), MalformedPacket),
    ("publish-topic-plus [MQTT-3.3.2-2]", V5, h("30 06 0003 612f2b 00"), MalformedPacket),
    ("publish-topic-empty-311 [MQTT-4.7.3-1]", V3, h("30 02 0000"), MalformedPacket),
    ("publish-topic-empty-no-alias-5 3.3.2.1", V5, h("30 03 0000 00"), ProtocolError),
    ("publish-packet-id-0 [MQTT-2.3.1-1]", V3, h("32 05 0001 61 0000"), ProtocolError),
    ("puback-packet-id-0 [MQTT-2.3.1-1]", V3, h("40 02 0000"), ProtocolError),
    ("string-length-past-end 1.5.3", V3, h("30 03 0005 61"), MalformedPacket),
    ("pingreq-with-body 3.12", V3, h("c0 01 00"), MalformedPacket),
    ("puback-311-extra-byte 3.4.2", V3, h("40 03 0001 00"), MalformedPacket),
    ("disconnect-311-with-body 3.14", V3, h("e0 01 00"), MalformedPacket),
    ("unsuback-311-extra 3.11", V3, h("b0 03 0001 00"), MalformedPacket),
    ("puback-5-bad-reason 3.4.2.1", V5, h("40 03 0001 05"), MalformedPacket),
    ("disconnect-5-bad-reason 3.14.2.1", V5, h("e0 01 01"), MalformedPacket),
    ("connack-reserved-flags [MQTT-3.2.2-1]", V3, h("20 02 02 00"), MalformedPacket),
    ("connack-311-reserved-return-code 3.2.2.3", V3, h("20 02 00 06"), MalformedPacket),
    ("connack-session-present-on-refusal [MQTT-3.2.2-4]", V3, h("20 02 01 05"), ProtocolError),
    ("suback-311-reserved-code [MQTT-3.9.3-2]", V3, h("90 03 0001 03"), MalformedPacket),
    ("subscribe-no-filters-311 [MQTT-3.8.3-3]", V3, h("82 02 0001"), ProtocolError),
    ("subscribe-no-filters-5 [MQTT-3.8.3-2]", V5, h("82 03 0001 00"), ProtocolError),
    ("subscribe-311-reserved-bits [MQTT-3-8.3-4]", V3, h("82 06 0001 0001 61 04"),
     MalformedPacket),
    ("subscribe-qos-3 [MQTT-3-8.3-4]", V3, h("82 06 0001 0001 61 03"), MalformedPacket),
    ("subscribe-5-reserved-bits [MQTT-3.8.3-5]", V5, h("82 07 0001 00 0001 61 40"),
     MalformedPacket),
    ("subscribe-5-retain-handling-3 3.8.3.1", V5, h("82 07 0001 00 0001 61 30"), ProtocolError),
    ("subscribe-5-no-local-shared [MQTT-3.8.3-4]", V5,
     h("82 0d 0001 00 0007 2473686172652f 04"), ProtocolError),
    ("unsubscribe-no-filters [MQTT-3.10.3-2]", V3, h("a2 02 0001"), ProtocolError),
    # 5.0 properties (section 2.2.2.2).
    ("property-twice-payload-format 3.3.2.3.2", V5, h("30 08 0001 61 | 04 01 01 01 01"),
     ProtocolError),
    ("property-twice-subscription-id-in-subscribe 3.8.2.1.2", V5,
     h("82 0a 0001 04 0b 01 0b 02 0001 61 00"), ProtocolError),
    ("property-not-for-packet 2.2.2.2", V5, h("30 09 0001 61 | 05 11 00000001"), MalformedPacket),
    ("property-unknown-id 2.2.2.2", V5, h("30 05 0001 61 | 02 7f 00"), MalformedPacket),
    ("property-length-past-end 2.2.2.1", V5, h("30 04 0001 61 | 05"), MalformedPacket),
    ("property-value-past-end 2.2.2.2", V5, h("30 06 0001 61 | 02 02 00"), MalformedPacket),
    ("property-payload-format-2 3.3.2.3.2", V5, h("30 06 0001 61 | 02 01 02"), ProtocolError),
    ("property-subscription-id-0 3.8.2.1.2", V5, h("82 09 0001 02 0b 00 0001 61 00"),
     ProtocolError),
    ("property-maximum-qos-2 3.2.2.3.4", V5, h("20 05 00 00 02 24 02"), ProtocolError),
    ("property-auth-data-without-method 3.15.2.2.3", V5, h("f0 06 18 04 16 0001 00"),
     ProtocolError),
    ("property-id-vbi-not-shortest [MQTT-1.5.5-1]", V5, h("30 06 0001 61 | 02 8100"),
     MalformedPacket),
    # CONNECT (section 3.1.2).
    ("connect-first-packet-must-be-connect [MQTT-3.1.0-1]", None, h("c0 00"), ProtocolError),
    ("connect-reserved-flag [MQTT-3.1.2-3]", None,
     h("10 0c 0004 4d515454 04 03 003c 0000"), MalformedPacket),
    ("connect-will-qos-3 [MQTT-3.1.2-14]", None,
     h("10 11 0004 4d515454 04 1e 003c 0000 0001 77 0000"), MalformedPacket),
    ("connect-will-retain-without-will [MQTT-3.1.2-15]", None,
     h("10 0c 0004 4d515454 04 22 003c 0000"), MalformedPacket),
    ("connect-will-qos-without-will [MQTT-3.1.2-13]", None,
     h("10 0c 0004 4d515454 04 0a 003c 0000"), MalformedPacket),
    ("connect-311-password-without-user [MQTT-3.1.2-22]", None,
     h("10 0f 0004 4d515454 04 42 003c 0000 0001 70"), MalformedPacket),
    ("connect-will-topic-wildcard [MQTT-3.1.2-9]", None,
     h("10 11 0004 4d515454 04 06 003c 0000 0001 23 0000"), MalformedPacket),
    ("connect-extra-bytes 3.1", None, h("10 0d 0004 4d515454 04 02 003c 0000 00"),
     MalformedPacket),
    ("connect-5-duplicate-session-expiry 3.1.2.11.2", None,
     h("10 17 0004 4d515454 05 02 003c 0a 11 00000001 11 00000002 0000"), ProtocolError),
    ("connect-5-receive-maximum-0 3.1.2.11.3", None,
     h("10 10 0004 4d515454 05 02 003c 03 21 0000 0000"), ProtocolError),
    ("connect-5-maximum-packet-size-0 3.1.2.11.4", None,
     h("10 12 0004 4d515454 05 02 003c 05 27 00000000 0000"), ProtocolError),
    ("connect-5-will-property-in-connect 3.1.2.11", None,
     h("10 12 0004 4d515454 05 02 003c 05 18 00000001 0000"), MalformedPacket),
    ("connect-protocol-level-3 [MQTT-3.1.2-2]", None,
     h("10 0e 0006 4d5149736470 03 02 003c 0000"), UnsupportedProtocolVersion),
    ("connect-protocol-level-6 [MQTT-3.1.2-2]", None,
     h("10 0c 0004 4d515454 06 02 003c 0000"), UnsupportedProtocolVersion),
    ("connect-protocol-name [MQTT-3.1.2-1]", None,
     h("10 0c 0004 4d515458 04 02 003c 0000"), UnsupportedProtocolVersion),
]


@pytest.mark.parametrize(("version", "data", "error"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_input_raises_typed_error(version: Version | None, data: bytes,
                                            error: type[MQTTError]) -> None:
    """Each bad packet raises exactly its documented error type, whole or byte by byte."""
    with pytest.raises(error) as whole:
        decode(data, version)
    assert type(whole.value) is error
    decoder = Decoder(version=version)
    with pytest.raises(error):
        for i in range(len(data)):
            decoder.receive_data(data[i:i + 1])
            list(decoder)
        raise AssertionError("no error")  # pragma: no cover


@pytest.mark.parametrize(("error", "code"), [
    (MalformedPacket, 0x81), (ProtocolError, 0x82), (UnsupportedProtocolVersion, 0x84),
    (PacketTooLarge, 0x95),
])
def test_errors_carry_their_reason_code(error: type[MQTTError], code: int) -> None:
    """The broker maps errors in one place from ``reason_code`` (5.0 section 4.13)."""
    assert error.reason_code == code


def test_unsupported_level_carries_the_level() -> None:
    """[MQTT-3.1.2-2]: the answer (0x01 or 0x84) depends on the level the client sent."""
    with pytest.raises(UnsupportedProtocolVersion) as err:
        decode(h("10 0c 0004 4d515454 06 02 003c 0000"))
    assert err.value.level == 6


def test_error_in_v5_connect_carries_level_5() -> None:
    """An error inside a 5.0 CONNECT says so, so the answer is a 5.0 CONNACK."""
    with pytest.raises(ProtocolError) as err:
        decode(h("10 10 0004 4d515454 05 02 003c 03 21 0000 0000"))
    assert err.value.level == 5 and err.value.packet_type == 1


def test_fourth_continuation_byte_fails_without_waiting_for_a_fifth() -> None:
    """Section 2.1.4: at most four bytes; the error comes as soon as the fourth is read."""
    decoder = Decoder(version=V3)
    decoder.receive_data(h("30 ff ff ff"))
    assert decoder.next_packet() is None
    decoder.receive_data(h("ff"))
    with pytest.raises(MalformedPacket):
        decoder.next_packet()


def test_error_is_sticky() -> None:
    """After an error the decoder refuses everything: the connection must close."""
    decoder = Decoder(version=V3)
    decoder.receive_data(h("00 00"))
    with pytest.raises(MalformedPacket):
        decoder.next_packet()
    with pytest.raises(MalformedPacket):
        decoder.receive_data(h("c0 00"))


# --- maximum packet size ------------------------------------------------------

def test_too_large_is_raised_from_the_fixed_header_alone() -> None:
    """5.0 section 3.2.2.3.6 [MQTT-3.2.2-15] / 2.1.4: a packet over the limit is
    rejected from its fixed header, before any of its body arrives."""
    decoder = Decoder(version=V5, max_packet_size=100)
    decoder.receive_data(h("30 62"))  # 2 + 98 = 100 bytes: allowed, waiting for the body
    assert decoder.next_packet() is None
    decoder = Decoder(version=V5, max_packet_size=100)
    decoder.receive_data(h("30 63"))  # 2 + 99 = 101 bytes
    with pytest.raises(PacketTooLarge) as err:
        decoder.next_packet()
    assert err.value.reason_code == ReasonCode.PACKET_TOO_LARGE
    assert decoder.buffered == 0


def test_huge_remaining_length_is_rejected_without_buffering() -> None:
    """A 256 MB announcement is refused on its 5 header bytes; the body is never held."""
    decoder = Decoder(version=V3, max_packet_size=1 << 16)
    decoder.receive_data(h("30 ff ff ff 7f"))
    with pytest.raises(PacketTooLarge):
        decoder.next_packet()
    with pytest.raises(PacketTooLarge):
        decoder.receive_data(b"\x00" * 4096)
    assert decoder.buffered == 0


def test_largest_remaining_length_is_accepted_by_the_default_limit() -> None:
    """The default limit is what the format can express (268,435,460 bytes)."""
    decoder = Decoder(version=V3)
    decoder.receive_data(h("30 ff ff ff 7f"))
    assert decoder.next_packet() is None
    assert DEFAULT_MAX_PACKET_SIZE == 268_435_460


@pytest.mark.parametrize(("value", "data"), [
    (0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (16_384, "808001"),
    (2_097_151, "ffff7f"), (2_097_152, "80808001"), (268_435_455, "ffffff7f"),
])
def test_variable_byte_integer_boundaries(value: int, data: str) -> None:
    """Section 1.5.5, table 1-1: the boundary values and their shortest encodings."""
    assert encode_vbi(value) == bytes.fromhex(data)
    assert decode_vbi(bytes.fromhex(data), 0, len(data) // 2) == (value, len(data) // 2)


# --- strings -----------------------------------------------------------------

def test_bom_is_kept_not_stripped() -> None:
    """[MQTT-1.5.3-3]: 0xEF 0xBB 0xBF is U+FEFF and must not be skipped."""
    assert decode(h("30 05 0003 efbbbf"), V3) == Publish("\ufeff")


def test_multibyte_utf8_topic_round_trips() -> None:
    """Lengths count bytes, not characters (section 1.5.3)."""
    p = Publish("küche/🌡", b"21")
    assert decode(encode(p, V5), V5) == p


def test_encoder_refuses_what_a_decoder_must_reject() -> None:
    """Our bugs are ValueError, never bytes that break the spec."""
    for bad in (Publish("a/#"), Publish(""), Publish("a", qos=QoS(1)),
                Publish("a", dup=True), Publish("a\x00b"), Publish("\ud800"),
                Subscribe(1, ()), PubAck(0), Connect("c", V5)):
        with pytest.raises(ValueError):
            encode(bad, V3)
    with pytest.raises(ValueError):
        encode(Auth(), V3)
    with pytest.raises(ValueError):
        encode(Publish("a", properties=Properties(session_expiry_interval=1)), V5)


def test_311_encoding_leaves_out_v5_only_content() -> None:
    """Properties and ack reason codes do not exist in 3.1.1."""
    assert encode(PubAck(1, 0x10, Properties(reason_string="x")), V3) == h("40 02 0001")
    with_props = Publish("a", b"", properties=Properties(content_type="x"))
    assert encode(with_props, V3) == h("30 03 0001 61")


def test_refused_connack_never_says_session_present() -> None:
    """[MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6]: refusal means Session Present 0."""
    assert encode(Connack(True, ReasonCode.NOT_AUTHORIZED), V3) == h("20 02 00 05")


def test_v5_refusals_map_to_311_return_codes() -> None:
    """A 3.1.1 client gets the closest of its five return codes (3.1.1 section 3.2.2.3)."""
    assert encode(Connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION), V3)[-1] == 1
    assert encode(Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID), V3)[-1] == 2
    assert encode(Connack(False, ReasonCode.SERVER_BUSY), V3)[-1] == 3
    assert encode(Connack(False, ReasonCode.BAD_USER_NAME_OR_PASSWORD), V3)[-1] == 4
    assert encode(Connack(False, ReasonCode.BANNED), V3)[-1] == 5
    assert encode(SubAck(1, (ReasonCode.TOPIC_FILTER_INVALID,)), V3)[-1] == 0x80


def test_secrets_do_not_show_in_repr() -> None:
    """A CONNECT's password and authentication data never reach a log line."""
    c = Connect("c", V5, password=b"s3cret-token",
                properties=Properties(authentication_method="m", authentication_data=b"s3cret"))
    assert "s3cret" not in repr(c)


# --- PublishTemplate ------------------------------------------------------------

TEMPLATE_CASES = [
    dict(qos=0), dict(qos=0, retain=True), dict(qos=1, packet_id=1),
    dict(qos=1, packet_id=513, dup=True), dict(qos=2, packet_id=65535, retain=True),
    dict(qos=1, packet_id=9, subscription_ids=(1, 300)),
]


@pytest.mark.parametrize("version", [V3, V5])
@pytest.mark.parametrize("kw", TEMPLATE_CASES)
def test_template_render_equals_encode(version: Version, kw: dict) -> None:  # type: ignore[type-arg]
    """The patched fast path produces exactly what :func:`encode` produces."""
    props = Properties(message_expiry_interval=30, user_properties=(("a", "b"),))
    t = PublishTemplate("home/kitchen/temp", b"x" * 300, props)
    expected = t.to_publish(**kw)
    if version == V3:
        expected = Publish(expected.topic, expected.payload, expected.qos, expected.retain,
                           expected.dup, expected.packet_id)
    data = t.render(version, **kw)
    assert data == encode(expected, version)
    sub_ids = kw.get("subscription_ids", ())
    assert t.size(version, qos=kw["qos"], subscription_ids=sub_ids) == len(data)
    assert decode(data, version) == expected


def test_template_qos0_is_encoded_once() -> None:
    """Section "Performance rules": every QoS 0 subscriber gets the very same bytes object."""
    t = PublishTemplate("a", b"payload")
    assert t.render(V5) is t.render(V5)


def test_template_patches_only_the_packet_id() -> None:
    t = PublishTemplate("a/b", b"hi")
    one, two = t.render(V3, qos=1, packet_id=1), t.render(V3, qos=1, packet_id=2)
    assert one == h("32 09 0003 612f62 0001 6869")
    assert two == h("32 09 0003 612f62 0002 6869")


def test_template_topic_alias_without_topic() -> None:
    """5.0 section 3.3.2.3.4: a known alias replaces the topic with an empty string."""
    t = PublishTemplate("a/b", b"hi")
    data = t.render(V5, topic_alias=3, send_topic=False)
    assert data == h("30 08 0000 03 23 0003 6869")
    assert decode(data, V5) == Publish("", b"hi", properties=Properties(topic_alias=3))


def test_template_with_aliases_is_encoded_once_per_variant() -> None:
    """Subscribers that see the same alias for a topic share one encoding (a QoS 0
    one is the very same bytes object); every variant, also past the few kept,
    is exactly what :func:`encode` gives; 3.1.1 has no aliases and ignores one."""
    props = Properties(content_type="c", user_properties=(("k", "v"),))
    t = PublishTemplate("a/b", b"hi", props)
    assert t.render(V5, topic_alias=2) is t.render(V5, topic_alias=2)
    assert t.render(V5, topic_alias=2, send_topic=False) is \
        t.render(V5, topic_alias=2, send_topic=False)
    for alias in range(1, 40):
        for send_topic in (True, False):
            for qos, pid in ((0, None), (1, alias)):
                data = t.render(V5, qos=qos, packet_id=pid, topic_alias=alias,
                                send_topic=send_topic)
                expected = Publish("a/b" if send_topic else "", b"hi", QoS(qos), False, False,
                                   pid, replace(props, topic_alias=alias))
                assert data == encode(expected, V5)
                assert len(data) == t.size(V5, qos=qos, topic_alias=alias,
                                           send_topic=send_topic)
    assert t.render(V3, topic_alias=5) == t.render(V3) == encode(Publish("a/b", b"hi"), V3)


def test_template_refuses_per_hop_properties() -> None:
    with pytest.raises(ValueError):
        PublishTemplate("a", b"", Properties(topic_alias=1))
    with pytest.raises(ValueError):
        PublishTemplate("a", b"").render(V3, qos=1)


# --- cross-check with paho-mqtt, a real client, over a real loopback socket -----------

def _paho_session(protocol: MQTTProtocolVersion, port: int) -> paho_client.Client:
    client = paho_client.Client(CallbackAPIVersion.VERSION2, client_id="paho-1",
                                protocol=protocol)
    client.username_pw_set("user", "token")
    client.will_set("dev/1/status", b"offline", qos=1, retain=True)
    props = None
    if protocol == paho_client.MQTTv5:
        props = PahoProperties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 120
        props.UserProperty = ("k", "v")
    client.connect("127.0.0.1", port, keepalive=30, clean_start=True if props else 3,
                   properties=props)
    return client


def _read_packets(sock: socket.socket, decoder: Decoder, count: int) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + WAIT
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(7)  # small reads: paho's bytes arrive in arbitrary pieces
        if not chunk:
            break
        decoder.receive_data(chunk)
        got.extend(decoder)
    return got


@pytest.mark.parametrize("protocol", [paho_client.MQTTv311, paho_client.MQTTv5],
                         ids=["3.1.1", "5.0"])
def test_paho_packets_decode_and_our_connack_is_accepted(
        protocol: MQTTProtocolVersion) -> None:
    """What a real client sends decodes to the expected packets, and it accepts our answers."""
    version = V5 if protocol == paho_client.MQTTv5 else V3
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = _paho_session(protocol, server.getsockname()[1])
        conn, _ = server.accept()
        with conn:
            decoder = Decoder()
            [connect] = _read_packets(conn, decoder, 1)
            assert isinstance(connect, Connect)
            assert (connect.version, connect.client_id) == (version, "paho-1")
            assert connect.keep_alive == 30
            assert (connect.username, connect.password) == ("user", b"token")
            assert connect.will is not None
            assert (connect.will.topic, connect.will.payload, connect.will.qos,
                    connect.will.retain) == ("dev/1/status", b"offline", 1, True)
            if version == V5:
                assert connect.properties.session_expiry_interval == 120
                assert connect.properties.user_properties == (("k", "v"),)

            connected: list[PahoReasonCode] = []
            client.on_connect = lambda c, u, f, rc, p: connected.append(rc)
            conn.sendall(encode(Connack(False, 0), version))
            deadline = time.monotonic() + WAIT
            while not connected and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            assert connected and not connected[0].is_failure

            client.subscribe([("home/+/temp", 1), ("alerts/#", 2)])
            client.publish("home/kitchen/temp", b"21.5", qos=1)
            client.publish("home/kitchen/temp", b"22", qos=2, retain=True)
            client.unsubscribe("alerts/#")
            client.loop(timeout=0.05)
            sub, pub1, pub2, unsub = _read_packets(conn, decoder, 4)
            assert isinstance(sub, Subscribe)
            assert [(s.topic_filter, s.qos) for s in sub.subscriptions] == [
                ("home/+/temp", 1), ("alerts/#", 2)]
            assert isinstance(pub1, Publish) and isinstance(pub2, Publish)
            assert (pub1.topic, pub1.payload, pub1.qos) == ("home/kitchen/temp", b"21.5", 1)
            assert (pub2.payload, pub2.qos, pub2.retain) == (b"22", 2, True)
            assert isinstance(unsub, Unsubscribe) and unsub.topic_filters == ("alerts/#",)

            # Our SUBACK and a QoS 1 PUBLISH from "the broker" reach paho's callbacks.
            received: list[tuple[str, bytes | bytearray, int]] = []
            client.on_message = lambda c, u, m: received.append((m.topic, m.payload, m.qos))
            conn.sendall(encode(SubAck(sub.packet_id, (1, 2)), version)
                         + PublishTemplate("home/hall/temp", b"19").render(version, qos=1,
                                                                           packet_id=42))
            deadline = time.monotonic() + WAIT
            while not received and time.monotonic() < deadline:
                client.loop(timeout=0.05)
            assert received == [("home/hall/temp", b"19", 1)]
            [ack] = _read_packets(conn, decoder, 1)
            assert ack == PubAck(42)
        client.disconnect()
        client.loop(timeout=0.05)


def test_no_properties_default_is_shared() -> None:
    assert Publish("a").properties is NO_PROPERTIES
    assert not NO_PROPERTIES and Properties(topic_alias=1)


def test_codec_does_no_io() -> None:
    """STYLE habit 1: nothing under protocol/mqtt imports asyncio or a socket module."""
    import ast
    from pathlib import Path

    import tidings.protocol.mqtt as package

    forbidden = {"asyncio", "socket", "selectors", "ssl", "threading", "trio", "uvloop"}
    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & forbidden, (path.name, names)
