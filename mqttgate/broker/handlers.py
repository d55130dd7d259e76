"""The handlers of the packets other than PUBLISH and CONNECT, for one connection.

Each takes the :class:`~mqttgate.broker.connection.Connection` and the packet,
acts synchronously (writes go to the connection's outbox) and returns False
only to end the connection (DISCONNECT). ``Connection._read_loop`` looks them
up in :data:`HANDLERS`; a packet type without an entry is a protocol error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from mqttgate.logs import get_logger
from mqttgate.protocol.codec import encode, encode_varint
from mqttgate.protocol.packets import (
    Auth,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Pubrec,
    Pubrel,
    RetainHandling,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from mqttgate.protocol.reasons import GRANTED_QOS, MQTTError, ProtocolVersion, ReasonCode
from mqttgate.protocol.session import Message, SubOptions
from mqttgate.protocol.topics import parse_shared, validate_topic_filter

if TYPE_CHECKING:
    from mqttgate.broker.connection import Connection

log = get_logger("broker")

_V5 = ProtocolVersion.V5
_R = ReasonCode
_PINGRESP = b"\xd0\x00"


def on_puback(conn: Connection, packet: Puback) -> None:
    handle = conn.handle
    assert handle is not None
    session = handle.session
    if session.on_puback(packet.packet_id) and (session.queue or session.held):
        handle.pump()


def on_pubrec(conn: Connection, packet: Pubrec) -> None:
    handle = conn.handle
    assert handle is not None
    pubrel = handle.session.on_pubrec(packet.packet_id, packet.reason_code)
    if pubrel is not None:
        conn.write(encode(pubrel, conn.version))
    elif handle.session.queue or handle.session.held:
        handle.pump()


def on_pubrel(conn: Connection, packet: Pubrel) -> None:
    session = conn.handle.session  # type: ignore[union-attr]
    pid = packet.packet_id
    if pid in session.awaiting_release:
        session.released(pid)
        session.inbound_done(pid)
        conn.write(b"\x70\x02" + pid.to_bytes(2, "big"))
    else:
        # v5 [MQTT-4.3.3-11], section 3.7.2.1: PUBCOMP 0x92 for an unknown id;
        # v311 [MQTT-3.6.4-1]: a plain PUBCOMP.
        conn.write(encode(Pubcomp(pid, _R.PACKET_IDENTIFIER_NOT_FOUND), conn.version))


def on_pubcomp(conn: Connection, packet: Pubcomp) -> None:
    handle = conn.handle
    assert handle is not None
    session = handle.session
    if session.on_pubcomp(packet.packet_id) and (session.queue or session.held):
        handle.pump()


def _check_ack_fits(conn: Connection, count: int, name: str) -> None:
    """v5 [MQTT-3.1.2-24]: a SUBACK/UNSUBACK has one reason code per filter and
    no property we could drop (we send none), so if the one for ``count``
    filters would exceed the client's Maximum Packet Size the request is not
    carried out and the client is disconnected with 0x95 (the spec says
    nothing of this case; silence would leave the client waiting for ever)."""
    peer_max = conn.peer_max_packet_size
    if peer_max is None:
        return
    remaining = 3 + count  # packet id, property length 0, the reason codes
    size = 1 + len(encode_varint(remaining)) + remaining
    if size > peer_max:
        raise MQTTError(
            _R.PACKET_TOO_LARGE,
            f"{name} for {count} topic filters ({size} bytes) exceeds the client's "
            f"Maximum Packet Size of {peer_max} bytes (v5 [MQTT-3.1.2-24])",
        )


def on_subscribe(conn: Connection, packet: Subscribe) -> None:
    _check_ack_fits(conn, len(packet.subscriptions), "SUBACK")
    broker = conn.broker
    limits = broker.limits
    handle = conn.handle
    assert handle is not None
    session = handle.session
    v5 = conn.version == _V5
    ids = packet.properties.subscription_identifiers
    sub_id = ids[0] if ids else None
    codes: list[ReasonCode] = []
    retained: list[tuple[Message, int, tuple[int, ...]]] = []
    now = trio.current_time()
    for sub in packet.subscriptions:
        topic_filter = sub.topic_filter
        try:
            validate_topic_filter(
                topic_filter, max_length=limits.max_topic_length, max_levels=limits.max_topic_levels
            )
            shared = parse_shared(topic_filter)
        except MQTTError:
            codes.append(_R.TOPIC_FILTER_INVALID)
            continue
        if shared is not None and sub.no_local:
            # v5 [MQTT-3.8.3-4]
            raise MQTTError(_R.PROTOCOL_ERROR, "No Local on a shared subscription")
        if conn.acl is not None and not conn.acl.may_subscribe(topic_filter):
            broker.stats.subscribe_denied += 1
            log.info(
                "subscribe_denied",
                conn_id=conn.conn_id,
                client_id=conn.client_id,
                device_id=conn.identity.device_id,
                topic_filter=topic_filter,
            )
            codes.append(_R.NOT_AUTHORIZED)
            continue
        existed = topic_filter in session.subscriptions
        if not existed and len(session.subscriptions) >= limits.max_subscriptions:
            codes.append(_R.QUOTA_EXCEEDED)
            continue
        opts = SubOptions(sub.qos, sub.no_local, sub.retain_as_published, sub_id)
        broker.router.subscribe(conn.client_id, topic_filter, opts)
        session.subscriptions[topic_filter] = opts
        codes.append(GRANTED_QOS[sub.qos])
        # v5 section 3.3.1.3: retained messages are not sent for shared subscriptions.
        if shared is None and (
            sub.retain_handling == RetainHandling.SEND
            or (sub.retain_handling == RetainHandling.SEND_IF_NEW and not existed)
        ):
            for message in broker.router.retained_for(topic_filter, now):
                qos = sub.qos if sub.qos < message.qos else message.qos
                retained.append((message, qos, () if sub_id is None else (sub_id,)))
    if not v5:
        codes = [c if c <= _R.GRANTED_QOS_2 else _R.UNSPECIFIED_ERROR for c in codes]
    conn.write(encode(Suback(packet.packet_id, tuple(codes)), conn.version))
    for message, qos, sub_ids in retained:
        # v5 section 3.3.1.3, v311 [MQTT-3.3.1-8]: retained on subscription keeps RETAIN=1.
        handle.deliver(message, qos, True, sub_ids)


def on_unsubscribe(conn: Connection, packet: Unsubscribe) -> None:
    _check_ack_fits(conn, len(packet.topic_filters), "UNSUBACK")
    broker = conn.broker
    session = conn.handle.session  # type: ignore[union-attr]
    codes = []
    for topic_filter in packet.topic_filters:
        try:
            removed = broker.router.unsubscribe(conn.client_id, topic_filter)
        except MQTTError:
            # A 3.1.1 filter such as "$share//a" is valid MQTT but no shared
            # subscription (SUBSCRIBE gets 0x80 for it), so nothing is removed;
            # the UNSUBACK is still due (v311 [MQTT-3.10.4-4], [MQTT-3.10.4-5]).
            removed = False
        session.subscriptions.pop(topic_filter, None)
        codes.append(_R.SUCCESS if removed else _R.NO_SUBSCRIPTION_EXISTED)
    conn.write(encode(Unsuback(packet.packet_id, tuple(codes)), conn.version))


def on_pingreq(conn: Connection, packet: Pingreq) -> None:
    conn.write(_PINGRESP)


def on_disconnect(conn: Connection, packet: Disconnect) -> bool:
    expiry = packet.properties.session_expiry_interval
    if expiry is not None:
        if conn.connect_expiry == 0 and expiry != 0:
            # v5 section 3.14.2.2.2 (a rule without a clause id)
            raise MQTTError(
                _R.PROTOCOL_ERROR, "Session Expiry set on DISCONNECT after 0 on CONNECT"
            )
        handle = conn.handle
        assert handle is not None
        handle.session.expiry = min(expiry, conn.broker.limits.max_session_expiry)
    # v5 [MQTT-3.1.2-8], [MQTT-3.1.2-10], [MQTT-3.14.4-3]: only Reason Code 0x00
    # deletes the Will; 0x04, and any error the client reports, keep it.
    conn.abnormal = packet.reason_code != _R.SUCCESS
    return False


def on_auth(conn: Connection, packet: Auth) -> None:
    raise MQTTError(_R.PROTOCOL_ERROR, "AUTH without enhanced authentication")


HANDLERS: dict[type, Any] = {
    Puback: on_puback,
    Pubrec: on_pubrec,
    Pubrel: on_pubrel,
    Pubcomp: on_pubcomp,
    Subscribe: on_subscribe,
    Unsubscribe: on_unsubscribe,
    Pingreq: on_pingreq,
    Disconnect: on_disconnect,
    Auth: on_auth,
}
