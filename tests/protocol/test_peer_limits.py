"""The client's limits on what the server sends, in the pure layer.

* Maximum Packet Size (v5 section 3.1.2.11.4): every packet the server sends
  fits, v5 [MQTT-3.1.2-24]; the Reason String and User Properties are what
  may be left out (v5 [MQTT-3.2.2-19/20] CONNACK, [MQTT-3.4.2-2/3] PUBACK,
  [MQTT-3.5.2-2/3] PUBREC, [MQTT-3.6.2-2/3] PUBREL, [MQTT-3.7.2-2/3] PUBCOMP,
  [MQTT-3.9.2-1/2] SUBACK, [MQTT-3.11.2-1/2] UNSUBACK, [MQTT-3.14.2-3/4]
  DISCONNECT, [MQTT-3.15.2-2/3] AUTH). Golden bytes written by hand.
* Receive Maximum on a resumed session (v5 [MQTT-3.3.4-9], section 4.9):
  ``Session.resend`` retransmits only what the new window allows.
"""

from __future__ import annotations

import attrs
import pytest

from mqttgate.protocol import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketTooLargeForPeer,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Unsuback,
    encode,
)
from mqttgate.protocol.codec import Decoder
from mqttgate.protocol.packets import NO_PROPERTIES
from mqttgate.protocol.session import Limits, Session, connack_for, negotiate

V311, V5 = ProtocolVersion.V311, ProtocolVersion.V5
R = ReasonCode

#: A Reason String and one User Property, on every packet below.
EXTRAS = Properties(reason_string="why", user_properties=(("k", "v"),))
WHY = bytes([0x1F, 0x00, 0x03, *b"why"])                       # Reason String "why" (6 bytes)
KV = bytes([0x26, 0x00, 0x01, *b"k", 0x00, 0x01, *b"v"])       # User Property k=v (7 bytes)


@attrs.frozen
class ShrinkCase:
    id: str
    packet: Packet
    full: bytes  #: as encoded without a limit
    no_reason: bytes  #: the Reason String left out
    bare: bytes  #: the User Properties left out too
    spec: tuple[str, ...]


