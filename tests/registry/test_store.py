"""The store against the real PostgreSQL: migrations, queries, outages."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import attrs
import pytest
import trio
from trio_asyncio import aio_as_trio

from mqttgate.store import (
    MIGRATION_LOCK_KEY,
    DeviceExists,
    DeviceNotFound,
    Store,
    StoreUnavailable,
    migrations,
)
from tests.conftest import free_port
from tests.registry.conftest import registry_config

pytestmark = pytest.mark.integration

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


async def fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await aio_as_trio(asyncpg.connect)(url)
    try:
        rows: list[asyncpg.Record] = await aio_as_trio(conn.fetch)(sql)
        return rows
    finally:
        await aio_as_trio(conn.close)()


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [version for version, _, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert versions[0] == 1


async def test_migrations_from_empty_then_rerun_is_a_no_op(
    empty_database: str, aio_loop: None
) -> None:
    config = registry_config(empty_database)
    async with Store.open(config, migrate=False) as store:
        assert await store.migrate() == [v for v, _, _ in migrations()]
        assert await store.migrate() == []
    rows = await fetch(empty_database, "SELECT version, name FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migrations()]
    columns = await fetch(
        empty_database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'devices'",
    )
    assert {r["column_name"] for r in columns} == {
        "id", "type", "mqtt_user", "password_hash", "created_at", "updated_at", "disabled_at"
    }
    # Opening again (the daemon's start-up path) applies nothing either.
    async with Store.open(config) as store:
        await store.ping()


async def test_two_migrate_commands_at_once_apply_each_file_once(empty_database: str) -> None:
    env = {**os.environ, "MQTTGATE_DATABASE_URL": empty_database, "MQTTGATE_LOG_LEVEL": "info"}
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def migrate() -> None:
        results.append(
            await trio.run_process(
                [sys.executable, "-m", "mqttgate", "migrate"], env=env, capture_stdout=True,
                capture_stderr=True, check=False,
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(migrate)
        nursery.start_soon(migrate)
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    applied_events = b"".join(r.stdout for r in results).count(b'"migrations_applied"')
    assert applied_events == 1  # one process applied, the other found nothing to do
    import trio_asyncio

    async with trio_asyncio.open_loop():
        rows = await fetch(empty_database, "SELECT version FROM schema_migrations")
    assert sorted(r["version"] for r in rows) == [v for v, _, _ in migrations()]


async def test_migrate_waits_for_the_advisory_lock(empty_database: str, aio_loop: None) -> None:
    holder = await aio_as_trio(asyncpg.connect)(empty_database)
    try:
        await aio_as_trio(holder.execute)("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        async with Store.open(registry_config(empty_database), migrate=False) as store:
            with trio.move_on_after(0.5) as waited:
                await store.migrate()
            assert waited.cancelled_caught  # blocked behind the other "replica"
            await aio_as_trio(holder.execute)("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            assert await store.migrate() == [v for v, _, _ in migrations()]
    finally:
        await aio_as_trio(holder.close)()


async def test_device_queries(database_url: str, aio_loop: None) -> None:
    async with Store.open(registry_config(database_url)) as store:
        device = await store.create_device("aa" * 12, "kind-store", "dev_store_1", HASH)
        assert device.type == "kind-store" and not device.disabled
        with pytest.raises(DeviceExists):
            await store.create_device("bb" * 12, "kind-store", "dev_store_1", HASH)
        with pytest.raises(DeviceExists):
            await store.create_device("aa" * 12, "kind-store", "dev_store_2", HASH)
        assert await store.get_device(device.id) == device
        credential = await store.get_credential("dev_store_1")
        assert credential is not None
        assert credential.password_hash == HASH and credential.device_id == device.id
        assert "argon2" not in repr(credential)  # the hash stays out of logs and reprs
        assert await store.get_credential("nobody") is None
        disabled = await store.set_disabled(device.id, True)
        assert disabled.disabled and disabled.updated_at >= device.updated_at
        credential = await store.get_credential("dev_store_1")
        assert credential is not None and credential.disabled
        new_hash = HASH.replace("aGFzaG", "bmV3aG")
        assert (await store.set_password_hash(device.id, new_hash)).id == device.id
        assert not await store.replace_password_hash("dev_store_1", HASH, "$argon2id$x")
        assert await store.replace_password_hash("dev_store_1", new_hash, HASH)
        listed = await store.list_devices(device_type="kind-store")
        assert [d.id for d in listed] == [device.id]
        assert attrs.evolve(await store.delete_device(device.id)) is not None
        for call in (store.get_device, store.delete_device):
            with pytest.raises(DeviceNotFound):
                await call(device.id)
        with pytest.raises(DeviceNotFound):
            await store.set_disabled(device.id, False)
        with pytest.raises(DeviceNotFound):
            await store.set_password_hash(device.id, HASH)


async def test_type_longer_than_64_is_refused_by_the_schema_too(
    database_url: str, aio_loop: None
) -> None:
    async with Store.open(registry_config(database_url)) as store:
        with pytest.raises(asyncpg.CheckViolationError):
            await store.create_device("cc" * 12, "t" * 65, "dev_store_long", HASH)
        with pytest.raises(asyncpg.CheckViolationError):
            await store.create_device("cc" * 12, "t", "dev_store_plain", "plaintext")


async def test_unreachable_database_fails_open_after_the_startup_timeout(aio_loop: None) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    config = registry_config(url, database_startup_timeout=0.3)
    start = trio.current_time()
    with pytest.raises(StoreUnavailable):
        async with Store.open(config):
            pass
    assert 0.2 <= trio.current_time() - start < 3


async def test_terminated_backends_give_unavailable_then_recover(
    database_url: str, aio_loop: None
) -> None:
    async with Store.open(registry_config(database_url, database_pool_size=1)) as store:
        await store.ping()
        admin = await aio_as_trio(asyncpg.connect)(database_url)
        try:
            killed = await aio_as_trio(admin.fetchval)(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await aio_as_trio(admin.close)()
        assert killed >= 1
        outcomes = []
        for _ in range(3):
            try:
                await store.ping()
                outcomes.append("ok")
            except StoreUnavailable:
                outcomes.append("unavailable")
        # The broken connection fails at most once; the pool then reconnects.
        assert outcomes[-1] == "ok"
        assert outcomes.count("unavailable") <= 1
