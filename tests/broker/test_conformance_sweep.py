"""A sweep of the server-side MUST / MUST NOT statements of MQTT 5.0 and 3.1.1.

Each test names the clauses it checks (v5 ids unless marked v311; the two
specs number differently). Statements already covered elsewhere are not
repeated here: the codec's malformed/protocol-error cases (tests/golden.py),
topic matching (tests/protocol/test_topics.py), Maximum Packet Size and
resend windows (test_client_limits.py, test_peer_limits.py), keep alive
x 1.5, Receive Maximum 0x93, PUBREL 0x92, second v5 CONNECT (test_wire.py),
topic aliases towards clients, response topic, will topic limits
(test_conformance.py), retain handling, No Local, shared groups, will delay
with reconnect, takeover (test_paho.py).

Bytes are written by hand from the specs (tests/broker/raw.py), not by
mqttgate's codec, so a bug made on both sides cannot pass.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from mqttgate.protocol.codec import Decoder
from tests.broker.raw import RawClient, connect, frame, s, subscribe
from tests.broker.test_flows import SlowForwarder
from tests.conftest import make_config

PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


def make_broker(forwarder: Any = None, **config: object) -> Broker:
    return Broker(make_config(**config), AnonymousAuth(), forwarder or NullForwarder())


async def start_timers(nursery: trio.Nursery, broker: Broker) -> None:
    """Run ``serve`` too: its housekeeping task fires session expiry and will timers."""
    await nursery.start(broker.serve, trio.Event())


async def open_client(nursery: trio.Nursery, broker: Broker) -> RawClient:
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(broker.serve_stream, server_side, "memory")
    return RawClient(client_side)


async def connected(
    nursery: trio.Nursery,
    broker: Broker,
    client_id: str,
    *,
    version: int = 5,
    clean: bool = True,
    props: bytes = b"\x00",
    keepalive: int = 60,
) -> tuple[RawClient, bytes]:
    """A client past CONNECT, and its CONNACK (which must accept it)."""
    client = await open_client(nursery, broker)
    await client.send(
        connect(client_id, version=version, clean=clean, keepalive=keepalive, props=props)
    )
    connack = await client.packet()
    assert connack is not None and connack[0] == 0x20 and connack[3] == 0x00, connack
    return client, connack


def props(*items: bytes) -> bytes:
    """A property block shorter than 128 bytes: its length, then the properties."""
    body = b"".join(items)
    assert len(body) < 128
    return bytes([len(body)]) + body


def session_expiry(seconds: int) -> bytes:
    return b"\x11" + seconds.to_bytes(4, "big")  # Session Expiry Interval


def will_delay(seconds: int) -> bytes:
    return b"\x18" + seconds.to_bytes(4, "big")  # Will Delay Interval


def topic_alias(alias: int) -> bytes:
    return b"\x23" + alias.to_bytes(2, "big")


def user_property(key: str, value: str) -> bytes:
    return b"\x26" + s(key) + s(value)


def pub(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    pid: int = 0,
    v5: bool = False,
    retain: bool = False,
    dup: bool = False,
    props_: bytes = b"\x00",
) -> bytes:
    """A PUBLISH (client to server, or the exact bytes expected from the server)."""
    body = s(topic) + (pid.to_bytes(2, "big") if qos else b"") + (props_ if v5 else b"") + payload
    return frame(0x30 | (0x08 if dup else 0) | (qos << 1) | int(retain), body)


def sub_options(qos: int, *, no_local: bool = False, rap: bool = False, handling: int = 0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (handling << 4)


def unsubscribe(pid: int, *filters: str, v5: bool) -> bytes:
    return frame(
        0xA2, pid.to_bytes(2, "big") + (b"\x00" if v5 else b"") + b"".join(s(f) for f in filters)
    )


def ack(kind: int, pid: int, reason: int | None = None) -> bytes:
    """PUBACK 0x40, PUBREC 0x50, PUBREL 0x62, PUBCOMP 0x70 with an optional reason code."""
    return frame(kind, pid.to_bytes(2, "big") + (b"" if reason is None else bytes([reason])))


def will_connect(
    client_id: str,
    topic: str,
    payload: bytes,
    *,
    version: int,
    qos: int = 0,
    retain: bool = False,
    clean: bool = True,
    props_: bytes = b"\x00",
    will_props: bytes = b"\x00",
) -> bytes:
    # Connect Flags: bit 1 Clean Start, bit 2 Will Flag, bits 3-4 Will QoS, bit 5 Will Retain.
    flags = (0x02 if clean else 0) | 0x04 | (qos << 3) | (0x20 if retain else 0)
    body = s("MQTT") + bytes([version, flags]) + b"\x00\x3c" + (props_ if version == 5 else b"")
    body += s(client_id) + (will_props if version == 5 else b"")
    body += s(topic) + len(payload).to_bytes(2, "big") + payload
    return frame(0x10, body)


def connack_properties(connack: bytes) -> dict[int, Any]:
    """The properties of a short v5 CONNACK, parsed by hand (ids from v5 section 3.2.2.3)."""
    assert connack[1] < 128 and connack[4] < 128
    body = connack[5 : 5 + connack[4]]
    found: dict[int, Any] = {}
    i = 0
    while i < len(body):
        pid = body[i]
        i += 1
        if pid in (0x13, 0x21, 0x22):  # Server Keep Alive, Receive Maximum, Topic Alias Maximum
            found[pid] = int.from_bytes(body[i : i + 2], "big")
            i += 2
        elif pid in (0x11, 0x27):  # Session Expiry Interval, Maximum Packet Size
            found[pid] = int.from_bytes(body[i : i + 4], "big")
            i += 4
        elif pid in (
            0x12,
            0x1A,
            0x1F,
        ):  # Assigned Client Identifier, Response Information, Reason String
            n = int.from_bytes(body[i : i + 2], "big")
            found[pid] = body[i + 2 : i + 2 + n].decode()
            i += 2 + n
        else:
            raise AssertionError(f"unexpected CONNACK property 0x{pid:02X}")
    return found


async def ping(client: RawClient) -> None:
    """A PINGREQ round trip: everything routed before it has been written."""
    await client.send(PINGREQ)
    assert await client.packet() == PINGRESP


async def nothing_pending(client: RawClient) -> None:
    """Nothing was delivered to ``client``: its next packet is our PINGRESP."""
    await client.send(PINGREQ)
    packet = await client.packet()
    assert packet == PINGRESP, packet


async def gone(broker: Broker, client_id: str) -> None:
    """Until the broker has closed every connection of ``client_id``."""
    while any(c.client_id == client_id for c in broker._conns.values()):  # noqa: ASYNC110
        await trio.sleep(0.01)


# ------------------------------------------------------------------ CONNECT / CONNACK


async def test_second_connect_closes_v311(nursery: trio.Nursery) -> None:
    """v311 [MQTT-3.1.0-2]: a second CONNECT is a protocol violation: close, no reply."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "twice", version=4)
        await client.send(connect("twice", version=4))
        assert await client.eof()
        assert client.buf == b""


