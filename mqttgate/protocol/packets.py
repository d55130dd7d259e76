"""MQTT control packets as frozen value objects, one class per packet type.

The same classes serve both protocol versions: fields that only MQTT 5.0 has
(properties, most reason codes) keep their defaults in 3.1.1 and the codec
ignores them when encoding level 4. Packets compare whole, which is what the
golden tests rely on.

Strings are ``str`` (already validated UTF-8, v5 [MQTT-1.5.4-1..3]); binary
data and payloads are ``bytes``.
"""

from __future__ import annotations

import enum

import attrs

from mqttgate.protocol.reasons import ProtocolVersion, ReasonCode


class PacketType(enum.IntEnum):
    """The high nibble of the fixed header (v5 section 2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    #: MQTT 5.0 only.
    AUTH = 15


UserProperties = tuple[tuple[str, str], ...]


@attrs.frozen
class Properties:
    """MQTT 5.0 properties (v5 section 2.2.2.2); ``None`` means absent.

    Which properties each packet may carry is checked by the codec. Only User
    Property (any packet) and Subscription Identifier (PUBLISH only) may repeat;
    their order is kept.
    """

    payload_format_indicator: int | None = None  # 0x01 byte
    message_expiry_interval: int | None = None  # 0x02 four-byte int, seconds
    content_type: str | None = None  # 0x03 UTF-8 string
    response_topic: str | None = None  # 0x08 UTF-8 string (a topic name)
    correlation_data: bytes | None = None  # 0x09 binary data
    subscription_identifiers: tuple[int, ...] = ()  # 0x0B variable byte int, 1..268,435,455
    session_expiry_interval: int | None = None  # 0x11 four-byte int, seconds
    assigned_client_identifier: str | None = None  # 0x12 UTF-8 string
    server_keep_alive: int | None = None  # 0x13 two-byte int, seconds
    authentication_method: str | None = None  # 0x15 UTF-8 string
    authentication_data: bytes | None = None  # 0x16 binary data
    request_problem_information: int | None = None  # 0x17 byte, 0/1
    will_delay_interval: int | None = None  # 0x18 four-byte int, seconds
    request_response_information: int | None = None  # 0x19 byte, 0/1
    response_information: str | None = None  # 0x1A UTF-8 string
    server_reference: str | None = None  # 0x1C UTF-8 string
    reason_string: str | None = None  # 0x1F UTF-8 string
    receive_maximum: int | None = None  # 0x21 two-byte int, 1..65535
    topic_alias_maximum: int | None = None  # 0x22 two-byte int
    topic_alias: int | None = None  # 0x23 two-byte int, 1..65535
    maximum_qos: int | None = None  # 0x24 byte, 0/1
    retain_available: int | None = None  # 0x25 byte, 0/1
    user_properties: UserProperties = ()  # 0x26 UTF-8 string pair, repeatable
    maximum_packet_size: int | None = None  # 0x27 four-byte int, >= 1
    wildcard_subscription_available: int | None = None  # 0x28 byte, 0/1
    subscription_identifier_available: int | None = None  # 0x29 byte, 0/1
    shared_subscription_available: int | None = None  # 0x2A byte, 0/1


#: The shared empty property set; most packets carry it.
NO_PROPERTIES = Properties()


@attrs.frozen
class Will:
    """The Will Message carried in CONNECT (v5 section 3.1.3.2-3)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Connect:
    client_id: str
    protocol_version: ProtocolVersion = ProtocolVersion.V311
    #: ``MQTT`` for levels 4 and 5, ``MQIsdp`` for 3.1.
    protocol_name: str = "MQTT"
    #: Clean Start (v5) / Clean Session (3.1.1).
    clean_start: bool = True
    keepalive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Connack:
    #: Always a v5 reason code; the codec maps to and from 3.1.1 return codes.
    reason_code: ReasonCode = ReasonCode.SUCCESS
    session_present: bool = False
    properties: Properties = NO_PROPERTIES


# Not frozen, deliberately: PUBLISH is the hot path, and a frozen attrs
# __init__ costs twice a plain slotted one (0.88 us vs 0.44 us here, which is
# the difference between ~425k and ~560k decodes/s in bench/codec.py). Treat it
# as immutable all the same: one decoded Publish is shared by every
# subscriber it is routed to; use attrs.evolve() to derive a changed copy.
@attrs.define(slots=True, eq=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    #: Present exactly when qos > 0.
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Puback:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Pubrec:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Pubrel:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Pubcomp:
    packet_id: int
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


class RetainHandling(enum.IntEnum):
    """Subscription option bits 4-5 (v5 section 3.8.3.1)."""

    #: Send retained messages at the time of the subscribe.
    SEND = 0
    #: Send retained messages only if the subscription did not exist.
    SEND_IF_NEW = 1
    #: Do not send retained messages.
    DO_NOT_SEND = 2


@attrs.frozen
class Subscription:
    """One topic filter of a SUBSCRIBE with its options."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND


@attrs.frozen
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Suback:
    packet_id: int
    #: One per filter; 3.1.1 return codes 0/1/2/0x80 are the same byte values.
    reason_codes: tuple[ReasonCode, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Unsuback:
    packet_id: int
    #: v5 only; always empty in 3.1.1, whose UNSUBACK has no payload.
    reason_codes: tuple[ReasonCode, ...] = ()
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Pingreq:
    pass


@attrs.frozen
class Pingresp:
    pass


@attrs.frozen
class Disconnect:
    #: v5 only; 3.1.1 DISCONNECT has no variable header.
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


@attrs.frozen
class Auth:
    """MQTT 5.0 only (v5 section 3.15)."""

    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

PACKET_TYPE_OF: dict[type, PacketType] = {
    Connect: PacketType.CONNECT,
    Connack: PacketType.CONNACK,
    Publish: PacketType.PUBLISH,
    Puback: PacketType.PUBACK,
    Pubrec: PacketType.PUBREC,
    Pubrel: PacketType.PUBREL,
    Pubcomp: PacketType.PUBCOMP,
    Subscribe: PacketType.SUBSCRIBE,
    Suback: PacketType.SUBACK,
    Unsubscribe: PacketType.UNSUBSCRIBE,
    Unsuback: PacketType.UNSUBACK,
    Pingreq: PacketType.PINGREQ,
    Pingresp: PacketType.PINGRESP,
    Disconnect: PacketType.DISCONNECT,
    Auth: PacketType.AUTH,
}