SHRINK_CASES = [
    ShrinkCase(
        "connack", Connack(R.NOT_AUTHORIZED, False, EXTRAS),
        full=bytes([0x20, 16, 0x00, 0x87, 13, *WHY, *KV]),   # flags, reason 0x87, props 13
        no_reason=bytes([0x20, 10, 0x00, 0x87, 7, *KV]),
        bare=bytes([0x20, 3, 0x00, 0x87, 0]),                # property length 0
        spec=("MQTT-3.2.2-19", "MQTT-3.2.2-20"),
    ),
    ShrinkCase(
        "puback", Puback(1, R.NO_MATCHING_SUBSCRIBERS, EXTRAS),
        full=bytes([0x40, 17, 0x00, 0x01, 0x10, 13, *WHY, *KV]),  # id 1, reason 0x10, props 13
        no_reason=bytes([0x40, 11, 0x00, 0x01, 0x10, 7, *KV]),
        bare=bytes([0x40, 3, 0x00, 0x01, 0x10]),             # no property length (v5 section 3.4.2.1)
        spec=("MQTT-3.4.2-2", "MQTT-3.4.2-3"),
    ),
    ShrinkCase(
        "pubrec", Pubrec(2, R.NOT_AUTHORIZED, EXTRAS),
        full=bytes([0x50, 17, 0x00, 0x02, 0x87, 13, *WHY, *KV]),
        no_reason=bytes([0x50, 11, 0x00, 0x02, 0x87, 7, *KV]),
        bare=bytes([0x50, 3, 0x00, 0x02, 0x87]),
        spec=("MQTT-3.5.2-2", "MQTT-3.5.2-3"),
    ),
    ShrinkCase(
        "pubrel", Pubrel(3, R.PACKET_IDENTIFIER_NOT_FOUND, EXTRAS),
        full=bytes([0x62, 17, 0x00, 0x03, 0x92, 13, *WHY, *KV]),  # PUBREL flags 0010
        no_reason=bytes([0x62, 11, 0x00, 0x03, 0x92, 7, *KV]),
        bare=bytes([0x62, 3, 0x00, 0x03, 0x92]),
        spec=("MQTT-3.6.2-2", "MQTT-3.6.2-3"),
    ),
    ShrinkCase(
        "pubcomp", Pubcomp(4, R.SUCCESS, EXTRAS),
        full=bytes([0x70, 17, 0x00, 0x04, 0x00, 13, *WHY, *KV]),
        no_reason=bytes([0x70, 11, 0x00, 0x04, 0x00, 7, *KV]),
        bare=bytes([0x70, 2, 0x00, 0x04]),                   # Success, no properties: short form
        spec=("MQTT-3.7.2-2", "MQTT-3.7.2-3"),
    ),
    ShrinkCase(
        "suback", Suback(5, (R.GRANTED_QOS_1, R.NOT_AUTHORIZED), EXTRAS),
        full=bytes([0x90, 18, 0x00, 0x05, 13, *WHY, *KV, 0x01, 0x87]),  # codes after the properties
        no_reason=bytes([0x90, 12, 0x00, 0x05, 7, *KV, 0x01, 0x87]),
        bare=bytes([0x90, 5, 0x00, 0x05, 0, 0x01, 0x87]),
        spec=("MQTT-3.9.2-1", "MQTT-3.9.2-2"),
    ),
    ShrinkCase(
        "unsuback", Unsuback(6, (R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED), EXTRAS),
        full=bytes([0xB0, 18, 0x00, 0x06, 13, *WHY, *KV, 0x00, 0x11]),
        no_reason=bytes([0xB0, 12, 0x00, 0x06, 7, *KV, 0x00, 0x11]),
        bare=bytes([0xB0, 5, 0x00, 0x06, 0, 0x00, 0x11]),
        spec=("MQTT-3.11.2-1", "MQTT-3.11.2-2"),
    ),
    ShrinkCase(
        "disconnect", Disconnect(R.KEEP_ALIVE_TIMEOUT, EXTRAS),
        full=bytes([0xE0, 15, 0x8D, 13, *WHY, *KV]),
        no_reason=bytes([0xE0, 9, 0x8D, 7, *KV]),
        bare=bytes([0xE0, 1, 0x8D]),                         # reason code only (v5 section 3.14.2.2)
        spec=("MQTT-3.14.2-3", "MQTT-3.14.2-4"),
    ),
    ShrinkCase(
        # The Authentication Method (0x15) is not optional: it stays.
        "auth", Auth(R.CONTINUE_AUTHENTICATION, attrs.evolve(EXTRAS, authentication_method="m")),
        full=bytes([0xF0, 19, 0x18, 17, 0x15, 0x00, 0x01, *b"m", *WHY, *KV]),
        no_reason=bytes([0xF0, 13, 0x18, 11, 0x15, 0x00, 0x01, *b"m", *KV]),
        bare=bytes([0xF0, 6, 0x18, 4, 0x15, 0x00, 0x01, *b"m"]),
        spec=("MQTT-3.15.2-2", "MQTT-3.15.2-3"),
    ),
]


@pytest.mark.parametrize("case", SHRINK_CASES, ids=lambda c: c.id)
def test_what_is_dropped_to_fit_the_peer_maximum(case: ShrinkCase) -> None:
    assert encode(case.packet, V5) == case.full
    assert encode(case.packet, V5, max_packet_size=len(case.full)) == case.full
    # The Reason String goes first; the User Properties stay while they fit.
    for limit in range(len(case.no_reason), len(case.full)):
        assert encode(case.packet, V5, max_packet_size=limit) == case.no_reason
    for limit in range(len(case.bare), len(case.no_reason)):
        assert encode(case.packet, V5, max_packet_size=limit) == case.bare
    # Nothing else may go: the packet cannot be sent at all.
    with pytest.raises(PacketTooLargeForPeer) as info:
        encode(case.packet, V5, max_packet_size=len(case.bare) - 1)
    assert (info.value.size, info.value.limit) == (len(case.full), len(case.bare) - 1)
    # What is sent still decodes, to the packet without what was dropped.
    decoder = Decoder(version=V5, server=False)
    decoder.feed(case.bare)
    bare_props = NO_PROPERTIES
    if type(case.packet) is Auth:
        bare_props = Properties(authentication_method="m")
    assert decoder.next_packet() == attrs.evolve(case.packet, properties=bare_props)  # type: ignore[arg-type]