async def test_connect_reserved_flag_is_malformed(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-3], v311 [MQTT-3.1.2-3]: the reserved Connect Flag must be 0.

    v5 gets CONNACK 0x81 (Malformed Packet) and the close; 3.1.1 has no return
    code for it, so the connection is closed without CONNACK (v311 [MQTT-3.2.2-6]).
    """
    broker = make_broker()
    with trio.fail_after(5):
        for version, expected in ((5, bytes([0x20, 0x03, 0x00, 0x81, 0x00])), (4, None)):
            client = await open_client(nursery, broker)
            body = (
                s("MQTT")
                + bytes([version, 0x03])
                + b"\x00\x3c"
                + (b"\x00" if version == 5 else b"")
            )
            await client.send(frame(0x10, body + s("rsv")))
            assert await client.packet() == expected
            assert await client.eof()


async def test_refused_connect_input_is_not_processed(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.4-6], v311 [MQTT-3.1.4-5]: nothing after a refused CONNECT is processed.

    Also v311 [MQTT-3.1.3-8] (empty client id with Clean Session 0: return code
    0x02) and v311 [MQTT-3.2.2-4]/[MQTT-3.2.2-5] (Session Present 0, then close).
    """
    broker = make_broker()
    with trio.fail_after(5):
        refused = await open_client(nursery, broker)
        await refused.send(connect("", version=4, clean=False) + pub("rj/t", b"x", retain=True))
        assert await refused.packet() == bytes([0x20, 0x02, 0x00, 0x02])
        assert await refused.eof()
        watcher, _ = await connected(nursery, broker, "rj-watch", version=4)
        await watcher.send(subscribe(1, "rj/#", 0))
        assert await watcher.packet() == bytes([0x90, 0x03, 0x00, 0x01, 0x00])
        await nothing_pending(watcher)  # the retained PUBLISH was never processed


async def test_client_identifiers(nursery: trio.Nursery) -> None:
    """Client identifier rules the server must follow.

    * v5 [MQTT-3.1.3-5], v311 [MQTT-3.1.3-5]: 1-23 bytes of [0-9a-zA-Z] are allowed;
    * v5 [MQTT-3.1.3-6], [MQTT-3.1.3-7], [MQTT-3.2.2-16]: an empty id gets a
      unique Assigned Client Identifier (also with Clean Start 0 in v5);
    * v311 [MQTT-3.1.3-6]: an empty id with Clean Session 1 is accepted.
    """
    broker = make_broker()
    with trio.fail_after(5):
        for version in (4, 5):
            await connected(nursery, broker, f"0123456789abcdefghijKL{version}", version=version)
        ids = set()
        for clean in (True, False):
            _, connack = await connected(nursery, broker, "", clean=clean)
            assigned = connack_properties(connack).get(0x12)
            assert assigned and assigned not in ids
            ids.add(assigned)
        _, connack = await connected(nursery, broker, "", version=4)
        assert connack == bytes([0x20, 0x02, 0x00, 0x00])


async def test_session_present_and_clean_session_v311(nursery: trio.Nursery) -> None:
    """v311 [MQTT-3.1.2-4], [MQTT-3.1.2-6], [MQTT-3.2.2-1], [MQTT-3.2.2-2], [MQTT-3.2.2-3].

    Clean Session 0 resumes the stored session (its subscriptions) with Session
    Present 1; Clean Session 1 discards it, gets Session Present 0, and its
    state is not reused by a later Clean Session 0 connection.
    """
    broker = make_broker()
    with trio.fail_after(5):
        publisher, _ = await connected(nursery, broker, "cs-pub", version=4)
        first, connack = await connected(nursery, broker, "cs", version=4, clean=False)
        assert connack == bytes([0x20, 0x02, 0x00, 0x00])  # no session yet: present 0
        await first.send(subscribe(1, "cs/t", 1))
        await first.packet()
        await first.aclose()
        await gone(broker, "cs")
        resumed, connack = await connected(nursery, broker, "cs", version=4, clean=False)
        assert connack == bytes([0x20, 0x02, 0x01, 0x00])  # present 1
        await publisher.send(pub("cs/t", b"1"))
        assert await resumed.packet() == pub("cs/t", b"1")  # the subscription survived
        await resumed.aclose()
        await gone(broker, "cs")
        clean, connack = await connected(nursery, broker, "cs", version=4, clean=True)
        assert connack == bytes([0x20, 0x02, 0x00, 0x00])
        await clean.send(subscribe(2, "cs/clean", 0))
        await clean.packet()
        await clean.aclose()
        await gone(broker, "cs")
        after, connack = await connected(nursery, broker, "cs", version=4, clean=False)
        assert connack == bytes(
            [0x20, 0x02, 0x00, 0x00]
        )  # the clean session ended with its connection
        await publisher.send(pub("cs/t", b"2") + pub("cs/clean", b"3"))
        await ping(publisher)
        await nothing_pending(after)


async def test_session_expiry_v5(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.1.2-23], [MQTT-3.2.2-2], [MQTT-3.2.2-3].

    The session outlives the connection only with a Session Expiry Interval
    above 0 (absent means 0); Clean Start 1 discards a stored session and gets
    Session Present 0.
    """
    broker = make_broker()
    with trio.fail_after(5):
        publisher, _ = await connected(nursery, broker, "se-pub")
        # No Session Expiry Interval: the session ends with the connection.
        first, connack = await connected(nursery, broker, "se", clean=False)
        assert connack[2] == 0x00
        await first.send(subscribe(1, "se/t", 0, v5=True))
        await first.packet()
        await first.aclose()
        await gone(broker, "se")
        again, connack = await connected(
            nursery, broker, "se", clean=False, props=props(session_expiry(100))
        )
        assert connack[2] == 0x00
        await publisher.send(pub("se/t", b"1", v5=True))
        await ping(publisher)
        await nothing_pending(again)
        await again.send(subscribe(2, "se/t", 0, v5=True))
        await again.packet()
        await again.aclose()
        await gone(broker, "se")
        resumed, connack = await connected(
            nursery, broker, "se", clean=False, props=props(session_expiry(100))
        )
        assert connack[2] == 0x01  # Session Present
        await resumed.aclose()
        await gone(broker, "se")
        # Clean Start 1 discards it although it has not expired.
        fresh, connack = await connected(
            nursery, broker, "se", clean=True, props=props(session_expiry(100))
        )
        assert connack[2] == 0x00
        await publisher.send(pub("se/t", b"2", v5=True))
        await ping(publisher)
        await nothing_pending(fresh)


async def test_session_discarded_when_its_expiry_passes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """v5 [MQTT-4.1.0-2]: the session is discarded once the connection is closed
    and the Session Expiry Interval has passed (and kept until then)."""
    broker = make_broker()
    await start_timers(nursery, broker)
    with trio.fail_after(60):
        expiry = props(session_expiry(5))
        client, _ = await connected(nursery, broker, "sx", clean=False, props=expiry)
        await client.aclose()
        await gone(broker, "sx")
        await trio.sleep(3)
        client, connack = await connected(nursery, broker, "sx", clean=False, props=expiry)
        assert connack[2] == 0x01
        await client.aclose()
        await gone(broker, "sx")
        await trio.sleep(7)
        _, connack = await connected(nursery, broker, "sx", clean=False, props=expiry)
        assert connack[2] == 0x00


async def test_disconnect_session_expiry(nursery: trio.Nursery) -> None:
    """v5 section 3.14.2.2.2: a DISCONNECT may not set a Session Expiry when the
    CONNECT had 0 (Protocol Error, 0x82); a DISCONNECT setting 0 ends the session
    with the connection ([MQTT-3.1.2-23])."""
    broker = make_broker()
    with trio.fail_after(5):
        zero, _ = await connected(nursery, broker, "dz")
        await zero.send(frame(0xE0, b"\x00" + props(session_expiry(10))))
        assert await zero.packet() == bytes([0xE0, 0x01, 0x82])
        assert await zero.eof()
        ends, _ = await connected(
            nursery, broker, "dn", clean=False, props=props(session_expiry(100))
        )
        await ends.send(frame(0xE0, b"\x00" + props(session_expiry(0))))
        assert await ends.eof()
        await gone(broker, "dn")
        _, connack = await connected(
            nursery, broker, "dn", clean=False, props=props(session_expiry(100))
        )
        assert connack[2] == 0x00


async def test_request_problem_and_response_information_zero(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-28]: no Response Information; [MQTT-3.1.2-29]: with Request
    Problem Information 0, no Reason String or User Property outside PUBLISH,
    CONNACK and DISCONNECT (here: a SUBACK with a failure code)."""
    broker = make_broker(max_topic_levels=2)
    with trio.fail_after(5):
        client, connack = await connected(
            nursery,
            broker,
            "rpi",
            props=props(b"\x17\x00", b"\x19\x00"),  # Request Problem / Response Information 0
        )
        assert set(connack_properties(connack)) == {0x21, 0x22, 0x27}  # no 0x1A, no 0x1F
        await client.send(subscribe(1, "a/b/c", 0, v5=True))
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x8F])


