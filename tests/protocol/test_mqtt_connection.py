"""The broker-side MQTT connection state machine, driven with literal bytes and a fake clock.

Each test names the requirement it checks. The last tests run a real
paho-mqtt client against a tiny loop around :class:`Connection` over a real
loopback socket, in both protocol versions.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import paho.mqtt.client as paho_client
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from conftest import WAIT
from tidings.protocol.mqtt import (
    ClientIdentifierNotValid,
    Connack,
    Connect,
    Connection,
    Disconnect,
    FlowState,
    LocalProtocolError,
    MalformedPacket,
    MessageAcknowledged,
    Outcome,
    PacketTooLarge,
    PingReq,
    Properties,
    ProtocolError,
    ProtocolViolation,
    PubAck,
    PubComp,
    Publish,
    PublishTemplate,
    PubRec,
    PubRel,
    QoS,
    QoSNotSupported,
    ReasonCode,
    ReceiveMaximumExceeded,
    RetainNotSupported,
    SessionState,
    State,
    SubAck,
    Subscribe,
    Subscription,
    TopicAliasInvalid,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Version,
    decode,
    encode,
)
from tidings.protocol.topics import matches

V3, V5 = Version.V311, Version.V5


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", " "))


def connected(version: Version = V5, *, now: float = 0.0, connack: Connack | None = None,
              connect: Connect | None = None, **limits: Any) -> Connection:
    """A connection that has received CONNECT and sent a successful CONNACK."""
    conn = Connection(**limits)
    conn.receive_data(encode(connect or Connect("c1", version), version), now)
    [event] = conn.events_received()
    assert isinstance(event, Connect)
    conn.send(connack or Connack())
    assert conn.state is State.CONNECTED
    conn.data_to_send()
    return conn


def packets_out(conn: Connection) -> list[object]:
    """Decode what the connection wants to write."""
    from tidings.protocol.mqtt import Decoder

    decoder = Decoder(version=conn.version)
    decoder.receive_data(conn.data_to_send())
    return list(decoder)


def violation(conn: Connection) -> Exception:
    events = conn.events_received()
    assert isinstance(events[-1], ProtocolViolation), events
    assert conn.state is State.CLOSED
    return events[-1].error


# --- CONNECT first, once -----------------------------------------------------------

def test_first_packet_must_be_connect() -> None:
    """[MQTT-3.1.0-1]: anything else first is a protocol violation; the socket closes."""
    conn = Connection()
    conn.receive_data(h("c0 00"), 0.0)
    assert isinstance(violation(conn), ProtocolError)
    assert conn.data_to_send() == b""  # no version yet: nothing to answer with


@pytest.mark.parametrize(("version", "answer"), [(V5, "e0 01 82"), (V3, "")])
def test_second_connect_is_a_protocol_violation(version: Version, answer: str) -> None:
    """[MQTT-3.1.0-2]: a second CONNECT closes; 5.0 says why in a DISCONNECT 0x82."""
    conn = connected(version)
    conn.receive_data(encode(Connect("c1", version), version), 1.0)
    assert isinstance(violation(conn), ProtocolError)
    assert conn.data_to_send() == h(answer)


def test_version_is_known_after_connect() -> None:
    conn = Connection()
    assert conn.version is None
    conn.receive_data(encode(Connect("c1", V5), V5), 0.0)
    assert conn.version == V5 and conn.state is State.CONNECTING


def test_unsupported_level_answers_311_connack_0x01() -> None:
    """[MQTT-3.1.2-2]: level 3 (MQTT 3.1) gets return code 0x01, then close."""
    conn = Connection()
    conn.receive_data(h("10 0e 0006 4d5149736470 03 02 003c 0000"), 0.0)
    assert isinstance(violation(conn), UnsupportedProtocolVersion)
    assert conn.data_to_send() == h("20 02 00 01")


def test_unsupported_protocol_at_level_5_answers_v5_connack_0x84() -> None:
    """5.0 section 3.1.2.2: a 5.0 client is refused with reason 0x84 in a 5.0 CONNACK."""
    conn = Connection()
    conn.receive_data(h("10 0d 0004 4d515458 05 02 003c 00 0000"), 0.0)
    violation(conn)
    assert conn.data_to_send() == h("20 03 00 84 00")


@pytest.mark.parametrize(("version", "answer"), [(V5, "20 03 00 81 00"), (V3, "")])
def test_malformed_connect_answer(version: Version, answer: str) -> None:
    """5.0 section 4.13: before CONNACK, a 5.0 client gets CONNACK 0x81; 3.1.1 just closes."""
    conn = Connection()
    conn.receive_data(h(f"10 0c 0004 4d515454 0{int(version)} 03 003c 0000"), 0.0)
    assert isinstance(violation(conn), MalformedPacket)
    assert conn.data_to_send() == h(answer)


def test_duplicate_property_in_v5_connect_answers_0x82() -> None:
    """5.0 section 3.1.2.11.2: a property twice is a Protocol Error (CONNACK 0x82)."""
    conn = Connection()
    conn.receive_data(h("10 17 0004 4d515454 05 02 003c 0a 11 00000001 11 00000002 0000"), 0.0)
    violation(conn)
    assert conn.data_to_send() == h("20 03 00 82 00")


def test_311_empty_client_id_with_persistent_session_is_rejected() -> None:
    """[MQTT-3.1.3-8]: CONNACK return code 0x02 (Identifier rejected), then close."""
    conn = Connection()
    conn.receive_data(encode(Connect("", V3, clean_start=False), V3), 0.0)
    assert isinstance(violation(conn), ClientIdentifierNotValid)
    assert conn.data_to_send() == h("20 02 00 02")


def test_packets_after_connect_wait_for_the_connack() -> None:
    """5.0 section 3.1.4: nothing after CONNECT but AUTH is processed before our CONNACK."""
    conn = Connection()
    sub = Subscribe(1, (Subscription("a/#", QoS(1)),))
    conn.receive_data(encode(Connect("c1", V5), V5) + encode(sub, V5), 0.0)
    assert [type(e) for e in conn.events_received()] == [Connect]
    conn.send(Connack())
    assert conn.events_received() == [sub]


def test_refused_connack_closes_and_drops_session_present() -> None:
    """[MQTT-3.2.2-6], [MQTT-3.2.2-7]: a refusal has Session Present 0 and ends the connection."""
    conn = Connection()
    conn.receive_data(encode(Connect("c1", V5), V5), 0.0)
    conn.events_received()
    conn.send(Connack(True, ReasonCode.NOT_AUTHORIZED))
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == h("20 03 00 87 00")


def test_sending_out_of_order_is_a_local_error() -> None:
    """Our own mistakes are LocalProtocolError, never bytes on the wire."""
    conn = Connection()
    conn.receive_data(encode(Connect("c1", V3), V3), 0.0)
    with pytest.raises(LocalProtocolError):
        conn.send(SubAck(1, (0,)))  # before CONNACK
    conn.send(Connack())
    with pytest.raises(LocalProtocolError):
        conn.send(Connack())  # twice


def test_client_may_not_send_server_packets() -> None:
    """Section 2.1.2: SUBACK is Server to Client only; from a client it is a protocol error."""
    conn = connected(V5)
    conn.receive_data(encode(SubAck(1, (0,)), V5), 1.0)
    assert isinstance(violation(conn), ProtocolError)


# --- limits announced in CONNACK and enforced ----------------------------------------

def test_connack_announces_the_enforced_limits() -> None:
    """5.0 section 3.2.2.3: what we enforce is what we announce."""
    conn = Connection(max_packet_size=1024, receive_maximum=10, topic_alias_maximum=4)
    conn.receive_data(encode(Connect("c1", V5), V5), 0.0)
    conn.send(Connack())
    connack = decode(conn.data_to_send(), V5)
    assert isinstance(connack, Connack)
    assert connack.properties == Properties(receive_maximum=10, topic_alias_maximum=4,
                                            maximum_packet_size=1024)


def test_inbound_packet_too_large_disconnects_0x95() -> None:
    """[MQTT-3.2.2-15] / 5.0 section 3.2.2.3.6: over our maximum -> DISCONNECT 0x95."""
    conn = connected(V5, max_packet_size=64)
    conn.receive_data(h("30 7f 0001 61"), 1.0)  # announces 129 bytes; only 5 arrived
    assert isinstance(violation(conn), PacketTooLarge)
    assert conn.data_to_send() == h("e0 01 95")


def test_inbound_receive_maximum_exceeded_disconnects_0x93() -> None:
    """[MQTT-3.3.4-9]: more unacknowledged QoS>0 PUBLISHes than Receive Maximum -> 0x93."""
    conn = connected(V5, receive_maximum=2)
    for pid in (1, 2):
        conn.receive_data(encode(Publish("a", b"", QoS(1), packet_id=pid), V5), 1.0)
    assert len(conn.events_received()) == 2
    conn.send(PubAck(1))  # frees one
    conn.receive_data(encode(Publish("a", b"", QoS(2), packet_id=3), V5), 1.0)
    assert len(conn.events_received()) == 1
    conn.receive_data(encode(Publish("a", b"", QoS(1), packet_id=4), V5), 1.0)
    assert isinstance(violation(conn), ReceiveMaximumExceeded)
    assert conn.data_to_send().endswith(h("e0 01 93"))


def test_maximum_qos_and_retain_available_are_enforced() -> None:
    """[MQTT-3.2.2-11] QoS over Maximum QoS -> 0x9B; [MQTT-3.2.2-14] RETAIN unavailable -> 0x9A."""
    conn = connected(V5, connack=Connack(properties=Properties(maximum_qos=1)))
    conn.receive_data(encode(Publish("a", b"", QoS(2), packet_id=1), V5), 1.0)
    assert isinstance(violation(conn), QoSNotSupported)
    assert conn.data_to_send() == h("e0 01 9b")
    conn = connected(V5, connack=Connack(properties=Properties(retain_available=0)))
    conn.receive_data(encode(Publish("a", b"", retain=True), V5), 1.0)
    assert isinstance(violation(conn), RetainNotSupported)
    assert conn.data_to_send() == h("e0 01 9a")


def test_subscription_identifier_from_a_client_is_a_protocol_error() -> None:
    """[MQTT-3.3.4-6]: a client's PUBLISH must not carry a Subscription Identifier."""
    conn = connected(V5)
    publish = Publish("a", properties=Properties(subscription_identifiers=(1,)))
    conn.receive_data(encode(publish, V5), 1.0)
    assert isinstance(violation(conn), ProtocolError)


