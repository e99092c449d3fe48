"""The WebSocket edge: ``/ws`` on the edge port, the client protocol of DESIGN.md.

How the fast path coexists with the ``websockets`` library
-----------------------------------------------------------
``websockets``' sans-I/O ``ServerProtocol`` stays in charge of the opening
handshake (parsing, Origin check, subprotocol and extension negotiation,
the 101 response), of parsing every incoming frame (including the
``max_size`` check that fails the connection with 1009), of control frames
(it queues the pong for every ping) and of the closing handshake.
:class:`WsConnection` is our thin asyncio driver around it (as the
library's own asyncio layer is, minus a task, a receive queue and the
handshake headers per connection): it feeds received bytes in, writes what
the protocol wants sent, and hands whole messages to a :class:`WsSession`.

Everything *we* send (replies and pushes) goes through one bounded
:class:`~tidings.plumbing.Outbox` per session. For an uncompressed connection
a server frame is the same bytes for every client (servers do not mask, RFC
6455 section 5.1), so the hub builds the frame once and each session appends
those bytes to its outbox, which writes them with one ``transport.write`` per
loop iteration (the :class:`~tidings.plumbing.Flusher`). These writes bypass
``Protocol.send_*`` but are always whole frames, and the protocol also
writes whole frames (pongs, close), so the byte stream stays a valid
sequence of frames. We never send fragmented messages, and we stop writing
as soon as the protocol leaves the OPEN state, so nothing follows a close
frame. A session that negotiated permessage-deflate gets payloads instead
of frames and flushes them through ``protocol.send_text`` / ``send_binary``
(compression is per connection), a slower path that does not slow the others.

If a session's unsent bytes (its outbox plus the transport's) would exceed
``ws.outbound_buffer``, it is closed with 4008 and counted; no one else waits.
Commands are handled in order by a :class:`~tidings.plumbing.Pump` (one worker
task only while there is work; reading pauses while too many wait).

What a client may do, and doing it, is the :mod:`tidings.sessions` layer's:
a :class:`WsSession` is its :class:`~tidings.sessions.Transport` and only
translates (a command frame into a :class:`~tidings.sessions.Session` call,
the result into a reply, a :class:`~tidings.errors.TidingsError` into a reply
error or close code). Its lifecycle is one :class:`WsState`.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import http
import logging
import mimetypes
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from ..auth import Acl, TokenAuthority
from ..config import Settings
from ..demo_files import demo_file
from ..errors import (
    CLOSE_BAD_REQUEST,
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_DATA,
    CLOSE_POLICY,
    CLOSE_RATE_LIMITED,
    CLOSE_SLOW_CONSUMER,
    BadRequest,
    TidingsError,
    Unauthorized,
)
from ..metrics import Metrics
from ..node import Node
from ..notify import Notifier
from ..plumbing import (
    PACE_CHUNK,
    ConnectionSet,
    Flusher,
    InOrder,
    Outbox,
    Pump,
    TaskSet,
    WriteGate,
    failed,
)
from ..presence import Presence
from ..protocol.frames import (
    Command,
    Encoding,
    decode_command,
    encode,
    encode_message,
    error_reply,
    ok_reply,
    ws_frame,
)
from ..push.track import PUSH_TRACK_PATH, TrackSigner
from ..sessions import Operations, Session
from ..store.base import TRACK_EVENTS, PublishResult
from ..types import Publication, UserId

__all__ = ["WsEdge", "WsSession", "WsState"]

log = logging.getLogger("tidings.ws")

_MAX_MALFORMED = 10  # consecutive malformed frames before the stream counts as broken
_RECOVER_LIMIT = 1000  # notifications recovered at connect, at most (then bytes bound it)
_RECOVER_PAGE = 64  # messages read from history at once while recovering
_MAX_LISTED_IDS = 1000  # ids listed in a read-family reply's ``changed``
_ENCODINGS = frozenset(e.value for e in Encoding)
_MAX_QUEUED_COMMANDS = 64  # frames waiting for the worker before the socket is paused
_PIPELINE = 128  # publishes waiting for their replies per session
_CLOSE_TIMEOUT = 2.0  # seconds a closing handshake may take before the transport is cut


def _wire(encoding: Encoding, framed: bool) -> str:
    return f"ws-{encoding.name.lower()}{'' if framed else '-payload'}"


def register_wires(node: Node) -> None:
    """Teach the hub how to encode a message for each WS wire form."""
    for enc in Encoding:
        node.hub.register_wire(_wire(enc, False), functools.partial(encode_message,
                                                                    encoding=enc), edge="ws")
        node.hub.register_wire(_wire(enc, True), functools.partial(_framed, encoding=enc),
                               joinable=True, edge="ws")  # whole frames: a run is one write


def _framed(pub: Publication, encoding: Encoding) -> bytes:
    return ws_frame(encode_message(pub, encoding), text=encoding is Encoding.JSON)


class WsState(enum.Enum):
    """A WebSocket session's lifecycle (the handshake is :class:`WsConnection`'s).

    CONNECTING -> OPEN -> CLOSING -> CLOSED; any state may go to CLOSING or
    CLOSED, and nothing leaves CLOSED. Frames are handled in CONNECTING (the
    first must be ``connect``) and OPEN; nothing is written from CLOSING on.
    """

    CONNECTING = "connecting"  # upgraded; waiting for (or running) the connect command
    OPEN = "open"  # connected: commands are handled
    CLOSING = "closing"  # our close frame is queued; waiting for the peer's
    CLOSED = "closed"  # the connection is gone


class WsSession:
    """One WebSocket connection after the handshake: the :class:`Transport` of a
    :class:`~tidings.sessions.Session` and the translator of its frames.

    It owns the connection's :class:`~tidings.plumbing.Outbox` (and is its
    :class:`~tidings.plumbing.Sink`), the command :class:`~tidings.plumbing.Pump`
    and the keepalive; every decision about what the client may do is the
    session's. Errors become reply errors or close codes in :meth:`_failed` and
    :meth:`_first` only.
    """

    __slots__ = (
        "__weakref__",
        "_connect_timer",
        "_inflight",
        "_malformed",
        "_ping",
        "_text",
        "conn",
        "edge",
        "encoding",
        "framed",
        "outbox",
        "pump",
        "session",
        "state",
        "wire",
    )

    def __init__(self, edge: WsEdge, conn: WsConnection, encoding: Encoding) -> None:
        self.edge = edge
        self.conn = conn
        self.encoding = encoding
        self.framed = conn.protocol.extensions == []
        self.wire = _wire(encoding, self.framed)
        self.state = WsState.CONNECTING
        ws = edge.settings.ws
        self.session = Session(edge.ops, self, self.wire, edge="ws",
                               max_subscriptions=ws.max_subscriptions,
                               burst=ws.commands_burst)
        self._text = encoding is Encoding.JSON
        # this session is the outbox's sink and owner: an overflow calls on_overflow
        self.outbox = Outbox(self, ws.outbound_buffer, edge.flusher, edge.metrics,
                             gate=conn.gate)
        self._ping: bytes | None = None  # the keepalive ping still waiting for its pong
        # frames in order, one worker while busy; reading pauses past _MAX_QUEUED_COMMANDS
        self.pump: Pump[bytes] = Pump(None, conn, high=_MAX_QUEUED_COMMANDS, owner=self)
        # replies of pipelined publishes, sent in order; made by the first
        # publish, so an idle connection holds none
        self._inflight: InOrder | None = None
        self._malformed = 0
        self._connect_timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            ws.connect_timeout, self._connect_timeout)

    @property
    def user(self) -> UserId | None:
        return self.session.user

    @property
    def device(self) -> str:
        return self.session.device

    # -- Transport: outbound ------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.state is WsState.CLOSING or self.state is WsState.CLOSED

    @property
    def bound(self) -> int:
        return self.outbox.limit

    def deliver(self, publication: Publication | None, data: bytes) -> None:
        """Queue bytes already in this connection's wire form (the hot path)."""
        self.outbox.append(data)

    def overflow(self) -> None:
        """The session holds too much for the client (messages held while a burst
        is paced): the slow-consumer close, as if the outbox overflowed."""
        self.outbox.overflow()

    def on_overflow(self) -> None:
        """The outbox's overflow path (counted there): close 4008."""
        log.warning("slow consumer %s (%s): over %d queued bytes, closing",
                    self.device, self.user, self.outbox.limit)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    async def pace(self) -> bool:
        """After each ``PACE_CHUNK`` bytes of a server-chosen burst, write them and
        wait until the transport has drained. True if it waited."""
        if self.outbox.size < PACE_CHUNK:
            return False
        await self.outbox.drained()
        return True

    # -- Sink: where the outbox writes -------------------------------------------------

    def writable(self) -> bool:
        """Nothing is written once the closing handshake has begun (no byte may
        follow a close frame)."""
        return self.conn.protocol.state is State.OPEN and not self.closing

    def buffered(self) -> int:
        transport = self.conn.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def write(self, chunks: list[bytes]) -> None:
        """One flush: whole frames in one write, or payloads the protocol compresses."""
        conn = self.conn
        transport = conn.transport
        assert transport is not None
        self.edge.frames_out += len(chunks)
        if self.framed:
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        else:  # permessage-deflate: the protocol compresses each message
            send = conn.protocol.send_text if self._text else conn.protocol.send_binary
            for payload in chunks:
                send(payload)
            conn.send_data()

    def send(self, obj: dict[str, Any]) -> None:
        payload = encode(obj, self.encoding)
        self.outbox.append(ws_frame(payload, text=self._text) if self.framed else payload)

    def end(self, error: TidingsError) -> None:
        """The session ends the connection (its token expired): ``error``'s close code."""
        self.close(error.close_code, error.message)

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close with ``code``. Idempotent, never blocks."""
        if self.closing:
            return
        self.outbox.close()
        self.state = WsState.CLOSING
        self.pump.clear()
        self.conn.close(code, reason)

    # -- inbound ------------------------------------------------------------------------

    def on_message(self, data: bytes, text: bool) -> None:
        """A whole message from the client (driver callback, never blocks).

        Commands are handled in order by one worker task that exists only
        while there is work, so an idle connection costs no task. A client
        that sends faster than its commands complete is paused at the socket.
        """
        if self.closing:
            return  # keep reading until the peer's close frame: the handshake ends at once
        if text != self._text:
            kind = "text" if text else "binary"
            self.close(CLOSE_BAD_REQUEST, f"{kind} frame on {self.encoding.value}")
            return
        ws = self.edge.settings.ws
        if not self.session.allow_command(ws.commands_burst, ws.commands_per_second):
            self.edge.metrics.inc("tidings_errors_total", code="rate_limited")
            self.close(CLOSE_RATE_LIMITED, "rate limited")
            return
        self.pump.put(data)

    def _connect_timeout(self) -> None:
        self._connect_timer = None
        if self.state is WsState.CONNECTING and not self.pump.busy:
            self.close(CLOSE_POLICY, "connect timeout")

    async def pump_item(self, raw: bytes) -> None:
        """The pump's step: one frame, in order. A ``publish`` is checked and handed
        to the node's next group without waiting (:meth:`_publish`), so every
        publish the client pipelined shares one store call and one fan-out pass;
        its reply follows in its turn once it is stored. Up to ``_PIPELINE`` wait
        for their replies; any other command first waits for all of them."""
        if self.closing:
            return
        if self.state is WsState.CONNECTING:
            await self._first(raw)
            return
        cmd = self._decode(raw)
        if cmd is None:
            return
        inflight = self._inflight
        if cmd.op == "publish":
            if inflight is None:
                inflight = self._inflight = InOrder()
            self._publish(cmd, inflight)
            if len(inflight) >= _PIPELINE:
                await inflight.wait(_PIPELINE - 1)
            return
        if inflight:
            await inflight.wait()
        await self._run(cmd)

    async def pump_idle(self) -> None:
        """The pump's idle step: pipelined publishes are answered before the worker ends."""
        if self._inflight:
            await self._inflight.wait()

    def _publish(self, cmd: Command, inflight: InOrder) -> None:
        """Submit one publish; its reply is sent after those of earlier publishes."""
        a = cmd.args
        try:
            future = self.session.submit(a["topic"], a["data"], bool(a.get("retain", False)))
        except TidingsError as e:
            future = failed(e)
        inflight.add(future, functools.partial(self._published, cmd.id))

    def _published(self, rid: int | None, future: asyncio.Future[PublishResult]) -> None:
        """A publish's reply: its offset once stored, or why not."""
        if self.closing or future.cancelled():
            return
        e = future.exception()
        if e is None:
            self._ok(rid, {"offset": future.result().publication.offset})
        elif isinstance(e, TidingsError):  # refused, or not stored (one error per group)
            self._failed(e, rid)
        else:
            log.error("publish failed", exc_info=e)
            self.edge.metrics.inc("tidings_errors_total", code="internal")
            self.send(error_reply(rid, "internal", "internal error"))

    def _decode(self, raw: bytes) -> Command | None:
        try:
            cmd = decode_command(raw, self.encoding)
        except TidingsError as e:
            self._failed(e)
            return None
        self._malformed = 0
        return cmd

    async def _run(self, cmd: Command) -> None:
        try:
            await self._dispatch(cmd)
        except TidingsError as e:
            e.request_id = cmd.id
            self._failed(e)
        except Exception:
            log.exception("command handling failed")
            self.edge.metrics.inc("tidings_errors_total", code="internal")
            self.send(error_reply(cmd.id, "internal", "internal error"))

    def _failed(self, e: TidingsError, rid: int | None = None) -> None:
        """A command failed: reply with its error (to ``rid``, else the error's
        request); close after too many malformed."""
        if e.code in ("malformed", "unknown_op", "bad_request"):
            self._malformed += 1
        self._reply_error(rid if rid is not None else e.request_id, e)
        if self._malformed >= _MAX_MALFORMED:
            self.close(CLOSE_BAD_REQUEST, "too many malformed frames")

    async def _first(self, raw: bytes) -> None:
        """The first frame must be ``connect``; anything else ends the connection."""
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        rid: int | None = None
        try:
            cmd = decode_command(raw, self.encoding)
            rid = cmd.id
            if cmd.op != "connect":
                raise BadRequest("the first frame must be connect", code="connect_required")
            args = cmd.args
            self.edge.sessions.add(self)
            await self.session.connect(args.get("token"), args.get("device"), args.get("since"),
                                       functools.partial(self._ok, rid))
            if self.state is WsState.CONNECTING:
                self.state = WsState.OPEN
        except TidingsError as e:
            self._reply_error(e.request_id if e.request_id is not None else rid, e)
            close_code = e.close_code if isinstance(e, Unauthorized) else CLOSE_BAD_REQUEST
            self.close(close_code, e.code)
        except Exception:  # our bug: the client still gets an answer and a close
            log.exception("connect handling failed")
            self.edge.metrics.inc("tidings_errors_total", code="internal")
            self.send(error_reply(rid, "internal", "internal error"))
            self.close(1011, "internal")

    def _ok(self, rid: int | None, fields: dict[str, Any]) -> None:
        self.send(ok_reply(rid, **fields))

    def _reply_error(self, rid: int | None, e: TidingsError) -> None:
        self.edge.metrics.inc("tidings_errors_total", code=e.code)
        self.send(error_reply(rid, e.code, e.message))

    async def _dispatch(self, cmd: Command) -> None:
        """One command of a connected session: arguments to a session call, its
        result to the reply."""
        s, a, rid = self.session, cmd.args, cmd.id
        op = cmd.op
        if op == "ping":
            self._ok(rid, {})
        elif op == "subscribe":
            await s.subscribe(a["topic"], a.get("since"), functools.partial(self._ok, rid))
        elif op == "unsubscribe":
            await s.unsubscribe(a["topic"])
            self._ok(rid, {})
        elif op == "publish":
            offset = await s.publish(a["topic"], a["data"], bool(a.get("retain", False)))
            self._ok(rid, {"offset": offset})
        elif op == "inbox":
            page = await s.inbox(a.get("limit", 20), a.get("before"),
                                 a.get("unread_only", False))
            self._ok(rid, page)
        elif op in ("read", "unread", "archive"):
            unread, changed = await s.mark(op, a.get("ids"), bool(a.get("all")))  # type: ignore[arg-type]
            if len(changed) > _MAX_LISTED_IDS:
                # only `all: true` changes this many: the reply says all, not each id
                self._ok(rid, {"unread": unread, "all": True})
            else:
                self._ok(rid, {"unread": unread, "changed": changed})
        elif op == "track":
            self._ok(rid, {"recorded": await s.track(a["notification"], a["event"])})
        elif op == "feedback":
            self._ok(rid, {"recorded": await s.feedback(a["notification"], a["reason"],
                                                        a.get("comment"))})
        elif op == "devices":
            self._ok(rid, {"devices": await s.devices()})
        elif op == "register_push":
            self._ok(rid, {"endpoints": await s.register_push(a)})
        elif op == "unregister_push":
            self._ok(rid, {"removed": await s.unregister_push()})
        elif op == "preferences":
            self._ok(rid, {"preferences": await s.preferences()})
        elif op == "set_preferences":
            stored = await s.set_preferences(a.get("preferences"), a.get("merge", False))
            self._ok(rid, {"preferences": stored})
        elif op == "connect":
            raise BadRequest("already connected")
        else:
            raise BadRequest(f"{op} is not available on this server", code="unsupported")

    # -- end ------------------------------------------------------------------------------

    def on_close(self) -> None:
        """Driver callback: the connection is gone."""
        self.state = WsState.CLOSED
        if self._connect_timer is not None:
            self._connect_timer.cancel()
        self.outbox.close()
        self.pump.cancel()
        if self._inflight is not None:  # stored all the same; nobody is left to tell
            self._inflight.drop()
            self._inflight = None
        self.edge.tasks.spawn(self.cleanup())

    async def cleanup(self) -> None:
        self.state = WsState.CLOSED
        self.edge.sessions.discard(self)
        await self.session.close()

    def keepalive(self) -> None:
        """Called by the edge's sweep: close if the previous ping got no pong, else ping.

        Never waits: the ping is queued behind whatever is unsent.
        """
        if self.closing or self.conn.protocol.state is not State.OPEN:
            return
        if self._ping is not None:
            self.edge.metrics.inc("tidings_errors_total", code="keepalive_timeout")
            self.close(1011, "keepalive ping timeout")
            return
        self._ping = secrets.token_bytes(4)
        self.conn.protocol.send_ping(self._ping)
        self.conn.send_data()

    def on_pong(self, data: bytes) -> None:
        if data == self._ping:
            self._ping = None

    def goodbye(self, reason: str) -> None:
        """Server going away: say so, then close 1001 so the client reconnects."""
        if self.closing:
            return
        self.send({"type": "disconnect", "reason": reason, "reconnect": True})
        self.close(CLOSE_GOING_AWAY, reason)


