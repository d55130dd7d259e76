"""The service fixtures work against the real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncpg
import nats
import pytest
import trio_asyncio

from tests.conftest import JetStreamNames

pytestmark = pytest.mark.integration


async def test_fresh_database_is_empty_and_writable(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        conn = await trio_asyncio.aio_as_trio(asyncpg.connect)(database_url)
        try:
            name = await trio_asyncio.aio_as_trio(conn.fetchval)("select current_database()")
            assert name.startswith("mqttgate_test_")
            await trio_asyncio.aio_as_trio(conn.execute)("create temporary table t (x int)")
        finally:
            await trio_asyncio.aio_as_trio(conn.close)()


async def test_jetstream_names_are_unique_and_usable(jetstream: JetStreamNames) -> None:
    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(jetstream.url)
        try:
            js = nc.jetstream()
            info = await trio_asyncio.aio_as_trio(js.add_stream)(
                name=jetstream.stream, subjects=[f"{jetstream.prefix}.>"]
            )
            assert info.config.name == jetstream.stream
            ack = await trio_asyncio.aio_as_trio(js.publish)(f"{jetstream.prefix}.x", b"1")
            assert ack.stream == jetstream.stream
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()
