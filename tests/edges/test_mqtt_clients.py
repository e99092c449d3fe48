"""The broker with the clients people already use: Debian's ``mosquitto_pub`` and
``mosquitto_sub`` (package mosquitto-clients), in MQTT 3.1.1 and 5.0.

Without the programs these tests skip, saying how to install them; under
``CI=true`` a missing program is a failure instead (scripts/test.sh installs
the package).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator

import orjson
import pytest

from conftest import WAIT, Node
from support.mqtt import NodeMaker, broker, make_node, metric, open_broker, pub_token, wait_until

_FIXTURES = (make_node, open_broker)
PROGRAMS = ("mosquitto_pub", "mosquitto_sub")
FORMAT = "MSG|%t|%q|%r|%p"  # one line per message: topic, QoS, RETAIN, payload


@pytest.fixture(autouse=True)
def mosquitto_clients() -> None:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if not missing:
        return
    reason = (f"{', '.join(missing)} not on PATH: apt-get install -y mosquitto-clients "
              "(scripts/test.sh does this)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"under CI the MQTT client tests must run: {reason}")
    pytest.skip(reason)


def auth(token: str | None) -> list[str]:
    return [] if token is None else ["-u", "device", "-P", token]


async def run(*args: str, stdin: bytes | None = None,
              within: float = WAIT) -> tuple[int, str, str]:
    """Run a client to completion (bounded); (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{args[0]} did not finish within {within}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Sub:
    """A running ``mosquitto_sub -d``: subscribed once its SUBACK line is seen."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.debug: list[str] = []

    @classmethod
    async def start(cls, port: int, *args: str, token: str | None = None,
                    wait_suback: bool = True) -> Sub:
        proc = await asyncio.create_subprocess_exec(
            # line-buffered stdout, or the SUBACK line waits in stdio's buffer
            "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-d",
            "-F", FORMAT, *auth(token), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        sub = cls(proc)
        if wait_suback:
            while "received SUBACK" not in (await sub._line()):
                pass
        return sub

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        if not raw:
            raise AssertionError(f"mosquitto_sub ended: {self.debug[-5:]}")
        line = raw.decode().rstrip("\n")
        self.debug.append(line)
        return line

    async def message(self) -> tuple[str, int, bool, str]:
        """The next message: (topic, QoS, RETAIN, payload)."""
        while True:
            line = await self._line()
            if line.startswith("MSG|"):
                _, topic, qos, retain, payload = line.split("|", 4)
                return topic, int(qos), retain == "1", payload

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), WAIT)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Only to kill: mosquitto_sub 2.0.11 can hang on SIGINT/SIGTERM that lands while
        it is in a callback (its handler calls into the library), so a polite exit is
        ``-C n`` and a message."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)


@pytest.fixture
async def subs() -> AsyncIterator[list[Sub]]:
    """Every Sub a test starts is stopped (by its pid) and reaped at the end."""
    made: list[Sub] = []
    yield made
    for s in made:
        if s.proc.returncode is None:
            s.proc.kill()
        await s.proc.wait()


async def start_sub(subs: list[Sub], node: Node, *args: str, token: str | None = None,
                    wait_suback: bool = True) -> Sub:
    s = await Sub.start(node.app.mqtt_port, *args, token=token, wait_suback=wait_suback)
    subs.append(s)
    return s


async def pub(node: Node, *args: str, token: str | None) -> None:
    rc, out, err = await run("mosquitto_pub", "-h", "127.0.0.1", "-p",
                             str(node.app.mqtt_port), *auth(token), *args)
    assert rc == 0, (out, err)


VERSIONS = [("mqttv311", False), ("mqttv5", True)]


# --- publish / subscribe --------------------------------------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_pub_sub(node: Node, subs: list[Sub], version: str, qos: int) -> None:
    """mosquitto_pub to mosquitto_sub at each QoS, both protocol versions; mosquitto_pub
    disconnects right after publishing, and the message still gets through."""
    s = await start_sub(subs, node, "-V", version, "-q", str(qos), "-t", "mq/#",
                        token=node.token("alice"))
    for i in range(3):
        await pub(node, "-V", version, "-q", str(qos), "-t", f"mq/{i}", "-m", f"hello {i}",
                  token=pub_token(node))
    for i in range(3):
        assert await s.message() == (f"mq/{i}", qos, False, f"hello {i}")


async def test_many_lines_in_order(node: Node, subs: list[Sub]) -> None:
    """``mosquitto_pub -l``: one connection, a message per stdin line, all delivered in
    order at QoS 1."""
    count = 200
    s = await start_sub(subs, node, "-q", "1", "-t", "lines", "-C", str(count),
                        token=node.token("alice"))
    lines = "".join(f"line {i}\n" for i in range(count)).encode()
    rc, _, err = await run("mosquitto_pub", "-h", "127.0.0.1", "-p",
                           str(node.app.mqtt_port), *auth(pub_token(node)),
                           "-q", "1", "-t", "lines", "-l", stdin=lines)
    assert rc == 0, err
    got = [(await s.message())[3] for _ in range(count)]
    assert got == [f"line {i}" for i in range(count)]
    assert await s.exit_code() == 0


async def test_wildcards_and_websocket_bridge(node: Node, subs: list[Sub]) -> None:
    """A sensor publishing with mosquitto_pub reaches a WS browser on ``home/+/temp``;
    a WS publish reaches mosquitto_sub on ``home/#``."""
    browser = await node.client("alice")
    assert (await browser.request("subscribe", topic="home/+/temp"))["ok"]
    s = await start_sub(subs, node, "-t", "home/#", token=node.token("alice"))
    await pub(node, "-t", "home/kitchen/temp", "-m", "21.5", token=pub_token(node))
    m = await browser.push()
    assert (m["topic"], m["data"]) == ("home/kitchen/temp", 21.5)
    assert await s.message() == ("home/kitchen/temp", 0, False, "21.5")
    tab = await node.client(token=node.token("alice", publish=["home/#"]))
    assert (await tab.request("publish", topic="home/hall/light", data={"on": True}))["ok"]
    topic, _, _, payload = await s.message()
    assert (topic, orjson.loads(payload)) == ("home/hall/light", {"on": True})


# --- retained, wills, $SYS ------------------------------------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_retained(node: Node, version: str) -> None:
    """``-r`` keeps a message for later subscribers (RETAIN=1); ``-r -n`` clears it."""
    token = pub_token(node)
    await pub(node, "-V", version, "-r", "-q", "1", "-t", "ret/x", "-m", "kept", token=token)
    rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.app.mqtt_port),
                             *auth(node.token("alice")), "-V", version, "-t", "ret/#",
                             "-C", "1", "-F", FORMAT)
    assert (rc, out.strip()) == (0, "MSG|ret/x|0|1|kept"), err
    await pub(node, "-V", version, "-r", "-n", "-t", "ret/x", token=token)
    rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.app.mqtt_port),
                             *auth(node.token("alice")), "-V", version, "-t", "ret/#",
                             "--retained-only", "-W", "1", "-F", FORMAT)
    assert "MSG|" not in out, out


