"""The daemon end to end: paho publishes, JetStream stores, consumers read.

The daemon runs its own trio-asyncio loop; the test reads the stream with a
plain asyncio nats-py client in a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio

from mqttgate import headers as h
from tests.broker.paho_client import V5, V311, Paho
from tests.conftest import JetStreamNames, StartDaemon, port_of
from tests.forwarder.conftest import PrivateNats, Stored, _aio_read_stream
from tests.forwarder.test_forwarder import config_for


async def stream_contents(url: str, stream: str) -> list[Stored]:
    return await trio.to_thread.run_sync(lambda: asyncio.run(_aio_read_stream(url, stream, 5.0)))


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
async def test_published_messages_reach_the_stream_with_identity_headers(
    start_daemon: StartDaemon, jetstream: JetStreamNames, version: int
) -> None:
    port = port_of((await start_daemon(config_for(jetstream))).mqtt)
    client = Paho(port, f"e2e-{version}", version)
    props: dict[str, Any] | None = None
    if version == V5:
        props = {
            "ContentType": "text/plain",
            "ResponseTopic": "replies/1",
            "CorrelationData": b"\x01\x02",
            "PayloadFormatIndicator": 1,
            "UserProperty": [("site", "lab"), ("site", "roof"), ("\u00fcber", "v\u00e4l")],
        }
    with trio.fail_after(20):
        await trio.to_thread.run_sync(client.connect)
        try:
            # QoS 1: paho returns once PUBACK arrived; then the message is stored.
            await trio.to_thread.run_sync(lambda: client.publish("sensors/a.b/temp", b"\x00 21.5", 1, True, props))
            stored = await stream_contents(jetstream.url, jetstream.stream)
            assert len(stored) == 1
            await trio.to_thread.run_sync(lambda: client.publish("sensors/x", b"q0", 0))
            await trio.to_thread.run_sync(lambda: client.publish("sensors/y", b"q2", 2))
        finally:
            await trio.to_thread.run_sync(client.stop)
        while len(stored) < 3:
            stored = await stream_contents(jetstream.url, jetstream.stream)
    first = stored[0]
    assert first.subject == f"{jetstream.prefix}._anon.sensors.a//b.temp"
    assert first.data == b"\x00 21.5"
    assert first.headers["Mqtt-Topic"] == "sensors/a.b/temp"
    assert first.headers["Mqtt-Client-Id"] == f"e2e-{version}"
    assert first.headers["Mqtt-Qos"] == "1"
    assert first.headers["Mqtt-Retain"] == "true"
    assert first.headers["Nats-Msg-Id"]
    if version == V5:
        assert first.headers["Mqtt-Content-Type"] == "text/plain"
        assert first.headers["Mqtt-Response-Topic"] == "replies/1"
        assert h.read_binary(first.headers, h.CORRELATION_DATA) == b"\x01\x02"
        assert first.headers["Mqtt-Payload-Format"] == "1"
        assert h.read_user_properties(first.headers) == [("site", "lab"), ("site", "roof"), ("\u00fcber", "v\u00e4l")]
    else:
        assert not any(k.startswith(("Mqtt-Content", "Mqtt-User-Prop", "Mqtt-Correlation")) for k in first.headers)
    by_topic = {s.headers["Mqtt-Topic"]: s for s in stored}
    assert by_topic["sensors/x"].headers["Mqtt-Qos"] == "0"
    assert "Nats-Msg-Id" not in by_topic["sensors/x"].headers
    assert by_topic["sensors/y"].headers["Mqtt-Qos"] == "2"
    assert by_topic["sensors/y"].data == b"q2"


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
async def test_puback_is_withheld_while_nats_is_paused(
    start_daemon: StartDaemon, private_nats: PrivateNats, version: int
) -> None:
    names = JetStreamNames(url=private_nats.url, stream="E2EPAUSE", prefix="ep")
    port = port_of((await start_daemon(config_for(names, forward_timeout=60.0))).mqtt)
    client = Paho(port, "pauser", version)
    with trio.fail_after(30):
        await trio.to_thread.run_sync(client.connect)
        try:
            private_nats.pause()
            info = client.client.publish("t/1", b"held", 1)
            # No PUBACK while JetStream cannot store the message.
            await trio.to_thread.run_sync(lambda: info.wait_for_publish(1.5))
            assert not info.is_published()
            private_nats.resume()
            await trio.to_thread.run_sync(lambda: info.wait_for_publish(15))
            assert info.is_published()
            stored = await stream_contents(private_nats.url, "E2EPAUSE")
        finally:
            private_nats.resume()
            await trio.to_thread.run_sync(client.stop)
    assert [s.data for s in stored] == [b"held"]


async def test_v5_gets_a_failure_puback_and_v311_is_disconnected_after_the_deadline(
    start_daemon: StartDaemon, private_nats: PrivateNats
) -> None:
    names = JetStreamNames(url=private_nats.url, stream="E2EDOWN", prefix="ed")
    port = port_of((await start_daemon(config_for(names, forward_timeout=1.0))).mqtt)
    v5 = Paho(port, "v5-down", V5)
    v311 = Paho(port, "v311-down", V311)
    with trio.fail_after(30):
        await trio.to_thread.run_sync(v5.connect)
        await trio.to_thread.run_sync(v311.connect)
        try:
            await private_nats.stop()
            v5.client.publish("t/5", b"x", 1)
            puback = await trio.to_thread.run_sync(lambda: v5.wait("puback", 10))
            assert puback[2] >= 0x80  # v5 3.4.2.1: a failure reason code (0x80 unspecified)
            v311.client.publish("t/3", b"x", 1)
            await trio.to_thread.run_sync(lambda: v311.wait("disconnect", 10))
        finally:
            await trio.to_thread.run_sync(v5.stop)
            await trio.to_thread.run_sync(v311.stop)


async def test_readyz_and_metrics_report_the_real_forwarder(
    start_daemon: StartDaemon, jetstream: JetStreamNames
) -> None:
    from tests.registry.http import request

    config = config_for(jetstream)
    endpoints = await start_daemon(config)
    http_port = port_of(endpoints.http)
    client = Paho(port_of(endpoints.mqtt), "metrics-probe", V5)
    with trio.fail_after(20):
        ready = await request(http_port, "GET", "/readyz")
        assert ready.status == 200, ready.body
        assert ready.json()["checks"]["forwarder"] == "ok"
        await trio.to_thread.run_sync(client.connect)
        try:
            await trio.to_thread.run_sync(lambda: client.publish("sensors/m", b"1", 1))
        finally:
            await trio.to_thread.run_sync(client.stop)
        metrics = await request(http_port, "GET", "/metrics", token=config.api_token)
    assert metrics.status == 200
    text = metrics.body.decode()
    # One QoS 1 message went through JetStream: the ack latency histogram counted it.
    assert 'mqttgate_forward_ack_latency_seconds_bucket{le="+Inf"} 1.0' in text
    assert "mqttgate_forward_ack_latency_seconds_sum" in text


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
async def test_a_topic_with_no_nats_subject_is_refused_not_retried(
    start_daemon: StartDaemon, jetstream: JetStreamNames, version: int
) -> None:
    # "a b" is a valid MQTT topic but no NATS subject can carry it
    # (docs/topics-and-subjects.md). Retrying could never succeed, so the
    # client is told (v5: PUBACK 0x90) or acknowledged-and-dropped (3.1.1, no
    # negative ack), never disconnected into a retransmission loop.
    port = port_of((await start_daemon(config_for(jetstream))).mqtt)
    client = Paho(port, f"refused-{version}", version)
    with trio.fail_after(20):
        await trio.to_thread.run_sync(client.connect)
        try:
            await trio.to_thread.run_sync(lambda: client.publish("sensors/a b", b"x", 1))
            ack = await trio.to_thread.run_sync(lambda: client.wait("puback"))
            assert ack[2] == (0x90 if version == V5 else 0)
            # The connection survived and still forwards.
            await trio.to_thread.run_sync(lambda: client.publish("sensors/ok", b"y", 1))
            assert (await trio.to_thread.run_sync(lambda: client.wait("puback")))[2] == 0
        finally:
            await trio.to_thread.run_sync(client.stop)
    stored = await stream_contents(jetstream.url, jetstream.stream)
    assert [s.headers["Mqtt-Topic"] for s in stored] == ["sensors/ok"]


async def test_a_qos0_burst_larger_than_the_queue_is_stored_in_full(
    start_daemon: StartDaemon, jetstream: JetStreamNames
) -> None:
    """A full forward queue lets the pump run once before a QoS 0 message is
    dropped: with NATS healthy, a burst 25 times the queue loses nothing
    (docs/nats.md, "Delivery guarantees and backpressure")."""
    from tests.broker.raw import RawClient, publish

    port = port_of((await start_daemon(config_for(jetstream, nats_queue_size=16))).mqtt)
    burst = b"".join(publish(f"burst/{index % 7}", b"%d" % index) for index in range(400))
    with trio.fail_after(30):
        client = await RawClient.connected(port, "burst")
        await client.send(burst + b"\xc0\x00")  # ... then PINGREQ
        assert await client.packet() == b"\xd0\x00"  # every PUBLISH before it was handled
        await client.aclose()
        stored = await stream_contents(jetstream.url, jetstream.stream)
        while len(stored) < 400:
            await trio.sleep(0.2)
            stored = await stream_contents(jetstream.url, jetstream.stream)
    assert sorted(int(s.data) for s in stored) == list(range(400))
