"""The device registry in PostgreSQL: the only module that talks to asyncpg.

Theory of operation
-------------------
asyncpg is an asyncio library; the daemon is trio. The supervisor opens one
``trio_asyncio`` loop for the whole process, and every method here is one named
query written asyncio-style and called from trio with one ``aio_as_trio`` hop
(stack-notes 1.1). The method list *is* the data-access API: no generic
``execute``, no proxies.

Failure model:

* PostgreSQL unreachable, restarting, or a connection cut under us: the method
  raises :class:`StoreUnavailable` (the API answers 503, the broker CONNACK
  0x88 / rc 3). The pool reconnects by itself on the next call.
* ``Store.open`` retries while the server is starting (the TCP port accepts
  before PostgreSQL does, ``CannotConnectNowError``) until
  ``database_startup_timeout``, then raises StoreUnavailable.
* Unique-constraint violations raise :class:`DeviceExists`; the caller draws
  new random ids and tries again.
* Closing the pool is shielded from cancellation, because shutdown runs in an
  already-cancelled scope (stack-notes 1.3, gotcha 4).

Migrations are the numbered ``mqttgate/sql/NNN_name.sql`` files, applied in
order, each in its own transaction, under a session-level advisory lock so that
several replicas starting at once apply each file exactly once.

Credential change notifications
-------------------------------
Migration 002 makes every UPDATE/DELETE of a device row ``pg_notify`` its
``mqtt_user`` on :data:`CREDENTIAL_CHANNEL` (an empty payload after TRUNCATE
means "everyone"). ``Store.open`` keeps one dedicated connection, outside the
pool, LISTENing on it, and tells every registered :class:`CredentialWatcher`:

* ``credential_changed(user)`` for each notification;
* ``credentials_reset()`` whenever the listener becomes live *or* stops being
  live (connection lost, terminated, ping timed out, cannot connect). Between
  those two moments notifications may have been missed, so watchers must drop
  everything they derived from rows read before.

``credentials_watched`` is true only while the listener is live, and
``credentials_epoch`` changes at every reset, so a watcher can tell whether a
row it fetched is still covered by the notifications (see credentials.py). A
silent network partition is caught by a ping every
``LISTENER_PING_INTERVAL_S``: the listener declares itself lost after at most
interval + ``LISTENER_PING_TIMEOUT_S`` without an answer.

Revocations
-----------
Migration 003 NOTIFYs :data:`REVOCATION_CHANNEL` when a change must end a
device's live MQTT sessions (delete, disable, rotate; not enable, not the
rehash at login), with the writer's :attr:`Store.origin`. The same listening
connection LISTENs on it and calls ``device_revoked(change, device_id)`` on
every registered :class:`RevocationWatcher` (the broker) for changes made by
*other* writers: this store's own changes are acted on by its caller right
after the commit (the API kicks locally), so each change cuts the sessions of
each replica exactly once. The three writing methods put the origin in the
statement itself (``FROM (SELECT set_config(..., true))``: transaction-local,
one round trip, evaluated before the row is changed and so before the AFTER
trigger reads it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib.resources
import re
import secrets
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar

import asyncpg
import attrs
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from mqttgate.config import Config, ConfigError
from mqttgate.logs import get_logger

log = get_logger("store")

P = ParamSpec("P")
T = TypeVar("T")

#: pg_advisory_lock key of the migration runner ("mqttgate" in ASCII, as an int8).
MIGRATION_LOCK_KEY = 0x6D7174746761
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

#: NOTIFY channel of migration 002 (payload: the changed mqtt_user, '' = all).
CREDENTIAL_CHANNEL = "mqttgate_credentials"
#: NOTIFY channel of migration 003 (payload: "<change> <device id> <origin>").
REVOCATION_CHANNEL = "mqttgate_revocations"
#: The changes migration 003 notifies; "truncate" comes with no device id.
REVOCATION_CHANGES = frozenset({"delete", "disable", "rotate", "truncate"})
#: How often the listening connection is pinged: a half-open TCP connection
#: (partition, dead host) delivers no notifications and no EOF, so without a
#: ping a replica could trust its cache for as long as the kernel's keepalive.
LISTENER_PING_INTERVAL_S = 1.0
#: A ping slower than this declares the listener lost (and clears the caches).
#: Bounds the window in which a silently partitioned replica trusts its cache
#: to interval + timeout = 3 s.
LISTENER_PING_TIMEOUT_S = 2.0
#: Reconnect backoff of the listener: first retry, then doubling up to the max.
LISTENER_RETRY_FIRST_S = 0.05
LISTENER_RETRY_MAX_S = 2.0
#: ``Store.open`` waits this long for the listener to be live before it
#: returns (and the daemon reports ready), so that a replica which says it is
#: ready hears the rotations made from then on; past it, the daemon starts
#: anyway and the listener keeps retrying (the pool is up, so normally it
#: takes one connect).
LISTENER_STARTUP_WAIT_S = 5.0


class StoreUnavailable(Exception):
    """PostgreSQL could not be reached or dropped the connection."""


class DeviceNotFound(Exception):
    """No device with that id."""


class DeviceExists(Exception):
    """A generated id or user name collided with an existing one."""


@attrs.frozen
class Device:
    """A registry row without its secret."""

    id: str
    type: str
    mqtt_user: str
    created_at: datetime.datetime
    updated_at: datetime.datetime
    disabled_at: datetime.datetime | None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@attrs.frozen
class Credential:
    """What the broker needs to authenticate one user name."""

    device_id: str
    device_type: str
    mqtt_user: str
    password_hash: str = attrs.field(repr=False)
    disabled: bool


class CredentialWatcher(Protocol):
    """Told about credential changes; both calls run on the trio thread and
    must not block (they are called from the asyncpg notification callback)."""

    def credential_changed(self, mqtt_user: str) -> None: ...

    def credentials_reset(self) -> None: ...


class RevocationWatcher(Protocol):
    """Told about changes, committed by another writer, that end a device's
    live sessions. Runs on the trio thread and must not block."""

    def device_revoked(self, change: str, device_id: str | None) -> None:
        """``change`` is one of :data:`REVOCATION_CHANGES`; ``device_id`` is
        None for "truncate" (every device)."""


_DEVICE_COLUMNS = "id, type, mqtt_user, created_at, updated_at, disabled_at"


def _origin_from(param: str) -> str:
    """Joined into the statements that may revoke a device: sets the writer's
    origin (query parameter ``param``) for migration 003's trigger, local to
    the statement's transaction."""
    return f"(SELECT set_config('mqttgate.origin', {param}, true)) AS origin"


