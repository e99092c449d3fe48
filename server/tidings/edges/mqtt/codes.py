"""The one place the MQTT edge turns a :class:`~tidings.errors.TidingsError` into
MQTT reason codes.

Each error class carries its MQTT 5.0 reason code (``mqtt_reason``) and its
3.1.1 CONNACK return code (``mqtt_return``) in ``errors.py``. Packets in the
protocol package hold 5.0 codes whatever the version on the wire, and the
codec writes the 3.1.1 form (CONNACK return code, SUBACK 0x80), so the edge
needs only the 5.0 code for the packet at hand, which this module picks:

* a topic error said of a filter is 0x8F Topic Filter invalid, of a name
  0x90 Topic Name invalid (5.0 section 2.4);
* a code the packet type may not carry (5.0 sections 3.2.2.2, 3.4.2.1,
  3.9.3, 3.11.3, 3.14.2.1) becomes 0x80 Unspecified error.
"""

from __future__ import annotations

from ...errors import TidingsError
from ...protocol.mqtt import PacketType, ReasonCode
from ...protocol.mqtt.reason_codes import VALID_REASON_CODES

__all__ = ["reason_code"]

_FILTER_PACKETS = frozenset({PacketType.SUBACK, PacketType.UNSUBACK})


def reason_code(error: TidingsError, packet_type: PacketType) -> int:
    """The 5.0 reason code that answers ``error`` in a packet of ``packet_type``."""
    code = error.mqtt_reason
    if code == ReasonCode.TOPIC_NAME_INVALID and packet_type in _FILTER_PACKETS:
        code = ReasonCode.TOPIC_FILTER_INVALID
    if code not in VALID_REASON_CODES[packet_type]:
        code = ReasonCode.UNSPECIFIED_ERROR
    return int(code)
