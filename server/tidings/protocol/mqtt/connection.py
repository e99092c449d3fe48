"""The broker's side of one MQTT connection, as a sans-I/O state machine.

Bytes in, events and bytes out; time comes in as ``now`` (any monotonic
clock, seconds), so tests drive it with a fake clock::

    conn = Connection(max_packet_size=1 << 20)
    conn.receive_data(chunk, now)          # never raises for the peer's mistakes
    for event in conn.events_received():   # Connect, Publish, Subscribe, ...
        ...                                # the broker decides, then answers:
        conn.send(Connack(...))            #   CONNACK, SUBACK, PUBACK, ...
        conn.send_publish(template, qos=1) #   deliveries (packet ids are ours)
    transport.write(conn.data_to_send())
    if conn.state is State.CLOSED: close the socket

A session that outlives its connection is handed over with
:meth:`Connection.detach_session` / :meth:`Connection.attach_session` (a
take-over), or, read back from a store, restored between CONNECT and
CONNACK with :meth:`Connection.restore_in_flight` and
:meth:`Connection.restore_awaiting_pubrel`; :attr:`Connection.in_flight`
and :attr:`Connection.awaiting_pubrel` say what to keep when it ends.
The broker never reads or writes ``session`` itself.

Rules for changing this module (as in h11):

1. There is one enum of states, :class:`State`, and three tables: which
   packets the client may send in each state (``_INBOUND``), which we may
   send (``_OUTBOUND``), and the state changes (``_TRANSITIONS``). A packet
   not in the table for the current state is a Protocol Error from the peer
   (or a :class:`LocalProtocolError` from us). Change the tables, not ``if``s.
2. Each packet type has one small handler. Handlers update the session and
   queue events or automatic replies; they never decide policy (who may
   subscribe, what a PUBACK says): that is the broker's, through events.
3. Errors are turned into wire bytes in one place, :meth:`Connection._fail`.
   No exception text ever reaches the peer.

What the machine does on its own: PINGRESP to PINGREQ; PUBREL to PUBREC and
PUBCOMP to PUBREL (QoS 2 flows); PUBREC again for a duplicate QoS 2 PUBLISH
that is not delivered twice; redelivery with DUP set of unacknowledged
messages after a CONNACK on a resumed session; resolving 5.0 topic aliases;
dropping what is over the client's Maximum Packet Size.
"""

from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .codec import DEFAULT_MAX_PACKET_SIZE, Decoder, PublishTemplate, encode
from .errors import (
    ClientIdentifierNotValid,
    LocalProtocolError,
    MQTTError,
    ProtocolError,
    QoSNotSupported,
    ReceiveMaximumExceeded,
    RetainNotSupported,
    TopicAliasInvalid,
    UnsupportedProtocolVersion,
)
from .packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingResp,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Version,
)
from .reason_codes import VALID_REASON_CODES, ReasonCode

__all__ = [
    "Connection",
    "Event",
    "FlowState",
    "InFlight",
    "MessageAcknowledged",
    "Outcome",
    "ProtocolViolation",
    "PublishResult",
    "SessionState",
    "State",
]

T = PacketType


class State(enum.Enum):
    """Where the connection is. The broker reads it; only this module changes it."""

    AWAIT_CONNECT = "await connect"  # nothing received yet [MQTT-3.1.0-1]
    CONNECTING = "connecting"  # CONNECT received, our CONNACK not sent (authentication)
    CONNECTED = "connected"  # CONNACK with success sent
    CLOSED = "closed"  # DISCONNECT, refusal or protocol error: close the socket


# Packets the client may send in each state. While CONNECTING, the other
# packets of a connected client wait in the buffer, unread, until our
# CONNACK: the server must not process data after CONNECT except AUTH until
# then (5.0 section 3.1.4).
_INBOUND: dict[State, frozenset[int]] = {
    State.AWAIT_CONNECT: frozenset({T.CONNECT}),
    State.CONNECTING: frozenset({T.AUTH}),
    State.CONNECTED: frozenset({T.PUBLISH, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP,
                                T.SUBSCRIBE, T.UNSUBSCRIBE, T.PINGREQ, T.DISCONNECT, T.AUTH}),
    State.CLOSED: frozenset(),
}

# Packets we may send in each state. Nothing before CONNECT; only CONNACK or
# AUTH until the CONNACK; in CLOSED every send is silently dropped (the hub
# may still be delivering to a connection that just went away).
_OUTBOUND: dict[State, frozenset[int]] = {
    State.AWAIT_CONNECT: frozenset(),
    State.CONNECTING: frozenset({T.CONNACK, T.AUTH}),
    State.CONNECTED: frozenset({T.PUBLISH, T.PUBACK, T.PUBREC, T.PUBREL, T.PUBCOMP, T.SUBACK,
                                T.UNSUBACK, T.PINGRESP, T.DISCONNECT, T.AUTH}),
    State.CLOSED: frozenset(),
}

