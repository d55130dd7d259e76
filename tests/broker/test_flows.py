"""Raw-byte flows: resend with DUP, overflow, bad input, forwarding, ACLs, expiry, aliases.

The raw client (tests/broker/raw.py) doubles as the second, independent client
implementation the issue asks for.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from mqttgate.auth import AllowAll, AnonymousAuth, Identity
from mqttgate.broker import Broker
from mqttgate.forward import DONE, ForwardFailed, ForwardMessage, NullForwarder
from tests.broker.raw import RawClient, connect, frame, publish, s, subscribe
from tests.broker.test_wire import open_client
from tests.conftest import make_config, port_of


async def start(nursery: trio.Nursery, broker: Broker) -> int:
    shutdown = trio.Event()
    addresses = await nursery.start(broker.serve, shutdown)
    return port_of(addresses)


def anon(**config: Any) -> Broker:
    return Broker(make_config(**config), AnonymousAuth(), NullForwarder())


async def test_basic_pubsub_raw_client_both_versions(nursery: trio.Nursery) -> None:
    port = await start(nursery, anon())
    with trio.fail_after(10):
        for version in (4, 5):
            v5 = version == 5
            sub = await RawClient.open(port)
            await sub.send(connect(f"s{version}", version=version))
            await sub.packet()
            await sub.send(subscribe(1, "raw/#", 0, v5=v5))
            await sub.packet()
            pub = await RawClient.open(port)
            await pub.send(connect(f"p{version}", version=version))
            await pub.packet()
            await pub.send(publish("raw/t", b"hello", v5=v5))
            body = (s("raw/t") + (b"\x00" if v5 else b"") + b"hello")
            assert await sub.packet() == frame(0x30, body)
            await pub.aclose()
            await sub.aclose()


async def test_unacked_qos1_resent_with_dup_on_resume(nursery: trio.Nursery) -> None:
    port = await start(nursery, anon())
    with trio.fail_after(10):
        sub = await RawClient.open(port)
        await sub.send(connect("dup", version=4, clean=False))
        assert await sub.packet() == bytes([0x20, 0x02, 0x00, 0x00])
        await sub.send(subscribe(1, "d", 1))
        await sub.packet()
        pub = await RawClient.open(port)
        await pub.send(connect("dpub", version=4))
        await pub.packet()
        await pub.send(publish("d", b"x", qos=1, packet_id=3))
        first = await sub.packet()
        assert first == bytes([0x32, 0x06]) + s("d") + bytes([0x00, 0x01]) + b"x"
        await sub.aclose()  # no PUBACK
        again = await RawClient.open(port)
        await again.send(connect("dup", version=4, clean=False))
        assert await again.packet() == bytes([0x20, 0x02, 0x01, 0x00])  # session present
        # v311 [MQTT-4.4.0-1]: resent with DUP (0x08) and the same packet id.
        assert await again.packet() == bytes([0x3A, 0x06]) + s("d") + bytes([0x00, 0x01]) + b"x"


async def test_slow_qos1_subscriber_disconnected_0x97(nursery: trio.Nursery) -> None:
    broker = anon(max_inflight=2, max_queued_messages=3)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        slow = await RawClient.open(port)
        await slow.send(connect("slow", version=5))
        await slow.packet()
        await slow.send(subscribe(1, "f", 1, v5=True))
        await slow.packet()
        pub = await RawClient.open(port)
        await pub.send(connect("fast", version=5))
        await pub.packet()
        for i in range(1, 8):
            await pub.send(publish("f", b"x", qos=1, packet_id=i, v5=True))
            assert await pub.packet() == bytes([0x40, 0x02, 0x00, i])  # the publisher is never slowed
        packets = []
        while (packet := await slow.packet()) is not None:
            packets.append(packet)
        assert packets[-1][0] == 0xE0 and packets[-1][2] == 0x97  # Quota exceeded
        assert broker.stats.outbox_overflows == 1


async def test_slow_qos0_subscriber_drops_and_others_unaffected(nursery: trio.Nursery) -> None:
    broker = anon(max_outbox_bytes=1024 * 1024)
    port = await start(nursery, broker)
    with trio.fail_after(30):
        slow = await RawClient.open(port)
        await slow.send(connect("slow0", version=4))
        await slow.packet()
        await slow.send(subscribe(1, "z", 0))
        await slow.packet()
        fast = await RawClient.open(port)
        await fast.send(connect("fast0", version=4))
        await fast.packet()
        await fast.send(subscribe(1, "z", 0))
        await fast.packet()
        pub = await RawClient.open(port)
        await pub.send(connect("p0", version=4))
        await pub.packet()
        payload = b"y" * 60000
        n = 300  # 18 MB: more than the socket buffers of the non-reading client
        async with trio.open_nursery() as inner:

            async def send_all() -> None:
                for _ in range(n):
                    await pub.send(publish("z", payload))

            inner.start_soon(send_all)
            for _ in range(n):
                packet = await fast.packet()
                assert packet is not None and packet.endswith(payload)
        assert broker.stats.dropped_qos0 > 0
        assert broker.stats.messages_in[0] == n


async def test_bad_input_on_many_connections(nursery: trio.Nursery) -> None:
    broker = anon(max_packet_size=4096)
    port = await start(nursery, broker)
    rng = random.Random(4)
    bad_inputs = [
        bytes([0x36, 0x03, 0x00, 0x01, 0x61]),  # QoS 3
        connect("t", version=5)[:9],  # truncated CONNECT, then close
        bytes([0x30, 0xFF, 0xFF, 0xFF, 0x7F]),  # oversized
        bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),  # 5-byte length
        connect("x", version=5) + bytes([0x30, 0x80, 0x00]),  # non-minimal length after CONNECT
        connect("y", version=4) + bytes([0x82, 0x02, 0x00, 0x01]),  # SUBSCRIBE without filters
    ] + [rng.randbytes(rng.randint(1, 300)) for _ in range(40)]
    with trio.fail_after(30):
        sub = await RawClient.open(port)
        await sub.send(connect("good-sub", version=5))
        await sub.packet()
        await sub.send(subscribe(1, "ok", 1, v5=True))
        await sub.packet()
        pub = await RawClient.open(port)
        await pub.send(connect("good-pub", version=5))
        await pub.packet()

        async def attack(data: bytes) -> None:
            client = await RawClient.open(port)
            try:
                await client.send(data)
                with trio.move_on_after(3):
                    await client.eof()
            except trio.BrokenResourceError:
                pass
            finally:
                await client.aclose()

        async with trio.open_nursery() as attackers:
            for data in bad_inputs:
                attackers.start_soon(attack, data)
            received: list[int] = []
            for i in range(1, 201):
                await pub.send(publish("ok", str(i).encode(), qos=1, packet_id=i, v5=True))
                assert await pub.packet() == bytes([0x40, 0x02]) + i.to_bytes(2, "big")
            while len(received) < 200:
                packet = await sub.packet()
                assert packet is not None
                if packet[0] & 0xF0 == 0x30:
                    pid = packet[6:8]
                    received.append(int(packet[9:]))
                    await sub.send(bytes([0x40, 0x02]) + pid)
        assert received == list(range(1, 201))
    # Every bad connection is gone; the two good ones remain.
    assert broker.stats.connections_current == 2
    assert broker.stats.protocol_errors >= 4


class SlowForwarder:
    """Tickets complete when the test says so, or fail."""

    def __init__(self) -> None:
        self.messages: list[ForwardMessage] = []
        self.release = trio.Event()
        self.fail = False

    async def submit(self, message: ForwardMessage) -> Any:
        if message.qos == 0:
            await trio.sleep_forever()  # the queue stays full
        self.messages.append(message)
        return self

    def try_submit(self, message: ForwardMessage) -> Any:
        if message.qos == 0:
            return None  # the queue is full for QoS 0: submit_nowait decides
        self.messages.append(message)
        return self

    finished = False  # wait() really waits

    def submit_nowait(self, message: ForwardMessage) -> bool:
        self.messages.append(message)
        return False

    async def wait(self) -> None:
        await self.release.wait()
        if self.fail:
            raise ForwardFailed("test")


async def test_acks_wait_for_forward_tickets_in_order(nursery: trio.Nursery) -> None:
    forwarder = SlowForwarder()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("fw", version=5))
        await client.packet()
        await client.send(publish("a", b"1", qos=1, packet_id=1, v5=True) + publish("a", b"2", qos=1, packet_id=2, v5=True))
        await client.send(publish("a", b"0", v5=True))
        await trio.sleep(0.1)  # a QoS 0 message waits QOS0_PATIENCE_S for room, then is dropped
        await trio.testing.wait_all_tasks_blocked()
        assert [m.payload for m in forwarder.messages] == [b"1", b"2", b"0"]
        assert forwarder.messages[0].msg_id != forwarder.messages[1].msg_id
        assert forwarder.messages[2].msg_id is None
        assert broker.stats.forward_dropped == 1
        assert client.buf == b""  # nothing acknowledged yet
        forwarder.release.set()
        assert await client.packet() == bytes([0x40, 0x02, 0x00, 0x01])
        assert await client.packet() == bytes([0x40, 0x02, 0x00, 0x02])


async def test_forward_failure_v5_0x80_v311_disconnect(nursery: trio.Nursery) -> None:
    forwarder = SlowForwarder()
    forwarder.fail = True
    forwarder.release.set()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    with trio.fail_after(5):
        v5 = await open_client(nursery, broker)
        await v5.send(connect("f5", version=5))
        await v5.packet()
        await v5.send(publish("a", b"1", qos=1, packet_id=1, v5=True))
        assert await v5.packet() == bytes([0x40, 0x03, 0x00, 0x01, 0x80])
        v3 = await open_client(nursery, broker)
        await v3.send(connect("f3", version=4))
        await v3.packet()
        await v3.send(publish("a", b"1", qos=1, packet_id=1))
        assert await v3.eof()
        assert v3.buf == b""


def dup(packet: bytes) -> bytes:
    """The same PUBLISH with DUP set (a retransmission)."""
    return bytes([packet[0] | 0x08]) + packet[1:]


async def test_qos2_retransmitted_after_a_failed_forward_is_forwarded_again_v311(nursery: trio.Nursery) -> None:
    """3.1.1 has no negative PUBREC: the broker disconnects so the client
    retransmits. That retransmission must be forwarded again (same
    Nats-Msg-Id) and PUBREC'd only once stored, not acknowledged as already
    received; local subscribers still get the message once (method B)."""
    forwarder = SlowForwarder()
    forwarder.fail = True
    forwarder.release.set()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    with trio.fail_after(5):
        sub = await open_client(nursery, broker)
        await sub.send(connect("q2sub", version=4))
        await sub.packet()
        await sub.send(subscribe(1, "a", 2))
        await sub.packet()
        pub = await open_client(nursery, broker)
        await pub.send(connect("q2", version=4, clean=False))
        await pub.packet()
        await pub.send(publish("a", b"1", qos=2, packet_id=1))
        assert await pub.eof()  # the forward failed: disconnected, no PUBREC
        assert pub.buf == b""
        forwarder.fail = False
        forwarder.release = trio.Event()
        again = await open_client(nursery, broker)
        await again.send(connect("q2", version=4, clean=False))
        assert await again.packet() == bytes([0x20, 0x02, 0x01, 0x00])  # session present
        await again.send(dup(publish("a", b"1", qos=2, packet_id=1)))
        await trio.testing.wait_all_tasks_blocked()
        assert [m.msg_id for m in forwarder.messages] == [forwarder.messages[0].msg_id] * 2
        assert again.buf == b""  # no PUBREC before the message is stored
        forwarder.release.set()
        assert await again.packet() == bytes([0x50, 0x02, 0x00, 0x01])  # PUBREC
        await again.send(bytes([0x62, 0x02, 0x00, 0x01]))  # PUBREL
        assert await again.packet() == bytes([0x70, 0x02, 0x00, 0x01])  # PUBCOMP
        delivered = await sub.packet()
        assert delivered is not None and delivered[0] & 0xF6 == 0x34 and delivered.endswith(b"1")
        await trio.testing.wait_all_tasks_blocked()
        assert sub.buf == b""  # routed once


async def test_qos2_retransmitted_while_its_forward_is_pending_waits_for_it_v5(nursery: trio.Nursery) -> None:
    """The connection ends while a QoS 2 forward is pending (no PUBREC sent);
    the retransmission on the resumed session is PUBREC'd only once stored."""
    forwarder = SlowForwarder()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    expiry = bytes([0x05, 0x11, 0x00, 0x00, 0x01, 0x00])  # Session Expiry 256 s
    with trio.fail_after(5):
        pub = await open_client(nursery, broker)
        await pub.send(connect("q2v5", version=5, clean=False, props=expiry))
        await pub.packet()
        await pub.send(publish("a", b"1", qos=2, packet_id=7, v5=True))
        await trio.testing.wait_all_tasks_blocked()
        await pub.aclose()  # gone before the JetStream ack
        await trio.testing.wait_all_tasks_blocked()
        again = await open_client(nursery, broker)
        await again.send(connect("q2v5", version=5, clean=False, props=expiry))
        connack = await again.packet()
        assert connack is not None and connack[2] == 0x01  # session present
        await again.send(dup(publish("a", b"1", qos=2, packet_id=7, v5=True)))
        await trio.testing.wait_all_tasks_blocked()
        assert again.buf == b""  # no PUBREC before the message is stored
        assert [m.msg_id for m in forwarder.messages] == [forwarder.messages[0].msg_id] * 2
        forwarder.release.set()
        assert await again.packet() == bytes([0x50, 0x02, 0x00, 0x07])


