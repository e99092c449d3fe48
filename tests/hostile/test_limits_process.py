"""Hostile probes of issue 10 on time, against ``tidings serve`` as a real process:
slow HTTP clients on the API port, and shutdown with a half-sent request.

Real sockets; every wait is bounded by ``conftest.WAIT``.
"""

from __future__ import annotations

import signal
import socket
import time

from conftest import WAIT, ServerProcess

_SHUTDOWN = 2.0  # node.shutdown_timeout for these tests (the default is 5)


def _open(sp: ServerProcess, head: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", sp.api_port), timeout=WAIT)
    s.sendall(head)
    return s


def _closed_within(s: socket.socket, limit: float) -> tuple[bool, bytes]:
    """Read until the server closes (True) or ``limit`` seconds pass (False)."""
    got = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_slow_headers_are_cut_off_after_the_header_timeout(
        server_process: ServerProcess) -> None:
    """Probe: 1,500 slowloris connections stayed open on the API port after 65 s."""
    sp = server_process
    sp.env["TIDINGS_API_HEADER_TIMEOUT"] = "1.0"
    sp.start()
    slow = [_open(sp, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") for _ in range(20)]
    start = time.monotonic()
    try:
        for s in slow[:-1]:  # a header line now and then does not extend the deadline
            s.sendall(b"X-A: b\r\n")
        for s in slow:
            closed, got = _closed_within(s, 1.0 + WAIT)
            assert closed and got == b"", got
        assert time.monotonic() - start < 1.0 + WAIT
        # a client that sends its request in time is served as before
        ok = _open(sp, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        closed, got = _closed_within(ok, WAIT)
        assert closed and got.startswith(b"HTTP/1.1 200"), got
    finally:
        for s in slow:
            s.close()
    assert sp.stop() == 0


def test_a_slow_body_gets_408_after_the_body_timeout(server_process: ServerProcess) -> None:
    sp = server_process
    sp.env["TIDINGS_API_BODY_TIMEOUT"] = "1.0"
    sp.start()
    s = _open(sp, b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
              + sp.env["TIDINGS_API_KEYS"].encode()
              + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to")
    start = time.monotonic()
    try:
        closed, got = _closed_within(s, 1.0 + WAIT)
        assert closed and got.startswith(b"HTTP/1.1 408"), got
        assert b'"request_timeout"' in got
        assert time.monotonic() - start < 1.0 + WAIT
    finally:
        s.close()
    assert sp.stop() == 0


def test_sigterm_with_a_half_sent_request_ends_within_the_shutdown_timeout(
        server_process: ServerProcess) -> None:
    """Probe: SIGTERM with a half-sent HTTP request took 9.7 s against a 5 s timeout."""
    sp = server_process
    sp.env["TIDINGS_NODE_SHUTDOWN_TIMEOUT"] = str(_SHUTDOWN)
    sp.start()
    half_head = _open(sp, b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-")
    half_body = _open(sp, b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      + sp.env["TIDINGS_API_KEYS"].encode()
                      + b"\r\nContent-Length: 50\r\n\r\n{")
    try:
        time.sleep(0.2)  # let the server read both (no condition to wait on from here)
        start = time.monotonic()
        assert sp.stop(signal.SIGTERM) == 0
        took = time.monotonic() - start
        assert took < _SHUTDOWN + 1.0, f"shutdown took {took:.1f}s"
    finally:
        half_head.close()
        half_body.close()


def test_a_second_signal_exits_at_once(server_process: ServerProcess) -> None:
    """Probe: a second Ctrl-C during a slow shutdown did nothing."""
    sp = server_process
    sp.env["TIDINGS_NODE_SHUTDOWN_TIMEOUT"] = "30"
    sp.start()
    half = _open(sp, b"POST /v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                 + sp.env["TIDINGS_API_KEYS"].encode() + b"\r\nContent-Length: 50\r\n\r\n{")
    assert sp.proc is not None
    try:
        time.sleep(0.2)
        sp.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the first signal has started the (slow) shutdown
        start = time.monotonic()
        rc = sp.stop(signal.SIGINT)
        assert time.monotonic() - start < 1.5
        assert rc != 0  # not a clean stop: says so
    finally:
        half.close()
