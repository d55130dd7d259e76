"""Conformance scenarios from the MQTT 3.1.1 / 5.0 normative statements.

Modelled on the scenarios of Eclipse Paho's interoperability suite
(``client_test.py``, ``client_test5.py``) and on hostile input. Bytes are
written by hand from the specs (tests/broker/raw.py), not by mqttgate's codec.
"""

from __future__ import annotations

import trio
import trio.testing

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from tests.broker.raw import RawClient, connect, frame, publish, s, subscribe
from tests.conftest import StartDaemon, make_config, port_of


def make_broker(**config: object) -> Broker:
    return Broker(make_config(**config), AnonymousAuth(), NullForwarder())


async def open_client(nursery: trio.Nursery, broker: Broker) -> RawClient:
    client_side, server_side = trio.testing.memory_stream_pair()
    nursery.start_soon(broker.serve_stream, server_side, "memory")
    return RawClient(client_side)


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return bytes([len(body)]) + body


async def test_server_topic_aliases_up_to_the_clients_maximum(nursery: trio.Nursery) -> None:
    # v5 section 3.3.2.3.4, [MQTT-3.1.2-26]: the server may use aliases up to the
    # client's Topic Alias Maximum; later PUBLISHes of an aliased topic have an
    # empty Topic Name. (Paho's interoperability test_server_topic_alias expects it.)
    broker = make_broker()
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("alias", version=5, props=props(b"\x22\x00\x02")))  # Topic Alias Maximum 2
        assert (await client.packet() or b"")[3] == 0x00
        await client.send(subscribe(1, "ta/#", 1, v5=True))
        assert await client.packet() == bytes([0x90, 0x04, 0x00, 0x01, 0x00, 0x01])
        for topic in ("ta/x", "ta/x", "ta/y", "ta/z"):
            await client.send(publish(topic, b"m", v5=True))
        assert await client.packet() == frame(0x30, s("ta/x") + b"\x03\x23\x00\x01" + b"m")
        assert await client.packet() == frame(0x30, s("") + b"\x03\x23\x00\x01" + b"m")
        assert await client.packet() == frame(0x30, s("ta/y") + b"\x03\x23\x00\x02" + b"m")
        # The maximum is used up: no alias for a third topic.
        assert await client.packet() == frame(0x30, s("ta/z") + b"\x00" + b"m")
        # QoS 1 uses the aliases too.
        await client.send(publish("ta/y", b"q", qos=1, packet_id=5, v5=True))
        got = [await client.packet(), await client.packet()]
        assert frame(0x32, s("") + b"\x00\x01" + b"\x03\x23\x00\x02" + b"q") in got
        assert bytes([0x40, 0x02, 0x00, 0x05]) in got


async def test_no_server_topic_aliases_without_client_maximum(nursery: trio.Nursery) -> None:
    # v5 [MQTT-3.1.2-27]: Topic Alias Maximum absent or 0: no aliases to the client.
    broker = make_broker()
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("noalias", version=5, props=props(b"\x22\x00\x00")))
        await client.packet()
        await client.send(subscribe(1, "na/#", 0, v5=True))
        await client.packet()
        for _ in range(2):
            await client.send(publish("na/x", b"m", v5=True))
            assert await client.packet() == frame(0x30, s("na/x") + b"\x00" + b"m")


async def _wait_idle(broker: Broker) -> None:
    """Until every connection is gone (bounded by the caller's fail_after)."""
    while broker.stats.connections_current or broker._conns:  # noqa: ASYNC110 (no event to wait on)
        await trio.sleep(0.05)


