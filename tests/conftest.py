"""Shared fixtures: a real Tidings node on free loopback ports, real clients.

``node`` starts the whole App in the test's event loop (real sockets, real
SQLite in a temp folder). ``server_process`` runs ``tidings serve`` as a
subprocess, for restart and signal tests. Time-based waits scale from
``WAIT`` (raise it with TIDINGS_TEST_WAIT on a slow machine).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from tidings import config
from tidings.app import App
from tidings.clock import Clock

# The helpers in tests/support/ assert too: their asserts get pytest's messages.
pytest.register_assert_rewrite("support")

WAIT = float(os.environ.get("TIDINGS_TEST_WAIT", "5"))
API_KEY = "test-key-0123456789"
JWT_SECRET = "test-secret-0123456789-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tmp_path: Path, **overrides: Any) -> config.Settings:
    """Settings for a test node: loopback, port 0, temp data folder, known secrets.

    ``overrides`` are ``section__key=value`` pairs, e.g. ``ws__outbound_buffer=4096``.
    """
    env = {
        "TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_WS_PORT": "0",
        "TIDINGS_API_HOST": "127.0.0.1", "TIDINGS_API_PORT": "0",
        "TIDINGS_MQTT_HOST": "127.0.0.1", "TIDINGS_MQTT_PORT": "0",
        "TIDINGS_STORE_PATH": str(tmp_path / "data"),
        "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET,
        "TIDINGS_API_KEYS": API_KEY,
        "TIDINGS_NODE_NAME": "test-node",
    }
    s = config.load(None, env)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        setattr(getattr(s, section), name, value)
    return s


@dataclass
class Node:
    """A running in-process node and helpers to talk to it."""

    app: App
    settings: config.Settings
    http: aiohttp.ClientSession
    clients: list[Any] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.app.ws_port}{self.settings.ws.path}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.app.api_port}"

    def token(self, user: str, **kw: Any) -> str:
        return self.app.tokens.issue(user, **kw)

    async def api(self, method: str, path: str, json: Any = None, *, key: str | None = API_KEY,
                  headers: dict[str, str] | None = None, data: bytes | None = None
                  ) -> tuple[int, Any]:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        body = orjson.dumps(json) if json is not None else data
        async with self.http.request(method, self.api_url + path, data=body, headers=h) as r:
            raw = await r.read()
            try:
                return r.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return r.status, raw.decode()

    async def publish(self, topic: str, data: Any, **kw: Any) -> str:
        status, body = await self.api("POST", "/v1/publish", {"topic": topic, "data": data, **kw})
        assert status == 200, body
        return str(body["offset"])

    async def client(self, user: str | None = "alice", *, connect: bool = True,
                     encoding: str = "json", **connect_args: Any) -> Client:
        proto = f"tidings.v1.{encoding}"
        ws = await websockets.connect(self.ws_url, subprotocols=[proto],  # type: ignore[list-item]
                                      max_size=None, open_timeout=WAIT)
        c = Client(ws, encoding)
        self.clients.append(c)
        if connect:
            args = dict(connect_args)
            if user is not None and "token" not in args:
                args["token"] = self.token(user)
            reply = await c.request("connect", **args)
            assert reply["ok"], reply
            c.hello = reply
        return c


class Client:
    """A real ``websockets`` client speaking the Tidings protocol."""

    def __init__(self, ws: Any, encoding: str = "json") -> None:
        self.ws = ws
        self.encoding = encoding
        self.hello: dict[str, Any] = {}
        self._next = 0
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int | None, asyncio.Future[dict[str, Any]]] = {}
        self._errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def encode(self, obj: Any) -> str | bytes:
        if self.encoding == "json":
            return orjson.dumps(obj).decode()
        import msgpack
        return bytes(msgpack.packb(obj, use_bin_type=True))

    def decode(self, raw: str | bytes) -> Any:
        if self.encoding == "json":
            return orjson.loads(raw)
        import msgpack
        return msgpack.unpackb(raw, raw=False)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                obj = self.decode(raw)
                if "type" in obj:
                    await self.pushes.put(obj)
                elif obj.get("id") in self._replies:
                    self._replies.pop(obj["id"]).set_result(obj)
                else:
                    await self._errors.put(obj)
        except websockets.ConnectionClosed:
            pass

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        self._next += 1
        rid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        await self.ws.send(self.encode({"op": op, "id": rid, **args}))
        return await asyncio.wait_for(fut, WAIT)

    async def unmatched(self) -> dict[str, Any]:
        """The next reply that matched no request (e.g. an error for an id-less frame)."""
        return await asyncio.wait_for(self._errors.get(), WAIT)

    async def push(self, within: float = WAIT) -> dict[str, Any]:
        return await asyncio.wait_for(self.pushes.get(), within)

    async def push_of(self, kind: str) -> dict[str, Any]:
        """The next push of ``type`` ``kind`` (e.g. ``notification``), skipping the
        others (the unread counts and events around it); each waits ``WAIT``."""
        while True:
            p = await self.push()
            if p["type"] == kind:
                return p

    async def no_push(self, within: float = 0.3) -> None:
        """Assert nothing arrives within ``within`` seconds (a bounded negative check)."""
        try:
            got = await asyncio.wait_for(self.pushes.get(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected push {got!r}")

    async def closed(self) -> tuple[int | None, str | None]:
        """Wait for the server to close; return (code, reason)."""
        await asyncio.wait_for(self._reader, WAIT)
        return self.ws.close_code, self.ws.close_reason

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def start_with(settings: config.Settings, clock: Clock | None = None) -> Node:
    """A node from ready-made settings (e.g. with ``[[acl]]`` rules or from a TOML
    file); ``clock`` (a fake one) is its time: the sender, quiet hours, caps, the
    push fallback and the store read it."""
    app = App(settings) if clock is None else App(settings, clock=clock)
    await app.start()
    return Node(app, settings, aiohttp.ClientSession())


async def start_node(tmp_path: Path, *, clock: Clock | None = None, **overrides: Any) -> Node:
    return await start_with(make_settings(tmp_path, **overrides), clock)


async def stop_node(n: Node) -> None:
    for c in n.clients:
        await c.close()
    await n.http.close()
    await n.app.stop()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = await start_node(tmp_path)
    try:
        yield n
    finally:
        await stop_node(n)


MakeNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[MakeNode]:
    """``await make_node(ws__max_subscriptions=2)``: nodes with setting overrides, each
    in its own data folder, stopped after the test."""
    nodes: list[Node] = []

    async def make(**overrides: Any) -> Node:
        n = await start_node(tmp_path / f"node{len(nodes)}", **overrides)
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            await stop_node(n)


@dataclass
class ServerProcess:
    """``tidings serve`` as a subprocess (for restart and signal tests)."""

    data: Path
    env: dict[str, str]
    ws_port: int
    api_port: int
    proc: subprocess.Popen[str] | None = None
    output: str = ""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidings.cli", "serve"], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + WAIT * 3
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.api_port), timeout=0.2), \
                        socket.create_connection(("127.0.0.1", self.ws_port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read() if self.proc.stdout else ""
                    raise RuntimeError(f"server exited: {out}") from None
                time.sleep(0.05)
        raise RuntimeError("server did not start listening")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=WAIT * 3)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.output += self.proc.stdout.read() if self.proc.stdout else ""
        return rc

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    ws_port, api_port = free_port(), free_port()
    # the developer's own TIDINGS_* settings must not leak into the test server
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update({
        "TIDINGS_WS_PORT": str(ws_port), "TIDINGS_API_PORT": str(api_port),
        "TIDINGS_MQTT_PORT": str(free_port()),
        "TIDINGS_STORE_PATH": str(tmp_path / "data"),
        "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET, "TIDINGS_API_KEYS": API_KEY,
        "TIDINGS_NODE_NAME": "proc-node",
    })
    sp = ServerProcess(tmp_path / "data", env, ws_port, api_port)
    try:
        yield sp
    finally:
        if sp.proc is not None and sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait()
