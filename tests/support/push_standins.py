"""Local stand-ins for the push platforms (Web Push services, FCM, APNs).

The platforms' servers cannot be reached from our machines, so each test runs
a server on loopback that speaks the platform's published request format,
records every request, and answers from a script of replies. Certificates
come from a throwaway CA made here (cryptography), so clients verify TLS as
they would in production: only the CA is ours.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded

__all__ = ["Browser", "H2StandIn", "Recorded", "Reply", "StandIn", "TestCA", "p8_key",
           "service_account"]


class TestCA:
    """A CA and leaf certificates for chosen host names (and 127.0.0.1)."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tidings test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                    critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_file = folder / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def leaf(self, names: Sequence[str]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        alt += [x509.DNSName(n) for n in names]
        crt = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                           names[0] if names else "127.0.0.1")]))
               .issuer_name(self.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName(alt), critical=False)
               .sign(self.key, hashes.SHA256()))
        stem = (names[0] if names else "ip").replace(".", "_")
        cert_path, key_path = self.folder / f"{stem}.crt", self.folder / f"{stem}.key"
        cert_path.write_bytes(crt.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    def server_context(self, names: Sequence[str], alpn: Sequence[str] = ()) -> ssl.SSLContext:
        cert, key = self.leaf(names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass
class Reply:
    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # JSON


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StandIn:
    """An HTTPS (or plain HTTP) aiohttp server recording requests and answering
    from ``replies`` in order (then ``default``)."""

    def __init__(self, default: Reply | None = None) -> None:
        self.replies: deque[Reply] = deque()
        self.default = default or Reply()
        self.requests: list[Recorded] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.scheme = "http"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Recorded(request.method, request.path_qs,
                                      {k.lower(): v for k, v in request.headers.items()},
                                      await request.read()))
        self.arrived.set()
        reply = self.replies.popleft() if self.replies else self.default
        if reply.body is not None:
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        return web.Response(status=reply.status, headers=reply.headers)

    async def start(self, tls: ssl.SSLContext | None = None) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.scheme = "https" if tls else "http"
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class _H2Server(asyncio.Protocol):
    def __init__(self, owner: H2StandIn) -> None:
        self.owner = owner
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                headers = {str(k): str(v) for k, v in event.headers or []}
                self.streams[event.stream_id or 0] = (headers, bytearray())
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id or 0][1].extend(event.data or b"")
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0,
                                                    event.stream_id or 0)
            elif isinstance(event, StreamEnded):
                self._answer(event.stream_id or 0)
        assert self.transport is not None
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        headers, body = self.streams.pop(stream_id)
        self.owner.requests.append(Recorded(headers.get(":method", ""), headers.get(":path", ""),
                                            headers, bytes(body)))
        self.owner.arrived.set()
        reply = self.owner.replies.popleft() if self.owner.replies else self.owner.default
        out = [(":status", str(reply.status)), ("apns-id", headers.get("apns-id", ""))]
        if reply.body is None:
            self.conn.send_headers(stream_id, out, end_stream=True)
        else:
            self.conn.send_headers(stream_id, out)
            self.conn.send_data(stream_id, orjson.dumps(reply.body), end_stream=True)


class H2StandIn:
    """An HTTP/2-over-TLS server (APNs speaks nothing else), recording requests
    and answering from ``replies`` like :class:`StandIn`."""

    def __init__(self, default: Reply | None = None) -> None:
        self.replies: deque[Reply] = deque()
        self.default = default or Reply(200)
        self.requests: list[Recorded] = []
        self.arrived = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _H2Server(self), "127.0.0.1", 0,
                                                ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def service_account(folder: Path, token_uri: str) -> tuple[Path, rsa.RSAPrivateKey]:
    """A Google service-account file (a fresh RSA key) whose token endpoint is ours."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "tidings-test", "private_key_id": "k1",
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": "push@tidings-test.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": token_uri}))
    return path, key


def p8_key(folder: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """An APNs-style .p8 signing key (P-256, PKCS#8 PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = folder / "AuthKey_KEY1234567.p8"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, key


class Browser:
    """A Web Push subscription as a browser makes it: its own P-256 key pair and
    auth secret; :meth:`decrypt` reads what a push service was sent (RFC 8291)."""

    def __init__(self) -> None:
        import os

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)

    def subscription(self, endpoint: str) -> dict[str, Any]:
        import base64

        def b64(raw: bytes) -> str:
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        point = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": endpoint, "keys": {"p256dh": b64(point), "auth": b64(self.auth)}}

    def decrypt(self, body: bytes) -> dict[str, Any]:
        import http_ece

        data: dict[str, Any] = orjson.loads(http_ece.decrypt(
            body, private_key=self.key, auth_secret=self.auth, version="aes128gcm"))
        return data