async def test_hostile_input_never_leaks_a_connection(nursery: trio.Nursery) -> None:
    broker = make_broker(connect_timeout=0.5, max_subscriptions=10, max_topic_levels=8)
    shutdown = trio.Event()
    port = port_of(await nursery.start(broker.serve, shutdown))
    with trio.fail_after(15):
        # A huge Remaining Length, then nothing: refused at once (over max_packet_size).
        huge = await RawClient.open(port)
        await huge.send(b"\x10\xff\xff\xff\x7f")
        assert await huge.eof()
        # A CONNECT that never completes (slow loris): ended by connect_timeout.
        loris = await RawClient.open(port)
        await loris.send(connect("loris")[:5])
        assert await loris.eof()
        # Packets before CONNECT: closed (v311 [MQTT-3.1.0-1]).
        early = await RawClient.open(port)
        await early.send(publish("x", b"y") * 50)
        assert await early.eof()
        # Thousands of filters in one SUBSCRIBE: all answered, at most max_subscriptions granted.
        many = await RawClient.open(port)
        await many.send(connect("many", version=5))
        await many.packet()
        filters = b"".join(s(f"m/{i}") + b"\x01" for i in range(3000))
        await many.send(frame(0x82, b"\x00\x07\x00" + filters))
        suback = await many.packet()
        assert suback is not None
        codes = suback[-3000:]
        assert codes.count(0x01) == 10 and codes.count(0x97) == 2990  # v5 0x97 Quota exceeded
        assert [c.subscriptions for c in broker.clients()] == [10]
        # Too deep a topic: v5 DISCONNECT 0x90 Topic Name invalid.
        await many.send(publish("a/" * 20 + "x", b"", v5=True))
        assert await many.packet() == bytes([0xE0, 0x01, 0x90])
        assert await many.eof()
        # AUTH when CONNECT had no Authentication Method: protocol error (v5 section 4.12).
        auth = await RawClient.open(port)
        await auth.send(connect("auth", version=5))
        await auth.packet()
        await auth.send(b"\xf0\x00")
        assert await auth.packet() == bytes([0xE0, 0x01, 0x82])
        assert await auth.eof()
        # Packets after DISCONNECT are not processed (v5 [MQTT-3.14.4-1]).
        after = await RawClient.open(port)
        await after.send(connect("after") + b"\xe0\x00" + b"\xc0\x00")
        assert await after.packet() == bytes([0x20, 0x02, 0x00, 0x00])
        assert await after.eof()
        assert not after.buf  # no PINGRESP
        for client in (huge, loris, early, many, auth, after):
            await client.aclose()
        await _wait_idle(broker)
    assert broker.stats.connections_current == 0
    shutdown.set()


async def test_disconnect_fits_the_clients_maximum_packet_size(nursery: trio.Nursery) -> None:
    # v5 [MQTT-3.1.2-24]: nothing larger than the client's Maximum Packet Size,
    # so the DISCONNECT 0x8E of a takeover loses its Reason String.
    broker = make_broker()
    with trio.fail_after(5):
        small = await open_client(nursery, broker)
        await small.send(connect("mps", version=5, props=props(b"\x27\x00\x00\x00\x10")))  # 16 bytes
        await small.packet()
        roomy = await open_client(nursery, broker)
        await roomy.send(connect("mps2", version=5))
        await roomy.packet()
        newer = await open_client(nursery, broker)
        await newer.send(connect("mps", version=5))
        assert await small.packet() == bytes([0xE0, 0x01, 0x8E])
        assert await small.eof()
        assert (await newer.packet() or b"")[0] == 0x20
        # Without a limit the Reason String is sent.
        newest = await open_client(nursery, broker)
        await newest.send(connect("mps2", version=5))
        taken = await roomy.packet()
        assert taken is not None and taken[2] == 0x8E and b"another connection" in taken


def _will_connect(client_id: str, topic: str, version: int) -> bytes:
    v5 = version == 5
    body = s("MQTT") + bytes([version, 0x06]) + b"\x00\x3c" + (b"\x00" if v5 else b"")
    return frame(0x10, body + s(client_id) + (b"\x00" if v5 else b"") + s(topic) + s("gone"))


async def test_will_topic_obeys_the_topic_limits(nursery: trio.Nursery) -> None:
    # A Will is published like a PUBLISH: a topic over max_topic_levels is
    # refused at CONNECT (v5 CONNACK 0x90; 3.1.1 closed, it has no return code).
    broker = make_broker(max_topic_levels=4)
    with trio.fail_after(5):
        v5 = await open_client(nursery, broker)
        await v5.send(_will_connect("deepwill", "a/b/c/d/e/f", 5))
        connack = await v5.packet()
        assert connack is not None and connack[:4] == bytes([0x20, connack[1], 0x00, 0x90])
        assert await v5.eof()
        v311 = await open_client(nursery, broker)
        await v311.send(_will_connect("deepwill", "a/b/c/d/e/f", 4))
        assert await v311.eof()
        assert not v311.buf
        ok = await open_client(nursery, broker)
        await ok.send(_will_connect("okwill", "a/b/c/d", 4))
        assert await ok.packet() == bytes([0x20, 0x02, 0x00, 0x00])


