"""Per-device fairness: max_sessions_per_device and max_queued_bytes_per_device
(docs/broker.md, "Session memory"). One device's firmware, buggy or hostile,
must not take the sessions or the queue budget all devices share.

A real broker on a TCP port, raw clients (tests/broker/raw.py) for the exact
bytes and paho clients (3.1.1 and 5.0) as the second implementation. The
authenticator names a device per user name, as the registry does.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
import trio

from mqttgate.__main__ import build_parser, load_config
from mqttgate.auth import AllowAll, Identity
from mqttgate.broker import Broker
from mqttgate.broker.delivery import SessionHandle
from mqttgate.config import ConfigError
from mqttgate.forward import NullForwarder
from mqttgate.protocol.session import Session
from tests.broker.paho_client import V5, V311, Paho
from tests.broker.raw import RawClient, frame, s, subscribe
from tests.broker.test_flows import anon, start
from tests.broker.test_session_limits import (
    ENTRY,
    connack_reason,
    hang_up,
    payload,
    publish_acked,
    until,
    v311_publish,
)
from tests.conftest import make_config

QUOTA_EXCEEDED = 0x97
PER_DEVICE_DETAIL = "quota exceeded: too many sessions for this device"


class DeviceAuth:
    """Every user name is a device of its own (``dev-<user>``), all allowed;
    no user name is an anonymous client."""

    async def authenticate(
        self, username: str | None, password: bytes | None, *, client_id: str, peer: str
    ) -> Identity:
        if username is None:
            return Identity()
        return Identity(device_id=f"dev-{username}", mqtt_user=username, device_type="test")

    def acl_for(self, identity: Identity) -> Any:
        return AllowAll()


def broker_with(**config: Any) -> Broker:
    return Broker(make_config(**config), DeviceAuth(), NullForwarder())


def session_of(broker: Broker, client_id: str) -> Session:
    handle = broker.router.target(client_id)
    assert isinstance(handle, SessionHandle), client_id
    return handle.session


def connect_as(
    user: str, client_id: str, *, version: int = 4, clean: bool = True, props: bytes = b"\x00"
) -> bytes:
    """CONNECT with a User Name (flag 0x80), no password."""
    flags = 0x80 | (0x02 if clean else 0x00)
    body = s("MQTT") + bytes([version, flags]) + (60).to_bytes(2, "big")
    if version == 5:
        body += props
    return frame(0x10, body + s(client_id) + s(user))


#: v5 CONNECT properties with Session Expiry Interval 60 s: a persistent session.
EXPIRY_60 = b"\x05\x11\x00\x00\x00\x3c"


async def open_as(
    port: int, user: str, client_id: str, *, version: int = 4, clean: bool = True, props: bytes = b"\x00"
) -> tuple[RawClient, bytes | None]:
    client = await RawClient.open(port)
    await client.send(connect_as(user, client_id, version=version, clean=clean, props=props))
    return client, await client.packet()


async def offline_subscriber(port: int, user: str, client_id: str, topic_filter: str) -> None:
    """A 3.1.1 persistent session of ``user``'s device, subscribed at QoS 1, left offline."""
    client, connack = await open_as(port, user, client_id, clean=False)
    assert connack == bytes([0x20, 2, 0, 0])
    await client.send(subscribe(1, topic_filter, 1))
    assert await client.packet() == frame(0x90, b"\x00\x01\x01")
    await hang_up(client)


