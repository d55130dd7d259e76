"""/readyz, /metrics, /clients: over real HTTP against the real daemon, and
readiness failures with stand-in components through the app factory."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from mqttgate.api.app import create_app
from mqttgate.broker.stats import BrokerStats
from mqttgate.forwarder_stats import ForwarderStats
from tests.broker.raw import RawClient, connect
from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.http import request


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def connected(port: int, client_id: str, version: int = 4) -> RawClient:
    client = await RawClient.open(port)
    await client.send(connect(client_id, version=version))
    connack = await client.packet()
    assert connack is not None and connack[0] == 0x20
    assert connack[-1] == 0  # accepted (3.1.1 return code / v5 reason code)
    return client


async def test_readyz_ready_without_token_and_healthz(start_daemon: StartDaemon) -> None:
    endpoints = await start_daemon(make_config())
    port = port_of(endpoints.http)
    reply = await request(port, "GET", "/readyz")
    assert reply.status == 200
    assert reply.json() == {
        "status": "ready", "checks": {"broker": "ok", "store": "disabled", "forwarder": "disabled"},
    }
    assert (await request(port, "GET", "/healthz")).status == 200


async def test_metrics_needs_the_token_and_counts(start_daemon: StartDaemon) -> None:
    config = make_config()
    endpoints = await start_daemon(config)
    http, mqtt = port_of(endpoints.http), port_of(endpoints.mqtt)
    denied = await request(http, "GET", "/metrics")
    assert denied.status == 401
    assert denied.json()["error"] == "unauthorized"
    assert (await request(http, "GET", "/metrics", token="wrong")).status == 401

    client = await connected(mqtt, "metrics-a")
    try:
        reply = await request(http, "GET", "/metrics", token=config.api_token)
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        values = samples(reply.body.decode())
        assert values[("mqttgate_connections", ())] == 1
        assert values[("mqttgate_connects_total", ())] == 1
        assert values[("mqttgate_messages_received_total", (("qos", "0"),))] == 0
        assert ("mqttgate_messages_dropped_total", (("reason", "subscriber_outbox_full"),)) in values
        assert any(name == "mqttgate_build_info" for name, _ in values)
        assert ("mqttgate_process_resident_memory_bytes", ()) in values
    finally:
        await client.aclose()


async def test_denied_connect_is_counted_by_reason(start_daemon: StartDaemon) -> None:
    config = make_config()
    endpoints = await start_daemon(config)
    client = await RawClient.open(port_of(endpoints.mqtt))
    # v5 CONNECT with an authentication method: refused 0x8C (not supported).
    props = bytes([0x05, 0x15]) + b"\x00\x02xx"
    await client.send(connect("auth-method", version=5, props=props))
    connack = await client.packet()
    assert connack is not None and connack[0] == 0x20
    await client.aclose()
    reply = await request(port_of(endpoints.http), "GET", "/metrics", token=config.api_token)
    values = samples(reply.body.decode())
    assert values[("mqttgate_connects_denied_total", (("reason", "BAD_AUTHENTICATION_METHOD"),))] == 1


async def test_clients_list_and_kick(start_daemon: StartDaemon) -> None:
    config = make_config()
    endpoints = await start_daemon(config)
    http, mqtt = port_of(endpoints.http), port_of(endpoints.mqtt)
    assert (await request(http, "GET", "/clients")).status == 401

    v4 = await connected(mqtt, "kick-me/1")
    v5 = await connected(mqtt, "stay", version=5)
    try:
        reply = await request(http, "GET", "/clients", token=config.api_token)
        assert reply.status == 200
        body = reply.json()
        assert body["count"] == 2
        by_id = {c["client_id"]: c for c in body["clients"]}
        assert set(by_id) == {"kick-me/1", "stay"}
        assert by_id["stay"]["protocol_version"] == 5
        assert by_id["kick-me/1"]["protocol_version"] == 4
        assert by_id["stay"]["connected_since"].endswith("Z")
        assert by_id["stay"]["peer"].startswith("127.0.0.1:")
        assert by_id["stay"]["inflight"] == 0

        assert (await request(http, "DELETE", "/clients/nobody", token=config.api_token)).status == 404
        assert (await request(http, "DELETE", "/clients/kick-me%2F1")).status == 401
        kicked = await request(http, "DELETE", "/clients/kick-me%2F1", token=config.api_token)
        assert kicked.status == 204
        with trio.fail_after(5):
            assert await v4.eof()  # 3.1.1: the server closes the connection
        with trio.fail_after(5):
            while True:
                listed = (await request(http, "GET", "/clients", token=config.api_token)).json()
                if listed["count"] == 1:
                    break
                await trio.sleep(0.01)
        assert [c["client_id"] for c in listed["clients"]] == ["stay"]
    finally:
        await v4.aclose()
        await v5.aclose()


# ------------------------------------------------ stand-ins, through the app factory


@attrs.define
class FakeBroker:
    stats: BrokerStats = attrs.Factory(BrokerStats)
    shutting_down: bool = False

    def clients(self) -> list[Any]:
        return []

    def kick(self, client_id: str) -> bool:
        return False


class DownStore:
    async def ping(self) -> None:
        raise OSError("connection refused")


class SlowStore:
    async def ping(self) -> None:
        await trio.sleep_forever()


@attrs.define
class FakeForwarderStats:
    forwarded: int = 7
    queue_depth: int = 3
    ack_failures_total: int = 2


@attrs.define
class FakeForwarder:
    is_ready: Any = True
    stats: FakeForwarderStats = attrs.Factory(FakeForwarderStats)

    def ready(self) -> Any:
        return self.is_ready


async def get(app: Any, path: str, token: str | None = None) -> tuple[int, Any]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(path, headers=headers)
    if response.content_type.startswith("application/json"):
        return response.status_code, await response.get_json()
    return response.status_code, await response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("services", "failing"),
    [
        ({"broker": FakeBroker(shutting_down=True)}, {"broker": "shutting_down"}),
        ({"broker": FakeBroker(), "store": DownStore()}, {"store": "failed: OSError"}),
        ({"broker": FakeBroker(), "forwarder": FakeForwarder(False)}, {"forwarder": "not_ready"}),
        (
            {"broker": FakeBroker(), "forwarder": FakeForwarder("queue_above_high_water")},
            {"forwarder": "queue_above_high_water"},
        ),
        ({}, {"broker": "not_running"}),
    ],
)
async def test_readyz_names_failing_checks(services: dict[str, Any], failing: dict[str, str]) -> None:
    store = services.pop("store", None)
    app = create_app(make_config(), **services)
    if store is not None:
        # A store without migrations/registry: only ping is used here.
        app.extensions["mqttgate"]["store"] = store
    status, body = await get(app, "/readyz")
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["error"] == "not_ready"
    assert body["detail"] == failing
    for name, state in failing.items():
        assert body["checks"][name] == state


async def test_readyz_store_check_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    app = create_app(make_config(), broker=FakeBroker())
    app.extensions["mqttgate"]["store"] = SlowStore()
    status, body = await get(app, "/readyz")
    assert status == 503
    assert body["detail"] == {"store": "timeout"}


async def test_metrics_reads_forwarder_stats_generically() -> None:
    config = make_config()
    app = create_app(config, broker=FakeBroker(), forwarder=FakeForwarder())
    status, text = await get(app, "/metrics", token=config.api_token)
    assert status == 200
    values = samples(text)
    assert values[("mqttgate_forward_forwarded", ())] == 7
    assert values[("mqttgate_forward_queue_depth", ())] == 3
    assert values[("mqttgate_forward_ack_failures_total", ())] == 2
    status, body = await get(app, "/readyz")
    assert status == 200
    assert body["checks"]["forwarder"] == "ok"


@attrs.define
class RealStatsForwarder:
    """The forwarder's real ``ForwarderStats`` (its depth and pending counts are
    properties over callables, which a plain stand-in field would hide)."""

    stats: ForwarderStats

    def ready(self) -> bool:
        return True


def family_names(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


async def test_metrics_export_the_real_forwarder_stats_once_each() -> None:
    # Issue 7 names "forward queue depth" among the metrics; docs/operations.md
    # lists queue depth, pending acks and connected under mqttgate_forward_*.
    stats = ForwarderStats(
        queue_capacity=1000, max_pending=512, queue_depth=lambda: 3, pending_acks=lambda: 5
    )
    stats.connected = True
    stats.forwarded_total[1] = 7
    stats.failed_total = 2
    broker = FakeBroker()
    broker.stats.forward_failed = 2
    config = make_config()
    app = create_app(config, broker=broker, forwarder=RealStatsForwarder(stats))
    status, text = await get(app, "/metrics", token=config.api_token)
    assert status == 200
    # A repeated family makes Prometheus reject the whole scrape; the broker's
    # forward_failed and the forwarder's failed_total used to collide.
    names = family_names(text)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    values = samples(text)
    assert values[("mqttgate_forward_queue_depth", ())] == 3
    assert values[("mqttgate_forward_pending_acks", ())] == 5
    assert values[("mqttgate_forward_connected", ())] == 1
    assert values[("mqttgate_forward_queue_capacity", ())] == 1000
    assert values[("mqttgate_forward_forwarded_total", (("qos", "1"),))] == 7
    assert values[("mqttgate_forward_failed_total", ())] == 2
    assert "# TYPE mqttgate_forward_forwarded_total counter" in text


class FakeCache:
    hits = 5
    misses = 2

    def __len__(self) -> int:
        return 4


@attrs.define
class FakeHasher:
    verifications: int = 2


@attrs.define
class FakeAuth:
    cache: FakeCache = attrs.Factory(FakeCache)
    hasher: FakeHasher = attrs.Factory(FakeHasher)
    shared_verifications: int = 1


async def test_metrics_reads_authenticator_counters() -> None:
    config = make_config()
    app = create_app(config, broker=FakeBroker(), authenticator=FakeAuth())
    status, text = await get(app, "/metrics", token=config.api_token)
    assert status == 200
    values = samples(text)
    assert values[("mqttgate_auth_cache_hits_total", ())] == 5
    assert values[("mqttgate_auth_cache_misses_total", ())] == 2
    assert values[("mqttgate_auth_verifications_total", ())] == 2
    assert values[("mqttgate_auth_shared_verifications_total", ())] == 1
    assert values[("mqttgate_auth_cache_entries", ())] == 4
