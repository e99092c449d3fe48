"""The MQTT edge's transport: the byte pipes (TCP, TLS, a WebSocket at ``/mqtt``)
and :class:`MqttConnection`, the asyncio driver of one client connection.

The driver feeds bytes to the sans-I/O :class:`~tidings.protocol.mqtt.Connection`,
hands its events to the broker one at a time (one worker task only while
there are events), and writes what it returns through a bounded outbound
buffer flushed once per loop pass (:class:`~tidings.plumbing.Outbox`; events
go through a :class:`~tidings.plumbing.Pump`). The broker
talks to a connection only through the public methods here (``send``,
``acknowledge``, ``publish``, ``resume_queue``, ``take_over``, ``unsent``, ...);
nothing outside this module reaches into the driver's or the state machine's
private state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol, cast

from ...errors import TidingsError
from ...plumbing import PACE_CHUNK, Outbox, Pump, WriteGate
from ...protocol.frames import ws_frame
from ...protocol.mqtt import (
    Connack,
    Connection,
    Disconnect,
    FlowState,
    MessageAcknowledged,
    Outcome,
    Packet,
    PublishTemplate,
    ReasonCode,
    State,
    Version,
    Will,
)
from ...store.base import QueuedMessage
from .session import MqttSession, expires_at, props_from_json, props_to_json

if TYPE_CHECKING:
    from .broker import MqttBroker

__all__ = ["Link", "MqttConnection", "serve_websocket"]

log = logging.getLogger("tidings.mqtt")

_PAUSE_EVENTS = 256  # inbound packets waiting for the worker before reading pauses
_MAX_CONNECT_SIZE = 65536  # bytes a packet may have before the client is authenticated


class Link(Protocol):
    """The byte pipe under an MQTT connection (a TCP transport or a WebSocket)."""

    def write(self, chunks: list[bytes]) -> None: ...
    def buffered(self) -> int: ...
    def close(self) -> None: ...
    def half_close(self) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class _TcpLink:
    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def write(self, chunks: list[bytes]) -> None:
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        else:
            self.transport.writelines(chunks)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size()

    def close(self) -> None:
        self.transport.close()

    def half_close(self) -> None:
        """End our side after what is written: a TCP FIN, reading going on.

        TLS cannot half-close, and a close_notify now would not do: the TLS
        layer's shutdown fails on the client's records still arriving and cuts
        the connection, the reason unsent. It keeps reading instead, and sends
        close_notify at :meth:`finish` (a client that read the DISCONNECT has
        usually closed by then [MQTT-3.14.4-2])."""
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def finish(self) -> None:
        """The drain is over: TCP is cut; TLS sends close_notify and closes (its
        wait for the client's bounded by the listener's ssl_shutdown_timeout)."""
        if self.transport.can_write_eof():
            self.transport.abort()
        else:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def pause(self) -> None:
        self.transport.pause_reading()

    def resume(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


class _WsLink:
    """MQTT over WebSocket: each flush is one binary frame [MQTT-6.0.0-1].

    ``conn`` is the WS edge's connection driver (``tidings.edges.ws.WsConnection``).
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def write(self, chunks: list[bytes]) -> None:
        from websockets.protocol import State as WsState

        conn = self.conn
        if conn.protocol.state is not WsState.OPEN or conn.transport is None:
            return
        data = b"".join(chunks)
        if conn.protocol.extensions:
            conn.protocol.send_binary(data)
            conn.send_data()
        else:
            conn.transport.write(ws_frame(data, text=False))

    def buffered(self) -> int:
        t = self.conn.transport
        return int(t.get_write_buffer_size()) if t is not None else 0

    def close(self) -> None:
        self.conn.close(1000, "")

    def half_close(self) -> None:
        """A close frame after the DISCONNECT; the WS edge reads on (discarding)
        until the client's close frame, bounded by its own close timeout."""
        self.conn.close(1000, "")

    def finish(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.conn.transport is not None:
            self.conn.transport.abort()

    def pause(self) -> None:
        self.conn.pause_reading()

    def resume(self) -> None:
        self.conn.resume_reading()


class _MqttOverWs:
    """The WS edge's handler for ``/mqtt``: WebSocket messages in, MQTT bytes out."""

    def __init__(self, broker: MqttBroker, conn: Any) -> None:
        self.mc = MqttConnection(broker, "mqtt-ws")
        self.mc.attach(_WsLink(conn))
        self.conn = conn

    def on_message(self, data: bytes, text: bool) -> None:
        if text:  # [MQTT-6.0.0-1]: MQTT travels in binary frames only
            self.conn.close(1003, "MQTT needs binary frames")
            return
        self.mc.data_received(data)

    def on_pong(self, data: bytes) -> None:
        return None

    def on_close(self) -> None:
        self.mc.connection_lost(None)

    def on_writable(self) -> None:
        """The WebSocket's transport drained: send more of a paced queue."""
        self.mc.resume_writing()


def serve_websocket(broker: MqttBroker, conn: Any) -> _MqttOverWs:
    """The handler for one MQTT connection over an accepted WebSocket (``/mqtt``)."""
    return _MqttOverWs(broker, conn)

_Waiting = deque[tuple[PublishTemplate, int, bool, tuple[int, ...]]]


class MqttConnection(asyncio.Protocol):
    """One client connection: bytes to the state machine, events to the broker."""

    # slotted, and what only some connections need is made on first use: an idle
    # connection should cost little (mqtt idle memory, issue 14)
    __slots__ = ("_aliased", "_closed", "_drain", "_fast", "_ip", "_max_pending", "broker",
                 "edge", "expiry", "gate",
                 "graceful", "link", "outbox", "pending", "proto", "pump", "session",
                 "taken_over", "will")

    def __init__(self, broker: MqttBroker, edge: str = "mqtt") -> None:
        s = broker.settings.mqtt
        self.broker = broker
        self.edge = edge
        self.proto = Connection(max_packet_size=s.max_packet_size,
                                connect_max_packet_size=_MAX_CONNECT_SIZE,
                                receive_maximum=s.receive_maximum,
                                max_inflight=s.receive_maximum,
                                outbound_topic_aliases=s.topic_aliases)
        self.link: Link | None = None
        self.session: MqttSession | None = None
        # QoS 1/2 messages waiting for send quota or for the CONNACK; made when the
        # first one waits and dropped when it empties (an empty deque is 624 bytes)
        self.pending: _Waiting | None = None
        self.gate = WriteGate()  # the TCP transport's flow control, for paced senders
        # this connection is the outbox's sink (the link, once attached)
        self.outbox = Outbox(self, broker.settings.ws.outbound_buffer, broker.flusher,
                             broker.metrics, gate=self.gate,
                             on_flush=self._flushed)
        # events in order, one worker while busy; reading pauses past _PAUSE_EVENTS
        self.pump: Pump[Any] = Pump(self._handle, self, high=_PAUSE_EVENTS,
                                    low=_PAUSE_EVENTS // 2 - 1, done=self._idle,
                                    tasks=broker.workers)
        self._closed = False
        self._drain: asyncio.TimerHandle | None = None  # set once closing (see _shut)
        self.taken_over = False
        self.graceful = False  # DISCONNECT received (no will unless 0x04)
        self.will: Will | None = None
        self._fast = False  # QoS 0 may bypass the state machine (see publish)
        self._aliased = False  # ... and then get a Topic Alias from it
        self._ip: str | None = None  # counted against mqtt.max_connections_per_ip (TCP only)
        self.expiry: float | None = None  # the token's exp, on broker.expiries
        # queued QoS 1/2 messages beyond which the client counts as slow: a resumed
        # queue, one quota in flight, and as much again of live traffic behind them
        s = broker.settings.mqtt
        self._max_pending = 2 * s.max_queued + s.receive_maximum

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        if not self.broker.per_ip.take(ip):
            # mqtt.max_connections_per_ip: closed before a byte is read, so a flood
            # from one address costs a socket for an instant and nothing more
            self._closed = True
            self.broker.metrics.inc("tidings_errors_total", code="too_many_connections")
            cast(asyncio.Transport, transport).abort()
            return
        self._ip = ip
        self.attach(_TcpLink(transport))  # type: ignore[arg-type]  # uvloop's is no subclass

    def attach(self, link: Link) -> None:
        self.link = link
        self.broker.connections.add(self)
        self.broker.metrics.inc("tidings_connections_total", edge=self.edge)
        self.broker.connect_deadlines[self] = time.monotonic() + \
            self.broker.settings.ws.connect_timeout

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.proto.receive_data(data, time.monotonic())
        pump = self.pump
        for event in self.proto.events_received():
            if type(event) is MessageAcknowledged and not len(pump):
                self.send_queued()  # a PUBACK/PUBCOMP only frees quota: no task for it
            else:
                pump.put(event)
        self._collect()
        if pump.busy and self.proto.state is State.CONNECTING:
            # Also while the CONNECT is being answered: what the client sends after
            # it waits for the CONNACK unparsed (5.0 section 3.1.4), so reading on
            # would buffer without bound; TCP holds it instead. The worker resumes.
            pump.pause()
        self._check_closed()

    # the pump's reader: the link

    def pause_reading(self) -> None:
        if self.link is not None:
            self.link.pause()

    def resume_reading(self) -> None:
        if self.link is not None:
            self.link.resume()

    def eof_received(self) -> bool | None:
        return None  # close

    def pause_writing(self) -> None:
        """The TCP transport passed its high-water mark: paced senders wait."""
        self.gate.pause()

    def resume_writing(self) -> None:
        self.gate.resume()
        if self.pending and not self._closed:
            self.send_queued()

    async def drained(self) -> None:
        """Write what is queued; return once the link has room again (or is gone)."""
        await self.outbox.drained()
        if isinstance(self.link, _WsLink):
            await self.link.conn.drained()  # the WebSocket's own flow control

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # wake paced senders: they see the connection closed
        if self._drain is not None:
            self._drain.cancel()
        if self._closed:
            return
        self._closed = True
        if self._ip is not None:
            self.broker.per_ip.give(self._ip)
            self._ip = None
        if self.expiry is not None:
            self.broker.expiries.discard(self, self.expiry)
            self.expiry = None
        self.broker.connections.discard(self)
        self.broker.connect_deadlines.pop(self, None)
        self.outbox.close()
        if not self.pump.busy:
            self.broker.detached(self)
        # else the worker first handles what was received before the close (a
        # PUBLISH sent just before it is still published), then detaches: see _idle

    # -- outbound -----------------------------------------------------------------

    def _collect(self) -> None:
        """Move what the state machine wrote into our buffer (keeps order)."""
        data = self.proto.data_to_send()
        if data:
            self.outbox.append(data)

    def send(self, packet: Packet) -> None:
        """Send a control packet (CONNACK, SUBACK, PUBACK, ...) to the client."""
        self.proto.send(packet)
        self._collect()

    def acknowledge(self, connack: Connack) -> None:
        """Send the CONNACK that accepts the client, then what waited for it.

        From here QoS 0 may bypass the state machine's checks (see
        :meth:`publish`): always in 3.1.1, and in 5.0 when the client set no
        Maximum Packet Size (each message would otherwise be measured against
        it); a 5.0 client that allows Topic Aliases has them picked by the
        state machine's :meth:`~tidings.protocol.mqtt.Connection.render_qos0`.
        """
        self.proto.send(connack)
        self._fast = self.proto.version != Version.V5 or \
            self.proto.client_max_packet_size is None
        self._aliased = self._fast and self.proto.outbound_alias_limit > 0
        self.send_queued()

    def check_keepalive(self, now: float) -> bool:
        """Close (5.0: DISCONNECT 0x8D) when the client was silent past 1.5 x Keep Alive
        [MQTT-3.1.2-24] (3.1.1) / [MQTT-3.1.2-22] (5.0); True if it did."""
        if not self.proto.check_keepalive(now):
            return False
        self._collect()
        self._check_closed()
        return True

    @property
    def closed(self) -> bool:
        """Whether the connection is gone (or refused before it was read)."""
        return self._closed

    async def pace(self) -> bool:
        """In a burst the server chose (retained messages): once a chunk is queued,
        wait until the client has read it, so the outbound bound only ever sees
        live traffic. False when the connection closed meanwhile."""
        if self.outbox.size >= PACE_CHUNK:
            await self.drained()
        return not self._closed

    def take_over(self, prev: MqttConnection, *, resume: bool) -> None:
        """Replace ``prev``, the live connection of the same client id [MQTT-3.1.4-2]:
        close it (5.0: DISCONNECT 0x8E); with ``resume`` take its unacknowledged
        messages and what waited for quota. Call before the CONNACK."""
        prev.taken_over = True
        prev.close(ReasonCode.SESSION_TAKEN_OVER)
        if resume:
            self.proto.attach_session(prev.proto.detach_session())
            if prev.pending:
                self._waiting().extend(prev.pending)
                prev.pending = None

    def resume_queue(self, queue: list[QueuedMessage]) -> None:
        """Take back a stored session's messages; call before the CONNACK.

        In-flight messages are redelivered with DUP at the CONNACK [MQTT-4.4.0-1];
        the others wait for send quota, ahead of what arrived meanwhile. An
        expired message is dropped [MQTT-3.3.2-5]; the others carry what is left
        of their expiry interval [MQTT-3.3.2-6].
        """
        now_ms = int(time.time() * 1000)
        waiting = []
        for m in queue:
            if m.expires is not None and m.expires <= now_ms:
                continue
            props, ids = props_from_json(m.properties)
            if m.expires is not None:
                props = replace(props, message_expiry_interval=-(-(m.expires - now_ms) // 1000))
            template = PublishTemplate(m.topic, m.payload, props)
            if m.packet_id is None or not self.proto.restore_in_flight(
                    m.packet_id, template, m.qos, m.retain, ids, released=m.pubrel):
                waiting.append((template, m.qos, m.retain, ids))
        if waiting:
            self._waiting().extendleft(reversed(waiting))

    def unsent(self) -> list[QueuedMessage]:
        """What a persistent session keeps when this connection ends: in-flight
        first (with their packet ids, to resend with DUP), then what waited for quota."""
        out: list[QueuedMessage] = []
        for flight in self.proto.in_flight:
            out.append(QueuedMessage(flight.message.topic, flight.message.payload, flight.qos,
                                     flight.retain, flight.packet_id,
                                     flight.flow is FlowState.AWAIT_PUBCOMP,
                                     expires=expires_at(flight.message.properties),
                                     properties=props_to_json(flight.message.properties,
                                                              flight.subscription_ids)))
        for template, qos, retain, ids in self.pending or ():
            if qos:
                out.append(QueuedMessage(template.topic, template.payload, qos, retain,
                                         expires=expires_at(template.properties),
                                         properties=props_to_json(template.properties, ids)))
        return out

    def on_overflow(self) -> None:
        """Over ``ws.outbound_buffer`` (the outbox counted it) or too long a queue:
        a slow consumer, aborted."""
        log.warning("slow MQTT consumer %s: over %d queued bytes, disconnecting",
                    self.session.client_id if self.session else "?", self.outbox.limit)
        if self.link is not None:
            self.link.abort()

    # the outbox's sink: the link, once attached and until the connection is lost

    def writable(self) -> bool:
        return self.link is not None and not self._closed

    def buffered(self) -> int:
        return self.link.buffered() if self.link is not None else 0

    def write(self, chunks: list[bytes]) -> None:
        assert self.link is not None
        self.broker.frames_out += len(chunks)
        self.link.write(chunks)

    def _flushed(self) -> None:
        """The link took a flush: send more of the queue."""
        if self.pending:
            self.send_queued()

    def publish(self, template: PublishTemplate, qos: int, retain: bool,
                ids: tuple[int, ...]) -> None:
        """Deliver one message (the hub's hot path for this client)."""
        if qos == 0 and self._fast and not ids:
            if self._aliased:
                self.outbox.append(self.proto.render_qos0(template, retain))
            else:
                self.outbox.append(template.render(self.proto.version or Version.V311,
                                                   retain=retain))
            return
        if self.proto.state is not State.CONNECTED:
            if qos:  # connecting: sent after the CONNACK; closing: the session keeps it
                self._waiting().append((template, qos, retain, ids))  # (see _queue_of)
            return
        if qos and (self.pending or not self._room()):
            # keep order behind the queue; wait while the link is half full, so
            # a burst (a resumed session's queue) goes out as fast as it is read
            pending = self._waiting()
            pending.append((template, qos, retain, ids))
            if len(pending) > self._max_pending:
                # not read (or not acknowledged) for this long: slow, by the
                # outbox's one path (counted once, queued bytes dropped, aborted)
                self.outbox.overflow()
            return
        result = self.proto.send_publish(template, qos=qos, retain=retain, subscription_ids=ids)
        if result.outcome is Outcome.NO_QUOTA:
            self._waiting().append((template, qos, retain, ids))
        elif result.outcome is Outcome.TOO_LARGE:
            self.broker.metrics.inc("tidings_mqtt_dropped_total", reason="too_large")
        self._collect()

    def _room(self) -> bool:
        """Whether the link is less than half full (QoS 1/2 sends wait otherwise)."""
        return self.outbox.room()

    def send_queued(self) -> None:
        """Send queued QoS 1/2 messages while the client's quota and the link allow;
        called again on each acknowledgement, flush and drain of the link."""
        pending = self.pending
        while pending and self.proto.send_quota > 0 and \
                self.proto.state is State.CONNECTED and self._room():
            template, qos, retain, ids = pending.popleft()
            self.proto.send_publish(template, qos=qos, retain=retain, subscription_ids=ids)
            self._collect()  # counted in the outbox, so _room() sees it
        if pending is not None and not pending and self.pending is pending:
            self.pending = None
        self._collect()

    def _waiting(self) -> _Waiting:
        """The queue of :attr:`pending`, made on first use."""
        if self.pending is None:
            self.pending = deque()
        return self.pending

    def close(self, reason: int | None = None) -> None:
        """Close: a 5.0 DISCONNECT with ``reason`` first when one may be sent, then
        as :meth:`_shut` does."""
        if reason is not None and self.proto.state is State.CONNECTED:
            self.send(Disconnect(reason))
        self._shut()

    def _check_closed(self) -> None:
        if self.proto.state is State.CLOSED and not self._closed and self.link is not None:
            self._shut()

    def _shut(self) -> None:
        """Close so the client reads why: write what is queued (the DISCONNECT or
        refusing CONNACK), close our side (TCP: FIN; WebSocket: a close frame;
        TLS: close_notify at the end, see :meth:`_TcpLink.half_close`), then read
        and discard for ``mqtt.close_drain`` seconds before cutting the
        connection. Closing at once while the client still sends makes the
        kernel answer with a reset, and the client loses the reason unread (5.0
        section 4.13.1; nothing follows the DISCONNECT and the connection is
        closed after it [MQTT-3.14.4-1], [MQTT-3.14.4-2]). Idempotent."""
        if self._drain is not None or self._closed:
            return
        self.outbox.close()
        link = self.link
        if link is None:
            return
        drain = self.broker.settings.mqtt.close_drain
        if drain <= 0:
            link.close()
            return
        self._drain = asyncio.get_running_loop().call_later(drain, link.finish)
        link.resume()  # the pump may have paused reading: drain what comes
        link.half_close()

    # -- inbound --------------------------------------------------------------------

    async def _handle(self, event: Any) -> None:
        """One event, in order (the pump's handler)."""
        try:
            await self.broker.handle(self, event)
        except TidingsError as e:
            log.info("MQTT request failed: %s", e.code)
        except Exception:
            log.exception("MQTT event handling failed")
            self.close(ReasonCode.UNSPECIFIED_ERROR)
            self.pump.clear()
            return
        # packets the client sent right after CONNECT were held until our
        # CONNACK (5.0 section 3.1.4): they are events now
        for held in self.proto.events_received():
            self.pump.put(held)
        self._collect()
        self._check_closed()

    def _idle(self) -> None:
        """The worker ended: a connection lost meanwhile detaches its session now."""
        self._collect()
        if self._closed:
            self.broker.detached(self)
