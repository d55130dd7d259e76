"""One frozen configuration object: defaults < environment < command-line flags.

Every field of :class:`Config` is a setting. Its environment variable is
``MQTTGATE_`` + the field name in upper case and its flag is ``--`` + the name
with dashes (``mqtt_listen`` -> ``MQTTGATE_MQTT_LISTEN``, ``--mqtt-listen``).
The README's configuration table and ``mqttgate serve --help`` are generated
from the same metadata, and a test keeps the README in step.

:func:`load` is the only place that reads the environment or argv, and it takes
both as parameters so it is pure and testable. A bad value raises
:class:`ConfigError` naming the variable or flag it came from.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mqttgate import acl as _acl

ENV_PREFIX = "MQTTGATE_"
_URL_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^@/\s,]*@", re.IGNORECASE)
#: MQTTGATE_* variables that are not ours: the test suite's, and Kubernetes service links.
_FOREIGN_VARIABLE = re.compile(r"^MQTTGATE_(TEST_|SERVICE_|PORT(_|$))")


class ConfigError(Exception):
    """A bad setting; ``source`` is the variable or flag it came from."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


# ---------------------------------------------------------------- parsers
# Each parser takes the raw text and returns the value or raises ValueError
# with a message that completes "<source>: ...".


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h``, ``7d`` or a plain number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 10s, 500ms, 2m, 1h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}


