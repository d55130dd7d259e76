"""The client's limits on what the broker sends, over raw bytes.

* Receive Maximum on a resumed session: v5 [MQTT-3.3.4-9] "The Server MUST NOT
  send more than Receive Maximum QoS 1 and QoS 2 PUBLISH packets for which it
  has not received PUBACK, PUBCOMP, or PUBREC with a Reason Code of 128 or
  greater", also for the retransmissions of v5 [MQTT-4.4.0-1], which keep
  their order (v5 [MQTT-4.6.0-6], v311 [MQTT-4.6.0-6]).
* Maximum Packet Size: v5 [MQTT-3.1.2-24] "The Server MUST NOT send packets
  exceeding Maximum Packet Size to the Client", [MQTT-3.1.2-25] a PUBLISH that
  does not fit is discarded as if delivered, and the Reason String goes first
  ([MQTT-3.2.2-19] CONNACK).

Bytes are written by hand (tests/broker/raw.py). "Nothing else was sent" is
shown by a PINGREQ whose PINGRESP must be the next packet: the broker answers
packets in order, so anything it wrote before would come first.
"""

from __future__ import annotations

import trio

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from mqttgate.protocol import Connack, ProtocolVersion, ReasonCode
from mqttgate.protocol.codec import Decoder
from tests.broker.raw import RawClient, connect, frame, publish, s, subscribe
from tests.broker.test_wire import CONNACK_V5_OK, open_client
from tests.conftest import make_config

PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"
SESSION_EXPIRY_300 = b"\x11\x00\x00\x01\x2c"  # Session Expiry Interval 300 s


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return bytes([len(body)]) + body


def receive_maximum(n: int) -> bytes:
    return b"\x21" + n.to_bytes(2, "big")


def maximum_packet_size(n: int) -> bytes:
    return b"\x27" + n.to_bytes(4, "big")


def ack(kind: int, pid: int) -> bytes:
    """PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70): Success, short form."""
    return bytes([kind, 0x02]) + pid.to_bytes(2, "big")


def delivery(pid: int, payload: bytes, *, qos: int = 1, dup: bool, v5: bool = True) -> bytes:
    """A PUBLISH on topic "rm/t" from the broker; v5: no properties."""
    b0 = 0x30 | (qos << 1) | (0x08 if dup else 0)
    return frame(b0, s("rm/t") + pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + payload)


def make_broker(**config: object) -> Broker:
    return Broker(make_config(**config), AnonymousAuth(), NullForwarder())


async def nothing_more(client: RawClient) -> None:
    await client.send(PINGREQ)
    assert await client.packet() == PINGRESP


async def publisher(nursery: trio.Nursery, broker: Broker, version: int) -> RawClient:
    pub = await open_client(nursery, broker)
    await pub.send(connect("rm-pub", version=version))
    await pub.packet()
    return pub


async def publish_acked(pub: RawClient, payloads: list[bytes], first_pid: int, *, v5: bool) -> None:
    """QoS 1 PUBLISHes, each PUBACKed (so routed) before the next."""
    for offset, payload in enumerate(payloads):
        await pub.send(publish("rm/t", payload, qos=1, packet_id=first_pid + offset, v5=v5))
        assert await pub.packet() == ack(0x40, first_pid + offset)


# ------------------------------------------------------------------ Receive Maximum on resume


