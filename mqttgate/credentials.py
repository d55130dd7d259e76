"""Device authentication: argon2id, a verified-credential cache, throttling.

Theory of operation
-------------------
``DeviceAuth.authenticate(username, password, client_id=, peer=)`` answers a
CONNECT. In order:

1. No user name or password -> BAD_USER_NAME_OR_PASSWORD (0x86 / rc 4).
2. Warm cache, change feed live: the cache maps user -> (HMAC(key, user,
   password), the credential row as read when the password was verified). If
   the store's credential listener is live (``Store.credentials_watched``) and
   the entry's MAC matches, the CONNECT is answered from the cached row with no
   database round trip at all. This is safe because every committed change to
   a device row is NOTIFYed to every replica, which drops the entry
   (``credential_changed``), and the whole cache is cleared whenever the
   listener becomes live or stops being live (``credentials_reset``): a missed
   notification can never leave a stale grant behind. In this process the API
   also calls ``invalidate`` right after its commit.
3. Otherwise fetch the credential row (one indexed query). PostgreSQL down ->
   SERVER_UNAVAILABLE (0x88 / rc 3); already connected devices are not
   affected, their ACL was compiled at CONNECT. A cache entry whose stored
   hash equals the current one (and whose MAC matches) is a hit without
   argon2: the fallback when the listener is not live.
   A cache hit bypasses the failure throttle, so an attacker hammering a
   device's user name cannot lock out the device once it has connected.
4. Throttle: too many recent failures for this user name or this source
   address -> CONNECTION_RATE_EXCEEDED (0x9F / rc 3) without verifying.
5. Verify with argon2id in a worker thread behind a CapacityLimiter sized to
   the cores. Concurrent CONNECTs with the same (user, password MAC) share one
   verification (single-flight). When ``auth_max_pending`` verifications are
   already queued or running, answer SERVER_BUSY (0x89 / rc 3) at once rather
   than queue without bound. An unknown user name is verified against a dummy
   hash of the same parameters, so it costs the same time as a wrong password
   and both answer 0x86 (no user enumeration).
6. Right password on a disabled device -> NOT_AUTHORIZED (0x87 / rc 5). (The
   password is checked first so that a disabled answer does not reveal that a
   user name exists to someone without its password.)

The race that step 2 must not lose: a row is read at t0, another replica
rotates it and its NOTIFY arrives at t1, the argon2 verification of the old
row ends at t2 > t1. The NOTIFY found nothing to drop, so caching the old row
at t2 would be a stale grant. Each authenticate therefore holds a *ticket*
from before its fetch until it caches: a notification (or a local
``invalidate``) for that user marks the user's open tickets stale, a reset
changes the store epoch, and a stale ticket caches nothing.

Only successes are cached; failures only count towards the throttle.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
from typing import NoReturn

import argon2
import attrs
import trio
from argon2.exceptions import InvalidHashError, VerificationError

from mqttgate.acl import AclPolicy, CompiledAcl
from mqttgate.auth import AuthDenied, Identity
from mqttgate.config import Config
from mqttgate.histogram import LatencyHistogram
from mqttgate.logs import get_logger
from mqttgate.protocol.reasons import ReasonCode
from mqttgate.store import Credential, Store, StoreUnavailable

log = get_logger("auth")

#: Bytes of entropy in a generated password: 192 bits, above the 128 required.
PASSWORD_BYTES = 24


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


#: argon2 costs tens of milliseconds; queueing can add seconds in a storm.
ARGON2_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Hasher:
    """argon2id hashing and verification off the event loop."""

    def __init__(self, config: Config) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        threads = config.argon2_threads or os.cpu_count() or 1
        #: Each running computation holds argon2_memory_kib of RAM; this bounds it.
        self.limiter = trio.CapacityLimiter(threads)
        self.verifications = 0
        #: Wall time of each verification, queueing for a thread included.
        self.verify_seconds = LatencyHistogram(bounds=ARGON2_BUCKETS_S)

    async def hash(self, password: str) -> str:
        return await trio.to_thread.run_sync(self._hasher.hash, password, limiter=self.limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verifications += 1
        started = trio.current_time()
        try:
            return await trio.to_thread.run_sync(
                self._verify_sync, password_hash, password, limiter=self.limiter
            )
        finally:
            self.verify_seconds.observe(trio.current_time() - started)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(password_hash, password))
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return bool(self._hasher.check_needs_rehash(password_hash))


@attrs.define
class _Entry:
    mac: bytes
    credential: Credential
    expires: float


@attrs.define
class _Flight:
    done: trio.Event = attrs.Factory(trio.Event)
    ok: bool = False
    error: BaseException | None = None


@attrs.define(eq=False)
class _Ticket:
    """One authenticate between its row fetch and its cache write."""

    epoch: int
    stale: bool = False


class VerifiedCache:
    """user -> (HMAC of the password, credential row, expiry); bounded LRU + TTL.

    Never holds a password or a fast unsalted hash of one: the MAC key is random
    per process and never leaves memory. The expiry counts from the
    verification and is never extended by hits.
    """

    def __init__(self, size: int, ttl: float) -> None:
        self._key = secrets.token_bytes(32)
        self._size = size
        self._ttl = ttl
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def mac(self, user: str, password: bytes) -> bytes:
        return hmac.new(self._key, user.encode() + b"\x00" + password, hashlib.sha256).digest()

    def lookup(self, user: str, mac: bytes) -> Credential | None:
        """The credential verified with this password, if unexpired."""
        entry = self._entries.get(user)
        if entry is None or not hmac.compare_digest(entry.mac, mac):
            return None
        if entry.expires <= trio.current_time():
            del self._entries[user]
            return None
        self._entries.move_to_end(user)
        return entry.credential

    def check(self, user: str, mac: bytes, password_hash: str) -> bool:
        """A hit against a freshly read stored hash (the no-listener path)."""
        credential = self.lookup(user, mac)
        if credential is None or credential.password_hash != password_hash:
            self.misses += 1
            return False
        self.hits += 1
        return True

    def remember(self, user: str, mac: bytes, credential: Credential) -> None:
        if self._size <= 0:
            return
        self._entries[user] = _Entry(mac, credential, trio.current_time() + self._ttl)
        self._entries.move_to_end(user)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def invalidate(self, user: str) -> None:
        self._entries.pop(user, None)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, user: str) -> bool:
        return user in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class FailureThrottle:
    """Fixed-window failure counters per key (user name, source address)."""

    #: Keys tracked at most; past it, expired windows are swept first.
    MAX_KEYS = 100_000

    def __init__(self, limit: int, window: float) -> None:
        self._limit = limit
        self._window = window
        self._counts: dict[str, tuple[float, int]] = {}

    def blocked(self, key: str) -> bool:
        started, count = self._counts.get(key, (0.0, 0))
        if trio.current_time() - started >= self._window:
            return False
        return count >= self._limit

    def failed(self, key: str) -> None:
        now = trio.current_time()
        started, count = self._counts.get(key, (now, 0))
        if now - started >= self._window:
            started, count = now, 0
        self._counts[key] = (started, count + 1)
        if len(self._counts) > self.MAX_KEYS:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (s, _) in self._counts.items() if now - s >= self._window]:
            del self._counts[key]
        while len(self._counts) > self.MAX_KEYS:  # all fresh: drop the oldest inserted
            del self._counts[next(iter(self._counts))]


_PUBLIC_DETAIL = {
    ReasonCode.BAD_USER_NAME_OR_PASSWORD: "bad user name or password",
    ReasonCode.SERVER_UNAVAILABLE: "device registry unavailable",
    ReasonCode.CONNECTION_RATE_EXCEEDED: "too many failed attempts, try later",
    ReasonCode.NOT_AUTHORIZED: "not authorized",
    ReasonCode.SERVER_BUSY: "server busy",
}


def _address_of(peer: str) -> str:
    """'1.2.3.4:5678' or '[::1]:5678' -> the host part."""
    host, sep, _port = peer.rpartition(":")
    return host.strip("[]") if sep else peer


class DeviceAuth:
    """The registry-backed :class:`mqttgate.auth.Authenticator`."""

    def __init__(self, store: Store, config: Config, hasher: Hasher | None = None) -> None:
        self._store = store
        self.hasher = hasher if hasher is not None else Hasher(config)
        self.policy = AclPolicy.from_settings(config.acl_publish, config.acl_subscribe)
        self.cache = VerifiedCache(config.auth_cache_size, config.auth_cache_ttl)
        self._max_pending = config.auth_max_pending
        self._pending = 0
        self._flights: dict[tuple[str, bytes], _Flight] = {}
        self._by_user = FailureThrottle(config.auth_fail_limit_user, config.auth_fail_window)
        self._by_address = FailureThrottle(config.auth_fail_limit_address, config.auth_fail_window)
        self._dummy_hash: str | None = None
        #: Single-flight joins (a connect that reused another's verification).
        self.shared_verifications = 0
        #: Cache hits answered with no database round trip (listener live).
        self.unqueried_hits = 0
        #: Cache clears because the credential listener went live or was lost.
        self.cache_resets = 0
        self._tickets: dict[str, list[_Ticket]] = {}
        store.watch_credentials(self)

    @property
    def pending(self) -> int:
        """Verifications queued or running now (bounded by auth_max_pending)."""
        return self._pending

    async def start(self) -> None:
        """Make the dummy hash that unknown user names are verified against."""
        self._dummy_hash = await self.hasher.hash(new_password())

    # ------------------------------------------------------------ Authenticator

    async def authenticate(
        self, username: str | None, password: bytes | None, *, client_id: str, peer: str
    ) -> Identity:
        if not username or password is None:
            self._deny("no_credentials", ReasonCode.BAD_USER_NAME_OR_PASSWORD, username, peer)
        assert username is not None and password is not None
        mac = self.cache.mac(username, password)
        if self._store.credentials_watched:
            cached = self.cache.lookup(username, mac)
            if cached is not None:
                # Every change to this row since it was cached would have
                # dropped the entry (NOTIFY), and a dead listener clears it all.
                self.cache.hits += 1
                self.unqueried_hits += 1
                return self._admit(cached, username, peer)
        ticket = _Ticket(self._store.credentials_epoch)
        self._tickets.setdefault(username, []).append(ticket)
        try:
            return await self._authenticate_fetched(username, password, mac, ticket, client_id, peer)
        finally:
            tickets = self._tickets[username]
            tickets.remove(ticket)
            if not tickets:
                del self._tickets[username]

    async def _authenticate_fetched(
        self, username: str, password: bytes, mac: bytes, ticket: _Ticket, client_id: str, peer: str
    ) -> Identity:
        credential = await self._credential(username, peer)
        if credential is not None and self.cache.check(username, mac, credential.password_hash):
            return self._admit(credential, username, peer)
        address = _address_of(peer)
        if self._by_user.blocked(username) or self._by_address.blocked(address):
            log.warning("auth_throttled", mqtt_user=username, peer=peer, client_id=client_id)
            self._deny("throttled", ReasonCode.CONNECTION_RATE_EXCEEDED, username, peer)
        ok = await self._verify_once(username, mac, password, credential)
        if not ok:
            self._by_user.failed(username)
            self._by_address.failed(address)
            reason = "unknown_user" if credential is None else "bad_password"
            device_id = None if credential is None else credential.device_id
            self._deny(reason, ReasonCode.BAD_USER_NAME_OR_PASSWORD, username, peer, device_id)
        assert credential is not None
        if not ticket.stale and ticket.epoch == self._store.credentials_epoch:
            self.cache.remember(username, mac, credential)
            return self._admit(credential, username, peer)
        # The device changed while its password was being verified (rotated,
        # disabled, deleted, or rehashed): admit only against what the store
        # holds now, or a revocation during the argon2 check would let the
        # old credential in (and nothing would cut it afterwards).
        current = await self._credential(username, peer)
        if current is None or (
            current.password_hash != credential.password_hash
            and not await self._verify_once(username, mac, password, current)
        ):
            device_id = None if current is None else current.device_id
            self._deny("revoked_during_verify", ReasonCode.BAD_USER_NAME_OR_PASSWORD, username, peer, device_id)
        return self._admit(current, username, peer)

    async def _credential(self, username: str, peer: str) -> Credential | None:
        """The user's row as the store holds it now (None: no such user)."""
        try:
            return await self._store.get_credential(username)
        except StoreUnavailable:
            self._deny("store_unavailable", ReasonCode.SERVER_UNAVAILABLE, username, peer)

    def acl_for(self, identity: Identity) -> CompiledAcl:
        return self.policy.compile(identity)

    def invalidate(self, mqtt_user: str) -> None:
        """Forget a cached verification (the API calls this on rotate/disable/delete,
        the store's listener on every NOTIFY). Synchronous: no await between the
        notification and the entry being gone."""
        self.cache.invalidate(mqtt_user)
        for ticket in self._tickets.get(mqtt_user, ()):
            ticket.stale = True

    # ------------------------------------------------------------ CredentialWatcher

    def credential_changed(self, mqtt_user: str) -> None:
        self.invalidate(mqtt_user)

    def credentials_reset(self) -> None:
        """The listener went live or was lost: nothing cached can be trusted
        (open tickets are stale through the store epoch)."""
        self.cache_resets += 1
        self.cache.clear()

    # ------------------------------------------------------------ internals

    def _admit(self, credential: Credential, username: str, peer: str) -> Identity:
        if credential.disabled:
            self._deny("disabled", ReasonCode.NOT_AUTHORIZED, username, peer, credential.device_id)
        return Identity(
            device_id=credential.device_id,
            mqtt_user=credential.mqtt_user,
            device_type=credential.device_type,
        )

    def _deny(
        self, why: str, reason: ReasonCode, username: str | None, peer: str,
        device_id: str | None = None,
    ) -> NoReturn:
        # The broker logs the denial (connect_denied, with mqtt_user, the
        # device id when the user exists, and why); the client only learns
        # the generic reason (no user enumeration).
        raise AuthDenied(
            reason, _PUBLIC_DETAIL.get(reason, "not authorized"), why=why, device_id=device_id
        )

    async def _verify_once(
        self, username: str, mac: bytes, password: bytes, credential: Credential | None
    ) -> bool:
        key = (username, mac)
        flight = self._flights.get(key)
        if flight is not None:
            # Same user and same password already being verified: share it.
            self.shared_verifications += 1
            await flight.done.wait()
            if flight.error is not None:
                raise AuthDenied(ReasonCode.SERVER_BUSY, "shared verification failed")
            return flight.ok
        if self._pending >= self._max_pending:
            log.warning("auth_overloaded", pending=self._pending, mqtt_user=username)
            raise AuthDenied(ReasonCode.SERVER_BUSY, "verification queue full")
        flight = self._flights[key] = _Flight()
        self._pending += 1
        try:
            if credential is None:
                # Same cost as a wrong password: no user enumeration by timing.
                await self.hasher.verify(self._dummy_or_fail(), password.decode("utf-8", "replace"))
                flight.ok = False
            else:
                flight.ok = await self._verify_and_upgrade(credential, password)
            return flight.ok
        except BaseException as error:
            flight.error = error
            raise
        finally:
            self._pending -= 1
            del self._flights[key]
            flight.done.set()

    def _dummy_or_fail(self) -> str:
        if self._dummy_hash is None:
            raise RuntimeError("DeviceAuth.start() was not awaited")
        return self._dummy_hash

    async def _verify_and_upgrade(self, credential: Credential, password: bytes) -> bool:
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None:
            # Generated passwords are ASCII; still spend the time of a verify.
            await self.hasher.verify(self._dummy_or_fail(), "")
            return False
        ok = await self.hasher.verify(credential.password_hash, text)
        if ok and self.hasher.needs_rehash(credential.password_hash):
            # Parameters changed since this hash was made: upgrade it now that
            # the clear password is at hand (compare-and-set on the old hash).
            new_hash = await self.hasher.hash(text)
            try:
                if await self._store.replace_password_hash(
                    credential.mqtt_user, credential.password_hash, new_hash
                ):
                    log.info("password_rehashed", device_id=credential.device_id)
            except StoreUnavailable:
                pass
        return ok
