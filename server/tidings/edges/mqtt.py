"""The MQTT edge: a 3.1.1 / 5.0 broker in the shared topic space.

Layers: the sans-I/O :class:`~tidings.protocol.mqtt.Connection` parses and
runs the per-connection protocol (acks, QoS flows, aliases, keepalive
deadline); :class:`MqttSession` is what outlives a connection (client id,
subscriptions, in-flight messages) and is the hub's subscriber;
:class:`MqttBroker` holds the sessions of this node, authenticates, answers
the permission questions, and connects the two to the node (publish, the
inbox's ``users/{uid}/read``). :class:`MqttConnection` is the thin asyncio
driver, over TCP or over a WebSocket (``/mqtt`` on the WS edge) via a
:class:`Link`.

Delivery: the hub builds one :class:`PublishTemplate` per message. A QoS 0
delivery to a plain 3.1.1/5.0 session appends the template's cached bytes
(the same object for every subscriber) to the session's bounded outbound
buffer; QoS 1/2 go through the state machine, which adds the packet id.
Buffers are flushed once per loop iteration (:class:`~tidings.hub.Flusher`).
A session over ``ws.outbound_buffer`` unsent bytes is disconnected and
counted, as on the WS edge.

Persistent sessions (3.1.1 clean session 0; 5.0 session expiry > 0) keep
their subscriptions registered while offline; their QoS 1/2 messages are
appended to the store's queue in batches, and everything is re-read from
the store on reconnect, so sessions survive a restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl as ssl_module
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import orjson

from ..auth import Acl, Principal, TokenAuthority
from ..config import Settings
from ..errors import TidingsError, Unauthorized
from ..hub import Flusher
from ..logs import garbage
from ..metrics import Metrics
from ..node import Node
from ..notify import Notifier
from ..presence import Presence
from ..protocol.frames import Encoding, push_fields, ws_frame
from ..protocol.mqtt import (
    NO_PROPERTIES,
    Connack,
    Connect,
    Connection,
    Disconnect,
    InFlight,
    MessageAcknowledged,
    Outcome,
    PingReq,
    Properties,
    ProtocolViolation,
    PubAck,
    Publish,
    PublishTemplate,
    PubRec,
    ReasonCode,
    State,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Version,
    Will,
)
from ..protocol.mqtt.connection import FlowState
from ..protocol.topics import TopicError, matches, validate_filter, validate_topic
from ..quota import Tally
from ..store.base import QueuedMessage
from ..types import Publication, classify_payload, parse_offset

__all__ = ["Link", "MqttBroker", "MqttConnection", "MqttSession", "mqtt_payload",
           "serve_websocket"]

log = logging.getLogger("tidings.mqtt")

_WIRE = "mqtt"
_VERSION = "tidings-0.1"
_PAUSE_EVENTS = 256  # inbound packets waiting for the worker before reading pauses
_MAX_CONNECT_SIZE = 65536  # bytes a packet may have before the client is authenticated
_PACE_CHUNK = 65536  # bytes of a paced burst (retained messages) queued before waiting


def mqtt_payload(pub: Publication) -> bytes:
    """What an MQTT subscriber receives: the payload, or for a user's stream
    topics the same JSON object a WS client gets as its push."""
    leaf = pub.topic.rpartition("/")[2] if pub.topic.startswith("users/") else ""
    if leaf in ("notifications", "events") and pub.topic.count("/") == 2:
        return orjson.dumps(push_fields(pub, Encoding.JSON))
    return pub.payload


def _template(pub: Publication) -> PublishTemplate:
    props = pub.meta if isinstance(pub.meta, Properties) else NO_PROPERTIES
    return PublishTemplate(pub.topic, mqtt_payload(pub), props)


class Link(Protocol):
    """The byte pipe under an MQTT connection (a TCP transport or a WebSocket)."""

    def write(self, chunks: list[bytes]) -> None: ...
    def buffered(self) -> int: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class _TcpLink:
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


@dataclass(slots=True)
class Sub:
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    subscription_id: int | None = None


@dataclass(eq=False)
class MqttSession:
    """What outlives a connection; the hub's subscriber for this client."""

    broker: MqttBroker
    client_id: str
    principal: Principal
    persistent: bool = False
    expiry: int = 0  # seconds the session outlives its connection
    subs: dict[str, Sub] = field(default_factory=dict)
    conn: MqttConnection | None = None
    wire: str = _WIRE
    disconnected_at: float | None = None
    expiry_timer: asyncio.TimerHandle | None = None
    # inbound QoS 2 ids PUBRECed but not yet released: session state (section 4.1),
    # so a PUBLISH resent after a reconnect is not delivered twice [MQTT-4.3.3-10]
    awaiting_pubrel: set[int] = field(default_factory=set)
    # While a SUBSCRIBE is being answered: the offset last delivered live per
    # topic, so a retained message read from the store just after is not sent
    # again (nor an older one after a newer live one).
    live_seen: dict[str, str] | None = None

    def __hash__(self) -> int:
        return id(self)

    @property
    def user(self) -> str | None:
        return self.principal.user

    def may_see(self, topic: str) -> bool:
        """Hub callback: whether this session may be handed a message on ``topic``."""
        return self.broker.acl.may_see(self.principal, topic)

    def _grant(self, topic: str, origin: str | None) -> tuple[int, bool, tuple[int, ...]] | None:
        """(QoS, retain-as-published, subscription ids) over every matching
        subscription; None when only no-local ones match this client's own message."""
        if len(self.subs) == 1:  # the common case: the hub matched this one filter
            sub = next(iter(self.subs.values()))
            if sub.no_local and origin == self.client_id:
                return None  # [MQTT-3.8.3-3]
            sid = sub.subscription_id
            return sub.qos, sub.retain_as_published, (sid,) if sid is not None else ()
        best, rap, ids, any_match = -1, False, [], False
        for flt, sub in self.subs.items():
            if not matches(flt, topic):
                continue
            if sub.no_local and origin == self.client_id:
                continue  # [MQTT-3.8.3-3]
            any_match = True
            best = max(best, sub.qos)
            rap = rap or sub.retain_as_published
            if sub.subscription_id is not None:
                ids.append(sub.subscription_id)
        if not any_match:
            return None
        return best, rap, tuple(ids)

    def deliver(self, pub: Publication, template: Any) -> None:
        grant = self._grant(pub.topic, pub.origin)
        if grant is None:
            return
        if self.live_seen is not None:
            self.live_seen[pub.topic] = pub.offset
        sub_qos, rap, ids = grant
        qos = min(sub_qos, pub.qos)
        retain = pub.published_retain and rap  # [MQTT-3.3.1-9], [MQTT-3.3.1-12]
        self.send(template, qos, retain, ids)

    def send(self, template: PublishTemplate, qos: int, retain: bool,
             ids: tuple[int, ...] = ()) -> None:
        conn = self.conn
        if conn is not None:
            conn.publish(template, qos, retain, ids)
        elif self.persistent and qos > 0:
            self.broker.enqueue_offline(self.client_id, QueuedMessage(
                template.topic, template.payload, qos, retain,
                expires=_expires(template.properties),
                properties=_props_to_json(template.properties, ids)))
        else:
            self.broker.metrics.inc("tidings_mqtt_dropped_total", reason="offline")

    def state(self) -> dict[str, Any]:
        return {
            "user": self.principal.user,
            "subscribe": list(self.principal.subscribe) if self.principal.subscribe is not None
            else None,
            "publish": list(self.principal.publish) if self.principal.publish is not None
            else None,
            "expiry": self.expiry,
            "disconnected_at": self.disconnected_at,
            "subs": {f: [s.qos, s.no_local, s.retain_as_published, s.subscription_id]
                     for f, s in self.subs.items()},
            "awaiting_pubrel": sorted(self.awaiting_pubrel),
        }