# ------------------------------------------------------------------ keep alive


async def test_keep_alive_zero_and_server_keep_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Keep alive in both versions.

    * v311 section 3.1.2.10 ([MQTT-3.1.2-24] applies to a non-zero keep alive
      only): keep alive 0 means the server never times the client out;
    * v5 [MQTT-3.2.2-21]/[MQTT-3.1.2-22]: a Server Keep Alive replaces the
      client's value, and the server enforces it (x 1.5);
    * v5 [MQTT-3.2.2-22]: without Server Keep Alive the client's value is used.
    """
    broker = make_broker(max_keepalive=10)
    await start_timers(nursery, broker)
    with trio.fail_after(100_000):
        idle, _ = await connected(nursery, broker, "ka0", version=4, keepalive=0)
        await trio.sleep(5_000)
        await ping(idle)
        for asked in (0, 100):
            client, connack = await connected(nursery, broker, f"ka{asked}", keepalive=asked)
            assert connack_properties(connack)[0x13] == 10
            began = trio.current_time()
            packet = await client.packet()
            assert (
                packet is not None and packet[0] == 0xE0 and packet[2] == 0x8D
            )  # Keep Alive timeout
            assert 15 <= trio.current_time() - began < 16
        client, connack = await connected(nursery, broker, "ka4", keepalive=4)
        assert 0x13 not in connack_properties(connack)
        began = trio.current_time()
        packet = await client.packet()
        assert packet is not None and packet[0] == 0xE0 and packet[2] == 0x8D
        assert 6 <= trio.current_time() - began < 7


# ------------------------------------------------------------------ will


async def test_will_retain_flag(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-14]/[MQTT-3.1.2-15], v311 [MQTT-3.1.2-16]/[MQTT-3.1.2-17]:
    Will Retain 0 publishes the Will as a non-retained message, 1 as a retained
    one. Live subscribers get RETAIN 0 (v5 [MQTT-3.3.1-12], v311 [MQTT-3.3.1-9]),
    at the Will QoS ([MQTT-3.8.4-8])."""
    broker = make_broker()
    with trio.fail_after(5):
        for version in (4, 5):
            v5 = version == 5
            live, _ = await connected(nursery, broker, f"wl{version}", version=version)
            await live.send(subscribe(1, f"wr{version}/#", 1, v5=v5))
            await live.packet()
            for name, retain in (("r", True), ("n", False)):
                dying = await open_client(nursery, broker)
                await dying.send(
                    will_connect(
                        f"w{name}{version}",
                        f"wr{version}/{name}",
                        name.encode(),
                        version=version,
                        qos=1,
                        retain=retain,
                    )
                )
                await dying.packet()
                await dying.aclose()  # abnormal close
                packet = await live.packet()
                assert packet is not None and packet[0] == 0x32  # QoS 1, RETAIN 0, DUP 0
                assert packet.endswith(name.encode())
                at = 4 + len(f"wr{version}/{name}")  # fixed header, topic length, topic
                await live.send(ack(0x40, int.from_bytes(packet[at : at + 2], "big")))
            late, _ = await connected(nursery, broker, f"wlate{version}", version=version)
            await late.send(subscribe(1, f"wr{version}/#", 1, v5=v5))
            await late.packet()
            retained = await late.packet()
            assert retained == pub(f"wr{version}/r", b"r", qos=1, pid=1, v5=v5, retain=True)
            await nothing_pending(late)


async def test_will_properties_pass_through(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.3-10]: the Will's User Properties keep their order; the
    Will's Content Type reaches subscribers unaltered ([MQTT-3.3.2-20]); the
    Will Delay Interval is not a PUBLISH property and is not sent."""
    broker = make_broker()
    with trio.fail_after(5):
        live, _ = await connected(nursery, broker, "wp-live")
        await live.send(subscribe(1, "wp/t", 0, v5=True))
        await live.packet()
        dying = await open_client(nursery, broker)
        will_props = props(
            will_delay(0),
            b"\x03" + s("text/plain"),
            user_property("k", "2"),
            user_property("k", "1"),
        )
        await dying.send(will_connect("wp", "wp/t", b"bye", version=5, will_props=will_props))
        await dying.packet()
        await dying.aclose()
        packet = await live.packet()
        assert packet is not None and packet.endswith(b"bye")
        header = packet[2 + 2 + len("wp/t") :]
        properties = header[1 : 1 + header[0]]
        assert b"\x03" + s("text/plain") in properties
        assert properties.index(user_property("k", "2")) < properties.index(user_property("k", "1"))
        assert b"\x18" not in properties  # no Will Delay Interval


async def test_will_at_session_end_before_its_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """v5 [MQTT-3.1.2-8]: the Will is published when the Will Delay Interval has
    passed *or the session ends*, whichever is first: with Session Expiry 5 and
    Will Delay 30 after 5 s; with no Session Expiry at once."""
    broker = make_broker()
    await start_timers(nursery, broker)
    with trio.fail_after(100):
        live, _ = await connected(nursery, broker, "wd-live")
        await live.send(subscribe(1, "wd/#", 0, v5=True))
        await live.packet()
        for expiry, lag in ((5, 5.0), (0, 0.0)):
            dying = await open_client(nursery, broker)
            await dying.send(
                will_connect(
                    f"wd{expiry}",
                    f"wd/{expiry}",
                    b"w",
                    version=5,
                    clean=False,
                    props_=props(session_expiry(expiry)),
                    will_props=props(will_delay(30)),
                )
            )
            await dying.packet()
            began = trio.current_time()
            await dying.aclose()
            assert await live.packet() == pub(f"wd/{expiry}", b"w", v5=True)
            assert lag <= trio.current_time() - began < lag + 1.5


async def test_will_belongs_to_its_connection(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-10], v311 [MQTT-3.1.2-10]: the Will is removed once
    published; v5 [MQTT-3.1.2-12] / v311 [MQTT-3.1.2-12]: no Will Flag, no Will
    (also on a session resumed from a connection that had one)."""
    broker = make_broker()
    with trio.fail_after(5):
        live, _ = await connected(nursery, broker, "wb-live", version=4)
        await live.send(subscribe(1, "wb/#", 0))
        await live.packet()
        first = await open_client(nursery, broker)
        await first.send(will_connect("wb", "wb/t", b"w", version=4, clean=False))
        await first.packet()
        await first.aclose()
        assert await live.packet() == pub("wb/t", b"w")
        await gone(broker, "wb")
        second, connack = await connected(nursery, broker, "wb", version=4, clean=False)
        assert connack[2] == 0x01
        await second.aclose()
        await gone(broker, "wb")
        await nothing_pending(live)