# --- inbound QoS 2 -----------------------------------------------------------------

@pytest.mark.parametrize("version", [V3, V5])
def test_inbound_qos2_duplicate_is_not_delivered_twice(version: Version) -> None:
    """[MQTT-4.3.3-10] (3.1.1 [MQTT-4.3.3-2]): a re-sent PUBLISH before PUBREL gets
    PUBREC again and is not delivered again; PUBREL gets PUBCOMP [MQTT-4.3.3-11]."""
    conn = connected(version)
    publish = Publish("a/b", b"x", QoS(2), packet_id=5)
    conn.receive_data(encode(publish, version), 1.0)
    assert conn.events_received() == [publish]
    conn.send(PubRec(5))
    assert conn.data_to_send() == h("50 02 0005")
    conn.receive_data(encode(Publish("a/b", b"x", QoS(2), dup=True, packet_id=5), version), 2.0)
    assert conn.events_received() == []
    assert conn.data_to_send() == h("50 02 0005")
    conn.receive_data(encode(PubRel(5), version), 3.0)
    assert conn.data_to_send() == h("70 02 0005")
    assert conn.session.awaiting_pubrel == set()
    # [MQTT-4.3.3-12]: after PUBCOMP the same id starts a new message.
    conn.receive_data(encode(publish, version), 4.0)
    assert conn.events_received() == [publish]


