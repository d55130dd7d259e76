"""Devices provisioned over HTTP connect with real MQTT clients (3.1.1 and 5.0),
are refused after rotate/disable/delete, lose live sessions at once, and are
isolated from each other by the default ACL."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import pytest
import trio

from mqttgate.logtool import Filter, filter_lines
from mqttgate.protocol.reasons import ReasonCode as R
from tests.conftest import StartDaemon, port_of
from tests.registry.conftest import Daemon, TcpProxy, pg_port, proxied_url, registry_config
from tests.registry.http import request
from tests.registry.mqtt import Device, raw_connect_v311

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def provision(daemon: Daemon, device_type: str = "sensor") -> dict[str, Any]:
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, json_body={"type": device_type}
    )
    assert reply.status == 201
    body: dict[str, Any] = reply.json()
    return body


async def api(daemon: Daemon, method: str, path: str) -> Any:
    reply = await request(daemon.http_port, method, path, token=daemon.token)
    assert reply.status in (200, 204), reply
    return reply.json() if reply.body else None


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
async def test_provisioned_device_connects_and_wrong_credentials_are_refused(
    daemon: Daemon, v5: bool
) -> None:
    device = await provision(daemon)
    ok = Device(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=v5)
    assert await ok.connect() == 0
    await ok.close()
    for user, password in [
        (device["mqtt_user"], "wrong"),
        ("dev_unknown", device["mqtt_password"]),
        (None, None),
    ]:
        refused = Device(daemon.mqtt_port, user, password, v5=v5)
        # paho reports 3.1.1 rc 4 as 0x86 too; the raw test below checks rc bytes.
        assert await refused.connect() == R.BAD_USER_NAME_OR_PASSWORD


async def test_v311_return_codes_on_the_wire(daemon: Daemon) -> None:
    device = await provision(daemon)
    assert await raw_connect_v311(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"]) == 0
    assert await raw_connect_v311(daemon.mqtt_port, device["mqtt_user"], "nope") == 4
    assert await raw_connect_v311(daemon.mqtt_port, "dev_nobody", "nope") == 4
    await api(daemon, "POST", f"/devices/{device['id']}/disable")
    assert await raw_connect_v311(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"]) == 5


async def test_denials_of_a_device_carry_its_id_for_mqttgate_logs_device(
    daemon: Daemon, logged: list[MutableMapping[str, Any]]
) -> None:
    # Issue 7: `mqttgate logs --device X --event connect_denied` answers "why
    # was this device refused"; X is the id POST /devices returned.
    device = await provision(daemon)
    assert await raw_connect_v311(daemon.mqtt_port, device["mqtt_user"], "nope") == 4
    await api(daemon, "POST", f"/devices/{device['id']}/disable")
    assert await raw_connect_v311(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"]) == 5
    assert await raw_connect_v311(daemon.mqtt_port, "dev_nobody", "nope") == 4
    denied = [e for e in logged if e["event"] == "connect_denied"]
    assert [(e["mqtt_user"], e["device_id"], e["why"]) for e in denied] == [
        (device["mqtt_user"], device["id"], "bad_password"),
        (device["mqtt_user"], device["id"], "disabled"),
        ("dev_nobody", None, "unknown_user"),
    ]
    lines = [json.dumps(e, default=str) for e in logged]
    flt = Filter(devices=frozenset({device["id"]}), events=frozenset({"connect_denied"}))
    found = [json.loads(line)["why"] for line in filter_lines(lines, flt, as_json=True)]
    assert found == ["bad_password", "disabled"]


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("rotate", R.SESSION_TAKEN_OVER),
        ("disable", R.NOT_AUTHORIZED),
        ("delete", R.NOT_AUTHORIZED),
    ],
)
async def test_change_cuts_the_live_session_and_refuses_the_old_credentials(
    daemon: Daemon, v5: bool, action: str, reason: R
) -> None:
    device = await provision(daemon)
    live = Device(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=v5)
    assert await live.connect() == 0
    path = f"/devices/{device['id']}"
    if action == "rotate":
        await api(daemon, "POST", path + "/credentials")
    elif action == "disable":
        await api(daemon, "POST", path + "/disable")
    else:
        await api(daemon, "DELETE", path)
    start = trio.current_time()
    code = await live.expect("disconnect", wait_s=3)
    assert trio.current_time() - start < 1.0
    if v5:
        assert code == reason  # DISCONNECT from the server with our reason code
    else:
        assert code != 0  # 3.1.1 has no DISCONNECT from the server: the socket closes
    await trio.to_thread.run_sync(live.client.loop_stop)
    again = Device(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=v5)
    expected = R.NOT_AUTHORIZED if action == "disable" else R.BAD_USER_NAME_OR_PASSWORD
    assert await again.connect() == expected


async def test_rotated_password_works_and_enable_readmits(daemon: Daemon) -> None:
    device = await provision(daemon)
    rotated = await api(daemon, "POST", f"/devices/{device['id']}/credentials")
    fresh = Device(daemon.mqtt_port, device["mqtt_user"], rotated["mqtt_password"], v5=True)
    assert await fresh.connect() == 0
    await fresh.close()
    await api(daemon, "POST", f"/devices/{device['id']}/disable")
    await api(daemon, "POST", f"/devices/{device['id']}/enable")
    back = Device(daemon.mqtt_port, device["mqtt_user"], rotated["mqtt_password"], v5=True)
    assert await back.connect() == 0
    await back.close()


async def test_devices_are_isolated_by_the_default_acl(daemon: Daemon) -> None:
    a_creds, b_creds = await provision(daemon), await provision(daemon)
    a = Device(daemon.mqtt_port, a_creds["mqtt_user"], a_creds["mqtt_password"], v5=True)
    b = Device(daemon.mqtt_port, b_creds["mqtt_user"], b_creds["mqtt_password"], v5=True)
    old = Device(daemon.mqtt_port, b_creds["mqtt_user"], b_creds["mqtt_password"], v5=False)
    assert await a.connect() == 0 and await b.connect() == 0
    own = f"devices/{b_creds['mqtt_user']}/#"
    assert await b.subscribe("#") == [R.NOT_AUTHORIZED]
    assert await b.subscribe(f"devices/{a_creds['mqtt_user']}/#") == [R.NOT_AUTHORIZED]
    assert await b.subscribe(own) == [1]
    # A may not write into B's namespace (v5 PUBACK 0x87) ...
    assert await a.publish(f"devices/{b_creds['mqtt_user']}/cmd", b"evil") == R.NOT_AUTHORIZED
    assert await a.publish("$SYS/fake", b"x") == R.NOT_AUTHORIZED
    # ... but may publish in its own namespace and elsewhere.
    assert await a.publish(f"devices/{a_creds['mqtt_user']}/t", b"1") in (0, R.NO_MATCHING_SUBSCRIBERS)
    # B publishes to itself and receives only that: A's attempt never arrived.
    b.client.publish(f"devices/{b_creds['mqtt_user']}/echo", b"mine", 1)
    events = dict([await b.next(), await b.next()])  # PUBACK and the echo, either order
    assert events == {"puback": 0, "message": (f"devices/{b_creds['mqtt_user']}/echo", b"mine")}
    await a.close()
    await b.close()
    # 3.1.1 SUBACK failure is 0x80.
    assert await old.connect() == 0
    assert await old.subscribe("#") == [0x80]
    await old.close()


async def test_a_device_cannot_take_another_devices_client_id(daemon: Daemon) -> None:
    # The client id is the client's choice; the session behind it is the
    # device's. Another device gets v5 0x85 / 3.1.1 rc 2 and the owner stays
    # connected (docs/broker.md "Client identifiers").
    a_creds, b_creds = await provision(daemon), await provision(daemon)
    owner = Device(
        daemon.mqtt_port, a_creds["mqtt_user"], a_creds["mqtt_password"], v5=True, client_id="meter-1"
    )
    assert await owner.connect() == 0
    for v5 in (True, False):
        intruder = Device(
            daemon.mqtt_port, b_creds["mqtt_user"], b_creds["mqtt_password"], v5=v5, client_id="meter-1"
        )
        assert await intruder.connect() == R.CLIENT_IDENTIFIER_NOT_VALID
    own = f"devices/{a_creds['mqtt_user']}/echo"
    assert await owner.subscribe(own) == [1]
    owner.client.publish(own, b"still here", 1)
    events = dict([await owner.next(), await owner.next()])
    assert events == {"puback": 0, "message": (own, b"still here")}
    await owner.close()


async def test_postgres_down_refuses_new_connects_but_connected_devices_keep_publishing(
    start_daemon: StartDaemon, database_url: str, nursery: trio.Nursery
) -> None:
    proxy = TcpProxy(pg_port(database_url))
    await proxy.start(nursery)
    config = registry_config(proxied_url(database_url, proxy.port))
    endpoints = await start_daemon(config)
    assert config.api_token is not None
    daemon = Daemon(port_of(endpoints.http), port_of(endpoints.mqtt), config.api_token, config)
    creds = await provision(daemon)
    other = await provision(daemon)
    live = Device(daemon.mqtt_port, creds["mqtt_user"], creds["mqtt_password"], v5=True)
    assert await live.connect() == 0
    proxy.stop()  # PostgreSQL is now unreachable
    late = Device(daemon.mqtt_port, other["mqtt_user"], other["mqtt_password"], v5=True)
    assert await late.connect() == R.SERVER_UNAVAILABLE
    assert await raw_connect_v311(daemon.mqtt_port, other["mqtt_user"], other["mqtt_password"]) == 3
    for n in range(5):
        code = await live.publish(f"devices/{creds['mqtt_user']}/t", str(n).encode())
        assert code in (0, R.NO_MATCHING_SUBSCRIBERS)
    await live.close()
    await proxy.start(nursery)
    back = Device(daemon.mqtt_port, other["mqtt_user"], other["mqtt_password"], v5=True)
    assert await back.connect() == 0
    await back.close()


async def test_metrics_count_logins_and_argon2_time(daemon: Daemon) -> None:
    device = await provision(daemon)
    for _ in range(2):  # the second login is answered from the verified cache
        client = Device(daemon.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=True)
        assert await client.connect() == 0
        await client.close()
    refused = Device(daemon.mqtt_port, device["mqtt_user"], "wrong", v5=True)
    assert await refused.connect() == R.BAD_USER_NAME_OR_PASSWORD
    reply = await request(daemon.http_port, "GET", "/metrics", token=daemon.token)
    assert reply.status == 200
    samples = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['mqttgate_connects_denied_total{reason="BAD_USER_NAME_OR_PASSWORD"}'] >= 1
    assert samples["mqttgate_auth_cache_hits_total"] >= 1
    # Two argon2 verifications at least (first login, wrong password), each timed.
    assert samples['mqttgate_auth_argon2_verify_seconds_bucket{le="+Inf"}'] >= 2
    assert samples["mqttgate_auth_argon2_verify_seconds_sum"] > 0
