"""The forwarder's fast paths: try_submit, cached subject/header prefixes and
the synchronous socket write, against a real NATS server."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from mqttgate import headers as h
from mqttgate.forward import ForwardRefused
from mqttgate.forwarder import open_forwarder
from tests.conftest import JetStreamNames
from tests.forwarder.conftest import js_call, read_stream
from tests.forwarder.test_forwarder import DEVICE, config_for, message


@given(st.text(max_size=20))
def test_msg_id_value_keeps_the_lossless_rule(msg_id: str) -> None:
    expected = msg_id if h.is_header_safe(msg_id) else h._b64(msg_id.encode("utf-8"))
    assert h.msg_id_value(msg_id) == expected


async def test_cached_prefixes_give_each_message_its_own_headers(aio_loop: Any, jetstream: JetStreamNames) -> None:
    """Same (client, topic) many times: the cached header lines are reused,
    but every message keeps its own Nats-Msg-Id, QoS and retain flag."""
    with trio.fail_after(20):
        async with open_forwarder(config_for(jetstream)) as forwarder:
            tickets = [await forwarder.submit(message(msg_id=f"s-{n}", retain=n == 1)) for n in range(3)]
            tickets.append(await forwarder.submit(message(msg_id="s-3", client_id="client-2")))
            assert forwarder.submit_nowait(message(qos=0))
            for ticket in tickets:
                await ticket.wait()
        stored = await read_stream(jetstream.url, jetstream.stream)
    assert len(stored) == 5
    by_id = {m.headers.get("Nats-Msg-Id"): m.headers for m in stored}
    assert set(by_id) == {"s-0", "s-1", "s-2", "s-3", None}
    assert by_id["s-0"]["Mqtt-Retain"] == "false"
    assert by_id["s-1"]["Mqtt-Retain"] == "true"
    assert by_id["s-3"]["Mqtt-Client-Id"] == "client-2"
    assert by_id[None]["Mqtt-Qos"] == "0"
    assert all(m.subject == f"{jetstream.prefix}.{DEVICE}.sensors.temp" for m in stored)


async def test_try_submit_queues_without_waiting_and_says_when_full(aio_loop: Any, jetstream: JetStreamNames) -> None:
    config = config_for(jetstream, nats_queue_size=2)
    with trio.fail_after(20):
        async with open_forwarder(config) as forwarder:
            # No checkpoint between these: the pump, waiting for work, takes
            # the first; the queue holds two more; then it is full.
            accepted = [forwarder.try_submit(message(msg_id=f"t-{n}")) for n in range(4)]
            assert all(ticket is not None for ticket in accepted[:3])
            assert accepted[3] is None  # full: the caller awaits submit() instead
            refused = forwarder.try_submit(message(topic="has space"))
            assert refused is not None
            with pytest.raises(ForwardRefused):
                await refused.wait()
            for ticket in accepted[:3]:
                assert ticket is not None
                await ticket.wait()
        info = await js_call(jetstream.url, "stream_info", jetstream.stream)
    assert info.state.messages == 3
    assert forwarder.stats.forwarded_total[1] == 3
