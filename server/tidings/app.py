"""Composition root: build a node from settings, start and stop its listeners."""

from __future__ import annotations

import asyncio
import collections.abc
import errno
import fcntl
import http
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .api import build_app
from .auth import Acl, ApiKeys, TokenAuthority
from .bus.base import Bus
from .bus.memory import MemoryBus
from .bus.redis import RedisBus
from .clock import Clock, as_clock
from .config import Settings
from .edges.mqtt import MqttBroker, serve_websocket
from .edges.ws import WsEdge
from .errors import TidingsError, Unavailable
from .events import EventLog, WebhookSink
from .health import StoreHealth
from .metrics import Metrics
from .node import Node
from .notify import Notifier
from .plumbing import TaskSet
from .preferences import Rules
from .presence import Presence, Seen
from .presence import webhook_sink as presence_webhook
from .protocol.mqtt.properties import PROPERTIES_MAP
from .push.channel import PushChannel
from .push.track import TrackSigner
from .redis_wire import parse_redis_url
from .store.base import Store
from .store.redis import RedisStore
from .store.sqlite import SqliteStore
from .sweeper import Sweeper

__all__ = ["App", "DataFolderLock", "Secrets", "SecretsError", "StartupError",
           "exposed_listeners", "load_secrets", "read_secrets"]

log = logging.getLogger("tidings")


@dataclass(frozen=True)
class Secrets:
    jwt_secret: str
    api_keys: list[str]
    dev_key: bool  # True: the API key was made here for development
    dev_secret: bool = False  # True: the JWT secret was made here for development

    def __repr__(self) -> str:
        return (f"Secrets(api_keys={len(self.api_keys)}, dev_key={self.dev_key}, "
                f"dev_secret={self.dev_secret})")