def test_inbound_qos2_failed_pubrec_frees_the_id() -> None:
    """[MQTT-4.3.3-9]: after a PUBREC >= 0x80 the same id is a new message."""
    conn = connected(V5)
    publish = Publish("a", b"", QoS(2), packet_id=5)
    conn.receive_data(encode(publish, V5), 1.0)
    conn.events_received()
    conn.send(PubRec(5, ReasonCode.NOT_AUTHORIZED))
    conn.receive_data(encode(publish, V5), 2.0)
    assert conn.events_received() == [publish]


def test_unknown_pubrel_gets_pubcomp_not_found() -> None:
    """5.0 section 3.7.2.1: PUBCOMP 0x92 for a PUBREL we have no state for."""
    conn = connected(V5)
    conn.receive_data(encode(PubRel(9), V5), 1.0)
    assert conn.data_to_send() == h("70 03 0009 92")


# --- outbound QoS 1/2 ------------------------------------------------------------------

def test_outbound_qos1_flow() -> None:
    """[MQTT-4.3.2-1]: a new packet id per message; PUBACK completes it."""
    conn = connected(V5)
    template = PublishTemplate("a/b", b"hi")
    result = conn.send_publish(template, qos=1)
    assert (result.outcome, result.packet_id) == (Outcome.SENT, 1)
    assert conn.data_to_send() == h("32 0a 0003 612f62 0001 00 6869")
    conn.receive_data(encode(PubAck(1), V5), 1.0)
    assert conn.events_received() == [MessageAcknowledged(1, 0, template)]
    assert conn.session.outbound == {}


