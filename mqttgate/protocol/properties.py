"""MQTT 5.0 properties: the table, and their decoding and encoding (v5 section 2.2.2).

Theory of operation: :data:`PROPERTY_TABLE` maps each identifier to the field
of :class:`~mqttgate.protocol.packets.Properties`, its wire type, and the
packets that may carry it (v5 section 2.2.2.2, table 2-4). Decoding refuses
an identifier that is unknown or not allowed for the packet (Malformed Packet,
v5 section 2.2.2.2), a repeated property other than User Property and
PUBLISH's Subscription Identifier (Protocol Error, v5 section 2.2.2.2), and the
values the spec names as protocol errors. Encoding walks the same table.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import attrs

from mqttgate.protocol._validate import (
    MAX_VARINT,
    decode_varint,
    encode_varint,
    malformed,
    pack_bin,
    pack_str,
    protocol_error,
    read_bin,
    read_str,
)
from mqttgate.protocol.packets import NO_PROPERTIES, PacketType, Properties


class WireType(enum.Enum):
    """Data representations of v5 section 1.5."""

    #: One-byte integer.
    BYTE = 1
    #: Two-byte big-endian integer.
    TWO_BYTE = 2
    #: Four-byte big-endian integer.
    FOUR_BYTE = 4
    #: Variable byte integer.
    VARINT = 5
    #: UTF-8 encoded string.
    UTF8 = 6
    #: Binary data.
    BINARY = 7
    #: UTF-8 string pair.
    UTF8_PAIR = 8


#: The property set of a Will Message (v5 section 3.1.3.2); not a packet type.
WILL = 0

_C, _CA, _P = PacketType.CONNECT, PacketType.CONNACK, PacketType.PUBLISH
_PA, _PREC, _PREL, _PC = PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP
_S, _SA, _U, _UA = PacketType.SUBSCRIBE, PacketType.SUBACK, PacketType.UNSUBSCRIBE, PacketType.UNSUBACK
_D, _A = PacketType.DISCONNECT, PacketType.AUTH


@attrs.frozen
class PropertySpec:
    id: int
    #: Field name in :class:`Properties`.
    name: str
    wire_type: WireType
    #: Packet types (and :data:`WILL`) that may carry it.
    allowed: frozenset[int]
    #: Whether it may appear more than once in one packet.
    repeatable: frozenset[int] = frozenset()


def _spec(id: int, name: str, wire: WireType, *allowed: int, repeat: tuple[int, ...] = ()) -> PropertySpec:
    return PropertySpec(id, name, wire, frozenset(allowed), frozenset(repeat))


_W = WireType
#: v5 section 2.2.2.2, table 2-4.
PROPERTY_TABLE: dict[int, PropertySpec] = {
    spec.id: spec
    for spec in (
        _spec(0x01, "payload_format_indicator", _W.BYTE, _P, WILL),
        _spec(0x02, "message_expiry_interval", _W.FOUR_BYTE, _P, WILL),
        _spec(0x03, "content_type", _W.UTF8, _P, WILL),
        _spec(0x08, "response_topic", _W.UTF8, _P, WILL),
        _spec(0x09, "correlation_data", _W.BINARY, _P, WILL),
        # Repeatable in PUBLISH only (v5 section 3.3.2.3.8); one per SUBSCRIBE.
        _spec(0x0B, "subscription_identifiers", _W.VARINT, _P, _S, repeat=(_P,)),
        _spec(0x11, "session_expiry_interval", _W.FOUR_BYTE, _C, _CA, _D),
        _spec(0x12, "assigned_client_identifier", _W.UTF8, _CA),
        _spec(0x13, "server_keep_alive", _W.TWO_BYTE, _CA),
        _spec(0x15, "authentication_method", _W.UTF8, _C, _CA, _A),
        _spec(0x16, "authentication_data", _W.BINARY, _C, _CA, _A),
        _spec(0x17, "request_problem_information", _W.BYTE, _C),
        _spec(0x18, "will_delay_interval", _W.FOUR_BYTE, WILL),
        _spec(0x19, "request_response_information", _W.BYTE, _C),
        _spec(0x1A, "response_information", _W.UTF8, _CA),
        _spec(0x1C, "server_reference", _W.UTF8, _CA, _D),
        _spec(0x1F, "reason_string", _W.UTF8, _CA, _PA, _PREC, _PREL, _PC, _SA, _UA, _D, _A),
        _spec(0x21, "receive_maximum", _W.TWO_BYTE, _C, _CA),
        _spec(0x22, "topic_alias_maximum", _W.TWO_BYTE, _C, _CA),
        _spec(0x23, "topic_alias", _W.TWO_BYTE, _P),
        _spec(0x24, "maximum_qos", _W.BYTE, _CA),
        _spec(0x25, "retain_available", _W.BYTE, _CA),
        # Allowed everywhere and repeatable (v5 section 3.1.2.11.8 and peers).
        _spec(0x26, "user_properties", _W.UTF8_PAIR, _C, _CA, _P, _PA, _PREC, _PREL, _PC,
              _S, _SA, _U, _UA, _D, _A, WILL, repeat=(_C, _CA, _P, _PA, _PREC, _PREL, _PC,
                                                    _S, _SA, _U, _UA, _D, _A, WILL)),
        _spec(0x27, "maximum_packet_size", _W.FOUR_BYTE, _C, _CA),
        _spec(0x28, "wildcard_subscription_available", _W.BYTE, _CA),
        _spec(0x29, "subscription_identifier_available", _W.BYTE, _CA),
        _spec(0x2A, "shared_subscription_available", _W.BYTE, _CA),
    )
}  # fmt: skip

#: Byte-valued properties whose only legal values are 0 and 1; anything else
#: is a protocol error (v5 sections 3.1.2.11.6/7, 3.2.2.3.4-12; 3.3.2.3.2 for
#: the Payload Format Indicator).
_BOOLEAN = frozenset(
    {
        "payload_format_indicator",
        "request_problem_information",
        "request_response_information",
        "maximum_qos",
        "retain_available",
        "wildcard_subscription_available",
        "subscription_identifier_available",
        "shared_subscription_available",
    }
)
#: Properties for which 0 is a protocol error.
_NON_ZERO = {
    "receive_maximum": "v5 section 3.1.2.11.3",
    "maximum_packet_size": "v5 section 3.1.2.11.4",
    "topic_alias": "v5 [MQTT-3.3.2-8]",
    "subscription_identifiers": "v5 section 3.8.2.1.2",
}

_FOUR = struct.Struct(">I")
_TWO = struct.Struct(">H")

_KIND_NAMES = {WILL: "Will", **{int(t): t.name for t in PacketType}}


def decode_properties(body: memoryview, offset: int, kind: int) -> tuple[Properties, int]:
    """Read a property length and the properties after it.

    ``kind`` is the :class:`PacketType` (or :data:`WILL`) carrying them.
    """
    length, offset = decode_varint(body, offset)
    end = offset + length
    if end > len(body):
        raise malformed("property length runs past the end of the packet")
    if length == 0:
        return NO_PROPERTIES, end
    values: dict[str, Any] = {}
    user_properties: list[tuple[str, str]] = []
    subscription_ids: list[int] = []
    while offset < end:
        ident, offset = decode_varint(body, offset)
        spec = PROPERTY_TABLE.get(ident)
        if spec is None or kind not in spec.allowed:
            raise malformed(
                f"property 0x{ident:02X} not allowed in {_KIND_NAMES.get(kind, kind)} "
                "(v5 section 2.2.2.2)"
            )
        wire = spec.wire_type
        value: Any
        if wire is WireType.UTF8_PAIR:
            key, offset = read_str(body, offset)
            value, offset = read_str(body, offset)
            user_properties.append((key, value))
            continue
        if wire is WireType.BYTE:
            if offset >= end:
                raise malformed("property value runs past the property length")
            value = body[offset]
            offset += 1
        elif wire is WireType.TWO_BYTE:
            if offset + 2 > end:
                raise malformed("property value runs past the property length")
            value = _TWO.unpack_from(body, offset)[0]
            offset += 2
        elif wire is WireType.FOUR_BYTE:
            if offset + 4 > end:
                raise malformed("property value runs past the property length")
            value = _FOUR.unpack_from(body, offset)[0]
            offset += 4
        elif wire is WireType.VARINT:
            value, offset = decode_varint(body, offset)
        elif wire is WireType.UTF8:
            value, offset = read_str(body, offset)
        else:
            value, offset = read_bin(body, offset)
        name = spec.name
        if name in _BOOLEAN and value > 1:
            raise protocol_error(f"{name} must be 0 or 1, got {value} (v5 section 2.2.2.2)")
        if value == 0 and name in _NON_ZERO:
            raise protocol_error(f"{name} must not be 0 ({_NON_ZERO[name]})")
        if name == "subscription_identifiers":
            if subscription_ids and kind not in spec.repeatable:
                raise protocol_error(
                    "Subscription Identifier more than once in SUBSCRIBE (v5 section 3.8.2.1.2)"
                )
            subscription_ids.append(value)
            continue
        if name in values:
            raise protocol_error(f"property {name} more than once (v5 section 2.2.2.2)")
        values[name] = value
    if offset != end:
        raise malformed("property value runs past the property length")
    if user_properties:
        values["user_properties"] = tuple(user_properties)
    if subscription_ids:
        values["subscription_identifiers"] = tuple(subscription_ids)
    if "authentication_data" in values and "authentication_method" not in values:
        raise protocol_error(
            "Authentication Data without Authentication Method (v5 section 3.1.2.11.10)"
        )
    return Properties(**values), end


def encode_properties(props: Properties, kind: int) -> bytes:
    """Property length followed by the properties; ``kind`` as in :func:`decode_properties`.

    Raises ``ValueError`` for a property the packet may not carry: that is a
    bug in the caller, not a peer's fault.
    """
    if props is NO_PROPERTIES:
        return b"\x00"
    parts: list[bytes] = []
    for ident, spec in PROPERTY_TABLE.items():
        value = getattr(props, spec.name)
        if value is None or value == ():
            continue
        if kind not in spec.allowed:
            raise ValueError(f"property {spec.name} not allowed in {_KIND_NAMES.get(kind, kind)}")
        wire = spec.wire_type
        if wire is WireType.UTF8_PAIR:
            for key, val in value:
                parts.append(b"\x26" + pack_str(key) + pack_str(val))
        elif wire is WireType.VARINT:
            for number in value:
                if not 1 <= number <= MAX_VARINT:
                    raise ValueError(f"subscription identifier {number} out of range")
                parts.append(b"\x0b" + encode_varint(number))
        elif wire is WireType.BYTE:
            parts.append(bytes((ident, value)))
        elif wire is WireType.TWO_BYTE:
            parts.append(bytes((ident,)) + _TWO.pack(value))
        elif wire is WireType.FOUR_BYTE:
            parts.append(bytes((ident,)) + _FOUR.pack(value))
        elif wire is WireType.UTF8:
            parts.append(bytes((ident,)) + pack_str(value))
        else:
            parts.append(bytes((ident,)) + pack_bin(value))
    data = b"".join(parts)
    return encode_varint(len(data)) + data