def _device(row: Any) -> Device:
    return Device(
        id=row["id"],
        type=row["type"],
        mqtt_user=row["mqtt_user"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        disabled_at=row["disabled_at"],
    )


def _is_unavailable(error: BaseException) -> bool:
    """Errors that mean "the database is not there right now", not a bug."""
    if isinstance(error, asyncpg.PostgresError):
        # Class 08 connection exception, 57 operator intervention (admin
        # shutdown, terminated backend, cannot connect now), 53 insufficient
        # resources (too many connections).
        return str(getattr(error, "sqlstate", "") or "")[:2] in ("08", "57", "53")
    # InternalClientError ("cannot switch to state ...") is what a pooled
    # connection whose backend was just terminated raises before asyncpg has
    # noticed the socket closed: the connection is broken, not our query.
    return isinstance(
        error,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.PostgresConnectionError
        | asyncpg.InternalClientError,
    )


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped in the package, in order."""
    found = []
    for entry in importlib.resources.files("mqttgate").joinpath("sql").iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort()
    return found


async def _aio_migrate(conn: Any) -> list[int]:
    """Apply the missing migrations on one connection (asyncio side)."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


class Store:
    """The registry's named queries. Open with ``async with Store.open(config)``."""

    def __init__(self, pool: Any, query_timeout: float, dsn: str | None = None) -> None:
        self._pool = pool
        self._timeout = query_timeout
        self._dsn = dsn
        self._available = True
        #: Queries sent through the pool (tests count them: a warm hit sends none).
        self.queries = 0
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._revocation_watchers: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Random per store (per process): marks this store's own writes in
        #: the revocation notifications (migration 003).
        self.origin = secrets.token_hex(8)
        self._watched = False
        self._epoch = 0
        #: Backend pid of the listening connection while it is live (tests kill it).
        self.listener_pid: int | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[Any] | None = None
        #: Set the first time the listener is live (Store.open waits for it).
        self._first_live = trio.Event()

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, config: Config, *, migrate: bool = True, listen: bool = True
    ) -> AsyncIterator[Store]:
        """Connect (retrying while PostgreSQL starts), migrate, start the
        credential listener (``listen``) and wait up to
        ``LISTENER_STARTUP_WAIT_S`` for it to be live, yield; close shielded."""
        if not config.database_url:
            raise ConfigError("MQTTGATE_DATABASE_URL", "no database configured")
        pool = await _create_pool(config)
        store = cls(pool, config.database_query_timeout, config.database_url)
        try:
            if migrate:
                await store.migrate()
            if listen:
                # An asyncio task, not a trio nursery around the yield: the
                # caller's exceptions must come out of ``open`` unwrapped.
                store._listener = trio_asyncio.current_loop.get().create_task(
                    store._aio_listen_forever()
                )
                with trio.move_on_after(LISTENER_STARTUP_WAIT_S):
                    await store._first_live.wait()
            yield store
        finally:
            with trio.move_on_after(5, shield=True) as scope:
                await aio_as_trio(store._aio_stop_listener)()
                try:
                    await aio_as_trio(pool.close)()
                except Exception:  # closing a broken pool: fall back to terminate
                    pool.terminate()
            if scope.cancelled_caught:
                pool.terminate()

    async def migrate(self) -> list[int]:
        """Apply missing migrations; returns the versions applied now."""

        async def run() -> list[int]:
            async with self._pool.acquire() as conn:
                return await _aio_migrate(conn)

        applied = await self._call(run)
        if applied:
            log.info("migrations_applied", versions=applied)
        return applied

    # ------------------------------------------------------------ queries

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a trivial query succeeds."""
        await self._call(self._pool.fetchval, "SELECT 1", timeout=self._timeout)

    async def create_device(
        self, device_id: str, device_type: str, mqtt_user: str, password_hash: str
    ) -> Device:
        try:
            row = await self._call(
                self._pool.fetchrow,
                "INSERT INTO devices (id, type, mqtt_user, password_hash)"
                f" VALUES ($1, $2, $3, $4) RETURNING {_DEVICE_COLUMNS}",
                device_id, device_type, mqtt_user, password_hash,
                timeout=self._timeout,
            )
        except asyncpg.UniqueViolationError as error:
            raise DeviceExists(str(error.constraint_name)) from None
        return _device(row)

    async def get_device(self, device_id: str) -> Device:
        return await self._one_device(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE id = $1",
            device_id,
        )

    async def list_devices(
        self, *, device_type: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Device]:
        """Devices in id order, strictly after ``after`` (the cursor)."""
        rows = await self._call(
            self._pool.fetch,
            f"SELECT {_DEVICE_COLUMNS} FROM devices"
            " WHERE ($1::text IS NULL OR type = $1) AND ($2::text IS NULL OR id > $2)"
            " ORDER BY id LIMIT $3",
            device_type, after, limit,
            timeout=self._timeout,
        )
        return [_device(row) for row in rows]

    async def delete_device(self, device_id: str) -> Device:
        return await self._one_device(
            f"DELETE FROM devices USING {_origin_from('$2')} WHERE id = $1 RETURNING {_DEVICE_COLUMNS}",
            device_id, self.origin,
        )

    async def set_password_hash(self, device_id: str, password_hash: str) -> Device:
        return await self._one_device(
            f"UPDATE devices SET password_hash = $2, updated_at = now() FROM {_origin_from('$3')}"
            f" WHERE id = $1 RETURNING {_DEVICE_COLUMNS}",
            device_id, password_hash, self.origin,
        )

    async def replace_password_hash(self, mqtt_user: str, old_hash: str, new_hash: str) -> bool:
        """Compare-and-set of the hash (argon2 parameter upgrade on login).

        Marked as a rehash (same password), so it cuts no live session
        (migration 003); it still drops cached verifications (002)."""
        status = await self._call(
            self._pool.execute,
            "UPDATE devices SET password_hash = $3"
            " FROM (SELECT set_config('mqttgate.rehash', 'on', true)) AS rehash"
            " WHERE mqtt_user = $1 AND password_hash = $2",
            mqtt_user, old_hash, new_hash,
            timeout=self._timeout,
        )
        return bool(status == "UPDATE 1")

    async def set_disabled(self, device_id: str, disabled: bool) -> Device:
        """Disable or enable; the first disable time is kept if disabled again."""
        return await self._one_device(
            "UPDATE devices SET"
            " disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, now()) ELSE NULL END,"
            f" updated_at = now() FROM {_origin_from('$3')} WHERE id = $1"
            f" RETURNING {_DEVICE_COLUMNS}",
            device_id, disabled, self.origin,
        )

    async def get_credential(self, mqtt_user: str) -> Credential | None:
        row = await self._call(
            self._pool.fetchrow,
            "SELECT id, type, mqtt_user, password_hash, disabled_at FROM devices"
            " WHERE mqtt_user = $1",
            mqtt_user,
            timeout=self._timeout,
        )
        if row is None:
            return None
        return Credential(
            device_id=row["id"],
            device_type=row["type"],
            mqtt_user=row["mqtt_user"],
            password_hash=row["password_hash"],
            disabled=row["disabled_at"] is not None,
        )

    # ------------------------------------------------------------ change feed

    def watch_credentials(self, watcher: CredentialWatcher) -> None:
        """Register a watcher (held weakly) for credential change notifications."""
        self._watchers.add(watcher)

    def watch_revocations(self, watcher: RevocationWatcher) -> None:
        """Register a watcher (held weakly) for other writers' revocations."""
        self._revocation_watchers.add(watcher)

    @property
    def credentials_watched(self) -> bool:
        """True while the listener is live: every committed change to a device
        row from now on reaches the watchers (within the NOTIFY latency)."""
        return self._watched

    @property
    def credentials_epoch(self) -> int:
        """Changes at every reset (listener became live or stopped being live)."""
        return self._epoch

    def _reset_watchers(self, watched: bool) -> None:
        self._watched = watched
        self._epoch += 1
        if watched:
            # Called on the trio thread (trio-asyncio), so a trio.Event is safe.
            self._first_live.set()
        for watcher in list(self._watchers):
            watcher.credentials_reset()

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # asyncpg calls this from the asyncio loop, which trio-asyncio runs on
        # the trio thread: calling the watchers directly is safe (no await).
        if not self._watched:
            return
        if payload == "":  # TRUNCATE
            self._reset_watchers(True)
            return
        for watcher in list(self._watchers):
            watcher.credential_changed(payload)

    def _on_revocation(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        # Like _on_notification: on the trio thread, no await.
        change, _, rest = payload.partition(" ")
        device_id, _, origin = rest.rpartition(" ")
        if change not in REVOCATION_CHANGES or origin == self.origin:
            return  # unknown (a newer schema) or ours: the API acted at commit
        for watcher in list(self._revocation_watchers):
            watcher.device_revoked(change, device_id or None)

    async def _aio_listen_forever(self) -> None:
        """(asyncio task) Keep one LISTEN connection live; reset the watchers
        at every change of liveness; reconnect with backoff. Never raises: a
        listener failure must not take the broker and the API down with it."""
        delay = LISTENER_RETRY_FIRST_S
        announced = False  # the current outage was logged (once per outage)
        while True:
            try:
                await self._aio_listen_once()
                error = "ConnectionLost"
            except Exception as caught:  # any failure: reconnect, never crash the daemon
                error = type(caught).__name__
            was_live = self._watched
            self.listener_pid = None
            if was_live:
                self._reset_watchers(False)
                delay = LISTENER_RETRY_FIRST_S
            if was_live or not announced:
                log.warning("credential_listener_lost", error=error, retry_s=delay)
            announced = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTENER_RETRY_MAX_S)

    async def _aio_listen_once(self) -> None:
        """(asyncio) One listening connection, until it is lost."""
        conn = await self._aio_connect()
        try:
            lost = asyncio.Event()
            # Called (call_soon) when the socket closes: pg_terminate_backend,
            # a server restart, a cut connection.
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CREDENTIAL_CHANNEL, self._on_notification)
            await conn.add_listener(REVOCATION_CHANNEL, self._on_revocation)
            # LISTEN is active from here: whatever was derived from rows read
            # before is suspect, everything committed after is notified.
            self.listener_pid = conn.get_server_pid()
            self._reset_watchers(True)
            log.info("credential_listener_connected", pid=self.listener_pid)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTENER_PING_INTERVAL_S)
                    return
                await conn.fetchval("SELECT 1", timeout=LISTENER_PING_TIMEOUT_S)
        finally:
            conn.terminate()  # immediate, no await: safe when cancelled

    async def _aio_connect(self) -> Any:
        """asyncpg.connect, never cancelled half-way: cancelling it during the
        SSL negotiation leaves a future whose exception nobody retrieves, which
        trio-asyncio re-raises when the loop closes. A connection that arrives
        after we were cancelled is terminated."""
        task = asyncio.ensure_future(asyncpg.connect(self._dsn, timeout=self._timeout))
        self._connecting = task
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_discard_connection)
            raise

    async def _aio_stop_listener(self) -> None:
        """(asyncio) Cancel the listener and wait for it and its connect."""
        tasks = [t for t in (self._listener, self._connecting) if t is not None]
        if self._listener is not None:
            self._listener.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._listener = self._connecting = None
        if self._watched:
            self._reset_watchers(False)

    # ------------------------------------------------------------ plumbing

    async def _one_device(self, sql: str, device_id: str, *args: Any) -> Device:
        """The device row ``sql`` returns for ``device_id`` (``$1``), or DeviceNotFound."""
        row = await self._call(self._pool.fetchrow, sql, device_id, *args, timeout=self._timeout)
        if row is None:
            raise DeviceNotFound(device_id)
        return _device(row)

    async def _call(
        self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """One hop into asyncio; connection-level failures become StoreUnavailable."""
        self.queries += 1
        try:
            result: T = await aio_as_trio(fn)(*args, **kwargs)
        except Exception as error:
            if not _is_unavailable(error):
                raise
            # Whatever broke one pooled connection (a restart, terminated
            # backends) broke the others too: replace them all on next use.
            with trio.move_on_after(1):
                with contextlib.suppress(Exception):
                    await aio_as_trio(self._pool.expire_connections)()
            if self._available:
                self._available = False
                log.warning("store_unavailable", error=type(error).__name__)
            raise StoreUnavailable(type(error).__name__) from error
        if not self._available:
            self._available = True
            log.info("store_recovered")
        return result


def _discard_connection(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().terminate()


async def _create_pool(config: Config) -> Any:
    """The pool, retrying while PostgreSQL starts, up to database_startup_timeout."""
    deadline = trio.current_time() + config.database_startup_timeout
    delay = 0.05
    while True:
        try:
            return await aio_as_trio(asyncpg.create_pool)(
                config.database_url,
                min_size=1,
                max_size=config.database_pool_size,
                timeout=config.database_query_timeout,
                command_timeout=config.database_query_timeout,
            )
        except Exception as error:
            if not _is_unavailable(error):
                raise
            now = trio.current_time()
            if now >= deadline:
                log.error("store_unavailable", error=type(error).__name__, phase="startup")
                raise StoreUnavailable(f"PostgreSQL not reachable: {type(error).__name__}") from error
            await trio.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 1.0)


async def migrate_command(config: Config) -> int:
    """``mqttgate migrate``: apply the migrations and exit (0 ok, 1 unreachable)."""
    if not config.database_url:
        print("mqttgate: error: MQTTGATE_DATABASE_URL: required by migrate", file=sys.stderr)
        return 2
    async with trio_asyncio.open_loop():
        try:
            async with Store.open(config, migrate=False, listen=False) as store:
                applied = await store.migrate()
        except StoreUnavailable as error:
            print(f"mqttgate: error: MQTTGATE_DATABASE_URL: {error}", file=sys.stderr)
            return 1
    log.info("migrations_done", applied=applied)
    return 0