def _is_loopback(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable from this machine only.
    An empty host, a wildcard address or a name other than ``localhost`` is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposed_listeners(settings: Settings) -> list[str]:
    """The settings of every listener that is not on loopback (``ws.host`` ...)."""
    hosts = {"ws.host": settings.ws.host, "api.host": settings.api.host}
    if settings.mqtt.enabled:  # the TLS listener (mqtt.tls_port) binds mqtt.host too
        hosts["mqtt.host"] = settings.mqtt.host
    return [f"{name} = {host!r}" for name, host in hosts.items() if not _is_loopback(host)]


class StartupError(Exception):
    """A node cannot start as configured; the message names the setting, file or
    folder to fix (the CLI prints it and exits 1)."""


class SecretsError(StartupError):
    """The secrets file cannot be read, or a command that must not make one found none."""


def secrets_path(settings: Settings) -> Path:
    return Path(settings.store.path) / "secrets.json"


def read_secrets(settings: Settings) -> dict[str, str]:
    """What ``secrets.json`` in the data folder holds (``{}`` when there is none).

    Never creates anything. A file that is not a JSON object of strings is an
    error naming the file, never a traceback (and never quoting its contents).
    """
    path = secrets_path(settings)
    try:
        stored = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SecretsError(f"cannot read the secrets file {path}: {e.strerror}") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise SecretsError(f"the secrets file {path} is corrupt (not JSON); restore it "
                           "from a backup, or remove it to make new secrets (tokens and "
                           "keys made with the old ones stop working)") from None
    if not isinstance(stored, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in stored.items()):
        raise SecretsError(f"the secrets file {path} is corrupt (not a JSON object of "
                           "strings)")
    return stored


def load_secrets(settings: Settings) -> Secrets:
    """The JWT secret and API keys: from settings, else made once and kept in the data folder.

    The file is created mode 0600 so other local users cannot read it. Only a
    server makes it: ``tidings token`` and ``publish`` use :func:`read_secrets`.
    """
    folder = Path(settings.store.path)
    path = secrets_path(settings)
    stored: dict[str, str] = {}
    need = not settings.auth.jwt_secret or not settings.api.keys
    if need:
        stored = read_secrets(settings)
        changed = False
        if not settings.auth.jwt_secret and "jwt_secret" not in stored:
            stored["jwt_secret"] = secrets.token_urlsafe(32)
            changed = True
        if not settings.api.keys and "dev_api_key" not in stored:
            stored["dev_api_key"] = "dev_" + secrets.token_urlsafe(24)
            changed = True
        if changed:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(stored, f)
    return Secrets(
        jwt_secret=settings.auth.jwt_secret or stored["jwt_secret"],
        api_keys=list(settings.api.keys) or [stored["dev_api_key"]],
        dev_key=not settings.api.keys,
        dev_secret=not settings.auth.jwt_secret,
    )


class DataFolderLock:
    """An exclusive ``flock`` on ``tidings.lock`` in the data folder, held by
    ``tidings serve`` on the SQLite store: a second server on the same folder
    would otherwise start silently and split deliveries with the first. The
    kernel drops the lock when the process dies, so a crash leaves nothing stale.
    (The CLI takes it, not :class:`App`: tests run several nodes on one folder.)
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "tidings.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StartupError(f"the data folder {self.folder} is in use by another "
                               f"tidings serve{who}; stop it, or set store.path "
                               "(TIDINGS_STORE_PATH) to another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def _listen_error(e: OSError, settings: list[tuple[str, str, int]]) -> StartupError:
    """``ws.port 8080 is in use``: a failed bind named by the setting that asked for it.

    ``settings`` holds (port setting, host, port) for each socket the failed
    call binds; the error text names the address, which picks the setting.
    """
    name, host, port = next((c for c in settings if f", {c[2]})" in str(e)), settings[0])
    host_setting = name.split(".")[0] + ".host"
    if e.errno == errno.EADDRINUSE:
        why = f"{name} {port} is in use (on {host})"
    elif e.errno == errno.EADDRNOTAVAIL:
        why = f"{host_setting} {host} is not an address of this machine ({name} {port})"
    elif e.errno == errno.EACCES:
        why = f"{name} {port} on {host} needs privileges this process lacks"
    else:
        why = f"{name} {port} on {host}: {e.strerror or e}"
    return StartupError(f"cannot listen: {why}")


async def _listen(start: collections.abc.Awaitable[None],
                  settings: list[tuple[str, str, int]]) -> None:
    """Await a listener's start; a failed bind becomes a :class:`StartupError`
    naming the setting (see :func:`_listen_error`)."""
    try:
        await start
    except OSError as e:
        raise _listen_error(e, settings) from None


def _tls(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _make_store(settings: Settings, clock: Callable[[], float] = time.time) -> Store:
    if settings.store.backend == "sqlite":
        return SqliteStore(settings.store.path, idempotency_ttl=settings.store.idempotency_ttl,
                           max_inbox=settings.notify.max_inbox, clock=clock,
                           meta_codec=PROPERTIES_MAP)  # kept with retained messages
    if settings.store.backend == "redis":
        # redis://host:port/db (one Redis) or redis+cluster://host:port (a Redis Cluster);
        # MQTT 5.0 properties ride with announcements through the meta codec
        return RedisStore(settings.redis.url, idempotency_ttl=settings.store.idempotency_ttl,
                          meta_codec=PROPERTIES_MAP, max_inbox=settings.notify.max_inbox,
                          clock=clock)
    raise Unavailable(f"store backend {settings.store.backend!r} is not available in this build")


def _make_bus(settings: Settings) -> Bus:
    if settings.bus.backend == "memory":
        return MemoryBus()
    if settings.bus.backend == "redis":
        url, cluster = parse_redis_url(settings.redis.url)
        return RedisBus(url, cluster=cluster, meta_codec=PROPERTIES_MAP)
    raise Unavailable(f"bus backend {settings.bus.backend!r} is not available in this build")


class App:
    """One node with its listeners. ``start()``, then ``stop()`` (idempotent).

    ``clock`` is the node's and the store's time (a :class:`~tidings.clock.Clock`
    or a function returning epoch seconds; tests pass a fake one to move time).
    """

    def __init__(self, settings: Settings, *,
                 clock: Clock | Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.secrets = load_secrets(settings)
        name = settings.node.name or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.clock = as_clock(clock)
        self.node = Node(name, _make_store(settings, self.clock.now), _make_bus(settings),
                         settings.history, self.metrics, self.clock)
        self.sweeper = Sweeper(self.node, settings.store.sweep_interval,
                               settings.store.sweep_batch)
        self.tokens = TokenAuthority(self.secrets.jwt_secret,
                                     max_ttl=settings.auth.max_token_ttl,
                                     default_ttl=settings.auth.default_token_ttl,
                                     cache=settings.auth.token_cache)
        self.acl = Acl(settings.acl)
        self.notifier = Notifier(self.node, settings.notify, settings.audience,
                                 Rules.from_settings(settings.preferences))
        self.presence = Presence(name, settings.presence, self.metrics, self.node.store,
                                 Seen(self.node.seen, settings.presence.seen_interval,
                                      self.metrics))
        self.notifier.sender.online = self.presence.local_users
        self.node.limit_user_subscriptions(settings.topics.max_user_subscriptions)
        self.node.max_group = settings.limits.max_publish_group
        self.node.max_group_bytes = settings.limits.max_message_size
        self.store_health = StoreHealth(self.metrics)  # the store reports its commits
        self.node.store.monitor = self.store_health
        # /dev/token hands anyone a token for any user: only on a development
        # node, where the secrets were made here and nothing listens beyond loopback
        self.exposed = exposed_listeners(settings)
        dev = self.secrets.dev_key and self.secrets.dev_secret and not self.exposed
        routes = {"/dev/token": self._dev_token} if dev else {}
        self.ws = WsEdge(settings, self.node, self.tokens, self.acl, self.metrics,
                         self.notifier, self.presence, routes)
        self.mqtt: MqttBroker | None = None
        if settings.mqtt.enabled:
            self.mqtt = MqttBroker(settings, self.node, self.tokens, self.acl, self.notifier,
                                   self.presence, self.metrics)
            broker = self.mqtt
            self.ws.mqtt_handler = lambda conn: serve_websocket(broker, conn)
        self.metrics.counter_fn(
            "tidings_messages_out_total", "frames and packets written to clients",
            lambda: float(self.ws.frames_out + (self.mqtt.frames_out if self.mqtt else 0)))
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopped = False
        self._events_http: aiohttp.ClientSession | None = None
        for name_, text in (
            ("tidings_connections_total", "connections accepted, by edge"),
            ("tidings_messages_in_total", "messages published"),
            ("tidings_deliveries_total", "messages handed to subscribers"),
            ("tidings_slow_consumers_total", "sessions closed for exceeding the outbound bound"),
            ("tidings_errors_total", "errors by code"),
            ("tidings_notifications_total", "notifications accepted by /v1/notify"),
            ("tidings_notification_outcomes_total",
             "per user and notification, what the preferences decided, by outcome"),
            ("tidings_swept_total", "expired rows deleted by the sweeper, by kind"),
        ):
            self.metrics.describe(name_, text)

    def exposure_warning(self) -> str | None:
        """A warning when a listener is beyond loopback while the API key or the JWT
        secret is the one made for the data folder (anyone given the printed key or
        a sample token is in); None when there is nothing to warn about."""
        made = [name for name, dev in (("API key", self.secrets.dev_key),
                                       ("JWT secret", self.secrets.dev_secret)) if dev]
        if not self.exposed or not made:
            return None
        return (f"WARNING: listening beyond loopback ({', '.join(self.exposed)}) with the "
                f"development {' and '.join(made)} made for this data folder "
                f"({self.settings.store.path}/secrets.json): set api.keys and "
                f"auth.jwt_secret before a node is reachable from a network. "
                f"/dev/token is off.")

    def _dev_token(self, request: Request) -> Response:
        """``GET /dev/token?user=NAME``: a token for the demo page, in development only.

        Served only while neither API keys nor a JWT secret are configured (both
        were made for this data folder) and every listener (WS, API, MQTT) is
        on loopback: a deployment with real keys, or one reachable from the
        network, never has this route.
        """
        query = parse_qs(request.path.partition("?")[2])
        user = (query.get("user") or ["demo"])[0]
        try:
            token = self.tokens.issue(user, ttl=min(3600, self.settings.auth.max_token_ttl),
                                      publish=["demo/#", "news/#"])
            body, status = json.dumps({"token": token, "user": user}).encode(), 200
        except TidingsError as e:
            body, status = json.dumps({"error": e.to_dict()}).encode(), e.status
        headers = Headers([("Content-Type", "application/json"),
                           ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                           ("Connection", "close")])  # the WS port answers one request
        return Response(status, http.HTTPStatus(status).phrase, headers, body)

    @property
    def ws_port(self) -> int:
        return self.ws.port

    @property
    def mqtt_port(self) -> int:
        assert self.mqtt is not None
        return self.mqtt.ports[0]

    @property
    def api_port(self) -> int:
        assert self._site is not None and self._site._server is not None
        server = cast(asyncio.Server, self._site._server)
        return int(server.sockets[0].getsockname()[1])

    async def ready(self) -> bool:
        """Bus connected, store answering, and its last commit (the ping is one,
        a write on SQLite) succeeded: a store that cannot write is not ready."""
        return self.node.bus.healthy and await self.node.store.ping() \
            and self.store_health.ok

    def _event_log(self) -> EventLog:
        """The node's event stream (events.py): to the store, and to its subscribers, the
        events webhook and the presence webhook, where set."""
        e = self.settings.events
        sinks: list[WebhookSink] = []
        if e.webhook or self.settings.presence.webhook:
            http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
            self._events_http = http
            if e.webhook:
                sinks.append(WebhookSink(e.webhook, http, secret=e.webhook_secret,
                                         batch=e.batch, linger=e.linger, retries=e.retries,
                                         queue_max=e.queue_max, metrics=self.metrics))
            # the presence webhook: one more subscriber, of online/offline only
            presence = presence_webhook(self.settings.presence, http, self.metrics)
            if presence is not None:
                sinks.append(presence)
        return EventLog(self.node.name, self.node.store, keep=e.retention, subscribers=sinks,
                        metrics=self.metrics)

    async def start(self) -> None:
        s = self.settings
        await self.node.start()
        self.node.events = self.presence.events = self._event_log()
        try:
            self.node.push = await PushChannel.open(s.push, s.store.path, self.node.store,
                                                    self.metrics)
        except ValueError as e:  # a VAPID key file that is not one: say which
            raise StartupError(str(e)) from None
        self.node.push.events = self.node.events
        self.node.push.connected = self.presence.devices
        self.node.push.clock = self.clock  # the fallback's waits run on the node's time
        self.node.push.signer = TrackSigner(self.tokens.derived_key("push-track"))
        self.sweeper.start()
        self.notifier.sender.start()  # missed schedules and interrupted sends fire now
        if self.mqtt is not None:
            await _listen(self.mqtt.start(), [("mqtt.port", s.mqtt.host, s.mqtt.port),
                                              ("mqtt.tls_port", s.mqtt.host, s.mqtt.tls_port)])
        await _listen(self.ws.start(ssl=_tls(s.ws.tls_cert, s.ws.tls_key)),
                      [("ws.port", s.ws.host, s.ws.port)])
        api = build_app(s, self.node, ApiKeys(self.secrets.api_keys), self.tokens,
                        self.metrics, self.ready, self.notifier, self.presence)
        # keepalive_timeout: aiohttp closes a connection whose next request has not
        # been fully received this long after the connection opened or the last
        # response, which is what api.header_timeout promises (slow-header clients);
        # lingering_time 0: a body cut short by api.body_timeout is not read on.
        self._runner = web.AppRunner(api, access_log=None, handle_signals=False,
                                     keepalive_timeout=s.api.header_timeout, lingering_time=0,
                                     shutdown_timeout=s.node.shutdown_timeout)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, s.api.host, s.api.port,
                                 reuse_port=s.node.reuse_port or None,
                                 ssl_context=_tls(s.api.tls_cert, s.api.tls_key))
        await _listen(self._site.start(), [("api.port", s.api.host, s.api.port)])
        warning = self.exposure_warning()
        if warning is not None:
            log.warning("%s", warning)
        log.info("node %s: ws on %s:%d, api on %s:%d", self.node.name, s.ws.host,
                 self.ws_port, s.api.host, self.api_port)

    async def stop(self) -> None:
        """Stop accepting, ask clients to reconnect, close 1001, flush the store."""
        if self._stopped:
            return
        self._stopped = True
        timeout = self.settings.node.shutdown_timeout
        # The edges and the API wind down side by side against one deadline, so
        # node.shutdown_timeout bounds the whole stop, not each part of it.
        # A step that fails is logged by the task set; one still busy at the
        # deadline is cancelled.
        steps = TaskSet("shutdown")
        steps.spawn(self.ws.shutdown(timeout))
        if self.mqtt is not None:
            steps.spawn(self.mqtt.shutdown(timeout))
        if self._runner is not None:
            steps.spawn(self._runner.cleanup())
        parts = len(steps)
        try:
            async with asyncio.timeout(timeout):
                await steps.wait()
        except TimeoutError:
            log.warning("shutdown: %d of %d parts still busy after %.1fs; cut short",
                        len(steps), parts, timeout)
        await steps.close()
        await self.presence.close()
        await self.notifier.sender.close()
        await self.sweeper.close()
        if self.node.push is not None:
            await self.node.push.close()
        if self.node.events is not None:
            await self.node.events.close()
            if self._events_http is not None:
                await self._events_http.close()
        await self.node.close()
        log.info("node %s stopped", self.node.name)