async def test_per_device_session_cap_refuses_new_ids_of_that_device_only(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    # The cap counts persistent sessions (3.1.1 clean session 0, v5 Session
    # Expiry > 0): those outlive their connection and pile up.
    broker = broker_with(max_sessions_per_device=2)
    quotas = broker.device_quotas
    port = await start(nursery, broker)
    with trio.fail_after(10):
        await offline_subscriber(port, "a", "a-keep", "k")  # offline persistent (3.1.1)
        live, connack = await open_as(port, "a", "a-live", version=5, clean=False, props=EXPIRY_60)
        assert connack_reason(connack) == 0
        assert quotas.persistent("dev-a") == 2

        # Clean sessions of the device at its cap still connect: they end
        # with their connection, bounded by max_connections like any.
        clean = []
        for i in range(3):
            client, connack = await open_as(port, "a", f"a-clean{i}", version=5)
            assert connack_reason(connack) == 0
            clean.append(client)
        assert quotas.sessions("dev-a") == 5 and quotas.persistent("dev-a") == 2

        # A third persistent session of device "a" is refused like
        # max_sessions: v5 CONNACK 0x97 with Session Present 0...
        refused5, connack = await open_as(port, "a", "a-new5", version=5, clean=False, props=EXPIRY_60)
        assert connack_reason(connack) == QUOTA_EXCEEDED
        assert connack is not None and connack[2] == 0  # v5 [MQTT-3.2.2-6]: Session Present 0
        assert s(PER_DEVICE_DETAIL) in connack  # Reason String
        # v5 [MQTT-3.2.2-7]: a CONNACK with a Reason Code >= 0x80 is followed by the close.
        assert await refused5.eof()
        # ...3.1.1 return code 3, Server unavailable (v311 [MQTT-3.2.2-4]: Session Present 0).
        refused4, connack = await open_as(port, "a", "a-new4", version=4, clean=False)
        assert connack == bytes([0x20, 2, 0, 3])
        assert await refused4.eof()
        # Taking over a clean session with an expiry would make a new
        # persistent one: refused too, and the clean session's owner stays.
        converted, connack = await open_as(port, "a", "a-clean0", version=5, clean=False, props=EXPIRY_60)
        assert connack_reason(connack) == QUOTA_EXCEEDED
        assert await converted.eof()
        await clean[0].send(frame(0xC0, b""))
        assert await clean[0].packet() == bytes([0xD0, 0])

        # Another device still gets in, while device "a" is at its cap.
        other, connack = await open_as(port, "b", "b-1", version=4, clean=False)
        assert connack == bytes([0x20, 2, 0, 0])

        # Resuming a persistent session of the device at its cap is never refused.
        keep, connack = await open_as(port, "a", "a-keep", clean=False)
        assert connack == bytes([0x20, 2, 1, 0])  # Session Present 1
        # Nor is taking one over (v5 [MQTT-3.1.4-3]: the old connection gets 0x8E).
        again, connack = await open_as(port, "a", "a-live", version=5, clean=False, props=EXPIRY_60)
        assert connack_reason(connack) == 0
        old = await live.packet()
        assert old is not None and old[0] == 0xE0 and old[2] == 0x8E
        # Nor replacing one with Clean Start (v311 [MQTT-3.1.2-6]).
        fresh, connack = await open_as(port, "a", "a-keep", clean=True)
        assert connack == bytes([0x20, 2, 0, 0])
        assert await keep.eof()
        assert quotas.persistent("dev-a") == 1  # a-keep is a clean session now
        assert broker.stats.connects_denied == {"QUOTA_EXCEEDED": 3}

        # A persistent session of a new client id fits again.
        newcomer, connack = await open_as(port, "a", "a-new4", version=4, clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        assert quotas.persistent("dev-a") == 2
        for client in (newcomer, again, other, fresh, *clean):
            await client.aclose()
    denied = [e for e in logged if e["event"] == "connect_denied"]
    assert [(e["client_id"], e["device_id"], e["reason"], e["why"]) for e in denied] == [
        ("a-new5", "dev-a", "QUOTA_EXCEEDED", "max_sessions_per_device"),
        ("a-new4", "dev-a", "QUOTA_EXCEEDED", "max_sessions_per_device"),
        ("a-clean0", "dev-a", "QUOTA_EXCEEDED", "max_sessions_per_device"),
    ]
    # The same warning as max_sessions, told apart by `limit`; one per 10 s.
    reached = [e for e in logged if e["event"] == "session_limit_reached"]
    assert len(reached) == 1
    assert reached[0]["limit"] == "max_sessions_per_device"
    assert reached[0]["device_id"] == "dev-a" and reached[0]["client_id"] == "a-new5"
    assert reached[0]["sessions"] == 2 and reached[0]["max_sessions_per_device"] == 2
    assert reached[0]["suppressed"] == 0


async def test_global_and_per_device_warnings_are_throttled_apart(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    # A device retrying at its cap must not hide the broker filling up.
    broker = broker_with(max_sessions=2, max_sessions_per_device=1)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        a, connack = await open_as(port, "a", "a-1", clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        refused, connack = await open_as(port, "a", "a-2", clean=False)
        assert connack == bytes([0x20, 2, 0, 3])
        b, connack = await open_as(port, "b", "b-1")
        assert connack == bytes([0x20, 2, 0, 0])
        full, connack = await open_as(port, "c", "c-1", version=5)
        assert connack_reason(connack) == QUOTA_EXCEEDED
        assert connack is not None and s("quota exceeded: too many sessions") in connack
        for client in (a, refused, b, full):
            await client.aclose()
    reached = [(e["limit"], e["client_id"]) for e in logged if e["event"] == "session_limit_reached"]
    assert reached == [("max_sessions_per_device", "a-2"), ("max_sessions", "c-1")]
    denied = [e["why"] for e in logged if e["event"] == "connect_denied"]
    assert denied == ["max_sessions_per_device", "max_sessions"]


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
async def test_paho_client_of_a_device_at_its_cap_is_refused_others_connect(
    nursery: trio.Nursery, version: int
) -> None:
    broker = broker_with(max_sessions_per_device=1)
    port = await start(nursery, broker)
    run = trio.to_thread.run_sync

    def client(user: str, client_id: str) -> Paho:
        # Persistent sessions: what the per-device cap counts.
        paho = Paho(port, client_id, version, clean=False, expiry=60 if version == V5 else None)
        paho.client.username_pw_set(user)
        paho.client.reconnect_delay_set(60, 60)  # one CONNECT per client here
        return paho

    with trio.fail_after(20):
        first = client("a", "a-1")
        assert (await run(first.connect))[1] == 0
        second = client("a", "a-2")
        # paho reports the 3.1.1 return code 3 as 0x88 Server unavailable.
        assert (await run(second.connect))[1] == (QUOTA_EXCEEDED if version == V5 else 0x88)
        await run(second.kill)  # before paho retries the CONNECT
        other = client("b", "b-1")
        assert (await run(other.connect))[1] == 0
        # Same client id, same device: a takeover, never refused.
        takeover = client("a", "a-1")
        assert (await run(takeover.connect))[1] == 0
        async with trio.open_nursery() as closing:  # each takes up to 1 s (paho's loop)
            for paho in (first, other, takeover):
                closing.start_soon(run, paho.kill)
    assert broker.stats.connects_denied == {"QUOTA_EXCEEDED": 1}


async def test_anonymous_clients_are_not_counted_per_device(nursery: trio.Nursery) -> None:
    broker = anon(max_sessions_per_device=1, max_queued_bytes_per_device=ENTRY)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        clients = [await RawClient.connected(port, f"anon-{i}") for i in range(3)]
        assert broker.stats.sessions_count == 3
        for client in clients:
            await client.aclose()


async def test_device_share_of_queued_bytes_keeps_room_for_other_devices(
    nursery: trio.Nursery,
) -> None:
    # Without the share, device "a"'s three offline sessions would want
    # 12 entries of a 10-entry budget; with it they hold 4, and device "b"'s
    # session queues every message.
    broker = broker_with(max_queued_bytes=10 * ENTRY, max_queued_bytes_per_device=4 * ENTRY)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        for client_id in ("a-1", "a-2", "a-3"):
            await offline_subscriber(port, "a", client_id, "q/#")
        await offline_subscriber(port, "b", "b-1", "q/#")
        pub, connack = await open_as(port, "p", "pub")
        assert connack == bytes([0x20, 2, 0, 0])
        for i in range(1, 5):
            await publish_acked(pub, i)
        queued = {cid: len(session_of(broker, cid).queue) for cid in ("a-1", "a-2", "a-3", "b-1")}
        assert sum(queued[cid] for cid in ("a-1", "a-2", "a-3")) == 4  # device a's share
        assert queued["b-1"] == 4
        assert broker.queue_budget.used == 8 * ENTRY  # the global budget still has room
        # Handled as when the global budget is full: dropped for offline
        # sessions, counted as queued_bytes_dropped, not as a full session queue.
        assert broker.stats.queued_bytes_dropped == 12 - 4
        assert broker.stats.queue_dropped == 0 and broker.stats.outbox_overflows == 0

        # Device b's session gets all four, in order (v311 [MQTT-4.6.0-2]).
        b, connack = await open_as(port, "b", "b-1", clean=False)
        assert connack == bytes([0x20, 2, 1, 0])
        for i in range(1, 5):
            topic, pid, body = v311_publish(await b.packet())
            assert (topic, body) == ("q/t", payload(i))
            await b.send(bytes([0x40, 2]) + pid.to_bytes(2, "big"))
        await until(lambda: broker.queue_budget.used == 4 * ENTRY)
        # Device a's share is still full: more messages reach b (online) only.
        await publish_acked(pub, 5)
        topic, pid, body = v311_publish(await b.packet())
        assert body == payload(5)
        assert broker.stats.queued_bytes_dropped == 8 + 3
        # Clean Start discards a-1's session: its bytes return to both budgets.
        a1_bytes = queued["a-1"] * ENTRY
        a1, connack = await open_as(port, "a", "a-1", clean=True)
        assert connack == bytes([0x20, 2, 0, 0])
        assert broker.queue_budget.used == 4 * ENTRY - a1_bytes
        for client in (a1, b, pub):
            await client.aclose()


async def test_connected_subscriber_over_its_device_share_is_disconnected_0x97(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    broker = broker_with(max_inflight=1, max_queued_bytes_per_device=2 * ENTRY)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        slow, connack = await open_as(port, "a", "slow", version=5)
        assert connack_reason(connack) == 0
        await slow.send(subscribe(1, "q/t", 1, v5=True))
        await slow.packet()
        calm, connack = await open_as(port, "b", "calm")
        assert connack == bytes([0x20, 2, 0, 0])
        await calm.send(subscribe(1, "q/t", 1))
        await calm.packet()
        pub, _ = await open_as(port, "p", "pub")
        # "slow": 1 goes into the window (never acknowledged), 2 and 3 are
        # queued (device a's whole share, the global budget far from full),
        # 4 does not fit: disconnected with 0x97 as for the global budget.
        # "calm" (device b) acknowledges each and gets all four.
        for i in range(1, 5):
            await publish_acked(pub, i)
            topic, pid, body = v311_publish(await calm.packet())
            assert (topic, body) == ("q/t", payload(i))
            await calm.send(bytes([0x40, 2]) + pid.to_bytes(2, "big"))
        packets = []
        while (packet := await slow.packet()) is not None:
            packets.append(packet)
        assert packets[-1][0] == 0xE0 and packets[-1][2] == QUOTA_EXCEEDED
        assert broker.stats.outbox_overflows == 1
        assert broker.stats.queued_bytes_dropped == 1
        overflows = [e for e in logged if e["event"] == "outbox_overflow"]
        assert [e["client_id"] for e in overflows] == ["slow"]
        await until(lambda: broker.router.target("slow") is None)
        assert broker.queue_budget.used == 0
        assert broker.device_quotas.sessions("dev-a") == 0
        for client in (calm, pub):
            await client.aclose()


async def test_another_devices_session_is_neither_resumed_nor_taken_over(
    nursery: trio.Nursery, logged: list[MutableMapping[str, Any]]
) -> None:
    # Client ids are the clients' choice: a device that learns another's
    # must not get its queued messages, kick it, or discard its session.
    # v5 0x85 "a valid string but not allowed by the Server" (section
    # 3.2.2.2); 3.1.1 rc 2, identifier rejected. Only the owner may resume.
    broker = broker_with()
    port = await start(nursery, broker)
    with trio.fail_after(10):
        await offline_subscriber(port, "a", "a-sess", "q/#")
        pub, _ = await open_as(port, "p", "pub")
        await publish_acked(pub, 1)  # queued for a's offline session
        for version, clean, expected in (
            (4, False, bytes([0x20, 2, 0, 2])),  # resume
            (4, True, bytes([0x20, 2, 0, 2])),  # Clean Start would discard it
            (5, False, None),
        ):
            intruder, connack = await open_as(port, "b", "a-sess", version=version, clean=clean)
            if expected is not None:
                assert connack == expected
            else:
                assert connack_reason(connack) == 0x85
                assert connack is not None and connack[2] == 0  # Session Present 0
            assert await intruder.eof()
        assert session_of(broker, "a-sess").owner == "dev-a"
        # The owner still finds its session and the queued message.
        owner, connack = await open_as(port, "a", "a-sess", clean=False)
        assert connack == bytes([0x20, 2, 1, 0])
        assert v311_publish(await owner.packet())[2] == payload(1)
        # While the owner is connected, another device cannot take it over.
        intruder, connack = await open_as(port, "b", "a-sess", version=5)
        assert connack_reason(connack) == 0x85
        await owner.send(frame(0xC0, b""))  # PINGREQ: the owner's connection is still up
        assert await owner.packet() == bytes([0xD0, 0])
        denied = [e for e in logged if e["event"] == "connect_denied"]
        assert {e["why"] for e in denied} == {"client_id_of_other_device"}
        assert {e["device_id"] for e in denied} == {"dev-b"}
        for client in (owner, pub, intruder):
            await client.aclose()


async def test_a_deleted_devices_sessions_go_and_its_client_ids_are_free(
    nursery: trio.Nursery,
) -> None:
    broker = broker_with(max_sessions_per_device=0, max_queued_bytes_per_device=0)  # tracked anyway
    port = await start(nursery, broker)
    with trio.fail_after(10):
        await offline_subscriber(port, "a", "a-offline", "q/#")
        live, connack = await open_as(port, "a", "a-live", clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        await offline_subscriber(port, "c", "c-offline", "q/#")
        pub, _ = await open_as(port, "p", "pub")
        await publish_acked(pub, 1)
        used = broker.queue_budget.used
        assert used == 2 * ENTRY  # queued for both offline sessions

        broker.revoke_device("dev-a", "disable")  # expected back: sessions kept
        assert await live.eof()
        await until(lambda: broker.router.target("a-live") is not None and session_of(broker, "a-live").owner is not None)
        assert session_of(broker, "a-offline").owner == "dev-a"

        broker.revoke_device("dev-a", "delete")
        await until(lambda: broker.router.target("a-live") is None)
        assert broker.router.target("a-offline") is None
        assert broker.queue_budget.used == ENTRY  # only c's queued message is left
        assert session_of(broker, "c-offline").owner == "dev-c"
        # The ids are free: another device gets a new session under them.
        other, connack = await open_as(port, "b", "a-offline", clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        for client in (other, pub):
            await client.aclose()


async def test_a_deleted_devices_delayed_will_is_published_as_its_session_ends(
    nursery: trio.Nursery,
) -> None:
    # v5 [MQTT-3.1.2-8]: the Will is published once the Will Delay Interval
    # has passed or the session ends, whichever is first. Deleting the device
    # ends its offline session, so its delayed Will goes out then.
    broker = broker_with()
    port = await start(nursery, broker)
    with trio.fail_after(10):
        watcher, connack = await open_as(port, "w", "watcher")
        assert connack == bytes([0x20, 2, 0, 0])
        await watcher.send(subscribe(1, "wills/#", 0))
        assert await watcher.packet() == frame(0x90, b"\x00\x01\x00")
        # v5 CONNECT: Will flag, Session Expiry 60 s, Will Delay Interval 3600 s.
        flags = 0x80 | 0x04
        body = s("MQTT") + bytes([5, flags]) + (60).to_bytes(2, "big") + EXPIRY_60
        body += s("a-will") + b"\x05\x18\x00\x00\x0e\x10" + s("wills/a") + s("gone") + s("a")
        device = await RawClient.open(port)
        await device.send(frame(0x10, body))
        assert connack_reason(await device.packet()) == 0
        await device.aclose()  # no DISCONNECT: the Will is armed, delayed an hour
        await until(lambda: session_of(broker, "a-will").owner == "dev-a" and broker.stats.connections_current == 1)
        with trio.move_on_after(0.3) as waited:
            await watcher.packet()
        assert waited.cancelled_caught  # the Will still waits for its delay
        broker.revoke_device("dev-a", "delete")
        assert await watcher.packet() == frame(0x30, s("wills/a") + b"gone")  # QoS 0 PUBLISH
        assert broker.router.target("a-will") is None
        await watcher.aclose()


async def test_anonymous_client_and_device_do_not_share_a_session(nursery: trio.Nursery) -> None:
    broker = broker_with()
    port = await start(nursery, broker)
    with trio.fail_after(10):
        device, connack = await open_as(port, "a", "mixed", clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        # An anonymous CONNECT (no user name) with the device's client id.
        body = s("MQTT") + bytes([4, 0x00]) + (60).to_bytes(2, "big") + s("mixed")
        anonymous = await RawClient.open(port)
        await anonymous.send(frame(0x10, body))
        assert await anonymous.packet() == bytes([0x20, 2, 0, 2])
        await device.aclose()


def test_settings_defaults_sizes_and_bad_values() -> None:
    def load(argv: list[str], env: dict[str, str]) -> Any:
        return load_config(build_parser().parse_args(["serve", *argv]), env)

    defaults = load([], {})
    assert defaults.max_sessions_per_device == 100
    assert defaults.max_queued_bytes_per_device == 64 * 1024 * 1024
    config = load(
        ["--max-sessions-per-device", "0"], {"MQTTGATE_MAX_QUEUED_BYTES_PER_DEVICE": "1MiB"}
    )
    assert (config.max_sessions_per_device, config.max_queued_bytes_per_device) == (0, 1024 * 1024)
    for argv, env, source in (
        (["--max-sessions-per-device", "-1"], {}, "--max-sessions-per-device"),
        ([], {"MQTTGATE_MAX_QUEUED_BYTES_PER_DEVICE": "lots"}, "MQTTGATE_MAX_QUEUED_BYTES_PER_DEVICE"),
    ):
        with pytest.raises(ConfigError) as caught:
            load(argv, env)
        assert str(caught.value).startswith(source + ": ")


@pytest.mark.parametrize("change", ["delete", "disable"])
async def test_a_connect_waiting_in_a_takeover_is_cut_by_its_devices_revocation(
    nursery: trio.Nursery, change: str
) -> None:
    """Regression: revoke_device cut only connected clients. A CONNECT of the
    device that was authenticated and waiting in take_over (flap throttle, or
    the old connection closing) then opened a session after the deletion or
    disabling and stayed connected; a device kept one such CONNECT always
    waiting to survive any revocation."""
    broker = broker_with(takeover_flap_limit=1, takeover_flap_delay=5.0)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        first, connack = await open_as(port, "a", "c", clean=False)
        assert connack == bytes([0x20, 2, 0, 0])
        second, connack = await open_as(port, "a", "c", clean=False)  # the one takeover allowed
        assert connack == bytes([0x20, 2, 1, 0])
        assert await first.eof()
        waiting = await RawClient.open(port)
        await waiting.send(connect_as("a", "c", clean=False))  # throttled: waits 5 s
        await until(lambda: len(broker._flaps.get("c", ())) == 2)  # in its throttle sleep
        assert broker.revoke_device("dev-a", change) == 1  # the connected one
        assert await second.eof()
        # No CONNACK: closed, and no session opened for the revoked device.
        assert await waiting.packet() is None
        if change == "delete":
            await until(lambda: broker.router.target("c") is None)
            assert broker.device_quotas.sessions("dev-a") == 0
        else:
            kept = broker.router.target("c")  # kept for the device's return, offline
            assert isinstance(kept, SessionHandle) and kept.session.owner == "dev-a"
            await until(lambda: kept.conn is None)
        assert broker.stats.connections_current == 0


async def test_a_throttled_takeover_never_kicks_the_device_that_took_the_id_meanwhile(
    nursery: trio.Nursery,
) -> None:
    """Regression: take_over re-read the client id's session after its flap
    throttle sleep and kicked whatever connection held it. Device x left a
    CONNECT throttled, let its clean session end, and when device y had
    created a session under the id meanwhile, x's CONNECT kicked y's
    connection (0x8E) before open_session refused x: another device's
    connection cut at will."""
    broker = broker_with(takeover_flap_limit=1, takeover_flap_delay=1.0)
    port = await start(nursery, broker)
    with trio.fail_after(10):
        x1, connack = await open_as(port, "x", "c")  # device x, clean session
        assert connack == bytes([0x20, 2, 0, 0])
        x2, connack = await open_as(port, "x", "c")  # the one takeover allowed
        assert connack == bytes([0x20, 2, 0, 0])
        throttled = await RawClient.open(port)
        await throttled.send(connect_as("x", "c"))  # waits 1 s in take_over
        await until(lambda: len(broker._flaps.get("c", ())) == 2)
        await x2.send(frame(0xE0, b""))  # x leaves: its clean session ends
        assert await x2.eof()
        y, connack = await open_as(port, "y", "c", version=5, clean=False, props=EXPIRY_60)
        assert connack_reason(connack) == 0  # the id is free: device y's now
        # x's throttled CONNECT wakes: refused (rc 2), and y is not touched.
        assert await throttled.packet() == bytes([0x20, 2, 0, 2])
        await y.send(frame(0xC0, b""))  # PINGREQ
        assert await y.packet() == bytes([0xD0, 0])
        assert session_of(broker, "c").owner == "dev-y"
        assert broker.stats.takeovers == 1  # only x's own
        for client in (x1, y):
            await client.aclose()
