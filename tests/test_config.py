"""Settings: defaults, the TOML file, ``TIDINGS_*`` overrides, and errors that name the key.

Every call passes an explicit ``env`` dict, so the machine's environment never
leaks into a test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import config
from tidings.config import AclRule, ConfigError, HistoryRule, Settings


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "tidings.toml"
    p.write_text(text, encoding="utf-8")
    return p


def _fails(key: str, *, path: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Load and expect a ConfigError whose message starts with ``key``; return the message."""
    with pytest.raises(ConfigError) as info:
        config.load(path, env or {})
    msg = str(info.value)
    assert msg.startswith(key), msg
    return msg


# -- defaults -----------------------------------------------------------------------


def test_defaults_with_empty_env() -> None:
    s = config.load(None, {})
    assert isinstance(s, Settings)
    assert (s.ws.host, s.ws.port, s.ws.path) == ("127.0.0.1", 8080, "/ws")
    assert (s.api.host, s.api.port) == ("127.0.0.1", 8081)
    assert (s.mqtt.host, s.mqtt.port) == ("127.0.0.1", 1883)
    assert s.store.backend == "sqlite" and s.store.path == "./tidings-data"
    assert s.bus.backend == "memory"
    assert s.redis.url == "redis://127.0.0.1:6379/0"
    assert s.auth.jwt_secret == "" and s.auth.allow_anonymous is False
    assert s.api.keys == [] and s.acl == [] and s.history.rules == []
    assert s.node.name == ""
    # every bound has a default that is a bound
    assert s.ws.max_message_size > 0 and s.ws.outbound_buffer > 0
    assert s.ws.max_subscriptions > 0 and s.ws.commands_per_second > 0
    assert s.topics.max_length == 256 and s.topics.max_depth == 16
    assert s.history.size > 0 and s.history.ttl > 0
    assert 0 < s.auth.default_token_ttl <= s.auth.max_token_ttl


def test_environment_outside_the_prefix_is_ignored() -> None:
    s = config.load(None, {"HOME": "/x", "WS_PORT": "1", "TIDINGS_CONFIG": "/nope.toml",
                           "TIDINGS_TEST_WAIT": "9", "TIDINGS_WS_": "1"})
    assert s.ws.port == 8080


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load("/nonexistent/tidings.toml", {})


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(_toml(tmp_path, "[ws\nport = "), {})


# -- the TOML file ------------------------------------------------------------------


def test_toml_values(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
[node]
name = "n1"
[ws]
host = "0.0.0.0"
port = 9000
origins = ["https://example.com"]
max_message_size = 1024
connect_timeout = 2          # an integer where a float is wanted is fine
compression = true
[api]
port = 9001
keys = ["k1", "k2"]
[mqtt]
port = 1884
[limits]
max_message_size = 512
[store]
path = "/var/lib/tidings"
idempotency_ttl = 60.5
[auth]
jwt_secret = "s3cret"
allow_anonymous = true
[topics]
max_depth = 8
[history]
size = 10
ttl = 3600
""")
    s = config.load(path, {})
    assert s.node.name == "n1"
    assert (s.ws.host, s.ws.port, s.ws.origins) == ("0.0.0.0", 9000, ["https://example.com"])
    assert s.ws.max_message_size == 1024 and s.ws.compression is True
    assert s.ws.connect_timeout == 2.0 and isinstance(s.ws.connect_timeout, float)
    assert (s.api.port, s.api.keys) == (9001, ["k1", "k2"])
    assert s.mqtt.port == 1884
    assert s.store.path == "/var/lib/tidings" and s.store.idempotency_ttl == 60.5
    assert s.auth.jwt_secret == "s3cret" and s.auth.allow_anonymous is True
    assert s.topics.max_depth == 8
    assert (s.history.size, s.history.ttl) == (10, 3600.0)
    assert s.api.port == 9001 and s.ws.path == "/ws"  # untouched keys keep defaults


def test_acl_and_history_rules_tables(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
[[history.rules]]
pattern = "chat/#"
size = 1000
ttl = 604800

[[history.rules]]
pattern = "sensors/+/temp"
size = 0
ttl = 1.5

[[acl]]
filter = "chat/{uid}/#"
publish = true

[[acl]]
filter = "public/#"
users = ["anonymous", "alice"]
subscribe = true
publish = false
""")
    s = config.load(path, {})
    assert s.history.rules == [HistoryRule("chat/#", 1000, 604800.0),
                               HistoryRule("sensors/+/temp", 0, 1.5)]
    assert s.acl == [
        AclRule("chat/{uid}/#", ["*"], None, True),
        AclRule("public/#", ["anonymous", "alice"], True, False),
    ]


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[ws]\nport = 9000\nhost = \"0.0.0.0\"\n")
    s = config.load(path, {"TIDINGS_WS_PORT": "9100"})
    assert s.ws.port == 9100 and s.ws.host == "0.0.0.0"