class Handler(Protocol):
    """What a :class:`WsConnection` drives after the handshake (a session, or MQTT)."""

    def on_message(self, data: bytes, text: bool) -> None: ...
    def on_pong(self, data: bytes) -> None: ...
    def on_close(self) -> None: ...


class WsConnection(asyncio.Protocol):
    """The asyncio driver of one connection over websockets' sans-I/O ``ServerProtocol``.

    The library parses the handshake and every frame, answers pings, runs the
    closing handshake and enforces ``max_size`` (1009); this class only moves
    bytes and hands whole messages to its :class:`Handler`. Compared with the
    library's own asyncio connection it keeps no task, no receive queue and no
    handshake headers per connection, which is most of an idle connection's memory.
    """

    __slots__ = ("_counted", "_frames", "_frames_text", "_path", "_paused", "_timer",
                 "edge", "gate", "handler", "ip", "protocol", "transport")

    def __init__(self, edge: WsEdge) -> None:
        ws = edge.settings.ws
        self.edge = edge
        self.protocol = ServerProtocol(
            origins=edge.origins,  # type: ignore[arg-type]
            extensions=[ServerPerMessageDeflateFactory()] if ws.compression else None,
            subprotocols=[Subprotocol(e.value) for e in Encoding] + [Subprotocol("mqtt")],
            # the library binds this to the protocol, so it gets (protocol, offered)
            select_subprotocol=lambda _protocol, offered: self._select(offered),
            max_size=ws.max_message_size,
        )
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.ip = ""
        self._path = ""
        self._frames: list[bytes] | None = None  # a fragmented message being assembled
        self._frames_text = False
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._paused = False
        self.gate = WriteGate()  # the transport's flow control, for paced senders

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = t.get_extra_info("peername")
        self.ip = str(peer[0]) if peer else ""
        self.edge.connections_open.add(self)
        self._timer = asyncio.get_running_loop().call_later(
            self.edge.settings.ws.connect_timeout, t.abort)  # handshake deadline

    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self._on_request(event)
            elif isinstance(event, Frame):
                self._on_frame(event)
        self.send_data()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self.send_data()
        return None  # the closing handshake never needs to write after EOF

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: paced senders wait."""
        self.gate.pause()

    def resume_writing(self) -> None:
        self.gate.resume()
        writable = getattr(self.handler, "on_writable", None)  # MQTT over WebSocket
        if writable is not None:
            writable()

    async def drained(self) -> None:
        """Return once the transport's buffer is below its low-water mark (or gone)."""
        await self.gate.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # wake paced senders: they see the session closing
        if self._timer is not None:
            self._timer.cancel()
        self.edge.connections_open.discard(self)
        if self._counted:
            self.edge.release(self.ip)
        if self.handler is not None:
            handler, self.handler = self.handler, None
            handler.on_close()

    # -- handshake ---------------------------------------------------------------------

    def _select(self, offered: Any) -> Any:
        if self.edge.is_mqtt(self._path):
            # MQTT over WebSocket: the subprotocol is "mqtt" [MQTT-6.0.0-3]
            return Subprotocol("mqtt") if "mqtt" in offered else None
        for e in Encoding:
            if e.value in offered:
                return Subprotocol(e.value)
        return None  # none offered (or none of ours): JSON, the default

    def _on_request(self, request: Request) -> None:
        self._path = request.path.split("?", 1)[0]
        response = self.edge.process_request(self, request)
        if response is None:
            response = self.protocol.accept(request)
        self.protocol.send_response(response)
        # The library's parser keeps the request alive for the connection's
        # life: drop its headers, which we no longer need (about 1 KiB).
        request.headers.clear()
        if response.status_code != 101:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.edge.admit(self.ip)
        self._counted = True
        if self.edge.is_mqtt(self._path):
            assert self.edge.mqtt_handler is not None
            self.handler = self.edge.mqtt_handler(self)
            return
        sub = self.protocol.subprotocol
        encoding = Encoding(sub) if sub in _ENCODINGS else Encoding.JSON
        self.handler = WsSession(self.edge, self, encoding)

    # -- frames --------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._message(bytes(frame.data), opcode is Opcode.TEXT)
            else:
                self._frames, self._frames_text = [bytes(frame.data)], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            if self._frames is not None:
                self._frames.append(bytes(frame.data))
                if frame.fin:
                    data, self._frames = b"".join(self._frames), None
                    self._message(data, self._frames_text)
        elif opcode is Opcode.PONG and self.handler is not None:
            self.handler.on_pong(bytes(frame.data))

    def _message(self, data: bytes, text: bool) -> None:
        if self.handler is None or self.protocol.state is not State.OPEN:
            return  # nothing is handled once the closing handshake has begun
        if text:
            # The library checks UTF-8 only in its own receive path, which we bypass:
            # "MUST _Fail the WebSocket Connection_" with 1007 (RFC 6455 sections 8.1, 7.4.1)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_DATA, "invalid UTF-8 in a text frame")
                return
        self.handler.on_message(data, text)

    # -- writing and closing --------------------------------------------------------------

    def send_data(self) -> None:
        """Write what the protocol produced (handshake, pongs, close frames)."""
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()  # half-close; the peer closes the TCP connection
            else:
                transport.close()
        if self.protocol.close_expected() and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                _CLOSE_TIMEOUT, transport.abort)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the transport is cut if it has not ended in time
        (a peer that stopped reading never answers)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
        self.send_data()
        if self._timer is None and self.transport is not None:
            self._timer = asyncio.get_running_loop().call_later(
                _CLOSE_TIMEOUT, self.transport.abort)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()


