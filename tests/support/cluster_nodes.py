"""Tidings nodes as subprocesses for cluster tests: several nodes on one Redis.

Each :class:`TidingsNode` is ``python -m tidings.cli serve`` on free loopback
ports (WS, HTTP API, MQTT) with the Redis backends
(``TIDINGS_BUS_BACKEND=redis TIDINGS_STORE_BACKEND=redis TIDINGS_REDIS_URL``),
the test secrets of ``conftest`` and its own data folder and log file. It is
stopped by its PID: SIGTERM (a graceful stop), or SIGKILL (a node that dies
without a word). A node started with ``workers=N`` is ``serve --workers N``:
its workers share the ports, and it leads its own process group, which is
what cleanup kills if the parent cannot stop them.

:class:`Cluster` is the async side for one test: an HTTP session for the API
of any node, real ``websockets`` clients (``conftest.Client``) connected to
any node, and tokens signed with the nodes' secret. The ``tidings_nodes``
fixture starts nodes for one test and stops every one of them after it.

Startup is synchronous (it polls ``/readyz``), so a module-scoped fixture can
start nodes once for several tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from conftest import API_KEY, JWT_SECRET, WAIT, Client, free_port
from support.redis_servers import RedisClusterProcs, RedisServer
from tidings.auth import TokenAuthority

__all__ = [
    "Cluster",
    "NodeFactory",
    "TidingsNode",
    "cluster",
    "masters",
    "redis_env",
    "tidings_nodes",
    "wait_for",
]


def masters(target: RedisServer | RedisClusterProcs) -> list[RedisServer]:
    """The one server, or every master of a cluster."""
    return target.servers if isinstance(target, RedisClusterProcs) else [target]


def redis_env(url: str, **settings: str) -> dict[str, str]:
    """The environment that puts a node on the Redis bus and store at ``url``,
    plus ``settings`` given as ``TIDINGS_*`` names (``TIDINGS_PRESENCE_TTL="2"``)."""
    return {"TIDINGS_BUS_BACKEND": "redis", "TIDINGS_STORE_BACKEND": "redis",
            "TIDINGS_REDIS_URL": url, **settings}


async def wait_for(check: Any, within: float = WAIT, what: str = "condition") -> Any:
    """Poll ``check()`` (sync or async) until it returns something truthy; return it."""
    deadline = time.monotonic() + within
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.1f}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class TidingsNode:
    """One ``tidings serve`` process (or ``serve --workers N``) on loopback ports."""

    name: str
    folder: Path
    env: dict[str, str]
    ws_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    workers: int = 1
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "node.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _environ(self) -> dict[str, str]:
        # the developer's own TIDINGS_* settings must not leak into test nodes
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update({
            "TIDINGS_NODE_NAME": self.name,
            "TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_WS_PORT": str(self.ws_port),
            "TIDINGS_API_HOST": "127.0.0.1", "TIDINGS_API_PORT": str(self.api_port),
            "TIDINGS_MQTT_HOST": "127.0.0.1", "TIDINGS_MQTT_PORT": str(self.mqtt_port),
            "TIDINGS_STORE_PATH": str(self.folder / "data"),
            "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET, "TIDINGS_API_KEYS": API_KEY,
            "TIDINGS_NODE_SHUTDOWN_TIMEOUT": "1", "TIDINGS_MQTT_SYS_INTERVAL": "0",
        })
        env.update(self.env)
        return env

    def launch(self) -> None:
        """Start the process; :meth:`wait_ready` waits until it serves."""
        self.folder.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "tidings.cli", "serve"]
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self._environ(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 now."""
        try:
            with urllib.request.urlopen(self.api_url + "/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = WAIT * 3) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited: {self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} not ready in {timeout}s: "
                                   f"{self.log()[-3000:]}")
            time.sleep(0.05)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM and wait (the node says goodbye to its clients); SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=WAIT * 2)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL: the node dies at once, without closing anything."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=WAIT)
        self._reap_group()

    def _reap_group(self) -> None:
        """``--workers``: workers left behind by a parent that died are in its group."""
        assert self.proc is not None
        if self.workers > 1:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class NodeFactory:
    """Starts nodes for one test (or one module) and stops all of them after it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self.nodes: list[TidingsNode] = []

    def start(self, count: int, env: dict[str, str], *, names: list[str] | None = None,
              workers: int = 1) -> list[TidingsNode]:
        """``count`` nodes with ``env`` (see :func:`redis_env`), started in parallel."""
        made = []
        for i in range(count):
            name = names[i] if names else f"node{len(self.nodes) + 1}"
            n = TidingsNode(name, self._folder / name, dict(env), workers=workers)
            self.nodes.append(n)
            made.append(n)
            n.launch()
        for n in made:
            n.wait_ready()
        return made

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class Cluster:
    """The client side of a test: API calls, WebSocket clients and tokens for any node."""

    def __init__(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT * 2))
        self.tokens = TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=3600)
        self.clients: list[Client] = []

    def token(self, user: str, **kw: Any) -> str:
        return self.tokens.issue(user, **kw)

    async def api(self, node: TidingsNode, method: str, path: str, json: Any = None
                  ) -> tuple[int, Any]:
        """One API call; (status, parsed JSON or text)."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        body = orjson.dumps(json) if json is not None else None
        async with self.http.request(method, node.api_url + path, data=body,
                                     headers=headers) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, raw.decode(errors="replace")

    async def publish(self, node: TidingsNode, topic: str, data: Any) -> str:
        status, body = await self.api(node, "POST", "/v1/publish", {"topic": topic,
                                                                     "data": data})
        assert status == 200, (status, body)
        return str(body["offset"])

    async def client(self, node: TidingsNode, user: str = "alice", **connect_args: Any
                     ) -> Client:
        """A WebSocket client on ``node``, connected as ``user`` (reply in ``.hello``)."""
        ws = await websockets.connect(node.ws_url, subprotocols=["tidings.v1.json"],  # type: ignore[list-item]
                                      max_size=None, open_timeout=WAIT)
        c = Client(ws)
        self.clients.append(c)
        args = {"token": self.token(user), **connect_args}
        reply = await c.request("connect", **args)
        assert reply["ok"], reply
        c.hello = reply
        return c

    async def close(self) -> None:
        for c in self.clients:
            with contextlib.suppress(TimeoutError, websockets.WebSocketException, OSError):
                await asyncio.wait_for(c.close(), WAIT)
        await self.http.close()


@pytest.fixture
def tidings_nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path / "nodes")
    try:
        yield factory
    finally:
        factory.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.close()
