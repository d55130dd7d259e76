"""Wire primitives with their validation: variable byte integers, UTF-8 strings,
binary data, and the syntactic checks on topic names and filters that the codec
needs (the richer matching logic lives in ``topics.py``), and the reason
codes each packet may carry.

Readers take a ``memoryview`` of exactly one packet body and an offset, and
return ``(value, next_offset)``. A read past the end of the body raises
``MQTTError(MALFORMED_PACKET)``: the remaining length said the field was there
and it is not (v5 section 1.5, v311 section 1.5).
"""

from __future__ import annotations

from mqttgate.protocol.packets import PacketType
from mqttgate.protocol.reasons import MQTTError, ReasonCode

#: The largest value a four-byte variable byte integer can carry (v5 section 1.5.5).
MAX_VARINT = 268_435_455

_MALFORMED = ReasonCode.MALFORMED_PACKET
_PROTOCOL_ERROR = ReasonCode.PROTOCOL_ERROR


def malformed(message: str) -> MQTTError:
    return MQTTError(_MALFORMED, message)


def protocol_error(message: str) -> MQTTError:
    return MQTTError(_PROTOCOL_ERROR, message)


# ---------------------------------------------------------------- varints


def encode_varint(value: int) -> bytes:
    """The minimal 1-4 byte encoding of ``value`` (v5 section 1.5.5, v311 section 2.2.3)."""
    if value < 0x80:
        if value < 0:
            raise ValueError(f"variable byte integer {value} is negative")
        return bytes((value,))
    if value > MAX_VARINT:
        raise ValueError(f"variable byte integer {value} exceeds {MAX_VARINT}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, offset: int) -> tuple[int, int]:
    """Read a variable byte integer wholly contained in ``data``.

    A fourth byte with its continuation bit set (a fifth byte) is malformed
    (v5 section 1.5.5, v311 section 2.2.3), and so is a non-minimal encoding
    (v5 [MQTT-1.5.5-1]). Overrunning ``data`` is malformed too: the caller
    passes a complete packet body.
    """
    value = 0
    for shift in (0, 7, 14, 21):
        if offset >= len(data):
            raise malformed("variable byte integer runs past the end of the packet")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and shift:
                raise malformed("variable byte integer not minimally encoded (v5 [MQTT-1.5.5-1])")
            return value, offset
    raise malformed("variable byte integer longer than 4 bytes (v5 section 1.5.5)")


# ---------------------------------------------------------------- strings and binary


def read_u16(body: memoryview, offset: int) -> tuple[int, int]:
    if offset + 2 > len(body):
        raise malformed("two-byte integer runs past the end of the packet")
    return (body[offset] << 8) | body[offset + 1], offset + 2


def read_str(body: memoryview, offset: int) -> tuple[str, int]:
    """A UTF-8 encoded string (v5 section 1.5.4, v311 section 1.5.3).

    Python's strict UTF-8 decoder already rejects ill-formed sequences,
    overlong forms and encoded surrogates U+D800..U+DFFF (v5 [MQTT-1.5.4-1],
    v311 [MQTT-1.5.3-1]); U+0000 is checked here (v5 [MQTT-1.5.4-2],
    v311 [MQTT-1.5.3-2]).
    """
    if offset + 2 > len(body):
        raise malformed("string length runs past the end of the packet")
    end = offset + 2 + ((body[offset] << 8) | body[offset + 1])
    if end > len(body):
        raise malformed("string runs past the end of the packet")
    try:
        text = str(body[offset + 2 : end], "utf-8")
    except UnicodeDecodeError as error:
        raise malformed(f"ill-formed UTF-8 string: {error.reason} (v5 [MQTT-1.5.4-1])") from None
    if "\x00" in text:
        raise malformed("UTF-8 string contains U+0000 (v5 [MQTT-1.5.4-2], v311 [MQTT-1.5.3-2])")
    return text, end


def read_bin(body: memoryview, offset: int) -> tuple[bytes, int]:
    """Binary data: a two-byte length then that many bytes (v5 section 1.5.6)."""
    if offset + 2 > len(body):
        raise malformed("binary data length runs past the end of the packet")
    end = offset + 2 + ((body[offset] << 8) | body[offset + 1])
    if end > len(body):
        raise malformed("binary data runs past the end of the packet")
    return bytes(body[offset + 2 : end]), end


def pack_str(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"UTF-8 string of {len(raw)} bytes exceeds 65535 (v5 section 1.5.4)")
    return len(raw).to_bytes(2, "big") + raw


def pack_bin(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"binary data of {len(data)} bytes exceeds 65535 (v5 section 1.5.6)")
    return len(data).to_bytes(2, "big") + data


# ---------------------------------------------------------------- topics


def check_topic_name(topic: str, *, has_alias: bool = False) -> None:
    """Syntactic checks on a PUBLISH / Will topic name.

    Wildcards are forbidden in topic names (v5 [MQTT-3.3.2-2],
    v311 [MQTT-3.3.2-2]); v5 gives "Topic Name invalid" (0x90) as the reason.
    An empty topic name is only allowed in v5 when a Topic Alias stands in for
    it (v5 [MQTT-3.3.2-1], section 3.3.2.3.4; [MQTT-4.7.3-1]), else it is a
    protocol error.
    """
    if not topic:
        if has_alias:
            return
        raise protocol_error("empty topic name without a Topic Alias (v5 [MQTT-4.7.3-1])")
    if "+" in topic or "#" in topic:
        raise MQTTError(
            ReasonCode.TOPIC_NAME_INVALID,
            f"wildcard in topic name {topic!r} (v5 [MQTT-3.3.2-2], v311 [MQTT-3.3.2-2])",
        )


def check_topic_filter(topic_filter: str, *, shared: bool) -> None:
    """Syntactic checks on a SUBSCRIBE / UNSUBSCRIBE topic filter.

    A malformed filter is a Malformed Packet: v5's 0x8F "Topic Filter invalid"
    is defined for filters that are "correctly formed" but not accepted, which
    is the broker's call (SUBACK per filter). ``shared`` (v5 only) enables the
    ``$share/{ShareName}/{filter}`` rules (v5 section 4.8.2).
    """
    if not topic_filter:
        raise malformed("empty topic filter (v5 [MQTT-4.7.3-1], v311 [MQTT-4.7.3-1])")
    if shared and topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise malformed(
                f"shared subscription {topic_filter!r} needs a ShareName and a filter "
                "(v5 [MQTT-4.8.2-1])"
            )
        if "+" in parts[1] or "#" in parts[1]:
            raise malformed(f"wildcard in ShareName of {topic_filter!r} (v5 [MQTT-4.8.2-2])")
        topic_filter = parts[2]
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            raise malformed(
                f"'#' must be a whole last level in {topic_filter!r} (v5 [MQTT-4.7.1-1])"
            )
        if "+" in level and level != "+":
            raise malformed(
                f"'+' must occupy a whole level in {topic_filter!r} (v5 [MQTT-4.7.1-2])"
            )


# ---------------------------------------------------------------- reason codes

def _codes(*values: int) -> frozenset[ReasonCode]:
    return frozenset(ReasonCode(v) for v in values)


#: The reason codes each packet may carry (v5 sections 3.2.2.2, 3.4.2.1, 3.5.2.1,
#: 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
CONNACK_CODES = _codes(0x00, *range(0x80, 0x8B), 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A,
                        0x9B, 0x9C, 0x9D, 0x9F)  # fmt: skip
PUBACK_CODES = _codes(0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99)
PUBREL_CODES = _codes(0x00, 0x92)
SUBACK_CODES = _codes(0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2)
SUBACK_CODES_V311 = _codes(0x00, 0x01, 0x02, 0x80)  # v311 [MQTT-3.9.3-2]
UNSUBACK_CODES = _codes(0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91)
DISCONNECT_CODES = _codes(0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E,
                           0x8F, 0x90, *range(0x93, 0xA3))  # fmt: skip
AUTH_CODES = _codes(0x00, 0x18, 0x19)

ACK_CODES: dict[int, frozenset[ReasonCode]] = {
    PacketType.PUBACK: PUBACK_CODES,
    PacketType.PUBREC: PUBACK_CODES,
    PacketType.PUBREL: PUBREL_CODES,
    PacketType.PUBCOMP: PUBREL_CODES,
}


def reason_code(byte: int, allowed: frozenset[ReasonCode], where: str) -> ReasonCode:
    """A reason code byte the packet may carry; otherwise a protocol error:
    the packet parses, but the value is not allowed (v5 section 2.4)."""
    if byte in allowed:
        return ReasonCode(byte)
    raise protocol_error(f"reason code 0x{byte:02X} is not valid in {where} (v5 section 2.4)")