# -- each documented environment override ---------------------------------------------

@pytest.mark.parametrize("name, value, section, key, expected", [
    ("TIDINGS_WS_HOST", "0.0.0.0", "ws", "host", "0.0.0.0"),
    ("TIDINGS_WS_PORT", "9000", "ws", "port", 9000),
    ("TIDINGS_WS_PORT", " 0 ", "ws", "port", 0),
    ("TIDINGS_API_HOST", "::1", "api", "host", "::1"),
    ("TIDINGS_API_PORT", "9001", "api", "port", 9001),
    ("TIDINGS_MQTT_HOST", "10.0.0.1", "mqtt", "host", "10.0.0.1"),
    ("TIDINGS_MQTT_PORT", "8883", "mqtt", "port", 8883),
    ("TIDINGS_STORE_PATH", "/data/t", "store", "path", "/data/t"),
    ("TIDINGS_AUTH_JWT_SECRET", "abc", "auth", "jwt_secret", "abc"),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "true", "auth", "allow_anonymous", True),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "1", "auth", "allow_anonymous", True),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "YES", "auth", "allow_anonymous", True),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "on", "auth", "allow_anonymous", True),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "false", "auth", "allow_anonymous", False),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "0", "auth", "allow_anonymous", False),
    ("TIDINGS_AUTH_ALLOW_ANONYMOUS", "off", "auth", "allow_anonymous", False),
    ("TIDINGS_API_KEYS", "k1", "api", "keys", ["k1"]),
    ("TIDINGS_API_KEYS", "k1,k2", "api", "keys", ["k1", "k2"]),
    ("TIDINGS_API_KEYS", " k1 , k2 ,, ", "api", "keys", ["k1", "k2"]),
    ("TIDINGS_NODE_NAME", "node-7", "node", "name", "node-7"),
    ("TIDINGS_BUS_BACKEND", "redis", "bus", "backend", "redis"),
    ("TIDINGS_STORE_BACKEND", "redis", "store", "backend", "redis"),
    ("TIDINGS_REDIS_URL", "redis://10.0.0.2:6380/1", "redis", "url", "redis://10.0.0.2:6380/1"),
    ("TIDINGS_HISTORY_TTL", "60", "history", "ttl", 60.0),
    ("TIDINGS_WS_ORIGINS", "https://a.example,https://b.example", "ws", "origins",
     ["https://a.example", "https://b.example"]),
])
def test_env_override(name: str, value: str, section: str, key: str, expected: object) -> None:
    s = config.load(None, {name: value})
    assert getattr(getattr(s, section), key) == expected


# -- invalid values name the key ------------------------------------------------------

def test_memory_history_rule_keeps_nothing(tmp_path: Path) -> None:
    """``memory = true`` needs no size or ttl: it keeps no history (size 0) and
    takes the [history] ttl."""
    s = config.load(_toml(tmp_path, """
[history]
ttl = 120
[[history.rules]]
pattern = "users/+/live"
memory = true
"""), {})
    assert s.history.rules == [HistoryRule("users/+/live", 0, 120.0, memory=True)]


