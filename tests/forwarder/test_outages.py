"""NATS stopped, restarted, paused and absent at start-up (private nats-server)."""

from __future__ import annotations

import collections
from typing import Any

import trio

from mqttgate.forward import ForwardFailed
from mqttgate.forwarder import JetStreamForwarder, open_forwarder
from tests.conftest import JetStreamNames, free_port
from tests.forwarder.conftest import PrivateNats, js_call, read_stream
from tests.forwarder.test_forwarder import DEVICE, config_for, message


async def test_restart_during_10000_qos1_messages_loses_and_duplicates_nothing(
    aio_loop: Any, private_nats: PrivateNats
) -> None:
    """Several devices stream QoS 1; NATS is stopped (then killed) and restarted. A
    device resubmits with the same id when its ticket fails (what a client
    does when it retransmits). Every acked message is stored exactly once."""
    names = JetStreamNames(url=private_nats.url, stream="RESTART", prefix="rs")
    config = config_for(names, nats_storage="file", forward_timeout=1.0, nats_queue_size=256)
    devices, per_device, window = 8, 1250, 32
    acked: set[str] = set()
    failures = 0
    # Outages start when this many messages are acked.
    marks = {2000: trio.Event(), 5000: trio.Event()}

    async def device(forwarder: JetStreamForwarder, number: int) -> None:
        nonlocal failures
        limiter = trio.Semaphore(window)  # the client's in-flight window

        async def one(index: int) -> None:
            nonlocal failures
            msg = message(topic=f"dev/{number}", device_id=f"{number:024x}", msg_id=f"{number}-{index}")
            try:
                while True:
                    try:
                        await (await forwarder.submit(msg)).wait()
                        break
                    except ForwardFailed:
                        failures += 1  # retransmit, same id
                acked.add(msg.msg_id or "")
                mark = marks.get(len(acked))
                if mark is not None:
                    mark.set()
            finally:
                limiter.release()

        async with trio.open_nursery() as nursery:
            for index in range(per_device):
                await limiter.acquire()
                nursery.start_soon(one, index)

    async def chaos() -> None:
        for number, mark in enumerate(marks.values()):
            await mark.wait()
            if number == 0:
                await private_nats.stop()  # graceful: SIGTERM
            else:
                await private_nats.kill()  # a crash: SIGKILL
            await trio.sleep(2.0)  # an outage longer than forward_timeout: tickets fail
            await private_nats.start()

    with trio.fail_after(240):
        async with open_forwarder(config) as forwarder:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos)
                async with trio.open_nursery() as senders:
                    for number in range(devices):
                        senders.start_soon(device, forwarder, number)
                nursery.cancel_scope.cancel()
        stored = await read_stream(private_nats.url, "RESTART", wait_s=10)
    assert len(acked) == devices * per_device
    ids = collections.Counter(s.headers["Nats-Msg-Id"] for s in stored)
    assert set(ids) == acked
    assert [i for i, n in ids.items() if n > 1] == []
    assert forwarder.stats.disconnects_total >= 2
    assert failures > 0  # the deadline path was exercised, and resubmission healed it
    print(f"failures={failures} retries={forwarder.stats.retries_total} dups={forwarder.stats.duplicates_total}")


async def test_paused_nats_pauses_submitters_and_memory_stays_bounded(
    aio_loop: Any, private_nats: PrivateNats
) -> None:
    names = JetStreamNames(url=private_nats.url, stream="PAUSE", prefix="pz")
    config = config_for(names, nats_queue_size=100, nats_max_pending=50, forward_timeout=30.0)
    submitted = 0
    full = trio.Event()
    never = trio.Event()
    with trio.fail_after(60):
        async with open_forwarder(config) as forwarder:
            await (await forwarder.submit(message())).wait()
            private_nats.pause()
            tickets = []

            async def submitter() -> None:
                nonlocal submitted
                for index in range(1000):
                    tickets.append(await forwarder.submit(message(msg_id=f"p-{index}")))
                    submitted += 1
                    if submitted == 151:
                        full.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submitter)
                # Queue full and every slot taken...
                await full.wait()
                with trio.move_on_after(0.5):  # ...and the submitter stays blocked
                    await never.wait()
                assert forwarder.stats.queue_depth == 100
                assert forwarder.stats.pending_acks == 50
                # Bounded: queue + pending + the one the pump holds, nothing more.
                assert submitted == 151
                assert not forwarder.ready()
                dropped_before = forwarder.stats.dropped_qos0_total
                assert not forwarder.submit_nowait(message(qos=0))
                assert forwarder.stats.dropped_qos0_total == dropped_before + 1
                private_nats.resume()
            for ticket in tickets:
                await ticket.wait()
    assert submitted == 1000
    info = await js_call(private_nats.url, "stream_info", "PAUSE")
    assert info.state.messages == 1001