async def test_resend_respects_a_smaller_receive_maximum_v5(nursery: trio.Nursery) -> None:
    broker = make_broker()
    with trio.fail_after(10):
        sub = await open_client(nursery, broker)
        await sub.send(connect("rm", version=5, clean=False, props=props(SESSION_EXPIRY_300, receive_maximum(10))))
        assert (await sub.packet() or b"")[3] == 0x00
        await sub.send(subscribe(1, "rm/t", 1, v5=True))
        assert await sub.packet() == bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x01])
        pub = await publisher(nursery, broker, 5)
        await publish_acked(pub, [b"m0", b"m1", b"m2", b"m3", b"m4"], 1, v5=True)
        for pid in range(1, 6):
            assert await sub.packet() == delivery(pid, b"m%d" % (pid - 1), dup=False)
        await sub.aclose()  # none acknowledged

        again = await open_client(nursery, broker)
        await again.send(connect("rm", version=5, clean=False, props=props(SESSION_EXPIRY_300, receive_maximum(2))))
        assert (await again.packet() or b"")[2:4] == bytes([0x01, 0x00])  # session present, Success
        # Only Receive Maximum (2) retransmissions, DUP set, original ids.
        assert await again.packet() == delivery(1, b"m0", dup=True)
        assert await again.packet() == delivery(2, b"m1", dup=True)
        # New messages wait behind the held retransmissions.
        await publish_acked(pub, [b"m5", b"m6"], 6, v5=True)
        await nothing_more(again)
        # One more per PUBACK, in the original order, then the queued ones (DUP 0, new ids).
        expected = [
            delivery(3, b"m2", dup=True),
            delivery(4, b"m3", dup=True),
            delivery(5, b"m4", dup=True),
            delivery(6, b"m5", dup=False),
            delivery(7, b"m6", dup=False),
        ]
        for acked, nxt in zip(range(1, 6), expected, strict=True):
            await again.send(ack(0x40, acked))
            assert await again.packet() == nxt
            await nothing_more(again)
        await again.send(ack(0x40, 6) + ack(0x40, 7))
        await nothing_more(again)
        assert [c.inflight for c in broker.clients() if c.client_id == "rm"] == [0]
        assert broker.stats.too_large_dropped == 0


async def test_messages_past_pubrec_count_in_the_resumed_window_v5(nursery: trio.Nursery) -> None:
    # v5 section 4.9: the send quota comes back on PUBCOMP (or an error
    # PUBREC), so a QoS 2 message whose PUBREL is outstanding holds a slot;
    # PUBRELs themselves never wait (v5 [MQTT-3.3.4-10]).
    broker = make_broker()
    with trio.fail_after(10):
        sub = await open_client(nursery, broker)
        await sub.send(connect("rm", version=5, clean=False, props=props(SESSION_EXPIRY_300)))
        await sub.packet()
        await sub.send(subscribe(1, "rm/t", 2, v5=True))
        assert await sub.packet() == bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x02])
        pub = await publisher(nursery, broker, 5)
        for pid in (1, 2, 3):
            await pub.send(publish("rm/t", b"q%d" % pid, qos=2, packet_id=pid, v5=True))
            assert await pub.packet() == ack(0x50, pid)
            await pub.send(ack(0x62, pid))
            assert await pub.packet() == ack(0x70, pid)
        for pid in (1, 2, 3):
            assert await sub.packet() == delivery(pid, b"q%d" % pid, qos=2, dup=False)
        await sub.send(ack(0x50, 1))  # PUBREC 1
        assert await sub.packet() == ack(0x62, 1)  # PUBREL 1
        await sub.aclose()

        again = await open_client(nursery, broker)
        await again.send(connect("rm", version=5, clean=False, props=props(SESSION_EXPIRY_300, receive_maximum(2))))
        assert (await again.packet() or b"")[2] == 0x01
        assert await again.packet() == ack(0x62, 1)  # PUBREL 1 resent, holds a slot
        assert await again.packet() == delivery(2, b"q2", qos=2, dup=True)
        await nothing_more(again)  # 3 is held: 1 and 2 fill the window
        await again.send(ack(0x50, 2))
        assert await again.packet() == ack(0x62, 2)
        await nothing_more(again)  # still 2 without PUBCOMP
        await again.send(ack(0x70, 1))
        assert await again.packet() == delivery(3, b"q3", qos=2, dup=True)
        await again.send(ack(0x70, 2) + ack(0x50, 3))
        assert await again.packet() == ack(0x62, 3)
        await again.send(ack(0x70, 3))
        await nothing_more(again)
        assert [c.inflight for c in broker.clients() if c.client_id == "rm"] == [0]


