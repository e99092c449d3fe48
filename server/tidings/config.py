"""Settings: TOML file, then ``TIDINGS_<SECTION>_<KEY>`` environment overrides.

Every bound the server enforces is a setting here, with a default that is
safe for a small public deployment. ``load()`` validates everything before
the server binds a socket; an invalid value raises :class:`ConfigError`
naming the key (``ws.port``), never a traceback from deep inside.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

__all__ = [
    "AclRule",
    "ConfigError",
    "HistoryRule",
    "Settings",
    "load",
    "operator_caps",
    "push_frame_bound",
]


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass
class NodeSettings:
    name: str = ""  # empty: derived from the host name and pid
    shutdown_timeout: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"  # "json": one JSON object per line (logs.py)
    # seconds: garbage input (unparsable HTTP, broken MQTT) logs one line per
    # kind and port per interval, plus a count of the rest (logs.py)
    log_summary_interval: float = 60.0
    reuse_port: bool = False  # SO_REUSEPORT on every listener (set by serve --workers)


@dataclass
class WsSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    path: str = "/ws"
    origins: list[str] = field(default_factory=list)  # empty: any Origin
    tls_cert: str = ""
    tls_key: str = ""
    max_message_size: int = 0  # bytes per incoming frame (over it: close 1009); 0: derived
    connect_timeout: float = 10.0
    commands_per_second: float = 50.0
    commands_burst: int = 100
    max_subscriptions: int = 256
    outbound_buffer: int = 1048576  # unsent bytes per session; over it: close 4008
    compression: bool = False  # permessage-deflate; compressed sessions take a slower path
    ping_interval: float = 20.0
    max_connections_per_ip: int = 1000
    demo_page: bool = True


@dataclass
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    keys: list[str] = field(default_factory=list)  # empty: a dev key is made and printed
    tls_cert: str = ""
    tls_key: str = ""
    max_body_size: int = 1048576
    header_timeout: float = 10.0  # seconds to send a request's headers; then the socket closes
    body_timeout: float = 30.0  # seconds to send a request's body; then 408


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    enabled: bool = True
    tls_port: int = 8883  # used only when tls_cert and tls_key are set
    tls_cert: str = ""
    tls_key: str = ""
    max_packet_size: int = 0  # bytes, whole packet; 0: derived from limits.max_message_size
    max_keepalive: int = 3600  # seconds; a longer requested keepalive is lowered (5.0)
    # seconds a connection closed for a protocol error keeps reading (and discarding)
    # after its DISCONNECT and half-close, so the client reads the reason, not a reset
    close_drain: float = 1.0
    # Topic Aliases the server uses towards one 5.0 client that allows them (its
    # Topic Alias Maximum caps it): repeated topics go out as a 2-byte alias,
    # the least recently used topic giving its alias up; 0 turns them off
    topic_aliases: int = 32
    # CONNACK Response Information for a client that asks (5.0 Request Response
    # Information 1): a token's user gets {uid} filled in, an anonymous client
    # {client_id}; "" sends none
    response_information: str = "users/{uid}/responses/"
    anonymous_response_information: str = "responses/{client_id}/"
    receive_maximum: int = 64  # QoS 1/2 messages in flight per direction per client
    max_queued: int = 1000  # messages kept per offline persistent session; more are dropped
    max_session_expiry: int = 86400 * 7  # seconds a persistent session outlives its client
    max_subscriptions: int = 256
    # cluster (a shared store): a node's $share membership and liveness entries
    # vanish this long after it dies (refreshed every third of it)
    cluster_ttl: float = 3.0
    takeover_timeout: float = 2.0  # seconds a CONNECT waits for another node to hand over
    sys_interval: float = 10.0  # seconds between $SYS/broker/... updates; 0 turns them off
    websocket_path: str = "/mqtt"  # MQTT over WebSocket on the WS edge; empty turns it off
    max_connections_per_ip: int = 1000  # open MQTT connections per client address
    max_sessions_per_user: int = 100  # persistent sessions one user may keep; more: 0x97


@dataclass
class LimitsSettings:
    """Sizes that hold on every edge (see :func:`derive_sizes` for what follows from them)."""

    max_message_size: int = 65536  # bytes of one message's data at publish, on every edge
    max_reply_size: int = 262144  # bytes of messages / items in one reply; more: paged
    max_since_topics: int = 100  # topics in one subscribe's since map
    max_publish_group: int = 256  # publishes the node stores in one store call


@dataclass
class StoreSettings:
    backend: str = "sqlite"
    path: str = "./tidings-data"
    idempotency_ttl: float = 86400.0
    sweep_interval: float = 30.0  # seconds between sweeps of expired rows (per node)
    sweep_batch: int = 1000  # rows of each kind deleted per sweep step


@dataclass
class BusSettings:
    backend: str = "memory"


@dataclass
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"


@dataclass
class AuthSettings:
    jwt_secret: str = ""  # empty: a secret is made once and kept in the data folder
    allow_anonymous: bool = False
    max_token_ttl: int = 86400 * 30
    default_token_ttl: int = 3600
    # verified tokens remembered (by digest, until their exp) so a reconnect
    # skips the signature check; 0 turns the cache off
    token_cache: int = 10000


@dataclass
class TopicSettings:
    max_length: int = 256
    max_depth: int = 16
    # subscriptions one user holds on this node, over all its connections and
    # persistent MQTT sessions (WS and MQTT together); more: refused
    max_user_subscriptions: int = 2048


@dataclass
class NotifySettings:
    max_users: int = 10000  # ids per POST /v1/notify
    max_data_size: int = 65536  # bytes of a notification's data, as JSON (stored per user)
    max_ttl: float = 86400.0 * 365
    max_inbox: int = 1000  # items kept per user; over it the oldest read ones go first
    max_templates: int = 64  # strings with placeholders per notification (content.py)
    max_placeholders: int = 256  # placeholders in all of one notification's strings
    lease: float = 60.0  # seconds a node holds a sending job (or due entry) between renewals
    schedule_interval: float = 1.0  # seconds between the scheduler's looks at due work
    due_batch: int = 500  # due-queue entries (held / per-user times) fired per scheduler step


def _default_categories() -> list[str]:
    return ["general", "transactional", "security", "social", "marketing", "digest"]


@dataclass
class PreferencesSettings:
    """The operator's side of user preferences (issue 12; rules in preferences.py, policy.py).

    ``caps`` entries read ``"CATEGORY per_hour=N per_day=M"`` (either part
    optional): the default rolling caps on live pushes, which a user may only
    lower. :func:`operator_caps` parses them.
    """

    categories: list[str] = field(default_factory=_default_categories)
    always_on: list[str] = field(default_factory=lambda: ["transactional", "security"])
    quiet_hours_silent: list[str] = field(default_factory=lambda: ["marketing", "digest"])
    urgent_bypass: list[str] = field(
        default_factory=lambda: ["general", "transactional", "security", "social"])
    caps: list[str] = field(default_factory=lambda: ["marketing per_hour=2 per_day=6"])
    default_timezone: str = "UTC"
    # the per-day cap a "too_many" feedback halves on a category with no cap
    # (neither the user's nor the operator's): 10 -> the user gets per_day 5
    feedback_cap_per_day: int = 10


@dataclass
class AudienceSettings:
    """Limits of tags, attributes and audiences (issue 12; tidings.audience)."""

    max_tags: int = 100  # tags per user
    max_tag_length: int = 64  # characters of one tag
    max_attributes: int = 50  # attributes per user
    max_attribute_size: int = 256  # characters of an attribute's name or string value
    max_terms: int = 100  # tags plus listed values in one audience definition
    page_size: int = 1000  # users one selection page resolves (sends and listings go by pages)


@dataclass
class PresenceSettings:
    webhook: str = ""  # URL; empty: no webhook
    webhook_secret: str = ""  # HMAC-SHA256 key for X-Tidings-Signature; empty: unsigned
    debounce: float = 5.0  # seconds the last device must be gone before "offline"
    ttl: float = 30.0  # cluster: a node's entries vanish this long after it dies
    retries: int = 5
    # seconds: a user's connect or disconnect is recorded as "seen" in the store
    # (segments' active_within) at most once per this long per node; 0: never
    seen_interval: float = 60.0
    # seconds: users with a device still connected are recorded seen again this
    # often (a device online for weeks stays active_within); 0: never
    seen_refresh: float = 3600.0


@dataclass
class EventsSettings:
    """Events for backends (issue 13; tidings.events): kept in the store for
    ``GET /v1/events``, and posted to a webhook in signed batches."""

    retention: float = 7 * 86400.0  # seconds events stay readable at GET /v1/events
    webhook: str = ""  # URL; empty: no webhook
    webhook_secret: str = ""  # HMAC-SHA256 key for X-Tidings-Signature; empty: unsigned
    batch: int = 100  # events per webhook request, at most
    linger: float = 0.5  # seconds a batch waits to fill before it goes
    retries: int = 5  # more attempts per batch (then it is dead-lettered and counted)
    queue_max: int = 10000  # events waiting for the webhook; more are dropped (counted)


@dataclass
class PushSettings:
    """Platform push channels (issue 16; tidings.push). A provider without its
    credentials is off, and the startup log says so; Web Push needs none (the
    VAPID key is made once in the data folder)."""

    webpush: bool = True
    webpush_subject: str = "mailto:admin@localhost"  # VAPID "sub": where push services reach you
    vapid_private_key: str = ""  # PEM file; empty: made once in the data folder (cluster: set it)
    fcm_service_account: str = ""  # service-account JSON file; empty: FCM off
    fcm_url: str = "https://fcm.googleapis.com"
    apns_key_file: str = ""  # the .p8 key; empty: APNs off
    apns_key_id: str = ""
    apns_team_id: str = ""
    apns_topic: str = ""  # the app's bundle id (a registration may name its own)
    apns_sandbox: bool = False
    apns_host: str = ""  # empty: Apple's; else an APNs-compatible gateway
    apns_port: int = 443
    ca_file: str = ""  # extra CA certificates for the providers' HTTPS (private gateways)
    max_endpoints_per_user: int = 20
    concurrency: int = 32  # requests in flight per provider
    timeout: float = 10.0  # seconds per request
    retries: int = 3  # more attempts after a 429 / 5xx / timeout
    # seconds a connected device has to report `delivered` before its platform gets
    # the notification too; 0: a connected device never gets the platform push
    fallback_after: float = 10.0
    fallback_pending_max: int = 10000  # notifications awaiting that report per node; oldest dropped


@dataclass
class HistoryRule:
    """One ``[[history.rules]]`` entry: ``size`` and ``ttl`` are required unless
    ``memory`` is set, which keeps no history (size 0; see Node.publish)."""

    pattern: str
    size: int = -1  # -1: not given
    ttl: float = -1.0
    memory: bool = False


@dataclass
class HistorySettings:
    size: int = 100  # messages kept per topic; 0 keeps none (offsets still count)
    ttl: float = 86400.0  # seconds a message stays in history
    rules: list[HistoryRule] = field(default_factory=list)


@dataclass
class AclRule:
    """One ``[[acl]]`` entry. The first rule that matches the request decides.

    An allow matches a request its filter covers; a deny matches any request
    whose filter overlaps it (see :class:`tidings.auth.Acl`).

    ``users``: user ids, ``"*"`` for any authenticated user, ``"anonymous"``.
    ``subscribe`` / ``publish``: True allows, False denies, None leaves the
    action to later rules. ``{uid}`` in a filter stands for the user's id.
    """

    filter: str
    users: list[str] = field(default_factory=lambda: ["*"])
    subscribe: bool | None = None
    publish: bool | None = None


@dataclass
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    ws: WsSettings = field(default_factory=WsSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    bus: BusSettings = field(default_factory=BusSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    audience: AudienceSettings = field(default_factory=AudienceSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    push: PushSettings = field(default_factory=PushSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    preferences: PreferencesSettings = field(default_factory=PreferencesSettings)
    acl: list[AclRule] = field(default_factory=list)


_SECTIONS = {f.name for f in dataclasses.fields(Settings)}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(key: str, hint: Any, value: Any, *, from_env: bool) -> Any:
    """Turn a TOML or environment value into the field's type, or say which key is wrong."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if get_origin(hint) is list and get_args(hint) == (str,):
        if from_env and isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    if hint == (bool | None):
        if value is None or isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    raise ConfigError(f"{key}: cannot be set here")  # pragma: no cover


