"""Operations and health, probed as a newcomer and an operator would (issue 10).

Each test reproduces a finding of the hostile probe: a second server on one
data folder, ``token`` / ``publish`` run from another folder, a corrupt
secrets file, a port clash, misspelt API fields, a store that cannot write
while ``/readyz`` said ready, library chatter in the log, the hand-written
``/metrics``. CLI behaviour runs real ``tidings`` processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import WAIT, Node, ServerProcess

CLI = [sys.executable, "-m", "tidings.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's (or a fixture's) TIDINGS_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env.update(extra)
    return env


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