# (state, packet type, received?) -> next state. A CONNACK with a refusal
# (reason >= 0x80) closes instead [MQTT-3.2.2-7] (5.0) / [MQTT-3.2.2-5] (3.1.1).
_TRANSITIONS: dict[tuple[State, int, bool], State] = {
    (State.AWAIT_CONNECT, T.CONNECT, True): State.CONNECTING,
    (State.CONNECTING, T.CONNACK, False): State.CONNECTED,
    (State.CONNECTED, T.DISCONNECT, True): State.CLOSED,
    (State.CONNECTED, T.DISCONNECT, False): State.CLOSED,
}


class Outcome(enum.Enum):
    """What :meth:`Connection.send_publish` did with a message."""

    SENT = "sent"
    # Over the client's Maximum Packet Size: discarded, and to be treated as
    # if sending it had completed [MQTT-3.1.2-25]; no packet id was used.
    TOO_LARGE = "too large"
    NO_QUOTA = "no quota"  # Receive Maximum or packet ids used up: queue it, try after an ack
    CLOSED = "closed"  # the connection is closed: nothing was written


@dataclass(frozen=True, slots=True)
class PublishResult:
    outcome: Outcome
    packet_id: int | None = None


class FlowState(enum.Enum):
    """Where an outgoing QoS 1/2 message is in its acknowledgement flow (section 4.3)."""

    AWAIT_PUBACK = "await puback"
    AWAIT_PUBREC = "await pubrec"
    AWAIT_PUBCOMP = "await pubcomp"


@dataclass(slots=True)
class InFlight:
    """An outgoing QoS 1/2 message not yet fully acknowledged."""

    packet_id: int
    message: PublishTemplate
    qos: int
    retain: bool
    subscription_ids: tuple[int, ...]
    flow: FlowState


@dataclass(slots=True)
class SessionState:
    """The part of a session that must outlive one connection (5.0 section 4.1).

    The broker keeps it per client id and hands it to the next connection
    with :meth:`Connection.attach_session` when the session is resumed.
    ``outbound`` keeps send order (a dict preserves insertion order), which
    redelivery keeps [MQTT-4.6.0-1].
    """

    outbound: dict[int, InFlight] = field(default_factory=dict)
    awaiting_pubrel: set[int] = field(default_factory=set)  # inbound QoS 2, PUBREC sent
    next_packet_id: int = 1