@pytest.mark.parametrize("env, key", [
    ({"TIDINGS_WS_PORT": "http"}, "ws.port"),
    ({"TIDINGS_WS_PORT": "65536"}, "ws.port"),
    ({"TIDINGS_WS_PORT": "-1"}, "ws.port"),
    ({"TIDINGS_API_PORT": "8.5"}, "api.port"),
    ({"TIDINGS_MQTT_PORT": "100000"}, "mqtt.port"),
    ({"TIDINGS_WS_MAX_MESSAGE_SIZE": "-5"}, "ws.max_message_size"),
    ({"TIDINGS_WS_MAX_MESSAGE_SIZE": "1000"}, "ws.max_message_size"),  # < limits + envelope
    ({"TIDINGS_MQTT_MAX_PACKET_SIZE": "1000"}, "mqtt.max_packet_size"),
    ({"TIDINGS_MQTT_CLOSE_DRAIN": "-1"}, "mqtt.close_drain"),
    ({"TIDINGS_MQTT_CLOSE_DRAIN": "31"}, "mqtt.close_drain"),
    ({"TIDINGS_MQTT_RESPONSE_INFORMATION": "users/{user}/r/"}, "mqtt.response_information"),
    ({"TIDINGS_MQTT_RESPONSE_INFORMATION": "r/+/"}, "mqtt.response_information"),
    ({"TIDINGS_MQTT_ANONYMOUS_RESPONSE_INFORMATION": "r/{uid}/"},
     "mqtt.anonymous_response_information"),
    ({"TIDINGS_WS_OUTBOUND_BUFFER": "65536"}, "ws.outbound_buffer"),  # < a reply + a burst
    ({"TIDINGS_LIMITS_MAX_MESSAGE_SIZE": "0"}, "limits.max_message_size"),
    ({"TIDINGS_LIMITS_MAX_REPLY_SIZE": "1024"}, "limits.max_reply_size"),
    ({"TIDINGS_LIMITS_MAX_SINCE_TOPICS": "0"}, "limits.max_since_topics"),
    ({"TIDINGS_WS_OUTBOUND_BUFFER": "-1"}, "ws.outbound_buffer"),
    ({"TIDINGS_HISTORY_SIZE": "-1"}, "history.size"),
    ({"TIDINGS_HISTORY_TTL": "0"}, "history.ttl"),
    ({"TIDINGS_HISTORY_TTL": "nan"}, "history.ttl"),
    ({"TIDINGS_HISTORY_TTL": "inf"}, "history.ttl"),
    ({"TIDINGS_STORE_IDEMPOTENCY_TTL": "-1"}, "store.idempotency_ttl"),
    ({"TIDINGS_WS_CONNECT_TIMEOUT": "NaN"}, "ws.connect_timeout"),
    ({"TIDINGS_TOPICS_MAX_DEPTH": "0"}, "topics.max_depth"),
    ({"TIDINGS_AUTH_ALLOW_ANONYMOUS": "maybe"}, "auth.allow_anonymous"),
    ({"TIDINGS_AUTH_ALLOW_ANONYMOUS": ""}, "auth.allow_anonymous"),
    ({"TIDINGS_WS_BOGUS": "1"}, "ws.bogus"),
    ({"TIDINGS_HISTORY_RULES": "x"}, "history.rules"),
    ({"TIDINGS_STORE_BACKEND": "postgres"}, "store.backend"),
    ({"TIDINGS_BUS_BACKEND": "kafka"}, "bus.backend"),
    ({"TIDINGS_WS_PATH": "ws"}, "ws.path"),
    ({"TIDINGS_NODE_LOG_LEVEL": "LOUD"}, "node.log_level"),
    ({"TIDINGS_AUTH_DEFAULT_TOKEN_TTL": "100", "TIDINGS_AUTH_MAX_TOKEN_TTL": "10"},
     "auth.default_token_ttl"),
    ({"TIDINGS_WS_TLS_CERT": "/etc/cert.pem"}, "ws.tls_cert"),  # without tls_key
    ({"TIDINGS_API_TLS_KEY": "/etc/key.pem"}, "api.tls_cert"),  # without tls_cert
    ({"TIDINGS_PUSH_FALLBACK_AFTER": "-1"}, "push.fallback_after"),
    ({"TIDINGS_PUSH_FALLBACK_AFTER": "nan"}, "push.fallback_after"),
    ({"TIDINGS_PUSH_FALLBACK_PENDING_MAX": "0"}, "push.fallback_pending_max"),
])
def test_invalid_env_values_name_the_key(env: dict[str, str], key: str) -> None:
    _fails(key, env=env)


@pytest.mark.parametrize(("packet", "buffer", "expected"), [
    ("0", "1048576", 69897), ("268435455", "1048576", 1048576),
    ("2000000", "1999999", 1999999), ("500000", "1999999", 500000)])
def test_max_packet_size_never_exceeds_the_outbound_buffer(packet: str, buffer: str,
                                                          expected: int) -> None:
    """No setting lets a client publish a packet no subscriber's outbound buffer can
    hold: mqtt.max_packet_size (derived, or set, like the old default) is lowered to
    ws.outbound_buffer."""
    s = config.load(None, {"TIDINGS_MQTT_MAX_PACKET_SIZE": packet,
                           "TIDINGS_WS_OUTBOUND_BUFFER": buffer})
    assert s.mqtt.max_packet_size == expected <= s.ws.outbound_buffer


def test_unknown_env_key_names_the_variable() -> None:
    assert "TIDINGS_WS_BOGUS" in _fails("ws.bogus", env={"TIDINGS_WS_BOGUS": "1"})


