"""The MQTT broker: this node's MQTT sessions and the rules between them and the node.

:class:`MqttBroker` listens (TCP, TLS; WebSocket connections come from the WS
edge through :func:`~.transport.serve_websocket`) and keeps what is MQTT's
own: CONNECT (take over, resume, acknowledge), persistent sessions and their
queues, wills, expiry, ``$share`` groups, SUBACK/PUBACK slots and retained
pacing. Every rule a client meets (who it is, topic and filter syntax, ACL,
the ``$`` refusal, sizes, subscription quotas, what it may see, the inbox's
``users/{uid}/read``) is the session layer's
(:class:`~tidings.sessions.Operations`), shared with the WS edge and the HTTP
API; the store is reached only through the node. It talks to each connection
through :class:`~.transport.MqttConnection`'s public methods, and maps errors
to reason codes only through :func:`~.codes.reason_code`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import ssl as ssl_module
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from ...auth import Acl, Principal, TokenAuthority
from ...config import Settings
from ...errors import (
    BadClientId,
    BadTopic,
    Forbidden,
    QuotaExceeded,
    TidingsError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from ...logs import garbage
from ...metrics import Metrics
from ...node import Node
from ...notify import Notifier
from ...plumbing import ConnectionSet, Deadlines, Flusher, InOrder, TaskSet, failed
from ...presence import Presence
from ...protocol.mqtt import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    MessageAcknowledged,
    PacketType,
    PingReq,
    Properties,
    ProtocolViolation,
    PubAck,
    Publish,
    PubRec,
    ReasonCode,
    State,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Version,
    Will,
)
from ...quota import Tally
from ...sessions import Operations
from ...store.base import MqttSessionState, QueuedMessage
from ...types import classify_payload, parse_offset
from .cluster import Move, MqttCluster
from .codes import reason_code
from .session import WIRE, MqttSession, ShareGroup, Sub, retained_template, template
from .sys import sys_loop
from .transport import MqttConnection

__all__ = ["MqttBroker"]

log = logging.getLogger("tidings.mqtt")

_PIPELINE = 128  # PUBLISH packets of one connection waiting for their store group


class MqttBroker:
    """The MQTT sessions of this node and the rules between them and the node."""

    def __init__(self, settings: Settings, node: Node, tokens: TokenAuthority, acl: Acl,
                 notifier: Notifier, presence: Presence, metrics: Metrics) -> None:
        self.settings = settings
        self.node = node
        self.acl = acl  # MqttSession.may_see asks it on every delivery (the hot path)
        self.metrics = metrics
        # the session layer's checks (topics, ACL, quotas, sizes) and its way to the node
        self.ops = Operations(settings, node, tokens, acl, notifier, presence, metrics)
        self.flusher = Flusher()
        self.sessions: dict[str, MqttSession] = {}
        self.groups: dict[tuple[str, str], ShareGroup] = {}
        self.connections: ConnectionSet[MqttConnection] = ConnectionSet()
        self.workers = TaskSet("mqtt workers")  # the connections' pumps
        self.frames_out = 0  # packets written to clients (a plain int: hot path)
        self.connect_deadlines: dict[MqttConnection, float] = {}
        # every connection's token expiry on one timer (none per connection)
        self.expiries: Deadlines[MqttConnection] = Deadlines(self._token_expired)
        self.per_ip: Tally[str] = Tally(settings.mqtt.max_connections_per_ip)
        # user -> client ids of its persistent sessions here (mqtt.max_sessions_per_user)
        self._kept: dict[str, set[str]] = {}
        self._servers: list[asyncio.Server] = []
        self._offline: list[tuple[str, QueuedMessage]] = []
        self._flushing = asyncio.Lock()  # one offline-queue write at a time, in order
        self._tasks = TaskSet("mqtt broker")
        self._ticker: asyncio.Task[None] | None = None
        self._sys: asyncio.Task[None] | None = None
        self._will_timers: dict[str, asyncio.TimerHandle] = {}
        # per connection with PUBLISH packets in flight: their acknowledgements, in order
        self._acks: dict[MqttConnection, InOrder] = {}
        self.started = time.time()
        self.cluster = MqttCluster(self, node)  # takeover and $share across nodes
        node.hub.register_wire(WIRE, template)
        metrics.gauge("tidings_mqtt_connections", "open MQTT connections",
                      lambda: float(len(self.connections)))
        metrics.describe("tidings_mqtt_dropped_total", "MQTT messages not delivered, by reason")

    # -- lifecycle --------------------------------------------------------------------

    @property
    def ports(self) -> list[int]:
        return [int(s.sockets[0].getsockname()[1]) for s in self._servers]

    async def start(self) -> None:
        s = self.settings.mqtt
        await self.cluster.start()
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
                reuse_address=True, reuse_port=self.settings.node.reuse_port or None,
                # a closing connection's wait for the client's close_notify
                ssl_shutdown_timeout=max(s.close_drain, 0.1)))
        self._ticker = loop.create_task(self._tick())
        if s.sys_interval:
            self._sys = loop.create_task(sys_loop(self, s.sys_interval))

    async def shutdown(self, grace: float) -> None:
        """Close every connection (5.0: DISCONNECT 0x8B), wait up to ``grace``
        seconds for them to go and for their workers to detach (and save) their
        sessions, then abort the rest and finish the background tasks."""
        for server in self._servers:
            server.close()
        await self.cluster.close()
        for task in (self._ticker, self._sys):
            if task is not None:
                task.cancel()
        for conn in list(self.connections):
            conn.close(ReasonCode.SERVER_SHUTTING_DOWN)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self.connections.wait_empty()
                await self.workers.wait()
        for conn in list(self.connections):
            if conn.link is not None:
                conn.link.abort()
        for timer in self._will_timers.values():
            timer.cancel()
        await self._flush_offline()
        await self._tasks.close(grace=grace)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` in the background; awaited (then cancelled) at shutdown."""
        self._tasks.spawn(coro)

    async def _restore(self) -> None:
        """Re-register the stored persistent sessions (after a restart)."""
        now = time.time()
        kept: list[tuple[str, MqttSessionState, float]] = []
        for client_id, state in await self.node.mqtt_sessions():
            gone = state.disconnected_at or now
            if gone + state.expiry <= now:
                await self.node.mqtt_delete(client_id)
            else:
                kept.append((client_id, state, gone))
        mine = await self.cluster.owned([client_id for client_id, _, _ in kept])
        for client_id, state, gone in kept:
            if client_id not in mine:
                continue  # another node holds it (cluster)
            session = MqttSession.from_state(self, client_id, state)
            session.disconnected_at = gone
            self.sessions[client_id] = session
            self._keep(session, True)
            self._hold_subs(session)
            for flt, sub in session.subs.items():
                await self._register(session, flt, sub)
            self._schedule_expiry(session)

    async def _tick(self) -> None:
        """Once a second: keepalive deadlines, connect timeouts, the offline queue."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.check_keepalive(now):
                    self.metrics.inc("tidings_errors_total", code="keepalive_timeout")
            for conn, deadline in list(self.connect_deadlines.items()):
                if now > deadline and conn.proto.state is not State.CONNECTED:
                    self.connect_deadlines.pop(conn, None)
                    if conn.link is not None:
                        conn.link.abort()  # no CONNECT in time [MQTT-3.1.4-x]: just close

    # -- offline queue ------------------------------------------------------------------

    def enqueue_offline(self, client_id: str, message: QueuedMessage) -> None:
        if not self._offline:
            self.spawn(self._flush_offline_soon())
        self._offline.append((client_id, message))

    async def _flush_offline_soon(self) -> None:
        await asyncio.sleep(0)
        await self._flush_offline()

    async def _flush_offline(self) -> None:
        """Write the offline queue; returns once everything queued before the call is
        written (a write in progress included: a resume reads the store after it)."""
        async with self._flushing:
            batch, self._offline = self._offline, []
            if not batch:
                return
            try:
                dropped = await self.node.mqtt_enqueue(batch, self.settings.mqtt.max_queued)
            except TidingsError:
                dropped = len(batch)
        if dropped:
            self.metrics.inc("tidings_mqtt_dropped_total", dropped, reason="queue_full")

    # -- events ---------------------------------------------------------------------------

    async def handle(self, conn: MqttConnection, event: Any) -> None:
        if isinstance(event, Publish):
            await self._publish(conn, event)
            return
        acks = self._acks.get(conn)
        if acks is not None:  # every packet after a PUBLISH sees it handled
            await acks.wait()
        if isinstance(event, Connect):
            if event.properties.authentication_method is None:
                await self._connect(conn, event)
            else:
                self._refuse_method(conn)
        elif isinstance(event, Subscribe):
            await self._subscribe(conn, event)
        elif isinstance(event, Unsubscribe):
            await self._unsubscribe(conn, event)
        elif isinstance(event, MessageAcknowledged):
            conn.send_queued()
        elif isinstance(event, Disconnect):
            self._disconnect(conn, event)
        elif isinstance(event, ProtocolViolation):
            self.metrics.inc("tidings_errors_total", code="mqtt_protocol")
            garbage.note("MQTT packet", conn.session.client_id if conn.session else "a client",
                         str(event.error))  # rate-limited: see logs.py
        elif isinstance(event, Auth):
            # No authentication method is configured, so none was agreed at CONNECT
            # (one that asked for one was refused): 0x8C [MQTT-4.12.0-5], section 2.4
            self.metrics.inc("tidings_errors_total", code="mqtt_auth")
            conn.close(ReasonCode.BAD_AUTHENTICATION_METHOD)
        elif isinstance(event, PingReq):
            pass

    def _refuse(self, conn: MqttConnection, error: TidingsError) -> None:
        """Refuse the CONNECT: a CONNACK with the reason code for ``error`` (the codec
        writes a 3.1.1 client's return code), then close [MQTT-3.2.2-7] (5.0) /
        [MQTT-3.2.2-5] (3.1.1)."""
        code = reason_code(error, PacketType.CONNACK)
        self.metrics.inc("tidings_errors_total", code=f"mqtt_connack_{code:#x}")
        conn.send(Connack(reason_code=code))

    def _refuse_method(self, conn: MqttConnection) -> None:
        """A CONNECT asking for enhanced authentication (5.0 section 4.12): no method
        is configured, so every one is unsupported: CONNACK 0x8C, close [MQTT-4.12.0-1]."""
        self.connect_deadlines.pop(conn, None)
        self.metrics.inc("tidings_errors_total", code="mqtt_connack_0x8c")
        conn.send(Connack(reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD))

    async def _connect(self, conn: MqttConnection, packet: Connect) -> None:
        """CONNECT: authenticate, find the client's session, take over its live
        connection, resume or start the session, acknowledge."""
        self.connect_deadlines.pop(conn, None)
        try:
            move: Move | None = None
            claimed = False
            principal = self._authenticate(packet)
            client_id, assigned = self._client_id(packet)
            if client_id not in self.sessions:  # held here: taken over below
                claimed = True
                move = await self.cluster.take(client_id, principal,
                                               resume=not packet.clean_start)
            old, stored = await self._find_session(client_id, principal)
            expiry = self._session_expiry(packet, client_id, principal)
        except (Unauthorized, Forbidden, BadClientId, QuotaExceeded) as e:
            if move is not None:
                await move.end()
            if claimed:
                self.cluster.disown(client_id)  # claimed, then refused: not held here
            self._refuse(conn, e)
            return
        try:
            await self._connect_as(conn, packet, principal, client_id, assigned, old, stored,
                                   expiry, move)
        finally:
            if move is not None:
                await move.end()

    async def _connect_as(self, conn: MqttConnection, packet: Connect, principal: Principal,
                          client_id: str, assigned: str | None, old: MqttSession | None,
                          stored: tuple[MqttSessionState, list[QueuedMessage]] | None,
                          expiry: int, move: Move | None) -> None:
        """CONNECT once the client is known: take over, resume or start, acknowledge."""
        if old is not None and old.conn is not None:
            self._take_over(conn, old, resume=not packet.clean_start)
        timer = self._will_timers.pop(client_id, None)
        if timer is not None:
            timer.cancel()  # the client is back before its will delay ran out
        if old is not None and not packet.clean_start:
            session, present = await self._resume_here(conn, old, principal), True
        else:
            if old is not None:
                await self._end_session(old, claim=False)
            session, present = MqttSession(self, client_id, principal), False
            # the store was just read: without a record there, nothing to delete
            session.stored = stored is not None or (old is not None and old.stored)
            if not packet.clean_start and stored is not None:
                session, present = await self._resume_stored(conn, client_id, principal,
                                                             stored, move), True
        await self._open(conn, session, packet, expiry)
        self._acknowledge(conn, packet, session, present, assigned)

    def _authenticate(self, packet: Connect) -> Principal:
        """The password is a Tidings token (the username is informational); none:
        anonymous, if ``auth.allow_anonymous``."""
        password = packet.password
        if password is None and not self.settings.auth.allow_anonymous:
            if packet.username is None:
                raise Forbidden("anonymous connections are not allowed")
            raise Unauthorized("a user name without a password")
        return self.ops.authenticate(None if password is None
                                     else password.decode("utf-8", "replace"))

    @staticmethod
    def _client_id(packet: Connect) -> tuple[str, str | None]:
        """(client id, the one we assigned to an empty one, if we did)."""
        if not packet.client_id:
            assigned = "auto-" + secrets.token_hex(8)
            return assigned, assigned
        if len(packet.client_id) > 256:
            raise BadClientId("client id over 256 characters")
        return packet.client_id, None

    async def _find_session(self, client_id: str, principal: Principal
                            ) -> tuple[MqttSession | None,
                                       tuple[MqttSessionState, list[QueuedMessage]] | None]:
        """(the session held here, else the one kept in the store); a token cannot
        take over, resume or wipe another user's session."""
        old = self.sessions.get(client_id)
        if old is not None:
            if old.principal.user != principal.user:
                raise Forbidden("the client id is another user's session")
            return old, None
        # kept by another node (a shared store), before a restart, or not kept at all
        stored = await self.node.mqtt_session(client_id)
        if stored is not None and stored[0].user != principal.user:
            raise Forbidden("the client id is another user's session")
        return None, stored

    def _session_expiry(self, packet: Connect, client_id: str, principal: Principal) -> int:
        """Seconds the session outlives the connection: 5.0 Session Expiry Interval,
        3.1.1 clean session 0 for as long as we keep any (``mqtt.max_session_expiry``)."""
        s = self.settings.mqtt
        if packet.version == Version.V5:
            expiry = packet.properties.session_expiry_interval or 0
        else:
            expiry = 0 if packet.clean_start else s.max_session_expiry
        expiry = min(expiry, s.max_session_expiry)
        if expiry > 0 and principal.user is not None:
            kept = self._kept.get(principal.user, set())
            if client_id not in kept and len(kept) >= s.max_sessions_per_user:
                # each kept session may queue max_queued messages: 0x97 "an
                # implementation or administrative imposed limit has been
                # exceeded" (5.0 section 3.2.2.2; 3.1.1: 0x03)
                raise QuotaExceeded(f"over mqtt.max_sessions_per_user ({s.max_sessions_per_user})")
        return expiry

    def _take_over(self, conn: MqttConnection, old: MqttSession, *, resume: bool) -> None:
        """Close the live connection of the same client id [MQTT-3.1.4-2]; with
        ``resume`` its unacknowledged messages move to ``conn``."""
        prev, old.conn = old.conn, None
        assert prev is not None
        conn.take_over(prev, resume=resume)
        self.metrics.inc("tidings_mqtt_takeovers_total")

    async def _resume_here(self, conn: MqttConnection, session: MqttSession,
                           principal: Principal) -> MqttSession:
        """Resume a session held on this node, with the grants of the token presented now."""
        session.act_for(principal)
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
            session.expiry_timer = None
        # From now on new messages wait in the connection (behind the stored queue),
        # not in the store's queue, which is read once here and then emptied; what
        # was queued but not yet written goes to the store before that read.
        session.conn = conn
        await self._flush_offline()
        stored = await self.node.mqtt_session(session.client_id)
        if stored is not None:
            conn.resume_queue(stored[1])
        return session

    async def _resume_stored(self, conn: MqttConnection, client_id: str, principal: Principal,
                             stored: tuple[MqttSessionState, list[QueuedMessage]],
                             move: Move | None = None) -> MqttSession:
        """Resume a session kept by another node or before a restart.

        With ``move`` (another node handed it over just now) what arrived meanwhile
        follows the stored queue, and the filters the catcher follows pass to the
        session with no wait between the two (nothing falls between them)."""
        session = MqttSession.from_state(self, client_id, stored[0])
        session.act_for(principal)  # the grants of the token presented now
        session.conn = conn  # what arrives from now on waits in the connection
        conn.resume_queue(stored[1])
        self._hold_subs(session)
        caught = move.filters if move is not None else []
        for flt, sub in session.subs.items():
            if flt not in caught:
                await self._register(session, flt, sub)
        if move is not None:
            move.replay(session)
            for flt in caught:
                if flt in session.subs:  # the catcher holds the bus subscription: no wait
                    await self._register(session, flt, session.subs[flt])
            await move.end()
        return session

    async def _open(self, conn: MqttConnection, session: MqttSession, packet: Connect,
                    expiry: int) -> None:
        """Bind ``session`` to ``conn`` and store (or forget) it."""
        session.expiry = expiry
        session.disconnected_at = None
        session.conn = conn
        conn.session = session
        conn.will = packet.will
        self.sessions[session.client_id] = session
        self._keep(session, expiry > 0)
        self._end_at_token_expiry(conn, session.principal)
        if session.persistent:
            session.stored = True
            await self.node.mqtt_save(session.client_id, session.state(), [])
        elif session.stored:
            session.stored = False
            await self.node.mqtt_delete(session.client_id)

    def _acknowledge(self, conn: MqttConnection, packet: Connect, session: MqttSession,
                     present: bool, assigned: str | None) -> None:
        """CONNACK, then what waited for it; the user is online."""
        if present:
            conn.proto.restore_awaiting_pubrel(session.awaiting_pubrel)
        props = self._connack_properties(packet, assigned, session)
        conn.acknowledge(Connack(session_present=present, properties=props))
        if session.user is not None:
            self.ops.presence.online(session.user, conn, session.client_id, "mqtt")

    def _connack_properties(self, packet: Connect, assigned: str | None,
                            session: MqttSession) -> Properties:
        """5.0 CONNACK properties: what we assigned and what we support (3.2.2.3)."""
        if packet.version != Version.V5:
            return NO_PROPERTIES
        return Properties(
            assigned_client_identifier=assigned,
            server_keep_alive=self._server_keep_alive(packet.keep_alive),
            response_information=self._response_information(packet, session),
            maximum_qos=None,
            retain_available=None,
            wildcard_subscription_available=1,
            subscription_identifier_available=1,
            shared_subscription_available=1,
        )

    def _server_keep_alive(self, asked: int) -> int | None:
        """The Server Keep Alive to send: ours whenever it differs from what the client
        asked, which it then must use [MQTT-3.2.2-21], [MQTT-3.2.2-22]; None when the
        client's stands. ``mqtt.max_keepalive`` lowers a longer one, and is
        enforced on a client that asked for none (0)."""
        most = self.settings.mqtt.max_keepalive
        keep = min(asked, most) if asked and most else (asked or most)
        return keep if keep != asked else None

    def _response_information(self, packet: Connect, session: MqttSession) -> str | None:
        """Response Information for a client that asked for it (Request Response
        Information 1), else none [MQTT-3.1.2-28]: the prefix under which it may
        build response topics (5.0 section 4.10), ``mqtt.response_information``
        for a token's user, ``mqtt.anonymous_response_information`` otherwise.
        The ACL still decides what may be done there."""
        if packet.properties.request_response_information != 1:
            return None
        s = self.settings.mqtt
        if session.user is not None:
            info = s.response_information.format(uid=session.user)
        else:
            info = s.anonymous_response_information.format(client_id=session.client_id)
            if "+" in session.client_id or "#" in session.client_id:
                return None  # no topic level to build on
        return info or None

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
        acks = self._acks.pop(conn, None)
        if acks is not None:  # published all the same; nobody is left to acknowledge
            acks.drop()
        if session is None:
            return
        if session.user is not None:
            self.ops.presence.offline(session.user, conn)  # taken over too: this connection left
        if conn.taken_over:
            return
        if not conn.graceful and conn.will is not None:
            self._schedule_will(session, conn.will)
        session.conn = None
        if session.persistent:
            session.disconnected_at = time.time()
            session.awaiting_pubrel = conn.proto.awaiting_pubrel
            queue = conn.unsent()
            session.stored = True
            self.spawn(self.node.mqtt_save(session.client_id, session.state(), queue))
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
            self.expiries.discard(conn, conn.expiry)
            conn.expiry = None
        if principal.expires is not None:
            conn.expiry = principal.expires
            self.expiries.add(conn, principal.expires)

    def _token_expired(self, conn: MqttConnection) -> None:
        """A connection's token ran out (:attr:`expiries`): see :meth:`_end_at_token_expiry`."""
        conn.expiry = None
        self.metrics.inc("tidings_errors_total", code="token_expired")
        conn.close(ReasonCode.MAXIMUM_CONNECT_TIME)

    def _schedule_will(self, session: MqttSession, will: Will) -> None:
        delay = will.properties.will_delay_interval or 0
        delay = min(delay, session.expiry) if session.persistent else 0
        if delay <= 0:
            self.spawn(self._publish_will(session, will))
            return
        self._will_timers[session.client_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self.spawn(self._publish_will(session, will)))

    async def _publish_will(self, session: MqttSession, will: Will) -> None:
        """Publish a will as its session's principal, under every publish rule."""
        self._will_timers.pop(session.client_id, None)
        props = will.properties
        meta = replace(props, will_delay_interval=None) if props else None
        try:
            topic = self.ops.check_publish(session.principal, will.topic, will.payload)
            await self.ops.publish(topic, will.payload, classify_payload(will.payload),
                                   retain=will.retain, qos=int(will.qos),
                                   origin=session.client_id, meta=meta)
            self.metrics.inc("tidings_mqtt_wills_total")
        except TidingsError as e:
            if e.status < 500:
                self.metrics.inc("tidings_errors_total", code=e.code)  # refused: dropped
            else:
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

    async def _end_session(self, session: MqttSession, *, stored: bool = True,
                           claim: bool = True) -> None:
        """Forget ``session`` here; ``stored``: in the store too (when kept there);
        ``claim``: drop this node's claim on its client id (cluster)."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
            self._keep(session, False)
            if claim:
                self.cluster.disown(session.client_id)
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        self.ops.give_back(session.user, len(session.subs))
        for flt in list(session.subs):
            await self._unregister(session, flt)
        if not stored:
            return  # kept in the store, for another node
        session.subs.clear()
        if (session.persistent or session.conn is None) and session.stored:
            session.stored = False
            await self.node.mqtt_delete(session.client_id)

    # -- takeover from another node (see cluster.py) -------------------------------------

    def hold(self, client_id: str, user: str | None) -> list[str] | None:
        """Another node will take ``client_id`` over: from now on note the offset of
        each message handed to the session; its filters (None: not held here)."""
        session = self.sessions.get(client_id)
        if session is None:
            return None
        if session.user != user:
            raise Forbidden("the client id is another user's session")
        if session.live_seen is None:
            noting = session.live_seen = {}

            def stop() -> None:  # the other node never asked for the release
                if session.live_seen is noting:
                    session.live_seen = None

            asyncio.get_running_loop().call_later(
                2 * self.settings.mqtt.takeover_timeout, stop)
        return list(session.subs)

    async def hand_over(self, client_id: str, resume: bool) -> dict[str, str]:
        """A newer CONNECT on another node took ``client_id`` [MQTT-3.1.4-2]: close the
        connection (5.0: DISCONNECT 0x8E), leave the session in the store with
        ``resume`` (its queue: what was unacknowledged or waiting, then what
        arrived until it stopped following its filters), and forget it here.
        Returns the offset per topic last handed to it since :meth:`hold`."""
        session = self.sessions.get(client_id)
        if session is None:
            return {}
        timer = self._will_timers.pop(client_id, None)
        if timer is not None:
            timer.cancel()  # the client is back, elsewhere
        conn, session.conn = session.conn, None
        if conn is not None:
            conn.taken_over = True
            conn.close(ReasonCode.SESSION_TAKEN_OVER)
            self.metrics.inc("tidings_mqtt_takeovers_total")
        if resume:
            session.persistent = True  # until it is unregistered, arrivals are queued
            if conn is not None:
                session.awaiting_pubrel = frozenset(conn.proto.awaiting_pubrel)
                for message in conn.unsent():  # the store's queue is empty while connected
                    self.enqueue_offline(client_id, message)
            session.disconnected_at = time.time()
            await self.node.mqtt_save(client_id, session.state())
        await self._end_session(session, stored=False)
        if resume:
            await self._flush_offline()
        seen, session.live_seen = session.live_seen or {}, None
        return seen

    # -- publish --------------------------------------------------------------------------

    async def _publish(self, conn: MqttConnection, packet: Publish) -> None:
        """PUBLISH from the client: checked, then handed to the node's next group
        without waiting, so every PUBLISH read at once shares one store call and
        one fan-out pass; acknowledged (:meth:`_published`) once stored, PUBACKs
        and PUBRECs in the order the PUBLISH packets came [MQTT-4.6.0-2]
        [MQTT-4.6.0-3]. Up to ``_PIPELINE`` wait per connection; the pump waits
        beyond that."""
        session = conn.session
        assert session is not None
        try:
            topic = self.ops.check_publish(session.principal, packet.topic, packet.payload)
            if self.ops.is_read_topic(session.user, topic):
                future: asyncio.Future[Any] = asyncio.ensure_future(
                    self._apply_read(session, packet))
            elif self.ops.is_preferences_set_topic(session.user, topic) or \
                    self.ops.is_push_register_topic(session.user, topic) or \
                    self.ops.is_feedback_topic(session.user, topic):
                future = asyncio.ensure_future(self._apply_document(
                    session, topic, packet, conn.proto.version == Version.V5))
            else:
                props = packet.properties
                future = self.ops.submit(topic, packet.payload,
                                         classify_payload(packet.payload),
                                         retain=packet.retain, qos=int(packet.qos),
                                         origin=session.client_id,
                                         meta=props if props else None)
        except TidingsError as e:
            future = failed(e)
        acks = self._acks.get(conn)
        if acks is None:
            acks = self._acks[conn] = InOrder()
        acks.add(future, functools.partial(self._published, conn, packet))
        if len(acks) >= _PIPELINE:
            await acks.wait(_PIPELINE - 1)

    def _published(self, conn: MqttConnection, packet: Publish, future: asyncio.Future[Any]
                   ) -> None:
        """A PUBLISH handled: acknowledged, or refused.

        A refusal is the error's reason code in the 5.0 PUBACK / PUBREC
        (:func:`~.codes.reason_code`). 3.1.1 cannot refuse in an acknowledgement:
        a refused message is acknowledged and dropped, and one the server could
        not take closes the connection, so the client sends it again.
        """
        acks = self._acks.get(conn)
        if acks is not None and not acks:
            del self._acks[conn]  # the last one in flight: nothing held while idle
        if conn.closed or future.cancelled():
            return
        e = future.exception()
        if e is not None and not isinstance(e, TidingsError):
            log.error("publish failed", exc_info=e)
            self.metrics.inc("tidings_errors_total", code="internal")
            e = Unavailable("internal error")
        v5 = conn.proto.version == Version.V5
        if isinstance(e, TooLarge):
            # Within the packet size (which leaves room for the topic and
            # properties) but over the data limit: the same refusal as a packet
            # over Maximum Packet Size [MQTT-3.2.2-15]: DISCONNECT 0x95 in 5.0 (4.13);
            # 3.1.1 has no way to say it and closes.
            self.metrics.inc("tidings_errors_total", code="too_large")
            conn.close(reason_code(e, PacketType.DISCONNECT) if v5 else None)
        elif isinstance(e, (BadTopic, Forbidden)):
            self.metrics.inc("tidings_errors_total", code=e.code)
            self._ack_publish(conn, packet, e)
        elif e is not None:
            if v5:
                self._ack_publish(conn, packet, e)
            else:
                conn.close()
        else:
            self._ack_publish(conn, packet, None)

    @staticmethod
    def _ack_publish(conn: MqttConnection, packet: Publish, error: TidingsError | None) -> None:
        """PUBACK (QoS 1) or PUBREC (QoS 2): success, or in 5.0 the refusal's code."""
        code = 0
        if error is not None and conn.proto.version == Version.V5:
            code = reason_code(error, PacketType.PUBACK)
        if packet.qos == 1:
            conn.send(PubAck(packet.packet_id or 0, code))
        elif packet.qos == 2:
            conn.send(PubRec(packet.packet_id or 0, code))

    async def _apply_read(self, session: MqttSession, packet: Publish) -> None:
        """A PUBLISH to the device read topic: applied to the inbox, never published."""
        assert session.user is not None
        try:
            await self.ops.device_read(session.user, packet.payload, session.client_id)
        except TidingsError as e:
            if e.status >= 500:
                raise
            self.metrics.inc("tidings_errors_total", code=e.code)  # acknowledged, dropped

    async def _apply_document(self, session: MqttSession, topic: str, packet: Publish,
                              v5: bool) -> None:
        """A PUBLISH to the user's preferences topic, this device's push
        registration or the user's feedback topic: applied, never published. A
        bad document is refused: 5.0 PUBACK / PUBREC 0x99 Payload format invalid
        (section 3.4.2.1); 3.1.1 cannot refuse in an acknowledgement:
        acknowledged, dropped, counted."""
        assert session.user is not None
        try:
            if self.ops.is_preferences_set_topic(session.user, topic):
                await self.ops.device_preferences(session.user, packet.payload)
            elif self.ops.is_feedback_topic(session.user, topic):
                await self.ops.device_feedback(session.user, packet.payload)
            else:
                await self.ops.device_push_register(session.user, packet.payload,
                                                    session.client_id)
        except TidingsError as e:
            if e.status >= 500 or v5:
                raise
            self.metrics.inc("tidings_errors_total", code=e.code)

    # -- subscribe -------------------------------------------------------------------------

    async def _register(self, session: MqttSession, flt: str, sub: Sub) -> None:
        if flt.startswith("$share/"):
            _, group, inner = flt.split("/", 2)
            key = (group, inner)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = ShareGroup(
                    group, inner, self.cluster.route if self.cluster.enabled else None)
                await self.node.subscribe(inner, g)
            g.members[session] = sub
            self.cluster.joined(key)
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
        self.ops.hold_subscriptions(session.user, len(session.subs))

    def _check_filter(self, session: MqttSession, flt: str) -> str:
        """The filter to check permissions on (a shared one's inner filter), once
        the session layer has checked its syntax and the permission."""
        inner = flt
        if flt.startswith("$share/"):
            parts = flt.split("/", 2)
            if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1]:
                raise BadTopic("a shared subscription is $share/{group}/{filter}")
            inner = parts[2]
        return self.ops.subscribable(session.principal, inner)

    def _admit(self, session: MqttSession, flt: str) -> str:
        """The filter to check permissions on, once ``flt`` may be subscribed: checked,
        and when new, counted against the session's and the user's limits."""
        inner = self._check_filter(session, flt)
        if flt not in session.subs:
            self.ops.take_subscription(session.user, len(session.subs),
                                       self.settings.mqtt.max_subscriptions)
        return inner

    async def _subscribe(self, conn: MqttConnection, packet: Subscribe) -> None:
        session = conn.session
        assert session is not None
        sub_id = packet.properties.subscription_identifiers[0] \
            if packet.properties.subscription_identifiers else None
        noting = session.live_seen  # another node is taking it over (see hold)
        session.live_seen = {} if noting is None else noting
        try:
            await self._subscribe_all(conn, session, packet, sub_id)
        finally:
            session.live_seen = noting

    async def _subscribe_all(self, conn: MqttConnection, session: MqttSession,
                             packet: Subscribe, sub_id: int | None) -> None:
        """Each filter granted or refused in its SUBACK slot; then the retained
        messages of the granted ones."""
        codes: list[int] = []
        retained_jobs: list[tuple[str, Sub]] = []
        for s in packet.subscriptions:
            code, job = await self._subscribe_one(session, s, sub_id)
            codes.append(code)
            if job is not None:
                retained_jobs.append(job)
        conn.send(SubAck(packet.packet_id, tuple(codes)))
        if session.persistent:
            await self.node.mqtt_save(session.client_id, session.state())
        await self._send_retained(conn, session, retained_jobs)

    async def _subscribe_one(self, session: MqttSession, s: Subscription, sub_id: int | None
                             ) -> tuple[int, tuple[str, Sub] | None]:
        """(SUBACK code, (filter, options) whose retained messages to send, if any)."""
        shared = s.topic_filter.startswith("$share/")
        new = s.topic_filter not in session.subs
        try:
            if shared and s.no_local:
                # [MQTT-3.8.3-4]: a Protocol Error, not a refusal of ours; said
                # in its slot (after the filter's own checks)
                self._check_filter(session, s.topic_filter)
                code = int(ReasonCode.PROTOCOL_ERROR)
            else:
                inner = self._admit(session, s.topic_filter)
                code = int(s.qos)
        except TidingsError as e:
            code = reason_code(e, PacketType.SUBACK)
        if code >= 0x80:
            self.metrics.inc("tidings_errors_total", code=f"mqtt_suback_{code:#x}")
            return code, None
        sub = Sub(int(s.qos), s.no_local, s.retain_as_published, sub_id)
        session.subs[s.topic_filter] = sub  # an existing one's options are replaced [MQTT-3.8.4-3]
        session.screen(s.topic_filter)  # what of it the ACL denies is screened per message
        if new:
            await self._register(session, s.topic_filter, sub)
        elif shared:
            _, group, rest = s.topic_filter.split("/", 2)
            g = self.groups.get((group, rest))
            if g is not None:
                g.members[session] = sub
        rh = int(s.retain_handling)
        if not shared and (rh == 0 or (rh == 1 and new)):  # [MQTT-3.3.1-9..11]
            return code, (inner, sub)
        return code, None

    async def _send_retained(self, conn: MqttConnection, session: MqttSession,
                             jobs: list[tuple[str, Sub]]) -> None:
        """The retained messages matching newly granted filters [MQTT-3.3.1-8], those
        the session may see and live delivery has not already carried, paced;
        with the properties they were published with (5.0 section 3.3.2.3) and
        what is left of their expiry."""
        for inner, sub in jobs:
            for pub in await self.ops.retained(session.principal, inner, WIRE):
                live = (session.live_seen or {}).get(pub.topic)
                if live is not None and _not_after(pub.offset, live):
                    continue  # the live delivery already carried this (or newer)
                message = retained_template(pub, int(time.time() * 1000))
                if message is None:
                    continue  # expired while retained [MQTT-3.3.2-5]
                ids = (sub.subscription_id,) if sub.subscription_id is not None else ()
                conn.publish(message, min(sub.qos, pub.qos), True, ids)
                if not await conn.pace():  # a burst the server chose: as fast as it is read
                    return

    async def _unsubscribe(self, conn: MqttConnection, packet: Unsubscribe) -> None:
        session = conn.session
        assert session is not None
        codes = []
        for flt in packet.topic_filters:
            if flt in session.subs:
                del session.subs[flt]
                self.ops.give_back(session.user)
                await self._unregister(session, flt)
                session.unscreen(flt)
                codes.append(ReasonCode.SUCCESS)
            else:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
        conn.send(UnsubAck(packet.packet_id, tuple(codes)))
        if session.persistent:
            await self.node.mqtt_save(session.client_id, session.state())


def _not_after(offset: str, other: str) -> bool:
    """Whether ``offset`` is at or before ``other`` (same topic and epoch)."""
    a, b = parse_offset(offset), parse_offset(other)
    return a is not None and b is not None and a[0] == b[0] and a[1] <= b[1]


