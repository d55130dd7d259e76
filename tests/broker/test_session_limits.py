"""Limits on the memory of sessions: max_queued_bytes (all queues together)
and max_sessions (docs/broker.md, "Session memory"). Raw clients over TCP."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import trio

from mqttgate.api.ops import MqttgateCollector
from mqttgate.auth import AnonymousAuth, Identity
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from tests.broker.raw import RawClient, connect, frame, publish, s, subscribe
from tests.broker.test_flows import anon, start
from tests.conftest import make_config

#: Every queued entry of a message to "q/t" with a 100-byte payload counts this.
ENTRY = len("q/t") + 100
DISCONNECT = b"\xe0\x00"


def payload(i: int) -> bytes:
    return bytes([i]) * 100


def puback(packet_id: int) -> bytes:
    return bytes([0x40, 2]) + packet_id.to_bytes(2, "big")


def v311_publish(packet: bytes | None) -> tuple[str, int, bytes]:
    """(topic, packet id, payload) of a 3.1.1 QoS 1 PUBLISH."""
    assert packet is not None and packet[0] & 0xF0 == 0x30 and packet[0] & 0x06 == 0x02, packet
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    length = int.from_bytes(packet[i : i + 2], "big")
    topic = packet[i + 2 : i + 2 + length].decode()
    pid = int.from_bytes(packet[i + 2 + length : i + 4 + length], "big")
    return topic, pid, packet[i + 4 + length :]


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the broker's housekeeping task (no event to wait on)."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def hang_up(client: RawClient) -> None:
    """DISCONNECT, then wait for the server's EOF: by then the broker has
    run ``connection_closed`` (the session is offline or gone)."""
    await client.send(DISCONNECT)
    assert await client.eof()
    await client.aclose()


async def offline_subscriber(port: int, client_id: str, topic_filter: str) -> None:
    """A 3.1.1 persistent session subscribed at QoS 1, left offline."""
    client = await RawClient.open(port)
    await client.send(connect(client_id, version=4, clean=False))
    assert await client.packet() == bytes([0x20, 2, 0, 0])
    await client.send(subscribe(1, topic_filter, 1))
    assert await client.packet() == frame(0x90, b"\x00\x01\x01")
    await hang_up(client)


async def resume(port: int, client_id: str) -> tuple[RawClient, bytes | None]:
    client = await RawClient.open(port)
    await client.send(connect(client_id, version=4, clean=False))
    return client, await client.packet()


async def publish_acked(pub: RawClient, i: int) -> None:
    await pub.send(publish("q/t", payload(i), qos=1, packet_id=i))
    assert await pub.packet() == puback(i)


def metric_values(broker: Broker) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in MqttgateCollector({"broker": broker}).collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_queued_bytes_budget_drops_with_its_own_reason_while_others_work(nursery: trio.Nursery) -> None:
    broker = anon(max_queued_bytes=8 * ENTRY)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        for client_id in ("off-a", "off-b"):
            await offline_subscriber(port, client_id, "q/#")
        watcher = await RawClient.connected(port, "watcher")
        await watcher.send(subscribe(1, "q/#", 1))
        assert await watcher.packet() == frame(0x90, b"\x00\x01\x01")
        pub = await RawClient.connected(port, "pub")
        for i in range(1, 7):
            await publish_acked(pub, i)
            # A connected subscriber with room in its window is never queued:
            # it gets every message, the budget full or not.
            topic, pid, body = v311_publish(await watcher.packet())
            assert (topic, body) == ("q/t", payload(i))
            await watcher.send(puback(pid))
        # Messages 1..4 fill both offline queues (8 entries, the whole
        # budget); 5 and 6 are refused for both.
        assert broker.queue_budget.used == 8 * ENTRY
        assert broker.stats.queued_bytes_dropped == 4
        # Not the per-session limit, and nobody connected was disconnected.
        assert broker.stats.queue_dropped == 0
        assert broker.stats.outbox_overflows == 0
        values = metric_values(broker)
        assert values[("mqttgate_messages_dropped_total", (("reason", "queued_bytes_limit"),))] == 4
        assert values[("mqttgate_messages_dropped_total", (("reason", "session_queue_full"),))] == 0
        assert values[("mqttgate_queued_bytes", ())] == 8 * ENTRY
        await watcher.aclose()
        await pub.aclose()


async def test_queued_bytes_are_given_back_when_messages_leave_the_queue(nursery: trio.Nursery) -> None:
    broker = anon(max_queued_bytes=8 * ENTRY)
    budget = broker.queue_budget
    port = await start(nursery, broker)
    with trio.fail_after(10):
        for client_id in ("a", "b"):
            await offline_subscriber(port, client_id, "q/#")
        pub = await RawClient.connected(port, "pub")
        for i in range(1, 6):
            await publish_acked(pub, i)
        assert budget.used == 8 * ENTRY and broker.stats.queued_bytes_dropped == 2
        # Drain "a": resumed, its queue moves into the window and its bytes return.
        a, connack = await resume(port, "a")
        assert connack == bytes([0x20, 2, 1, 0])
        for i in range(1, 5):
            _, pid, body = v311_publish(await a.packet())
            assert body == payload(i)
            await a.send(puback(pid))
        assert budget.used == 4 * ENTRY
        await hang_up(a)
        # Fill again: room for two more messages in each queue, then refusals.
        for i in range(6, 9):
            await publish_acked(pub, i)
        assert budget.used == 8 * ENTRY and broker.stats.queued_bytes_dropped == 4
        # Clean Start discards "b"'s session and its six queued messages.
        b = await RawClient.open(port)
        await b.send(connect("b", version=4, clean=True))
        assert await b.packet() == bytes([0x20, 2, 0, 0])
        assert budget.used == 2 * ENTRY
        await hang_up(b)  # a clean session ends with its connection: nothing queued for it
        await publish_acked(pub, 9)
        assert budget.used == 3 * ENTRY
        a, connack = await resume(port, "a")
        assert connack == bytes([0x20, 2, 1, 0])
        for i in (6, 7, 9):  # 8 was refused by the budget
            _, pid, body = v311_publish(await a.packet())
            assert body == payload(i)
            await a.send(puback(pid))
        assert budget.used == 0
        assert broker.stats.queue_dropped == 0
        await a.aclose()
        await pub.aclose()


async def test_expired_session_gives_its_queued_bytes_back(nursery: trio.Nursery) -> None:
    broker = anon()
    port = await start(nursery, broker)
    with trio.fail_after(10):
        client = await RawClient.open(port)
        # v5 Session Expiry Interval (0x11) of 1 s.
        await client.send(connect("brief", version=5, clean=False, props=b"\x05\x11\x00\x00\x00\x01"))
        assert connack_reason(await client.packet()) == 0
        await client.send(subscribe(1, "q/#", 1, v5=True))
        await client.packet()
        await hang_up(client)
        pub = await RawClient.connected(port, "pub")
        for i in (1, 2):
            await publish_acked(pub, i)
        assert broker.queue_budget.used == 2 * ENTRY
        await until(lambda: broker.router.target("brief") is None)
        assert broker.queue_budget.used == 0
        await pub.aclose()


async def test_connected_subscriber_over_the_budget_is_disconnected_0x97(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    broker = anon(max_inflight=1, max_queued_bytes=2 * ENTRY)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        slow = await RawClient.open(port)
        await slow.send(connect("slow", version=5))
        await slow.packet()
        await slow.send(subscribe(1, "q/t", 1, v5=True))
        await slow.packet()
        pub = await RawClient.connected(port, "pub")
        # 1 goes into the window (never acknowledged), 2 and 3 fill the
        # budget, 4 does not fit: the subscriber is disconnected.
        for i in range(1, 5):
            await publish_acked(pub, i)
        packets = []
        while (packet := await slow.packet()) is not None:
            packets.append(packet)
        assert packets[-1][0] == 0xE0 and packets[-1][2] == 0x97  # Quota exceeded
        assert broker.stats.outbox_overflows == 1
        assert broker.stats.queued_bytes_dropped == 1
        assert broker.stats.queue_dropped == 0
        overflows = [e for e in logged if e["event"] == "outbox_overflow"]
        assert [e["limit"] for e in overflows] == ["max_queued_bytes"]
        # Its session ended with the connection (no expiry): the bytes are back.
        await until(lambda: broker.router.target("slow") is None)
        assert broker.queue_budget.used == 0
        await pub.aclose()


def connack_reason(packet: bytes | None) -> int:
    """The Reason Code (v5) or return code (3.1.1) of a CONNACK."""
    assert packet is not None and packet[0] == 0x20, packet
    return packet[3]


async def test_max_sessions_refuses_new_client_ids_but_not_existing_sessions(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    broker = anon(max_sessions=2)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        await offline_subscriber(port, "keep", "k")  # offline persistent
        live = await RawClient.open(port)
        await live.send(connect("live", version=5))  # connected, clean
        assert connack_reason(await live.packet()) == 0
        assert broker.stats.sessions_count == 2

        refused5 = await RawClient.open(port)
        await refused5.send(connect("new5", version=5))
        connack = await refused5.packet()
        assert connack_reason(connack) == 0x97  # v5 Quota exceeded
        assert connack is not None and connack[2] == 0  # Session Present 0
        assert s("quota exceeded: too many sessions") in connack  # Reason String
        assert await refused5.eof()
        refused4 = await RawClient.open(port)
        await refused4.send(connect("new4", version=4))
        assert await refused4.packet() == bytes([0x20, 2, 0, 3])  # 3.1.1: server unavailable
        assert await refused4.eof()

        # Resuming a session is never refused.
        keep, connack = await resume(port, "keep")
        assert connack == bytes([0x20, 2, 1, 0])
        # Nor is taking one over.
        again = await RawClient.open(port)
        await again.send(connect("live", version=5))
        assert connack_reason(await again.packet()) == 0
        old = await live.packet()
        assert old is not None and old[0] == 0xE0 and old[2] == 0x8E  # Session taken over
        # Nor replacing one with Clean Start (a takeover too, here).
        fresh = await RawClient.open(port)
        await fresh.send(connect("keep", version=4, clean=True))
        assert await fresh.packet() == bytes([0x20, 2, 0, 0])
        assert await keep.eof()
        assert broker.stats.sessions_count == 2
        assert broker.stats.connects_denied == {"QUOTA_EXCEEDED": 2}

        # A session ends: a new client id gets in.
        await hang_up(again)
        assert broker.stats.sessions_count == 1
        newcomer = await RawClient.connected(port, "new4")
        assert broker.stats.sessions_count == 2
        await newcomer.aclose()
        await fresh.aclose()
    denied = [e for e in logged if e["event"] == "connect_denied"]
    assert [(e["client_id"], e["reason"], e["why"]) for e in denied] == [
        ("new5", "QUOTA_EXCEEDED", "max_sessions"),
        ("new4", "QUOTA_EXCEEDED", "max_sessions"),
    ]
    # One warning per 10 s; the second refusal is counted in the next one.
    reached = [e for e in logged if e["event"] == "session_limit_reached"]
    assert len(reached) == 1
    assert reached[0]["client_id"] == "new5" and reached[0]["max_sessions"] == 2
    assert reached[0]["sessions"] == 2 and reached[0]["suppressed"] == 0


class GatedAuth(AnonymousAuth):
    """Admits every client once ``gate`` is set; counts the waiting ones."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.waiting = 0

    async def authenticate(self, username: str | None, password: bytes | None, **kwargs: Any) -> Identity:
        self.waiting += 1
        await self.gate.wait()
        return await super().authenticate(username, password, **kwargs)


async def test_max_sessions_holds_for_connects_authenticated_together(nursery: trio.Nursery) -> None:
    # Both CONNECTs pass the check made before authentication (no session
    # yet); the one that comes second to create its session is refused.
    auth = GatedAuth()
    broker = Broker(make_config(max_sessions=1), auth, NullForwarder())
    port = await start(nursery, broker)
    with trio.fail_after(10):
        clients = []
        for version, client_id in ((4, "first"), (5, "second")):
            client = await RawClient.open(port)
            await client.send(connect(client_id, version=version))
            clients.append(client)
        await until(lambda: auth.waiting == 2)
        auth.gate.set()
        codes = sorted([connack_reason(await client.packet()) for client in clients])
        assert codes in ([0, 3], [0, 0x97])  # which one wins is the scheduler's choice
        assert broker.stats.sessions_count == 1
        assert broker.stats.connects_denied == {"QUOTA_EXCEEDED": 1}
        for client in clients:
            await client.aclose()
