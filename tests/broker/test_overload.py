"""Overload is handled, not suffered: publishers are slowed down, idle connections stay small."""

from __future__ import annotations

import gc
import socket
import tracemalloc
from typing import Any

import trio
import trio.testing

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from tests.broker.raw import RawClient, connect, publish, subscribe
from tests.conftest import make_config, port_of


async def start(nursery: trio.Nursery, **config: Any) -> tuple[Broker, int]:
    broker = Broker(make_config(**config), AnonymousAuth(), NullForwarder())
    addresses = await nursery.start(broker.serve, trio.Event())
    return broker, port_of(addresses)


async def test_slow_reader_slows_the_publisher_instead_of_losing_messages(nursery: trio.Nursery) -> None:
    # A small outbox and a long pause: without overload control the subscriber's
    # outbox would overflow many times over (18 MB through 64 KiB).
    broker, port = await start(nursery, max_outbox_bytes=64 * 1024, max_publisher_pause=60.0)
    with trio.fail_after(30):
        sub = await RawClient.connected(port, "reader")
        await sub.send(subscribe(1, "z", 0))
        await sub.packet()
        pub = await RawClient.connected(port, "writer")
        n = 300
        payloads = [i.to_bytes(4, "big") + b"y" * 60000 for i in range(n)]
        async with trio.open_nursery() as inner:

            async def send_all() -> None:
                for payload in payloads:
                    await pub.send(publish("z", payload))

            inner.start_soon(send_all)
            for payload in payloads:
                packet = await sub.packet()
                assert packet is not None and packet.endswith(payload)  # all of them, in order
                await trio.sleep(0.001)  # a reader slower than the publisher
        assert broker.stats.dropped_qos0 == 0
        assert broker.stats.messages_out[0] == n
        assert not broker.overload.congested


async def test_stuck_subscriber_holds_a_publisher_back_only_max_pause(nursery: trio.Nursery) -> None:
    broker, port = await start(nursery, max_outbox_bytes=64 * 1024, max_publisher_pause=0.5)
    with trio.fail_after(30):
        stuck = await RawClient.connected(port, "stuck")
        await stuck.send(subscribe(1, "z", 0))
        await stuck.packet()
        pub = await RawClient.connected(port, "p")
        n = 300  # 18 MB: more than the stuck client's socket buffers and outbox
        for _ in range(n):
            await pub.send(publish("z", b"y" * 60000))
        # PINGREQ after the PUBLISHes: answered once they were all read.
        await pub.send(b"\xc0\x00")
        assert await pub.packet() == b"\xd0\x00"
        assert broker.stats.messages_in[0] == n
        assert broker.stats.dropped_qos0 > 0  # the stuck one was marked slow, then lost QoS 0
        assert not broker.overload.congested


async def test_publishers_not_feeding_a_congested_subscriber_are_not_held(nursery: trio.Nursery) -> None:
    broker, port = await start(nursery, max_outbox_bytes=64 * 1024, max_publisher_pause=60.0)
    with trio.fail_after(30):
        stuck = await RawClient.connected(port, "stuck")
        await stuck.send(subscribe(1, "z", 0))
        await stuck.packet()
        flooder = await RawClient.connected(port, "flooder")
        reader = await RawClient.connected(port, "reader")
        await reader.send(subscribe(1, "other", 0))
        await reader.packet()
        other = await RawClient.connected(port, "other")
        async with trio.open_nursery() as inner:

            async def flood() -> None:
                for _ in range(100):  # 6 MB
                    await flooder.send(publish("z", b"y" * 60000))

            # The flooder congests "stuck" and is held (for up to 60 s): its
            # sends block once TCP buffers are full ...
            inner.start_soon(flood)
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            assert broker.overload.congested
            held = broker.stats.messages_in[0]
            # ... while a publisher on another topic goes on at once.
            for i in range(20):
                await other.send(publish("other", i.to_bytes(2, "big")))
                assert await reader.packet() == publish("other", i.to_bytes(2, "big"))
            assert broker.stats.messages_in[0] == held + 20 < 100 + 20
            assert broker.stats.dropped_qos0 == 0
            inner.cancel_scope.cancel()


def _connect_idle(port: int, n: int, prefix: str) -> list[socket.socket]:
    socks = []
    for i in range(n):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(connect(f"{prefix}-{i}", version=4))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        socks.append(sock)
    return socks


async def test_idle_connection_allocates_under_7_5_kib(nursery: trio.Nursery) -> None:
    # The issue asks for < 8 KiB of broker RSS per idle connection; Python's
    # allocations are most of it, so they must stay well below (bench/broker.py
    # measures the RSS itself).
    broker, port = await start(nursery)
    n = 300
    warm = await trio.to_thread.run_sync(_connect_idle, port, 20, "warm")
    gc.collect()
    tracemalloc.start(40)
    try:
        before = tracemalloc.take_snapshot()
        # A connection sends its CONNACK and reaches its idle read without
        # yielding, so all of them are idle once the thread has all CONNACKs.
        socks = await trio.to_thread.run_sync(_connect_idle, port, n, "idle")
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # Only what the broker side allocated (the client sockets live in this test's thread).
    only_broker = [tracemalloc.Filter(True, "*/mqttgate/*", all_frames=True)]
    diff = after.filter_traces(only_broker).compare_to(before.filter_traces(only_broker), "filename")
    per_connection = sum(stat.size_diff for stat in diff) / n
    assert broker.stats.connections_current == n + 20
    for sock in socks + warm:
        sock.close()
    assert 1000 < per_connection < 7.5 * 1024, per_connection
