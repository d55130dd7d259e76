"""Fixtures of the registry tests: a daemon with the real PostgreSQL, fast argon2."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import attrs
import pytest
import trio
import trio_asyncio

from mqttgate.config import Config
from tests.conftest import ADMIN_DSN, RUN_ID, StartDaemon, _with_database, make_config, port_of

#: Small argon2 parameters so the suite stays fast; production defaults are in config.py.
FAST_ARGON2: dict[str, Any] = {"argon2_time_cost": 1, "argon2_memory_kib": 8192}


def registry_config(database_url: str, **overrides: Any) -> Config:
    settings: dict[str, Any] = {
        "allow_anonymous": False,
        "database_url": database_url,
        **FAST_ARGON2,
    }
    settings.update(overrides)
    return make_config(**settings)


@attrs.frozen
class Daemon:
    http_port: int
    mqtt_port: int
    token: str
    config: Config


@pytest.fixture
async def daemon(start_daemon: StartDaemon, database_url: str) -> Daemon:
    config = registry_config(database_url)
    endpoints = await start_daemon(config)
    assert config.api_token is not None
    return Daemon(port_of(endpoints.http), port_of(endpoints.mqtt), config.api_token, config)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with nothing in it, dropped afterwards (migrations from empty)."""
    import asyncio

    name = f"mqttgate_test_{RUN_ID}_{secrets.token_hex(3)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield _with_database(ADMIN_DSN, name)
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def aio_loop() -> AsyncIterator[None]:
    async with trio_asyncio.open_loop():
        yield


class TcpProxy:
    """A TCP forwarder in front of PostgreSQL: ``stop()`` makes the database
    unreachable (listener closed, connections cut) without touching the shared
    server; ``start()`` brings it back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._serve)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                task_status.started()
                await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with server:

                async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                    try:
                        while data := await src.receive_some(65536):
                            await dst.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, client, server)
                    nursery.start_soon(pump, server, client)


def proxied_url(database_url: str, proxy_port: int) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy_port}"
    new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urllib.parse.urlunsplit((parts.scheme, new, parts.path, parts.query, parts.fragment))


def pg_port(database_url: str) -> int:
    import urllib.parse

    return urllib.parse.urlsplit(database_url).port or 5432
