"""A rotate, disable or delete ends the device's live sessions on every replica.

Two daemons on the same database are two replicas. The API of one commits the
change and cuts the sessions it holds itself (``Broker.revoke_device``);
migration 003's trigger NOTIFYs ``mqttgate_revocations`` and every other
replica cuts the sessions it holds through the same method. The replica that
made the change recognises its own notification (the store's ``origin``) and
skips it, so no session is cut twice.

The store-level tests below check the feed itself: which changes are
notified, to whom, and that a writer never hears its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

from mqttgate.credentials import Hasher, new_password
from mqttgate.protocol.reasons import ReasonCode as R
from mqttgate.store import Store
from tests.conftest import StartDaemon, port_of
from tests.registry.conftest import Daemon, registry_config
from tests.registry.http import request
from tests.registry.mqtt import Device
from tests.registry.test_auth import provision as provision_row
from tests.registry.test_auth import until

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

#: The cut must reach the other replica within this (NOTIFY is milliseconds).
CUT_WITHIN_S = 2.0


async def sql(database_url: str, query: str, *args: Any) -> Any:
    """One statement on a connection of its own (a writer with no origin, like
    psql), run in a thread: the daemons' asyncio loops are theirs."""
    import asyncio

    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(asyncio.run, run())


@pytest.fixture
async def replicas(start_daemon: StartDaemon, database_url: str) -> tuple[Daemon, Daemon]:
    pair = []
    for _ in range(2):
        config = registry_config(database_url)
        endpoints = await start_daemon(config)
        assert config.api_token is not None
        pair.append(Daemon(port_of(endpoints.http), port_of(endpoints.mqtt), config.api_token, config))
    return pair[0], pair[1]


async def api(daemon: Daemon, method: str, path: str, json_body: Any = None) -> Any:
    reply = await request(daemon.http_port, method, path, token=daemon.token, json_body=json_body)
    assert reply.status in (200, 201, 204), reply
    return reply.json() if reply.body else None


async def change(daemon: Daemon, device_id: str, action: str) -> dict[str, Any] | None:
    path = f"/devices/{device_id}"
    if action == "rotate":
        result: dict[str, Any] = await api(daemon, "POST", path + "/credentials")
        return result
    if action == "disable":
        await api(daemon, "POST", path + "/disable")
    else:
        await api(daemon, "DELETE", path)
    return None


@pytest.mark.parametrize("v5", [False, True], ids=["v311", "v5"])
async def test_rotation_on_one_replica_cuts_the_session_on_the_other(
    replicas: tuple[Daemon, Daemon], v5: bool
) -> None:
    a, b = replicas
    device = await api(a, "POST", "/devices", {"type": "sensor"})
    user, old_password = device["mqtt_user"], device["mqtt_password"]
    live = Device(b.mqtt_port, user, old_password, v5=v5)
    assert await live.connect() == 0

    rotated = await change(a, device["id"], "rotate")
    assert rotated is not None
    start = trio.current_time()
    code = await live.expect("disconnect", wait_s=CUT_WITHIN_S + 1)
    assert trio.current_time() - start < CUT_WITHIN_S
    if v5:
        assert code == R.SESSION_TAKEN_OVER  # the reason A's own kick uses for a rotation
    else:
        assert code != 0  # 3.1.1: the server just closes
    await trio.to_thread.run_sync(live.client.loop_stop)

    # B no longer admits the old password (its cache entry was dropped too) ...
    again = Device(b.mqtt_port, user, old_password, v5=v5)
    assert await again.connect() == R.BAD_USER_NAME_OR_PASSWORD
    # ... and admits the new one, and that session is not cut by anything late.
    fresh = Device(b.mqtt_port, user, rotated["mqtt_password"], v5=v5)
    assert await fresh.connect() == 0
    assert await fresh.subscribe(f"devices/{user}/#") == [1]
    await fresh.close()


@pytest.mark.parametrize("action", ["disable", "delete"])
async def test_disable_and_delete_on_one_replica_cut_sessions_on_both(
    replicas: tuple[Daemon, Daemon], action: str
) -> None:
    a, b = replicas
    device = await api(a, "POST", "/devices", {"type": "sensor"})
    on_a = Device(a.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=True)
    on_b = Device(b.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=True)
    assert await on_a.connect() == 0 and await on_b.connect() == 0

    await change(a, device["id"], action)
    # A cuts its own at commit, B when the NOTIFY arrives: each exactly once,
    # with the reason of the local kick (0x87: the device may not come back).
    assert await on_a.expect("disconnect", wait_s=CUT_WITHIN_S) == R.NOT_AUTHORIZED
    assert await on_b.expect("disconnect", wait_s=CUT_WITHIN_S) == R.NOT_AUTHORIZED
    for client in (on_a, on_b):
        await trio.to_thread.run_sync(client.client.loop_stop)
    refused = R.NOT_AUTHORIZED if action == "disable" else R.BAD_USER_NAME_OR_PASSWORD
    again = Device(b.mqtt_port, device["mqtt_user"], device["mqtt_password"], v5=True)
    assert await again.connect() == refused