@dataclass(frozen=True, slots=True)
class MessageAcknowledged:
    """An outgoing QoS 1/2 message's flow has finished; its send quota is free again.

    ``reason_code`` is the PUBACK's, the failing PUBREC's, or the PUBCOMP's.
    """

    packet_id: int
    reason_code: int
    message: PublishTemplate


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol. The state is CLOSED; ``data_to_send()`` holds
    the CONNACK or DISCONNECT that says why (if the version has one)."""

    error: MQTTError


Event = Packet | MessageAcknowledged | ProtocolViolation

_NO_TOPIC_ALIAS_MAXIMUM = 0
_PACKET_ID = struct.Struct("!H")
_MAX_PACKET_ID = 0xFFFF


class Connection:
    """One client connection, seen from the broker. See the module docstring.

    Limits we enforce on the client (and announce in a 5.0 CONNACK, filled in
    when the broker's CONNACK leaves the property unset):

    - ``max_packet_size``: a larger packet is Packet Too Large (0x95),
      detected from the fixed header alone;
    - ``receive_maximum``: QoS 1/2 PUBLISHes the client may have
      unacknowledged (5.0 only) [MQTT-3.3.4-9];
    - ``topic_alias_maximum``: the highest inbound Topic Alias (5.0).

    ``max_inflight`` caps our own unacknowledged QoS 1/2 sends (further
    capped by the client's Receive Maximum). ``outbound_topic_aliases`` is
    how many Topic Aliases we use towards a 5.0 client that allows them
    (further capped by its Topic Alias Maximum; 0: none): the topics sent
    most recently keep theirs, the least recently used one gives its alias
    up to a new topic (see :meth:`_pick_alias`).
    """

    # slotted: one per connection, and an idle connection should cost little
    __slots__ = ("_alias_max", "_aliases_in", "_aliases_out", "_decoder", "_events",
                 "_inbound_qos1", "_keep_alive", "_last_received", "_maximum_qos", "_now", "_out",
                 "_retain_available", "_state", "connect", "dropped_packets", "max_inflight",
                 "max_packet_size", "outbound_topic_aliases", "receive_maximum", "session",
                 "topic_alias_maximum")

    def __init__(self, *, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
                 receive_maximum: int = 65535, topic_alias_maximum: int = 16,
                 max_inflight: int = 65535, outbound_topic_aliases: int = 0,
                 connect_max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._decoder = Decoder(max_packet_size=max_packet_size)
        self._state = State.AWAIT_CONNECT
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._now = 0.0
        self.connect: Connect | None = None  # the client's CONNECT, once received
        self.session = SessionState()
        self.max_packet_size = max_packet_size
        # Until the CONNACK, packets are also bounded by this (a CONNECT is small;
        # an unauthenticated peer must not make us buffer a huge packet).
        self._decoder.max_packet_size = min(max_packet_size, connect_max_packet_size)
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.max_inflight = max_inflight
        self.outbound_topic_aliases = outbound_topic_aliases
        # What the CONNACK announced (5.0): Maximum QoS, Retain Available.
        self._maximum_qos = 2
        self._retain_available = True
        self._keep_alive = 0
        self._last_received: float | None = None
        # QoS 1 PUBLISHes we have not PUBACKed (a dict as a set: 64 bytes empty, not 216)
        self._inbound_qos1: dict[int, None] = {}
        self._aliases_in: dict[int, str] = {}  # [MQTT-3.3.2-7] per connection, never carried over
        # topic -> our alias for it, least recently sent first (an LRU; an
        # OrderedDict, as a dict's first key gets slow to find after many deletions)
        self._aliases_out: OrderedDict[str, int] = OrderedDict()
        self._alias_max = 0  # how many of them: known at CONNECT (see _on_connect)
        self.dropped_packets = 0  # non-PUBLISH packets over the client's maximum size

    # --- what the broker reads ----------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def version(self) -> Version | None:
        """The protocol version, known once the CONNECT's level byte has been read."""
        return self._decoder.version

    @property
    def client_receive_maximum(self) -> int:
        """How many QoS 1/2 sends the client accepts unacknowledged (5.0 section 3.1.2.11.3)."""
        if self.connect is None or self.connect.properties.receive_maximum is None:
            return 65535
        return self.connect.properties.receive_maximum

    @property
    def client_max_packet_size(self) -> int | None:
        """The client's Maximum Packet Size; None when it set none (5.0 section 3.1.2.11.4)."""
        return None if self.connect is None else self.connect.properties.maximum_packet_size

    @property
    def outbound_alias_limit(self) -> int:
        """How many Topic Aliases we use towards this client (0: none), once its
        CONNECT is known: ``outbound_topic_aliases`` within its Topic Alias Maximum."""
        return self._alias_max

    @property
    def send_quota(self) -> int:
        """How many more QoS 1/2 PUBLISHes may be sent now [MQTT-4.9.0-2]."""
        limit = min(self.client_receive_maximum, self.max_inflight, _MAX_PACKET_ID)
        return max(0, limit - len(self.session.outbound))

    @property
    def keep_alive(self) -> int:
        """The Keep Alive in force: the client's, or the Server Keep Alive we sent."""
        return self._keep_alive

    def keepalive_deadline(self) -> float | None:
        """When the client will have been silent for 1.5 x Keep Alive; None if no limit.

        [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0): past it, close as if
        the network had failed (the will is published).
        """
        if self._keep_alive == 0 or self._last_received is None or self._state is State.CLOSED:
            return None
        return self._last_received + 1.5 * self._keep_alive

    def check_keepalive(self, now: float) -> bool:
        """True, and CLOSED with a 5.0 DISCONNECT 0x8D queued, if the deadline has passed."""
        deadline = self.keepalive_deadline()
        if deadline is None or now <= deadline:
            return False
        self._write_disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)
        self._state = State.CLOSED
        return True

    def events_received(self) -> list[Event]:
        """The events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> bytes:
        """The bytes to write since the last call (empty when there are none)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out = []
        return data

    # --- bytes in -----------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        """Take bytes from the socket. Never raises for the client's mistakes:
        they become a :class:`ProtocolViolation` event and the state CLOSED."""
        if self._state is State.CLOSED:
            return
        self._now = now
        self._decoder.receive_data(data)
        self._read_packets()

    def _read_packets(self) -> None:
        try:
            while self._state is not State.CLOSED:
                if self._state is State.CONNECTING and self._decoder.peek_type() != T.AUTH:
                    return  # held until our CONNACK (5.0 section 3.1.4)
                packet = self._decoder.next_packet()
                if packet is None:
                    return
                self._last_received = self._now
                self._receive(packet)
        except MQTTError as exc:
            self._fail(exc)

    def _receive(self, packet: Packet) -> None:
        ptype = packet.packet_type
        if ptype not in _INBOUND[self._state]:
            if ptype == T.CONNECT:
                raise ProtocolError("second CONNECT", packet_type=ptype)  # [MQTT-3.1.0-2]
            raise ProtocolError(f"{ptype.name} not allowed from a client in state "
                                f"{self._state.value}", packet_type=ptype)
        _HANDLERS[ptype](self, packet)  # may raise: the state changes only after it succeeds
        self._state = _TRANSITIONS.get((self._state, ptype, True), self._state)

    def _on_connect(self, packet: Connect) -> None:
        if packet.version == Version.V311 and not packet.client_id and not packet.clean_start:
            raise ClientIdentifierNotValid("empty client id with clean session 0")  # [MQTT-3.1.3-8]
        # kept for its properties; not the password (a token) nor the will, which
        # the broker takes from the event: an idle connection holds neither
        self.connect = replace(packet, password=None, will=None)
        self._keep_alive = packet.keep_alive
        if packet.version == Version.V5:  # [MQTT-3.1.2-27]: none if it set no maximum
            self._alias_max = min(int(self.outbound_topic_aliases),
                                  packet.properties.topic_alias_maximum or 0)
        self._events.append(packet)

    def _on_publish(self, packet: Publish) -> None:
        packet = self._resolve_alias(packet)
        if packet.properties.subscription_identifiers:
            raise ProtocolError("subscription identifier from a client")  # [MQTT-3.3.4-6]
        if packet.qos > self._maximum_qos:
            raise QoSNotSupported(f"QoS {packet.qos} over maximum")  # [MQTT-3.2.2-11]
        if packet.retain and not self._retain_available:
            raise RetainNotSupported("retain not available")  # [MQTT-3.2.2-14]
        pid = packet.packet_id
        if pid is None:
            self._events.append(packet)
            return
        if packet.qos == 2 and pid in self.session.awaiting_pubrel:
            # [MQTT-4.3.3-10] (3.1.1: [MQTT-4.3.3-2]): acknowledge again, do not
            # deliver a second time.
            self._write(PubRec(pid))
            return
        if pid not in self._inbound_qos1:
            self._count_inbound()
        if packet.qos == 1:
            self._inbound_qos1[pid] = None
        else:
            self.session.awaiting_pubrel.add(pid)
        self._events.append(packet)

    def _count_inbound(self) -> None:
        if self.version != Version.V5:
            return
        in_flight = len(self._inbound_qos1) + len(self.session.awaiting_pubrel)
        if in_flight >= self.receive_maximum:
            raise ReceiveMaximumExceeded("receive maximum exceeded")  # [MQTT-3.3.4-9]

    def _resolve_alias(self, packet: Publish) -> Publish:
        """Replace a 5.0 Topic Alias by its topic (section 3.3.2.3.4)."""
        alias = packet.properties.topic_alias
        if alias is None:
            return packet
        if alias == 0 or alias > self.topic_alias_maximum:
            raise TopicAliasInvalid(f"topic alias {alias}")  # [MQTT-3.3.2-8], [MQTT-3.3.2-9]
        topic = packet.topic
        if topic:
            self._aliases_in[alias] = topic
        else:
            known = self._aliases_in.get(alias)
            if known is None:
                raise ProtocolError(f"unknown topic alias {alias}")  # 5.0 section 3.3.2.3.4
            topic = known
        return replace(packet, topic=topic, properties=replace(packet.properties,
                                                                topic_alias=None))

    def _on_puback(self, packet: PubAck) -> None:
        self._finish(packet.packet_id, FlowState.AWAIT_PUBACK, packet.reason_code)

    def _on_pubrec(self, packet: PubRec) -> None:
        flight = self.session.outbound.get(packet.packet_id)
        if flight is None or flight.flow is FlowState.AWAIT_PUBACK:
            if self.version == Version.V5:
                self._write(PubRel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
            return
        if packet.reason_code >= 0x80:
            self._finish(packet.packet_id, FlowState.AWAIT_PUBREC, packet.reason_code)
            return  # [MQTT-4.4.0-2] a failing PUBREC ends the flow; no PUBREL, no resend
        flight.flow = FlowState.AWAIT_PUBCOMP
        self._write(PubRel(packet.packet_id))  # [MQTT-4.3.3-4] (3.1.1: [MQTT-4.3.3-1])

    def _on_pubrel(self, packet: PubRel) -> None:
        pid = packet.packet_id
        if pid in self.session.awaiting_pubrel:
            self.session.awaiting_pubrel.discard(pid)
            self._write(PubComp(pid))  # [MQTT-4.3.3-11] (3.1.1: [MQTT-4.3.3-2])
        elif self.version == Version.V5:
            self._write(PubComp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND))
        else:
            self._write(PubComp(pid))  # 3.1.1: answer even a PUBREL we no longer know

    def _on_pubcomp(self, packet: PubComp) -> None:
        self._finish(packet.packet_id, FlowState.AWAIT_PUBCOMP, packet.reason_code)

    def _finish(self, packet_id: int, expected: FlowState, reason_code: int) -> None:
        flight = self.session.outbound.get(packet_id)
        if flight is None or flight.flow is not expected:
            return  # an acknowledgement for nothing we sent: ignored
        del self.session.outbound[packet_id]
        self._events.append(MessageAcknowledged(packet_id, reason_code, flight.message))

    def _on_pingreq(self, packet: Packet) -> None:
        self._write(PingResp())  # [MQTT-3.12.4-1]

    def _on_disconnect(self, packet: Disconnect) -> None:
        expiry = packet.properties.session_expiry_interval
        assert self.connect is not None
        if expiry and not self.connect.properties.session_expiry_interval:
            # 5.0 section 3.14.2.2.2: a session that was to end with the
            # connection cannot be made to outlive it at DISCONNECT.
            raise ProtocolError("session expiry set at DISCONNECT after 0 at CONNECT")
        self._events.append(packet)

    def _on_event(self, packet: Packet) -> None:
        self._events.append(packet)  # SUBSCRIBE, UNSUBSCRIBE, AUTH: the broker decides

    # --- errors: the one place they become bytes --------------------------------------

    def _fail(self, exc: MQTTError) -> None:
        """Answer a protocol violation and close.

        Before our CONNACK: a CONNACK with the reason code in 5.0; in 3.1.1
        only the refusals that have a return code (0x01 protocol version,
        0x02 identifier) get one, the rest just close (3.1.1 section 4.8).
        After: a DISCONNECT with the reason code in 5.0 (section 4.13), a
        plain close in 3.1.1.
        """
        level = exc.level if exc.level is not None else self.version
        if self._state in (State.AWAIT_CONNECT, State.CONNECTING):
            if isinstance(exc, UnsupportedProtocolVersion):
                self._out.append(encode(Connack(reason_code=exc.reason_code),
                                        Version.V5 if level == 5 else Version.V311))
            elif level == Version.V5:
                code = exc.reason_code
                if code not in VALID_REASON_CODES[T.CONNACK]:
                    code = ReasonCode.PROTOCOL_ERROR
                self._out.append(encode(Connack(reason_code=code), Version.V5))
            elif isinstance(exc, ClientIdentifierNotValid):
                self._out.append(encode(Connack(reason_code=exc.reason_code), Version.V311))
        elif self._state is State.CONNECTED:
            self._write_disconnect(exc.reason_code)
        self._state = State.CLOSED
        self._events.append(ProtocolViolation(exc))

    def _write_disconnect(self, code: int) -> None:
        if self.version != Version.V5 or self._state is not State.CONNECTED:
            return  # 3.1.1 has no DISCONNECT from the server; nor before CONNACK
        if code not in VALID_REASON_CODES[T.DISCONNECT]:
            code = ReasonCode.PROTOCOL_ERROR
        self._out.append(encode(Disconnect(code), Version.V5))

    # --- packets out ------------------------------------------------------------------

    def attach_session(self, session: SessionState) -> None:
        """Resume ``session`` on this connection; call before sending the CONNACK.

        A CONNACK then redelivers its unacknowledged messages.
        """
        if self._state is not State.CONNECTING:
            raise LocalProtocolError("a session is attached between CONNECT and CONNACK")
        self.session = session

    def detach_session(self) -> SessionState:
        """Give up this connection's session state (a take-over hands it to the
        next connection of the client id); this connection keeps an empty one."""
        session, self.session = self.session, SessionState()
        return session

    def restore_in_flight(self, packet_id: int, message: PublishTemplate, qos: int,
                          retain: bool, subscription_ids: tuple[int, ...] = (), *,
                          released: bool = False) -> bool:
        """Take back an outgoing QoS 1/2 message a stored session had in flight.

        Call between CONNECT and CONNACK: the CONNACK redelivers it with DUP, or
        its PUBREL when ``released`` (its PUBREC had arrived) [MQTT-4.4.0-1].
        (Also taken when the connection closed meanwhile: the broker then keeps
        it with the session, see :attr:`in_flight`.)
        False, and nothing changed, when ``packet_id`` is already in flight
        (the caller sends the message as a new one instead).
        """
        if self._state not in (State.CONNECTING, State.CLOSED):
            raise LocalProtocolError("in-flight state is restored between CONNECT and CONNACK")
        if packet_id in self.session.outbound:
            return False
        flow = (FlowState.AWAIT_PUBCOMP if released else
                FlowState.AWAIT_PUBACK if qos == 1 else FlowState.AWAIT_PUBREC)
        self.session.outbound[packet_id] = InFlight(packet_id, message, qos, retain,
                                                    subscription_ids, flow)
        return True

    def restore_awaiting_pubrel(self, packet_ids: Iterable[int]) -> None:
        """Take back the inbound QoS 2 ids a stored session had PUBRECed but not seen
        released, so a PUBLISH resent with one is not delivered twice [MQTT-4.3.3-10]."""
        if self._state not in (State.CONNECTING, State.CLOSED):
            raise LocalProtocolError("PUBREL state is restored between CONNECT and CONNACK")
        self.session.awaiting_pubrel.update(packet_ids)

    @property
    def in_flight(self) -> tuple[InFlight, ...]:
        """The outgoing QoS 1/2 messages not yet fully acknowledged, in send order."""
        return tuple(self.session.outbound.values())

    @property
    def awaiting_pubrel(self) -> frozenset[int]:
        """The inbound QoS 2 packet ids PUBRECed and not yet released."""
        return frozenset(self.session.awaiting_pubrel)

    def send(self, packet: Packet) -> None:
        """Queue ``packet`` for the client (a PUBLISH goes through :meth:`send_publish`).

        Raises :class:`LocalProtocolError` for a packet not allowed in the
        current state. In CLOSED nothing is written. A successful CONNACK
        releases what the client sent after its CONNECT: call
        :meth:`events_received` again after sending it.
        """
        if isinstance(packet, Publish):
            self.send_publish(packet)
            return
        if self._state is State.CLOSED:
            return
        ptype = packet.packet_type
        if ptype not in _OUTBOUND[self._state]:
            raise LocalProtocolError(f"cannot send {ptype.name} in state {self._state.value}")
        if isinstance(packet, Auth) and self.version != Version.V5:
            raise LocalProtocolError("AUTH exists only in MQTT 5.0")
        if isinstance(packet, Connack):
            self._send_connack(packet)
            return
        if isinstance(packet, Disconnect):
            self._write_disconnect_packet(packet)
            return
        if isinstance(packet, PubAck):
            self._inbound_qos1.pop(packet.packet_id, None)
        elif isinstance(packet, PubRec) and packet.reason_code >= 0x80:
            # [MQTT-4.3.3-9] the id is free: a later PUBLISH with it is a new message
            self.session.awaiting_pubrel.discard(packet.packet_id)
        self._write(packet)

    def _send_connack(self, packet: Connack) -> None:
        assert self.version is not None
        if self.version == Version.V5 and packet.reason_code < 0x80:
            packet = replace(packet, properties=self._announce(packet))
        if packet.reason_code >= 0x80:
            self._write(replace(packet, session_present=False))  # [MQTT-3.2.2-6]
            self._state = State.CLOSED  # [MQTT-3.2.2-7] / 3.1.1 [MQTT-3.2.2-5]
            return
        self._write(packet)
        self._decoder.max_packet_size = self.max_packet_size  # the CONNECT-phase bound ends
        self._state = _TRANSITIONS[(State.CONNECTING, T.CONNACK, False)]
        self._redeliver()
        self._read_packets()  # what the client sent after CONNECT can be read now

    def _announce(self, packet: Connack) -> Properties:
        """Fill in the limits we enforce, and adopt those the broker set itself."""
        props = packet.properties
        if props.maximum_packet_size is None and self.max_packet_size < DEFAULT_MAX_PACKET_SIZE:
            props = replace(props, maximum_packet_size=self.max_packet_size)
        if props.receive_maximum is None and self.receive_maximum < 65535:
            props = replace(props, receive_maximum=self.receive_maximum)
        if props.topic_alias_maximum is None and self.topic_alias_maximum:
            props = replace(props, topic_alias_maximum=self.topic_alias_maximum)
        if props.maximum_packet_size is not None:
            self.max_packet_size = props.maximum_packet_size
        self.receive_maximum = props.receive_maximum or 65535
        self.topic_alias_maximum = props.topic_alias_maximum or _NO_TOPIC_ALIAS_MAXIMUM
        if props.maximum_qos is not None:
            self._maximum_qos = props.maximum_qos
        if props.retain_available is not None:
            self._retain_available = bool(props.retain_available)
        if props.server_keep_alive is not None:
            self._keep_alive = props.server_keep_alive  # [MQTT-3.2.2-21]
        return props

    def _write_disconnect_packet(self, packet: Disconnect) -> None:
        if self.version == Version.V5:
            self._write(packet)
        self._state = State.CLOSED  # 3.1.1: the server just closes the connection

    def _redeliver(self) -> None:
        """Resend unacknowledged PUBLISHes (DUP set) and PUBRELs in order [MQTT-4.4.0-1]."""
        for flight in list(self.session.outbound.values()):
            if flight.flow is FlowState.AWAIT_PUBCOMP:
                self._write(PubRel(flight.packet_id))
                continue
            data = flight.message.render(self._v(), qos=flight.qos, packet_id=flight.packet_id,
                                         retain=flight.retain, dup=True,  # [MQTT-3.3.1-1]
                                         subscription_ids=flight.subscription_ids)
            if self._too_large(len(data)):
                del self.session.outbound[flight.packet_id]  # [MQTT-3.1.2-25]
                continue
            self._out.append(data)

    def send_publish(self, message: PublishTemplate | Publish, *, qos: int | None = None,
                     retain: bool | None = None,
                     subscription_ids: Sequence[int] = ()) -> PublishResult:
        """Deliver one application message; QoS 1/2 get a packet id from us.

        ``message`` is normally the hub's :class:`PublishTemplate` (encoded
        once for all subscribers); a :class:`Publish` is accepted too, its
        QoS, RETAIN and subscription identifiers being the defaults (its
        packet id and DUP are ignored: packet ids are ours to allocate). A
        message over the client's Maximum Packet Size is dropped as if sent
        [MQTT-3.1.2-24], [MQTT-3.1.2-25].
        """
        if isinstance(message, Publish):
            qos = message.qos if qos is None else qos
            retain = message.retain if retain is None else retain
            subscription_ids = subscription_ids or message.properties.subscription_identifiers
            message = PublishTemplate.from_publish(message)
        qos = int(qos or 0)
        retain = bool(retain)
        if self._state is not State.CONNECTED:
            if self._state is State.CLOSED:
                return PublishResult(Outcome.CLOSED)
            raise LocalProtocolError(f"cannot send PUBLISH in state {self._state.value}")
        if qos and self.send_quota <= 0:
            return PublishResult(Outcome.NO_QUOTA)  # [MQTT-4.9.0-2]
        v = self._v()
        sub_ids = tuple(subscription_ids) if v == Version.V5 else ()
        alias, send_topic = self._pick_alias(message.topic)
        if qos and alias is None and not sub_ids:
            return self._send_numbered(message, v, qos, retain)
        if self.client_max_packet_size is not None and self._too_large(message.size(
                v, qos=qos, subscription_ids=sub_ids, topic_alias=alias,
                send_topic=send_topic)):
            return PublishResult(Outcome.TOO_LARGE)
        if alias is not None:
            self._use_alias(message.topic, alias)
        packet_id = None
        if qos:
            packet_id = self._allocate_packet_id()
            flow = FlowState.AWAIT_PUBACK if qos == 1 else FlowState.AWAIT_PUBREC
            self.session.outbound[packet_id] = InFlight(packet_id, message, qos, retain,
                                                        sub_ids, flow)
        self._out.append(message.render(v, qos=qos, packet_id=packet_id, retain=retain,
                                        subscription_ids=sub_ids, topic_alias=alias,
                                        send_topic=send_topic))
        return PublishResult(Outcome.SENT, packet_id)

    def render_qos0(self, message: PublishTemplate, retain: bool) -> bytes:
        """The QoS 0 PUBLISH :meth:`send_publish` would write for ``message``, with its
        Topic Alias picked and recorded, returned instead of queued: the edge's fast
        path for a connected 5.0 client that set no Maximum Packet Size (nothing to
        measure) but allows aliases. Nothing is checked: the caller knows."""
        alias, send_topic = self._pick_alias(message.topic)
        if alias is not None:
            self._use_alias(message.topic, alias)
        return message.render(Version.V5, retain=retain, topic_alias=alias,
                              send_topic=send_topic)

    def _send_numbered(self, message: PublishTemplate, version: Version, qos: int,
                       retain: bool) -> PublishResult:
        """The QoS 1/2 fast path of :meth:`send_publish` (no Topic Alias, no
        Subscription Identifier): the template's cached bytes with the packet id
        between them; the same bytes :meth:`PublishTemplate.render` makes."""
        head, tail = message.numbered(version, qos, retain)
        if self._too_large(len(head) + 2 + len(tail)):
            return PublishResult(Outcome.TOO_LARGE)  # [MQTT-3.1.2-24], [MQTT-3.1.2-25]
        packet_id = self._allocate_packet_id()
        flow = FlowState.AWAIT_PUBACK if qos == 1 else FlowState.AWAIT_PUBREC
        self.session.outbound[packet_id] = InFlight(packet_id, message, qos, retain, (), flow)
        self._out.append(b"".join((head, _PACKET_ID.pack(packet_id), tail)))
        return PublishResult(Outcome.SENT, packet_id)

    def _pick_alias(self, topic: str) -> tuple[int | None, bool]:
        """(alias, send the topic too?) for an outgoing topic (5.0 section 3.3.2.3.4).

        A topic that has an alias is sent as an empty topic and the alias; a new
        one gets the next alias, with its topic (which sets the client's mapping),
        until the aliases run out; then the one least recently sent gives up its
        alias, re-mapped by sending it with the new topic. Aliases are 1 ..
        min(``outbound_topic_aliases``, the client's Topic Alias Maximum): never 0
        [MQTT-3.3.2-8], never over its maximum [MQTT-3.3.2-11], none when it set
        none [MQTT-3.1.2-27]; per connection [MQTT-3.3.2-7].
        """
        aliases = self._aliases_out
        known = aliases.get(topic)
        if known is not None:
            return known, False
        limit = self._alias_max
        if not limit:
            return None, True
        if len(aliases) < limit:
            return len(aliases) + 1, True
        return aliases[next(iter(aliases))], True  # the least recently used one's

    def _use_alias(self, topic: str, alias: int) -> None:
        """Record that ``topic`` went out with ``alias`` (as :meth:`_pick_alias` chose):
        it becomes the most recently used; a re-mapped alias leaves its old topic."""
        aliases = self._aliases_out
        if topic in aliases:
            aliases.move_to_end(topic)
            return
        if len(aliases) >= self._alias_max:
            aliases.popitem(last=False)
        aliases[topic] = alias

    def _allocate_packet_id(self) -> int:
        """The next free id in 1..65535, skipping those in flight [MQTT-2.2.1-3]."""
        outbound = self.session.outbound
        pid = self.session.next_packet_id
        for _ in range(_MAX_PACKET_ID):
            if pid not in outbound:
                self.session.next_packet_id = pid % _MAX_PACKET_ID + 1
                return pid
            pid = pid % _MAX_PACKET_ID + 1
        raise LocalProtocolError("all 65535 packet identifiers are in flight")

    def _v(self) -> Version:
        assert self.version is not None
        return self.version

    def _too_large(self, size: int) -> bool:
        limit = self.client_max_packet_size
        return limit is not None and size > limit

    def _write(self, packet: Packet) -> None:
        """Encode ``packet``, fitting it under the client's Maximum Packet Size.

        Reason String and then User Properties are left out when the packet
        would be too large with them, and always when the client asked for
        no problem information outside PUBLISH, CONNACK and DISCONNECT
        [MQTT-3.1.2-29]; e.g. [MQTT-3.2.2-19], [MQTT-3.2.2-20],
        [MQTT-3.4.2-2], [MQTT-3.4.2-3]. What still does not fit is dropped.
        """
        v = self._v()
        if self._problem_info_off(packet):
            packet = _strip(packet, user_properties=True)
        data = encode(packet, v)
        if self._too_large(len(data)):
            data = encode(_strip(packet, user_properties=False), v)
            if self._too_large(len(data)):
                data = encode(_strip(packet, user_properties=True), v)
                if self._too_large(len(data)):
                    self.dropped_packets += 1
                    return
        self._out.append(data)

    def _problem_info_off(self, packet: Packet) -> bool:
        if self.connect is None or self.connect.properties.request_problem_information != 0:
            return False
        return packet.packet_type not in (T.PUBLISH, T.CONNACK, T.DISCONNECT)


def _strip(packet: Any, *, user_properties: bool) -> Any:
    props = getattr(packet, "properties", None)
    if not props:
        return packet
    props = replace(props, reason_string=None)
    if user_properties:
        props = replace(props, user_properties=())
    return replace(packet, properties=props)


_HANDLERS: dict[int, Callable[[Connection, Any], None]] = {
    T.CONNECT: Connection._on_connect,
    T.PUBLISH: Connection._on_publish,
    T.PUBACK: Connection._on_puback,
    T.PUBREC: Connection._on_pubrec,
    T.PUBREL: Connection._on_pubrel,
    T.PUBCOMP: Connection._on_pubcomp,
    T.SUBSCRIBE: Connection._on_event,
    T.UNSUBSCRIBE: Connection._on_event,
    T.PINGREQ: Connection._on_pingreq,
    T.DISCONNECT: Connection._on_disconnect,
    T.AUTH: Connection._on_event,
}