async def test_client_that_does_not_read_its_replies_is_not_read_either(nursery: trio.Nursery) -> None:
    # Hostile input: PINGREQs (or QoS 1 PUBLISHes...) sent without ever reading
    # the replies must not grow the connection's outbox without bound.
    broker = make_broker(max_outbox_bytes=1024)
    client_side, server_side = trio.testing.lockstep_stream_pair()
    nursery.start_soon(broker.serve_stream, server_side, "memory")
    client = RawClient(client_side)
    chunks = 30
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(chunks):
            await client.send(b"\xc0\x00" * 2000)  # 4000 bytes of PINGREQ
            sent += 1

    with trio.fail_after(10):
        await client.send(connect("flood"))
        assert await client.packet() == bytes([0x20, 0x02, 0x00, 0x00])
        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        (conn,) = [c for c in broker._conns.values() if c.client_id == "flood"]
        # Stopped after the replies passed 2 x max_outbox_bytes (one read batch late at most).
        assert sent < chunks
        assert conn.out_bytes <= 2 * 1024 + 4000 * 2
        # Reading the replies lets the flood through; every PINGREQ is answered.
        replies = 0
        while replies < chunks * 2000:
            packet = await client.packet()
            assert packet == b"\xd0\x00"
            replies += 1
        assert sent == chunks


async def test_response_topic_with_wildcards_is_a_protocol_error(nursery: trio.Nursery) -> None:
    # v5 [MQTT-3.3.2-14]: the Response Topic MUST NOT contain wildcards.
    broker = make_broker()
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("rt", version=5))
        await client.packet()
        await client.send(publish("req", b"", v5=True, props=props(b"\x08" + s("resp/x"))))  # fine
        await client.send(publish("req", b"", v5=True, props=props(b"\x08" + s("resp/#"))))
        assert await client.packet() == bytes([0xE0, 0x01, 0x82])
        assert await client.eof()


async def test_close_after_an_error_is_orderly_despite_unread_input(nursery: trio.Nursery) -> None:
    # The DISCONNECT with the reason (v5 section 4.13) must reach a client
    # that is still writing: closing with unread input would send RST, so the
    # broker half-closes and discards input until EOF (Connection._linger).
    broker = make_broker()
    shutdown = trio.Event()
    port = port_of(await nursery.start(broker.serve, shutdown))
    client = await RawClient.open(port)
    with trio.fail_after(10):
        await client.send(connect("linger", version=5))
        await client.packet()
        junk = publish("nobody/listens", b"x" * 1000, v5=True) * 200  # ~200 KB after the error
        nursery.start_soon(client.send, b"\xf0\x00" + junk)  # AUTH: protocol error
        received = b""
        ending = "eof"
        while True:
            try:
                data = await client.stream.receive_some(65536)
            except trio.BrokenResourceError:
                ending = "reset"
                break
            if not data:
                break
            received += data
        assert received[:3] == bytes([0xE0, 0x01, 0x82])
        assert ending == "eof"
        await client.aclose()
        await _wait_idle(broker)
    shutdown.set()


async def test_server_topic_aliases_capped_by_our_own_maximum(nursery: trio.Nursery) -> None:
    # Each outbound alias keeps a topic for the connection's life: at most
    # topic_alias_maximum of them whatever the client allows (docs/broker.md).
    broker = make_broker(topic_alias_maximum=1)
    with trio.fail_after(5):
        client = await open_client(nursery, broker)
        await client.send(connect("cap", version=5, props=props(b"\x22\x01\x00")))  # client allows 256
        await client.packet()
        await client.send(subscribe(1, "cap/#", 0, v5=True))
        await client.packet()
        for topic in ("cap/a", "cap/b", "cap/a"):
            await client.send(publish(topic, b"", v5=True))
        assert await client.packet() == frame(0x30, s("cap/a") + b"\x03\x23\x00\x01")
        assert await client.packet() == frame(0x30, s("cap/b") + b"\x00")
        assert await client.packet() == frame(0x30, s("") + b"\x03\x23\x00\x01")


async def test_connections_waiting_for_connect_are_capped(start_daemon: StartDaemon) -> None:
    # Unauthenticated sockets may each buffer up to max_packet_size before
    # CONNECT completes: past max_pending_connects new sockets are closed at
    # once, and a socket that finished CONNECT frees its slot.
    port = port_of((await start_daemon(make_config(max_pending_connects=3))).mqtt)
    with trio.fail_after(10):
        waiting = [await RawClient.open(port) for _ in range(3)]
        refused = await RawClient.open(port)
        assert await refused.eof()
        await waiting[0].send(connect("pending-0"))
        assert (await waiting[0].packet()) == bytes([0x20, 2, 0, 0])  # CONNACK accepted
        admitted = await RawClient.open(port)
        await admitted.send(connect("pending-new"))
        assert (await admitted.packet()) == bytes([0x20, 2, 0, 0])
        for client in (*waiting, refused, admitted):
            await client.aclose()
