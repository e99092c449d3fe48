"""Operations and health, probed as a newcomer and an operator would (issue 10).

Each test reproduces a finding of the hostile probe: a second server on one
data folder, ``token`` / ``publish`` run from another folder, a corrupt
secrets file, a port clash, misspelt API fields, a store that cannot write
while ``/readyz`` said ready, library chatter in the log, the hand-written
``/metrics``. CLI behaviour runs real ``tidings`` processes.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from conftest import API_KEY, JWT_SECRET, WAIT, Node, ServerProcess
from tidings.auth import TokenAuthority

pytest.register_assert_rewrite("support.redis_servers")
pytest_plugins = ["support.redis_servers"]

CLI = [sys.executable, "-m", "tidings.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's (or a fixture's) TIDINGS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(extra)
    return env


async def api_get(sp: ServerProcess, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(sp.api_url + path) as r:
        return r.status, await r.read()


async def api_post(sp: ServerProcess, path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
            sp.api_url + path, data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        return r.status, orjson.loads(await r.read())


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=WAIT * 3)


# -- the data folder lock ------------------------------------------------------------------


def test_second_serve_on_one_data_folder_exits_naming_the_folder(
        server_process: ServerProcess, tmp_path: Path) -> None:
    sp = server_process
    sp.start()
    second = dict(sp.env)  # other ports, the same folder: only the lock can stop it
    for key in ("TIDINGS_WS_PORT", "TIDINGS_API_PORT", "TIDINGS_MQTT_PORT"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            second[key] = str(s.getsockname()[1])
    res = run(["serve"], cwd=tmp_path, env=second)
    assert res.returncode != 0
    assert f"data folder {sp.data}" in res.stderr and "in use" in res.stderr
    assert "Traceback" not in res.stderr and "is up" not in res.stdout
    assert sp.stop() == 0


def test_the_lock_is_released_when_the_server_stops(server_process: ServerProcess) -> None:
    sp = server_process
    sp.start()
    assert sp.stop(signal.SIGTERM) == 0
    sp.start()  # the same folder again: the first server's lock is gone
    assert sp.stop(signal.SIGTERM) == 0


# -- token and publish never make a data folder or secret -----------------------------------


@pytest.mark.parametrize(("args", "what"), [
    (["token", "alice"], "no JWT secret"),
    (["publish", "news/a", "1"], "no API key"),
])
def test_token_and_publish_refuse_without_a_data_folder(tmp_path: Path, args: list[str],
                                                         what: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = run(args, cwd=elsewhere, env=clean_env())
    assert res.returncode == 2, res
    assert what in res.stderr and "tidings-data" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert list(elsewhere.iterdir()) == []  # nothing was made


def test_token_refuses_a_data_folder_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "tidings-data").mkdir()
    res = run(["token", "alice"], cwd=tmp_path, env=clean_env())
    assert res.returncode == 2
    assert "secrets.json does not exist" in res.stderr
    assert list((tmp_path / "tidings-data").iterdir()) == []


def test_token_from_the_servers_folder_is_accepted_by_it(tmp_path: Path) -> None:
    """The secret a server made is the one ``token`` uses (and it is not changed)."""
    data = tmp_path / "tidings-data"
    data.mkdir()
    (data / "secrets.json").write_text('{"jwt_secret": "s3cret-0123456789-0123456789-abc", '
                                       '"dev_api_key": "dev_k"}')
    before = (data / "secrets.json").read_bytes()
    res = run(["token", "alice"], cwd=tmp_path, env=clean_env())
    assert res.returncode == 0, res.stderr
    import jwt
    claims = jwt.decode(res.stdout.strip(), "s3cret-0123456789-0123456789-abc",
                        algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert (data / "secrets.json").read_bytes() == before


# -- a corrupt secrets file ----------------------------------------------------------------


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"jwt_secret": 5}', b"\xff\xfe"])
@pytest.mark.parametrize("command", [["serve"], ["token", "alice"]])
def test_corrupt_secrets_file_is_an_error_naming_the_file(tmp_path: Path, content: bytes,
                                                          command: list[str]) -> None:
    data = tmp_path / "tidings-data"
    data.mkdir()
    (data / "secrets.json").write_bytes(content)
    env = clean_env(TIDINGS_WS_PORT="0", TIDINGS_API_PORT="0", TIDINGS_MQTT_PORT="0")
    res = run(command, cwd=tmp_path, env=env)
    assert res.returncode != 0
    assert "secrets.json" in res.stderr and "corrupt" in res.stderr
    assert "Traceback" not in res.stderr
    assert (data / "secrets.json").read_bytes() == content  # left for the operator


# -- version and listener errors -----------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version
    res = run(["--version"], cwd=tmp_path, env=clean_env())
    assert res.returncode == 0
    assert res.stdout.strip() == f"tidings {version('tidings')}"


@pytest.mark.parametrize("setting", ["ws.port", "api.port", "mqtt.port"])
def test_port_clash_names_the_setting(server_process: ServerProcess, setting: str) -> None:
    sp = server_process
    env_key = "TIDINGS_" + setting.replace(".", "_").upper()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sp.env[env_key] = str(port)
        res = run(["serve"], cwd=sp.data.parent, env=sp.env)
    assert res.returncode == 1
    assert f"{setting} {port} is in use" in res.stderr
    assert "Traceback" not in res.stderr


# -- unknown fields in API bodies ----------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/publish", {"topic": "news/a", "data": 1, "retian": True}, "retian"),
    ("/v1/publish/batch", {"messages": [{"topic": "news/a", "data": 1}], "atomic": True},
     "atomic"),
    ("/v1/publish/batch", {"messages": [{"topic": "news/a", "data": 1, "retained": True}]},
     "retained"),
    ("/v1/notify", {"users": ["bob"], "title": "hi", "priorty": "high"}, "priorty"),
    ("/v1/tokens", {"user": "bob", "subscibe": ["a/#"]}, "subscibe"),
    ("/v1/users/bob/read", {"all": True, "dveice": "phone"}, "dveice"),
])
async def test_unknown_field_is_a_400_naming_it(node: Node, path: str, body: dict[str, Any],
                                               field: str) -> None:
    status, reply = await node.api("POST", path, body)
    assert status == 400, reply
    assert reply["error"]["code"] == "bad_request"
    assert f"unknown field '{field}'" in reply["error"]["message"]


async def test_a_refused_misspelt_publish_stores_nothing(node: Node) -> None:
    status, _ = await node.api("POST", "/v1/publish",
                               {"topic": "news/a", "data": 1, "retian": True})
    assert status == 400
    status, page = await node.api("GET", "/v1/topics/news/a/history")
    assert status == 200 and page["items"] == []
    # the same request spelt right goes through
    assert (await node.api("POST", "/v1/publish",
                           {"topic": "news/a", "data": 1, "retain": True}))[0] == 200


# -- /readyz while the store cannot write ----------------------------------------------------


def _grow_limit(pid: int, folder: Path, headroom: int) -> None:
    """Let process ``pid`` write files only ``headroom`` bytes past the largest one in
    ``folder`` (RLIMIT_FSIZE): a disk that fills up, for this process alone."""
    biggest = max(p.stat().st_size for p in folder.iterdir() if p.is_file())
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (biggest + headroom, resource.RLIM_INFINITY))


async def test_readyz_fails_while_sqlite_cannot_write_and_logs_once(
        server_process: ServerProcess) -> None:
    """The probe: a full disk left /readyz at 200 and logged nothing while every
    write answered 503. Here the server process may not grow its files (its
    disk is full for it), then may again."""
    sp = server_process
    sp.start()
    assert sp.proc is not None
    assert (await api_get(sp, "/readyz"))[0] == 200
    _grow_limit(sp.proc.pid, sp.data, 64 * 1024)
    big = {"blob": "x" * 16384}
    statuses = []
    for i in range(200):  # bounded: 16 KiB each, the limit is 64 KiB past the largest file
        status = (await api_post(sp, "/v1/publish", {"topic": f"fill/{i}", "data": big}))[0]
        statuses.append(status)
        if status == 503:
            break
    assert statuses[-1] == 503, statuses  # the store refused, and said so
    assert (await api_get(sp, "/readyz"))[0] == 503
    for i in range(20):  # more failed writes: still one log line for the whole outage
        assert (await api_post(sp, "/v1/publish", {"topic": f"more/{i}", "data": big}))[0] == 503
    assert (await api_get(sp, "/readyz"))[0] == 503

    resource.prlimit(sp.proc.pid, resource.RLIMIT_FSIZE,
                     (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space again
    assert (await api_get(sp, "/readyz"))[0] == 200  # the probe wrote
    assert (await api_post(sp, "/v1/publish", {"topic": "fill/after", "data": 1}))[0] == 200
    assert sp.stop() == 0
    log = sp.output
    # One line when writes stop and one when they work again, not one per failed write.
    # A small write may still fit in the pages SQLite already has (a reset WAL) while
    # the file cannot grow, so the outage can end and start again in between: each
    # start has its end, and there are far fewer than the 21+ refused writes.
    starts, ends = log.count("store: cannot write"), log.count("store: writes work again")
    assert 1 <= starts == ends <= 3, log
    assert "disk I/O error" in log, log  # EFBIG past the limit, as SQLite reports it
    assert "Traceback" not in log


async def test_corrupt_sqlite_page_makes_writes_503_and_the_node_unready(
        server_process: ServerProcess) -> None:
    """The probe: a corrupt SQLite page left /readyz at 200 and logged nothing. Here
    the root page of the history table is overwritten in the stopped server's file."""
    sp = server_process
    sp.start()
    for i in range(3):
        assert (await api_post(sp, "/v1/publish", {"topic": "news/a", "data": i}))[0] == 200
    assert sp.stop() == 0  # the last connection's close checkpoints the WAL into the file
    path = sp.data / "tidings.sqlite3"
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'history'"
                          ).fetchone()[0]
    db.close()
    assert root > 1
    with path.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)  # not a b-tree page: SQLITE_CORRUPT when read

    sp.output = ""
    sp.start()
    for i in range(5):
        status, reply = await api_post(sp, "/v1/publish", {"topic": "news/a", "data": i})
        assert status == 503 and reply["error"]["code"] == "unavailable", reply
    assert (await api_get(sp, "/readyz"))[0] == 503  # the probe row is fine, the file is not
    assert (await api_get(sp, "/readyz"))[0] == 503
    assert sp.stop() == 0
    assert sp.output.count("store: the database is corrupt") == 1, sp.output
    assert "malformed" in sp.output and "Traceback" not in sp.output


