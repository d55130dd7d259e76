"""NATS headers of a forwarded MQTT message, and how a consumer reads them back.

Theory of operation
-------------------
A NATS header line is ``Name: Value\\r\\n``: names are ASCII tokens, and
clients trim values and cannot carry CR or LF (nats-py replaces them with
spaces). MQTT strings may hold any UTF-8 (v5 section 1.5.4 only says control
characters SHOULD NOT appear), so every text header follows one lossless rule:

* a value without control characters (U+0000-U+001F, U+007F) and without
  leading/trailing whitespace is sent as is, under ``Name``;
* any other value is sent as base64 (RFC 4648, padded) of its UTF-8 bytes,
  under ``Name-B64`` instead, and ``Name`` is absent.

Binary values (v5 Correlation Data, 0x09) are always base64. User Properties
(v5 0x26: names may repeat, order matters, any UTF-8) are one header
``Mqtt-User-Properties`` holding a JSON array of ``[name, value]`` pairs,
ASCII-escaped (``ensure_ascii``) so it is always a safe header value.

The full table is in docs/nats.md. :func:`read_text`, :func:`read_binary`
and :func:`read_user_properties` are the consumer side (used by the tests;
a consumer may copy them).

Pure: no I/O, no trio.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping

from mqttgate.forward import ForwardMessage

#: Subject token used for ``<device_id>`` when the client has no device
#: (anonymous mode). Device ids are 24 hex digits, so it never collides.
ANONYMOUS_DEVICE = "_anon"

TOPIC = "Mqtt-Topic"
DEVICE_ID = "Mqtt-Device-Id"
DEVICE_TYPE = "Mqtt-Device-Type"
CLIENT_ID = "Mqtt-Client-Id"
USERNAME = "Mqtt-Username"
QOS = "Mqtt-Qos"
RETAIN = "Mqtt-Retain"
PAYLOAD_FORMAT = "Mqtt-Payload-Format"
MESSAGE_EXPIRY = "Mqtt-Message-Expiry-Interval"
CONTENT_TYPE = "Mqtt-Content-Type"
RESPONSE_TOPIC = "Mqtt-Response-Topic"
CORRELATION_DATA = "Mqtt-Correlation-Data"
USER_PROPERTIES = "Mqtt-User-Properties"
MSG_ID = "Nats-Msg-Id"

B64_SUFFIX = "-B64"

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def is_header_safe(value: str) -> bool:
    """True when ``value`` survives a NATS header line unchanged."""
    return value == value.strip() and _UNSAFE.search(value) is None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def put_text(headers: dict[str, str], name: str, value: str) -> None:
    """Add a text header by the lossless rule of the module docstring."""
    if is_header_safe(value):
        headers[name] = value
    else:
        headers[name + B64_SUFFIX] = _b64(value.encode("utf-8"))


def message_headers(message: ForwardMessage, msg_id: str | None) -> dict[str, str]:
    """The headers of one forwarded message (``msg_id`` becomes ``Nats-Msg-Id``)."""
    headers: dict[str, str] = {}
    put_text(headers, TOPIC, message.topic)
    put_text(headers, CLIENT_ID, message.client_id)
    if message.device_id is not None:
        put_text(headers, DEVICE_ID, message.device_id)
    if message.device_type is not None:
        put_text(headers, DEVICE_TYPE, message.device_type)
    if message.mqtt_user is not None:
        put_text(headers, USERNAME, message.mqtt_user)
    headers[QOS] = str(message.qos)
    headers[RETAIN] = "true" if message.retain else "false"
    props = message.properties
    if props.payload_format_indicator is not None:  # v5 3.3.2.3.2
        headers[PAYLOAD_FORMAT] = str(props.payload_format_indicator)
    if props.message_expiry_interval is not None:  # v5 3.3.2.3.3
        headers[MESSAGE_EXPIRY] = str(props.message_expiry_interval)
    if props.content_type is not None:  # v5 3.3.2.3.9
        put_text(headers, CONTENT_TYPE, props.content_type)
    if props.response_topic is not None:  # v5 3.3.2.3.5
        put_text(headers, RESPONSE_TOPIC, props.response_topic)
    if props.correlation_data is not None:  # v5 3.3.2.3.6, binary data
        headers[CORRELATION_DATA] = _b64(props.correlation_data)
    if props.user_properties:  # v5 3.3.2.3.7, may repeat, order kept [MQTT-3.3.2-18]
        headers[USER_PROPERTIES] = json.dumps(
            [[name, value] for name, value in props.user_properties], separators=(",", ":")
        )
    if msg_id is not None:
        headers[MSG_ID] = msg_id_value(msg_id)
    return headers


def msg_id_value(msg_id: str) -> str:
    """The ``Nats-Msg-Id`` value of ``msg_id``: deterministic either way, so
    retransmissions still dedup."""
    # Printable ASCII without edge spaces is header-safe: the common case,
    # decided without the regex (this runs for every QoS 1/2 message).
    if msg_id.isascii() and msg_id.isprintable() and msg_id[:1] != " " and msg_id[-1:] != " ":
        return msg_id
    return msg_id if is_header_safe(msg_id) else _b64(msg_id.encode("utf-8"))


# ---------------------------------------------------------------- consumer side


def read_text(headers: Mapping[str, str], name: str) -> str | None:
    """The text value of ``name`` (plain or ``name-B64``), or None when absent."""
    if name in headers:
        return headers[name]
    encoded = headers.get(name + B64_SUFFIX)
    if encoded is None:
        return None
    return base64.b64decode(encoded, validate=True).decode("utf-8")


def read_binary(headers: Mapping[str, str], name: str) -> bytes | None:
    encoded = headers.get(name)
    return None if encoded is None else base64.b64decode(encoded, validate=True)


def read_user_properties(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    raw = headers.get(USER_PROPERTIES)
    if raw is None:
        return []
    return [(str(name), str(value)) for name, value in json.loads(raw)]