class DenyAuth:
    async def authenticate(self, username: str | None, password: bytes | None, *, client_id: str, peer: str) -> Identity:
        return Identity(device_id="dev1", mqtt_user="u1")

    def acl_for(self, identity: Identity) -> Any:
        class Acl(AllowAll):
            def may_publish(self, topic: str) -> bool:
                return not topic.startswith("deny")

            def may_subscribe(self, topic_filter: str) -> bool:
                return not topic_filter.startswith("deny")

        return Acl()


async def test_acl_denials(nursery: trio.Nursery) -> None:
    broker = Broker(make_config(allow_anonymous=False), DenyAuth(), NullForwarder())
    with trio.fail_after(5):
        v5 = await open_client(nursery, broker)
        await v5.send(connect("a5", version=5))
        await v5.packet()
        await v5.send(frame(0x82, bytes([0, 1, 0]) + s("deny/x") + b"\x01" + s("ok") + b"\x01"))
        assert await v5.packet() == bytes([0x90, 0x05, 0x00, 0x01, 0x00, 0x87, 0x01])
        await v5.send(publish("deny/x", b"1", qos=1, packet_id=2, v5=True))
        assert await v5.packet() == bytes([0x40, 0x03, 0x00, 0x02, 0x87])
        v3 = await open_client(nursery, broker)
        await v3.send(connect("a3", version=4))
        await v3.packet()
        await v3.send(frame(0x82, bytes([0, 1]) + s("deny/x") + b"\x01"))
        assert await v3.packet() == bytes([0x90, 0x03, 0x00, 0x01, 0x80])
        await v3.send(publish("deny/x", b"1", qos=1, packet_id=2))
        assert await v3.packet() == bytes([0x40, 0x02, 0x00, 0x02])  # acknowledged, dropped
        assert broker.stats.publish_denied == 2
        assert broker.kick_device("dev1", broker_reason()) == 2
        assert await v3.eof()