def test_suback_for_many_filters_has_nothing_to_drop() -> None:
    # One reason code per filter ([MQTT-3.9.3-1]) and no property: it fits
    # exactly or not at all (the broker then disconnects, docs/broker.md).
    suback = Suback(1, (R.GRANTED_QOS_1,) * 200)
    raw = bytes([0x90, 0xCB, 0x01, 0x00, 0x01, 0x00]) + b"\x01" * 200  # remaining 203 (2-byte varint)
    assert encode(suback, V5, max_packet_size=len(raw)) == raw
    with pytest.raises(PacketTooLargeForPeer):
        encode(suback, V5, max_packet_size=len(raw) - 1)


# ------------------------------------------------------------------ CONNACK

LIMITS = Limits(max_keepalive=600, max_session_expiry=3600)
#: The successful CONNACK for LIMITS, client id given, keep alive 60, no Session Expiry asked.
CONNACK_OK = bytes([
    0x20, 14,                      # CONNACK, remaining length 14
    0x00, 0x00,                    # session present 0, Success
    11,                            # properties length
    0x21, 0x00, 0x40,              # Receive Maximum 64
    0x22, 0x00, 0x20,              # Topic Alias Maximum 32
    0x27, 0x00, 0x10, 0x00, 0x00,  # Maximum Packet Size 1 MiB
])  # fmt: skip


def v5_connect(client_id: str, max_packet_size: int | None, **fields: object) -> Connect:
    return Connect(client_id, V5, keepalive=60, properties=Properties(maximum_packet_size=max_packet_size), **fields)  # type: ignore[arg-type]


def test_connack_that_fits_exactly_is_accepted() -> None:
    plan = negotiate(v5_connect("dev", len(CONNACK_OK)), LIMITS, "auto-1")
    assert plan.reason == R.SUCCESS and plan.peer_max_packet_size == 16
    assert encode(connack_for(plan, V5, LIMITS, session_present=False), V5) == CONNACK_OK


@pytest.mark.parametrize(
    ("connect", "needed"),
    [
        # One byte short of the plain CONNACK.
        (v5_connect("dev", len(CONNACK_OK) - 1), 16),
        # Assigned Client Identifier (v5 [MQTT-3.2.2-16]): +3 +6 bytes for "auto-1".
        (v5_connect("", 20), 25),
        # Server Keep Alive (keep alive 0 asked, [MQTT-3.2.2-21/22]): +3 bytes.
        (attrs.evolve(v5_connect("dev", 18), keepalive=0), 19),
    ],
    ids=["plain", "assigned-id", "server-keep-alive"],
)
def test_connack_that_cannot_fit_refuses_with_0x95(connect: Connect, needed: int) -> None:
    # v5 [MQTT-3.1.2-24]: none of these properties may be left out, so the
    # connection is refused with 0x95 (Packet too large) ...
    plan = negotiate(connect, LIMITS, "auto-1")
    assert plan.reason == R.PACKET_TOO_LARGE
    assert f"({needed} bytes)" in plan.detail
    refusal = connack_for(plan, V5, LIMITS, session_present=False)
    assert refusal.properties.reason_string == plan.detail
    # ... whose CONNACK fits once its Reason String is dropped ([MQTT-3.2.2-19]).
    assert connect.properties.maximum_packet_size is not None
    assert encode(refusal, V5, max_packet_size=connect.properties.maximum_packet_size) == bytes(
        [0x20, 0x03, 0x00, 0x95, 0x00]  # CONNACK, flags 0, Packet too large, no properties
    )


def test_v311_has_no_maximum_packet_size() -> None:
    plan = negotiate(Connect("", V311, clean_start=True), LIMITS, "auto-1")
    assert plan.reason == R.SUCCESS and plan.peer_max_packet_size is None


# ------------------------------------------------------------------ resend window


def in_flight(count: int, qos: int = 1, window: int = 10) -> Session:
    """A session with ``count`` QoS ``qos`` PUBLISHes sent (ids 1..count), unacknowledged."""
    session = Session("c", "uid", max_queued=10)
    session.window = window
    for i in range(count):
        session.start("t", b"%d" % i, qos, False, NO_PROPERTIES)
    return session


