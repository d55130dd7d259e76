"""Reason codes, protocol versions and the one exception the codec raises.

Theory of operation: an :class:`MQTTError` is raised only for conditions that
end the connection; it carries the reason code that goes on the wire (v5
CONNACK/DISCONNECT) or is mapped to a 3.1.1 return code / a plain close.
Per-packet outcomes (a denied filter, an unknown packet id) are reason codes in
the reply packet, never exceptions.
"""

from __future__ import annotations

import enum


class ProtocolVersion(enum.IntEnum):
    """The protocol level byte of CONNECT."""

    #: MQTT 3.1 (protocol name ``MQIsdp``); answered with return code 0x01.
    V31 = 3
    #: MQTT 3.1.1.
    V311 = 4
    #: MQTT 5.0.
    V5 = 5


class ReasonCode(enum.IntEnum):
    """MQTT 5.0 reason codes (v5 section 2.4), one member per byte value.

    Several bytes have more than one reading in the spec; the other readings
    are listed in each member's doc comment and as module-level names below,
    never as enum aliases, so ``ReasonCode(0)`` has exactly one name.
    """

    #: Success / Normal disconnection / Granted QoS 0.
    SUCCESS = 0x00
    #: Granted QoS 1 (SUBACK).
    GRANTED_QOS_1 = 0x01
    #: Granted QoS 2 (SUBACK).
    GRANTED_QOS_2 = 0x02
    #: Disconnect with Will Message (DISCONNECT from the client).
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    #: No matching subscribers (PUBACK, PUBREC).
    NO_MATCHING_SUBSCRIBERS = 0x10
    #: No subscription existed (UNSUBACK).
    NO_SUBSCRIPTION_EXISTED = 0x11
    #: Continue authentication (AUTH).
    CONTINUE_AUTHENTICATION = 0x18
    #: Re-authenticate (AUTH).
    RE_AUTHENTICATE = 0x19
    #: Unspecified error.
    UNSPECIFIED_ERROR = 0x80
    #: Malformed Packet.
    MALFORMED_PACKET = 0x81
    #: Protocol Error.
    PROTOCOL_ERROR = 0x82
    #: Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    #: Unsupported Protocol Version (CONNACK).
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    #: Client Identifier not valid (CONNACK).
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    #: Bad User Name or Password (CONNACK).
    BAD_USER_NAME_OR_PASSWORD = 0x86
    #: Not authorized.
    NOT_AUTHORIZED = 0x87
    #: Server unavailable (CONNACK).
    SERVER_UNAVAILABLE = 0x88
    #: Server busy.
    SERVER_BUSY = 0x89
    #: Banned (CONNACK).
    BANNED = 0x8A
    #: Server shutting down (DISCONNECT).
    SERVER_SHUTTING_DOWN = 0x8B
    #: Bad authentication method.
    BAD_AUTHENTICATION_METHOD = 0x8C
    #: Keep Alive timeout (DISCONNECT).
    KEEP_ALIVE_TIMEOUT = 0x8D
    #: Session taken over (DISCONNECT).
    SESSION_TAKEN_OVER = 0x8E
    #: Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8F
    #: Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90
    #: Packet Identifier in use.
    PACKET_IDENTIFIER_IN_USE = 0x91
    #: Packet Identifier not found.
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    #: Receive Maximum exceeded (DISCONNECT).
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    #: Topic Alias invalid (DISCONNECT).
    TOPIC_ALIAS_INVALID = 0x94
    #: Packet too large.
    PACKET_TOO_LARGE = 0x95
    #: Message rate too high (DISCONNECT).
    MESSAGE_RATE_TOO_HIGH = 0x96
    #: Quota exceeded.
    QUOTA_EXCEEDED = 0x97
    #: Administrative action (DISCONNECT).
    ADMINISTRATIVE_ACTION = 0x98
    #: Payload format invalid.
    PAYLOAD_FORMAT_INVALID = 0x99
    #: Retain not supported.
    RETAIN_NOT_SUPPORTED = 0x9A
    #: QoS not supported.
    QOS_NOT_SUPPORTED = 0x9B
    #: Use another server.
    USE_ANOTHER_SERVER = 0x9C
    #: Server moved.
    SERVER_MOVED = 0x9D
    #: Shared Subscriptions not supported.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    #: Connection rate exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9F
    #: Maximum connect time (DISCONNECT).
    MAXIMUM_CONNECT_TIME = 0xA0
    #: Subscription Identifiers not supported.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    #: Wildcard Subscriptions not supported.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

    @property
    def is_error(self) -> bool:
        """Reason codes of 0x80 and above indicate failure (v5 section 2.4)."""
        return self >= 0x80