def broker_reason() -> Any:
    from mqttgate.protocol.reasons import ReasonCode

    return ReasonCode.NOT_AUTHORIZED


async def test_topic_alias_resolution(nursery: trio.Nursery) -> None:
    broker = anon()
    with trio.fail_after(5):
        sub = await open_client(nursery, broker)
        await sub.send(connect("as", version=4))
        await sub.packet()
        await sub.send(subscribe(1, "al/#", 0))
        await sub.packet()
        pub = await open_client(nursery, broker)
        await pub.send(connect("ap", version=5))
        await pub.packet()
        alias1 = bytes([0x03, 0x23, 0x00, 0x01])
        await pub.send(publish("al/t", b"1", v5=True, props=alias1) + publish("", b"2", v5=True, props=alias1))
        assert await sub.packet() == frame(0x30, s("al/t") + b"1")
        assert await sub.packet() == frame(0x30, s("al/t") + b"2")


async def test_message_expiry_while_offline(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    broker = anon()
    with trio.fail_after(60):
        sub = await open_client(nursery, broker)
        expiry = bytes([0x05, 0x11, 0x00, 0x00, 0x01, 0x00])  # Session Expiry 256 s
        await sub.send(connect("ex", version=5, clean=False, props=expiry))
        await sub.packet()
        await sub.send(subscribe(1, "e", 1, v5=True))
        await sub.packet()
        await sub.aclose()
        await trio.testing.wait_all_tasks_blocked()
        pub = await open_client(nursery, broker)
        await pub.send(connect("ep", version=5))
        await pub.packet()
        short = bytes([0x05, 0x02, 0x00, 0x00, 0x00, 0x02])  # Message Expiry 2 s
        long = bytes([0x05, 0x02, 0x00, 0x00, 0x00, 0x64])  # 100 s
        await pub.send(publish("e", b"s", qos=1, packet_id=1, v5=True, props=short))
        await pub.send(publish("e", b"l", qos=1, packet_id=2, v5=True, props=long))
        await pub.packet()
        await pub.packet()
        await trio.sleep(10)
        again = await open_client(nursery, broker)
        await again.send(connect("ex", version=5, clean=False, props=expiry))
        await again.packet()
        packet = await again.packet()
        # Only the long one, with the remaining interval 90 s (v5 [MQTT-3.3.2-6]).
        assert packet == frame(0x32, s("e") + bytes([0x00, 0x01, 0x05, 0x02, 0x00, 0x00, 0x00, 0x5A]) + b"l")
        assert broker.stats.messages_expired == 1


async def test_retransmitted_publish_carries_the_expiry_left(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # v5 [MQTT-3.3.2-6]: a PUBLISH resent with DUP on a resumed session states
    # the Message Expiry Interval left then, not the one of its first send. One
    # that expired while in flight is resent anyway ([MQTT-3.3.2-5] only allows
    # deleting before onward delivery started; [MQTT-4.4.0-1]), stating 1 s.
    broker = anon()

    def expiry(seconds: int) -> bytes:
        return bytes([0x05, 0x02]) + seconds.to_bytes(4, "big")  # Message Expiry Interval

    def delivery(pid: int, payload: bytes, seconds: int, *, dup: bool) -> bytes:
        return frame(0x32 | (0x08 if dup else 0), s("e") + pid.to_bytes(2, "big") + expiry(seconds) + payload)

    with trio.fail_after(60):
        session = bytes([0x08, 0x11, 0x00, 0x00, 0x01, 0x00, 0x21, 0x00, 0x01])  # Session Expiry 256 s, Receive Maximum 1
        sub = await open_client(nursery, broker)
        await sub.send(connect("rex", version=5, clean=False, props=session))
        await sub.packet()
        await sub.send(subscribe(1, "e", 1, v5=True))
        await sub.packet()
        pub = await open_client(nursery, broker)
        await pub.send(connect("rep", version=5))
        await pub.packet()
        await pub.send(publish("e", b"a", qos=1, packet_id=1, v5=True, props=expiry(60)))
        await pub.send(publish("e", b"b", qos=1, packet_id=2, v5=True, props=expiry(15)))
        await pub.packet()
        await pub.packet()
        assert await sub.packet() == delivery(1, b"a", 60, dup=False)
        await sub.send(b"\xc0\x00")  # PINGREQ: "b" waits behind the window of 1
        assert await sub.packet() == b"\xd0\x00"
        await sub.aclose()  # "a" not acknowledged
        await trio.sleep(10)

        big = bytes([0x05, 0x11, 0x00, 0x00, 0x01, 0x00])  # Session Expiry 256 s, Receive Maximum 65535
        again = await open_client(nursery, broker)
        await again.send(connect("rex", version=5, clean=False, props=big))
        assert (await again.packet() or b"")[2] == 0x01  # session present
        assert await again.packet() == delivery(1, b"a", 50, dup=True)
        assert await again.packet() == delivery(2, b"b", 5, dup=False)  # queued: counted down too
        await again.aclose()  # neither acknowledged
        await trio.sleep(20)  # "b" expires in flight, "a" has 30 s left

        small = bytes([0x08, 0x11, 0x00, 0x00, 0x01, 0x00, 0x21, 0x00, 0x01])  # Receive Maximum 1
        last = await open_client(nursery, broker)
        await last.send(connect("rex", version=5, clean=False, props=small))
        assert (await last.packet() or b"")[2] == 0x01
        assert await last.packet() == delivery(1, b"a", 30, dup=True)
        await trio.sleep(4)
        await last.send(bytes([0x40, 0x02, 0x00, 0x01]))  # PUBACK 1 releases the held "b"
        assert await last.packet() == delivery(2, b"b", 1, dup=True)
        assert broker.stats.messages_expired == 0


class FullQueueForwarder:
    """A forward queue that is full until ``room`` is set."""

    def __init__(self) -> None:
        self.room = trio.Event()
        self.waits = 0  # submit() calls that had to wait
        self.queued: list[bytes] = []

    async def submit(self, message: ForwardMessage) -> Any:
        self.waits += 1
        await self.room.wait()
        self.queued.append(message.payload)
        return DONE

    def try_submit(self, message: ForwardMessage) -> Any:
        if not self.room.is_set():
            return None
        self.queued.append(message.payload)
        return DONE

    def submit_nowait(self, message: ForwardMessage) -> bool:
        return self.try_submit(message) is not None


@pytest.mark.parametrize("transport", ["tcp", "stream"])
async def test_our_backpressure_does_not_run_out_the_clients_keep_alive(
    nursery: trio.Nursery, transport: str
) -> None:
    """While a full forward queue stops us reading a client, its keep alive
    (1 s here, so 1.5 s) is not counted: what it sent is in our socket
    buffer. Reading resumes, the PUBACK goes out, the connection lives on."""
    forwarder = FullQueueForwarder()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    with trio.fail_after(10):
        if transport == "tcp":
            client = await RawClient.open(await start(nursery, broker))
        else:
            client = await open_client(nursery, broker)
        await client.send(connect("held", version=5, keepalive=1))
        connack = await client.packet() or b""
        assert connack[0] == 0x20 and connack[3] == 0x00  # accepted
        await client.send(publish("a", b"1", qos=1, packet_id=1, v5=True))
        await trio.sleep(2.5)  # well past 1.5 x keep alive, all of it our wait
        assert forwarder.waits == 1 and client.buf == b""
        forwarder.room.set()
        assert await client.packet() == bytes([0x40, 0x02, 0x00, 0x01])
        await client.send(b"\xc0\x00")
        assert await client.packet() == b"\xd0\x00"
    assert broker.stats.keepalive_timeouts == 0


async def test_a_stuck_forward_queue_costs_qos0_one_wait_per_episode(nursery: trio.Nursery) -> None:
    """A QoS 0 message waits for room at most QOS0_PATIENCE_S; after a wait in
    vain the next ones are dropped at once (counted) until the queue takes a
    message again, then the next full queue is waited for again."""
    forwarder = FullQueueForwarder()
    broker = Broker(make_config(), AnonymousAuth(), forwarder)
    with trio.fail_after(10):
        client = await open_client(nursery, broker)
        await client.send(connect("q0", version=5))
        await client.packet()
        await client.send(b"".join(publish("a", b"%d" % n, v5=True) for n in range(20)) + b"\xc0\x00")
        assert await client.packet() == b"\xd0\x00"
        assert forwarder.waits == 1
        assert broker.stats.forward_dropped == 20
        forwarder.room.set()
        await client.send(publish("a", b"ok", v5=True) + b"\xc0\x00")
        assert await client.packet() == b"\xd0\x00"
        assert forwarder.queued == [b"ok"]
        forwarder.room = trio.Event()  # full again: a new episode, one wait
        await client.send(publish("a", b"x", v5=True) + b"\xc0\x00")
        assert await client.packet() == b"\xd0\x00"
        assert forwarder.waits == 2 and broker.stats.forward_dropped == 21


async def test_a_denied_publish_is_acknowledged_in_order_behind_pending_forwards(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.6.0-2], [MQTT-4.6.0-3]: PUBACKs in the order of the
    PUBLISHes, also when the second one is refused by the ACL (0x87) while the
    first still waits for JetStream."""
    forwarder = SlowForwarder()
    broker = Broker(make_config(allow_anonymous=False), DenyAuth(), forwarder)
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("order", version=5))
        await client.packet()
        await client.send(publish("ok", b"1", qos=1, packet_id=1, v5=True)
                          + publish("deny/x", b"2", qos=1, packet_id=2, v5=True))  # fmt: skip
        await trio.testing.wait_all_tasks_blocked()
        assert client.buf == b""  # the refusal waits behind the pending forward
        forwarder.release.set()
        assert await client.packet() == bytes([0x40, 0x02, 0x00, 0x01])
        assert await client.packet() == bytes([0x40, 0x03, 0x00, 0x02, 0x87])
