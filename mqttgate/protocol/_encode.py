"""Encoding packets to bytes (the other half of ``codec.py``).

Encoding trusts the packet objects only as far as the wire format goes: a
packet that cannot be expressed (QoS 3, a missing packet identifier, a reason
code the packet may not carry, a property it may not carry) raises
``ValueError``, a bug in the caller. A packet over the peer's Maximum Packet
Size raises :class:`PacketTooLargeForPeer` once what the spec allows to drop
has been dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import attrs

from mqttgate.protocol._validate import (
    ACK_CODES,
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    SUBACK_CODES,
    UNSUBACK_CODES,
    encode_varint,
    pack_bin,
    pack_str,
)
from mqttgate.protocol.packets import (
    NO_PROPERTIES,
    PACKET_TYPE_OF,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from mqttgate.protocol.properties import WILL, encode_properties
from mqttgate.protocol.reasons import (
    ProtocolVersion,
    ReasonCode,
    connack_return_code_v311,
    suback_code_v311,
)

_T = PacketType
_R = ReasonCode
_V5 = ProtocolVersion.V5


class PacketTooLargeForPeer(Exception):
    """The packet exceeds the peer's Maximum Packet Size even without its
    Reason String and User Properties (v5 [MQTT-3.1.2-24], [MQTT-3.1.2-25]).

    Not an :class:`MQTTError`: the connection goes on, the packet is discarded
    (for PUBLISH, "as if it had completed sending", v5 [MQTT-3.1.2-25]).
    """

    def __init__(self, packet: Packet, size: int, limit: int) -> None:
        super().__init__(
            f"{type(packet).__name__} of {size} bytes exceeds the peer's "
            f"Maximum Packet Size of {limit} bytes"
        )
        self.packet = packet
        self.size = size
        self.limit = limit


_U16 = struct.Struct(">H")


def _frame(b0: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes((b0, size)) + body
    return bytes((b0,)) + encode_varint(size) + body


def _packet_id(packet_id: int | None, name: str) -> bytes:
    if packet_id is None or not 0 < packet_id <= 0xFFFF:
        raise ValueError(f"{name} needs a packet identifier in 1..65535, got {packet_id}")
    return _U16.pack(packet_id)


def _checkreason_code(reason: ReasonCode, allowed: frozenset[ReasonCode], name: str) -> None:
    if reason not in allowed:
        raise ValueError(f"reason code {reason!r} is not valid in {name}")


def _encode_publish(packet: Publish, v5: bool) -> bytes:
    topic = packet.topic.encode("utf-8")
    qos = packet.qos
    if not 0 <= qos <= 2:
        raise ValueError(f"PUBLISH QoS {qos}")
    b0 = 0x30 | (qos << 1)
    if packet.retain:
        b0 |= 0x01
    if packet.dup:
        if not qos:
            raise ValueError("PUBLISH QoS 0 cannot have DUP set (v5 [MQTT-3.3.1-2])")
        b0 |= 0x08
    if len(topic) > 0xFFFF:
        raise ValueError("topic name longer than 65535 bytes")
    variable = _U16.pack(len(topic)) + topic
    if qos:
        variable += _packet_id(packet.packet_id, "PUBLISH")
    elif packet.packet_id is not None:
        raise ValueError("PUBLISH QoS 0 has no packet identifier (v5 [MQTT-2.2.1-2])")
    if v5:
        variable += encode_properties(packet.properties, _T.PUBLISH)
    payload = packet.payload
    size = len(variable) + len(payload)
    if size < 0x80:
        return b"".join((bytes((b0, size)), variable, payload))
    return b"".join((bytes((b0,)), encode_varint(size), variable, payload))


def _encode_connect(packet: Connect, version: ProtocolVersion) -> bytes:
    if packet.protocol_version != version:
        raise ValueError(f"CONNECT of {packet.protocol_version!r} encoded as {version!r}")
    v5 = version == _V5
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        if not 0 <= will.qos <= 2:
            raise ValueError(f"Will QoS {will.qos}")
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.password is not None:
        if packet.username is None and not v5:
            raise ValueError("3.1.1 CONNECT cannot carry a password without a user name")
        flags |= 0x40
    if packet.username is not None:
        flags |= 0x80
    parts = [pack_str(packet.protocol_name), bytes((int(version), flags)), _U16.pack(packet.keepalive)]
    if v5:
        parts.append(encode_properties(packet.properties, _T.CONNECT))
    parts.append(pack_str(packet.client_id))
    if will is not None:
        if v5:
            parts.append(encode_properties(will.properties, WILL))
        parts.append(pack_str(will.topic))
        parts.append(pack_bin(will.payload))
    if packet.username is not None:
        parts.append(pack_str(packet.username))
    if packet.password is not None:
        parts.append(pack_bin(packet.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(packet: Connack, version: ProtocolVersion) -> bytes:
    flags = 0x01 if packet.session_present else 0x00
    if version == _V5:
        _checkreason_code(packet.reason_code, CONNACK_CODES, "CONNACK")
        body = bytes((flags, packet.reason_code)) + encode_properties(packet.properties, _T.CONNACK)
        return _frame(0x20, body)
    code = connack_return_code_v311(packet.reason_code)
    if code is None:
        raise ValueError(f"no 3.1.1 CONNACK return code for {packet.reason_code!r}")
    return bytes((0x20, 2, flags, code))


def _encode_ack(packet: Puback | Pubrec | Pubrel | Pubcomp, version: ProtocolVersion) -> bytes:
    ptype = PACKET_TYPE_OF[type(packet)]
    b0 = (ptype << 4) | (0x02 if ptype == _T.PUBREL else 0)
    packet_id = _packet_id(packet.packet_id, ptype.name)
    if version != _V5:
        return bytes((b0, 2)) + packet_id
    _checkreason_code(packet.reason_code, ACK_CODES[ptype], ptype.name)
    properties = packet.properties
    no_properties = properties is NO_PROPERTIES or properties == NO_PROPERTIES
    if no_properties:
        if packet.reason_code == _R.SUCCESS:
            return bytes((b0, 2)) + packet_id  # short form (v5 section 3.4.2.1)
        return bytes((b0, 3)) + packet_id + bytes((packet.reason_code,))
    body = packet_id + bytes((packet.reason_code,)) + encode_properties(properties, ptype)
    return _frame(b0, body)


def _encode_subscribe(packet: Subscribe, version: ProtocolVersion) -> bytes:
    v5 = version == _V5
    if not packet.subscriptions:
        raise ValueError("SUBSCRIBE needs at least one filter (v5 [MQTT-3.8.3-2])")
    parts = [_packet_id(packet.packet_id, "SUBSCRIBE")]
    if v5:
        parts.append(encode_properties(packet.properties, _T.SUBSCRIBE))
    for sub in packet.subscriptions:
        if not 0 <= sub.qos <= 2:
            raise ValueError(f"subscription QoS {sub.qos}")
        options = sub.qos
        if v5:
            options |= (0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
            options |= int(sub.retain_handling) << 4
        parts.append(pack_str(sub.topic_filter))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(packet: Suback, version: ProtocolVersion) -> bytes:
    parts = [_U16.pack(packet.packet_id)]
    if version == _V5:
        for code in packet.reason_codes:
            _checkreason_code(code, SUBACK_CODES, "SUBACK")
        parts.append(encode_properties(packet.properties, _T.SUBACK))
        parts.append(bytes(packet.reason_codes))
    else:
        parts.append(bytes(suback_code_v311(code) for code in packet.reason_codes))
    return _frame(0x90, b"".join(parts))


def _encode_unsubscribe(packet: Unsubscribe, version: ProtocolVersion) -> bytes:
    if not packet.topic_filters:
        raise ValueError("UNSUBSCRIBE needs at least one filter (v5 [MQTT-3.10.3-2])")
    parts = [_packet_id(packet.packet_id, "UNSUBSCRIBE")]
    if version == _V5:
        parts.append(encode_properties(packet.properties, _T.UNSUBSCRIBE))
    parts.extend(pack_str(topic_filter) for topic_filter in packet.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(packet: Unsuback, version: ProtocolVersion) -> bytes:
    packet_id = _U16.pack(packet.packet_id)
    if version != _V5:
        return bytes((0xB0, 2)) + packet_id
    for code in packet.reason_codes:
        _checkreason_code(code, UNSUBACK_CODES, "UNSUBACK")
    body = packet_id + encode_properties(packet.properties, _T.UNSUBACK) + bytes(packet.reason_codes)
    return _frame(0xB0, body)


def _encode_pingreq(packet: Pingreq, version: ProtocolVersion) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(packet: Pingresp, version: ProtocolVersion) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(packet: Disconnect | Auth, version: ProtocolVersion) -> bytes:
    is_auth = type(packet) is Auth
    b0 = 0xF0 if is_auth else 0xE0
    if version != _V5:
        if is_auth:
            raise ValueError("AUTH does not exist in MQTT 3.1.1")
        return b"\xe0\x00"
    reason = packet.reason_code
    _checkreason_code(reason, AUTH_CODES if is_auth else DISCONNECT_CODES, "AUTH" if is_auth else "DISCONNECT")
    properties = packet.properties
    if properties is NO_PROPERTIES or properties == NO_PROPERTIES:
        if reason == _R.SUCCESS:
            return bytes((b0, 0))  # v5 sections 3.14.2.1, 3.15.2.1
        return bytes((b0, 1, reason))
    kind = _T.AUTH if is_auth else _T.DISCONNECT
    return _frame(b0, bytes((reason,)) + encode_properties(properties, kind))


_ENCODERS: dict[type, Callable[[Packet, ProtocolVersion], bytes]] = {
    Connect: _encode_connect,  # type: ignore[dict-item]
    Connack: _encode_connack,  # type: ignore[dict-item]
    Puback: _encode_ack,  # type: ignore[dict-item]
    Pubrec: _encode_ack,  # type: ignore[dict-item]
    Pubrel: _encode_ack,  # type: ignore[dict-item]
    Pubcomp: _encode_ack,  # type: ignore[dict-item]
    Subscribe: _encode_subscribe,  # type: ignore[dict-item]
    Suback: _encode_suback,  # type: ignore[dict-item]
    Unsubscribe: _encode_unsubscribe,  # type: ignore[dict-item]
    Unsuback: _encode_unsuback,  # type: ignore[dict-item]
    Pingreq: _encode_pingreq,  # type: ignore[dict-item]
    Pingresp: _encode_pingresp,  # type: ignore[dict-item]
    Disconnect: _encode_disconnect,  # type: ignore[dict-item]
    Auth: _encode_disconnect,  # type: ignore[dict-item]
}

#: Packets whose Reason String and User Properties the sender drops rather
#: than exceed the receiver's Maximum Packet Size (v5 [MQTT-3.2.2-19/20],
#: [MQTT-3.4.2-2/3], [MQTT-3.5.2-2/3], [MQTT-3.6.2-2/3], [MQTT-3.7.2-2/3],
#: [MQTT-3.9.2-1/2], [MQTT-3.11.2-1/2], [MQTT-3.14.2-3/4], [MQTT-3.15.2-2/3]).
#: PUBLISH user properties belong to the application message and are kept.
_DROPPABLE = frozenset({Connack, Puback, Pubrec, Pubrel, Pubcomp, Suback, Unsuback, Disconnect, Auth})


def encode(packet: Packet, version: ProtocolVersion, *, max_packet_size: int | None = None) -> bytes:
    """The bytes of ``packet`` for protocol ``version``.

    v5-only fields (properties, most reason codes) are ignored for 3.1.1
    unless 3.1.1 has an encoding for them (CONNACK and SUBACK codes).
    ``max_packet_size`` is the peer's Maximum Packet Size (v5 section
    3.1.2.11.4 / 3.2.2.3.6): what the spec allows is dropped to fit, else
    :class:`PacketTooLargeForPeer` is raised.
    """
    if type(packet) is Publish:
        data = _encode_publish(packet, version == _V5)
    else:
        encoder = _ENCODERS.get(type(packet))
        if encoder is None:
            raise TypeError(f"not an MQTT packet: {packet!r}")
        data = encoder(packet, version)
    if max_packet_size is not None and len(data) > max_packet_size:
        return _shrink(packet, version, max_packet_size, len(data))
    return data


def _shrink(packet: Packet, version: ProtocolVersion, limit: int, size: int) -> bytes:
    if version == _V5 and type(packet) in _DROPPABLE:
        properties: Properties = packet.properties  # type: ignore[union-attr]
        for change in ({"reason_string": None}, {"user_properties": ()}):
            properties = attrs.evolve(properties, **change)
            smaller = attrs.evolve(packet, properties=properties)  # type: ignore[arg-type]
            data = encode(smaller, version)
            if len(data) <= limit:
                return data
    raise PacketTooLargeForPeer(packet, size, limit)