def test_tls_files_must_exist(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    _fails("ws.tls_key", env={"TIDINGS_WS_TLS_CERT": str(cert),
                              "TIDINGS_WS_TLS_KEY": str(tmp_path / "missing.pem")})
    key = tmp_path / "key.pem"
    key.write_text("x")
    s = config.load(None, {"TIDINGS_WS_TLS_CERT": str(cert), "TIDINGS_WS_TLS_KEY": str(key)})
    assert s.ws.tls_cert == str(cert)


@pytest.mark.parametrize("text, key", [
    ("[ws]\nport = 70000\n", "ws.port"),
    ("[ws]\nport = \"8080\"\n", "ws.port"),  # a string where an integer is wanted
    ("[ws]\nport = true\n", "ws.port"),  # a bool is not an integer
    ("[ws]\nport = 80.0\n", "ws.port"),
    ("[ws]\nmax_message_size = -1\n", "ws.max_message_size"),
    ("[api]\nmax_body_size = 0\n", "api.max_body_size"),
    ("[history]\nsize = -3\n", "history.size"),
    ("[history]\nttl = nan\n", "history.ttl"),
    ("[ws]\ncompression = \"yes\"\n", "ws.compression"),  # TOML has real booleans
    ("[auth]\nallow_anonymous = 1\n", "auth.allow_anonymous"),
    ("[ws]\nbogus = 1\n", "ws.bogus"),
    ("[bogus]\nx = 1\n", "bogus"),
    ("ws = 1\n", "ws"),
    ("[api]\nkeys = \"k1\"\n", "api.keys"),
    ("[api]\nkeys = [\"k1\", 2]\n", "api.keys"),
    ("[node]\nname = 5\n", "node.name"),
    ("[ws]\ntls_cert = \"/c.pem\"\n", "ws.tls_cert"),
    ("[api]\ntls_key = \"/k.pem\"\n", "api.tls_cert"),
    # [[history.rules]]
    ("[[history.rules]]\npattern = \"a/#/b\"\nsize = 1\nttl = 1\n", "history.rules[0].pattern"),
    ("[[history.rules]]\npattern = \"a+\"\nsize = 1\nttl = 1\n", "history.rules[0].pattern"),
    ("[[history.rules]]\npattern = \"\"\nsize = 1\nttl = 1\n", "history.rules[0].pattern"),
    (("[[history.rules]]\npattern = \"a\"\nsize = 1\nttl = 1\n"
      "[[history.rules]]\npattern = \"b\"\nsize = -1\nttl = 1\n"), "history.rules[1].size"),
    ("[[history.rules]]\npattern = \"a\"\nsize = 1\nttl = 0\n", "history.rules[0].ttl"),
    ("[[history.rules]]\npattern = \"a\"\nttl = 1\n", "history.rules[0].size"),  # required
    ("[[history.rules]]\npattern = \"a\"\nsize = 1\n", "history.rules[0].ttl"),  # required
    ("[[history.rules]]\npattern = \"a\"\nmemory = true\nsize = 5\n",
     "history.rules[0].size"),  # a memory rule keeps no history
    ("[[history.rules]]\npattern = \"a\"\nmemory = \"yes\"\n", "history.rules[0].memory"),
    ("[[history.rules]]\npattern = \"a\"\nsize = 1\nttl = 1\nextra = 2\n",
     "history.rules[0].extra"),
    ("[history]\nrules = [1]\n", "history.rules[0]"),
    # [[acl]]
    ("[[acl]]\nfilter = \"a/#/b\"\n", "acl[0].filter"),
    ("[[acl]]\nfilter = \"users/{uid}+\"\n", "acl[0].filter"),
    ("[[acl]]\nusers = [\"*\"]\n", "acl[0].filter"),  # required
    ("[[acl]]\nfilter = \"a\"\nsubscribe = \"yes\"\n", "acl[0].subscribe"),
    ("[[acl]]\nfilter = \"a\"\nusers = \"alice\"\n", "acl[0].users"),
    ("[[acl]]\nfilter = \"a\"\nwho = 1\n", "acl[0].who"),
    ("[acl]\nfilter = \"a\"\n", "acl"),  # a table, not an array of tables
])
def test_invalid_file_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    _fails(key, path=_toml(tmp_path, text))


def test_error_message_does_not_show_a_traceback_type(tmp_path: Path) -> None:
    msg = _fails("ws.port", path=_toml(tmp_path, "[ws]\nport = \"x\"\n"))
    assert "Traceback" not in msg and "ValueError" not in msg
