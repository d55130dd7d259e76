"""The MQTT 3.1.1 / 5.0 codec: bytes in, packets out, and packets to bytes.

Theory of operation (h11 style, sans-IO):

* :class:`Decoder` owns one ``bytearray`` and a read offset. :meth:`Decoder.feed`
  appends what the socket gave (compacting the consumed prefix first, once per
  read, not once per packet); :meth:`Decoder.next_packet` returns one packet,
  or ``None`` when more bytes are needed. The fixed header is checked as soon
  as it is complete: packet type and reserved flags, direction, "CONNECT
  first, and only once", and the maximum packet size (fixed header plus
  remaining length) - all before the body is buffered.
* A packet body is read through a ``memoryview`` of exactly that packet, so a
  field that runs past the remaining length is detected. PUBLISH, the hot
  path, is decoded inline from the buffer with explicit bounds, and its
  payload is copied exactly once (``view[a:b].tobytes()``); the view over the
  buffer is made once per :meth:`Decoder.feed`, not once per packet.
* The server side (``server=True``) learns the protocol version from the
  CONNECT. The version is set as soon as the protocol level byte is read, so
  that a CONNECT that is malformed further on can still be answered with a
  CONNACK of the right format.
* Any violation raises :class:`MQTTError` with the reason code the spec names
  (Malformed Packet when the bytes cannot be parsed, Protocol Error when they
  parse but break a rule, Packet Too Large); nothing else escapes. After an
  error the decoder is dead: it ignores further data and raises the same
  error again.
* :func:`encode` builds bytes from a packet for a version. It raises
  ``ValueError`` for a packet that cannot be expressed (a bug in the caller)
  and :class:`PacketTooLargeForPeer` when the packet exceeds the peer's
  Maximum Packet Size even after dropping what the spec allows to drop.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterator

from mqttgate.protocol._encode import PacketTooLargeForPeer, encode
from mqttgate.protocol._validate import (
    ACK_CODES,
    AUTH_CODES,
    CONNACK_CODES,
    DISCONNECT_CODES,
    SUBACK_CODES,
    SUBACK_CODES_V311,
    UNSUBACK_CODES,
    check_topic_filter,
    check_topic_name,
    decode_varint,
    encode_varint,
    malformed,
    protocol_error,
    read_bin,
    read_str,
    read_u16,
    reason_code,
)
from mqttgate.protocol.packets import (
    NO_PROPERTIES,
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
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttgate.protocol.properties import WILL, decode_properties
from mqttgate.protocol.reasons import (
    MQTTError,
    ProtocolVersion,
    ReasonCode,
    reason_from_connack_v311,
)

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "Decoder",
    "PacketTooLargeForPeer",
    "decode_varint",
    "encode",
    "encode_varint",
]

#: 1 byte of packet type + 4 bytes of remaining length + 268,435,455 bytes
#: (v5 section 2.1.4): the largest packet the wire format can express.
DEFAULT_MAX_PACKET_SIZE = 268_435_460

_T = PacketType
_R = ReasonCode
_V5 = ProtocolVersion.V5


# ---------------------------------------------------------------- fixed header rules

#: Required low nibble per packet type; PUBLISH (None) carries DUP/QoS/RETAIN
#: (v5 section 2.1.3 table 2-2, v311 section 2.2.2 table 2.2).
_REQUIRED_FLAGS: tuple[int | None, ...] = (0, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
_CLIENT_SENDS = frozenset({_T.CONNECT, _T.PUBLISH, _T.PUBACK, _T.PUBREC, _T.PUBREL,
                           _T.PUBCOMP, _T.SUBSCRIBE, _T.UNSUBSCRIBE, _T.PINGREQ,
                           _T.DISCONNECT, _T.AUTH})  # fmt: skip
_SERVER_SENDS = frozenset({_T.CONNACK, _T.PUBLISH, _T.PUBACK, _T.PUBREC, _T.PUBREL,
                           _T.PUBCOMP, _T.SUBACK, _T.UNSUBACK, _T.PINGRESP,
                           _T.DISCONNECT, _T.AUTH})  # fmt: skip

_HeaderRule = tuple[ReasonCode, str] | None


def _header_rule(b0: int, version: ProtocolVersion | None, server: bool) -> _HeaderRule:
    ptype, flags = b0 >> 4, b0 & 0x0F
    if ptype == 0:
        return _R.MALFORMED_PACKET, "packet type 0 is reserved (v5 section 2.1.2, v311 section 2.2.1)"
    if ptype == _T.AUTH and version is not None and version != _V5:
        return _R.MALFORMED_PACKET, "packet type 15 is reserved in 3.1.1 (v311 section 2.2.1)"
    if ptype == _T.PUBLISH:
        if flags & 0x06 == 0x06:
            return _R.MALFORMED_PACKET, "PUBLISH with QoS 3 (v5 [MQTT-3.3.1-4], v311 [MQTT-3.3.1-4])"
        if flags & 0x08 and not flags & 0x06:
            return _R.MALFORMED_PACKET, "PUBLISH QoS 0 with DUP set (v5 [MQTT-3.3.1-2], v311 [MQTT-3.3.1-2])"
    elif flags != _REQUIRED_FLAGS[ptype]:
        return (
            _R.MALFORMED_PACKET,
            f"{_T(ptype).name} with reserved flags 0b{flags:04b} "
            "(v5 [MQTT-2.1.3-1], v311 [MQTT-2.2.2-1])",
        )
    name = _T(ptype).name
    if server and version is None and ptype != _T.CONNECT:
        return _R.PROTOCOL_ERROR, f"{name} before CONNECT (v5 [MQTT-3.1.0-1], v311 [MQTT-3.1.0-1])"
    if ptype not in (_CLIENT_SENDS if server else _SERVER_SENDS):
        side = "client" if server else "server"
        return _R.PROTOCOL_ERROR, f"a {side} does not send {name} (v5 section 2.1.2)"
    if ptype == _T.DISCONNECT and not server and version != _V5:
        return _R.PROTOCOL_ERROR, "a 3.1.1 server does not send DISCONNECT (v311 section 3.14)"
    if ptype == _T.CONNECT and version is not None:
        return _R.PROTOCOL_ERROR, "second CONNECT (v5 [MQTT-3.1.0-2], v311 [MQTT-3.1.0-2])"
    return None


@functools.cache
def _header_rules(version: ProtocolVersion | None, server: bool) -> tuple[_HeaderRule, ...]:
    return tuple(_header_rule(b0, version, server) for b0 in range(256))


# ---------------------------------------------------------------- decoder


class Decoder:
    """Incremental decoder for one direction of one connection.

    ``server=True`` decodes what a client sends; the version is then learnt
    from the CONNECT, which must come first. Passing ``version`` means the
    CONNECT has already been seen (a later CONNECT is a protocol error).
    ``server=False`` decodes what a server sends and needs ``version``.
    ``max_topic_filters`` bounds the filters of one SUBSCRIBE / UNSUBSCRIBE
    (Quota Exceeded beyond it), checked as they are read.
    """

    def __init__(
        self,
        *,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        version: ProtocolVersion | None = None,
        server: bool = True,
        max_topic_filters: int | None = None,
    ) -> None:
        if not server and version is None:
            raise ValueError("a client-side Decoder needs the protocol version")
        self.max_packet_size = max_packet_size
        self.max_topic_filters = max_topic_filters
        self._server = server
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._pos = 0
        self._error: MQTTError | None = None
        self._version: ProtocolVersion | None = None
        self._v5 = False
        self._rules: tuple[_HeaderRule, ...] = ()
        self._set_version(version)

    @property
    def version(self) -> ProtocolVersion | None:
        return self._version

    def _set_version(self, version: ProtocolVersion | None) -> None:
        self._version = version
        self._v5 = version == _V5
        self._rules = _header_rules(version, self._server)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. Ignored once the decoder has failed."""
        if self._error is not None:
            return
        # The view over the buffer lives from one feed to the next, so that
        # decoding does not create one per packet; release it to resize.
        self._view.release()
        buf = self._buf
        if self._pos:
            # Compact once per read: a memmove of at most one partial packet.
            del buf[: self._pos]
            self._pos = 0
        buf += data
        self._view = memoryview(buf)

    def has_packet(self) -> bool:
        """Whether a whole packet is buffered (reads the fixed header only).

        Keep alive counts Control Packets, not bytes (v5 [MQTT-3.1.2-22], v311
        [MQTT-3.1.2-24]): the broker extends a connection's read deadline only
        when a read completed a packet, so a trickle of bytes of a packet that
        never ends does not keep the connection alive. A malformed header
        answers False; ``next_packet`` raises for it.
        """
        buf = self._buf
        end = len(buf)
        length = 0
        shift = 0
        i = self._pos + 1
        while i < end and shift < 28:
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if byte < 0x80:
                return end - i >= length
            shift += 7
        return False

    def packets(self) -> Iterator[Packet]:
        """Every complete packet buffered so far (stops at the first ``None``)."""
        # iter(callable, sentinel) runs the loop in C: no generator frame per packet.
        return iter(self.next_packet, None)

    def next_packet(self) -> Packet | None:
        """The next complete packet, or ``None`` if more bytes are needed."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 2:
            return None
        b0 = buf[pos]
        length = buf[pos + 1]
        start = pos + 2
        try:
            if length >= 0x80:
                header = self._long_length(buf, pos)
                if header is None:
                    return None
                length, start = header
            rule = self._rules[b0]
            if rule is not None:
                raise MQTTError(*rule)
            end = start + length
            if end - pos > self.max_packet_size:
                raise MQTTError(
                    _R.PACKET_TOO_LARGE,
                    f"packet of {end - pos} bytes exceeds the maximum of "
                    f"{self.max_packet_size} (v5 [MQTT-3.1.2-24])",
                )
            if len(buf) < end:
                return None
            self._pos = end
            if b0 == 0x40 and length == 2:
                # PUBACK without reason code or properties: what every QoS 1
                # subscriber sends for every message (both versions).
                ack_id = (buf[start] << 8) | buf[start + 1]
                if not ack_id:
                    raise protocol_error("PUBACK with packet identifier 0 (v5 [MQTT-2.2.1-3])")
                return Puback(ack_id)
            if b0 >> 4 != 3:
                body = self._view[start:end]
                try:
                    return _DECODERS[b0 >> 4](self, body, b0)
                except (IndexError, struct.error):
                    raise malformed("field runs past the end of the packet") from None
                finally:
                    body.release()

            # PUBLISH, the hot path: inline, read straight from the buffer
            # between start and end, no Python loop over bytes.
            if length < 2:
                raise malformed("PUBLISH too short for its topic length")
            offset = start + 2 + ((buf[start] << 8) | buf[start + 1])
            if offset > end:
                raise malformed("topic name runs past the end of the packet")
            try:
                topic = buf[start + 2 : offset].decode("utf-8")
            except UnicodeDecodeError as error:
                raise malformed(
                    f"ill-formed UTF-8 topic name: {error.reason} (v5 [MQTT-1.5.4-1])"
                ) from None
            if "\x00" in topic:
                raise malformed("topic name contains U+0000 (v5 [MQTT-1.5.4-2], v311 [MQTT-1.5.3-2])")
            qos = (b0 >> 1) & 3
            packet_id = None
            if qos:
                if offset + 2 > end:
                    raise malformed("packet identifier runs past the end of the packet")
                packet_id = (buf[offset] << 8) | buf[offset + 1]
                offset += 2
                if not packet_id:
                    raise protocol_error("PUBLISH QoS > 0 with packet identifier 0 (v5 [MQTT-2.2.1-3])")
            properties = NO_PROPERTIES
            if self._v5:
                if offset < end and buf[offset] == 0:
                    offset += 1
                else:
                    offset, properties = self._publish_properties(start, end, offset)
            if not topic or "+" in topic or "#" in topic:
                check_topic_name(topic, has_alias=properties.topic_alias is not None)
            # The one copy of the payload.
            payload = self._view[offset:end].tobytes()
            return Publish(topic, payload, qos, bool(b0 & 1), bool(b0 & 8), packet_id, properties)
        except MQTTError as error:
            self._fail(error)
            raise

    def _fail(self, error: MQTTError) -> None:
        self._error = error
        # A traceback may pin a view of the old buffer: never resize it again.
        self._buf = bytearray()
        self._view = memoryview(b"")
        self._pos = 0

    def _long_length(self, buf: bytearray, pos: int) -> tuple[int, int] | None:
        """Remaining length of 2-4 bytes (v5 section 2.1.4, v311 section 2.2.3)."""
        value = 0
        index = pos + 1
        for shift in (0, 7, 14, 21):
            if index >= len(buf):
                return None
            byte = buf[index]
            index += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0:
                    raise malformed("remaining length not minimally encoded (v5 [MQTT-1.5.5-1])")
                return value, index
        raise malformed("remaining length longer than 4 bytes (v5 section 1.5.5, v311 section 2.2.3)")

    def _publish_properties(self, start: int, end: int, offset: int) -> tuple[int, Properties]:
        body = self._view[start:end]
        try:
            properties, relative = decode_properties(body, offset - start, _T.PUBLISH)
        finally:
            body.release()
        if properties.subscription_identifiers and self._server:
            raise protocol_error(
                "PUBLISH from a client with a Subscription Identifier (v5 [MQTT-3.3.4-6])"
            )
        return start + relative, properties

    # -- the others

    def _connect(self, body: memoryview, b0: int) -> Connect:
        name, offset = read_str(body, 0)
        level = body[offset]
        offset += 1
        if name == "MQTT":
            if level not in (4, 5):
                raise MQTTError(
                    _R.UNSUPPORTED_PROTOCOL_VERSION,
                    f"protocol level {level} is not supported (v5 [MQTT-3.1.2-2], v311 [MQTT-3.1.2-2])",
                )
        elif name == "MQIsdp":
            # MQTT 3.1: decoded with 3.1.1 rules so the broker can answer
            # CONNACK return code 0x01 (docs/protocol.md).
            if level != 3:
                raise MQTTError(_R.UNSUPPORTED_PROTOCOL_VERSION, f"MQIsdp with protocol level {level}")
        else:
            raise malformed(f"unknown protocol name {name!r} (v5 [MQTT-3.1.2-1], v311 [MQTT-3.1.2-1])")
        version = ProtocolVersion(level)
        v5 = version == _V5
        self._set_version(version)
        flags = body[offset]
        keepalive = (body[offset + 1] << 8) | body[offset + 2]
        offset += 3
        if flags & 0x01:
            raise malformed("CONNECT reserved flag set (v5 [MQTT-3.1.2-3], v311 [MQTT-3.1.2-3])")
        will_flag = flags & 0x04
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if will_flag:
            if will_qos == 3:
                raise malformed("Will QoS 3 (v5 [MQTT-3.1.2-12], v311 [MQTT-3.1.2-14])")
        elif will_qos or will_retain:
            raise malformed(
                "Will QoS/Retain set without the Will Flag "
                "(v5 [MQTT-3.1.2-11], [MQTT-3.1.2-13]; v311 [MQTT-3.1.2-13], [MQTT-3.1.2-15])"
            )
        has_username, has_password = flags & 0x80, flags & 0x40
        if has_password and not has_username and not v5:
            raise malformed("password without user name (v311 [MQTT-3.1.2-22])")
        properties = NO_PROPERTIES
        if v5:
            properties, offset = decode_properties(body, offset, _T.CONNECT)
        client_id, offset = read_str(body, offset)
        will = None
        if will_flag:
            will_properties = NO_PROPERTIES
            if v5:
                will_properties, offset = decode_properties(body, offset, WILL)
            will_topic, offset = read_str(body, offset)
            check_topic_name(will_topic)
            will_payload, offset = read_bin(body, offset)
            will = Will(will_topic, will_payload, will_qos, will_retain, will_properties)
        username = password = None
        if has_username:
            username, offset = read_str(body, offset)
        if has_password:
            password, offset = read_bin(body, offset)
        _check_end(body, offset, "CONNECT")
        return Connect(
            client_id=client_id,
            protocol_version=version,
            protocol_name=name,
            clean_start=bool(flags & 0x02),
            keepalive=keepalive,
            username=username,
            password=password,
            will=will,
            properties=properties,
        )

    def _connack(self, body: memoryview, b0: int) -> Connack:
        ack_flags, code = body[0], body[1]
        if ack_flags & 0xFE:
            raise malformed("CONNACK reserved flags set (v5 [MQTT-3.2.2-1], v311 section 3.2.2.1)")
        properties = NO_PROPERTIES
        if self._v5:
            reason = reason_code(code, CONNACK_CODES, "CONNACK")
            properties, offset = decode_properties(body, 2, _T.CONNACK)
        else:
            reason, offset = reason_from_connack_v311(code), 2
        _check_end(body, offset, "CONNACK")
        return Connack(reason_code=reason, session_present=bool(ack_flags), properties=properties)

    def _ack(self, body: memoryview, b0: int) -> Puback | Pubrec | Pubrel | Pubcomp:
        ptype = b0 >> 4
        cls = _ACK_CLASSES[ptype]
        packet_id, _ = read_u16(body, 0)
        if not packet_id:
            raise protocol_error(f"{cls.__name__.upper()} with packet identifier 0 (v5 [MQTT-2.2.1-3])")
        size = len(body)
        if not self._v5 or size == 2:
            # v5 short form: Reason Code 0x00 and no properties (v5 section 3.4.2.1).
            _check_end(body, 2, cls.__name__.upper())
            return cls(packet_id)
        reason = reason_code(body[2], ACK_CODES[ptype], cls.__name__.upper())
        properties = NO_PROPERTIES
        if size > 3:
            # A Remaining Length of 3 means no property length (v5 section 3.4.2.2.1).
            properties, offset = decode_properties(body, 3, ptype)
            _check_end(body, offset, cls.__name__.upper())
        return cls(packet_id, reason, properties)

    def _subscribe(self, body: memoryview, b0: int) -> Subscribe:
        packet_id, offset = read_u16(body, 0)
        if not packet_id:
            raise protocol_error("SUBSCRIBE with packet identifier 0 (v5 [MQTT-2.2.1-3])")
        v5 = self._v5
        properties = NO_PROPERTIES
        if v5:
            properties, offset = decode_properties(body, offset, _T.SUBSCRIBE)
        subscriptions: list[Subscription] = []
        size = len(body)
        limit = self.max_topic_filters
        while offset < size:
            if limit is not None and len(subscriptions) >= limit:
                raise _too_many_filters("SUBSCRIBE", limit)
            topic_filter, offset = read_str(body, offset)
            if offset >= size:
                raise malformed("SUBSCRIBE filter without subscription options")
            options = body[offset]
            offset += 1
            qos = options & 0x03
            if v5:
                if options & 0xC0:
                    raise malformed("subscription options reserved bits set (v5 [MQTT-3.8.3-5])")
                if qos == 3:
                    raise protocol_error("subscription Maximum QoS 3 (v5 section 3.8.3.1)")
                retain_handling = (options >> 4) & 0x03
                if retain_handling == 3:
                    raise protocol_error("Retain Handling 3 (v5 section 3.8.3.1)")
            else:
                if options & 0xFC or qos == 3:
                    raise malformed("requested QoS byte invalid (v311 [MQTT-3.8.3-4])")
                retain_handling = 0
            check_topic_filter(topic_filter, shared=v5)
            no_local = bool(options & 0x04) and v5
            if no_local and topic_filter.startswith("$share/"):
                raise protocol_error("No Local on a shared subscription (v5 [MQTT-3.8.3-4])")
            subscriptions.append(
                Subscription(
                    topic_filter,
                    qos,
                    no_local,
                    bool(options & 0x08) and v5,
                    RetainHandling(retain_handling),
                )
            )
        if not subscriptions:
            raise protocol_error("SUBSCRIBE without topic filters (v5 [MQTT-3.8.3-2], v311 [MQTT-3.8.3-3])")
        return Subscribe(packet_id, tuple(subscriptions), properties)

    def _suback(self, body: memoryview, b0: int) -> Suback:
        packet_id, offset = read_u16(body, 0)
        properties = NO_PROPERTIES
        allowed = SUBACK_CODES_V311
        if self._v5:
            properties, offset = decode_properties(body, offset, _T.SUBACK)
            allowed = SUBACK_CODES
        codes = tuple(reason_code(byte, allowed, "SUBACK") for byte in body[offset:])
        if not codes:
            raise protocol_error("SUBACK without reason codes (v5 section 3.9.3)")
        return Suback(packet_id, codes, properties)

    def _unsubscribe(self, body: memoryview, b0: int) -> Unsubscribe:
        packet_id, offset = read_u16(body, 0)
        if not packet_id:
            raise protocol_error("UNSUBSCRIBE with packet identifier 0 (v5 [MQTT-2.2.1-3])")
        properties = NO_PROPERTIES
        if self._v5:
            properties, offset = decode_properties(body, offset, _T.UNSUBSCRIBE)
        filters: list[str] = []
        size = len(body)
        limit = self.max_topic_filters
        while offset < size:
            if limit is not None and len(filters) >= limit:
                raise _too_many_filters("UNSUBSCRIBE", limit)
            topic_filter, offset = read_str(body, offset)
            check_topic_filter(topic_filter, shared=self._v5)
            filters.append(topic_filter)
        if not filters:
            raise protocol_error(
                "UNSUBSCRIBE without topic filters (v5 [MQTT-3.10.3-2], v311 [MQTT-3.10.3-2])"
            )
        return Unsubscribe(packet_id, tuple(filters), properties)

    def _unsuback(self, body: memoryview, b0: int) -> Unsuback:
        packet_id, offset = read_u16(body, 0)
        if not self._v5:
            _check_end(body, offset, "UNSUBACK")
            return Unsuback(packet_id)
        properties, offset = decode_properties(body, offset, _T.UNSUBACK)
        codes = tuple(reason_code(byte, UNSUBACK_CODES, "UNSUBACK") for byte in body[offset:])
        if not codes:
            raise protocol_error("UNSUBACK without reason codes (v5 section 3.11.3)")
        return Unsuback(packet_id, codes, properties)

    def _ping(self, body: memoryview, b0: int) -> Pingreq | Pingresp:
        _check_end(body, 0, _T(b0 >> 4).name)
        return Pingreq() if b0 >> 4 == _T.PINGREQ else Pingresp()

    def _disconnect(self, body: memoryview, b0: int) -> Disconnect | Auth:
        ptype = b0 >> 4
        cls = Disconnect if ptype == _T.DISCONNECT else Auth
        name = _T(ptype).name
        if not self._v5 or not body:
            # v5: Remaining Length 0 means 0x00 and no properties (v5 sections 3.14.2.1, 3.15.2.1).
            _check_end(body, 0, name)
            return cls()
        reason = reason_code(body[0], DISCONNECT_CODES if cls is Disconnect else AUTH_CODES, name)
        properties = NO_PROPERTIES
        if len(body) > 1:
            properties, offset = decode_properties(body, 1, ptype)
            _check_end(body, offset, name)
            if (
                cls is Disconnect
                and not self._server
                and properties.session_expiry_interval is not None
            ):
                raise protocol_error("Session Expiry Interval in a server DISCONNECT (v5 [MQTT-3.14.2-2])")
        return cls(reason, properties)


def _too_many_filters(name: str, limit: int) -> MQTTError:
    # The specs set no number; each filter costs microseconds to decode and
    # handle, so a 1 MiB packet of 200,000 filters held the event loop for
    # about a second. Refused before the rest is decoded (docs/broker.md).
    return MQTTError(
        _R.QUOTA_EXCEEDED, f"{name} with more than {limit} topic filters (v5 reason 0x97)"
    )


def _check_end(body: memoryview, offset: int, name: str) -> None:
    if offset != len(body):
        raise malformed(
            f"{name} has {len(body) - offset} bytes left over after its last field "
            "(v5 section 1.5, v311 section 1.5)"
        )


_ACK_CLASSES: dict[int, type[Puback] | type[Pubrec] | type[Pubrel] | type[Pubcomp]] = {
    _T.PUBACK: Puback,
    _T.PUBREC: Pubrec,
    _T.PUBREL: Pubrel,
    _T.PUBCOMP: Pubcomp,
}

_Decode = Callable[[Decoder, memoryview, int], Packet]
_DECODERS: dict[int, _Decode] = {
    _T.CONNECT: Decoder._connect,
    _T.CONNACK: Decoder._connack,
    _T.PUBACK: Decoder._ack,
    _T.PUBREC: Decoder._ack,
    _T.PUBREL: Decoder._ack,
    _T.PUBCOMP: Decoder._ack,
    _T.SUBSCRIBE: Decoder._subscribe,
    _T.SUBACK: Decoder._suback,
    _T.UNSUBSCRIBE: Decoder._unsubscribe,
    _T.UNSUBACK: Decoder._unsuback,
    _T.PINGREQ: Decoder._ping,
    _T.PINGRESP: Decoder._ping,
    _T.DISCONNECT: Decoder._disconnect,
    _T.AUTH: Decoder._disconnect,
}