# ------------------------------------------------------------------ PUBLISH


async def test_dup_flag_is_not_propagated(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.3.1-3], v311 [MQTT-3.3.1-3]: the DUP flag of an outgoing PUBLISH
    depends only on whether *it* is a retransmission."""
    broker = make_broker()
    with trio.fail_after(5):
        for version in (4, 5):
            v5 = version == 5
            receiver, _ = await connected(nursery, broker, f"dup-r{version}", version=version)
            await receiver.send(subscribe(1, f"dup{version}", 2, v5=v5))
            await receiver.packet()
            sender, _ = await connected(nursery, broker, f"dup-s{version}", version=version)
            await sender.send(pub(f"dup{version}", b"1", qos=1, pid=3, v5=v5, dup=True))
            assert await sender.packet() == ack(0x40, 3)
            assert await receiver.packet() == pub(f"dup{version}", b"1", qos=1, pid=1, v5=v5)
            await sender.send(pub(f"dup{version}", b"2", qos=2, pid=4, v5=v5, dup=True))
            assert await sender.packet() == ack(0x50, 4)
            assert await receiver.packet() == pub(f"dup{version}", b"2", qos=2, pid=2, v5=v5)


async def test_retained_messages_v311(nursery: trio.Nursery) -> None:
    """Retained messages, 3.1.1 numbering (v5: [MQTT-3.3.1-5] .. [MQTT-3.3.1-8]).

    v311 [MQTT-3.3.1-5] stored with its QoS; [MQTT-3.3.1-6]/[MQTT-3.3.1-8] sent to
    new subscriptions with RETAIN 1; [MQTT-3.3.1-7] a QoS 0 retained message
    replaces it; [MQTT-3.3.1-9] live deliveries have RETAIN 0; [MQTT-3.3.1-10]/
    [MQTT-3.3.1-11] an empty retained message is delivered as usual, deletes,
    and is not stored; [MQTT-3.3.1-12] RETAIN 0 neither stores nor replaces;
    [MQTT-3.1.2-7] retained messages outlive their publisher's session.
    """
    broker = make_broker()
    with trio.fail_after(5):
        publisher, _ = await connected(nursery, broker, "rt-pub", version=4)
        await publisher.send(
            pub("rt/a", b"1", qos=1, pid=1, retain=True) + pub("rt/a", b"2", qos=1, pid=2)
        )
        await publisher.packet()
        await publisher.packet()
        await publisher.aclose()
        await gone(broker, "rt-pub")

        live, _ = await connected(nursery, broker, "rt-live", version=4)
        await live.send(subscribe(1, "rt/#", 1))
        await live.packet()
        assert await live.packet() == pub("rt/a", b"1", qos=1, pid=1, retain=True)
        await live.send(ack(0x40, 1))

        publisher, _ = await connected(nursery, broker, "rt-pub", version=4)
        await publisher.send(pub("rt/a", b"3", retain=True))
        assert await live.packet() == pub("rt/a", b"3")  # RETAIN 0 on a live delivery
        late, _ = await connected(nursery, broker, "rt-late", version=4)
        await late.send(subscribe(1, "rt/#", 1))
        await late.packet()
        assert await late.packet() == pub("rt/a", b"3", retain=True)  # QoS 0 replaced QoS 1

        await publisher.send(pub("rt/a", b"", qos=1, pid=3, retain=True))
        assert await publisher.packet() == ack(0x40, 3)
        assert await live.packet() == pub("rt/a", b"", qos=1, pid=2)  # delivered "as normal"
        last, _ = await connected(nursery, broker, "rt-last", version=4)
        await last.send(subscribe(1, "rt/#", 1))
        await last.packet()
        await nothing_pending(last)
        assert broker.stats.retained_count == 0


async def test_retained_message_qos_and_retain_handling_v5(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.8.4-8]: a retained message goes out at min(its QoS, granted QoS);
    [MQTT-3.3.1-9] Retain Handling 0 sends, [MQTT-3.3.1-10] 1 sends only for a
    new subscription, [MQTT-3.3.1-11] 2 never; [MQTT-3.8.4-3]/[MQTT-3.8.4-4] a
    repeated filter replaces the subscription (one delivery) and, with Retain
    Handling 0, re-sends the retained messages."""
    broker = make_broker()
    with trio.fail_after(5):
        publisher, _ = await connected(nursery, broker, "rh-pub")
        await publisher.send(pub("rh/x", b"r", qos=2, pid=1, v5=True, retain=True))
        assert await publisher.packet() == ack(0x50, 1)
        await publisher.send(ack(0x62, 1))
        assert await publisher.packet() == ack(0x70, 1)
        client, _ = await connected(nursery, broker, "rh")
        await client.send(subscribe(1, "rh/x", sub_options(1, handling=1), v5=True))
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x01])
        assert await client.packet() == pub("rh/x", b"r", qos=1, pid=1, v5=True, retain=True)
        await client.send(ack(0x40, 1))
        await client.send(
            subscribe(2, "rh/x", sub_options(1, handling=1), v5=True)
        )  # exists: not sent
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x02, 0x00, 0x01])
        await nothing_pending(client)
        await client.send(
            subscribe(3, "rh/x", sub_options(0, handling=0), v5=True)
        )  # replaced, re-sent at QoS 0
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x03, 0x00, 0x00])
        assert await client.packet() == pub("rh/x", b"r", v5=True, retain=True)
        await client.send(subscribe(4, "rh/+", sub_options(1, handling=2), v5=True))  # never sent
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x04, 0x00, 0x01])
        await nothing_pending(client)
        await publisher.send(pub("rh/y", b"live", qos=1, pid=2, v5=True))
        assert await client.packet() == pub("rh/y", b"live", qos=1, pid=2, v5=True)
        await nothing_pending(client)