class WsEdge:
    def __init__(self, settings: Settings, node: Node, tokens: TokenAuthority, acl: Acl,
                 metrics: Metrics, notifier: Notifier, presence: Presence,
                 http_routes: Mapping[str, Callable[[Request], Response]] | None = None
                 ) -> None:
        # what sessions may do is the sessions layer's; the edge keeps its own settings
        self.ops = Operations(settings, node, tokens, acl, notifier, presence, metrics)
        self.settings, self.node, self.metrics = settings, node, metrics
        self.flusher = Flusher()
        self.sessions: set[WsSession] = set()
        self.connections = 0  # after the handshake (the gauge)
        self.frames_out = 0  # frames written by sessions (a plain int: hot path)
        # every TCP connection; a shutdown awaits the last one's end
        self.connections_open: ConnectionSet[WsConnection] = ConnectionSet()
        self.origins: list[str | None] | None = None
        if settings.ws.origins:
            self.origins = [*settings.ws.origins, None]  # non-browser clients send no Origin
        self._per_ip: Counter[str] = Counter()
        self.tasks = TaskSet("ws edge")  # session cleanups, awaited at shutdown
        self._server: asyncio.Server | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        # MQTT over WebSocket (set by the app when the MQTT broker runs)
        self.mqtt_handler: Callable[[WsConnection], Handler] | None = None
        self._routes = http_routes or {}
        self.track_signer = TrackSigner(tokens.derived_key("push-track"))
        register_wires(node)
        metrics.gauge("tidings_ws_connections", "open WebSocket connections",
                      lambda: float(self.connections))

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, ssl: Any = None) -> None:
        ws = self.settings.ws
        self._server = await asyncio.get_running_loop().create_server(
            lambda: WsConnection(self), ws.host, ws.port, ssl=ssl, reuse_address=True,
            reuse_port=self.settings.node.reuse_port or None, backlog=4096)
        if ws.ping_interval:
            self._keepalive_task = asyncio.get_running_loop().create_task(
                self._keepalive(ws.ping_interval))

    async def _keepalive(self, interval: float) -> None:
        """Ping every session once per ``interval``; close those whose last ping
        went unanswered. One task for the node, none per connection."""
        while True:
            await asyncio.sleep(interval)
            for session in list(self.sessions):
                session.keepalive()

    def is_mqtt(self, path: str) -> bool:
        mqtt_path = self.settings.mqtt.websocket_path
        return bool(mqtt_path) and self.mqtt_handler is not None and path == mqtt_path

    def process_request(self, conn: WsConnection, request: Request) -> Response | None:
        """Our answer to a request before the upgrade; None lets the upgrade go on."""
        path = request.path.split("?", 1)[0]
        if path == self.settings.ws.path or self.is_mqtt(path):
            if self._per_ip[conn.ip] >= self.settings.ws.max_connections_per_ip:
                self.metrics.inc("tidings_errors_total", code="too_many_connections")
                return _plain(http.HTTPStatus.TOO_MANY_REQUESTS,
                              b"too many connections from this address\n")
            return None
        if path == PUSH_TRACK_PATH:
            return self.push_track(request)
        if self.settings.ws.demo_page:
            route = self._routes.get(path)  # the demo page's helpers (/dev/token)
            if route is not None:
                return route(request)
            return static_response(path)
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")

    def push_track(self, request: Request) -> Response:
        """``GET /push/track?u=&n=&e=&t=``: the service worker's report of a shown
        notification (:mod:`tidings.push.track`): 204 once the signature holds
        (the event is recorded in the background, once per user and event), 403
        for a bad signature, 400 for a malformed link. Any origin may send it
        (the signature is the credential), so the answer allows CORS."""
        query = parse_qs(urlsplit(request.path).query)
        args = {k: v[0] for k, v in query.items() if len(v) == 1 and len(v[0]) <= 256}
        user, nid, event, token = (args.get(k, "") for k in ("u", "n", "e", "t"))
        if not (user and nid and token) or event not in TRACK_EVENTS:
            return _plain(http.HTTPStatus.BAD_REQUEST, b"u, n, e and t are required\n",
                          cors=True)
        if not self.track_signer.verify(user, nid, token):
            self.metrics.inc("tidings_errors_total", code="bad_track_signature")
            return _plain(http.HTTPStatus.FORBIDDEN, b"bad signature\n", cors=True)
        self.tasks.spawn(self._record_track(user, nid, event))
        return _plain(http.HTTPStatus.NO_CONTENT, b"", cors=True)

    async def _record_track(self, user: str, nid: str, event: str) -> None:
        try:
            await self.ops.track(user, nid, event)
        except TidingsError as e:  # the store is down: the report is lost, nothing else
            log.info("push track report not recorded: %s", e.code)

    def admit(self, ip: str) -> None:
        self._per_ip[ip] += 1
        self.connections += 1
        self.metrics.inc("tidings_connections_total", edge="ws")

    def release(self, ip: str) -> None:
        self.connections -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; tell every client to reconnect; close 1001; wait up to
        ``grace`` seconds for the connections to end, then cut the rest."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for s in list(self.sessions):
            s.goodbye("shutdown")
        for conn in list(self.connections_open):
            if conn.handler is None or not isinstance(conn.handler, WsSession):
                conn.close(CLOSE_GOING_AWAY, "shutdown")
        try:
            async with asyncio.timeout(grace):
                await self.connections_open.wait_empty()
        except TimeoutError:
            log.warning("connections still open after %.1fs; dropping them", grace)
            for conn in list(self.connections_open):
                if conn.transport is not None:
                    conn.transport.abort()
        await self.tasks.close(grace=grace)


def static_response(path: str) -> Response:
    """Files of the demo page and its JS client (:mod:`tidings.demo_files`)."""
    name = "index.html" if path in ("/", "") else path.lstrip("/")
    if ".." in name.split("/") or name.startswith("."):
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")
    body = demo_file(name)
    if body is None:
        return _plain(http.HTTPStatus.NOT_FOUND, b"not found\n")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype == "application/javascript":
        ctype += "; charset=utf-8"
    return _plain(http.HTTPStatus.OK, body, ctype)


def _plain(status: http.HTTPStatus, body: bytes, ctype: str = "text/plain; charset=utf-8",
           *, cors: bool = False) -> Response:
    # The connection ends after this response (only an upgrade keeps it): say so,
    # or a client that pools connections reuses one the server has closed.
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff"),
                       ("Connection", "close")])
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    return Response(status.value, status.phrase, headers, body)