async def test_retained_keeps_v5_properties(node: Node) -> None:
    """``mosquitto_pub -V mqttv5 -r -D publish ...``: a later ``mosquitto_sub`` gets the
    retained message with its User Property, Content Type, Payload Format Indicator
    and what is left of its Message Expiry Interval [MQTT-3.3.2-4], [MQTT-3.3.2-6],
    [MQTT-3.3.2-17], [MQTT-3.3.2-20]."""
    await pub(node, "-V", "mqttv5", "-r", "-q", "1", "-t", "ret/props", "-m", "21.5",
              "-D", "publish", "user-property", "unit", "celsius",
              "-D", "publish", "content-type", "text/plain",
              "-D", "publish", "payload-format-indicator", "1",
              "-D", "publish", "message-expiry-interval", "600", token=pub_token(node))
    rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.app.mqtt_port),
                             *auth(node.token("alice")), "-V", "mqttv5", "-t", "ret/props",
                             "-C", "1", "-F", "%t|%r|%P|%C|%F|%E|%p")
    topic, retain, user, content, pfi, expiry, payload = out.strip().split("|")
    assert (rc, topic, retain, user, content, pfi, payload) == (
        0, "ret/props", "1", "unit:celsius", "text/plain", "1", "21.5"), err
    assert 0 < int(expiry) <= 600


