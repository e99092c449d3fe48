"""Composition root: build a node from settings, start and stop its listeners."""

from __future__ import annotations

import asyncio
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

from aiohttp import web
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .api.http import build_app
from .auth import Acl, ApiKeys, TokenAuthority
from .bus.base import Bus
from .bus.memory import MemoryBus
from .bus.redis import RedisBus
from .config import Settings
from .edges.mqtt import MqttBroker, serve_websocket
from .edges.ws import WsEdge
from .errors import TidingsError, Unavailable
from .metrics import Metrics
from .node import Node
from .notify import Notifier
from .plumbing import TaskSet
from .presence import Presence
from .protocol.mqtt.properties import PROPERTIES_MAP
from .redis_wire import parse_redis_url
from .store.base import Store
from .store.redis import RedisStore
from .store.sqlite import SqliteStore
from .sweeper import Sweeper

__all__ = ["App", "Secrets", "exposed_listeners", "load_secrets"]

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


def load_secrets(settings: Settings) -> Secrets:
    """The JWT secret and API keys: from settings, else made once and kept in the data folder.

    The file is created mode 0600 so other local users cannot read it.
    """
    folder = Path(settings.store.path)
    path = folder / "secrets.json"
    stored: dict[str, str] = {}
    need = not settings.auth.jwt_secret or not settings.api.keys
    if need:
        if path.exists():
            stored = json.loads(path.read_text())
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


def _tls(cert: str, key: str) -> ssl.SSLContext | None:
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _make_store(settings: Settings, clock: Callable[[], float] = time.time) -> Store:
    if settings.store.backend == "sqlite":
        return SqliteStore(settings.store.path, idempotency_ttl=settings.store.idempotency_ttl,
                           max_inbox=settings.notify.max_inbox, clock=clock)
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

    ``clock`` is the store's time (tests pass a fake one to expire things).
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.secrets = load_secrets(settings)
        name = settings.node.name or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = Metrics()
        self.node = Node(name, _make_store(settings, clock), _make_bus(settings),
                         settings.history, self.metrics)
        self.sweeper = Sweeper(self.node, settings.store.sweep_interval,
                               settings.store.sweep_batch)
        self.tokens = TokenAuthority(self.secrets.jwt_secret,
                                     max_ttl=settings.auth.max_token_ttl,
                                     default_ttl=settings.auth.default_token_ttl)
        self.acl = Acl(settings.acl)
        self.notifier = Notifier(self.node, settings.notify)
        self.presence = Presence(name, settings.presence, self.metrics, self.node.store)
        self.node.limit_user_subscriptions(settings.topics.max_user_subscriptions)
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
        for name_, text in (
            ("tidings_connections_total", "connections accepted, by edge"),
            ("tidings_messages_in_total", "messages published"),
            ("tidings_deliveries_total", "messages handed to subscribers"),
            ("tidings_slow_consumers_total", "sessions closed for exceeding the outbound bound"),
            ("tidings_errors_total", "errors by code"),
            ("tidings_notifications_total", "notifications accepted by /v1/notify"),
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
                           ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
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
        return self.node.bus.healthy and await self.node.store.ping()

    async def start(self) -> None:
        s = self.settings
        await self.node.start()
        self.sweeper.start()
        if self.mqtt is not None:
            await self.mqtt.start()
        await self.ws.start(ssl=_tls(s.ws.tls_cert, s.ws.tls_key))
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
        await self._site.start()
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
        await self.sweeper.close()
        await self.node.close()
        log.info("node %s stopped", self.node.name)