async def test_start_degraded_then_connect_when_nats_appears(aio_loop: Any, tmp_path: Any) -> None:
    server = PrivateNats(str(tmp_path / "late"), port=free_port())
    names = JetStreamNames(url=server.url, stream="LATE", prefix="lt")
    config = config_for(names, nats_startup_timeout=0.2, forward_timeout=20.0)
    try:
        with trio.fail_after(30):
            async with open_forwarder(config) as forwarder:
                assert not forwarder.ready()
                assert not forwarder.stats.connected
                ticket = await forwarder.submit(message(msg_id="early"))
                await server.start()
                await ticket.wait()  # stored once NATS came up and the stream was created
                assert forwarder.ready()
            stored = await read_stream(server.url, "LATE")
        assert [s.headers["Nats-Msg-Id"] for s in stored] == ["early"]
        assert stored[0].subject == f"lt.{DEVICE}.sensors.temp"
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


async def test_mismatched_stream_found_after_a_degraded_start_stops_the_forwarder(
    aio_loop: Any, tmp_path: Any
) -> None:
    from nats.js.api import StorageType, StreamConfig

    from mqttgate.config import ConfigError

    server = PrivateNats(str(tmp_path / "mismatch"), port=free_port())
    names = JetStreamNames(url=server.url, stream="TAKEN", prefix="mm")
    config = config_for(names, nats_startup_timeout=0.2)
    caught: list[BaseException] = []
    try:
        with trio.fail_after(30):
            # The stream exists (file storage) before the forwarder ever connects.
            await server.start()
            await js_call(server.url, "add_stream", StreamConfig(
                name="TAKEN", subjects=["other.>"], storage=StorageType.FILE))
            await server.stop()
            try:
                async with open_forwarder(config) as forwarder:
                    assert not forwarder.ready()
                    await server.start()
                    await trio.sleep_forever()  # the forwarder's task fails and cancels us
            except BaseExceptionGroup as group:
                caught.extend(group.exceptions)
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
    leaves: list[BaseException] = []
    while caught:
        leaf = caught.pop()
        if isinstance(leaf, BaseExceptionGroup):
            caught.extend(leaf.exceptions)
        else:
            leaves.append(leaf)
    assert [type(leaf) for leaf in leaves] == [ConfigError]


async def test_tls_and_user_password(aio_loop: Any, tmp_path: Any) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = PrivateNats(
        str(tmp_path / "tls"),
        extra=("--tls", "--tlscert", str(cert_file), "--tlskey", str(key_file), "--user", "gw", "--pass", "s3cret"),
    )
    await server.start()
    try:
        names = JetStreamNames(url=f"tls://127.0.0.1:{server.port}", stream="TLS", prefix="tl")
        wrong = config_for(names, nats_tls_ca=str(ca_file), nats_user="gw", nats_password="nope",
                           nats_startup_timeout=1.0)  # fmt: skip
        right = config_for(names, nats_tls_ca=str(ca_file), nats_user="gw", nats_password="s3cret")
        with trio.fail_after(30):
            async with open_forwarder(wrong) as forwarder:
                assert not forwarder.ready()  # refused: degraded, retrying
            async with open_forwarder(right) as forwarder:
                assert forwarder.ready()
                await (await forwarder.submit(message(msg_id="tls"))).wait()
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