async def test_dollar_topics_not_matched_by_leading_wildcards(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.7.2-1], v311 [MQTT-4.7.2-1]: filters starting with # or + do not
    match topics starting with $, live or retained; $x/# does."""
    broker = make_broker()
    with trio.fail_after(5):
        publisher, _ = await connected(nursery, broker, "dl-pub", version=4)
        await publisher.send(pub("$dl/x", b"r", retain=True))
        await ping(publisher)
        clients = {}
        for name, topic_filter in (("hash", "#"), ("plus", "+/x"), ("dollar", "$dl/#")):
            client, _ = await connected(nursery, broker, f"dl-{name}", version=4)
            await client.send(subscribe(1, topic_filter, 0))
            await client.packet()
            clients[name] = client
        assert await clients["dollar"].packet() == pub("$dl/x", b"r", retain=True)
        await publisher.send(pub("$dl/x", b"1") + pub("dl/x", b"2"))
        assert await clients["hash"].packet() == pub("dl/x", b"2")
        assert await clients["plus"].packet() == pub("dl/x", b"2")
        assert await clients["dollar"].packet() == pub("$dl/x", b"1")
        for client in clients.values():
            await nothing_pending(client)


async def test_topics_are_not_normalised(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.7.3-4], v311 [MQTT-4.7.3-4]: no normalisation or substitution
    when matching: NFC and NFD forms, and a trailing space, are other topics;
    v5 [MQTT-1.5.4-3], v311 [MQTT-1.5.3-3]: a leading U+FEFF is not stripped."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "nf", version=4)
        await client.send(subscribe(1, "nf/\u00e9", 0))
        await client.packet()
        await client.send(
            pub("nf/e\u0301", b"nfd") + pub("nf/\u00e9 ", b"space") + pub("\ufeffnf/\u00e9", b"bom")
        )
        await client.send(pub("nf/\u00e9", b"nfc"))
        assert await client.packet() == pub("nf/\u00e9", b"nfc")
        await nothing_pending(client)


async def test_topic_aliases_from_the_client(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.3.2-12]: every alias up to the Topic Alias Maximum we sent is
    accepted (and may be remapped); [MQTT-3.3.2-7]: aliases are not carried to
    the next connection, even of the same session (unknown alias: 0x82)."""
    broker = make_broker(topic_alias_maximum=3)
    with trio.fail_after(5):
        receiver, _ = await connected(nursery, broker, "ta-r")
        await receiver.send(subscribe(1, "ta/#", 0, v5=True))
        await receiver.packet()
        expiry = props(session_expiry(60))
        sender, connack = await connected(nursery, broker, "ta", clean=False, props=expiry)
        assert connack_properties(connack)[0x22] == 3
        await sender.send(pub("ta/a", b"1", v5=True, props_=props(topic_alias(3))))
        await sender.send(pub("", b"2", v5=True, props_=props(topic_alias(3))))
        await sender.send(pub("ta/b", b"3", v5=True, props_=props(topic_alias(3))))  # remapped
        await sender.send(pub("", b"4", v5=True, props_=props(topic_alias(3))))
        for topic, payload in (("ta/a", b"1"), ("ta/a", b"2"), ("ta/b", b"3"), ("ta/b", b"4")):
            assert await receiver.packet() == pub(topic, payload, v5=True)
        await sender.aclose()
        await gone(broker, "ta")
        again, connack = await connected(nursery, broker, "ta", clean=False, props=expiry)
        assert connack[2] == 0x01
        await again.send(pub("", b"5", v5=True, props_=props(topic_alias(3))))
        assert await again.packet() == bytes([0xE0, 0x01, 0x82])
        assert await again.eof()
        await nothing_pending(receiver)


async def test_inbound_qos2_exactly_once(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.3.3-8], [MQTT-4.3.3-10], [MQTT-4.3.3-11], [MQTT-4.3.3-12]
    (v311 section 4.3.3, method B): a retransmitted QoS 2 PUBLISH is answered
    with PUBREC again but not routed twice; PUBREL gets PUBCOMP; after PUBCOMP
    the packet id starts a new message."""
    broker = make_broker()
    with trio.fail_after(5):
        for version in (4, 5):
            v5 = version == 5
            receiver, _ = await connected(nursery, broker, f"q2r{version}", version=version)
            await receiver.send(subscribe(1, f"q2/{version}", 0, v5=v5))
            await receiver.packet()
            sender, _ = await connected(nursery, broker, f"q2s{version}", version=version)
            await sender.send(pub(f"q2/{version}", b"1", qos=2, pid=5, v5=v5))
            assert await sender.packet() == ack(0x50, 5)
            await sender.send(pub(f"q2/{version}", b"1", qos=2, pid=5, v5=v5, dup=True))
            assert await sender.packet() == ack(0x50, 5)
            await sender.send(ack(0x62, 5))
            assert await sender.packet() == ack(0x70, 5)
            await sender.send(pub(f"q2/{version}", b"2", qos=2, pid=5, v5=v5))
            assert await sender.packet() == ack(0x50, 5)
            assert await receiver.packet() == pub(f"q2/{version}", b"1", v5=v5)
            assert await receiver.packet() == pub(f"q2/{version}", b"2", v5=v5)
            await nothing_pending(receiver)


async def test_inbound_qos1_same_packet_id_after_puback_is_new(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.3.2-4], [MQTT-4.3.2-5]: after PUBACK, a PUBLISH with the same
    packet id is a new message, whatever its DUP flag."""
    broker = make_broker()
    with trio.fail_after(5):
        receiver, _ = await connected(nursery, broker, "q1r")
        await receiver.send(subscribe(1, "q1", 0, v5=True))
        await receiver.packet()
        sender, _ = await connected(nursery, broker, "q1s")
        await sender.send(pub("q1", b"1", qos=1, pid=7, v5=True))
        assert await sender.packet() == ack(0x40, 7)
        await sender.send(pub("q1", b"2", qos=1, pid=7, v5=True, dup=True))
        assert await sender.packet() == ack(0x40, 7)
        assert await receiver.packet() == pub("q1", b"1", v5=True)
        assert await receiver.packet() == pub("q1", b"2", v5=True)


async def test_pubrel_for_unknown_packet_id_v311(nursery: trio.Nursery) -> None:
    """v311 [MQTT-3.6.4-1]: PUBREL is answered with PUBCOMP of the same id (3.1.1
    has no reason code; v5 0x92 is in test_wire.py)."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "pr", version=4)
        await client.send(ack(0x62, 9))
        assert await client.packet() == ack(0x70, 9)


