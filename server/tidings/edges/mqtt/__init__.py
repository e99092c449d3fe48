"""The MQTT edge: a 3.1.1 / 5.0 broker in the shared topic space.

Rooms:

* ``transport``: the byte pipes (TCP, TLS, MQTT over WebSocket at ``/mqtt``
  on the WS edge, via a :class:`Link`) and :class:`MqttConnection`, the
  asyncio driver of one connection around the sans-I/O
  :class:`~tidings.protocol.mqtt.Connection` (which parses and runs the
  per-connection protocol: acks, QoS flows, aliases, keepalive deadline).
* ``session``: :class:`MqttSession`, what outlives a connection (client id,
  subscriptions, QoS 2 state) and is the hub's subscriber; shared
  subscription groups; the stored form of both.
* ``broker``: :class:`MqttBroker`, the sessions of this node: listeners,
  CONNECT (authenticate, take over, resume, acknowledge), publish,
  subscribe, wills, expiry, the offline queue; every check a client meets
  is asked of the session layer (:class:`~tidings.sessions.Operations`).
* ``codes``: the one place a :class:`~tidings.errors.TidingsError` becomes
  an MQTT reason code.
* ``sys``: the ``$SYS/broker/...`` statistics.

Delivery: the hub builds one :class:`PublishTemplate` per message. A QoS 0
delivery to a plain 3.1.1/5.0 session appends the template's cached bytes
(the same object for every subscriber) to the session's bounded outbound
buffer; QoS 1/2 go through the state machine, which adds the packet id.
Buffers (:class:`~tidings.plumbing.Outbox`) are flushed once per loop
iteration; received packets go through a :class:`~tidings.plumbing.Pump`.
A session over ``ws.outbound_buffer`` unsent bytes is disconnected and
counted, as on the WS edge.

Persistent sessions (3.1.1 clean session 0; 5.0 session expiry > 0) keep
their subscriptions registered while offline; their QoS 1/2 messages are
appended to the store's queue in batches, and everything is re-read from
the store on reconnect, so sessions survive a restart.
"""

from __future__ import annotations

from .broker import MqttBroker
from .session import MqttSession, mqtt_payload
from .transport import Link, MqttConnection, serve_websocket

__all__ = ["Link", "MqttBroker", "MqttConnection", "MqttSession", "mqtt_payload",
           "serve_websocket"]