async def test_resend_then_queue_in_order_v311(nursery: trio.Nursery) -> None:
    # 3.1.1 has no Receive Maximum; the window is max_inflight, and what was
    # queued behind it follows the retransmissions in order (v311 section 4.6).
    broker = make_broker(max_inflight=2)
    with trio.fail_after(10):
        sub = await open_client(nursery, broker)
        await sub.send(connect("rm", version=4, clean=False))
        await sub.packet()
        await sub.send(subscribe(1, "rm/t", 1))
        assert await sub.packet() == bytes([0x90, 0x03, 0x00, 0x01, 0x01])
        pub = await publisher(nursery, broker, 4)
        await publish_acked(pub, [b"m0", b"m1", b"m2", b"m3"], 1, v5=False)
        assert await sub.packet() == delivery(1, b"m0", dup=False, v5=False)
        assert await sub.packet() == delivery(2, b"m1", dup=False, v5=False)
        await sub.aclose()

        again = await open_client(nursery, broker)
        await again.send(connect("rm", version=4, clean=False))
        assert await again.packet() == bytes([0x20, 0x02, 0x01, 0x00])
        assert await again.packet() == delivery(1, b"m0", dup=True, v5=False)
        assert await again.packet() == delivery(2, b"m1", dup=True, v5=False)
        await nothing_more(again)
        await again.send(ack(0x40, 1))
        assert await again.packet() == delivery(3, b"m2", dup=False, v5=False)
        await again.send(ack(0x40, 2))
        assert await again.packet() == delivery(4, b"m3", dup=False, v5=False)
        await again.send(ack(0x40, 3) + ack(0x40, 4))
        await nothing_more(again)


async def test_resent_publish_too_large_for_the_new_connection_is_discarded(nursery: trio.Nursery) -> None:
    # v5 [MQTT-3.1.2-25]: "discard it without sending it and then behave as if
    # it had completed sending" - the next one takes its place in the window.
    broker = make_broker()
    with trio.fail_after(10):
        sub = await open_client(nursery, broker)
        await sub.send(connect("rm", version=5, clean=False, props=props(SESSION_EXPIRY_300)))
        await sub.packet()
        await sub.send(subscribe(1, "rm/t", 1, v5=True))
        await sub.packet()
        pub = await publisher(nursery, broker, 5)
        big = b"x" * 100
        await publish_acked(pub, [big, b"small", b"tail"], 1, v5=True)
        for pid, payload in ((1, big), (2, b"small"), (3, b"tail")):
            assert await sub.packet() == delivery(pid, payload, dup=False)
        await sub.aclose()

        again = await open_client(nursery, broker)
        limits = props(SESSION_EXPIRY_300, receive_maximum(1), maximum_packet_size(60))
        await again.send(connect("rm", version=5, clean=False, props=limits))
        assert (await again.packet() or b"")[2] == 0x01
        assert await again.packet() == delivery(2, b"small", dup=True)
        await nothing_more(again)
        await again.send(ack(0x40, 2))
        assert await again.packet() == delivery(3, b"tail", dup=True)
        await again.send(ack(0x40, 3))
        await nothing_more(again)
        assert broker.stats.too_large_dropped == 1
        assert [c.inflight for c in broker.clients() if c.client_id == "rm"] == [0]


# ------------------------------------------------------------------ Maximum Packet Size


def decode_connack(raw: bytes) -> Connack:
    decoder = Decoder(version=ProtocolVersion.V5, server=False)
    decoder.feed(raw)
    packet = decoder.next_packet()
    assert isinstance(packet, Connack)
    return packet


async def test_connack_refusal_drops_its_reason_string(nursery: trio.Nursery) -> None:
    # A control character in the client id: CONNACK 0x85 with a Reason String ...
    with trio.fail_after(5):
        roomy = await open_client(nursery)
        await roomy.send(connect("bad\x01id", version=5))
        refusal = await roomy.packet()
        assert refusal is not None and len(refusal) > 20 and b"control character" in refusal
        # ... which must go when the client allows 20 bytes (v5 [MQTT-3.2.2-19]).
        small = await open_client(nursery)
        await small.send(connect("bad\x01id", version=5, props=props(maximum_packet_size(20))))
        raw = await small.packet()
        assert raw == bytes([0x20, 0x03, 0x00, 0x85, 0x00])  # CONNACK, Client Identifier not valid
        assert decode_connack(raw) == Connack(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, False)
        assert await small.eof()