def parse_size(text: str) -> int:
    """``256KiB``, ``1MiB``, ``1GB`` or a plain number of bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 65536, 256KiB, 1MiB)")
    unit = (match.group(2) or "b").lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]


@attrs.frozen
class Address:
    """A listen address ``host:port``; port 0 asks the OS for a free port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port`` or ``[ipv6]:port``; the host may be a name or an address."""
    raw = text.strip()
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [ipv6]:port")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = raw.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"{text!r} is not host:port (example: 0.0.0.0:1883)")
        if not re.fullmatch(r"[A-Za-z0-9.\-_]+", host):
            raise ValueError(f"{text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return Address(host, int(port_text))


def parse_optional_address(text: str) -> Address | None:
    """An address, or ``off``/empty to disable the listener."""
    if text.strip().lower() in ("", "off", "none", "disabled"):
        return None
    return parse_address(text)


def parse_str(text: str) -> str:
    return text


def parse_optional_str(text: str) -> str | None:
    return text if text != "" else None


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return lowered

    return parse


def positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0 or math.isinf(value):
        raise ValueError(f"{text!r} must be a positive duration")
    return value


def nonnegative_size(text: str) -> int:
    return parse_size(text)


# ---------------------------------------------------------------- settings


def setting(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    secret: bool = False,
    shown_default: str | None = None,
) -> Any:
    """An attrs field that is also a setting (environment variable and flag)."""
    return attrs.field(
        default=default,
        repr=not secret,
        metadata={
            "parse": parse,
            "help": help,
            "secret": secret,
            "shown_default": shown_default,
        },
    )


_NATS_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_NATS_TOKEN = re.compile(r"^[^\s.*>\x00\x7f]+$")


def parse_nats_stream(text: str) -> str:
    """A JetStream stream name: letters, digits, ``_`` and ``-`` (no ``.``,
    wildcards, whitespace or path separators, which nats-server refuses)."""
    if not _NATS_STREAM_NAME.match(text):
        raise ValueError(f"{text!r} is not a stream name (letters, digits, _ and -)")
    return text


def parse_subject_prefix(text: str) -> str:
    """One or more literal NATS subject tokens joined by ``.`` (``mqtt``, ``org.mqtt``)."""
    if not all(_NATS_TOKEN.match(token) for token in text.split(".")):
        raise ValueError(
            f"{text!r} is not a subject prefix (tokens without whitespace, '*' or '>', joined by '.')"
        )
    return text


def nonnegative_duration(text: str) -> float:
    value = parse_duration(text)
    if math.isinf(value):
        raise ValueError(f"{text!r} must be a finite duration")
    return value


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mqttgate")


@attrs.frozen
class Config:
    # --- listeners -------------------------------------------------------
    mqtt_listen: Address = setting(
        Address("0.0.0.0", 1883), parse_address, "MQTT listener, host:port (0 = any free port)",
        shown_default="0.0.0.0:1883",
    )
    http_listen: Address = setting(
        Address("0.0.0.0", 9091), parse_address, "HTTP API listener, host:port",
        shown_default="0.0.0.0:9091",
    )
    # Each HTTP connection holds a task and buffers until hypercorn's 5 s
    # keep-alive timeout; 1000 is far above what probes, Prometheus and
    # provisioning scripts open, and bounds a flood to a few MB.
    http_max_connections: int = setting(
        1000, int_range(1),
        "Most concurrent HTTP API connections; further ones get 503 and are closed at once",
    )
    # MQTT over TLS (mqttgate/tls.py, docs/operations.md "TLS"); 8883 is the IANA port.
    mqtts_listen: Address | None = setting(
        None, parse_optional_address,
        "MQTT-over-TLS listener, host:port (conventionally 0.0.0.0:8883), or off; TLS 1.2+",
        shown_default="off",
    )
    tls_cert_file: str | None = setting(
        None, parse_optional_str,
        "Server certificate chain (PEM path) of the TLS listener; re-read on SIGHUP or when it changes",
        shown_default="none",
    )
    tls_key_file: str | None = setting(
        None, parse_optional_str,
        "Private key (PEM path, unencrypted) of the TLS listener; unset: read from the certificate file",
        shown_default="none",
    )
    # A renewed Kubernetes Secret arrives without a SIGHUP; the kubelet itself
    # takes up to about a minute to update the files, so polling faster gains little.
    tls_reload_interval: float = setting(
        60.0, nonnegative_duration,
        "How often the TLS certificate and key files are checked and reloaded when changed (0 = on SIGHUP only)",
        shown_default="60s",
    )
    # --- services --------------------------------------------------------
    database_url: str | None = setting(
        None, parse_optional_str,
        "PostgreSQL URL (postgresql://user:pass@host/db); required unless --embedded or anonymous mode without the API",
        secret=True, shown_default="none",
    )
    nats_url: str = setting(
        "nats://127.0.0.1:4222", parse_str, "NATS server URL(s), comma-separated for a cluster"
    )
    api_token: str | None = setting(
        None, parse_optional_str,
        "Bearer token for the HTTP API (secret; never logged)", secret=True, shown_default="none",
    )
    api_token_file: str | None = setting(
        None, parse_optional_str,
        "File holding the API token, created with a random one (mode 0600) when missing; "
        "used when MQTTGATE_API_TOKEN is not set",
        shown_default="none",
    )
    # --- logging and process ---------------------------------------------
    log_level: str = setting(
        "info", choice("debug", "info", "warning", "error"), "Lowest log level written"
    )
    log_format: str = setting(
        "json", choice("json", "console"), "json (one JSON object a line) or console (for people)"
    )
    shutdown_timeout: float = setting(
        10.0, positive_duration, "Graceful shutdown deadline after SIGTERM/SIGINT",
        shown_default="10s",
    )
    embedded: bool = setting(
        False, parse_bool, "Start a private NATS server and PostgreSQL as child processes"
    )
    data_dir: str = setting(
        _default_data_dir(), parse_str, "Data directory of embedded mode",
        shown_default="$XDG_DATA_HOME/mqttgate (~/.local/share/mqttgate)",
    )
    # --- broker: access --------------------------------------------------
    allow_anonymous: bool = setting(
        False, parse_bool,
        "Admit any client with no credentials and no ACL (development and conformance tests only)",
    )
    forward: bool = setting(
        True, parse_bool, "Forward device messages to NATS JetStream (off: broker only, no NATS)",
        shown_default="on",
    )
    # --- broker: limits --------------------------------------------------
    max_connections: int = setting(
        10_000, int_range(1), "Most concurrent MQTT connections; further CONNECTs get server busy"
    )
    max_pending_connects: int = setting(
        1000, int_range(1),
        "Most connections accepted but not yet through CONNECT; more are closed at once. "
        "Bounds pre-authentication memory to about this x max_packet_size",
    )
    connect_timeout: float = setting(
        10.0, positive_duration, "Time a new connection has to send CONNECT", shown_default="10s"
    )
    max_keepalive: int = setting(
        3600, int_range(1, 65535),
        "Largest keep alive (seconds) granted; v5 clients asking for more (or 0) get Server Keep Alive",
    )
    max_packet_size: int = setting(
        1024 * 1024, int_range(64, 268_435_460),
        "Largest MQTT packet accepted, in bytes (advertised to v5 clients)", shown_default="1048576",
    )
    receive_maximum: int = setting(
        64, int_range(1, 65535), "QoS 1/2 PUBLISHes a client may have unacknowledged towards us"
    )
    max_inflight: int = setting(
        64, int_range(1, 65535),
        "QoS 1/2 messages we send to a client before waiting for acks (lowered to its Receive Maximum)",
    )
    max_queued_messages: int = setting(
        1000, int_range(1), "Messages queued per session (offline or slow) before overflow handling"
    )
    # Without it, sessions x max_queued_messages x max_packet_size is the
    # bound: about 100 TB at the defaults. 256 MiB holds 1000 full queues of
    # 256-byte messages; docs/broker.md "Limits".
    max_queued_bytes: int = setting(
        256 * 1024 * 1024, nonnegative_size,
        "Bytes (payload, topic, v5 properties) of the messages all sessions' queues may hold together; "
        "beyond it a QoS 1/2 delivery is handled like a full session queue (dropped, or 0x97 for a connected client)",
        shown_default="256MiB",
    )
    max_sessions: int = setting(
        100_000, int_range(1),
        "Sessions held, connected and offline persistent; a CONNECT that would create another "
        "gets 0x97 / rc 3 (resuming or taking over a session is never refused)",
    )
    # One device's firmware must not deny service to the others: 100 is far
    # above what one device needs (one or a few client ids) and far below
    # max_sessions. docs/broker.md "Session memory".
    max_sessions_per_device: int = setting(
        100, int_range(0),
        "Persistent sessions (Session Expiry > 0, 3.1.1 clean session 0) held under one device id; "
        "a CONNECT that would add another gets 0x97 / rc 3 (0 = no per-device limit; anonymous "
        "clients and sessions that end with their connection are not counted)",
    )
    # A fixed size, not a fraction of max_queued_bytes: a quarter of its
    # default, and raising the global budget for more devices does not let
    # one device hold more. docs/broker.md "Session memory".
    max_queued_bytes_per_device: int = setting(
        64 * 1024 * 1024, nonnegative_size,
        "Share of max_queued_bytes one device's sessions may hold together; beyond it a QoS 1/2 delivery "
        "to them is handled as when max_queued_bytes is full (0 = no per-device limit)",
        shown_default="64MiB",
    )
    max_retained_messages: int = setting(
        100_000, int_range(0), "Retained messages kept; new topics beyond it are not retained"
    )
    max_retained_bytes: int = setting(
        64 * 1024 * 1024, nonnegative_size,
        "Payload bytes all retained messages may hold; a message beyond it is not retained "
        "(and clears its topic's old one)",
        shown_default="64MiB",
    )
    max_topic_length: int = setting(
        1024, int_range(1, 65535), "Longest topic name or filter, in bytes"
    )
    max_topic_levels: int = setting(32, int_range(1, 65535), "Most levels in a topic name or filter")
    max_subscriptions: int = setting(100, int_range(1), "Subscriptions per client")
    max_client_id_length: int = setting(
        128, int_range(23, 65535), "Longest accepted client identifier"
    )
    max_session_expiry: float = setting(
        86400.0, parse_duration,
        "Cap on v5 Session Expiry Interval; also the lifetime of 3.1.1 persistent sessions",
        shown_default="1d",
    )
    topic_alias_maximum: int = setting(
        32, int_range(0, 65535), "Topic aliases a v5 client may use towards us; towards a client we use at most this many and at most its own Topic Alias Maximum"
    )
    max_outbox_bytes: int = setting(
        256 * 1024, parse_size,
        "Unsent bytes per client before QoS 0 deliveries are dropped and QoS 1/2 ones queued",
        shown_default="256KiB",
    )
    max_publisher_pause: float = setting(
        2.0, positive_duration,
        "Longest a publisher stops being read while its subscribers are congested; "
        "a subscriber still congested then is marked slow and loses QoS 0 messages",
        shown_default="2s",
    )
    takeover_flap_limit: int = setting(
        5, int_range(1),
        "Takeovers of one client id within 10 s before further takeovers are delayed",
    )
    takeover_flap_delay: float = setting(
        1.0, positive_duration,
        "First delay of a flapping client id's takeover; doubles per extra takeover, at most 10 s",
        shown_default="1s",
    )

    # --- registry and auth -----------------------------------------------
    # Rationale for each default: docs/api.md ("Authentication" and "ACL").
    database_pool_size: int = setting(
        10, int_range(1, 1000), "Most PostgreSQL connections the daemon opens"
    )
    database_startup_timeout: float = setting(
        30.0, positive_duration, "How long start-up waits for PostgreSQL to accept connections",
        shown_default="30s",
    )
    database_query_timeout: float = setting(
        5.0, positive_duration, "Deadline of one PostgreSQL query; past it the store counts as down",
        shown_default="5s",
    )
    acl_publish: str = setting(
        _acl.DEFAULT_PUBLISH, _acl.parse_acl_setting,
        "Device PUBLISH rules: comma-separated allow:FILTER / deny:FILTER, first match wins, "
        "default deny; placeholders {mqtt_user} {device_id} {type}",
    )
    acl_subscribe: str = setting(
        _acl.DEFAULT_SUBSCRIBE, _acl.parse_acl_setting,
        "Device SUBSCRIBE rules, same syntax; an allow rule must contain the whole filter",
    )
    argon2_time_cost: int = setting(2, int_range(1, 100), "argon2id iterations (t) for new hashes")
    argon2_memory_kib: int = setting(
        19456, int_range(8, 4 * 1024 * 1024), "argon2id memory (m) for new hashes, in KiB"
    )
    argon2_parallelism: int = setting(1, int_range(1, 64), "argon2id lanes (p) for new hashes")
    argon2_threads: int = setting(
        0, int_range(0, 256), "Concurrent argon2 computations (0 = number of CPU cores)"
    )
    auth_max_pending: int = setting(
        200, int_range(1), "Password verifications queued or running; more CONNECTs get server busy"
    )
    auth_cache_size: int = setting(
        100_000, int_range(0), "Verified credentials remembered (0 disables the cache)"
    )
    auth_cache_ttl: float = setting(
        600.0, parse_duration, "How long a verified credential is remembered", shown_default="10m"
    )
    auth_fail_limit_user: int = setting(
        10, int_range(1), "Failed logins per user name per window before that name is throttled"
    )
    auth_fail_limit_address: int = setting(
        100, int_range(1), "Failed logins per source address per window before it is throttled"
    )
    auth_fail_window: float = setting(
        60.0, positive_duration, "Window of the failed-login limits", shown_default="60s"
    )

    # --- NATS forwarding ---------------------------------------------------
    # Rationale and the memory bound: docs/nats.md.
    nats_stream: str = setting("MQTT", parse_nats_stream, "JetStream stream that stores device messages")
    nats_subject_prefix: str = setting(
        "mqtt", parse_subject_prefix, "Subject prefix: messages go to <prefix>.<device_id>.<topic as subject>"
    )
    nats_storage: str = setting("file", choice("file", "memory"), "Storage of a stream we create")
    nats_replicas: int = setting(1, int_range(1, 5), "Replicas of a stream we create")
    nats_max_age: float = setting(
        0.0, nonnegative_duration, "Max age of stored messages in a stream we create (0 = unlimited)",
        shown_default="0 (unlimited)",
    )
    nats_max_bytes: int = setting(
        0, nonnegative_size, "Max size of a stream we create (0 = unlimited)", shown_default="0 (unlimited)"
    )
    nats_duplicate_window: float = setting(
        120.0, positive_duration,
        "JetStream de-duplication window of a stream we create (keep it above forward_timeout)",
        shown_default="2m",
    )
    nats_queue_size: int = setting(
        1000, int_range(1), "Messages queued towards NATS before QoS 1/2 reads pause and QoS 0 is dropped"
    )
    nats_max_pending: int = setting(
        512, int_range(1, 65535), "JetStream publishes in flight (sent, ack not yet received)"
    )
    forward_timeout: float = setting(
        10.0, positive_duration,
        "Deadline for JetStream to store a QoS 1/2 message; then v5 gets a failure ack, 3.1.1 is disconnected",
        shown_default="10s",
    )
    nats_startup_timeout: float = setting(
        5.0, positive_duration,
        "How long start-up waits for NATS before starting degraded (not ready, reconnecting)",
        shown_default="5s",
    )
    nats_user: str | None = setting(None, parse_optional_str, "NATS user name", shown_default="none")
    nats_password: str | None = setting(
        None, parse_optional_str, "NATS password (secret)", secret=True, shown_default="none"
    )
    nats_token: str | None = setting(
        None, parse_optional_str, "NATS authentication token (secret)", secret=True, shown_default="none"
    )
    nats_creds: str | None = setting(
        None, parse_optional_str, "Path of a NATS .creds file (JWT + NKey seed)", shown_default="none"
    )
    nats_nkey_seed: str | None = setting(
        None, parse_optional_str, "Path of a file holding an NKey seed", shown_default="none"
    )
    nats_tls_ca: str | None = setting(
        None, parse_optional_str, "CA bundle (PEM path) to verify the NATS server", shown_default="none"
    )
    nats_tls_cert: str | None = setting(
        None, parse_optional_str, "Client certificate (PEM path) for NATS mutual TLS", shown_default="none"
    )
    nats_tls_key: str | None = setting(
        None, parse_optional_str, "Client key (PEM path) for NATS mutual TLS", shown_default="none"
    )

    def public_dict(self) -> dict[str, str]:
        """Settings with secrets masked, for the start-up log event."""
        out: dict[str, str] = {}
        for field in attrs.fields(Config):
            value = getattr(self, field.name)
            if field.metadata["secret"]:
                out[field.name] = "set" if value else "unset"
            elif value is None:
                # As --help shows it ("off", "none"), not Python's "None".
                out[field.name] = str(field.metadata["shown_default"] or "none")
            else:
                # A URL may carry credentials (nats://user:pass@host): mask them.
                out[field.name] = _URL_USERINFO.sub(r"\1***@", str(value))
        return out


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def shown_default(field: attrs.Attribute[Any]) -> str:
    shown = field.metadata["shown_default"]
    if shown is not None:
        return str(shown)
    value = field.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}s"
    return str(value)


def settings() -> tuple[attrs.Attribute[Any], ...]:
    return attrs.fields(Config)


def load(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Config:
    """Build the config: defaults < environment < flags.

    ``flags`` maps field names to the raw text given on the command line (None
    when absent). Unknown ``MQTTGATE_*`` variables are an error, because a
    typo'd variable silently ignored is a misconfigured production.
    """
    known = {env_name(f.name) for f in settings()}
    for name in environ:
        # MQTTGATE_TEST_* configure the test suite, not the daemon; Kubernetes
        # injects MQTTGATE_SERVICE_* / MQTTGATE_PORT* for a Service named mqttgate.
        if name.startswith(ENV_PREFIX) and name not in known and not _FOREIGN_VARIABLE.match(name):
            raise ConfigError(name, "unknown setting (see mqttgate serve --help)")
    values: dict[str, Any] = {}
    for field in settings():
        parse = field.metadata["parse"]
        raw = flags.get(field.name)
        source = flag_name(field.name)
        if raw is None:
            raw = environ.get(env_name(field.name))
            source = env_name(field.name)
        if raw is None:
            continue
        try:
            values[field.name] = parse(raw)
        except ValueError as error:
            raise ConfigError(source, str(error)) from None
    return Config(**values)


def settings_table() -> str:
    """The Markdown table of settings for the README."""
    lines = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for field in settings():
        lines.append(
            f"| `{env_name(field.name)}` | `{flag_name(field.name)}` | `{shown_default(field)}` "
            f"| {field.metadata['help']} |"
        )
    return "\n".join(lines)