@pytest.mark.parametrize("version", [V3, V5])
@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("retain", [False, True])
def test_qos12_fast_path_sends_what_the_encoder_does(version: Version, qos: int,
                                                      retain: bool) -> None:
    """A QoS 1/2 delivery with no Topic Alias and no Subscription Identifier (the
    fast path: cached bytes, the packet id patched in) is byte for byte the
    PUBLISH the general encoder makes, properties included, packet after packet;
    the same message with a Subscription Identifier (the general path) differs
    only by it."""
    props = Properties(content_type="text/plain", message_expiry_interval=60,
                       user_properties=(("k", "v"),)) if version == V5 else Properties()
    template = PublishTemplate("home/kitchen/temp", b"21.5" * 40, props)
    conn = connected(version)
    for pid in (1, 2, 3):
        assert conn.send_publish(template, qos=qos, retain=retain).packet_id == pid
        want = Publish("home/kitchen/temp", b"21.5" * 40, QoS(qos), retain, False, pid, props)
        assert conn.data_to_send() == encode(want, version)
    if version == V5:
        assert conn.send_publish(template, qos=qos, retain=retain,
                                 subscription_ids=(7,)).packet_id == 4
        with_id = Publish("home/kitchen/temp", b"21.5" * 40, QoS(qos), retain, False, 4,
                          Properties(content_type="text/plain", message_expiry_interval=60,
                                     subscription_identifiers=(7,),
                                     user_properties=(("k", "v"),)))
        assert conn.data_to_send() == encode(with_id, version)
    assert [f.packet_id for f in conn.in_flight] == ([1, 2, 3, 4] if version == V5 else [1, 2, 3])


def test_qos12_fast_path_keeps_the_clients_maximum_packet_size() -> None:
    """[MQTT-3.1.2-24], [MQTT-3.1.2-25]: the fast path drops what is over the
    client's Maximum Packet Size as the general path does, using no packet id."""
    conn = connected(V5, connect=Connect("c1", V5, properties=Properties(
        maximum_packet_size=64)))
    assert conn.send_publish(PublishTemplate("t", b"x" * 100), qos=1).outcome is \
        Outcome.TOO_LARGE
    assert conn.send_publish(PublishTemplate("t", b"x" * 10), qos=1).packet_id == 1
    assert conn.data_to_send() == encode(Publish("t", b"x" * 10, QoS(1), False, False, 1), V5)


def test_outbound_qos2_flow() -> None:
    """[MQTT-4.3.3-4]: PUBREC < 0x80 is answered with PUBREL; PUBCOMP completes it."""
    conn = connected(V3)
    template = PublishTemplate("a", b"")
    assert conn.send_publish(template, qos=2).packet_id == 1
    conn.data_to_send()
    conn.receive_data(encode(PubRec(1), V3), 1.0)
    assert conn.events_received() == []
    assert conn.data_to_send() == h("62 02 0001")
    conn.receive_data(encode(PubComp(1), V3), 2.0)
    assert conn.events_received() == [MessageAcknowledged(1, 0, template)]


def test_outbound_qos2_failed_pubrec_ends_the_flow() -> None:
    """[MQTT-4.4.0-2]: a PUBREC >= 0x80 acknowledges; no PUBREL, no redelivery."""
    conn = connected(V5)
    template = PublishTemplate("a", b"")
    conn.send_publish(template, qos=2)
    conn.data_to_send()
    conn.receive_data(encode(PubRec(1, ReasonCode.QUOTA_EXCEEDED), V5), 1.0)
    assert conn.events_received() == [MessageAcknowledged(1, 0x97, template)]
    assert conn.data_to_send() == b""


def test_packet_ids_wrap_and_skip_ids_in_flight() -> None:
    """[MQTT-2.2.1-3]: an unused id in 1..65535; ids in flight are skipped; 0 never used."""
    conn = connected(V3)
    conn.session.next_packet_id = 65534
    t = PublishTemplate("a", b"")
    ids = [conn.send_publish(t, qos=1).packet_id for _ in range(3)]
    assert ids == [65534, 65535, 1]
    conn.receive_data(encode(PubAck(65535), V3), 1.0)
    conn.session.next_packet_id = 65534
    assert conn.send_publish(t, qos=1).packet_id == 65535  # 65534 is still in flight


def test_client_receive_maximum_limits_in_flight() -> None:
    """[MQTT-4.9.0-2]: no QoS>0 PUBLISH once the send quota is 0; QoS 0 still goes
    [MQTT-4.9.0-3]; an acknowledgement gives the quota back."""
    connect = Connect("c1", V5, properties=Properties(receive_maximum=2))
    conn = connected(V5, connect=connect)
    t = PublishTemplate("a", b"")
    assert [conn.send_publish(t, qos=1).outcome for _ in range(3)] == [
        Outcome.SENT, Outcome.SENT, Outcome.NO_QUOTA]
    assert conn.send_publish(t, qos=0).outcome is Outcome.SENT
    assert conn.send_quota == 0
    conn.receive_data(encode(PubAck(1), V5), 1.0)
    assert conn.send_quota == 1
    assert conn.send_publish(t, qos=1).outcome is Outcome.SENT