async def test_connack_with_assigned_client_id_too_large_is_refused_0x95(nursery: trio.Nursery) -> None:
    # The Assigned Client Identifier cannot be left out (v5 [MQTT-3.2.2-16]),
    # so a CONNACK that cannot carry it within 20 bytes is a refusal with 0x95.
    broker = make_broker()
    with trio.fail_after(5):
        small = await open_client(nursery, broker)
        await small.send(connect("", version=5, props=props(maximum_packet_size(20))))
        raw = await small.packet()
        assert raw is not None and len(raw) <= 20
        assert raw == bytes([0x20, 0x03, 0x00, 0x95, 0x00])  # CONNACK, Packet too large, no properties
        assert decode_connack(raw) == Connack(ReasonCode.PACKET_TOO_LARGE, False)
        assert await small.eof()
        assert broker.stats.connects_denied == {"PACKET_TOO_LARGE": 1}
        # Room enough: accepted, with the Assigned Client Identifier (0x12).
        roomy = await open_client(nursery, broker)
        await roomy.send(connect("", version=5, props=props(maximum_packet_size(64))))
        raw = await roomy.packet()
        assert raw is not None and len(raw) <= 64 and raw[3] == 0x00
        assigned = decode_connack(raw).properties.assigned_client_identifier
        assert assigned is not None and assigned.startswith("auto-")


async def test_connack_that_fits_exactly(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        exact = await open_client(nursery)
        await exact.send(connect("fit", version=5, props=props(maximum_packet_size(len(CONNACK_V5_OK)))))
        assert await exact.packet() == CONNACK_V5_OK
        await nothing_more(exact)
        short = await open_client(nursery)
        await short.send(connect("fit2", version=5, props=props(maximum_packet_size(len(CONNACK_V5_OK) - 1))))
        assert await short.packet() == bytes([0x20, 0x03, 0x00, 0x95, 0x00])
        assert await short.eof()
        # Below 5 bytes not even the refusal fits: closed without a CONNACK.
        tiny = await open_client(nursery)
        await tiny.send(connect("fit3", version=5, props=props(maximum_packet_size(4))))
        assert await tiny.packet() is None


async def test_suback_and_unsuback_that_cannot_fit_disconnect_0x95(nursery: trio.Nursery) -> None:
    # A SUBACK has one reason code per filter and nothing to drop: with a
    # 16-byte maximum it fits 11 filters (remaining length 3 + 11).
    broker = make_broker()
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("many", version=5, props=props(maximum_packet_size(16))))
        assert await client.packet() == CONNACK_V5_OK
        filters = b"".join(s(f"f/{i}") + b"\x01" for i in range(11))
        await client.send(frame(0x82, b"\x00\x07\x00" + filters))
        assert await client.packet() == bytes([0x90, 14, 0x00, 0x07, 0x00]) + b"\x01" * 11
        filters = b"".join(s(f"g/{i}") + b"\x01" for i in range(12))
        await client.send(frame(0x82, b"\x00\x08\x00" + filters))
        # 17 bytes would not fit: not carried out, DISCONNECT 0x95 (Packet too large).
        assert await client.packet() == bytes([0xE0, 0x01, 0x95])
        assert await client.eof()

        client = await open_client(nursery, broker)
        await client.send(connect("many", version=5, props=props(maximum_packet_size(16))))
        await client.packet()
        await client.send(frame(0xA2, b"\x00\x09\x00" + b"".join(s(f"g/{i}") for i in range(12))))
        assert await client.packet() == bytes([0xE0, 0x01, 0x95])
        assert await client.eof()