async def test_will_of_a_killed_client(node: Node, subs: list[Sub]) -> None:
    """``mosquitto_sub --will-topic``: killed (no DISCONNECT), its will is published;
    stopped politely (it sends DISCONNECT), it is not."""
    watcher = await start_sub(subs, node, "-q", "1", "-t", "wills/#",
                              token=node.token("alice"))
    token = pub_token(node)
    polite = await start_sub(subs, node, "-t", "polite/x", "-C", "1", "--will-topic",
                             "wills/polite", "--will-payload", "bye", token=token)
    await pub(node, "-t", "polite/x", "-m", "go", token=token)  # -C 1: it leaves politely
    assert await polite.exit_code() == 0
    killed = await start_sub(subs, node, "-t", "x", "--will-topic", "wills/killed",
                             "--will-payload", "lost", "--will-qos", "1", token=token)
    killed.stop(signal.SIGKILL)
    assert await watcher.message() == ("wills/killed", 1, False, "lost")
    assert await metric(node, "tidings_mqtt_wills_total") == 1


async def test_sys_version(make_node: NodeMaker) -> None:
    """``mosquitto_sub -t '$SYS/broker/version'`` gets the retained version at once."""
    n = await make_node(mqtt__sys_interval=0.2)
    rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(n.app.mqtt_port),
                             *auth(n.token("alice")), "-t", "$SYS/broker/version",
                             "-C", "1", "-F", FORMAT)
    assert rc == 0, err
    assert out.startswith("MSG|$SYS/broker/version|0|1|tidings"), out


# --- sessions --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_persistent_session(node: Node, subs: list[Sub], version: str) -> None:
    """``mosquitto_sub -c -i id``: QoS 1 messages published while it is away are
    delivered when it comes back."""
    token = node.token("alice")
    args = ["-V", version, "-c", "-i", f"persist-{version}", "-q", "1", "-t", "ps/#"]
    s = await start_sub(subs, node, *args, "-C", "1", token=token)
    await pub(node, "-t", "ps/hello", "-m", "hi", token=pub_token(node))
    assert await s.exit_code() == 0  # after one message, with DISCONNECT

    def offline() -> bool:
        sess = broker(node).sessions.get(f"persist-{version}")
        return sess is not None and sess.conn is None

    await wait_until(offline, what="the session offline")
    for i in range(2):
        await pub(node, "-V", version, "-q", "1", "-t", "ps/x", "-m", f"m{i}",
                  token=pub_token(node))
    s = await start_sub(subs, node, *args, "-C", "2", token=token, wait_suback=False)
    assert [(await s.message())[3] for _ in range(2)] == ["m0", "m1"]
    assert await s.exit_code() == 0


# --- auth and ACL -------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_refused_connections(node: Node, version: str) -> None:
    """A bad token and a missing one are refused, and the client says why."""
    port = str(node.app.mqtt_port)
    for creds, words in ((auth("not-a-token"), "bad user name or password"),
                         ([], "not authori")):
        rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", port, *creds,
                                 "-V", version, "-t", "x", "-C", "1")
        assert rc != 0
        assert words in (out + err).lower(), (out, err)


async def test_denied_subscription_and_publish(node: Node, subs: list[Sub]) -> None:
    """Alice's mosquitto_sub on ``users/bob/x`` is denied (the client reports it); her
    publish there never reaches bob."""
    bob = await start_sub(subs, node, "-q", "1", "-t", "users/bob/#", token=node.token("bob"))
    rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p", str(node.app.mqtt_port),
                             *auth(node.token("alice")), "-t", "users/bob/x", "-C", "1")
    # mosquitto_sub 2.0.11 exits 0 here; what it prints is the client's verdict
    assert "all subscription requests were denied" in (out + err).lower(), (rc, out, err)
    for version in ("mqttv311", "mqttv5"):
        rc, out, err = await run("mosquitto_pub", "-h", "127.0.0.1", "-p",
                                 str(node.app.mqtt_port), *auth(node.token("alice")),
                                 "-V", version, "-q", "1", "-t", "users/bob/x", "-m", "no")
        if version == "mqttv5":  # the refusal reaches a 5.0 publisher in its PUBACK
            assert "not authori" in (out + err).lower(), (rc, out, err)
    await node.publish("users/bob/x", "from the backend")
    assert await bob.message() == ("users/bob/x", 1, False, '"from the backend"')