def test_redelivery_on_resumed_session_sets_dup() -> None:
    """[MQTT-4.4.0-1]: on reconnect with a session, unacknowledged PUBLISHes (DUP set,
    [MQTT-3.3.1-1]) and PUBRELs are re-sent with their original ids, in order."""
    first = connected(V5)
    t1, t2 = PublishTemplate("a", b"1"), PublishTemplate("b", b"2")
    first.send_publish(t1, qos=1)
    first.send_publish(t2, qos=2)
    first.receive_data(encode(PubRec(2), V5), 1.0)  # t2 now awaits PUBCOMP
    session = first.session

    second = Connection()
    second.receive_data(encode(Connect("c1", V5, clean_start=False), V5), 10.0)
    second.events_received()
    second.attach_session(session)
    second.send(Connack(session_present=True))
    connack, *resent = packets_out(second)
    assert isinstance(connack, Connack) and connack.session_present
    assert resent == [Publish("a", b"1", QoS(1), dup=True, packet_id=1), PubRel(2)]
    second.receive_data(encode(PubAck(1), V5) + encode(PubComp(2), V5), 11.0)
    assert [e.packet_id for e in second.events_received()] == [1, 2]  # type: ignore[union-attr]
    assert session.outbound == {}


def test_redelivery_survives_a_version_change() -> None:
    """The template re-renders for the new connection's version."""
    session = SessionState()
    first = connected(V3)
    first.session = session
    first.send_publish(PublishTemplate("a", b"1"), qos=1)
    second = Connection()
    second.receive_data(encode(Connect("c1", V5, clean_start=False), V5), 0.0)
    second.attach_session(session)
    second.send(Connack(session_present=True))
    assert packets_out(second)[1] == Publish("a", b"1", QoS(1), dup=True, packet_id=1)


def _connecting(version: Version = V5) -> Connection:
    conn = Connection()
    conn.receive_data(encode(Connect("c1", version, clean_start=False), version), 0.0)
    conn.events_received()
    return conn


def test_take_over_hands_the_session_to_the_next_connection() -> None:
    """detach_session / attach_session: the unacknowledged messages move, in order,
    and are redelivered with DUP [MQTT-4.4.0-1]; the old connection keeps nothing."""
    first = connected(V5)
    first.send_publish(PublishTemplate("a", b"1"), qos=1)
    first.data_to_send()
    second = _connecting()
    second.attach_session(first.detach_session())
    assert first.in_flight == () and first.awaiting_pubrel == frozenset()
    second.send(Connack(session_present=True))
    assert packets_out(second)[1] == Publish("a", b"1", QoS(1), dup=True, packet_id=1)


def test_restored_in_flight_messages_are_redelivered() -> None:
    """A stored session's in-flight messages, restored before the CONNACK: the CONNACK
    resends the PUBLISH with DUP and the PUBREL of a released one, with their ids, and
    later ids skip them [MQTT-2.2.1-3]."""
    conn = _connecting()
    assert conn.restore_in_flight(7, PublishTemplate("a", b"1"), 1, False, ())
    assert conn.restore_in_flight(9, PublishTemplate("b", b"2"), 2, True, (), released=True)
    assert not conn.restore_in_flight(7, PublishTemplate("c", b"3"), 1, False, ())  # in use
    assert [(f.packet_id, f.flow) for f in conn.in_flight] == [
        (7, FlowState.AWAIT_PUBACK), (9, FlowState.AWAIT_PUBCOMP)]
    conn.send(Connack(session_present=True))
    assert packets_out(conn)[1:] == [Publish("a", b"1", QoS(1), dup=True, packet_id=7),
                                     PubRel(9)]
    conn.receive_data(encode(PubAck(7), V5) + encode(PubComp(9), V5), 1.0)
    assert [e.packet_id for e in conn.events_received()] == [7, 9]  # type: ignore[union-attr]
    assert conn.in_flight == ()


def test_restored_awaiting_pubrel_is_not_delivered_twice() -> None:
    """[MQTT-4.3.3-10]: a QoS 2 PUBLISH resent after a reconnect with an id the stored
    session had PUBRECed is acknowledged again, not delivered a second time."""
    conn = _connecting()
    conn.restore_awaiting_pubrel([4])
    conn.send(Connack(session_present=True))
    packets_out(conn)
    conn.receive_data(encode(Publish("t", b"x", QoS(2), dup=True, packet_id=4), V5), 1.0)
    assert conn.events_received() == []
    assert packets_out(conn) == [PubRec(4)]
    conn.receive_data(encode(PubRel(4), V5), 1.0)
    assert packets_out(conn) == [PubComp(4)] and conn.awaiting_pubrel == frozenset()


