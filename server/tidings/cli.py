"""``tidings serve | token | publish``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import uvloop

from . import config, logs
from .app import App, DataFolderLock, SecretsError, StartupError, load_secrets, read_secrets
from .auth import TokenAuthority
from .errors import BadRequest

__all__ = ["main"]


def _settings(path: str | None) -> config.Settings:
    path = path or os.environ.get("TIDINGS_CONFIG") or None
    try:
        return config.load(path)
    except config.ConfigError as e:
        print(f"tidings: invalid configuration: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve_workers(args: argparse.Namespace, settings: config.Settings) -> int:
    """``serve --workers N``: N node processes sharing the ports (SO_REUSEPORT).

    Each is a node of its own on the shared bus and store, so this needs the
    Redis backends; the kernel spreads new connections over the workers. The
    parent forwards SIGTERM/SIGINT and exits when every worker has.
    """
    if settings.bus.backend != "redis" or settings.store.backend != "redis":
        print("tidings: --workers needs bus.backend = \"redis\" and store.backend = "
              "\"redis\" (workers are nodes of one cluster)", file=sys.stderr)
        return 2
    if 0 in (settings.ws.port, settings.api.port, settings.mqtt.port):
        print("tidings: --workers needs fixed ports (not 0)", file=sys.stderr)
        return 2
    try:
        load_secrets(settings)  # made once here, so the workers agree on them
    except SecretsError as e:
        print(f"tidings: {e}", file=sys.stderr)
        return 1
    base = settings.node.name or f"{socket.gethostname()}-{os.getpid()}"
    children = []
    for i in range(args.workers):
        env = dict(os.environ, TIDINGS_NODE_NAME=f"{base}-{i + 1}",
                   TIDINGS_NODE_REUSE_PORT="true")
        argv = [sys.executable, "-m", "tidings.cli", "serve"]
        if args.config:
            argv += ["--config", args.config]
        children.append(subprocess.Popen(argv, env=env))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs) if any(codes) else 0


_held: list[DataFolderLock] = []  # kept for the life of the process


def _lock_data_folder(settings: config.Settings) -> bool:
    """One ``tidings serve`` per data folder (SQLite store); False: another has it."""
    if settings.store.backend != "sqlite":
        return True
    lock = DataFolderLock(settings.store.path)
    try:
        lock.acquire()
    except StartupError as e:
        print(f"tidings: {e}", file=sys.stderr)
        return False
    _held.append(lock)
    return True


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    if args.workers > 1:
        return _serve_workers(args, settings)
    logs.configure(settings.node)
    if not _lock_data_folder(settings):
        return 1

    async def run() -> None:
        app = App(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def again(signum: int) -> None:
            # a second SIGTERM/Ctrl-C during the shutdown: the operator wants out now
            print("tidings: second signal, exiting without finishing the shutdown",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)

        def first(_signum: int) -> None:
            stop.set()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, again, sig)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, first, sig)
        try:
            await app.start()
        except StartupError as e:
            print(f"tidings: {e}", file=sys.stderr)
            await app.stop()
            raise SystemExit(1) from None
        # what the node built to start (modules, routes, settings: a few hundred
        # thousand objects) is never scanned again: a full collection during a large
        # send then walks only what came after (tens of ms less of a stalled loop)
        gc.collect()
        gc.freeze()
        scheme_ws = "wss" if settings.ws.tls_cert else "ws"
        scheme_api = "https" if settings.api.tls_cert else "http"
        ws_url = f"{scheme_ws}://{settings.ws.host}:{app.ws_port}{settings.ws.path}"
        api_url = f"{scheme_api}://{settings.api.host}:{app.api_port}"
        lines = [
            f"Tidings node {app.node.name} is up.",
            f"  WebSocket: {ws_url}",
            f"  HTTP API:  {api_url}",
        ]
        if app.mqtt is not None:
            lines.append(f"  MQTT:      mqtt://{settings.mqtt.host}:{app.mqtt_port}"
                         f" (and ws://{settings.ws.host}:{app.ws_port}"
                         f"{settings.mqtt.websocket_path})")
        if settings.ws.demo_page:
            lines.append(f"  Demo page: http{'s' if settings.ws.tls_cert else ''}://"
                         f"{settings.ws.host}:{app.ws_port}/")
        if app.secrets.dev_key:
            lines.append(f"  Dev API key (made for this data folder): {app.secrets.api_keys[0]}")
            token = app.tokens.issue("demo", ttl=min(86400, settings.auth.max_token_ttl),
                                     publish=["demo/#", "news/#"])
            lines.append(f"  Sample token for user 'demo' (24 h): {token}")
        warning = app.exposure_warning()  # also logged; here where a newcomer looks
        if warning is not None:
            lines.append(f"  {warning}")
        print("\n".join(lines), flush=True)
        try:
            await stop.wait()
        finally:
            logging.getLogger("tidings").info("shutting down")
            await app.stop()

    try:
        uvloop.run(run())
    except SecretsError as e:  # from App(): the secrets file is unreadable
        print(f"tidings: {e}", file=sys.stderr)
        return 1
    return 0


def _existing_secret(settings: config.Settings, what: str, setting: str, env: str,
                     stored_key: str) -> str:
    """A secret for ``token`` / ``publish``: from the settings, else the server's
    ``secrets.json``. These commands never make one: a secret made here would
    sign tokens (or name a key) that the running server rejects."""
    try:
        value = read_secrets(settings).get(stored_key)
    except SecretsError as e:
        print(f"tidings: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not value:
        folder = Path(settings.store.path).resolve()
        where = (f"{folder / 'secrets.json'} does not exist" if folder.is_dir()
                 else f"there is no data folder {folder}")
        print(f"tidings: no {what}: {setting} ({env}) is not set and {where}.\n"
              f"Run this where the server runs (its data folder is store.path, "
              f"TIDINGS_STORE_PATH), or give the server's --config.", file=sys.stderr)
        raise SystemExit(2)
    return value


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    secret = settings.auth.jwt_secret or _existing_secret(
        settings, "JWT secret", "auth.jwt_secret", "TIDINGS_AUTH_JWT_SECRET", "jwt_secret")
    authority = TokenAuthority(secret, max_ttl=settings.auth.max_token_ttl,
                               default_ttl=settings.auth.default_token_ttl)
    try:
        print(authority.issue(args.user, ttl=args.ttl, subscribe=args.subscribe or None,
                              publish=args.publish or None))
    except BadRequest as e:
        print(f"tidings: {e.message}", file=sys.stderr)
        return 2
    return 0


def _publish(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    try:
        data = json.loads(args.json)
    except json.JSONDecodeError as e:
        print(f"tidings: JSON argument is not valid JSON: {e}", file=sys.stderr)
        return 2
    key = (args.key or os.environ.get("TIDINGS_API_KEY")
           or (settings.api.keys[0] if settings.api.keys else "")
           or _existing_secret(settings, "API key", "api.keys", "TIDINGS_API_KEYS",
                               "dev_api_key"))
    scheme = "https" if settings.api.tls_cert else "http"
    url = args.url or f"{scheme}://{settings.api.host}:{settings.api.port}"
    body = json.dumps({"topic": args.topic, "data": data, "retain": args.retain}).encode()
    req = urllib.request.Request(f"{url}/v1/publish", data=body, method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        print(f"tidings: {e.code}: {e.read().decode()}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"tidings: cannot reach {url}: {e.reason}", file=sys.stderr)
        return 1


def _version() -> str:
    try:
        return importlib.metadata.version("tidings")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tidings", description="Tidings push server")
    parser.add_argument("--version", action="version", version=f"tidings {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run a node")
    p.add_argument("--config", help="TOML settings file (default: built-in embedded mode)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N node processes sharing the ports (needs the Redis backends)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("token", help="print a user token signed with the configured secret")
    p.add_argument("user")
    p.add_argument("--ttl", type=int, help="lifetime in seconds")
    p.add_argument("--subscribe", action="append", metavar="FILTER",
                   help="grant subscribing to FILTER (repeatable)")
    p.add_argument("--publish", action="append", metavar="FILTER",
                   help="grant publishing to FILTER (repeatable)")
    p.add_argument("--config")
    p.set_defaults(func=_token)

    p = sub.add_parser("publish", help="publish a JSON value through the HTTP API")
    p.add_argument("topic")
    p.add_argument("json", help="the data, as JSON")
    p.add_argument("--retain", action="store_true")
    p.add_argument("--url", help="API base URL (default: from the config)")
    p.add_argument("--key", help="API key (default: TIDINGS_API_KEY, then the dev key)")
    p.add_argument("--config")
    p.set_defaults(func=_publish)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
