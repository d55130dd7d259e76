"""End-to-end broker behaviour with paho-mqtt, in MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import queue
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from mqttgate.auth import AnonymousAuth
from mqttgate.broker import Broker
from mqttgate.forward import NullForwarder
from tests.broker.paho_client import V5, V311, Paho
from tests.conftest import StartDaemon, make_config, port_of

StartBroker = Callable[..., Awaitable[tuple[Broker, int]]]
run = trio.to_thread.run_sync
BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


@pytest.fixture
async def start_broker(nursery: trio.Nursery) -> Any:
    stops: list[trio.Event] = []

    async def start(**overrides: Any) -> tuple[Broker, int]:
        broker = Broker(make_config(**overrides), AnonymousAuth(), NullForwarder())
        shutdown = trio.Event()
        stops.append(shutdown)
        addresses = await nursery.start(broker.serve, shutdown)
        return broker, port_of(addresses)

    yield start
    for stop in stops:
        stop.set()


@BOTH
async def test_qos_levels_both_directions(start_daemon: StartDaemon, version: int) -> None:
    port = port_of((await start_daemon(make_config())).mqtt)
    with trio.fail_after(20):
        sub = Paho(port, "sub", version)
        pub = Paho(port, "pub", version)
        await run(sub.connect)
        await run(pub.connect)
        assert await run(sub.subscribe, "q/#", 2) == [2]
        assert await run(sub.subscribe, "low/#", 0) == [0]
        for qos in (0, 1, 2):
            await run(pub.publish, f"q/{qos}", f"m{qos}".encode(), qos)
            await run(pub.publish, f"low/{qos}", b"x", qos)
        got = await run(sub.messages, 6)
        q = sorted((m[1], m[3]) for m in got if m[1].startswith("q/"))
        low = sorted((m[1], m[3]) for m in got if m[1].startswith("low/"))
        assert q == [("q/0", 0), ("q/1", 1), ("q/2", 2)]
        # Delivered at the granted maximum (v5 [MQTT-3.8.4-8]).
        assert low == [("low/0", 0), ("low/1", 0), ("low/2", 0)]
        await run(sub.stop)
        await run(pub.stop)


@BOTH
async def test_retained_set_replace_delete(start_broker: StartBroker, version: int) -> None:
    broker, port = await start_broker()
    with trio.fail_after(20):
        pub = Paho(port, "pub", version)
        await run(pub.connect)
        await run(pub.publish, "r/a", b"old", 1, True)
        await run(pub.publish, "r/a", b"new", 1, True)
        await run(pub.publish, "r/b", b"b", 1, True)
        sub = Paho(port, "sub", version)
        await run(sub.connect)
        await run(sub.subscribe, "r/#", 1)
        got = sorted((m[1], m[2], m[4]) for m in await run(sub.messages, 2))
        assert got == [("r/a", b"new", True), ("r/b", b"b", True)]
        # A live delivery is not flagged retained (v311 [MQTT-3.3.1-9]).
        await run(pub.publish, "r/c", b"live", 0, True)
        (msg,) = await run(sub.messages, 1)
        assert (msg[1], msg[4]) == ("r/c", False)
        await run(pub.publish, "r/a", b"", 1, True)  # empty payload deletes
        assert broker.stats.retained_count == 2
        sub2 = Paho(port, "sub2", version)
        await run(sub2.connect)
        await run(sub2.subscribe, "r/a", 1)
        await run(pub.publish, "r/a", b"marker", 1, False)
        (msg,) = await run(sub2.messages, 1)
        assert msg[2] == b"marker"
        for c in (pub, sub, sub2):
            await run(c.stop)


async def test_retain_handling_and_retain_as_published(start_broker: StartBroker) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        pub = Paho(port, "pub", V5)
        await run(pub.connect)
        await run(pub.publish, "rh/x", b"kept", 1, True)
        sub = Paho(port, "sub", V5)
        await run(sub.connect)
        await run(lambda: sub.subscribe("rh/#", 1, retainHandling=2))  # do not send
        await run(lambda: sub.subscribe("rh/+", 1, retainHandling=1))  # only if new
        (msg,) = await run(sub.messages, 1)
        assert (msg[1], msg[4]) == ("rh/x", True)
        await run(lambda: sub.subscribe("rh/+", 1, retainHandling=1))  # exists now: nothing
        await run(lambda: sub.subscribe("rap/#", 1, retainAsPublished=True))
        await run(pub.publish, "rap/y", b"live", 1, True)
        await run(pub.publish, "rh/marker", b"m", 1, False)
        got = await run(sub.messages, 2)
        assert [(m[1], m[4]) for m in got] == [("rap/y", True), ("rh/marker", False)]
        await run(pub.stop)
        await run(sub.stop)


@BOTH
async def test_will_on_abnormal_close_not_on_disconnect(start_broker: StartBroker, version: int) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        watcher = Paho(port, "watcher", version)
        await run(watcher.connect)
        await run(watcher.subscribe, "will/#", 1)
        polite = Paho(port, "polite", version)
        polite.client.will_set("will/polite", b"gone", 1)
        await run(polite.connect)
        await run(polite.stop)
        rude = Paho(port, "rude", version)
        rude.client.will_set("will/rude", b"gone", 1)
        await run(rude.connect)
        await run(rude.kill)
        (msg,) = await run(watcher.messages, 1)
        assert (msg[1], msg[2]) == ("will/rude", b"gone")
        await run(watcher.stop)


async def test_will_with_disconnect_0x04_and_will_delay(start_broker: StartBroker) -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    _, port = await start_broker()
    with trio.fail_after(20):
        watcher = Paho(port, "watcher", V5)
        await run(watcher.connect)
        await run(watcher.subscribe, "will/#", 1)
        c = Paho(port, "w4", V5)
        c.client.will_set("will/w4", b"bye", 1)
        await run(c.connect)
        await run(lambda: c.client.disconnect(reasoncode=_reason(4)))
        (msg,) = await run(watcher.messages, 1)
        assert msg[1] == "will/w4"
        # Will delay 1 s with a session: reconnecting in time cancels it.
        props = Properties(PacketTypes.WILLMESSAGE)
        props.WillDelayInterval = 1
        d = Paho(port, "delayed", V5, clean=False, expiry=60)
        d.client.will_set("will/delayed", b"late", 1, properties=props)
        await run(d.connect)
        await run(d.kill)
        d2 = Paho(port, "delayed", V5, clean=False, expiry=60)
        d2.client.will_set("will/delayed2", b"late", 1, properties=props)
        assert (await run(d2.connect))[2] is True  # session present
        with pytest.raises(queue.Empty):
            await run(watcher.wait, "msg", 2.0)
        # Without a reconnect it is published after the delay.
        await run(d2.kill)
        start = trio.current_time()
        (msg,) = await run(lambda: watcher.messages(1, 5.0))
        assert msg[1] == "will/delayed2"
        assert trio.current_time() - start >= 0.5
        await run(watcher.stop)


def _reason(code: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    return ReasonCode(PacketTypes.DISCONNECT, identifier=code)


@BOTH
async def test_persistent_session_queues_offline(start_broker: StartBroker, version: int) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        sub = Paho(port, "keeper", version, clean=False, expiry=300)
        assert (await run(sub.connect))[2] is False
        await run(sub.subscribe, "p/#", 1)
        await run(sub.stop)
        pub = Paho(port, "pub", version)
        await run(pub.connect)
        for i in range(3):
            await run(pub.publish, "p/x", f"{i}".encode(), 1)
        await run(pub.publish, "p/x", b"q0-not-queued", 0)
        sub2 = Paho(port, "keeper", version, clean=False, expiry=300)
        assert (await run(sub2.connect))[2] is True
        got = [m[2] for m in await run(sub2.messages, 3)]
        assert got == [b"0", b"1", b"2"]
        with pytest.raises(queue.Empty):
            await run(sub2.wait, "msg", 0.5)
        await run(sub2.stop)
        await run(pub.stop)


@BOTH
async def test_takeover(start_broker: StartBroker, version: int) -> None:
    broker, port = await start_broker()
    with trio.fail_after(20):
        first = Paho(port, "same", version)
        await run(first.connect)
        second = Paho(port, "same", version)
        await run(second.connect)
        code = (await run(first.wait, "disconnect"))[1]
        if version == V5:
            assert code == 0x8E  # Session taken over
        assert broker.stats.takeovers == 1
        assert [c.client_id for c in broker.clients()] == ["same"]
        await run(second.stop)
        first.client.loop_stop()


async def test_takeover_flapping_is_throttled(start_broker: StartBroker) -> None:
    broker, port = await start_broker(takeover_flap_limit=1, takeover_flap_delay=0.3)
    with trio.fail_after(20):
        clients = []
        start = trio.current_time()
        for _ in range(4):
            c = Paho(port, "flap", V5)
            c.client.reconnect_delay_set(60, 60)
            await run(c.connect)
            clients.append(c)
        # The 1st takeover is free, the 2nd waits 0.3 s, the 3rd 0.6 s.
        assert trio.current_time() - start >= 0.8
        assert broker.stats.takeovers == 3
        for c in clients:
            c.client.loop_stop()


@BOTH
async def test_shared_subscription_one_member_each(start_broker: StartBroker, version: int) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        members = [Paho(port, f"m{i}", version) for i in range(2)]
        for m in members:
            await run(m.connect)
            await run(m.subscribe, "$share/g/s/#", 1)
        pub = Paho(port, "pub", version)
        await run(pub.connect)
        for i in range(10):
            await run(pub.publish, "s/x", f"{i}".encode(), 1)
        got = [await run(m.messages, 5) for m in members]
        payloads = sorted(int(msg[2]) for batch in got for msg in batch)
        assert payloads == list(range(10))
        for c in (*members, pub):
            await run(c.stop)


async def test_no_local_and_subscription_identifiers(start_broker: StartBroker) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        me = Paho(port, "me", V5)
        other = Paho(port, "other", V5)
        await run(me.connect)
        await run(other.connect)
        await run(lambda: me.subscribe("nl/#", 1, noLocal=True, sub_id=7))
        await run(lambda: me.subscribe("nl/+", 0, sub_id=9))
        await run(me.publish, "nl/x", b"own", 1)
        await run(other.publish, "nl/x", b"theirs", 1)
        (msg,) = await run(me.messages, 1)
        # Own message: only the nl/+ subscription counts (no local on nl/#), QoS 0, id 9.
        # Then the other's: once, at the higher QoS, with both identifiers.
        if msg[2] == b"own":
            assert msg[3] == 0 and msg[5].SubscriptionIdentifier == [9]
            (msg,) = await run(me.messages, 1)
        assert msg[2] == b"theirs" and msg[3] == 1
        assert sorted(msg[5].SubscriptionIdentifier) == [7, 9]
        await run(me.stop)
        await run(other.stop)


async def test_max_packet_size_of_client_respected(start_broker: StartBroker) -> None:
    broker, port = await start_broker()
    with trio.fail_after(20):
        small = Paho(port, "small", V5, connect_props={"MaximumPacketSize": 100})
        await run(small.connect)
        await run(small.subscribe, "big/#", 1)
        pub = Paho(port, "pub", V5)
        await run(pub.connect)
        await run(pub.publish, "big/x", b"x" * 200, 1)
        await run(pub.publish, "big/x", b"ok", 1)
        (msg,) = await run(small.messages, 1)
        assert msg[2] == b"ok"
        assert broker.stats.too_large_dropped == 1
        await run(small.stop)
        await run(pub.stop)


async def test_properties_pass_through(start_broker: StartBroker) -> None:
    _, port = await start_broker()
    with trio.fail_after(20):
        sub = Paho(port, "sub", V5)
        pub = Paho(port, "pub", V5)
        await run(sub.connect)
        await run(pub.connect)
        await run(sub.subscribe, "pp", 1)
        user = [("b", "1"), ("a", "2"), ("b", "3")]
        await run(pub.publish, "pp", b"x", 1, False, {
            "UserProperty": user, "ContentType": "text/plain", "ResponseTopic": "resp",
            "CorrelationData": b"\x01\x02", "PayloadFormatIndicator": 1,
        })
        (msg,) = await run(sub.messages, 1)
        props = msg[5]
        assert props.UserProperty == user
        assert (props.ContentType, props.ResponseTopic, props.CorrelationData) == ("text/plain", "resp", b"\x01\x02")
        assert props.PayloadFormatIndicator == 1
        await run(sub.stop)
        await run(pub.stop)


@BOTH
async def test_kick_and_shutdown(start_daemon: StartDaemon, version: int) -> None:
    from mqttgate.protocol.reasons import ReasonCode

    broker = Broker(make_config(), AnonymousAuth(), NullForwarder())
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = port_of(await nursery.start(broker.serve, shutdown))
        with trio.fail_after(20):
            a = Paho(port, "a", version)
            a.client.reconnect_delay_set(60, 60)
            await run(a.connect)
            assert broker.kick("a", ReasonCode.ADMINISTRATIVE_ACTION)
            code = (await run(a.wait, "disconnect"))[1]
            if version == V5:
                assert code == 0x98
            a.client.loop_stop()
            assert not broker.kick("nobody")
            b = Paho(port, "b", version)
            await run(b.connect)
            shutdown.set()
            code = (await run(b.wait, "disconnect"))[1]
            if version == V5:
                assert code == 0x8B
            b.client.loop_stop()
    assert broker.stats.connections_current == 0