#: Other readings of 0x00, for readable call sites.
NORMAL_DISCONNECTION = ReasonCode.SUCCESS
GRANTED_QOS_0 = ReasonCode.SUCCESS

#: The granted-QoS reason code for each QoS (SUBACK).
GRANTED_QOS = (ReasonCode.SUCCESS, ReasonCode.GRANTED_QOS_1, ReasonCode.GRANTED_QOS_2)


class MQTTError(Exception):
    """A condition that ends the connection, with the reason code for the wire."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"MQTTError({self.reason.name}, {self.message!r})"


# 3.1.1 CONNACK return codes (v311 section 3.2.2.3).
V311_ACCEPTED = 0x00
V311_UNACCEPTABLE_PROTOCOL_VERSION = 0x01
V311_IDENTIFIER_REJECTED = 0x02
V311_SERVER_UNAVAILABLE = 0x03
V311_BAD_USERNAME_OR_PASSWORD = 0x04
V311_NOT_AUTHORIZED = 0x05

_V311_CONNACK_FROM_REASON = {
    ReasonCode.SUCCESS: V311_ACCEPTED,
    ReasonCode.UNSUPPORTED_PROTOCOL_VERSION: V311_UNACCEPTABLE_PROTOCOL_VERSION,
    ReasonCode.CLIENT_IDENTIFIER_NOT_VALID: V311_IDENTIFIER_REJECTED,
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: V311_BAD_USERNAME_OR_PASSWORD,
    ReasonCode.BAD_AUTHENTICATION_METHOD: V311_BAD_USERNAME_OR_PASSWORD,
    ReasonCode.NOT_AUTHORIZED: V311_NOT_AUTHORIZED,
    ReasonCode.BANNED: V311_NOT_AUTHORIZED,
    ReasonCode.SERVER_UNAVAILABLE: V311_SERVER_UNAVAILABLE,
    ReasonCode.SERVER_BUSY: V311_SERVER_UNAVAILABLE,
    ReasonCode.SERVER_SHUTTING_DOWN: V311_SERVER_UNAVAILABLE,
    ReasonCode.CONNECTION_RATE_EXCEEDED: V311_SERVER_UNAVAILABLE,
    ReasonCode.USE_ANOTHER_SERVER: V311_SERVER_UNAVAILABLE,
    ReasonCode.SERVER_MOVED: V311_SERVER_UNAVAILABLE,
    ReasonCode.QUOTA_EXCEEDED: V311_SERVER_UNAVAILABLE,
}

_REASON_FROM_V311_CONNACK = {
    V311_ACCEPTED: ReasonCode.SUCCESS,
    V311_UNACCEPTABLE_PROTOCOL_VERSION: ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    V311_IDENTIFIER_REJECTED: ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    V311_SERVER_UNAVAILABLE: ReasonCode.SERVER_UNAVAILABLE,
    V311_BAD_USERNAME_OR_PASSWORD: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    V311_NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
}


def connack_return_code_v311(reason: ReasonCode) -> int | None:
    """The 3.1.1 CONNACK return code for a v5 reason code.

    ``None`` means 3.1.1 has no CONNACK for this condition (for example a
    malformed CONNECT): the server just closes the connection
    (v311 [MQTT-3.1.4-1]).
    """
    return _V311_CONNACK_FROM_REASON.get(reason)


def reason_from_connack_v311(return_code: int) -> ReasonCode:
    """The reason code for a 3.1.1 CONNACK return code (0..5)."""
    try:
        return _REASON_FROM_V311_CONNACK[return_code]
    except KeyError:
        raise MQTTError(
            ReasonCode.MALFORMED_PACKET,
            f"CONNACK return code {return_code} is reserved (v311 section 3.2.2.3)",
        ) from None


def suback_code_v311(reason: ReasonCode) -> int:
    """3.1.1 SUBACK return codes: 0, 1, 2 or 0x80 Failure (v311 section 3.9.3)."""
    return int(reason) if reason <= ReasonCode.GRANTED_QOS_2 else 0x80
