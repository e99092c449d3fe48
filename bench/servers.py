"""The servers under test, each started fresh for a run and stopped by its own PID.

A :class:`Target` is one server speaking one subscriber protocol:

=============  =======================================================  ==========
name           what runs                                                subscribers
=============  =======================================================  ==========
tidings        ``python -m tidings.cli serve`` (TIDINGS_* environment)   WebSocket
tidings-mqtt   the same, subscribers on its MQTT listener                 MQTT
websockets     ``refservers/ws_broadcast.py`` (websockets + uvloop)      WebSocket
node-ws        ``refservers/node_ws/server.js`` (Node, ``ws``)           WebSocket
nats-ws        Debian's ``nats-server``, websocket listener               WebSocket
nats-mqtt      ``nats-server``, MQTT listener (needs JetStream)           MQTT
mosquitto      Debian's ``mosquitto`` (duplicates allowed, TCP_NODELAY)   MQTT
flood          ``refservers/flood.py``: the load generator's ceiling      either
=============  =======================================================  ==========

Every server process is started under ``taskset -c SERVER_CPU`` (taskset
execs, so the PID we hold is the server's own: that is the PID whose
``VmRSS`` is read and the one that is signalled at the end: SIGTERM, then
SIGKILL after a bounded wait). Ports are free loopback ports picked at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from loadgen import Endpoint
from publishers import (
    HttpBatchPublisher,
    HttpPublisher,
    MqttPublisher,
    NatsPublisher,
    PlainWsPublisher,
    Publisher,
    TidingsWsPublisher,
)

__all__ = ["TARGETS", "Target", "free_port", "make_target", "rss_bytes", "tool_versions"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
API_KEY = "bench-key-" + secrets.token_hex(8)
JWT_SECRET = "bench-secret-" + secrets.token_hex(16)

# Which scenarios each target can run (see harness.ALL_SCENARIOS).
_BROADCAST_ONLY = frozenset({"broadcast", "latency", "idle", "connect"})
_ALL = frozenset({"broadcast", "latency", "idle", "connect", "personal"})
_TIDINGS_WS = _ALL | {"http-batch", "http-single"}
_MQTT_QOS1 = _ALL | {"qos1"}


def free_port() -> int:
    """A free loopback TCP port (bound and released; the server binds it next)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/PID/status (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on {port} within {timeout}s")


class Target:
    """One server process and how clients reach it."""

    name = ""
    protocol = "ws"  # subscriber protocol: "ws" or "mqtt"
    scenarios: frozenset[str] = _BROADCAST_ONLY

    def __init__(self, server_cpu: int) -> None:
        self.server_cpu = server_cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self._log: IO[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def available(self) -> str | None:
        """None when this machine can run the target, else why not."""
        return None

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def ports(self) -> list[int]:
        return [self.port]

    def start(self, timeout: float = 20.0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        argv, env = self.command()
        self._log = open(self.tmp / "server.log", "wb")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(self.server_cpu), *argv], env={**os.environ, **env},
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.tmp)
        try:
            for port in self.ports():
                _wait_port(port, self.proc, timeout, self.name)
        except BaseException:
            self.stop()
            raise

    def log_tail(self, n: int = 2000) -> str:
        if self.tmp is None:
            return ""
        try:
            return (self.tmp / "server.log").read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM our process, SIGKILL it if it lingers; remove the temp folder."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def endpoint(self, topic: str) -> Endpoint:
        raise NotImplementedError

    def publisher(self, scenario: str) -> Publisher:
        raise NotImplementedError

    def topic(self, personal: bool) -> str:
        return "bench/p/{i}" if personal else "bench/t"


class Tidings(Target):
    """``src``: the folder holding the ``tidings`` package (default: this checkout's
    ``server/``); e.g. a ``git archive`` of a commit, to measure it while the
    working tree changes."""

    name = "tidings"
    scenarios = _TIDINGS_WS
    src: Path = REPO / "server"

    def __init__(self, server_cpu: int) -> None:
        super().__init__(server_cpu)
        self.api_port = 0
        self.mqtt_port = 0

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.port, self.api_port, self.mqtt_port = free_port(), free_port(), free_port()
        assert self.tmp is not None
        env = {
            "TIDINGS_WS_HOST": HOST, "TIDINGS_WS_PORT": str(self.port),
            "TIDINGS_API_HOST": HOST, "TIDINGS_API_PORT": str(self.api_port),
            "TIDINGS_MQTT_HOST": HOST, "TIDINGS_MQTT_PORT": str(self.mqtt_port),
            "TIDINGS_STORE_PATH": str(self.tmp / "data"),
            "TIDINGS_API_KEYS": API_KEY,
            "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET,
            "TIDINGS_NODE_NAME": "bench",
            "TIDINGS_NODE_LOG_LEVEL": "WARNING",
            "TIDINGS_WS_MAX_CONNECTIONS_PER_IP": "100000",
            # every load connection comes from 127.0.0.1: N subscribers + a publisher
            "TIDINGS_MQTT_MAX_CONNECTIONS_PER_IP": "100000",
            "TIDINGS_WS_COMMANDS_PER_SECOND": "1000000",
            "TIDINGS_WS_COMMANDS_BURST": "1000000",
            "TIDINGS_WS_CONNECT_TIMEOUT": "60",
            "TIDINGS_WS_DEMO_PAGE": "false",
            "PYTHONPATH": str(self.src) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        return [sys.executable, "-m", "tidings.cli", "serve"], env

    def ports(self) -> list[int]:
        return [self.port, self.api_port]

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("tidings", HOST, self.port, "/ws", topic, JWT_SECRET)

    def publisher(self, scenario: str) -> Publisher:
        """Its own protocol: ``publish`` commands pipelined over one WebSocket, one
        message per frame; the HTTP API for the HTTP scenarios."""
        api = f"http://{HOST}:{self.api_port}"
        if scenario == "http-batch":
            return HttpBatchPublisher(api, API_KEY)
        if scenario == "http-single":  # 50 clients, each one request at a time
            return HttpPublisher(api, API_KEY, concurrency=50)
        return TidingsWsPublisher(HOST, self.port, JWT_SECRET)


class TidingsMqtt(Tidings):
    """The same Tidings node, its subscribers on MQTT 3.1.1 (token as password)."""

    name = "tidings-mqtt"
    protocol = "mqtt"
    scenarios = _MQTT_QOS1

    def available(self) -> str | None:
        edges = self.src / "tidings" / "edges"
        found = (edges / "mqtt.py").is_file() or (edges / "mqtt" / "__init__.py").is_file()
        return None if found else "this Tidings has no MQTT edge"

    def ports(self) -> list[int]:
        return [self.port, self.api_port, self.mqtt_port]

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("mqtt", HOST, self.mqtt_port, "/", topic, JWT_SECRET)

    def publisher(self, scenario: str) -> Publisher:
        """MQTT PUBLISH packets, one message each: QoS 1 for ``qos1``, else QoS 0."""
        return MqttPublisher(HOST, self.mqtt_port, JWT_SECRET, qos=int(scenario == "qos1"))


class WebsocketsRef(Target):
    name = "websockets"

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.port = free_port()
        return [sys.executable, str(HERE / "refservers" / "ws_broadcast.py"), str(self.port)], {}

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("plain", HOST, self.port, "/", topic)

    def publisher(self, scenario: str) -> Publisher:
        return PlainWsPublisher(f"ws://{HOST}:{self.port}/publish")


class NodeWs(Target):
    name = "node-ws"

    def available(self) -> str | None:
        if shutil.which("node") is None:
            return "node not installed"
        if not (HERE / "refservers" / "node_ws" / "node_modules" / "ws").is_dir():
            return "ws not installed (run bench/setup.sh)"
        return None

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.port = free_port()
        return ["node", str(HERE / "refservers" / "node_ws" / "server.js"), str(self.port),
                HOST], {}

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("plain", HOST, self.port, "/", topic)

    def publisher(self, scenario: str) -> Publisher:
        return PlainWsPublisher(f"ws://{HOST}:{self.port}/publish")


def _nats_binary() -> str | None:
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)


class NatsWs(Target):
    name = "nats-ws"
    scenarios = _ALL

    def __init__(self, server_cpu: int) -> None:
        super().__init__(server_cpu)
        self.client_port = 0

    def available(self) -> str | None:
        return None if _nats_binary() else "nats-server not installed (run bench/setup.sh)"

    def _config(self) -> str:
        self.client_port, self.port = free_port(), free_port()
        return (f'listen: "{HOST}:{self.client_port}"\n'
                'server_name: "bench"\n'
                'ping_interval: "10m"\n'
                f'websocket {{\n  listen: "{HOST}:{self.port}"\n  no_tls: true\n'
                '  compression: false\n}\n')

    def command(self) -> tuple[list[str], dict[str, str]]:
        assert self.tmp is not None
        conf = self.tmp / "nats.conf"
        conf.write_text(self._config())
        binary = _nats_binary()
        assert binary is not None
        return [binary, "-c", str(conf)], {}

    def ports(self) -> list[int]:
        return [self.client_port, self.port]

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("nats", HOST, self.port, "/", topic)

    def publisher(self, scenario: str) -> Publisher:
        return NatsPublisher(HOST, self.client_port)


class NatsMqtt(NatsWs):
    name = "nats-mqtt"
    protocol = "mqtt"

    def _config(self) -> str:
        assert self.tmp is not None
        self.client_port, self.port = free_port(), free_port()
        # nats-server's MQTT support keeps session state in JetStream.
        return (f'listen: "{HOST}:{self.client_port}"\n'
                'server_name: "bench"\n'
                'ping_interval: "10m"\n'
                f'jetstream {{\n  store_dir: "{self.tmp / "js"}"\n'
                '  max_memory_store: 268435456\n  max_file_store: 1073741824\n}\n'
                f'mqtt {{\n  listen: "{HOST}:{self.port}"\n}}\n')

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("mqtt", HOST, self.port, "/", topic)


def _mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


class Mosquitto(Target):
    name = "mosquitto"
    protocol = "mqtt"
    scenarios = _MQTT_QOS1

    def available(self) -> str | None:
        return None if _mosquitto_binary() else "mosquitto not installed (run bench/setup.sh)"

    def command(self) -> tuple[list[str], dict[str, str]]:
        assert self.tmp is not None
        self.port = free_port()
        conf = self.tmp / "mosquitto.conf"
        # allow_duplicate_messages true and set_tcp_nodelay true: without them
        # mosquitto compares every delivery with every queued client (issue 6).
        conf.write_text(
            f"listener {self.port} {HOST}\n"
            "allow_anonymous true\n"
            "allow_duplicate_messages true\n"
            "set_tcp_nodelay true\n"
            "persistence false\n"
            "max_connections -1\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            "user root\n")
        binary = _mosquitto_binary()
        assert binary is not None
        return [binary, "-c", str(conf)], {}

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("mqtt", HOST, self.port, "/", topic)

    def publisher(self, scenario: str) -> Publisher:
        return MqttPublisher(HOST, self.port, qos=int(scenario == "qos1"))


class Flood(Target):
    """Not a server under test: the ceiling of the load generator."""

    name = "flood"

    def __init__(self, server_cpu: int, mode: str = "ws") -> None:
        super().__init__(server_cpu)
        self.mode = mode
        self.protocol = mode

    def command(self) -> tuple[list[str], dict[str, str]]:
        self.port = free_port()
        return [sys.executable, str(HERE / "refservers" / "flood.py"), str(self.port),
                "--mode", self.mode], {}

    def endpoint(self, topic: str) -> Endpoint:
        return Endpoint("plain" if self.mode == "ws" else "mqtt", HOST, self.port, "/", topic)


TARGETS: dict[str, type[Target]] = {
    t.name: t for t in (Tidings, TidingsMqtt, WebsocketsRef, NodeWs, NatsWs, NatsMqtt,
                        Mosquitto)
}


def make_target(name: str, server_cpu: int, tidings_src: Path | None = None) -> Target:
    target = TARGETS[name](server_cpu)
    if tidings_src is not None and isinstance(target, Tidings):
        target.src = tidings_src
    return target


def tool_versions() -> dict[str, str]:
    """Versions of what ran, for the JSON record."""
    out: dict[str, str] = {"python": sys.version.split()[0]}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("websockets", "uvloop"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    for name, argv in (("nats-server", [_nats_binary() or "nats-server", "--version"]),
                       ("mosquitto", [_mosquitto_binary() or "mosquitto", "-h"]),
                       ("node", ["node", "--version"])):
        try:
            r = subprocess.run(argv, capture_output=True, timeout=5, text=True)
            text = (r.stdout or r.stderr).strip().splitlines()
            out[name] = text[0] if text else ""
        except (OSError, subprocess.TimeoutExpired):
            pass
    return out


async def settle_rss(pid: int, *, seconds: float = 1.0) -> int:
    """RSS after letting the server settle (the last of a few readings)."""
    end = time.monotonic() + seconds
    value = rss_bytes(pid)
    while time.monotonic() < end:
        await asyncio.sleep(0.2)
        value = rss_bytes(pid)
    return value