async def test_enable_and_a_change_by_sql_on_another_device_cut_nothing_else(
    replicas: tuple[Daemon, Daemon], database_url: str
) -> None:
    # Enabling a device ends nothing; a disable made directly in SQL (no
    # origin) is cut on every replica, A included, and only that device's.
    a, b = replicas
    keep = await api(a, "POST", "/devices", {"type": "sensor"})
    gone = await api(a, "POST", "/devices", {"type": "sensor"})
    kept = Device(b.mqtt_port, keep["mqtt_user"], keep["mqtt_password"], v5=True)
    cut = [Device(d.mqtt_port, gone["mqtt_user"], gone["mqtt_password"], v5=True) for d in (a, b)]
    assert await kept.connect() == 0
    for client in cut:
        assert await client.connect() == 0
    await api(a, "POST", f"/devices/{keep['id']}/enable")
    await sql(database_url, "UPDATE devices SET disabled_at = now() WHERE id = $1", gone["id"])
    for client in cut:
        assert await client.expect("disconnect", wait_s=CUT_WITHIN_S) == R.NOT_AUTHORIZED
        await trio.to_thread.run_sync(client.client.loop_stop)
    # Notifications arrive in commit order: the enable's (none) would have come first.
    assert kept.events.empty()
    assert await kept.subscribe(f"devices/{keep['mqtt_user']}/#") == [1]
    await kept.close()


# ---------------------------------------------------------------- the feed (store level)


@attrs.define(eq=False)  # hashable: the store holds watchers in a WeakSet
class Revocations:
    """A RevocationWatcher that remembers what it was told."""

    seen: list[tuple[str, str | None]] = attrs.Factory(list)

    def device_revoked(self, change: str, device_id: str | None) -> None:
        self.seen.append((change, device_id))


@attrs.frozen
class Writer:
    store: Store
    heard: Revocations


@pytest.fixture
async def writers(database_url: str, aio_loop: None) -> AsyncIterator[tuple[Writer, Writer]]:
    config = registry_config(database_url)
    async with Store.open(config) as store_a, Store.open(config) as store_b:
        assert store_a.credentials_watched and store_b.credentials_watched  # open waits for it
        pair = []
        for store in (store_a, store_b):
            heard = Revocations()
            store.watch_revocations(heard)
            pair.append(Writer(store, heard))
        yield pair[0], pair[1]


async def test_the_feed_names_the_change_and_skips_the_writer(
    writers: tuple[Writer, Writer], database_url: str
) -> None:
    a, b = writers
    hasher = Hasher(registry_config(database_url))
    device_id, _, _ = await provision_row(a.store, hasher)
    await a.store.set_password_hash(device_id, await hasher.hash(new_password()))
    await a.store.set_disabled(device_id, True)
    await a.store.set_disabled(device_id, True)  # already disabled: nothing new
    await a.store.set_disabled(device_id, False)  # enable: nothing ends
    await a.store.delete_device(device_id)
    expected = [("rotate", device_id), ("disable", device_id), ("delete", device_id)]
    await until(lambda: b.heard.seen == expected)
    # A wrote all of them: it heard none. A marker written by B proves A's
    # listener got that far (notifications arrive in commit order).
    other, _, _ = await provision_row(b.store, hasher)
    await b.store.delete_device(other)
    await until(lambda: a.heard.seen == [("delete", other)])
    assert b.heard.seen == expected


async def test_a_rehash_at_login_ends_nothing_but_a_new_hash_by_sql_does(
    writers: tuple[Writer, Writer], database_url: str
) -> None:
    a, b = writers
    hasher = Hasher(registry_config(database_url))
    device_id, user, password = await provision_row(a.store, hasher)
    old_hash = await sql(database_url, "SELECT password_hash FROM devices WHERE id = $1", device_id)
    # The argon2 parameter upgrade at login: same password, marked as a rehash.
    assert await a.store.replace_password_hash(user, old_hash, await hasher.hash(password))
    # Anything else that changes the hash or the user name is a rotation.
    await sql(database_url, "UPDATE devices SET mqtt_user = mqtt_user || '_x' WHERE id = $1", device_id)
    await until(lambda: a.heard.seen == [("rotate", device_id)])  # origin '': everyone hears it
    await until(lambda: b.heard.seen == [("rotate", device_id)])


async def test_truncate_revokes_every_device(empty_database: str, aio_loop: None) -> None:
    # Its own database: the shared one must keep its rows.
    async with Store.open(registry_config(empty_database)) as store:
        heard = Revocations()
        store.watch_revocations(heard)
        await sql(empty_database, "TRUNCATE devices")
        await until(lambda: heard.seen == [("truncate", None)])