async def test_outbound_qos2_flow(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.3.3-1]..[MQTT-4.3.3-5], [MQTT-3.6.1-1], [MQTT-2.2.1-5]: PUBREC <
    0x80 is answered with PUBREL (fixed header 0x62) of the same id; a PUBREC
    >= 0x80 ends the flow (no PUBREL, no resend: [MQTT-4.4.0-2])."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(
            nursery, broker, "oq2", clean=False, props=props(session_expiry(60))
        )
        await client.send(subscribe(1, "oq2", 2, v5=True))
        await client.packet()
        await client.send(pub("oq2", b"a", qos=2, pid=1, v5=True))
        got = {await client.packet(), await client.packet()}
        assert got == {ack(0x50, 1), pub("oq2", b"a", qos=2, pid=1, v5=True)}
        await client.send(ack(0x50, 1))
        assert await client.packet() == ack(0x62, 1)
        await client.send(ack(0x70, 1))
        await client.send(ack(0x62, 1))  # our own QoS 2 flow in the other direction
        assert await client.packet() == ack(0x70, 1)
        await client.send(pub("oq2", b"b", qos=2, pid=2, v5=True))
        got = {await client.packet(), await client.packet()}
        assert got == {ack(0x50, 2), pub("oq2", b"b", qos=2, pid=2, v5=True)}
        await client.send(ack(0x50, 2, 0x80))  # PUBREC with an error
        await nothing_pending(client)
        await client.aclose()
        await gone(broker, "oq2")
        again, connack = await connected(
            nursery, broker, "oq2", clean=False, props=props(session_expiry(60))
        )
        assert connack[2] == 0x01
        await nothing_pending(again)  # neither message is resent


async def test_error_puback_is_not_retransmitted(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.4.0-2]: a PUBLISH answered with PUBACK >= 0x80 is acknowledged
    and never resent, also not when the session resumes."""
    broker = make_broker()
    with trio.fail_after(5):
        expiry = props(session_expiry(60))
        client, _ = await connected(nursery, broker, "ep", clean=False, props=expiry)
        await client.send(subscribe(1, "ep", 1, v5=True))
        await client.packet()
        await client.send(pub("ep", b"x", qos=1, pid=1, v5=True))
        got = {await client.packet(), await client.packet()}
        assert got == {ack(0x40, 1), pub("ep", b"x", qos=1, pid=1, v5=True)}
        await client.send(ack(0x40, 1, 0x80))
        await ping(client)
        await client.aclose()
        await gone(broker, "ep")
        again, connack = await connected(nursery, broker, "ep", clean=False, props=expiry)
        assert connack[2] == 0x01
        await nothing_pending(again)


async def test_outbound_packet_ids_in_flight_are_unique(nursery: trio.Nursery) -> None:
    """v5 [MQTT-2.2.1-4], [MQTT-4.3.2-1], v311 [MQTT-2.3.1-4]: every new QoS > 0
    PUBLISH gets a non-zero packet id not in use."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "ids", version=4)
        await client.send(subscribe(1, "ids", 1))
        await client.packet()
        publisher, _ = await connected(nursery, broker, "ids-pub", version=4)
        in_flight: set[int] = set()
        for i in range(6):
            await publisher.send(pub("ids", bytes([i]), qos=1, pid=1))
            assert await publisher.packet() == ack(0x40, 1)
            packet = await client.packet()
            assert packet is not None and packet[0] == 0x32
            pid = int.from_bytes(packet[7:9], "big")  # after the topic "ids"
            assert pid != 0 and pid not in in_flight
            in_flight.add(pid)
            if i == 2:
                await client.send(ack(0x40, pid))  # one id becomes free again
                in_flight.discard(pid)


async def test_client_receive_maximum_bounds_what_is_in_flight(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.3.4-9], [MQTT-4.9.0-2]: at most the client's Receive Maximum
    unacknowledged QoS 1/2 PUBLISHes; [MQTT-3.3.4-10], [MQTT-4.9.0-3]: other
    packets are not held back; [MQTT-4.6.0-5]/[MQTT-4.6.0-6]: the messages of
    one topic arrive in the order they were published."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(
            nursery, broker, "rm", props=props(b"\x21\x00\x02")
        )  # Receive Maximum 2
        await client.send(subscribe(1, "rm", 1, v5=True))
        await client.packet()
        publisher, _ = await connected(nursery, broker, "rm-pub")
        for i in range(20):
            await publisher.send(pub("rm", b"%02d" % i, qos=1, pid=i + 1, v5=True))
        for i in range(20):
            assert await publisher.packet() == ack(0x40, i + 1)
        received = []
        first = await client.packet()
        second = await client.packet()
        await nothing_pending(client)  # the window is full; PINGRESP still comes
        pending = [first, second]
        while pending:
            packet = pending.pop(0)
            assert packet is not None and packet[0] == 0x32
            received.append(packet[-2:])
            await client.send(ack(0x40, int.from_bytes(packet[6:8], "big")))  # after the topic "rm"
            if len(received) + len(pending) < 20:
                pending.append(await client.packet())
        assert received == [b"%02d" % i for i in range(20)]


async def test_overlapping_subscriptions(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.3.4-2], [MQTT-3.3.4-3], [MQTT-3.3.4-4], v311 [MQTT-3.3.5-1]: one
    delivery at the highest granted QoS, carrying every matching Subscription
    Identifier; [MQTT-3.8.4-8]: never above the published QoS ([MQTT-2.2.1-2]:
    then no packet id)."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "ov")
        for pid, topic_filter, qos, sub_id in ((1, "ov/+", 0, 1), (2, "ov/#", 1, 2)):
            body = (
                pid.to_bytes(2, "big")
                + props(b"\x0b" + bytes([sub_id]))
                + s(topic_filter)
                + bytes([qos])
            )
            await client.send(frame(0x82, body))
            assert await client.packet() == bytes([0x90, 0x04, 0x00, pid, 0x00, qos])
        await client.send(pub("ov/a", b"2", qos=2, pid=9, v5=True))
        got = [await client.packet(), await client.packet()]
        assert ack(0x50, 9) in got
        both = (
            pub("ov/a", b"2", qos=1, pid=1, v5=True, props_=props(b"\x0b\x01\x0b\x02")),
            pub("ov/a", b"2", qos=1, pid=1, v5=True, props_=props(b"\x0b\x02\x0b\x01")),
        )
        assert got[0] in both or got[1] in both
        await client.send(pub("ov/b", b"0", v5=True))
        packet = await client.packet()
        assert packet in (
            pub("ov/b", b"0", v5=True, props_=props(b"\x0b\x01\x0b\x02")),
            pub("ov/b", b"0", v5=True, props_=props(b"\x0b\x02\x0b\x01")),
        )
        old, _ = await connected(nursery, broker, "ov3", version=4)
        await old.send(subscribe(1, "ov/+", 0) + subscribe(2, "ov/#", 2))
        await old.packet()
        await old.packet()
        await old.send(pub("ov/c", b"x", qos=2, pid=3))
        got = [await old.packet(), await old.packet()]
        assert ack(0x50, 3) in got and pub("ov/c", b"x", qos=2, pid=1) in got
        await nothing_pending(old)