def dup(pid: int, qos: int = 1) -> Publish:
    return Publish("t", b"%d" % (pid - 1), qos, False, True, pid)


def test_resend_limited_to_the_new_receive_maximum() -> None:
    # v5 [MQTT-3.3.4-9]: 5 unacknowledged, the client comes back with Receive Maximum 2.
    session = in_flight(5)
    session.window = 2
    assert session.resend(0.0) == [dup(1), dup(2)]
    assert not session.has_room() and session.next_held(0.0) is None
    # One retransmission per acknowledgement, in the original order (v5 [MQTT-4.6.0-6]).
    for acked, nxt in ((1, 3), (2, 4), (3, 5)):
        assert session.on_puback(acked)
        assert session.next_held(0.0) == dup(nxt)
        assert session.next_held(0.0) is None
        assert not session.has_room()
    assert session.held == ()
    session.on_puback(4)
    assert session.has_room()  # only now may a new (queued) message go


def test_resend_sends_everything_when_the_window_allows() -> None:
    session = in_flight(3, window=3)
    assert session.resend(0.0) == [dup(1), dup(2), dup(3)]
    assert session.held == ()


def test_messages_past_pubrec_count_in_the_window() -> None:
    # v5 section 4.9: the quota comes back on PUBCOMP, not on PUBREC, so a
    # message whose PUBREL is outstanding still takes a slot. Every PUBREL is
    # resent at once (v5 [MQTT-3.3.4-10]: only PUBLISHes wait).
    session = in_flight(4, qos=2)
    assert session.on_pubrec(1, R.SUCCESS) == Pubrel(1)
    session.window = 2
    assert session.resend(0.0) == [Pubrel(1), dup(2, 2)]
    assert session.on_pubrec(2, R.SUCCESS) == Pubrel(2)
    assert session.next_held(0.0) is None  # 1 and 2 still wait for PUBCOMP
    assert session.on_pubcomp(1)
    assert session.next_held(0.0) == dup(3, 2)
    assert session.next_held(0.0) is None
    assert session.on_pubcomp(2)
    assert session.next_held(0.0) == dup(4, 2)


def test_more_pubrels_than_the_window() -> None:
    session = in_flight(3, qos=2)
    session.on_pubrec(1, R.SUCCESS)
    session.on_pubrec(2, R.SUCCESS)
    session.window = 1
    assert session.resend(0.0) == [Pubrel(1), Pubrel(2)]
    session.on_pubcomp(1)
    assert session.next_held(0.0) is None  # 2 still takes the one slot
    session.on_pubcomp(2)
    assert session.next_held(0.0) == dup(3, 2)


def test_acknowledgement_of_a_held_message_ends_it() -> None:
    # The client had them from the previous connection: never retransmitted.
    session = in_flight(4, qos=1)
    session.start("t", b"q2", 2, False, NO_PROPERTIES)  # id 5, QoS 2
    session.window = 1
    assert session.resend(0.0) == [dup(1)]
    assert session.on_puback(3)
    assert session.on_pubrec(5, R.SUCCESS) == Pubrel(5)  # v5 [MQTT-4.3.3-6]: no PUBLISH after PUBREL
    session.forget(4)
    assert list(session.held) == [2]
    session.on_puback(1)
    assert session.next_held(0.0) is None  # 5, now past PUBREC, takes the one slot
    session.on_pubcomp(5)
    assert session.next_held(0.0) == dup(2)
    assert session.held == ()


def test_error_pubrec_for_a_held_message_frees_it() -> None:
    # v5 [MQTT-4.4.0-2]: acknowledged, never retransmitted.
    session = in_flight(2, qos=2)
    session.window = 1
    session.resend(0.0)
    assert session.on_pubrec(2, R.UNSPECIFIED_ERROR) is None
    assert session.held == () and list(session.inflight) == [1]


def test_clean_start_drops_held_retransmissions() -> None:
    session = in_flight(3)
    session.window = 1
    session.resend(0.0)
    session.reset_connection_state()
    assert session.held == () and session.has_room()
