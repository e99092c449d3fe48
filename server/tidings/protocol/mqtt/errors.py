"""The MQTT codec's exceptions, each carrying the 5.0 reason code to answer with.

Hierarchy::

    MQTTError                          the peer broke the protocol; close the connection
      +-- MalformedPacket              0x81 the bytes cannot be parsed as the spec says
      +-- ProtocolError                0x82 parsed, but breaks a rule of the protocol
      |     +-- ReceiveMaximumExceeded 0x93 more unacknowledged QoS>0 PUBLISHes than allowed
      |     +-- TopicAliasInvalid      0x94 alias 0, or over the announced maximum
      |     +-- RetainNotSupported     0x9A RETAIN set though CONNACK said it is not available
      |     +-- QoSNotSupported        0x9B QoS over the announced Maximum QoS
      +-- PacketTooLarge               0x95 over the maximum packet size
      +-- UnsupportedProtocolVersion   0x84 (3.1.1 CONNACK return code 0x01)
      +-- ClientIdentifierNotValid     0x85 (3.1.1 CONNACK return code 0x02)

    LocalProtocolError                 our own side asked for something the protocol
                                       forbids (a bug in the caller, never the peer's fault)

The broker turns an ``MQTTError`` into wire bytes in one place:
:meth:`tidings.protocol.mqtt.connection.Connection.receive_data` does it for
every error the decoder or state machine raises (a CONNACK with the reason
code before the connection is accepted, a DISCONNECT after, in 5.0; just a
close in 3.1.1, except the CONNACK 0x01/0x02 refusals). ``str(error)`` is for
logs only: it is never sent to the peer.
"""

from __future__ import annotations

from typing import ClassVar

from .reason_codes import ReasonCode

__all__ = [
    "ClientIdentifierNotValid",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolError",
    "QoSNotSupported",
    "ReceiveMaximumExceeded",
    "RetainNotSupported",
    "TopicAliasInvalid",
    "UnsupportedProtocolVersion",
]


class MQTTError(Exception):
    """A packet from the peer broke the protocol; the connection must close.

    ``reason_code`` is the 5.0 reason code for the CONNACK or DISCONNECT that
    answers it. ``packet_type`` is the number (1..15) of the packet being read
    when the error was found, None when the fixed header itself was bad.
    """

    reason_code: ClassVar[ReasonCode] = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, message: str, *, packet_type: int | None = None) -> None:
        super().__init__(message)
        self.packet_type = packet_type
        # The protocol level of the CONNECT being read, when the error was
        # found in a CONNECT after its level byte: it decides whether the
        # answer is a 3.1.1 or a 5.0 CONNACK.
        self.level: int | None = None


class MalformedPacket(MQTTError):
    """The packet cannot be parsed according to the specification (5.0 section 4.13)."""

    reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolError(MQTTError):
    """The packet parses but is unexpected or breaks a rule (5.0 section 4.13)."""

    reason_code = ReasonCode.PROTOCOL_ERROR


class ReceiveMaximumExceeded(ProtocolError):
    """More QoS 1/2 PUBLISHes in flight than the Receive Maximum [MQTT-3.3.4-9]."""

    reason_code = ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


class TopicAliasInvalid(ProtocolError):
    """Topic Alias 0 or over the Topic Alias Maximum [MQTT-3.3.2-8], [MQTT-3.3.2-9]."""

    reason_code = ReasonCode.TOPIC_ALIAS_INVALID


class RetainNotSupported(ProtocolError):
    """RETAIN set when the server said Retain Available = 0 [MQTT-3.2.2-14]."""

    reason_code = ReasonCode.RETAIN_NOT_SUPPORTED


class QoSNotSupported(ProtocolError):
    """A PUBLISH above the Maximum QoS the server announced [MQTT-3.2.2-11]."""

    reason_code = ReasonCode.QOS_NOT_SUPPORTED


class PacketTooLarge(MQTTError):
    """The fixed header announces a packet over the maximum packet size.

    Raised as soon as the remaining length is read, before the body is
    buffered (5.0 section 3.2.2.3.6, [MQTT-3.2.2-15]).
    """

    reason_code = ReasonCode.PACKET_TOO_LARGE


class UnsupportedProtocolVersion(MQTTError):
    """CONNECT names a protocol level other than 4 (3.1.1) or 5 (5.0).

    The answer is a CONNACK with 0x84 for a 5.0 client or return code 0x01
    for any other, then close [MQTT-3.1.2-2].
    """

    reason_code = ReasonCode.UNSUPPORTED_PROTOCOL_VERSION

    def __init__(self, message: str, *, level: int | None, packet_type: int | None = 1) -> None:
        super().__init__(message, packet_type=packet_type)
        self.level = level


class ClientIdentifierNotValid(MQTTError):
    """An empty ClientId with Clean Session 0 in 3.1.1 [MQTT-3.1.3-8]."""

    reason_code = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID


class LocalProtocolError(Exception):
    """Our own side asked for something the protocol forbids.

    For example sending a PUBLISH with QoS 1 when no send quota is left, or a
    CONNACK twice. It is a bug in the caller, so it is never mapped to a
    reason code.
    """
