"""Sans-I/O MQTT 3.1.1 and 5.0: packets, codec and the broker-side connection.

Nothing in this package imports asyncio or touches a socket; the edge
(``tidings.edges.mqtt``) feeds it bytes and writes what it returns.

- :mod:`.packets`: one frozen dataclass per control packet, plus
  :class:`Version`, :class:`QoS`, :class:`Subscription`, :class:`Will`.
- :mod:`.properties`: :class:`Properties` (5.0) and its table.
- :mod:`.reason_codes`: :class:`ReasonCode` and the 3.1.1 mappings.
- :mod:`.codec`: :func:`encode`, :func:`decode`, the streaming
  :class:`Decoder`, and :class:`PublishTemplate` (encode once, send to many).
- :mod:`.connection`: :class:`Connection`, the per-connection state machine.
- :mod:`.errors`: the exceptions, each carrying the reason code to answer with.
"""

from .codec import DEFAULT_MAX_PACKET_SIZE, Decoder, PublishTemplate, decode, encode, packet_size
from .connection import (
    Connection,
    Event,
    FlowState,
    InFlight,
    MessageAcknowledged,
    Outcome,
    ProtocolViolation,
    PublishResult,
    SessionState,
    State,
)
from .errors import (
    ClientIdentifierNotValid,
    LocalProtocolError,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
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
    PingReq,
    PingResp,
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
    Version,
    Will,
)
from .properties import NO_PROPERTIES, Properties, PropertyId
from .reason_codes import ConnackReturnCode, ReasonCode

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "NO_PROPERTIES",
    "Auth",
    "ClientIdentifierNotValid",
    "Connack",
    "ConnackReturnCode",
    "Connect",
    "Connection",
    "Decoder",
    "Disconnect",
    "Event",
    "FlowState",
    "InFlight",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "MessageAcknowledged",
    "Outcome",
    "Packet",
    "PacketTooLarge",
    "PacketType",
    "PingReq",
    "PingResp",
    "Properties",
    "PropertyId",
    "ProtocolError",
    "ProtocolViolation",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "PublishResult",
    "PublishTemplate",
    "QoS",
    "QoSNotSupported",
    "ReasonCode",
    "ReceiveMaximumExceeded",
    "RetainHandling",
    "RetainNotSupported",
    "SessionState",
    "State",
    "SubAck",
    "Subscribe",
    "Subscription",
    "TopicAliasInvalid",
    "UnsubAck",
    "Unsubscribe",
    "UnsupportedProtocolVersion",
    "Version",
    "Will",
    "decode",
    "encode",
    "packet_size",
]