def _expires(props: Properties) -> int | None:
    """When a message with 5.0 Message Expiry Interval runs out (ms since the epoch)."""
    interval = props.message_expiry_interval
    return None if interval is None else int(time.time() * 1000) + interval * 1000


def _props_to_json(props: Properties, ids: tuple[int, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if props.content_type is not None:
        out["content_type"] = props.content_type
    if props.payload_format_indicator is not None:
        out["payload_format_indicator"] = props.payload_format_indicator
    if props.response_topic is not None:
        out["response_topic"] = props.response_topic
    if props.correlation_data is not None:
        out["correlation_data"] = props.correlation_data.hex()
    if props.user_properties:
        out["user_properties"] = [list(p) for p in props.user_properties]
    if ids:
        out["subscription_ids"] = list(ids)
    return out


def _props_from_json(d: dict[str, Any]) -> tuple[Properties, tuple[int, ...]]:
    props = Properties(
        content_type=d.get("content_type"),
        payload_format_indicator=d.get("payload_format_indicator"),
        response_topic=d.get("response_topic"),
        correlation_data=bytes.fromhex(d["correlation_data"]) if "correlation_data" in d
        else None,
        user_properties=tuple((str(k), str(v)) for k, v in d.get("user_properties", ())),
    )
    return props, tuple(d.get("subscription_ids", ()))


class _ShareGroup:
    """``$share/{group}/{filter}``: each message goes to one member (5.0 section 4.8.2),
    round robin, preferring connected members."""

    wire = _WIRE

    def __init__(self, name: str, flt: str) -> None:
        self.name = name
        self.filter = flt
        self.members: dict[MqttSession, Sub] = {}
        self._next = 0

    def __hash__(self) -> int:
        return id(self)

    def may_see(self, topic: str) -> bool:
        """Whether any member may see ``topic``; :meth:`deliver` picks among those."""
        return any(m.may_see(topic) for m in self.members)

    def deliver(self, pub: Publication, template: Any) -> None:
        allowed = [m for m in self.members if m.may_see(pub.topic)]
        members = [m for m in allowed if m.conn is not None] or [
            m for m in allowed if m.persistent]
        if not members:
            return
        self._next = (self._next + 1) % len(members)
        member = members[self._next]
        sub = self.members[member]
        ids = (sub.subscription_id,) if sub.subscription_id is not None else ()
        member.send(template, min(sub.qos, pub.qos),
                    pub.published_retain and sub.retain_as_published, ids)


class MqttConnection(asyncio.Protocol):
    """One client connection: bytes to the state machine, events to the broker."""

    def __init__(self, broker: MqttBroker, edge: str = "mqtt") -> None:
        s = broker.settings.mqtt
        self.broker = broker
        self.edge = edge
        self.proto = Connection(max_packet_size=s.max_packet_size,
                                connect_max_packet_size=_MAX_CONNECT_SIZE,
                                receive_maximum=s.receive_maximum,
                                max_inflight=s.receive_maximum)
        self.link: Link | None = None
        self.session: MqttSession | None = None
        self.pending: deque[tuple[PublishTemplate, int, bool, tuple[int, ...]]] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._dirty = False
        self._events: deque[Any] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        self.taken_over = False
        self.graceful = False  # DISCONNECT received (no will unless 0x04)
        self.will: Will | None = None
        self._fast = False  # QoS 0 may bypass the state machine (see publish)
        self._limit = broker.settings.ws.outbound_buffer
        self._ip: str | None = None  # counted against mqtt.max_connections_per_ip (TCP only)
        self.expiry: asyncio.TimerHandle | None = None  # the token's end (see MqttBroker)
        self._gate: asyncio.Future[None] | None = None  # set while the TCP transport is full
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
        for event in self.proto.events_received():
            if type(event) is MessageAcknowledged and not self._events:
                self._drain_pending()  # a PUBACK/PUBCOMP only frees quota: no task for it
            else:
                self._events.append(event)
        self._pump()
        if self._events and (self._worker is None or self._worker.done()):
            self._worker = asyncio.get_running_loop().create_task(self._work())
        if not self._paused and self.link is not None and (
                len(self._events) > _PAUSE_EVENTS or self.proto.state is State.CONNECTING):
            # Also while the CONNECT is being answered: what the client sends after
            # it waits for the CONNACK unparsed (5.0 section 3.1.4), so reading on
            # would buffer without bound; TCP holds it instead. The worker resumes.
            self._paused = True
            self.link.pause()
        self._check_closed()

    def eof_received(self) -> bool | None:
        return None  # close

    def pause_writing(self) -> None:
        """The TCP transport passed its high-water mark: paced senders wait."""
        if self._gate is None:
            self._gate = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)
        if self.pending and not self._closed:
            self._drain_pending()

    async def drained(self) -> None:
        """Write what is queued; return once the link has room again (or is gone)."""
        if self._dirty:
            self.flush()
        if isinstance(self.link, _WsLink):
            await self.link.conn.drained()
        elif self._gate is not None:
            await asyncio.shield(self._gate)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # wake paced senders: they see the connection closed
        if self._closed:
            return
        self._closed = True
        if self._ip is not None:
            self.broker.per_ip.give(self._ip)
            self._ip = None
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.broker.connections.discard(self)
        self.broker.connect_deadlines.pop(self, None)
        if self._worker is None or self._worker.done():
            self.broker.detached(self)
        # else the worker first handles what was received before the close (a
        # PUBLISH sent just before it is still published), then detaches: see _work

    # -- outbound -----------------------------------------------------------------

    def _pump(self) -> None:
        """Move what the state machine wrote into our buffer (keeps order)."""
        data = self.proto.data_to_send()
        if data:
            self._append(data)

    def _append(self, data: bytes) -> None:
        if self._closed or self.link is None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self._limit:
            self._overflow()
            return
        if not self._dirty:
            self._dirty = True
            self.broker.flusher.mark(self)

    def _overflow(self) -> None:
        assert self.link is not None
        self.broker.metrics.inc("tidings_slow_consumers_total")
        log.warning("slow MQTT consumer %s: over %d queued bytes, disconnecting",
                    self.session.client_id if self.session else "?", self._limit)
        self._out = []
        self._out_size = 0
        self.link.abort()

    def flush(self) -> None:
        """One write per loop pass; the transport's backlog joins the bound here
        (once per pass, not per message)."""
        self._dirty = False
        chunks, size = self._out, self._out_size
        self._out = []
        self._out_size = 0
        if chunks and self.link is not None and not self._closed:
            if size + self.link.buffered() > self._limit:
                self._overflow()
                return
            self.broker.frames_out += len(chunks)
            self.link.write(chunks)
        if self.pending:
            self._drain_pending()  # the link took what it had: send more of the queue

    def publish(self, template: PublishTemplate, qos: int, retain: bool,
                ids: tuple[int, ...]) -> None:
        """Deliver one message (the hub's hot path for this client)."""
        if qos == 0 and self._fast and not ids:
            self._append(template.render(self.proto.version or Version.V311, retain=retain))
            return
        if self.proto.state is not State.CONNECTED:
            if qos:  # connecting: sent after the CONNACK; closing: the session keeps it
                self.pending.append((template, qos, retain, ids))  # (see _queue_of)
            return
        if qos and (self.pending or not self._room()):
            # keep order behind the queue; wait while the link is half full, so
            # a burst (a resumed session's queue) goes out as fast as it is read
            self.pending.append((template, qos, retain, ids))
            if len(self.pending) > self._max_pending:
                self._overflow()  # not read (or not acknowledged) for this long: slow
            return
        result = self.proto.send_publish(template, qos=qos, retain=retain, subscription_ids=ids)
        if result.outcome is Outcome.NO_QUOTA:
            self.pending.append((template, qos, retain, ids))
        elif result.outcome is Outcome.TOO_LARGE:
            self.broker.metrics.inc("tidings_mqtt_dropped_total", reason="too_large")
        self._pump()

    def _room(self) -> bool:
        """Whether the link is less than half full (QoS 1/2 sends wait otherwise)."""
        buffered = self.link.buffered() if self.link is not None else 0
        return self._out_size + buffered < self._limit // 2

    def _drain_pending(self) -> None:
        """Send queued QoS 1/2 messages while the client's quota and the link allow;
        called again on each acknowledgement, flush and drain of the link."""
        while self.pending and self.proto.send_quota > 0 and \
                self.proto.state is State.CONNECTED and self._room():
            template, qos, retain, ids = self.pending.popleft()
            self.proto.send_publish(template, qos=qos, retain=retain, subscription_ids=ids)
            self._pump()  # counted in _out_size, so _room() sees it
        self._pump()

    def close(self, reason: int | None = None) -> None:
        """Close now: a 5.0 DISCONNECT with ``reason`` first when one may be sent."""
        if reason is not None and self.proto.state is State.CONNECTED:
            self.proto.send(Disconnect(reason))
            self._pump()
        if self._dirty:
            self.flush()
        if self.link is not None:
            self.link.close()

    def _check_closed(self) -> None:
        if self.proto.state is State.CLOSED and not self._closed and self.link is not None:
            if self._dirty:
                self.flush()
            self.link.close()

    # -- inbound --------------------------------------------------------------------

    async def _work(self) -> None:
        """Handle queued events in order; one task per busy connection, none when idle."""
        try:
            while self._events:
                event = self._events.popleft()
                try:
                    await self.broker.handle(self, event)
                except TidingsError as e:
                    log.info("MQTT request failed: %s", e.code)
                except Exception:
                    log.exception("MQTT event handling failed")
                    self.close(ReasonCode.UNSPECIFIED_ERROR)
                    return
                # packets the client sent right after CONNECT were held until our
                # CONNACK (5.0 section 3.1.4): they are events now
                self._events.extend(self.proto.events_received())
                self._pump()
                self._check_closed()
                if self._paused and len(self._events) < _PAUSE_EVENTS // 2 and self.link:
                    self._paused = False
                    self.link.resume()
        finally:
            self._pump()
            if self._closed:
                self.broker.detached(self)


class MqttBroker:
    """The MQTT sessions of this node and the rules between them and the node."""

    def __init__(self, settings: Settings, node: Node, tokens: TokenAuthority, acl: Acl,
                 notifier: Notifier, presence: Presence, metrics: Metrics) -> None:
        self.settings = settings
        self.node = node
        self.tokens = tokens
        self.acl = acl
        self.notifier = notifier
        self.presence = presence
        self.metrics = metrics
        self.flusher = Flusher()
        self.sessions: dict[str, MqttSession] = {}
        self.groups: dict[tuple[str, str], _ShareGroup] = {}
        self.connections: set[MqttConnection] = set()
        self.frames_out = 0  # packets written to clients (a plain int: hot path)
        self.connect_deadlines: dict[MqttConnection, float] = {}
        self.per_ip: Tally[str] = Tally(settings.mqtt.max_connections_per_ip)
        # user -> client ids of its persistent sessions here (mqtt.max_sessions_per_user)
        self._kept: dict[str, set[str]] = {}
        self._servers: list[asyncio.Server] = []
        self._offline: list[tuple[str, QueuedMessage]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._sys: asyncio.Task[None] | None = None
        self._will_timers: dict[str, asyncio.TimerHandle] = {}
        self.started = time.time()
        node.hub.register_wire(_WIRE, _template)
        metrics.gauge("tidings_mqtt_connections", "open MQTT connections",
                      lambda: float(len(self.connections)))
        metrics.describe("tidings_mqtt_dropped_total", "MQTT messages not delivered, by reason")

    # -- lifecycle --------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [int(s.sockets[0].getsockname()[1]) for s in self._servers]

    async def start(self) -> None:
        s = self.settings.mqtt
        await self._restore()
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(
            lambda: MqttConnection(self), s.host, s.port, reuse_address=True,
            reuse_port=self.settings.node.reuse_port or None))
        if s.tls_cert:
            ctx = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
            self._servers.append(await loop.create_server(
                lambda: MqttConnection(self, "mqtts"), s.host, s.tls_port, ssl=ctx,
                reuse_address=True, reuse_port=self.settings.node.reuse_port or None))
        self._ticker = loop.create_task(self._tick())
        if s.sys_interval:
            self._sys = loop.create_task(self._sys_loop(s.sys_interval))

    async def shutdown(self, timeout: float) -> None:
        for server in self._servers:
            server.close()
        for task in (self._ticker, self._sys):
            if task is not None:
                task.cancel()
        closing = list(self.connections)
        for conn in closing:
            conn.close(ReasonCode.SERVER_SHUTTING_DOWN)
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        workers = [c._worker for c in closing if c._worker is not None and not c._worker.done()]
        if workers:  # they detach their sessions (and save them) when done
            await asyncio.wait(workers, timeout=max(0.0, deadline - time.monotonic()))
        for conn in list(self.connections):
            if conn.link is not None:
                conn.link.abort()
        for timer in self._will_timers.values():
            timer.cancel()
        await self._flush_offline()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restore(self) -> None:
        """Re-register the stored persistent sessions (after a restart)."""
        now = time.time()
        for client_id, state in await self.node.store.mqtt_sessions():
            gone = state.get("disconnected_at") or now
            if gone + state.get("expiry", 0) <= now:
                await self.node.store.mqtt_delete(client_id)
                continue
            session = self._session_from_state(client_id, state)
            session.disconnected_at = gone
            self.sessions[client_id] = session
            self._keep(session, True)
            self._hold_subs(session)
            for flt, sub in session.subs.items():
                await self._register(session, flt, sub)
            self._schedule_expiry(session)

    def _session_from_state(self, client_id: str, state: dict[str, Any]) -> MqttSession:
        principal = Principal(state.get("user"),
                              tuple(state["subscribe"]) if state.get("subscribe") else None,
                              tuple(state["publish"]) if state.get("publish") else None)
        session = MqttSession(self, client_id, principal, persistent=True,
                              expiry=int(state.get("expiry", 0)))
        for flt, (qos, nl, rap, sid) in state.get("subs", {}).items():
            session.subs[flt] = Sub(qos, nl, rap, sid)
        session.awaiting_pubrel = set(state.get("awaiting_pubrel", ()))
        return session

    async def _tick(self) -> None:
        """Once a second: keepalive deadlines, connect timeouts, the offline queue."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.proto.check_keepalive(now):
                    self.metrics.inc("tidings_errors_total", code="keepalive_timeout")
                    conn._pump()
                    conn._check_closed()
            for conn, deadline in list(self.connect_deadlines.items()):
                if now > deadline and conn.proto.state is not State.CONNECTED:
                    self.connect_deadlines.pop(conn, None)
                    if conn.link is not None:
                        conn.link.abort()  # no CONNECT in time [MQTT-3.1.4-x]: just close

    async def _sys_loop(self, interval: float) -> None:
        """``$SYS/broker/...`` statistics, retained, as Mosquitto publishes them."""
        while True:
            stats = {
                "version": _VERSION,
                "uptime": f"{int(time.time() - self.started)} seconds",
                "clients/connected": len(self.connections),
                "clients/total": len(self.sessions),
                "messages/received": self.metrics.get("tidings_messages_in_total"),
                "messages/sent": self.frames_out,
                "subscriptions/count": len(self.node.hub),
            }
            for key, value in stats.items():
                try:
                    await self.node.publish(f"$SYS/broker/{key}", str(value).encode(),
                                            classify_payload(str(value).encode()),
                                            retain=True, qos=0)
                except TidingsError:
                    pass
            await asyncio.sleep(interval)

    # -- offline queue ------------------------------------------------------------------

    def enqueue_offline(self, client_id: str, message: QueuedMessage) -> None:
        if not self._offline:
            self.spawn(self._flush_offline_soon())
        self._offline.append((client_id, message))

    async def _flush_offline_soon(self) -> None:
        await asyncio.sleep(0)
        await self._flush_offline()

    async def _flush_offline(self) -> None:
        batch, self._offline = self._offline, []
        if not batch:
            return
        try:
            dropped = await self.node.store.mqtt_enqueue(batch, self.settings.mqtt.max_queued)
        except TidingsError:
            dropped = len(batch)
        if dropped:
            self.metrics.inc("tidings_mqtt_dropped_total", dropped, reason="queue_full")

    # -- events ---------------------------------------------------------------------------

    async def handle(self, conn: MqttConnection, event: Any) -> None:
        if isinstance(event, Connect):
            await self._connect(conn, event)
        elif isinstance(event, Publish):
            await self._publish(conn, event)
        elif isinstance(event, Subscribe):
            await self._subscribe(conn, event)
        elif isinstance(event, Unsubscribe):
            await self._unsubscribe(conn, event)
        elif isinstance(event, MessageAcknowledged):
            conn._drain_pending()
        elif isinstance(event, Disconnect):
            self._disconnect(conn, event)
        elif isinstance(event, ProtocolViolation):
            self.metrics.inc("tidings_errors_total", code="mqtt_protocol")
            garbage.note("MQTT packet", conn.session.client_id if conn.session else "a client",
                         str(event.error))  # rate-limited: see logs.py
        elif isinstance(event, PingReq):
            pass

    def _refuse(self, conn: MqttConnection, v5: int) -> None:
        self.metrics.inc("tidings_errors_total", code=f"mqtt_connack_{v5:#x}")
        conn.proto.send(Connack(reason_code=v5))
        conn._pump()

    async def _connect(self, conn: MqttConnection, packet: Connect) -> None:
        s = self.settings
        self.connect_deadlines.pop(conn, None)
        v5 = packet.version == Version.V5
        # Authenticate: the password is a Tidings token (the username is informational).
        if packet.password is None:
            if not s.auth.allow_anonymous:
                self._refuse(conn, ReasonCode.NOT_AUTHORIZED if packet.username is None
                             else ReasonCode.BAD_USER_NAME_OR_PASSWORD)
                return
            principal = Principal(None)
        else:
            try:
                principal = self.tokens.verify(packet.password.decode("utf-8", "replace"))
            except Unauthorized:
                self._refuse(conn, ReasonCode.BAD_USER_NAME_OR_PASSWORD)
                return
        client_id = packet.client_id
        assigned = None
        if not client_id:
            client_id = assigned = "auto-" + secrets.token_hex(8)
        if len(client_id) > 256:
            self._refuse(conn, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)
            return
        old = self.sessions.get(client_id)
        if old is not None and old.principal.user != principal.user:
            # A token cannot take over another user's session.
            self._refuse(conn, ReasonCode.NOT_AUTHORIZED)
            return
        stored = None
        if old is None:  # kept by another node (a shared store) or not kept at all
            stored = await self.node.store.mqtt_session(client_id)
            if stored is not None and stored[0].get("user") != principal.user:
                self._refuse(conn, ReasonCode.NOT_AUTHORIZED)  # nor resume, nor wipe it
                return
        # Session expiry: 3.1.1 clean session 0 lives on (bounded by the setting).
        if v5:
            expiry = packet.properties.session_expiry_interval or 0
        else:
            expiry = 0 if packet.clean_start else s.mqtt.max_session_expiry
        expiry = min(expiry, s.mqtt.max_session_expiry)
        if expiry > 0 and principal.user is not None:
            kept = self._kept.get(principal.user, set())
            if client_id not in kept and len(kept) >= s.mqtt.max_sessions_per_user:
                # mqtt.max_sessions_per_user: each kept session may queue max_queued
                # messages; 0x97 "an implementation or administrative imposed limit
                # has been exceeded" (5.0 section 3.2.2.2; 3.1.1: 0x03)
                self._refuse(conn, ReasonCode.QUOTA_EXCEEDED)
                return
        # Take over a live connection of the same client id [MQTT-3.1.4-2].
        if old is not None and old.conn is not None:
            prev = old.conn
            prev.taken_over = True
            old.conn = None
            prev.close(ReasonCode.SESSION_TAKEN_OVER)
            if not packet.clean_start:
                conn.proto.attach_session(prev.proto.session)
                conn.pending.extend(prev.pending)
            self.metrics.inc("tidings_mqtt_takeovers_total")
        timer = self._will_timers.pop(client_id, None)
        if timer is not None:
            timer.cancel()  # the client is back before its will delay ran out
        session_present = False
        if packet.clean_start or old is None:
            if old is not None:
                await self._end_session(old)
            session = MqttSession(self, client_id, principal)
            if not packet.clean_start and stored is not None:
                # a session kept by another node or before a restart
                session = self._session_from_state(client_id, stored[0])
                session.principal = principal  # the grants of the token presented now
                session_present = True
                session.conn = conn  # what arrives from now on waits in conn.pending
                await self._resume_queue(conn, stored[1])
                self._hold_subs(session)
                for flt, sub in session.subs.items():
                    await self._register(session, flt, sub)
        else:
            session = old
            session.principal = principal
            session_present = True
            if session.expiry_timer is not None:
                session.expiry_timer.cancel()
                session.expiry_timer = None
            # From now on new messages wait in conn.pending (behind the stored queue),
            # not in the store's queue, which is read once here and then emptied; what
            # was queued but not yet written goes to the store before that read.
            session.conn = conn
            await self._flush_offline()
            stored = await self.node.store.mqtt_session(client_id)
            if stored is not None:
                await self._resume_queue(conn, stored[1])
        session.expiry = expiry
        session.disconnected_at = None
        session.conn = conn
        conn.session = session
        conn.will = packet.will
        self.sessions[client_id] = session
        self._keep(session, expiry > 0)
        self._end_at_token_expiry(conn, principal)
        if session.persistent:
            await self.node.store.mqtt_save(client_id, session.state(), [])
        else:
            await self.node.store.mqtt_delete(client_id)
        props = NO_PROPERTIES
        if v5:
            keep = packet.keep_alive
            server_keep = None
            if s.mqtt.max_keepalive and (keep == 0 or keep > s.mqtt.max_keepalive):
                server_keep = s.mqtt.max_keepalive
            props = Properties(
                assigned_client_identifier=assigned,
                server_keep_alive=server_keep,
                maximum_qos=None,
                retain_available=None,
                wildcard_subscription_available=1,
                subscription_identifier_available=1,
                shared_subscription_available=1,
            )
        if session_present:
            conn.proto.session.awaiting_pubrel |= session.awaiting_pubrel
        conn.proto.send(Connack(session_present=session_present, properties=props))
        conn._fast = not v5 or conn.proto.client_max_packet_size is None
        conn._drain_pending()
        if principal.user is not None:
            self.presence.online(principal.user, conn, client_id, "mqtt")
        conn._pump()

    async def _resume_queue(self, conn: MqttConnection, queue: list[QueuedMessage]) -> None:
        """Messages kept in the store: in-flight ones are redelivered with DUP at the
        CONNACK [MQTT-4.4.0-1]; the others wait for send quota."""
        now_ms = int(time.time() * 1000)
        state = conn.proto.session
        waiting = []
        for m in queue:
            if m.expires is not None and m.expires <= now_ms:
                continue  # [MQTT-3.3.2-5]
            props, ids = _props_from_json(m.properties)
            if m.expires is not None:  # what is left of it [MQTT-3.3.2-6]
                props = replace(props, message_expiry_interval=-(-(m.expires - now_ms) // 1000))
            template = PublishTemplate(m.topic, m.payload, props)
            if m.packet_id is not None and m.packet_id not in state.outbound:
                flow = (FlowState.AWAIT_PUBCOMP if m.pubrel else
                        FlowState.AWAIT_PUBACK if m.qos == 1 else FlowState.AWAIT_PUBREC)
                state.outbound[m.packet_id] = InFlight(m.packet_id, template, m.qos, m.retain,
                                                       ids, flow)
            else:
                waiting.append((template, m.qos, m.retain, ids))
        conn.pending.extendleft(reversed(waiting))  # older than what arrived meanwhile

    def _disconnect(self, conn: MqttConnection, packet: Disconnect) -> None:
        conn.graceful = packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL
        session = conn.session
        expiry = packet.properties.session_expiry_interval
        if session is not None and expiry is not None:
            session.expiry = min(expiry, self.settings.mqtt.max_session_expiry)
            self._keep(session, session.expiry > 0)

    def detached(self, conn: MqttConnection) -> None:
        """The connection is gone: will, presence, and keep or end the session."""
        session = conn.session
        if session is None:
            return
        if session.user is not None:
            self.presence.offline(session.user, conn)  # taken over too: this connection left
        if conn.taken_over:
            return
        if not conn.graceful and conn.will is not None:
            self._schedule_will(session, conn.will)
        session.conn = None
        if session.persistent:
            session.disconnected_at = time.time()
            session.awaiting_pubrel = set(conn.proto.session.awaiting_pubrel)
            queue = _queue_of(conn)
            self.spawn(self.node.store.mqtt_save(session.client_id, session.state(), queue))
            self._schedule_expiry(session)
        else:
            self.spawn(self._end_session(session))

    def _keep(self, session: MqttSession, persistent: bool) -> None:
        """Set whether ``session`` outlives its connection, and count it per user."""
        session.persistent = persistent
        user = session.user
        if user is None:
            return
        kept = self._kept.setdefault(user, set())
        if persistent:
            kept.add(session.client_id)
        else:
            kept.discard(session.client_id)
        if not kept:
            del self._kept[user]

    def _end_at_token_expiry(self, conn: MqttConnection, principal: Principal) -> None:
        """Close the connection when its token runs out, as the WS edge does (4001).

        5.0: DISCONNECT 0xA0 Maximum connect time ("the maximum connection time
        authorized for this connection has been exceeded", section 3.14.2.1);
        3.1.1 has no server DISCONNECT: the connection is closed. The session
        itself lives on as any other; the client needs a new token to resume it.
        """
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
        if principal.expires is None:
            return
        delay = max(0.0, principal.expires - time.time())

        def expired() -> None:
            conn.expiry = None
            self.metrics.inc("tidings_errors_total", code="token_expired")
            conn.close(ReasonCode.MAXIMUM_CONNECT_TIME)

        conn.expiry = asyncio.get_running_loop().call_later(delay, expired)

    def _schedule_will(self, session: MqttSession, will: Will) -> None:
        delay = will.properties.will_delay_interval or 0
        delay = min(delay, session.expiry) if session.persistent else 0
        if delay <= 0:
            self.spawn(self._publish_will(session, will))
            return
        self._will_timers[session.client_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self.spawn(self._publish_will(session, will)))

    async def _publish_will(self, session: MqttSession, will: Will) -> None:
        self._will_timers.pop(session.client_id, None)
        if not self.acl.can_publish(session.principal, will.topic):
            return
        props = will.properties
        meta = replace(props, will_delay_interval=None) if props else None
        try:
            await self.node.publish(will.topic, will.payload, classify_payload(will.payload),
                                    retain=will.retain, qos=int(will.qos),
                                    origin=session.client_id, meta=meta)
            self.metrics.inc("tidings_mqtt_wills_total")
        except TidingsError:
            log.warning("could not publish a will (store unavailable)")

    def _schedule_expiry(self, session: MqttSession) -> None:
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        gone = session.disconnected_at or time.time()
        delay = max(0.0, gone + session.expiry - time.time())
        session.expiry_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self.spawn(self._expire(session)))

    async def _expire(self, session: MqttSession) -> None:
        if session.conn is None and self.sessions.get(session.client_id) is session:
            await self._end_session(session)

    async def _end_session(self, session: MqttSession) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self._keep(session, False)
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        if session.user is not None and session.subs:
            self.node.user_subscriptions.give(session.user, len(session.subs))
        for flt in list(session.subs):
            await self._unregister(session, flt)
        session.subs.clear()
        if session.persistent or session.conn is None:
            await self.node.store.mqtt_delete(session.client_id)

    # -- publish --------------------------------------------------------------------------

    async def _publish(self, conn: MqttConnection, packet: Publish) -> None:
        session = conn.session
        assert session is not None
        v5 = conn.proto.version == Version.V5
        t = self.settings.topics
        if len(packet.payload) > self.settings.limits.max_message_size:
            # Within the packet size (which leaves room for the topic and
            # properties) but over the data limit: the same refusal as a packet
            # over Maximum Packet Size [MQTT-3.2.2-15]: DISCONNECT 0x95 in 5.0 (4.13);
            # 3.1.1 has no way to say it and closes.
            self.metrics.inc("tidings_errors_total", code="too_large")
            conn.close(ReasonCode.PACKET_TOO_LARGE if v5 else None)
            return
        code = ReasonCode.SUCCESS
        try:
            topic = validate_topic(packet.topic, max_length=t.max_length, max_depth=t.max_depth)
        except TopicError:
            topic = ""
            code = ReasonCode.TOPIC_NAME_INVALID
        if code == ReasonCode.SUCCESS and not self.acl.can_publish(session.principal, topic):
            code = ReasonCode.NOT_AUTHORIZED
            self.metrics.inc("tidings_errors_total", code="forbidden")
        if code == ReasonCode.SUCCESS:
            try:
                await self._accept(session, topic, packet)
            except TidingsError:
                code = ReasonCode.SERVER_UNAVAILABLE if v5 else ReasonCode.SUCCESS
                if not v5:
                    conn.close()  # 3.1.1 has no way to say it: close, the client retries
                    return
        if packet.qos == 1:
            conn.proto.send(PubAck(packet.packet_id or 0, code if v5 else 0))
        elif packet.qos == 2:
            conn.proto.send(PubRec(packet.packet_id or 0, code if v5 else 0))
        conn._pump()

    async def _accept(self, session: MqttSession, topic: str, packet: Publish) -> None:
        user = session.user
        if user is not None and topic == f"users/{user}/read":
            await self._device_read(session, packet.payload)
            return
        props = packet.properties
        meta = props if props else None
        await self.node.publish(topic, packet.payload, classify_payload(packet.payload),
                                retain=packet.retain, qos=int(packet.qos),
                                origin=session.client_id, meta=meta)

    async def _device_read(self, session: MqttSession, payload: bytes) -> None:
        """``users/{uid}/read``: ``{"ids": [...]}`` or ``{"all": true}``; applied, not forwarded."""
        assert session.user is not None
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.metrics.inc("tidings_errors_total", code="bad_read")
            return
        if not isinstance(body, dict):
            return
        try:
            await self.notifier.mark(session.user, "read", body.get("ids"),
                                     body.get("all") is True, session.client_id)
        except TidingsError as e:
            if e.status >= 500:
                raise
            self.metrics.inc("tidings_errors_total", code=e.code)

    # -- subscribe -------------------------------------------------------------------------

    async def _register(self, session: MqttSession, flt: str, sub: Sub) -> None:
        if flt.startswith("$share/"):
            _, group, inner = flt.split("/", 2)
            key = (group, inner)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = _ShareGroup(group, inner)
                await self.node.subscribe(inner, g)
            g.members[session] = sub
        else:
            await self.node.subscribe(flt, session)

    async def _unregister(self, session: MqttSession, flt: str) -> None:
        if flt.startswith("$share/"):
            _, group, inner = flt.split("/", 2)
            g = self.groups.get((group, inner))
            if g is not None:
                g.members.pop(session, None)
                if not g.members:
                    del self.groups[(group, inner)]
                    await self.node.unsubscribe(inner, g)
        else:
            await self.node.unsubscribe(flt, session)

    def _hold_subs(self, session: MqttSession) -> None:
        """Count a stored session's subscriptions against its user (they were
        allowed when made, so they are kept even over a since lowered limit)."""
        if session.user is not None and session.subs:
            self.node.user_subscriptions.force(session.user, len(session.subs))

    def _check_filter(self, session: MqttSession, flt: str) -> tuple[int, str]:
        """(reason code, the filter to check permissions on)."""
        t = self.settings.topics
        inner = flt
        if flt.startswith("$share/"):
            parts = flt.split("/", 2)
            if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
                return ReasonCode.TOPIC_FILTER_INVALID, flt
            inner = parts[2]
        try:
            validate_filter(inner, max_length=t.max_length, max_depth=t.max_depth)
        except TopicError:
            return ReasonCode.TOPIC_FILTER_INVALID, inner
        if not self.acl.can_subscribe(session.principal, inner):
            return ReasonCode.NOT_AUTHORIZED, inner
        return ReasonCode.SUCCESS, inner

    async def _subscribe(self, conn: MqttConnection, packet: Subscribe) -> None:
        session = conn.session
        assert session is not None
        sub_id = packet.properties.subscription_identifiers[0] \
            if packet.properties.subscription_identifiers else None
        session.live_seen = {}
        try:
            await self._subscribe_all(conn, session, packet, sub_id)
        finally:
            session.live_seen = None

    async def _subscribe_all(self, conn: MqttConnection, session: MqttSession,
                             packet: Subscribe, sub_id: int | None) -> None:
        codes: list[int] = []
        retained_jobs: list[tuple[str, Sub]] = []
        for s in packet.subscriptions:
            code, inner = self._check_filter(session, s.topic_filter)
            shared = s.topic_filter.startswith("$share/")
            if code == ReasonCode.SUCCESS and shared and s.no_local:
                code = ReasonCode.PROTOCOL_ERROR  # [MQTT-3.8.3-4]
            new = s.topic_filter not in session.subs
            if code == ReasonCode.SUCCESS and new and \
                    len(session.subs) >= self.settings.mqtt.max_subscriptions:
                code = ReasonCode.QUOTA_EXCEEDED
            if code == ReasonCode.SUCCESS and new and session.user is not None and \
                    not self.node.user_subscriptions.take(session.user):
                code = ReasonCode.QUOTA_EXCEEDED  # topics.max_user_subscriptions
            if code != ReasonCode.SUCCESS:
                self.metrics.inc("tidings_errors_total", code=f"mqtt_suback_{code:#x}")
                codes.append(code)
                continue
            sub = Sub(int(s.qos), s.no_local, s.retain_as_published, sub_id)
            if new:
                session.subs[s.topic_filter] = sub
                await self._register(session, s.topic_filter, sub)
            else:
                session.subs[s.topic_filter] = sub  # replaces options [MQTT-3.8.4-3]
                if shared:
                    g = self.groups.get(tuple(s.topic_filter.split("/", 2)[1:]))  # type: ignore[arg-type]
                    if g is not None:
                        g.members[session] = sub
            codes.append(int(s.qos))
            rh = int(s.retain_handling)
            if not shared and (rh == 0 or (rh == 1 and new)):  # [MQTT-3.3.1-9..11]
                retained_jobs.append((inner, sub))
        conn.proto.send(SubAck(packet.packet_id, tuple(codes)))
        conn._pump()
        if session.persistent:
            await self.node.store.mqtt_save(session.client_id, session.state())
        for inner, sub in retained_jobs:
            for pub in await self.node.store.retained(inner):
                if not session.may_see(pub.topic):
                    continue  # a wildcard matches other users' topics too
                live = (session.live_seen or {}).get(pub.topic)
                if live is not None and _not_after(pub.offset, live):
                    continue  # the live delivery already carried this (or newer)
                ids = (sub.subscription_id,) if sub.subscription_id is not None else ()
                conn.publish(_template(pub), min(sub.qos, pub.qos), True, ids)  # [MQTT-3.3.1-8]
                if conn._out_size >= _PACE_CHUNK:
                    # a burst the server chose: no faster than the client reads, so
                    # the outbound bound only ever sees live traffic
                    await conn.drained()
                    if conn._closed:
                        return

    async def _unsubscribe(self, conn: MqttConnection, packet: Unsubscribe) -> None:
        session = conn.session
        assert session is not None
        codes = []
        for flt in packet.topic_filters:
            if flt in session.subs:
                del session.subs[flt]
                if session.user is not None:
                    self.node.user_subscriptions.give(session.user)
                await self._unregister(session, flt)
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        conn.proto.send(UnsubAck(packet.packet_id, tuple(codes)))
        conn._pump()
        if session.persistent:
            await self.node.store.mqtt_save(session.client_id, session.state())


def _not_after(offset: str, other: str) -> bool:
    """Whether ``offset`` is at or before ``other`` (same topic and epoch)."""
    a, b = parse_offset(offset), parse_offset(other)
    return a is not None and b is not None and a[0] == b[0] and a[1] <= b[1]


def _queue_of(conn: MqttConnection) -> list[QueuedMessage]:
    """What a persistent session keeps when its connection ends: in-flight first
    (with their packet ids, to resend with DUP), then what waited for quota."""
    out: list[QueuedMessage] = []
    for flight in conn.proto.session.outbound.values():
        out.append(QueuedMessage(flight.message.topic, flight.message.payload, flight.qos,
                                 flight.retain, flight.packet_id,
                                 flight.flow is FlowState.AWAIT_PUBCOMP,
                                 expires=_expires(flight.message.properties),
                                 properties=_props_to_json(flight.message.properties,
                                                           flight.subscription_ids)))
    for template, qos, retain, ids in conn.pending:
        if qos:
            out.append(QueuedMessage(template.topic, template.payload, qos, retain,
                                     expires=_expires(template.properties),
                                     properties=_props_to_json(template.properties, ids)))
    return out