def test_state_is_restored_only_before_the_connack() -> None:
    conn = connected(V5)
    with pytest.raises(LocalProtocolError):
        conn.restore_in_flight(1, PublishTemplate("a", b"1"), 1, False, ())
    with pytest.raises(LocalProtocolError):
        conn.restore_awaiting_pubrel([1])


# --- maximum packet size of the client -----------------------------------------------

def test_publish_over_client_maximum_is_dropped_as_if_sent() -> None:
    """[MQTT-3.1.2-24], [MQTT-3.1.2-25]: never send over the client's Maximum Packet
    Size; discard and behave as if sent: no packet id used, nothing in flight."""
    connect = Connect("c1", V5, properties=Properties(maximum_packet_size=20))
    conn = connected(V5, connect=connect)
    big = PublishTemplate("a", b"x" * 20)
    result = conn.send_publish(big, qos=1)
    assert result.outcome is Outcome.TOO_LARGE and result.packet_id is None
    assert conn.data_to_send() == b"" and conn.session.outbound == {}
    small = PublishTemplate("a", b"x" * 12)  # 2 + 3 + 2 + 1 + 12 = 20 bytes: fits exactly
    assert conn.send_publish(small, qos=1).packet_id == 1
    assert len(conn.data_to_send()) == 20


def test_reason_string_and_user_properties_are_dropped_to_fit() -> None:
    """[MQTT-3.2.2-19], [MQTT-3.2.2-20] and the same rule for every ack: leave out the
    Reason String, then User Properties, rather than exceed the client's maximum."""
    connect = Connect("c1", V5, properties=Properties(maximum_packet_size=13))
    conn = connected(V5, connect=connect)
    conn.send(SubAck(1, (0x87,), Properties(reason_string="x" * 20,
                                            user_properties=(("k", "v"),))))
    assert conn.data_to_send() == h("90 0b 0001 | 07 26 0001 6b 0001 76 | 87")
    conn.send(SubAck(2, (0x87,), Properties(user_properties=(("key", "value"),))))
    assert conn.data_to_send() == h("90 04 0002 00 87")


def test_no_problem_information_when_client_asks_for_none() -> None:
    """[MQTT-3.1.2-29]: Request Problem Information 0 -> no Reason String or User
    Property outside PUBLISH, CONNACK and DISCONNECT."""
    connect = Connect("c1", V5, properties=Properties(request_problem_information=0))
    conn = connected(V5, connect=connect)
    conn.send(PubAck(1, ReasonCode.NOT_AUTHORIZED, Properties(reason_string="denied")))
    assert conn.data_to_send() == h("40 03 0001 87")


# --- topic aliases (5.0 section 3.3.2.3.4) --------------------------------------------

def test_inbound_topic_alias_is_resolved() -> None:
    """An alias set with a topic stands for it later; the event carries the topic."""
    conn = connected(V5, topic_alias_maximum=4)
    conn.receive_data(encode(Publish("a/b", b"1", properties=Properties(topic_alias=2)), V5), 1)
    conn.receive_data(encode(Publish("", b"2", properties=Properties(topic_alias=2)), V5), 2)
    assert conn.events_received() == [Publish("a/b", b"1"), Publish("a/b", b"2")]


@pytest.mark.parametrize("alias", [0, 5])
def test_topic_alias_zero_or_over_maximum_disconnects_0x94(alias: int) -> None:
    """[MQTT-3.3.2-8] alias 0, [MQTT-3.3.2-9] over Topic Alias Maximum -> DISCONNECT 0x94."""
    conn = connected(V5, topic_alias_maximum=4)
    conn.receive_data(encode(Publish("a", properties=Properties(topic_alias=alias)), V5), 1.0)
    assert isinstance(violation(conn), TopicAliasInvalid)
    assert conn.data_to_send() == h("e0 01 94")


def test_unknown_topic_alias_is_a_protocol_error() -> None:
    """An empty topic with an alias never set is a Protocol Error (0x82)."""
    conn = connected(V5, topic_alias_maximum=4)
    conn.receive_data(encode(Publish("", properties=Properties(topic_alias=1)), V5), 1.0)
    assert isinstance(violation(conn), ProtocolError)
    assert conn.data_to_send() == h("e0 01 82")


def test_topic_aliases_do_not_outlive_the_connection() -> None:
    """[MQTT-3.3.2-7]: alias mappings are per network connection."""
    conn = connected(V5, topic_alias_maximum=4)
    conn.receive_data(encode(Publish("a", properties=Properties(topic_alias=1)), V5), 1.0)
    again = connected(V5, topic_alias_maximum=4)
    again.receive_data(encode(Publish("", properties=Properties(topic_alias=1)), V5), 1.0)
    assert isinstance(violation(again), ProtocolError)


