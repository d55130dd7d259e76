"""LISTEN/NOTIFY invalidation of the verified-credential cache across replicas.

Two ``Store.open`` on the same database are two replicas: each has its own
pool, its own listening connection and its own ``DeviceAuth``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import attrs
import pytest
import trio
from trio_asyncio import aio_as_trio

from mqttgate.credentials import DeviceAuth, new_password
from mqttgate.protocol.reasons import ReasonCode
from mqttgate.store import Store
from tests.registry.conftest import registry_config
from tests.registry.test_auth import PEER, deny_reason, make_auth, provision, until

pytestmark = pytest.mark.integration


@attrs.define(eq=False)  # hashable: the store holds watchers in a WeakSet
class Recorder:
    """A CredentialWatcher that remembers what it was told."""

    changed: list[str] = attrs.Factory(list)
    resets: int = 0

    def credential_changed(self, mqtt_user: str) -> None:
        self.changed.append(mqtt_user)

    def credentials_reset(self) -> None:
        self.resets += 1


@attrs.frozen
class Replica:
    store: Store
    auth: DeviceAuth
    recorder: Recorder


@pytest.fixture
async def replicas(database_url: str, aio_loop: None) -> AsyncIterator[tuple[Replica, Replica]]:
    config = registry_config(database_url)
    async with Store.open(config) as store_a, Store.open(config) as store_b:
        pair = []
        for store in (store_a, store_b):
            recorder = Recorder()
            store.watch_credentials(recorder)
            pair.append(Replica(store, await make_auth(store, database_url), recorder))
        await until(lambda: store_a.credentials_watched and store_b.credentials_watched)
        yield pair[0], pair[1]


async def admin_execute(database_url: str, sql: str, *args: Any) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return await aio_as_trio(run)()


async def connect(auth: DeviceAuth, user: str, password: str) -> None:
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)


async def test_the_trigger_notifies_every_change_of_a_device_row(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    device_id, user, _password = await provision(a.store, a.auth.hasher)
    assert b.recorder.changed == []  # an INSERT cannot make a cached grant stale
    await a.store.set_password_hash(device_id, await a.auth.hasher.hash(new_password()))
    await until(lambda: b.recorder.changed == [user])
    await a.store.set_disabled(device_id, True)
    await until(lambda: b.recorder.changed == [user] * 2)
    await a.store.set_disabled(device_id, False)
    await until(lambda: b.recorder.changed == [user] * 3)
    await a.store.delete_device(device_id)
    await until(lambda: b.recorder.changed == [user] * 4)
    await until(lambda: a.recorder.changed == [user] * 4)  # the writer's replica hears it too


async def test_a_warm_hit_sends_no_query(replicas: tuple[Replica, Replica]) -> None:
    a, _ = replicas
    _, user, password = await provision(a.store, a.auth.hasher)
    await connect(a.auth, user, password)  # cold: one fetch, one argon2
    queries, verifications = a.store.queries, a.auth.hasher.verifications
    for _ in range(20):
        await connect(a.auth, user, password)
    assert a.store.queries == queries
    assert a.auth.hasher.verifications == verifications
    assert a.auth.unqueried_hits == 20
    # A wrong password is not a hit: it goes to the database and to argon2.
    assert await deny_reason(a.auth, user, b"wrong") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert a.store.queries == queries + 1


async def test_rotate_disable_delete_in_one_replica_stop_the_old_password_in_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    device_id, user, password = await provision(a.store, a.auth.hasher)
    for replica in (a, b):
        await connect(replica.auth, user, password)
        assert user in replica.auth.cache

    # Rotate in A as the API does: commit, then drop A's own entry at once.
    new = new_password()
    await a.store.set_password_hash(device_id, await a.auth.hasher.hash(new))
    a.auth.invalidate(user)
    assert await deny_reason(a.auth, user, password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    await until(lambda: user not in b.auth.cache)  # B's NOTIFY arrived
    assert await deny_reason(b.auth, user, password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    await connect(b.auth, user, new)
    assert user in b.auth.cache

    await a.store.set_disabled(device_id, True)
    await until(lambda: user not in b.auth.cache)
    assert await deny_reason(b.auth, user, new.encode()) == ReasonCode.NOT_AUTHORIZED
    # The disabled row is cached with its flag: still refused with no query.
    queries = b.store.queries
    assert await deny_reason(b.auth, user, new.encode()) == ReasonCode.NOT_AUTHORIZED
    assert b.store.queries == queries

    await a.store.set_disabled(device_id, False)
    await until(lambda: user not in b.auth.cache)
    await connect(b.auth, user, new)
    await a.store.delete_device(device_id)
    await until(lambda: user not in b.auth.cache)
    assert await deny_reason(b.auth, user, new.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


async def test_a_rotation_during_verification_is_not_cached(
    replicas: tuple[Replica, Replica],
) -> None:
    # B reads the row, A rotates while B's argon2 runs, the NOTIFY finds nothing
    # to drop: B must not cache the row it read before the rotation, nor let
    # the old password in (it checks the store again once the verify ends).
    a, b = replicas
    device_id, user, password = await provision(a.store, a.auth.hasher)
    rotated_hash = await a.auth.hasher.hash(new_password())
    holders = [object() for _ in range(int(b.auth.hasher.limiter.total_tokens))]
    for holder in holders:
        await b.auth.hasher.limiter.acquire_on_behalf_of(holder)
    refused: list[ReasonCode] = []

    async def connect_refused() -> None:
        refused.append(await deny_reason(b.auth, user, password.encode()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect_refused)
        await until(lambda: b.auth.pending == 1)  # row fetched, argon2 queued
        await a.store.set_password_hash(device_id, rotated_hash)
        await until(lambda: user in b.recorder.changed)
        for holder in holders:
            b.auth.hasher.limiter.release_on_behalf_of(holder)
    assert refused == [ReasonCode.BAD_USER_NAME_OR_PASSWORD]
    assert user not in b.auth.cache
    assert await deny_reason(b.auth, user, password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


async def test_a_killed_listener_clears_the_cache_and_reconnects(
    replicas: tuple[Replica, Replica], database_url: str
) -> None:
    a, _ = replicas
    _, user, password = await provision(a.store, a.auth.hasher)
    await connect(a.auth, user, password)
    assert user in a.auth.cache
    old_pid, resets = a.store.listener_pid, a.auth.cache_resets
    assert old_pid is not None
    assert await admin_execute(database_url, "SELECT pg_terminate_backend($1)", old_pid)
    # Lost (reset 1) then live again on a new connection (reset 2).
    await until(lambda: a.auth.cache_resets >= resets + 2 and a.store.credentials_watched)
    assert a.store.listener_pid not in (None, old_pid)
    assert user not in a.auth.cache
    # The next CONNECT pays one fetch and one argon2 again, then is warm.
    verifications = a.auth.hasher.verifications
    await connect(a.auth, user, password)
    assert a.auth.hasher.verifications == verifications + 1
    queries = a.store.queries
    await connect(a.auth, user, password)
    assert a.store.queries == queries


async def test_an_empty_notification_clears_everything(
    replicas: tuple[Replica, Replica], database_url: str
) -> None:
    # The TRUNCATE trigger's payload; any replica forgets every user.
    a, _ = replicas
    _, user, password = await provision(a.store, a.auth.hasher)
    await connect(a.auth, user, password)
    resets = a.auth.cache_resets
    await admin_execute(database_url, "SELECT pg_notify('mqttgate_credentials', '')")
    await until(lambda: a.auth.cache_resets == resets + 1)
    assert len(a.auth.cache) == 0 and a.store.credentials_watched


async def test_without_a_listener_every_connect_reads_the_row(database_url: str, aio_loop: None) -> None:
    # The fallback (listener not live): a hit still needs the stored hash, so a
    # rotation elsewhere is refused at once, with no notification at all.
    async with Store.open(registry_config(database_url), listen=False) as store:
        auth = await make_auth(store, database_url)
        device_id, user, password = await provision(store, auth.hasher)
        await connect(auth, user, password)
        queries, verifications = store.queries, auth.hasher.verifications
        for _ in range(5):
            await connect(auth, user, password)
        assert store.queries == queries + 5
        assert auth.hasher.verifications == verifications and auth.unqueried_hits == 0
        await store.set_password_hash(device_id, await auth.hasher.hash(new_password()))
        assert await deny_reason(auth, user, password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