def _fill(obj: Any, section: str, table: Mapping[str, Any]) -> None:
    hints = get_type_hints(type(obj))
    for k, v in table.items():
        key = f"{section}.{k}"
        if k not in hints or k == "rules":
            if k == "rules" and section == "history":
                obj.rules = [_rule(HistoryRule, f"{key}[{i}]", r) for i, r in enumerate(v)]
                continue
            raise ConfigError(f"{key}: unknown setting")
        setattr(obj, k, _convert(key, hints[k], v, from_env=False))


def _rule(cls: type[Any], key: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for k, v in table.items():
        if k not in hints:
            raise ConfigError(f"{key}.{k}: unknown setting")
        kwargs[k] = _convert(f"{key}.{k}", hints[k], v, from_env=False)
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{key}.{missing[0]}: required")
    return cls(**kwargs)


def _apply_env(settings: Settings, env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith("TIDINGS_"):
            continue
        rest = name[len("TIDINGS_"):].lower()
        section, _, key = rest.partition("_")
        if section not in _SECTIONS or section == "acl" or not key:
            continue  # not ours to judge (e.g. TIDINGS_CONFIG)
        obj = getattr(settings, section)
        hints = get_type_hints(type(obj))
        if key not in hints or key == "rules":
            raise ConfigError(f"{section}.{key}: unknown setting (from {name})")
        setattr(obj, key, _convert(f"{section}.{key}", hints[key], value, from_env=True))


def _positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    if not math.isfinite(value):  # 'nan' and 'inf' parse as floats but bound nothing
        raise ConfigError(f"{key}: must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(f"{key}: must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


_PUBLISH_ENVELOPE = 128  # bytes of a WS publish command around its topic and data
_PUSH_ENVELOPE = 4096  # bytes of a push around its data (a notification's title, body...)
_MQTT_PROPERTIES = 4096  # room for a 5.0 PUBLISH's properties in the derived packet size
_MQTT_PUBLISH_HEADER = 9  # fixed header (5), topic length (2), packet id (2)
OUTBOUND_BURST = 4  # largest pushes the outbound bound holds beyond one full reply


def push_frame_bound(s: Settings) -> int:
    """The largest frame the server sends for one message or notification.

    JSON carries binary data as base64 (4/3 of its size); the envelope holds
    the topic, offset, timestamps and a notification's other fields.
    """
    data = max(s.limits.max_message_size, s.notify.max_data_size)
    return data * 4 // 3 + s.topics.max_length + _PUSH_ENVELOPE


def _derive_sizes(s: Settings) -> None:
    """Fill in the sizes derived from ``limits.max_message_size`` (a 0 setting),
    and refuse explicit ones that could not carry a message of that size.

    - ``ws.max_message_size`` (the incoming frame): twice the data plus the
      envelope, so a publish a little over the limit (or JSON with escapes)
      still gets a ``too_large`` reply rather than a 1009 close.
    - ``mqtt.max_packet_size``: the data, the topic and room for 5.0 properties;
      advertised in CONNACK (Maximum Packet Size).
    - ``ws.outbound_buffer`` (WS and MQTT) must hold one full reply and
      ``OUTBOUND_BURST`` of the largest pushes, so a client that reads is
      never closed as slow for what the server chose to send at once; and
      the largest MQTT packet (``mqtt.max_packet_size`` is lowered to it), so
      nothing a client may publish is beyond every subscriber.
    """
    lim = s.limits
    topic = s.topics.max_length
    ws_min = lim.max_message_size + topic + _PUBLISH_ENVELOPE
    if s.ws.max_message_size == 0:
        s.ws.max_message_size = 2 * lim.max_message_size + topic + 1024
    elif s.ws.max_message_size < ws_min:
        raise ConfigError(
            f"ws.max_message_size: {s.ws.max_message_size} cannot hold a publish of "
            f"limits.max_message_size ({lim.max_message_size}) bytes with its envelope; "
            f"set at least {ws_min}, or 0 to derive it")
    mqtt_min = lim.max_message_size + topic + _MQTT_PUBLISH_HEADER
    if s.mqtt.max_packet_size == 0:
        s.mqtt.max_packet_size = min(268435455, mqtt_min + _MQTT_PROPERTIES)
    elif s.mqtt.max_packet_size < mqtt_min:
        raise ConfigError(
            f"mqtt.max_packet_size: {s.mqtt.max_packet_size} cannot hold a PUBLISH of "
            f"limits.max_message_size ({lim.max_message_size}) bytes; set at least "
            f"{mqtt_min}, or 0 to derive it")
    frame = push_frame_bound(s)
    if lim.max_reply_size < frame:
        raise ConfigError(
            f"limits.max_reply_size: {lim.max_reply_size} cannot hold one message of "
            f"limits.max_message_size / notify.max_data_size; set at least {frame}")
    floor = lim.max_reply_size + OUTBOUND_BURST * frame
    if s.ws.outbound_buffer < floor:
        raise ConfigError(
            f"ws.outbound_buffer: {s.ws.outbound_buffer} cannot hold a full reply "
            f"(limits.max_reply_size) and {OUTBOUND_BURST} of the largest pushes; set at "
            f"least {floor}, or lower limits.max_message_size / limits.max_reply_size")
    # A PUBLISH over the outbound buffer would be accepted, but no subscriber's
    # buffer could ever hold it (each delivery would close the subscriber as
    # slow): an explicit size over it (such as the old default, 268435455) is
    # lowered to it, so an old config still loads and the two agree.
    s.mqtt.max_packet_size = min(s.mqtt.max_packet_size, s.ws.outbound_buffer)


def _check_response_information(m: MqttSettings) -> None:
    """The Response Information templates: a topic prefix with only their own
    placeholder ({uid}, {client_id}), no wildcard (clients build topics on it)."""
    for key, name, sample in (("response_information", "uid", "u"),
                               ("anonymous_response_information", "client_id", "c")):
        template = getattr(m, key)
        try:
            filled = template.format(**{name: sample})
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"mqtt.{key}: the only placeholder is {{{name}}}, "
                              f"got {template!r}") from None
        if "+" in filled or "#" in filled or "\0" in filled:
            raise ConfigError(f"mqtt.{key}: a topic prefix without '+' or '#', got {template!r}")


_CATEGORY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_CAP_KINDS = ("per_hour", "per_day")


def operator_caps(entries: list[str]) -> dict[str, dict[str, int]]:
    """``["marketing per_hour=2 per_day=6"]`` -> ``{"marketing": {"per_hour": 2, "per_day": 6}}``.

    Raises :class:`ConfigError` naming ``preferences.caps`` for a malformed entry.
    """
    caps: dict[str, dict[str, int]] = {}
    for i, entry in enumerate(entries):
        key = f"preferences.caps[{i}]"
        if not entry.split():
            raise ConfigError(f"{key}: empty")
        category, *parts = entry.split()
        if category in caps:
            raise ConfigError(f"{key}: {category!r} is capped twice")
        cap: dict[str, int] = {}
        for part in parts:
            kind, eq, number = part.partition("=")
            if kind not in _CAP_KINDS or not eq or kind in cap or not number.isdigit():
                raise ConfigError(f"{key}: expected 'CATEGORY per_hour=N per_day=M', "
                                  f"got {entry!r}")
            cap[kind] = int(number)
        if not cap:
            raise ConfigError(f"{key}: names no per_hour or per_day in {entry!r}")
        caps[category] = cap
    return caps


def _validate_preferences(p: PreferencesSettings) -> None:
    import zoneinfo

    if "general" not in p.categories:
        raise ConfigError("preferences.categories: must include 'general' (the default category)")
    for c in p.categories:
        if not 0 < len(c) <= 64 or not set(c) <= _CATEGORY_CHARS:
            raise ConfigError(f"preferences.categories: {c!r} is not a category name "
                              f"(1-64 of a-z, 0-9, '_', '-')")
    known = set(p.categories)
    caps = operator_caps(p.caps)
    for key in ("always_on", "quiet_hours_silent", "urgent_bypass"):
        unknown = sorted(set(getattr(p, key)) - known)
        if unknown:
            raise ConfigError(f"preferences.{key}: {unknown[0]!r} is not in preferences.categories")
    unknown = sorted(set(caps) - known)
    if unknown:
        raise ConfigError(f"preferences.caps: {unknown[0]!r} is not in preferences.categories")
    if p.default_timezone not in zoneinfo.available_timezones():
        raise ConfigError(f"preferences.default_timezone: {p.default_timezone!r} is not an "
                          f"IANA time zone name")
    if p.feedback_cap_per_day < 1:
        raise ConfigError("preferences.feedback_cap_per_day: must be at least 1")


def _validate_events(e: EventsSettings) -> None:
    if not e.retention > 0:
        raise ConfigError("events.retention: must be more than 0 seconds")
    if not 1 <= e.batch <= 10000:
        raise ConfigError("events.batch: must be 1-10000")
    if not 0 <= e.linger <= 60:
        raise ConfigError("events.linger: must be 0-60 seconds")
    if e.retries < 0 or e.queue_max < 1:
        raise ConfigError("events.retries must be 0 or more and events.queue_max at least 1")
    if e.webhook and not e.webhook.startswith(("http://", "https://")):
        raise ConfigError("events.webhook: must be an http(s) URL")


def _validate_push(p: PushSettings) -> None:
    for key in ("timeout",):
        if not getattr(p, key) > 0:
            raise ConfigError(f"push.{key}: must be more than 0")
    for key in ("max_endpoints_per_user", "concurrency", "fallback_pending_max"):
        if getattr(p, key) < 1:
            raise ConfigError(f"push.{key}: must be at least 1")
    if p.retries < 0:
        raise ConfigError("push.retries: must be 0 or more")
    if not 0 <= p.fallback_after <= 86400:
        raise ConfigError("push.fallback_after: must be 0 (off) to 86400 seconds")
    if not 0 < p.apns_port <= 65535:
        raise ConfigError(f"push.apns_port: must be a port number, got {p.apns_port}")
    if p.webpush and not p.webpush_subject.startswith(("mailto:", "https://")):
        raise ConfigError("push.webpush_subject: must be a mailto: or https: URL (RFC 8292)")
    if p.apns_key_file and not (p.apns_key_id and p.apns_team_id):
        raise ConfigError("push.apns_key_file: needs push.apns_key_id and push.apns_team_id")


def _validate(s: Settings) -> None:
    from .protocol.topics import TopicError, validate_filter

    for key, port in (("ws.port", s.ws.port), ("api.port", s.api.port),
                      ("mqtt.port", s.mqtt.port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: must be a port number 0-65535, got {port}")
    if not s.ws.path.startswith("/"):
        raise ConfigError(f"ws.path: must start with '/', got {s.ws.path!r}")
    for key in ("connect_timeout", "commands_per_second",
                "commands_burst", "max_subscriptions", "outbound_buffer",
                "max_connections_per_ip"):
        _positive(f"ws.{key}", getattr(s.ws, key))
    _positive("ws.ping_interval", s.ws.ping_interval, zero_ok=True)
    _positive("ws.max_message_size", s.ws.max_message_size, zero_ok=True)
    for key in ("max_message_size", "max_reply_size", "max_since_topics",
                "max_publish_group"):
        _positive(f"limits.{key}", getattr(s.limits, key))
    _positive("api.max_body_size", s.api.max_body_size)
    _positive("api.header_timeout", s.api.header_timeout)
    _positive("api.body_timeout", s.api.body_timeout)
    _positive("topics.max_user_subscriptions", s.topics.max_user_subscriptions)
    _positive("mqtt.max_connections_per_ip", s.mqtt.max_connections_per_ip)
    _positive("mqtt.max_sessions_per_user", s.mqtt.max_sessions_per_user)
    _positive("mqtt.cluster_ttl", s.mqtt.cluster_ttl)
    _positive("mqtt.takeover_timeout", s.mqtt.takeover_timeout)
    _positive("node.shutdown_timeout", s.node.shutdown_timeout)
    _positive("topics.max_length", s.topics.max_length)
    _positive("topics.max_depth", s.topics.max_depth)
    _positive("history.size", s.history.size, zero_ok=True)
    _positive("history.ttl", s.history.ttl)
    _positive("auth.max_token_ttl", s.auth.max_token_ttl)
    _positive("auth.default_token_ttl", s.auth.default_token_ttl)
    _positive("auth.token_cache", s.auth.token_cache, zero_ok=True)
    _positive("store.idempotency_ttl", s.store.idempotency_ttl)
    _positive("notify.max_users", s.notify.max_users)
    _positive("notify.max_data_size", s.notify.max_data_size)
    _positive("notify.max_inbox", s.notify.max_inbox)
    _positive("notify.max_templates", s.notify.max_templates, zero_ok=True)
    _positive("notify.max_placeholders", s.notify.max_placeholders, zero_ok=True)
    _positive("notify.lease", s.notify.lease)
    _positive("notify.schedule_interval", s.notify.schedule_interval)
    _positive("notify.due_batch", s.notify.due_batch)
    for key in ("max_tags", "max_tag_length", "max_attributes", "max_attribute_size",
                "max_terms", "page_size"):
        _positive(f"audience.{key}", getattr(s.audience, key))
    _positive("store.sweep_interval", s.store.sweep_interval)
    _positive("store.sweep_batch", s.store.sweep_batch)
    for key in ("receive_maximum", "max_queued", "max_subscriptions"):
        _positive(f"mqtt.{key}", getattr(s.mqtt, key))
    _positive("mqtt.max_packet_size", s.mqtt.max_packet_size, zero_ok=True)
    if not 0 < s.mqtt.receive_maximum <= 65535:
        raise ConfigError("mqtt.receive_maximum: must be 1-65535")
    if s.mqtt.max_packet_size > 268435455:
        raise ConfigError("mqtt.max_packet_size: at most 268435455 (the protocol's limit)")
    if s.limits.max_message_size > 268435455 - 4096:
        raise ConfigError("limits.max_message_size: must fit an MQTT packet (under 256 MiB)")
    _positive("mqtt.max_keepalive", s.mqtt.max_keepalive, zero_ok=True)
    _positive("mqtt.close_drain", s.mqtt.close_drain, zero_ok=True)
    if not 0 <= s.mqtt.topic_aliases <= 65535:
        raise ConfigError(f"mqtt.topic_aliases: must be 0-65535, got {s.mqtt.topic_aliases}")
    if s.mqtt.close_drain > 30:
        raise ConfigError(f"mqtt.close_drain: at most 30 seconds, got {s.mqtt.close_drain}")
    _check_response_information(s.mqtt)
    _positive("mqtt.max_session_expiry", s.mqtt.max_session_expiry, zero_ok=True)
    _positive("mqtt.sys_interval", s.mqtt.sys_interval, zero_ok=True)
    if not 0 <= s.mqtt.tls_port <= 65535:
        raise ConfigError(f"mqtt.tls_port: must be a port number 0-65535, got {s.mqtt.tls_port}")
    if s.mqtt.websocket_path and not s.mqtt.websocket_path.startswith("/"):
        raise ConfigError("mqtt.websocket_path: must start with '/' (or be empty)")
    _positive("notify.max_ttl", s.notify.max_ttl)
    _positive("presence.debounce", s.presence.debounce, zero_ok=True)
    _positive("presence.retries", s.presence.retries, zero_ok=True)
    _positive("presence.ttl", s.presence.ttl)
    _positive("presence.seen_interval", s.presence.seen_interval, zero_ok=True)
    _positive("presence.seen_refresh", s.presence.seen_refresh, zero_ok=True)
    if s.presence.webhook and not s.presence.webhook.startswith(("http://", "https://")):
        raise ConfigError(f"presence.webhook: must be an http(s) URL, got {s.presence.webhook!r}")
    if s.auth.default_token_ttl > s.auth.max_token_ttl:
        raise ConfigError("auth.default_token_ttl: must not exceed auth.max_token_ttl")
    if s.store.backend not in ("sqlite", "redis"):
        raise ConfigError(f"store.backend: 'sqlite' or 'redis', got {s.store.backend!r}")
    if s.bus.backend not in ("memory", "redis"):
        raise ConfigError(f"bus.backend: 'memory' or 'redis', got {s.bus.backend!r}")
    if s.node.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"node.log_level: DEBUG, INFO, WARNING or ERROR, got "
                          f"{s.node.log_level!r}")
    if s.node.log_format not in ("text", "json"):
        raise ConfigError(f"node.log_format: \"text\" or \"json\", got {s.node.log_format!r}")
    if not 0 < s.node.log_summary_interval <= 86400:
        raise ConfigError("node.log_summary_interval: seconds in (0, 86400]")
    for name, section in (("ws", s.ws), ("api", s.api), ("mqtt", s.mqtt)):
        if bool(section.tls_cert) != bool(section.tls_key):
            raise ConfigError(f"{name}.tls_cert: tls_cert and tls_key go together")
        for k in ("tls_cert", "tls_key"):
            p = getattr(section, k)
            if p and not Path(p).is_file():
                raise ConfigError(f"{name}.{k}: no such file {p!r}")
    for i, r in enumerate(s.history.rules):
        if r.memory:
            if r.size > 0:
                raise ConfigError(f"history.rules[{i}].size: a memory rule keeps no history "
                                  f"(leave size out, or 0)")
            r.size = 0
            if r.ttl < 0:
                r.ttl = s.history.ttl
        for name in ("size", "ttl"):
            if getattr(r, name) == -1:
                raise ConfigError(f"history.rules[{i}].{name}: required")
        _positive(f"history.rules[{i}].size", r.size, zero_ok=True)
        _positive(f"history.rules[{i}].ttl", r.ttl)
        try:
            validate_filter(r.pattern, max_length=1 << 16, max_depth=1 << 10)
        except TopicError as e:
            raise ConfigError(f"history.rules[{i}].pattern: {e}") from None
    for i, a in enumerate(s.acl):
        try:
            validate_filter(a.filter.replace("{uid}", "u"), max_length=1 << 16,
                            max_depth=1 << 10)
        except TopicError as e:
            raise ConfigError(f"acl[{i}].filter: {e}") from None
    _validate_preferences(s.preferences)
    _validate_push(s.push)
    _validate_events(s.events)
    _derive_sizes(s)


def load(path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (optional) and the environment; validate them."""
    env = os.environ if env is None else env
    settings = Settings()
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        for section, table in data.items():
            if section == "acl":
                if not isinstance(table, list):
                    raise ConfigError("acl: expected [[acl]] tables")
                settings.acl = [_rule(AclRule, f"acl[{i}]", t) for i, t in enumerate(table)]
                continue
            if section not in _SECTIONS or not isinstance(table, dict):
                raise ConfigError(f"{section}: unknown section")
            _fill(getattr(settings, section), section, table)
    _apply_env(settings, env)
    _validate(settings)
    return settings
