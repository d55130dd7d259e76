"""DeviceAuth against the real PostgreSQL: answers, cache, single-flight, limits."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest
import trio

from mqttgate.auth import AuthDenied, Identity
from mqttgate.credentials import DeviceAuth, Hasher, VerifiedCache, new_password
from mqttgate.protocol.reasons import ReasonCode
from mqttgate.store import Credential, Store
from tests.conftest import free_port
from tests.registry.conftest import TcpProxy, pg_port, proxied_url, registry_config

pytestmark = pytest.mark.integration

PEER = "10.0.0.1:5000"


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a state change made by other tasks (their DB round trips are
    asyncio I/O, which trio.testing.wait_all_tasks_blocked cannot see)."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - no event to wait on across the asyncio hop
            await trio.sleep(0.005)


async def provision(store: Store, hasher: Hasher, device_type: str = "t") -> tuple[str, str, str]:
    """A device row made like the API makes it; returns (id, user, password)."""
    password = new_password()
    device_id, user = secrets.token_hex(12), "dev_" + secrets.token_hex(8)
    await store.create_device(device_id, device_type, user, await hasher.hash(password))
    return device_id, user, password


async def deny_reason(auth: DeviceAuth, user: str | None, password: bytes | None, peer: str = PEER) -> ReasonCode:
    with pytest.raises(AuthDenied) as caught:
        await auth.authenticate(user, password, client_id="c", peer=peer)
    return caught.value.reason


@pytest.fixture
async def store(database_url: str, aio_loop: None) -> Store:  # type: ignore[misc]
    async with Store.open(registry_config(database_url)) as opened:
        yield opened


async def make_auth(store: Store, database_url: str, **overrides: object) -> DeviceAuth:
    auth = DeviceAuth(store, registry_config(database_url, **overrides))
    await auth.start()
    return auth


async def test_right_password_gives_the_identity(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url)
    device_id, user, password = await provision(store, auth.hasher, "meter")
    identity = await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
    assert identity == Identity(device_id=device_id, mqtt_user=user, device_type="meter")


async def test_wrong_password_and_unknown_user_look_the_same(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url)
    _, user, password = await provision(store, auth.hasher)
    before = auth.hasher.verifications
    assert await deny_reason(auth, user, b"wrong") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert await deny_reason(auth, "dev_nobody", password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    # Both paths spent one argon2 verification (the unknown user against the
    # dummy hash): the same work, so no user enumeration by timing.
    assert auth.hasher.verifications - before == 2
    assert await deny_reason(auth, user, b"\xff\xfe") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert auth.hasher.verifications - before == 3


@pytest.mark.parametrize(("user", "password"), [(None, None), ("", b"x"), ("dev_x", None)])
async def test_missing_credentials_are_bad_credentials(
    store: Store, database_url: str, user: str | None, password: bytes | None
) -> None:
    auth = await make_auth(store, database_url)
    assert await deny_reason(auth, user, password) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


async def test_disabled_device_is_not_authorized_only_with_the_right_password(
    store: Store, database_url: str
) -> None:
    auth = await make_auth(store, database_url)
    device_id, user, password = await provision(store, auth.hasher)
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)  # cached now
    await store.set_disabled(device_id, True)
    await until(lambda: user not in auth.cache)  # the NOTIFY dropped the entry
    assert await deny_reason(auth, user, password.encode()) == ReasonCode.NOT_AUTHORIZED
    assert await deny_reason(auth, user, b"guess") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    await store.set_disabled(device_id, False)
    # The refusal above cached the disabled row; the enable's NOTIFY drops it
    # (the API also invalidates directly, in its own process).
    await until(lambda: user not in auth.cache)
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)


async def test_warm_cache_skips_argon2_and_rotation_invalidates_it(
    store: Store, database_url: str
) -> None:
    auth = await make_auth(store, database_url)
    device_id, user, password = await provision(store, auth.hasher)
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
    verifications = auth.hasher.verifications
    for _ in range(20):
        await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
    assert auth.hasher.verifications == verifications
    assert auth.cache.hits >= 20
    # Rotation in *another* replica (no invalidate call here): its NOTIFY drops
    # the entry (test_credential_feed.py covers the race in detail).
    new = new_password()
    await store.set_password_hash(device_id, await auth.hasher.hash(new))
    await until(lambda: user not in auth.cache)
    assert await deny_reason(auth, user, password.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    await auth.authenticate(user, new.encode(), client_id="c", peer=PEER)
    await store.delete_device(device_id)
    await until(lambda: user not in auth.cache)
    assert await deny_reason(auth, user, new.encode()) == ReasonCode.BAD_USER_NAME_OR_PASSWORD


async def test_a_wrong_password_does_not_poison_the_cache(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url)
    _, user, password = await provision(store, auth.hasher)
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
    await deny_reason(auth, user, b"wrong")
    verifications = auth.hasher.verifications
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
    assert auth.hasher.verifications == verifications


async def test_concurrent_connects_share_one_verification(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url)
    device_id, user, password = await provision(store, auth.hasher)
    before = auth.hasher.verifications
    identities: list[Identity] = []

    async def connect() -> None:
        identities.append(await auth.authenticate(user, password.encode(), client_id="c", peer=PEER))

    # Hold every argon2 thread so that all 30 CONNECTs are in flight together.
    holders = [object() for _ in range(int(auth.hasher.limiter.total_tokens))]
    for holder in holders:
        await auth.hasher.limiter.acquire_on_behalf_of(holder)
    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(connect)
        await until(lambda: auth.pending == 1 and auth.shared_verifications == 29)
        for holder in holders:
            auth.hasher.limiter.release_on_behalf_of(holder)
    assert len(identities) == 30 and {i.device_id for i in identities} == {device_id}
    assert auth.hasher.verifications - before == 1
    assert auth.shared_verifications == 29


@pytest.mark.parametrize("change", ["delete", "disable", "rotate"])
async def test_a_change_during_the_password_check_is_not_admitted(
    store: Store, database_url: str, change: str
) -> None:
    # The device is deleted, disabled or rotated while its argon2 check runs:
    # the CONNECT must be judged against the store as it is now, or the old
    # credential gets in after its revocation.
    auth = await make_auth(store, database_url)
    device_id, user, password = await provision(store, auth.hasher)
    rotated_hash = await auth.hasher.hash(new_password())  # before the argon2 threads are held
    holders = [object() for _ in range(int(auth.hasher.limiter.total_tokens))]
    for holder in holders:
        await auth.hasher.limiter.acquire_on_behalf_of(holder)
    outcome: list[ReasonCode | Identity] = []

    async def connect() -> None:
        try:
            outcome.append(await auth.authenticate(user, password.encode(), client_id="c", peer=PEER))
        except AuthDenied as denied:
            outcome.append(denied.reason)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        await until(lambda: auth.pending == 1)  # waiting for an argon2 thread
        if change == "delete":
            await store.delete_device(device_id)
        elif change == "disable":
            await store.set_disabled(device_id, True)
        else:
            await store.set_password_hash(device_id, rotated_hash)
        auth.invalidate(user)  # what the API (or the store's NOTIFY) does
        for holder in holders:
            auth.hasher.limiter.release_on_behalf_of(holder)
    expected = ReasonCode.NOT_AUTHORIZED if change == "disable" else ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert outcome == [expected]


async def test_full_verification_queue_answers_server_busy(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url, auth_max_pending=2)
    devices = [await provision(store, auth.hasher) for _ in range(3)]
    holders = [object() for _ in range(int(auth.hasher.limiter.total_tokens))]
    for holder in holders:
        await auth.hasher.limiter.acquire_on_behalf_of(holder)
    outcomes: list[object] = []

    async def connect(user: str, password: str) -> None:
        try:
            outcomes.append(await auth.authenticate(user, password.encode(), client_id="c", peer=PEER))
        except AuthDenied as denied:
            outcomes.append(denied.reason)

    async with trio.open_nursery() as nursery:
        for _, user, password in devices[:2]:
            nursery.start_soon(connect, user, password)
        await until(lambda: auth.pending == 2)
        _, user, password = devices[2]
        await connect(user, password)  # two already waiting: no room for a third
        assert outcomes == [ReasonCode.SERVER_BUSY]
        for holder in holders:
            auth.hasher.limiter.release_on_behalf_of(holder)
    assert sum(isinstance(o, Identity) for o in outcomes) == 2


async def test_failures_throttle_the_user_name_but_not_a_cached_device(
    store: Store, database_url: str
) -> None:
    auth = await make_auth(store, database_url, auth_fail_limit_user=3, auth_fail_window=60.0)
    _, user, password = await provision(store, auth.hasher)
    await auth.authenticate(user, password.encode(), client_id="c", peer="10.0.0.9:1")  # cached
    for attempt in range(3):
        peer = f"10.0.1.{attempt}:1"
        assert await deny_reason(auth, user, b"guess", peer) == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    verifications = auth.hasher.verifications
    assert await deny_reason(auth, user, b"guess", "10.0.2.1:1") == ReasonCode.CONNECTION_RATE_EXCEEDED
    assert auth.hasher.verifications == verifications  # throttled before argon2
    # The device itself, already verified, still gets in from its cache entry.
    await auth.authenticate(user, password.encode(), client_id="c", peer="10.0.0.9:1")


async def test_failures_throttle_the_source_address(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url, auth_fail_limit_address=2)
    _, user, password = await provision(store, auth.hasher)
    for name in ("dev_a", "dev_b"):
        assert await deny_reason(auth, name, b"x", "[2001:db8::1]:1000") == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert await deny_reason(auth, user, password.encode(), "[2001:db8::1]:2000") == ReasonCode.CONNECTION_RATE_EXCEEDED
    await auth.authenticate(user, password.encode(), client_id="c", peer="[2001:db8::2]:1000")


async def test_throttle_window_expires(store: Store, database_url: str) -> None:
    auth = await make_auth(store, database_url, auth_fail_limit_user=1, auth_fail_window=0.2)
    _, user, password = await provision(store, auth.hasher)
    await deny_reason(auth, user, b"x")
    assert await deny_reason(auth, user, password.encode()) == ReasonCode.CONNECTION_RATE_EXCEEDED
    await trio.sleep(0.25)  # waiting out the window is the behaviour under test
    await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)


async def test_store_down_is_server_unavailable(
    database_url: str, aio_loop: None, nursery: trio.Nursery
) -> None:
    proxy = TcpProxy(pg_port(database_url))
    await proxy.start(nursery)
    async with Store.open(registry_config(proxied_url(database_url, proxy.port))) as store:
        auth = await make_auth(store, database_url)
        _, user, password = await provision(store, auth.hasher)
        await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)
        await until(lambda: store.credentials_watched)  # the listener connects in the background
        proxy.stop()  # PostgreSQL unreachable from now on
        # The listener sees its connection cut (EOF) and clears the cache; until
        # then a cached device would still be admitted (docs/api.md, trade-offs).
        await until(lambda: not store.credentials_watched)
        assert len(auth.cache) == 0
        for attempt in (password.encode(), b"wrong", password.encode()):
            assert await deny_reason(auth, user, attempt) == ReasonCode.SERVER_UNAVAILABLE
        await proxy.start(nursery)
        await auth.authenticate(user, password.encode(), client_id="c", peer=PEER)


async def test_parameter_upgrade_rehashes_on_login(store: Store, database_url: str) -> None:
    old = await make_auth(store, database_url)
    _, user, password = await provision(store, old.hasher)
    stronger = await make_auth(store, database_url, argon2_time_cost=2)
    await stronger.authenticate(user, password.encode(), client_id="c", peer=PEER)
    credential = await store.get_credential(user)
    assert credential is not None and ",t=2," in credential.password_hash
    await stronger.authenticate(user, password.encode(), client_id="c", peer=PEER)


def cred(user: str, password_hash: str = "h") -> Credential:
    return Credential(device_id="d-" + user, device_type="t", mqtt_user=user, password_hash=password_hash, disabled=False)


def test_cache_is_bounded_and_holds_no_password() -> None:
    cache = VerifiedCache(size=2, ttl=60)

    async def main() -> None:
        for n in range(3):
            mac = cache.mac(f"u{n}", b"secret-password")
            assert b"secret-password" not in mac
            cache.remember(f"u{n}", mac, cred(f"u{n}"))
        assert len(cache) == 2
        assert not cache.check("u0", cache.mac("u0", b"secret-password"), "h")
        assert cache.check("u2", cache.mac("u2", b"secret-password"), "h")
        assert cache.lookup("u2", cache.mac("u2", b"secret-password")) == cred("u2")
        assert not cache.check("u2", cache.mac("u2", b"secret-password"), "other-hash")
        assert not cache.check("u2", cache.mac("u2", b"other"), "h")
        assert cache.lookup("u2", cache.mac("u2", b"other")) is None
        cache.clear()
        assert len(cache) == 0 and cache.lookup("u2", cache.mac("u2", b"secret-password")) is None

    trio.run(main)


def test_cache_entries_expire() -> None:
    async def main() -> None:
        cache = VerifiedCache(size=10, ttl=0.05)
        mac = cache.mac("u", b"p")
        cache.remember("u", mac, cred("u"))
        assert cache.check("u", mac, "h")
        await trio.sleep(0.06)
        assert not cache.check("u", mac, "h")
        assert cache.lookup("u", mac) is None and "u" not in cache

    trio.run(main)


async def test_unreachable_port_store_cannot_open(aio_loop: None) -> None:
    from mqttgate.store import StoreUnavailable

    config = registry_config(f"postgresql://postgres@127.0.0.1:{free_port()}/x", database_startup_timeout=0.1)
    with pytest.raises(StoreUnavailable):
        async with Store.open(config):
            pass


async def test_the_client_cannot_tell_unknown_user_from_wrong_password(
    store: Store, database_url: str
) -> None:
    # v5 clients see AuthDenied.detail as the CONNACK Reason String; only the
    # log (AuthDenied.why) may say which it was.
    auth = await make_auth(store, database_url)
    _, user, _password = await provision(store, auth.hasher)
    denials = []
    for username, password in ((user, b"wrong"), ("dev_nobody", b"whatever")):
        with pytest.raises(AuthDenied) as caught:
            await auth.authenticate(username, password, client_id="c", peer="127.0.0.1:1")
        denials.append(caught.value)
    assert denials[0].detail == denials[1].detail == "bad user name or password"
    assert [d.why for d in denials] == ["bad_password", "unknown_user"]
