"""Golden-byte exchanges with one broker connection over trio memory streams.

Bytes are written by hand from the specs (not produced by mqttgate's codec),
so a bug made symmetrically on both sides cannot pass.
"""

from __future__ import annotations

import trio
import trio.testing

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from tests.broker.raw import RawClient, connect, frame, publish, s, subscribe
from tests.conftest import make_config

CONNACK_V311_OK = bytes([0x20, 0x02, 0x00, 0x00])  # CONNACK, len 2, session present 0, rc 0
CONNACK_V5_OK = bytes([
    0x20, 0x0E,              # CONNACK, remaining length 14
    0x00, 0x00,              # session present 0, reason Success
    0x0B,                    # properties length 11
    0x21, 0x00, 0x40,        # Receive Maximum 64
    0x22, 0x00, 0x20,        # Topic Alias Maximum 32
    0x27, 0x00, 0x10, 0x00, 0x00,  # Maximum Packet Size 1 MiB
])  # fmt: skip


async def open_client(nursery: trio.Nursery, broker: Broker | None = None, **config: object) -> RawClient:
    broker = broker or Broker(make_config(**config), AnonymousAuth(), NullForwarder())
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(broker.serve_stream, server_side, "memory")
    return RawClient(client_side)


async def test_connect_v311_golden(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("zen", version=4))
        assert await client.packet() == CONNACK_V311_OK
        await client.send(b"\xc0\x00")  # PINGREQ
        assert await client.packet() == b"\xd0\x00"  # PINGRESP


async def test_connect_v5_golden(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("zen", version=5))
        assert await client.packet() == CONNACK_V5_OK


async def test_v311_empty_id_without_clean_session_rc2(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("", version=4, clean=False))
        # v311 [MQTT-3.1.3-9]: CONNACK return code 0x02, then close.
        assert await client.packet() == bytes([0x20, 0x02, 0x00, 0x02])
        assert await client.eof()


async def test_unsupported_level_rc1(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(frame(0x10, s("MQTT") + bytes([6, 2, 0, 60]) + s("x")))
        assert await client.packet() == bytes([0x20, 0x02, 0x00, 0x01])
        assert await client.eof()


async def test_malformed_after_connack_v5_disconnect_0x81(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("m", version=5))
        await client.packet()
        await client.send(bytes([0x36, 0x03, 0x00, 0x01, 0x61]))  # PUBLISH with QoS 3: malformed
        assert await client.packet() == bytes([0xE0, 0x01, 0x81])  # DISCONNECT Malformed Packet
        assert await client.eof()


async def test_malformed_v311_just_closes(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("m", version=4))
        await client.packet()
        await client.send(bytes([0x36, 0x03, 0x00, 0x01, 0x61]))
        assert await client.eof()
        assert client.buf == b""


async def test_packet_before_connect_closes(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(b"\xc0\x00")
        assert await client.eof()


async def test_oversized_packet_v5_0x95(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery, max_packet_size=128)
        await client.send(connect("big", version=5))
        await client.packet()
        await client.send(bytes([0x30, 0xC8, 0x01]))  # PUBLISH announcing 200 bytes
        assert await client.packet() == bytes([0xE0, 0x01, 0x95])
        assert await client.eof()


async def test_keepalive_expiry_v5(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        client = await open_client(nursery)
        await client.send(connect("k", version=5, keepalive=2))
        await client.packet()
        start = trio.current_time()
        packet = await client.packet()
        assert packet is not None and packet[0] == 0xE0 and packet[2] == 0x8D  # Keep Alive timeout
        # v5 [MQTT-3.1.2-22]: one and a half times the keep alive.
        assert 3.0 <= trio.current_time() - start < 3.5
        assert await client.eof()


async def test_keepalive_expiry_v311(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        client = await open_client(nursery)
        await client.send(connect("k", version=4, keepalive=4))
        await client.packet()
        start = trio.current_time()
        assert await client.eof()
        assert 6.0 <= trio.current_time() - start < 6.5


async def test_connect_timeout(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        client = await open_client(nursery, connect_timeout=3.0)
        start = trio.current_time()
        assert await client.eof()
        assert 3.0 <= trio.current_time() - start < 3.5


async def test_subscribe_publish_qos1_exchange_v311(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("loop", version=4))
        await client.packet()
        await client.send(subscribe(1, "a/b", 1))
        assert await client.packet() == bytes([0x90, 0x03, 0x00, 0x01, 0x01])  # SUBACK granted QoS 1
        await client.send(publish("a/b", b"hi", qos=1, packet_id=7))
        got = {await client.packet(), await client.packet()}
        assert got == {
            bytes([0x40, 0x02, 0x00, 0x07]),  # PUBACK 7
            bytes([0x32, 0x09, 0x00, 0x03]) + b"a/b" + bytes([0x00, 0x01]) + b"hi",  # PUBLISH QoS 1 id 1
        }


async def test_qos2_inbound_flow_and_unknown_pubrel_v5(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("q2", version=5))
        await client.packet()
        await client.send(publish("x", b"1", qos=2, packet_id=9, v5=True))
        assert await client.packet() == bytes([0x50, 0x02, 0x00, 0x09])  # PUBREC 9
        await client.send(bytes([0x62, 0x02, 0x00, 0x09]))  # PUBREL 9
        assert await client.packet() == bytes([0x70, 0x02, 0x00, 0x09])  # PUBCOMP 9
        await client.send(bytes([0x62, 0x02, 0x00, 0x0A]))  # PUBREL for an unknown id
        assert await client.packet() == bytes([0x70, 0x03, 0x00, 0x0A, 0x92])  # PUBCOMP 0x92


async def test_receive_maximum_exceeded_0x93(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery, receive_maximum=2)
        await client.send(connect("rm", version=5))
        await client.packet()
        # QoS 2 messages stay in flight until PUBREL: the third exceeds 2.
        await client.send(b"".join(publish("x", b"", qos=2, packet_id=i, v5=True) for i in (1, 2, 3)))
        assert await client.packet() == bytes([0x50, 0x02, 0x00, 0x01])
        assert await client.packet() == bytes([0x50, 0x02, 0x00, 0x02])
        assert await client.packet() == bytes([0xE0, 0x01, 0x93])
        assert await client.eof()


async def test_topic_alias_invalid_0x94(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery, topic_alias_maximum=2)
        await client.send(connect("ta", version=5))
        await client.packet()
        await client.send(publish("x", b"", v5=True, props=bytes([0x03, 0x23, 0x00, 0x03])))  # alias 3 > 2
        assert await client.packet() == bytes([0xE0, 0x01, 0x94])
        assert await client.eof()


async def test_second_connect_is_protocol_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        client = await open_client(nursery)
        await client.send(connect("two", version=5))
        await client.packet()
        await client.send(connect("two", version=5))
        assert await client.packet() == bytes([0xE0, 0x01, 0x82])
        assert await client.eof()