async def test_device_notifications(node: Node, subs: list[Sub]) -> None:
    """A device on mosquitto_sub gets alice's notifications (QoS 1) and unread count;
    its mosquitto_pub to ``users/alice/read`` is applied: the WS tab sees the read."""
    tab = await node.client("alice", device="tab")
    token = node.token("alice")
    s = await start_sub(subs, node, "-q", "1", "-t", "users/alice/notifications",
                        "-t", "users/alice/unread", token=token)
    status, body = await node.api("POST", "/v1/notify", {"users": ["alice"], "title": "hi"})
    assert status == 200
    got = {}
    for _ in range(2):
        topic, qos, _, payload = await s.message()
        got[topic] = (qos, orjson.loads(payload))
    assert got["users/alice/notifications"][0] == 1
    assert got["users/alice/notifications"][1]["id"] == body["id"]
    assert got["users/alice/unread"][1] == {"count": 1}
    await tab.push()
    await pub(node, "-q", "1", "-t", "users/alice/read",
              "-m", orjson.dumps({"ids": [body["id"]]}).decode(), token=token)
    ev = await tab.push()
    assert (ev["type"], ev["unread"]) == ("read", 0)
    assert await s.message() == ("users/alice/unread", 1, False, '{"count":0}')


async def test_open_broker_with_anonymous_clients(open_broker: Node, subs: list[Sub]) -> None:
    """config/open-broker.toml: anonymous mosquitto_pub / mosquitto_sub work as with an
    open Mosquitto; test/nosubscribe and users/... are refused."""
    n = open_broker
    s = await start_sub(subs, n, "-q", "1", "-t", "home/#", "-t", "sensors/+/temp")
    await pub(n, "-q", "1", "-t", "home/hall/light", "-m", "on", token=None)
    await pub(n, "-V", "mqttv5", "-t", "sensors/s1/temp", "-m", "19", token=None)
    await pub(n, "-t", "test/nosubscribe", "-m", "fine to publish", token=None)
    assert await s.message() == ("home/hall/light", 1, False, "on")
    assert await s.message() == ("sensors/s1/temp", 0, False, "19")
    for topic in ("test/nosubscribe", "users/alice/notifications"):
        rc, out, err = await run("mosquitto_sub", "-h", "127.0.0.1", "-p",
                                 str(n.app.mqtt_port), "-t", topic, "-C", "1")
        assert "all subscription requests were denied" in (out + err).lower(), (topic, out)
    rc, out, err = await run("mosquitto_pub", "-h", "127.0.0.1", "-p", str(n.app.mqtt_port),
                             "-V", "mqttv5", "-q", "1", "-t", "users/alice/x", "-m", "no")
    assert "not authori" in (out + err).lower(), (rc, out, err)


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
async def test_open_broker_hash_subscriber(open_broker: Node, subs: list[Sub],
                                           version: str) -> None:
    """``mosquitto_sub -t '#'`` on config/open-broker.toml, as on a home network: granted,
    it gets the retained and live messages of every topic but ``test/nosubscribe``
    (the deny rule screens it per message, retained ones included [MQTT-3.3.1-9])."""
    n = open_broker
    await pub(n, "-r", "-q", "1", "-t", "test/nosubscribe", "-m", "hidden", token=None)
    await pub(n, "-r", "-q", "1", "-t", "home/door", "-m", "closed", token=None)
    s = await start_sub(subs, n, "-V", version, "-q", "1", "-t", "#", "-C", "3")
    assert await s.message() == ("home/door", 1, True, "closed")
    for topic, text in (("test/nosubscribe", "hidden"), ("home/hall", "on"),
                        ("test/other", "x")):
        await pub(n, "-V", version, "-q", "1", "-t", topic, "-m", text, token=None)
    assert await s.message() == ("home/hall", 1, False, "on")
    assert await s.message() == ("test/other", 1, False, "x")  # the third: nothing between
    assert await s.exit_code() == 0
    assert await metric(n, "tidings_acl_denied_messages_total", edge="mqtt") == 2
