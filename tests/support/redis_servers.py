"""Real ``redis-server`` processes for tests: one server, or a Redis Cluster.

Helpers start each server on a free loopback port with its own folder (its
config, log, AOF and ``nodes.conf``), wait until it answers, and stop it by
its PID. A cluster is made of servers with ``cluster-enabled yes`` joined by
``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.

Fixtures (use ``pytest_plugins = ["support.redis_servers"]`` in a test module, so a
session-scoped server is shared by every module that asks for it):

* ``redis_server``: one server for the whole session (no persistence);
* ``redis_cluster``: a 3-master cluster for the whole session;
* ``redis_factory``: starts servers and clusters for one test (e.g. with
  ``appendonly=True, appendfsync="always"`` for failure tests) and stops them
  after it.

Tests that share a session server call ``flushall()`` before they start.
Without ``redis-server`` on PATH these fixtures skip, except under ``CI=true``,
where a missing server is a failure (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from conftest import WAIT

__all__ = [
    "RedisClusterProcs",
    "RedisFactory",
    "RedisServer",
    "redis_cluster",
    "redis_factory",
    "redis_server",
    "require_redis",
    "start_cluster",
    "start_server",
]

_STARTED: dict[int, subprocess.Popen[bytes]] = {}  # pid -> process, stopped at exit at the latest


def require_redis() -> tuple[str, str]:
    """Paths of ``redis-server`` and ``redis-cli``; skip (fail under CI) when missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        message = "redis-server / redis-cli not on PATH (Debian package redis-server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + ": required under CI")
        pytest.skip(message)
    return server, cli


def _free_port(*, cluster: bool) -> int:
    """A free loopback port; for a cluster node, port + 10000 (its bus) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not cluster:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _stop_pid(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)  # a paused server cannot shut down
            proc.send_signal(sig)
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
    _STARTED.pop(proc.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_STARTED.values()):
        _stop_pid(proc, signal.SIGKILL)


@dataclass
class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port`` with its own folder."""

    folder: Path
    port: int
    cluster: bool = False
    appendonly: bool = False
    appendfsync: str = "everysec"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.folder}",
            "logfile redis.log",
            "daemonize no",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
        ]
        if self.cluster:
            lines += ["cluster-enabled yes", "cluster-config-file nodes.conf",
                      "cluster-node-timeout 2000",
                      # the other masters keep serving while one is down
                      "cluster-require-full-coverage no",
                      "cluster-allow-reads-when-down yes"]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start (or start again, on the same port and data) and wait until it answers."""
        server, _ = require_redis()
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "redis.conf"
        conf.write_text(self._config())
        self.proc = subprocess.Popen([server, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _STARTED[self.proc.pid] = self.proc
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT * 2
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {self.log()[-2000:]}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on {self.port} does not answer")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=WAIT)

    def flushall(self) -> None:
        with self.client() as c:
            c.flushall()

    def stop(self) -> None:
        """SIGTERM (Redis writes its AOF and exits), SIGKILL if it does not."""
        if self.proc is not None:
            _stop_pid(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: what the data survives depends on ``appendfsync``."""
        if self.proc is not None:
            _stop_pid(self.proc, signal.SIGKILL)
            self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class RedisClusterProcs:
    """A Redis Cluster of ``servers`` (all masters, no replicas)."""

    servers: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """What ``RedisStore`` / ``RedisBus`` take: any node, scheme ``redis+cluster``."""
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}"

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.servers]

    def flushall(self) -> None:
        for s in self.servers:
            s.flushall()

    def server_for(self, key: str) -> RedisServer:
        """The master that owns ``key``'s slot."""
        with self.servers[0].client() as c:
            slot = int(c.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(s for s in self.servers if s.port == port)
        raise LookupError(f"no master serves slot {slot}")

    def wait_ok(self) -> None:
        """Until every master says the cluster is ok and knows all of them."""
        deadline = time.monotonic() + WAIT * 4
        while True:
            try:
                if all(self._ok(s) for s in self.servers):
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.05)

    def _ok(self, server: RedisServer) -> bool:
        with server.client() as c:
            info = c.execute_command("CLUSTER INFO")
        if isinstance(info, dict):  # redis-py parses the reply
            fields = {str(k): str(v) for k, v in info.items()}
        else:
            text = info.decode() if isinstance(info, bytes) else str(info)
            fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
        return (fields.get("cluster_state") == "ok"
                and fields.get("cluster_known_nodes") == str(len(self.servers))
                and fields.get("cluster_slots_ok") == "16384")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def start_server(folder: Path, *, cluster: bool = False, appendonly: bool = False,
                 appendfsync: str = "everysec") -> RedisServer:
    server = RedisServer(folder, _free_port(cluster=cluster), cluster=cluster,
                         appendonly=appendonly, appendfsync=appendfsync)
    server.start()
    return server


def start_cluster(folder: Path, masters: int = 3, *, appendonly: bool = False,
                  appendfsync: str = "everysec") -> RedisClusterProcs:
    _, cli = require_redis()
    procs = RedisClusterProcs()
    try:
        for i in range(masters):
            procs.servers.append(start_server(folder / f"node{i}", cluster=True,
                                              appendonly=appendonly, appendfsync=appendfsync))
        subprocess.run([cli, "--cluster", "create", *procs.nodes, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=WAIT * 6)
        procs.wait_ok()
    except BaseException:
        procs.stop()
        raise
    return procs


class RedisFactory:
    """Servers and clusters for one test, stopped after it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._made: list[RedisServer | RedisClusterProcs] = []

    def server(self, *, appendonly: bool = False, appendfsync: str = "everysec"
               ) -> RedisServer:
        s = start_server(self._folder / f"redis{len(self._made)}", appendonly=appendonly,
                         appendfsync=appendfsync)
        self._made.append(s)
        return s

    def cluster(self, masters: int = 3, *, appendonly: bool = False,
                appendfsync: str = "everysec") -> RedisClusterProcs:
        c = start_cluster(self._folder / f"cluster{len(self._made)}", masters,
                          appendonly=appendonly, appendfsync=appendfsync)
        self._made.append(c)
        return c

    def stop(self) -> None:
        for made in reversed(self._made):
            made.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    factory = RedisFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop()