async def test_readyz_fails_while_redis_is_down_and_logs_once(
        make_node: Any, redis_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    server = redis_factory.server()
    n = await make_node(store__backend="redis", redis__url=server.url)
    assert (await n.api("GET", "/readyz", key=None))[0] == 200
    server.stop()
    with caplog.at_level(logging.INFO, logger="tidings"):
        for i in range(10):
            status, reply = await n.api("POST", "/v1/publish", {"topic": f"t/{i}", "data": i})
            assert status == 503 and reply["error"]["code"] == "unavailable"
        assert (await n.api("GET", "/readyz", key=None))[0] == 503
        status, text = await n.api("GET", "/metrics", key=None)
        assert "tidings_store_up 0.0" in text
        server.start()
        assert (await n.api("GET", "/readyz", key=None))[0] == 200
        assert (await n.api("POST", "/v1/publish", {"topic": "t/x", "data": 1}))[0] == 200
    store_lines = [r for r in caplog.records if r.name == "tidings.store"]
    assert [r.levelname for r in store_lines] == ["ERROR", "WARNING"], store_lines
    assert "cannot write" in store_lines[0].getMessage()
    assert "writes work again" in store_lines[1].getMessage()


# -- /metrics through prometheus_client ------------------------------------------------------


def parse_metrics(text: str) -> tuple[dict[str, str], dict[str, str], dict[str, float]]:
    """(HELP by family, TYPE by family, value by series) from the exposition text."""
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = doc
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return helps, types, samples


async def test_metrics_have_histograms_process_metrics_and_help(node: Node) -> None:
    c = await node.client("alice")
    assert (await c.request("subscribe", topic="m/+"))["ok"]
    for i in range(3):
        await node.publish("m/a", i)
        await c.push()
    status, text = await node.api("GET", "/metrics", key=None)
    assert status == 200
    helps, types, samples = parse_metrics(text)
    # histograms: publish-to-deliver latency and store commit time
    assert types["tidings_publish_deliver_seconds"] == "histogram"
    assert samples["tidings_publish_deliver_seconds_count"] == 3
    assert samples['tidings_publish_deliver_seconds_bucket{le="+Inf"}'] == 3
    assert 0 <= samples["tidings_publish_deliver_seconds_sum"] < 3 * WAIT
    assert types["tidings_store_commit_seconds"] == "histogram"
    assert samples["tidings_store_commit_seconds_count"] >= 3
    buckets = [v for k, v in samples.items() if k.startswith("tidings_store_commit_seconds_b")]
    assert buckets == sorted(buckets)  # cumulative
    # process metrics, from prometheus_client's collectors
    assert samples["process_resident_memory_bytes"] > 10 * 2**20
    assert samples["process_open_fds"] > 0
    assert samples["tidings_store_up"] == 1
    # a real HELP text on every family, ours and the library's
    assert len(helps) >= 20
    for name, doc in helps.items():
        assert doc and doc != name and "no description" not in doc, (name, doc)


async def test_every_counter_the_server_increments_has_a_help_text(node: Node) -> None:
    """A new ``metrics.inc("tidings_...")`` without a HELP text fails here."""
    import tidings
    root = Path(tidings.__file__).parent
    used: set[str] = set()
    for path in root.rglob("*.py"):
        used |= set(re.findall(r'\.inc\(\s*"(tidings_[a-z_]+)"', path.read_text()))
    assert "tidings_errors_total" in used, "the pattern no longer finds the counters"
    missing = [n for n in sorted(used) if "no description" in node.app.metrics.help_text(n)]
    assert missing == []


# -- logging policy -------------------------------------------------------------------------


def _send_garbage(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):  # until the server closes: it has handled the bytes
            pass


def _wait_for_line(sp: ServerProcess, needle: str) -> str:
    """Stop the server once ``needle`` is logged (bounded by WAIT); return the output."""
    assert sp.proc is not None and sp.proc.stdout is not None
    os.set_blocking(sp.proc.stdout.fileno(), False)
    deadline = time.monotonic() + WAIT
    while needle not in sp.output and time.monotonic() < deadline:
        chunk = sp.proc.stdout.read()
        if chunk:
            sp.output += chunk
        else:
            time.sleep(0.02)
    os.set_blocking(sp.proc.stdout.fileno(), True)
    sp.stop()
    return sp.output


def test_garbage_connections_are_summarised_not_traced(server_process: ServerProcess) -> None:
    """The probe: 300 garbage connections to the API port wrote 64 MB of ERROR
    tracebacks. Now: one line per kind per interval, then one line with the count."""
    sp = server_process
    sp.env["TIDINGS_NODE_LOG_SUMMARY_INTERVAL"] = "1"
    sp.env["TIDINGS_MQTT_PORT"] = mqtt_port = str(_free())
    sp.start()
    started = time.monotonic()
    kinds = [b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
             b"BLAH\x00\x01 / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00garbage\r\n\r\n"]
    for i in range(300):  # bounded: 300 connections, each closed by the server
        _send_garbage(sp.api_port, kinds[i % 3])
    for _ in range(50):
        _send_garbage(int(mqtt_port), b"\xff\xff\xff\xff")  # not a CONNECT
        _send_garbage(sp.ws_port, b"\x16\x03\x01garbage\r\n\r\n")  # TLS on the WS port
    while time.monotonic() - started <= 1.2:  # bounded: just past the 1 s interval
        time.sleep(0.05)
    _send_garbage(sp.api_port, kinds[0])  # the first after the interval reports the count
    out = _wait_for_line(sp, "more in the last")
    lines = [line for line in out.splitlines() if " tidings.garbage: " in line]
    assert "Traceback" not in out and "aiohttp.server" not in out
    assert "websockets.server" not in out  # per-connection chatter is DEBUG
    api_lines = [line for line in lines if "HTTP request on the API port" in line]
    assert len(api_lines) == 3, api_lines  # first, summary, first of the next interval
    # every refused request is counted (aiohttp answers 400 to all three kinds and
    # reports the Content-Length one, 100 times: 1 logged, 99 counted)
    more = re.search(r": (\d+) more in the last", api_lines[1])
    assert more is not None and 99 <= int(more.group(1)) <= 299, api_lines[1]
    assert sum("MQTT packet" in line for line in lines) == 1
    assert len(out.encode()) < 4096, len(out.encode())


def test_debug_level_shows_the_library_chatter(server_process: ServerProcess) -> None:
    sp = server_process
    sp.env["TIDINGS_NODE_LOG_LEVEL"] = "DEBUG"
    sp.start()
    _send_garbage(sp.ws_port, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")  # no upgrade: 426
    out = _wait_for_line(sp, "connection rejected")
    assert "DEBUG websockets.server: connection rejected" in out


def test_json_log_format(server_process: ServerProcess) -> None:
    sp = server_process
    sp.env["TIDINGS_NODE_LOG_FORMAT"] = "json"
    sp.start()
    _send_garbage(sp.api_port, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    out = _wait_for_line(sp, "garbage HTTP request")
    entries = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {e["message"] for e in entries} >= {"node proc-node stopped"}
    garbage = [e for e in entries if e["logger"] == "tidings.garbage"]
    assert garbage and garbage[0]["level"] == "WARNING"
    assert "Content-Length" in garbage[0]["message"]
    for e in entries:
        assert set(e) >= {"ts", "level", "logger", "message"}
    # every log line is JSON; only the banner (stdout, for people) is not
    others = [line for line in out.splitlines() if not line.startswith("{")]
    assert all(not re.match(r"\d{4}-\d\d-\d\d ", line) for line in others), others


def test_log_format_is_validated(tmp_path: Path) -> None:
    res = run(["serve"], cwd=tmp_path, env=clean_env(TIDINGS_NODE_LOG_FORMAT="xml"))
    assert res.returncode == 2 and "node.log_format" in res.stderr


def test_garbage_log_counts_within_an_interval() -> None:
    """The summariser with a fake clock: one line, then a count, per interval."""
    from tidings.logs import GarbageLog
    now = [100.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logging.getLogger("tidings.garbage").addHandler(handler)
    try:
        g = GarbageLog(10.0, clock=lambda: now[0])
        for i in range(50):
            g.note("MQTT packet", "a client", f"bad {i}")
        assert len(records) == 1 and "bad 0" in records[0]
        now[0] += 10.5
        g.note("MQTT packet", "a client", "bad again")
        assert len(records) == 3
        assert "49 more in the last 10 s (the last: bad 49)" in records[1]
        assert "bad again" in records[2]
    finally:
        logging.getLogger("tidings.garbage").removeHandler(handler)


# -- the README tour ------------------------------------------------------------------------


class Listener:
    """README's ``listen.py``, as printed there, run against the test server."""

    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), *args], text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, prefix: str) -> str:
        """The next line starting with ``prefix``, waiting at most WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting {prefix!r} in {self.lines!r}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def readme_listener(folder: Path, ws_url: str) -> Path:
    """``listen.py`` exactly as the README prints it, pointed at ``ws_url``."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split("save this as\n`listen.py`", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    assert '"ws://127.0.0.1:8080/ws"' in code
    script = folder / "listen.py"
    script.write_text(code.replace("ws://127.0.0.1:8080/ws", ws_url))
    return script


async def test_readme_tour_listener_prints_complete_and_retained(
        server_process: ServerProcess, tmp_path: Path) -> None:
    sp = server_process
    script = readme_listener(tmp_path, sp.ws_url)
    sp.start()
    token = TokenAuthority(JWT_SECRET, max_ttl=3600, default_ttl=600).issue("demo")

    first = Listener(script, token)
    try:
        assert first.wait_for("connected:") == "connected: True"
        assert first.wait_for("subscribed:") == "subscribed: complete = True"
        status, reply = await api_post(sp, "/v1/publish",
                                       {"topic": "news/sports", "data": {"score": "2-1"}})
        assert status == 200
        offset1 = reply["offset"]
        assert first.wait_for("live:") == f"live: news/sports {offset1} {{'score': '2-1'}}"
    finally:
        first.stop()
    offsets = []
    for score in ("3-1", "3-2"):
        offsets.append((await api_post(sp, "/v1/publish",
                                       {"topic": "news/sports", "data": {"score": score}}))[1]
                       ["offset"])
    # step 4 as written, with the offset the first curl printed in place of EPOCH:1
    again = Listener(script, token, orjson.dumps({"news/sports": offset1}).decode())
    try:
        assert again.wait_for("recovered:") == \
            f"recovered: news/sports {offsets[0]} {{'score': '3-1'}}"
        assert again.wait_for("recovered:") == \
            f"recovered: news/sports {offsets[1]} {{'score': '3-2'}}"
        assert again.wait_for("subscribed:") == "subscribed: complete = True"
    finally:
        again.stop()
    status, reply = await api_post(sp, "/v1/publish",
                                   {"topic": "news/weather", "data": "sunny", "retain": True})
    assert status == 200
    later = Listener(script, token)
    try:
        assert later.wait_for("retained:") == f"retained: news/weather {reply['offset']} sunny"
    finally:
        later.stop()
    assert sp.stop() == 0
