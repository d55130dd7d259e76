"""The JetStream forwarder against a real NATS server (no broker involved)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from nats.js.api import StorageType, StreamConfig

from mqttgate import headers as h
from mqttgate.config import Config, ConfigError
from mqttgate.forward import ForwardFailed, ForwardMessage
from mqttgate.forwarder import ForwardRefused, open_forwarder
from mqttgate.protocol.packets import Properties
from tests.conftest import JetStreamNames, make_config
from tests.forwarder.conftest import js_call, read_stream

DEVICE = "0123456789abcdef01234567"


def config_for(js: JetStreamNames, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "forward": True,
        "nats_url": js.url,
        "nats_stream": js.stream,
        "nats_subject_prefix": js.prefix,
        "nats_storage": "memory",
    }
    settings.update(overrides)
    return make_config(**settings)


def message(topic: str = "sensors/temp", qos: int = 1, **overrides: Any) -> ForwardMessage:
    fields: dict[str, Any] = {
        "topic": topic,
        "payload": b"21.5",
        "qos": qos,
        "retain": False,
        "client_id": "client-1",
        "device_id": DEVICE,
        "device_type": "thermometer",
        "mqtt_user": "dev-1",
    }
    fields.update(overrides)
    return ForwardMessage(**fields)


async def test_stream_is_created_with_the_prefix_subjects(aio_loop: Any, jetstream: JetStreamNames) -> None:
    config = config_for(jetstream, nats_duplicate_window=30.0, nats_max_age=3600.0)
    with trio.fail_after(15):
        async with open_forwarder(config) as forwarder:
            assert forwarder.ready()
            assert forwarder.stats.connected
        info = await js_call(jetstream.url, "stream_info", jetstream.stream)
    assert info.config.subjects == [f"{jetstream.prefix}.>"]
    assert info.config.storage == StorageType.MEMORY
    assert info.config.duplicate_window == 30.0
    assert info.config.max_age == 3600.0


async def test_existing_stream_that_does_not_capture_the_prefix_is_a_config_error(
    aio_loop: Any, jetstream: JetStreamNames
) -> None:
    await js_call(
        jetstream.url, "add_stream",
        StreamConfig(name=jetstream.stream, subjects=[f"{jetstream.prefix}x.>"], storage=StorageType.MEMORY),
    )  # fmt: skip
    with trio.fail_after(15), pytest.raises(ConfigError) as caught:
        async with open_forwarder(config_for(jetstream)):
            pass
    assert caught.value.source == "MQTTGATE_NATS_STREAM"
    assert f"{jetstream.prefix}.>" in caught.value.message


async def test_existing_wider_stream_is_accepted(aio_loop: Any, jetstream: JetStreamNames) -> None:
    await js_call(
        jetstream.url, "add_stream",
        StreamConfig(name=jetstream.stream, subjects=[f"{jetstream.prefix}.*.>"], storage=StorageType.MEMORY),
    )  # fmt: skip
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            await (await forwarder.submit(message())).wait()
        stored = await read_stream(jetstream.url, jetstream.stream)
    assert [s.subject for s in stored] == [f"{jetstream.prefix}.{DEVICE}.sensors.temp"]


async def test_qos1_ticket_completes_only_once_the_message_is_stored(
    aio_loop: Any, jetstream: JetStreamNames
) -> None:
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            ticket = await forwarder.submit(message(msg_id="s1-7", retain=True))
            await ticket.wait()
            # Read at once, with the forwarder still open: the ack means stored.
            stored = await read_stream(jetstream.url, jetstream.stream)
    assert len(stored) == 1
    got = stored[0]
    assert got.subject == f"{jetstream.prefix}.{DEVICE}.sensors.temp"
    assert got.data == b"21.5"
    assert got.headers == {
        "Mqtt-Topic": "sensors/temp",
        "Mqtt-Client-Id": "client-1",
        "Mqtt-Device-Id": DEVICE,
        "Mqtt-Device-Type": "thermometer",
        "Mqtt-Username": "dev-1",
        "Mqtt-Qos": "1",
        "Mqtt-Retain": "true",
        "Nats-Msg-Id": "s1-7",
    }
    assert forwarder.stats.forwarded_total[1] == 1
    assert forwarder.stats.ack_latency.count == 1


async def test_v5_properties_travel_as_headers_losslessly(aio_loop: Any, jetstream: JetStreamNames) -> None:
    props = Properties(
        payload_format_indicator=1,
        message_expiry_interval=60,
        content_type="application/json; charset=utf-8",
        response_topic=" replies/\u00e9t\u00e9 ",  # leading/trailing spaces: sent as base64
        correlation_data=b"\x00\xff\r\n",
        user_properties=(("k", "v1"), ("k", "v2"), ("na:me\n", "\u2603 snow"), ("", "")),
    )
    topic = "a.b//c/"  # '.' -> '//', empty level -> '/', trailing '/'
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            await (await forwarder.submit(message(topic=topic, qos=2, properties=props))).wait()
        stored = await read_stream(jetstream.url, jetstream.stream)
    [got] = stored
    assert got.subject == f"{jetstream.prefix}.{DEVICE}.a//b./.c./"
    hdrs = got.headers
    assert h.read_text(hdrs, h.TOPIC) == topic
    assert hdrs["Mqtt-Qos"] == "2"
    assert hdrs["Mqtt-Payload-Format"] == "1"
    assert hdrs["Mqtt-Message-Expiry-Interval"] == "60"
    assert hdrs["Mqtt-Content-Type"] == "application/json; charset=utf-8"
    assert "Mqtt-Response-Topic" not in hdrs
    assert h.read_text(hdrs, h.RESPONSE_TOPIC) == " replies/\u00e9t\u00e9 "
    assert h.read_binary(hdrs, h.CORRELATION_DATA) == b"\x00\xff\r\n"
    assert h.read_user_properties(hdrs) == list(props.user_properties)
    # A QoS 2 message without a broker-given id still dedups its own retries.
    assert hdrs["Nats-Msg-Id"]


async def test_anonymous_client_uses_the_anon_token(aio_loop: Any, jetstream: JetStreamNames) -> None:
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            anon = message(device_id=None, device_type=None, mqtt_user=None, client_id="c x")
            await (await forwarder.submit(anon)).wait()
        [got] = await read_stream(jetstream.url, jetstream.stream)
    assert got.subject == f"{jetstream.prefix}._anon.sensors.temp"
    assert "Mqtt-Device-Id" not in got.headers
    assert got.headers["Mqtt-Client-Id"] == "c x"


async def test_qos0_is_forwarded_without_a_ticket(aio_loop: Any, jetstream: JetStreamNames) -> None:
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            for index in range(100):
                assert forwarder.submit_nowait(message(topic=f"t/{index}", qos=0))
        # Leaving the context flushed the queue and the connection.
        stored = await read_stream(jetstream.url, jetstream.stream)
    assert [s.subject.rsplit(".", 1)[1] for s in stored] == [str(i) for i in range(100)]
    assert all("Nats-Msg-Id" not in s.headers and s.headers["Mqtt-Qos"] == "0" for s in stored)
    assert forwarder.stats.forwarded_total[0] == 100
    assert forwarder.stats.dropped_qos0_total == 0


async def test_a_retransmitted_message_is_stored_once(aio_loop: Any, jetstream: JetStreamNames) -> None:
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            first = await forwarder.submit(message(msg_id="sess-1"))
            await first.wait()
            again = await forwarder.submit(message(msg_id="sess-1"))
            await again.wait()
        stored = await read_stream(jetstream.url, jetstream.stream)
    assert len(stored) == 1
    assert forwarder.stats.duplicates_total == 1


async def test_topic_without_a_subject_is_refused(aio_loop: Any, jetstream: JetStreamNames) -> None:
    with trio.fail_after(15):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            ticket = await forwarder.submit(message(topic="has space"))
            with pytest.raises(ForwardRefused):
                await ticket.wait()
            assert not forwarder.submit_nowait(message(topic="a/*", qos=0))
    assert forwarder.stats.refused_total == 2


async def test_many_publishes_are_in_flight_at_once(aio_loop: Any, jetstream: JetStreamNames) -> None:
    total = 3000
    config = config_for(jetstream, nats_max_pending=256, nats_queue_size=512)
    seen_pending: list[int] = []
    with trio.fail_after(60):
        async with open_forwarder(config) as forwarder:

            async def device(number: int, count: int) -> None:
                tickets = []
                for index in range(count):
                    tickets.append(await forwarder.submit(message(topic=f"d/{number}", msg_id=f"{number}-{index}")))
                    seen_pending.append(forwarder.stats.pending_acks)
                for ticket in tickets:
                    await ticket.wait()

            async with trio.open_nursery() as nursery:
                for number in range(6):
                    nursery.start_soon(device, number, total // 6)
        info = await js_call(jetstream.url, "stream_info", jetstream.stream)
    assert info.state.messages == total
    assert forwarder.stats.forwarded_total[1] == total
    # Not one round trip at a time: many acks were outstanding together.
    assert max(seen_pending) > 50
    assert max(seen_pending) <= 256


async def test_ticket_fails_at_the_deadline_when_nats_is_gone(aio_loop: Any, private_nats: Any) -> None:
    names = JetStreamNames(url=private_nats.url, stream="DEADLINE", prefix="dl")
    config = config_for(names, forward_timeout=1.0)
    with trio.fail_after(30):
        async with open_forwarder(config) as forwarder:
            await (await forwarder.submit(message())).wait()
            await private_nats.stop()
            ticket = await forwarder.submit(message(msg_id="late"))
            started = trio.current_time()
            with pytest.raises(ForwardFailed):
                await ticket.wait()
            assert 0.9 <= trio.current_time() - started <= 2.0
            assert forwarder.stats.failed_total == 1
            assert forwarder.stats.pending_acks == 0  # the slot was freed


async def test_a_stream_deleted_at_runtime_is_created_again(aio_loop: Any, jetstream: JetStreamNames) -> None:
    config = config_for(jetstream, forward_timeout=15.0)
    with trio.fail_after(30):
        async with open_forwarder(config) as forwarder:
            await (await forwarder.submit(message(msg_id="before"))).wait()
            await js_call(jetstream.url, "delete_stream", jetstream.stream)
            # JetStream answers "no responders"; the forwarder re-creates the
            # stream and retries with the same id until it is stored.
            await (await forwarder.submit(message(msg_id="after"))).wait()
            assert forwarder.stats.publish_errors_total >= 1
        stored = await read_stream(jetstream.url, jetstream.stream)
    assert [s.headers["Nats-Msg-Id"] for s in stored] == ["after"]


async def test_leaving_the_context_publishes_what_is_queued_and_waits_for_acks(
    aio_loop: Any, jetstream: JetStreamNames
) -> None:
    config = config_for(jetstream, nats_max_pending=16)
    with trio.fail_after(30):
        async with open_forwarder(config) as forwarder:
            tickets = [await forwarder.submit(message(msg_id=f"q-{index}")) for index in range(300)]
            # A will message: QoS 1 through submit_nowait, nobody waits on it.
            assert forwarder.submit_nowait(message(topic="will", msg_id=None))
        assert forwarder.stats.forwarded_total[1] == 301
        for ticket in tickets:
            await ticket.wait()  # all completed during the drain
        info = await js_call(jetstream.url, "stream_info", jetstream.stream)
    assert info.state.messages == 301