def test_outbound_topic_aliases_within_client_maximum() -> None:
    """[MQTT-3.3.2-11]: never an alias over the client's Topic Alias Maximum; when
    they are all in use, the least recently used topic's alias is re-mapped (sent
    with the new topic)."""
    connect = Connect("c1", V5, properties=Properties(topic_alias_maximum=1))
    conn = connected(V5, connect=connect, outbound_topic_aliases=8)
    for topic in ("a/b", "a/b", "c", "c", "a/b"):
        conn.send_publish(PublishTemplate(topic, b""))
    assert packets_out(conn) == [
        Publish("a/b", properties=Properties(topic_alias=1)),
        Publish("", properties=Properties(topic_alias=1)),
        Publish("c", properties=Properties(topic_alias=1)),
        Publish("", properties=Properties(topic_alias=1)),
        Publish("a/b", properties=Properties(topic_alias=1)),
    ]


@pytest.mark.parametrize(("ours", "theirs", "expected"), [(2, 3, 2), (8, 3, 3), (0, 3, 0),
                                                          (8, None, 0)])
def test_outbound_topic_aliases_are_an_lru(ours: int, theirs: int | None,
                                           expected: int) -> None:
    """At most min(ours, the client's Topic Alias Maximum) aliases, none without one
    [MQTT-3.1.2-27], never 0 [MQTT-3.3.2-8]: a repeat goes out as an empty topic
    with its alias; a new topic past the limit takes the alias of the topic sent
    least recently, which is sent in full (and re-mapped) when it comes again."""
    connect = Connect("c1", V5, properties=Properties(topic_alias_maximum=theirs))
    conn = connected(V5, connect=connect, outbound_topic_aliases=ours)
    assert conn.outbound_alias_limit == expected
    sent = ["t1", "t2", "t1", "t3", "t2", "t1"]
    for topic in sent:
        conn.send_publish(PublishTemplate(topic, b"x"))
    publishes = [p for p in packets_out(conn) if isinstance(p, Publish)]
    got = [(p.topic, p.properties.topic_alias) for p in publishes]
    assert {
        0: [(t, None) for t in sent],
        2: [("t1", 1), ("t2", 2), ("", 1), ("t3", 2), ("t2", 1), ("t1", 2)],
        3: [("t1", 1), ("t2", 2), ("", 1), ("t3", 3), ("", 2), ("", 1)],
    }[expected] == got


# --- keepalive ----------------------------------------------------------------------

def test_keepalive_deadline_is_one_and_a_half_times() -> None:
    """[MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22]: no packet within 1.5 x Keep Alive -> close."""
    conn = connected(V5, now=100.0, connect=Connect("c1", V5, keep_alive=10))
    assert conn.keepalive_deadline() == 115.0
    conn.receive_data(encode(PingReq(), V5), 110.0)
    assert conn.data_to_send() == h("d0 00")  # [MQTT-3.12.4-1]
    assert conn.keepalive_deadline() == 125.0
    assert conn.check_keepalive(125.0) is False
    assert conn.check_keepalive(125.5) is True
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == h("e0 01 8d")


def test_server_keep_alive_overrides_the_clients() -> None:
    """[MQTT-3.2.2-21]: the client uses the Server Keep Alive, so must we."""
    conn = connected(V5, now=0.0, connect=Connect("c1", V5, keep_alive=600),
                     connack=Connack(properties=Properties(server_keep_alive=20)))
    assert conn.keepalive_deadline() == 30.0


def test_keepalive_zero_means_no_deadline() -> None:
    conn = connected(V3, connect=Connect("c1", V3, keep_alive=0))
    assert conn.keepalive_deadline() is None and conn.check_keepalive(1e9) is False


# --- DISCONNECT and CLOSED ------------------------------------------------------------

def test_client_disconnect_closes_and_later_data_is_ignored() -> None:
    """[MQTT-3.14.4-1]: after DISCONNECT the client sends nothing more; we read nothing more."""
    conn = connected(V5)
    conn.receive_data(encode(Disconnect(ReasonCode.DISCONNECT_WITH_WILL), V5) + h("00 00"), 1.0)
    assert conn.events_received() == [Disconnect(ReasonCode.DISCONNECT_WITH_WILL)]
    assert conn.state is State.CLOSED
    conn.receive_data(h("c0 00"), 2.0)
    assert conn.events_received() == [] and conn.data_to_send() == b""


def test_session_expiry_cannot_be_raised_from_zero_at_disconnect() -> None:
    """5.0 section 3.14.2.2.2: non-zero Session Expiry at DISCONNECT after 0 at CONNECT."""
    conn = connected(V5)
    conn.receive_data(encode(Disconnect(0, Properties(session_expiry_interval=60)), V5), 1.0)
    assert isinstance(violation(conn), ProtocolError)
    assert conn.data_to_send() == h("e0 01 82")