async def test_shared_subscription_with_no_local_is_a_protocol_error(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error
    (DISCONNECT 0x82, [MQTT-4.13.1-1])."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "shnl")
        await client.send(subscribe(1, "$share/g/t", sub_options(0, no_local=True), v5=True))
        assert await client.packet() == bytes([0xE0, 0x01, 0x82])
        assert await client.eof()


async def test_suback_reason_codes_in_order(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.8.4-1], [MQTT-3.8.4-2], [MQTT-3.8.4-5], [MQTT-3.8.4-6],
    [MQTT-3.8.4-7], [MQTT-3.9.3-1], [MQTT-3.9.3-2]; v311 [MQTT-3.8.4-1..5],
    [MQTT-3.9.3-1], [MQTT-3.9.3-2] (failure is 0x80 in 3.1.1): one code per
    filter, in order, in one SUBACK with the SUBSCRIBE's packet id."""
    broker = make_broker(max_topic_levels=3)
    with trio.fail_after(5):
        for version, failure in ((5, 0x8F), (4, 0x80)):
            v5 = version == 5
            client, _ = await connected(nursery, broker, f"sa{version}", version=version)
            filters = (("sa/a", 2), ("sa/b/c/d", 1), ("sa/+", 0), ("sa/#", 1))
            body = (
                b"\x12\x34"
                + (b"\x00" if v5 else b"")
                + b"".join(s(f) + bytes([q]) for f, q in filters)
            )
            await client.send(frame(0x82, body))
            assert await client.packet() == frame(
                0x90, b"\x12\x34" + (b"\x00" if v5 else b"") + bytes([2, failure, 0, 1])
            )


async def test_unsubscribe(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.10.4-1], [MQTT-3.10.4-2], [MQTT-3.10.4-4], [MQTT-3.10.4-5],
    [MQTT-3.10.4-6], [MQTT-3.11.3-1], [MQTT-3.11.3-2] (v311 section 3.10.4):
    filters are compared character by character, processed in sequence, and
    answered in one UNSUBACK, also when nothing matched (v5: 0x11 No
    subscription existed)."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "us")
        await client.send(subscribe(1, "us/a", 0, v5=True) + subscribe(2, "us/+", 0, v5=True))
        await client.packet()
        await client.packet()
        await client.send(unsubscribe(7, "us/#", "us/+", "us/a", "us/a", v5=True))
        assert await client.packet() == frame(
            0xB0, b"\x00\x07\x00" + bytes([0x11, 0x00, 0x00, 0x11])
        )
        await client.send(pub("us/a", b"x", v5=True))
        await nothing_pending(client)
        old, _ = await connected(nursery, broker, "us3", version=4)
        await old.send(unsubscribe(8, "nothing/here", v5=False))
        assert await old.packet() == bytes([0xB0, 0x02, 0x00, 0x08])
        await old.send(subscribe(1, "$share/g/us/b", 0))
        await old.packet()
        await old.send(unsubscribe(9, "$share/g/us/b", v5=False))
        assert await old.packet() == bytes([0xB0, 0x02, 0x00, 0x09])


async def test_receive_maximum_counts_each_qos2_message_once(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.3.4-7]: a client may have Receive Maximum QoS 1/2 PUBLISHes
    unacknowledged (a QoS 2 one until PUBCOMP). A QoS 2 message whose PUBREC
    waits for the forwarder must count once, not twice; one more is 0x93."""
    forwarder = SlowForwarder()
    broker = make_broker(forwarder, receive_maximum=2)
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "rm2")
        await client.send(
            pub("rm2", b"1", qos=2, pid=1, v5=True) + pub("rm2", b"2", qos=2, pid=2, v5=True)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert len(forwarder.messages) == 2
        forwarder.release.set()
        assert await client.packet() == ack(0x50, 1)
        assert await client.packet() == ack(0x50, 2)
        await client.send(ack(0x62, 1))
        assert await client.packet() == ack(0x70, 1)
        await client.send(pub("rm2", b"3", qos=1, pid=3, v5=True))
        assert await client.packet() == ack(0x40, 3)
        await client.send(pub("rm2", b"4", qos=2, pid=4, v5=True))
        assert await client.packet() == ack(0x50, 4)
        await client.send(pub("rm2", b"5", qos=1, pid=5, v5=True))
        assert await client.packet() == bytes(
            [0xE0, 0x01, 0x93]
        )  # 2 and 4 await PUBREL, 5 is a third


async def test_will_kept_by_a_disconnect_with_another_reason(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.1.2-8], [MQTT-3.1.2-10], [MQTT-3.14.4-3]: only a DISCONNECT with
    Reason Code 0x00 deletes the Will; with 0x04 or an error code (0x80 here)
    the Will is published."""
    broker = make_broker()
    with trio.fail_after(5):
        live, _ = await connected(nursery, broker, "wk-live")
        await live.send(subscribe(1, "wk/#", 0, v5=True))
        await live.packet()
        for reason in (0x00, 0x04, 0x80, 0x83):
            dying = await open_client(nursery, broker)
            await dying.send(will_connect(f"wk{reason}", f"wk/{reason}", b"w", version=5))
            await dying.packet()
            await dying.send(frame(0xE0, bytes([reason, 0x00])))
            assert await dying.eof()
            await gone(broker, f"wk{reason}")
        for reason in (0x04, 0x80, 0x83):
            assert await live.packet() == pub(f"wk/{reason}", b"w", v5=True)
        await nothing_pending(live)


async def test_unsubscribe_completes_messages_in_flight(nursery: trio.Nursery) -> None:
    """v5 [MQTT-3.10.4-2], [MQTT-3.10.4-3] (v311 section 3.10.4): after UNSUBSCRIBE
    no new message is added, but a QoS 1 message already sent is completed (here:
    resent when the session resumes)."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "uc", version=4, clean=False)
        await client.send(subscribe(1, "uc", 1))
        await client.packet()
        publisher, _ = await connected(nursery, broker, "uc-pub", version=4)
        await publisher.send(pub("uc", b"1", qos=1, pid=1))
        assert await client.packet() == pub("uc", b"1", qos=1, pid=1)
        await client.send(unsubscribe(2, "uc", v5=False))
        assert await client.packet() == bytes([0xB0, 0x02, 0x00, 0x02])
        await publisher.send(pub("uc", b"2", qos=1, pid=2))
        await nothing_pending(client)
        await client.aclose()
        await gone(broker, "uc")
        again, _ = await connected(nursery, broker, "uc", version=4, clean=False)
        assert await again.packet() == pub("uc", b"1", qos=1, pid=1, dup=True)
        await again.send(ack(0x40, 1))
        await nothing_pending(again)


async def test_shared_subscription_member_keeps_its_message(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.8.2-3]: each member's granted QoS is respected; [MQTT-4.8.2-4]:
    a message sent to a member that goes away is completed when it reconnects,
    [MQTT-4.8.2-5]: and not given to another member meanwhile."""
    broker = make_broker()
    with trio.fail_after(5):
        expiry = props(session_expiry(60))
        one, _ = await connected(nursery, broker, "sh1", clean=False, props=expiry)
        await one.send(subscribe(1, "$share/g/sh", 1, v5=True))
        await one.packet()
        two, _ = await connected(nursery, broker, "sh2")
        await two.send(subscribe(1, "$share/g/sh", 0, v5=True))
        await two.packet()
        publisher, _ = await connected(nursery, broker, "sh-pub")
        await publisher.send(
            pub("sh", b"a", qos=1, pid=1, v5=True) + pub("sh", b"b", qos=1, pid=2, v5=True)
        )
        await publisher.packet()
        await publisher.packet()
        to_one = await one.packet()
        to_two = await two.packet()
        assert to_one is not None and to_two is not None
        assert to_one[0] == 0x32 and to_two[0] == 0x30  # QoS 1 and the granted QoS 0
        await one.aclose()  # not acknowledged
        await gone(broker, "sh1")
        await nothing_pending(two)
        again, _ = await connected(nursery, broker, "sh1", clean=False, props=expiry)
        resent = await again.packet()
        assert resent == bytes([0x3A]) + to_one[1:]  # the same PUBLISH with DUP


async def test_retained_messages_resent_when_a_subscription_is_replaced_v311(
    nursery: trio.Nursery,
) -> None:
    """v311 [MQTT-3.8.4-3]: a SUBSCRIBE repeating a filter replaces the subscription
    and re-sends the matching retained messages."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "rr", version=4)
        await client.send(pub("rr/t", b"r", retain=True))
        for pid in (1, 2):
            await client.send(subscribe(pid, "rr/#", 0))
            assert await client.packet() == bytes([0x90, 0x03, 0x00, pid, 0x00])
            assert await client.packet() == pub("rr/t", b"r", retain=True)
        await nothing_pending(client)


def test_decoder_knows_when_a_whole_packet_is_buffered() -> None:
    """The check behind the keep alive rule below: one byte at a time, a
    PUBLISH with a two-byte Remaining Length is whole only with its last byte."""
    decoder = Decoder()
    decoder.feed(connect("hp", version=4))
    assert decoder.has_packet()
    assert decoder.next_packet() is not None
    assert not decoder.has_packet()
    data = pub("hp", b"x" * 200)  # Remaining Length 204: 0xCC 0x01
    for byte in data[:-1]:
        decoder.feed(bytes([byte]))
        assert not decoder.has_packet()
    decoder.feed(data[-1:] + PINGREQ[:1])
    assert decoder.has_packet()
    assert decoder.next_packet() is not None
    assert not decoder.has_packet()  # half a PINGREQ
    decoder.feed(PINGREQ[1:])
    assert decoder.has_packet()


async def test_keep_alive_counts_whole_packets(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """v5 [MQTT-3.1.2-22], v311 [MQTT-3.1.2-24]: the connection is closed when no
    *Control Packet* arrived within 1.5 x keep alive; bytes of a packet that
    never completes do not count."""
    broker = make_broker()
    await start_timers(nursery, broker)
    with trio.fail_after(100):
        client, _ = await connected(nursery, broker, "kp", version=4, keepalive=2)
        began = trio.current_time()
        partial = pub("kp", b"x" * 100)

        async def trickle() -> None:
            try:
                for byte in partial[:-1]:
                    await client.send(bytes([byte]))
                    await trio.sleep(1)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with trio.open_nursery() as inner:
            inner.start_soon(trickle)
            assert await client.eof()
            inner.cancel_scope.cancel()
        assert 3 <= trio.current_time() - began < 3.5  # keep alive 2 s x 1.5


async def test_enhanced_authentication_is_refused(nursery: trio.Nursery) -> None:
    """v5 [MQTT-4.12.0-1]: an Authentication Method the server does not support
    gets CONNACK 0x8C (or 0x87) and the close; [MQTT-4.12.0-6]: no AUTH packet."""
    broker = make_broker()
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("am", version=5, props=props(b"\x15" + s("SCRAM-SHA-1"))))
        connack = await client.packet()
        assert connack is not None and connack[:4] == bytes([0x20, connack[1], 0x00, 0x8C])
        assert await client.eof()


async def test_unsubscribe_of_any_valid_filter_is_answered_v311(nursery: trio.Nursery) -> None:
    """v311 [MQTT-3.10.4-4], [MQTT-3.10.4-5]: every UNSUBSCRIBE gets an UNSUBACK,
    also for filters that look like a malformed shared subscription (in 3.1.1
    ``$share//a`` and ``$share/g`` are ordinary, valid filters)."""
    broker = make_broker()
    with trio.fail_after(5):
        client, _ = await connected(nursery, broker, "usv", version=4)
        await client.send(unsubscribe(3, "$share//a", "$share/g", v5=False))
        assert await client.packet() == bytes([0xB0, 0x02, 0x00, 0x03])
        await ping(client)


async def test_retained_message_expiry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """v5 [MQTT-3.3.2-5]: an expired retained message is no longer sent;
    [MQTT-3.3.2-6]: one still alive states the interval left; [MQTT-3.3.4-3]: a
    retained message sent for a subscription carries its Subscription Identifier."""
    broker = make_broker()
    with trio.fail_after(60):
        publisher, _ = await connected(nursery, broker, "rx-pub")
        await publisher.send(
            pub("rx/t", b"r", v5=True, retain=True, props_=props(b"\x02\x00\x00\x00\x05"))
        )
        await ping(publisher)
        await trio.sleep(2)
        early, _ = await connected(nursery, broker, "rx-early")
        body = b"\x00\x01" + props(b"\x0b\x05") + s("rx/#") + b"\x00"  # Subscription Identifier 5
        await early.send(frame(0x82, body))
        await early.packet()
        expected = props(b"\x02\x00\x00\x00\x03", b"\x0b\x05")  # 3 s left, then the identifier
        assert await early.packet() == pub("rx/t", b"r", v5=True, retain=True, props_=expected)
        await trio.sleep(4)
        late, _ = await connected(nursery, broker, "rx-late")
        await late.send(subscribe(1, "rx/#", 0, v5=True))
        await late.packet()
        await nothing_pending(late)


async def test_message_expiry_interval_0_means_no_expiry(nursery: trio.Nursery) -> None:
    """v5 section 3.3.2.3.3 does not single out 0; mqttgate reads it as no
    expiry, like Mosquitto (docs/broker.md): a connected subscriber and a
    later one (retained) get the message, without the property."""
    broker = make_broker()
    expiry_0 = props(b"\x02" + (0).to_bytes(4, "big"))  # Message Expiry Interval 0
    with trio.fail_after(5):
        early, _ = await connected(nursery, broker, "e0-early")
        await early.send(subscribe(1, "e0/t", 0, v5=True))
        await early.packet()
        publisher, _ = await connected(nursery, broker, "e0-pub")
        await publisher.send(pub("e0/t", b"zero", v5=True, retain=True, props_=expiry_0))
        await ping(publisher)
        assert await early.packet() == pub("e0/t", b"zero", v5=True)
        late, _ = await connected(nursery, broker, "e0-late")
        await late.send(subscribe(1, "e0/t", 0, v5=True))
        await late.packet()
        assert await late.packet() == pub("e0/t", b"zero", v5=True, retain=True)
