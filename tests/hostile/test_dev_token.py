"""Issue 10: ``/dev/token`` (a token for any user, no credentials) only on a
development node that nobody else can reach.

It exists only when every listener (WS, API, MQTT) is on loopback AND both the
API key and the JWT secret are the ones made for the data folder; whenever a
listener is beyond loopback while either was made here, startup logs a WARNING.

Tests never bind beyond loopback: a node is built from its settings (which
decide), then its listeners are moved to 127.0.0.1 before it starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import API_KEY, JWT_SECRET, Node, stop_node
from support.mqtt import OPEN_BROKER
from tidings import config
from tidings.app import App, exposed_listeners

Build = Callable[..., Awaitable[Node]]


@pytest.fixture
async def build(tmp_path: Path) -> AsyncIterator[Build]:
    """``await build(env, toml)``: a node whose settings come from ``toml`` and ``env`` as
    given (hosts included), started with its listeners moved to loopback."""
    made: list[Node] = []

    async def make(env: dict[str, str], toml: Path | None = None) -> Node:
        env = {"TIDINGS_WS_PORT": "0", "TIDINGS_API_PORT": "0", "TIDINGS_MQTT_PORT": "0",
               "TIDINGS_STORE_PATH": str(tmp_path / f"data{len(made)}"), **env}
        app = App(config.load(toml, env))  # what the settings say decides
        for section in (app.settings.ws, app.settings.api, app.settings.mqtt):
            section.host = "127.0.0.1"  # the test itself listens on loopback only
        await app.start()
        n = Node(app, app.settings, aiohttp.ClientSession())
        made.append(n)
        return n

    yield make
    for n in made:
        await stop_node(n)


async def dev_token(n: Node, user: str = "bob") -> tuple[int, Any]:
    url = f"http://127.0.0.1:{n.app.ws_port}/dev/token?user={user}"
    async with n.http.get(url) as r:
        return r.status, await r.read()


LOOPBACK = {"TIDINGS_WS_HOST": "127.0.0.1", "TIDINGS_API_HOST": "127.0.0.1",
            "TIDINGS_MQTT_HOST": "127.0.0.1"}


async def test_dev_token_on_a_loopback_dev_node(build: Build,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tidings")
    n = await build(LOOPBACK)
    status, body = await dev_token(n, "bob")
    assert status == 200, body
    assert n.app.tokens.verify(json.loads(body)["token"]).user == "bob"
    assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]


async def test_plain_http_on_the_ws_port_says_the_connection_closes(build: Build) -> None:
    """The WS port answers one plain request per connection (the demo page, /dev/token,
    a 404) and closes it: the response says so, so a client that pools connections
    (Node's fetch, aiohttp) never sends its next request on a closed one. Without
    the header, back-to-back requests failed now and then with a dropped connection."""
    n = await build(LOOPBACK)
    base = f"http://127.0.0.1:{n.app.ws_port}"
    for path in ("/dev/token?user=bob", "/", "/no-such-page") * 10:
        async with n.http.get(base + path) as r:
            assert r.headers.get("Connection", "").lower() == "close", (path, r.headers)
            await r.read()


async def test_open_broker_config_has_no_dev_token(build: Build,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """config/open-broker.toml binds WS and MQTT on 0.0.0.0 with no keys."""
    assert exposed_listeners(config.load(OPEN_BROKER, {})) == [
        "ws.host = '0.0.0.0'", "mqtt.host = '0.0.0.0'"]
    caplog.set_level(logging.WARNING, "tidings")
    n = await build({}, OPEN_BROKER)
    status, _ = await dev_token(n)
    assert status == 404
    warned = [r for r in caplog.records if "beyond loopback" in r.getMessage()]
    assert warned and warned[0].levelno == logging.WARNING
    text = warned[0].getMessage()
    assert "ws.host = '0.0.0.0'" in text and "mqtt.host = '0.0.0.0'" in text
    assert "API key and JWT secret" in text
    secret = n.app.secrets
    assert secret.jwt_secret not in text and secret.api_keys[0] not in text


@pytest.mark.parametrize("host", ["ws", "api", "mqtt"])
async def test_any_listener_beyond_loopback_removes_dev_token(build: Build, host: str,
                                                              caplog: pytest.LogCaptureFixture
                                                              ) -> None:
    caplog.set_level(logging.WARNING, "tidings")
    n = await build({**LOOPBACK, f"TIDINGS_{host.upper()}_HOST": "0.0.0.0"})
    assert (await dev_token(n))[0] == 404
    assert any(f"{host}.host = '0.0.0.0'" in r.getMessage() for r in caplog.records)


async def test_mqtt_off_does_not_count(build: Build) -> None:
    n = await build({**LOOPBACK, "TIDINGS_MQTT_HOST": "0.0.0.0", "TIDINGS_MQTT_ENABLED": "false"})
    assert (await dev_token(n))[0] == 200


@pytest.mark.parametrize("env", [{"TIDINGS_API_KEYS": API_KEY},
                                 {"TIDINGS_AUTH_JWT_SECRET": JWT_SECRET}],
                         ids=["api-keys", "jwt-secret"])
async def test_configured_credentials_remove_dev_token(build: Build, env: dict[str, str]
                                                       ) -> None:
    n = await build({**LOOPBACK, **env})
    assert (await dev_token(n))[0] == 404


async def test_configured_credentials_beyond_loopback_do_not_warn(
        build: Build, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tidings")
    await build({**LOOPBACK, "TIDINGS_WS_HOST": "0.0.0.0", "TIDINGS_API_KEYS": API_KEY,
                 "TIDINGS_AUTH_JWT_SECRET": JWT_SECRET})
    assert not [r for r in caplog.records if "beyond loopback" in r.getMessage()]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.5", False),
    ("example.com", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    s = config.load(None, {**LOOPBACK, "TIDINGS_API_HOST": host})
    assert (exposed_listeners(s) == []) is loopback
