"""``tidings`` as users run it: a real subprocess, real signals, real clients.

Covers DESIGN.md "Running it" (the banner with URLs, dev key and sample
token), graceful shutdown (``disconnect`` with ``reconnect: true``, close
1001, exit 0), durability across a restart, the ``token`` and ``publish``
commands, configuration errors (exit 2 naming the key) and TLS.
"""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
import websockets

from conftest import API_KEY, JWT_SECRET, WAIT, Client, ServerProcess
from support.tls import self_signed
from tidings.auth import TokenAuthority
from tidings.types import parse_offset

CLI = [sys.executable, "-m", "tidings.cli"]


# -- helpers -------------------------------------------------------------------------


class Output:
    """Collects a server process's output on a thread so the pipe never fills up."""

    def __init__(self, sp: ServerProcess) -> None:
        assert sp.proc is not None and sp.proc.stdout is not None
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(sp.proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first line matching ``pattern``, waiting at most ``timeout`` seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in {self.lines!r}")
                self._cond.wait(left)

    def text(self) -> str:
        self._thread.join(WAIT)
        with self._cond:
            return "\n".join(self.lines)


def start(sp: ServerProcess) -> Output:
    sp.start()
    out = Output(sp)
    out.wait_for(r"is up\.")
    return out


async def terminate(sp: ServerProcess, sig: int = signal.SIGTERM) -> int:
    """Signal the server and return its exit code (bounded wait; killed if it hangs)."""
    assert sp.proc is not None
    sp.proc.send_signal(sig)
    try:
        return await asyncio.to_thread(sp.proc.wait, WAIT * 3)
    except subprocess.TimeoutExpired:
        sp.proc.kill()
        await asyncio.to_thread(sp.proc.wait)
        raise AssertionError("the server did not exit after the signal") from None


def run_cli(sp: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=sp.env, capture_output=True, text=True,
                          timeout=WAIT * 3)


async def api(sp: ServerProcess, method: str, path: str, body: Any = None, *,
              key: str = API_KEY, base: str | None = None,
              ssl_context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(method, (base or sp.api_url) + path,
                         data=orjson.dumps(body) if body is not None else None,
                         headers={"Authorization": f"Bearer {key}"},
                         ssl=ssl_context if ssl_context is not None else True) as r:
        return r.status, orjson.loads(await r.read())


async def ws_client(url: str, token: str, **kw: Any) -> Client:
    ws = await websockets.connect(url, open_timeout=WAIT, **kw)
    c = Client(ws)
    reply = await c.request("connect", token=token)
    assert reply["ok"], reply
    c.hello = reply
    return c


def token(user: str, **kw: Any) -> str:
    return str(TokenAuthority(JWT_SECRET, max_ttl=86400, default_ttl=600).issue(user, **kw))


# -- the banner ----------------------------------------------------------------------------


async def test_serve_prints_urls_dev_key_and_a_working_sample_token(
        server_process: ServerProcess) -> None:
    sp = server_process
    sp.env.pop("TIDINGS_API_KEYS")  # no configured key: a dev key is made and printed
    out = start(sp)
    assert out.wait_for(r"WebSocket:\s+(\S+)").group(1) == sp.ws_url
    assert out.wait_for(r"HTTP API:\s+(\S+)").group(1) == sp.api_url
    dev_key = out.wait_for(r"Dev API key.*:\s+(\S+)$").group(1)
    sample = out.wait_for(r"Sample token for user 'demo'.*:\s+(\S+)$").group(1)

    c = await ws_client(sp.ws_url, sample)
    assert c.hello["user"] == "demo"
    assert (await c.request("subscribe", topic="demo/+"))["ok"]
    r = await c.request("publish", topic="demo/hello", data={"from": "demo"})
    assert r["ok"], r
    assert (await c.push())["data"] == {"from": "demo"}
    status, body = await api(sp, "POST", "/v1/publish", {"topic": "demo/api", "data": 1},
                             key=dev_key)
    assert status == 200 and "offset" in body
    status, _ = await api(sp, "POST", "/v1/publish", {"topic": "demo/api", "data": 1},
                          key="not-the-dev-key")
    assert status == 401
    await c.close()
    assert await terminate(sp) == 0

    again = start(sp)  # "made for this data folder": the same key after a restart
    assert again.wait_for(r"Dev API key.*:\s+(\S+)$").group(1) == dev_key
    assert await terminate(sp) == 0


async def test_serve_with_configured_keys_prints_no_dev_key(
        server_process: ServerProcess) -> None:
    out = start(server_process)
    assert await terminate(server_process) == 0
    text = out.text()
    assert "Dev API key" not in text and API_KEY not in text and JWT_SECRET not in text


# -- shutdown and restart ----------------------------------------------------------------


async def test_sigterm_tells_clients_to_reconnect_then_exits_0(
        server_process: ServerProcess) -> None:
    sp = server_process
    start(sp)
    c = await ws_client(sp.ws_url, token("alice"))
    assert (await c.request("subscribe", topic="news/+"))["ok"]
    sp.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    push = await c.push()
    assert push["type"] == "disconnect" and push["reconnect"] is True, push
    assert isinstance(push["reason"], str) and push["reason"]
    assert (await c.closed())[0] == 1001
    rc = await asyncio.to_thread(sp.proc.wait, WAIT * 3)  # type: ignore[union-attr]
    assert rc == 0


async def test_restart_keeps_history_and_retained(server_process: ServerProcess) -> None:
    sp = server_process
    start(sp)
    before = []
    for n in range(3):
        status, body = await api(sp, "POST", "/v1/publish", {"topic": "feed/r", "data": n})
        assert status == 200
        before.append(body["offset"])
    status, _ = await api(sp, "POST", "/v1/publish",
                          {"topic": "status/r", "data": {"up": True}, "retain": True})
    assert status == 200
    assert await terminate(sp) == 0

    start(sp)
    status, h = await api(sp, "GET", "/v1/topics/feed/r/history")
    assert status == 200
    assert [(i["offset"], i["data"]) for i in h["items"]] == [
        (off, n) for n, off in enumerate(before)]
    c = await ws_client(sp.ws_url, token("alice"))
    assert (await c.request("subscribe", topic="status/r"))["ok"]
    m = await c.push()
    assert m["retained"] is True and m["data"] == {"up": True}

    status, body = await api(sp, "POST", "/v1/publish", {"topic": "feed/r", "data": 3})
    assert status == 200
    old, new = parse_offset(before[-1]), parse_offset(body["offset"])
    assert old is not None and new is not None
    assert new[0] == old[0] and new[1] == old[1] + 1  # same epoch, the next sequence
    r = await c.request("subscribe", topic="feed/r", since=before[-1])
    assert [m["data"] for m in r["recovered"]] == [3] and r["complete"] is True
    await c.close()
    assert await terminate(sp) == 0


# -- the other commands -------------------------------------------------------------------


def test_token_command_prints_a_token_with_the_claims(server_process: ServerProcess) -> None:
    sp = server_process
    res = run_cli(sp, "token", "alice", "--ttl", "60", "--subscribe", "a/#",
                  "--publish", "b/#")
    assert res.returncode == 0, res.stderr
    tok = res.stdout.strip()
    claims = jwt.decode(tok, JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["subscribe"] == ["a/#"] and claims["publish"] == ["b/#"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tok, "some-other-secret-0123456789-abcdefghij", algorithms=["HS256"])


def test_token_command_rejects_a_bad_ttl(server_process: ServerProcess) -> None:
    res = run_cli(server_process, "token", "alice", "--ttl", "0")
    assert res.returncode == 2 and "ttl" in res.stderr and not res.stdout.strip()


async def test_publish_command_goes_through_the_api(server_process: ServerProcess) -> None:
    sp = server_process
    start(sp)
    res = await asyncio.to_thread(run_cli, sp, "publish", "news/cli", '{"via": "cli"}',
                                  "--key", API_KEY)
    assert res.returncode == 0, res.stderr
    offset = orjson.loads(res.stdout)["offset"]
    status, h = await api(sp, "GET", "/v1/topics/news/cli/history")
    assert status == 200 and [(i["offset"], i["data"]) for i in h["items"]] == [
        (offset, {"via": "cli"})]

    res = await asyncio.to_thread(run_cli, sp, "publish", "news/cli", "1", "--key", "wrong")
    assert res.returncode == 1 and "401" in res.stderr
    res = await asyncio.to_thread(run_cli, sp, "publish", "news/cli", "{not json",
                                  "--key", API_KEY)
    assert res.returncode == 2 and "JSON" in res.stderr
    assert await terminate(sp) == 0


@pytest.mark.parametrize("value", ["notaport", "70000"])
def test_invalid_setting_stops_the_start_with_exit_2(server_process: ServerProcess,
                                                     value: str) -> None:
    sp = server_process
    sp.env["TIDINGS_WS_PORT"] = value
    res = run_cli(sp, "serve")
    assert res.returncode == 2
    assert "ws.port" in res.stderr and "Traceback" not in res.stderr


# -- TLS ---------------------------------------------------------------------------------


async def test_tls_on_both_ports(server_process: ServerProcess, tmp_path: Path) -> None:
    sp = server_process
    cert, key = self_signed(tmp_path)
    sp.env.update({"TIDINGS_WS_TLS_CERT": str(cert), "TIDINGS_WS_TLS_KEY": str(key),
                   "TIDINGS_API_TLS_CERT": str(cert), "TIDINGS_API_TLS_KEY": str(key)})
    out = start(sp)
    wss = f"wss://127.0.0.1:{sp.ws_port}/ws"
    https = f"https://127.0.0.1:{sp.api_port}"
    assert out.wait_for(r"WebSocket:\s+(\S+)").group(1) == wss
    assert out.wait_for(r"HTTP API:\s+(\S+)").group(1) == https
    trust = ssl.create_default_context(cafile=str(cert))

    c = await ws_client(wss, token("alice"), ssl=trust)
    assert (await c.request("subscribe", topic="secure/+"))["ok"]
    status, body = await api(sp, "POST", "/v1/publish", {"topic": "secure/a", "data": 1},
                             base=https, ssl_context=trust)
    assert status == 200
    assert (await c.push())["offset"] == body["offset"]
    status, _ = await api(sp, "GET", "/healthz", base=https, ssl_context=trust)
    assert status == 200

    with pytest.raises(ssl.SSLCertVerificationError):  # it really is TLS with that cert
        await websockets.connect(wss, ssl=ssl.create_default_context(), open_timeout=WAIT)
    await c.close()
    assert await terminate(sp) == 0