def test_server_disconnect_in_311_writes_nothing() -> None:
    """3.1.1 has no DISCONNECT from the server: the state closes, the edge closes the socket."""
    conn = connected(V3)
    conn.send(Disconnect(ReasonCode.SESSION_TAKEN_OVER))
    assert conn.state is State.CLOSED and conn.data_to_send() == b""
    conn5 = connected(V5)
    conn5.send(Disconnect(ReasonCode.SESSION_TAKEN_OVER))
    assert conn5.data_to_send() == h("e0 01 8e")


def test_sending_after_close_writes_nothing() -> None:
    """The hub may still deliver to a connection that just closed: no error, no bytes."""
    conn = connected(V5)
    conn.send(Disconnect())
    conn.data_to_send()
    assert conn.send_publish(PublishTemplate("a", b""), qos=1).outcome is Outcome.CLOSED
    conn.send(PubAck(1))
    assert conn.data_to_send() == b""


# --- a real client: paho-mqtt against Connection over a loopback socket -----------------

class TinyBroker:
    """The smallest loop around Connection: accept all, grant all, echo to subscribers.

    Enough to run a real client's QoS 0/1/2 flows both ways; the real broker
    is ``tidings.edges.mqtt``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.conn = Connection()
        self.filters: list[str] = []
        self.received: list[Publish] = []
        self.acked: list[int] = []

    def pump(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            data = None
        if data:
            self.conn.receive_data(data, time.monotonic())
        for event in self.conn.events_received():
            self.handle(event)
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def handle(self, event: object) -> None:
        if isinstance(event, Connect):
            self.conn.send(Connack())
        elif isinstance(event, Subscribe):
            self.filters += [s.topic_filter for s in event.subscriptions]
            self.conn.send(SubAck(event.packet_id, tuple(int(s.qos) for s in event.subscriptions)))
        elif isinstance(event, Unsubscribe):
            self.conn.send(_unsuback(event, self.conn))
        elif isinstance(event, Publish):
            self.received.append(event)
            if event.qos == 1:
                self.conn.send(PubAck(event.packet_id or 0))
            elif event.qos == 2:
                self.conn.send(PubRec(event.packet_id or 0))
            if any(matches(f, event.topic) for f in self.filters):  # echo at the same QoS
                self.conn.send_publish(PublishTemplate(event.topic, event.payload),
                                       qos=event.qos)
        elif isinstance(event, MessageAcknowledged):
            self.acked.append(event.packet_id)


def _unsuback(event: Unsubscribe, conn: Connection) -> Any:
    from tidings.protocol.mqtt import UnsubAck

    return UnsubAck(event.packet_id, tuple(0 for _ in event.topic_filters)
                    if conn.version == V5 else ())


@pytest.mark.parametrize("protocol", [paho_client.MQTTv311, paho_client.MQTTv5],
                         ids=["3.1.1", "5.0"])
def test_paho_client_round_trip_through_connection(
        protocol: MQTTProtocolVersion) -> None:
    """A real client subscribes, publishes at QoS 0, 1 and 2, and receives its own
    messages back at the same QoS; every flow completes on both sides."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = paho_client.Client(CallbackAPIVersion.VERSION2, client_id="dev-1",
                                    protocol=protocol)
        got: list[tuple[str, bytes | bytearray, int]] = []
        subscribed: list[object] = []
        client.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos))
        client.on_subscribe = lambda c, u, mid, rc, p: subscribed.append(rc)
        client.connect("127.0.0.1", server.getsockname()[1], keepalive=30)
        sock, _ = server.accept()
        with sock:
            broker = TinyBroker(sock)

            def run_until(cond: Any) -> None:
                deadline = time.monotonic() + WAIT
                while not cond() and time.monotonic() < deadline:
                    client.loop(timeout=0.01)
                    broker.pump()
                assert cond()

            run_until(lambda: client.is_connected())
            client.subscribe("echo/#", qos=2)
            run_until(lambda: subscribed)
            for qos in (0, 1, 2):
                client.publish("echo/x", f"m{qos}".encode(), qos=qos)
            run_until(lambda: len(got) == 3 and len(broker.acked) == 2
                      and not broker.conn.session.awaiting_pubrel)
            assert sorted(got) == [("echo/x", b"m0", 0), ("echo/x", b"m1", 1),
                                   ("echo/x", b"m2", 2)]
            assert [p.qos for p in broker.received] == [0, 1, 2]
            assert broker.conn.session.outbound == {}
            client.disconnect()
            run_until(lambda: broker.conn.state is State.CLOSED)
