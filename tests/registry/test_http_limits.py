"""The bound on concurrent HTTP API connections (MQTTGATE_HTTP_MAX_CONNECTIONS).

Any peer could open unlimited TCP connections to the API port, each holding
a task and buffers until hypercorn's timeouts. Past the limit a new
connection gets a fixed 503 in the API's error shape and is closed at once;
the connections already open keep being served, the refusal is counted in
/metrics and logged at most once per interval (docs/api.md, "Connection limit").
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import MutableMapping
from typing import Any

import h11
import hypercorn.trio.run
import hypercorn.trio.worker_context
import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from mqttgate import config as cfg
from mqttgate.api import http_limits
from mqttgate.api import server as api_server
from mqttgate.api.http_limits import ConnectionGate
from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.http import Reply, request

pytestmark = pytest.mark.integration

LIMIT = 3


class KeepAlive:
    """One HTTP/1.1 connection kept open between requests (h11 client)."""

    def __init__(self, stream: trio.SocketStream, port: int) -> None:
        self.stream = stream
        self.port = port
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> KeepAlive:
        return cls(await trio.open_tcp_stream("127.0.0.1", port), port)

    async def get(self, path: str, token: str | None = None) -> Reply:
        headers = [("Host", f"127.0.0.1:{self.port}")]
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        out = self.h11.send(h11.Request(method="GET", target=path, headers=headers))
        out += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        status, reply_headers, chunks = 0, {}, []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                reply_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        self.h11.start_next_cycle()  # the connection stays open for the next request
        return Reply(status, reply_headers, b"".join(chunks))

    async def aclose(self) -> None:
        await self.stream.aclose()


async def read_to_eof(port: int, data: bytes = b"") -> bytes:
    """Connect, send ``data`` (maybe nothing), read until the server closes."""
    got = bytearray()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            if data:
                await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                got += chunk
        except trio.BrokenResourceError:
            pass  # a reset after the answer: what was read still counts
    return bytes(got)


def assert_refused(raw: bytes) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), raw
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    # The API's error shape (docs/api.md "Errors").
    assert json.loads(body) == {
        "error": "too_many_connections",
        "detail": "too many HTTP connections are open; retry later",
    }


def metric(text: bytes, name: str) -> float:
    found = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def open_connections(conn: KeepAlive, token: str | None, expected: int) -> None:
    """Scrape /metrics on ``conn`` until the server counts ``expected`` open
    connections (each scrape is a round trip: no sleep needed)."""
    while metric((await conn.get("/metrics", token)).body, "mqttgate_http_connections") != expected:
        pass


HEALTHZ_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_connections_past_the_limit_are_refused_and_the_open_ones_still_served(
    start_daemon: StartDaemon, logged: list[MutableMapping[str, Any]]
) -> None:
    config = make_config(http_max_connections=LIMIT)
    port = port_of((await start_daemon(config)).http)
    token = config.api_token
    idle: list[KeepAlive] = []
    # Everything below stays well inside hypercorn's 5 s keep-alive timeout,
    # which would otherwise close the idle connections and free their slots.
    with trio.fail_after(4.5):
        for _ in range(LIMIT):
            conn = await KeepAlive.open(port)
            # One answered request proves the connection holds a slot (the
            # server admits connections in whatever order its tasks run).
            assert (await conn.get("/healthz")).status == 200
            idle.append(conn)

        # The 4th connection, which sends nothing, gets the 503 and EOF at once.
        assert_refused(await read_to_eof(port))
        scrape = await idle[0].get("/metrics", token)
        assert scrape.status == 200
        assert metric(scrape.body, "mqttgate_http_connections_refused_total") == 1
        assert metric(scrape.body, "mqttgate_http_connections") == LIMIT

        # A burst of 50, each sending a request first; meanwhile an open
        # connection is still answered (the flood does not starve it).
        answers: list[bytes] = []

        async def flood_one() -> None:
            answers.append(await read_to_eof(port, HEALTHZ_CLOSE))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(flood_one)
            assert (await idle[1].get("/healthz")).status == 200
        for raw in answers:
            assert_refused(raw)
        scrape = await idle[0].get("/metrics", token)
        assert metric(scrape.body, "mqttgate_http_connections_refused_total") == 51
        assert metric(scrape.body, "mqttgate_http_connections") == LIMIT

        # Closing an idle connection frees its slot at once (hypercorn alone
        # held it until its 5 s keep-alive timer; see _TCPServer._read_data).
        await idle.pop().aclose()
        with trio.fail_after(2.5):  # hypercorn alone: 5 s
            await open_connections(idle[0], token, LIMIT - 1)
        assert (await request(port, "GET", "/healthz")).status == 200

    # 51 refusals within 10 s: one log record, the first.
    records = [r for r in logged if r["event"] == "http_connections_refused"]
    assert len(records) == 1, records
    assert records[0]["limit"] == LIMIT and records[0]["suppressed"] == 0
    assert records[0]["peer"].startswith("127.0.0.1:")
    for conn in idle:
        await conn.aclose()


async def test_a_connection_closed_before_any_request_frees_its_slot_at_once(
    start_daemon: StartDaemon,
) -> None:
    config = make_config(http_max_connections=2)
    port = port_of((await start_daemon(config)).http)
    with trio.fail_after(4):  # under the 5 s keep-alive timer that used to free it
        watcher = await KeepAlive.open(port)
        assert (await watcher.get("/healthz")).status == 200
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        await open_connections(watcher, config.api_token, 2)
        assert_refused(await read_to_eof(port))
        started = trio.current_time()
        await silent.aclose()
        await open_connections(watcher, config.api_token, 1)
        assert trio.current_time() - started < 2.5  # hypercorn alone: 5 s
        assert (await request(port, "GET", "/readyz")).status == 200
        await watcher.aclose()


async def test_probes_get_through_a_continuing_flood_once_a_slot_frees(start_daemon: StartDaemon) -> None:
    config = make_config(http_max_connections=LIMIT)
    port = port_of((await start_daemon(config)).http)
    idle = []
    with trio.fail_after(4.5):
        for _ in range(LIMIT):
            conn = await KeepAlive.open(port)
            assert (await conn.get("/healthz")).status == 200
            idle.append(conn)
        refused = 0
        flooding = trio.Event()

        async def flood() -> None:
            # Connections that close after one answer, as fast as they come back.
            nonlocal refused
            while True:
                if (await read_to_eof(port, HEALTHZ_CLOSE)).startswith(b"HTTP/1.1 503 "):
                    refused += 1
                    if refused >= 100:
                        flooding.set()

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(flood)
            await flooding.wait()
            await idle.pop().aclose()
            # The freed slot is contended by the flood; a probe retries as
            # Kubernetes would, and gets through because refused connections
            # are closed at once.
            for path in ("/healthz", "/readyz"):
                probe = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
                while (raw := await read_to_eof(port, probe)).startswith(b"HTTP/1.1 503 "):
                    assert_refused(raw)
                assert raw.startswith(b"HTTP/1.1 200 "), raw
            nursery.cancel_scope.cancel()
    for conn in idle:
        await conn.aclose()


# ---------------------------------------------------------------- pieces


def test_gate_counts_and_refuses_past_the_limit() -> None:
    gate = ConnectionGate(2)
    assert gate.try_open() and gate.try_open()
    assert not gate.try_open()
    assert (gate.open_count, gate.refused_total) == (2, 1)
    gate.close()
    assert gate.try_open()
    assert (gate.open_count, gate.refused_total) == (2, 1)


def test_refusals_are_logged_at_most_once_per_interval() -> None:
    gate = ConnectionGate(1)
    interval = http_limits.LOG_INTERVAL_S
    assert gate.log_refusal(100.0) == 0
    assert gate.log_refusal(100.5) is None
    assert gate.log_refusal(100.0 + interval - 0.01) is None
    # The next one logged says how many were not.
    assert gate.log_refusal(100.0 + interval) == 2
    assert gate.log_refusal(100.0 + interval + 1) is None


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "many", ""])
def test_a_bad_limit_is_a_config_error_naming_the_setting(raw: str) -> None:
    with pytest.raises(cfg.ConfigError, match="MQTTGATE_HTTP_MAX_CONNECTIONS"):
        cfg.load({}, {"MQTTGATE_HTTP_MAX_CONNECTIONS": raw})
    with pytest.raises(cfg.ConfigError, match="--http-max-connections"):
        cfg.load({"http_max_connections": raw}, {})


def test_the_limit_setting_defaults_to_1000() -> None:
    assert cfg.load({}, {}).http_max_connections == 1000
    assert cfg.load({}, {"MQTTGATE_HTTP_MAX_CONNECTIONS": "1"}).http_max_connections == 1
    assert cfg.load({"http_max_connections": "7"}, {"MQTTGATE_HTTP_MAX_CONNECTIONS": "5"}).http_max_connections == 7


def test_hypercorn_still_builds_connections_from_the_replaced_handler() -> None:
    """The limit lives in api/server.py's ``_TCPServer``. If a hypercorn
    upgrade stops looking ``TCPServer`` up in ``hypercorn.trio.run`` or
    renames ``run``, the limit silently stops working: fail here first."""
    assert hypercorn.trio.run.TCPServer is api_server._TCPServer
    assert "TCPServer," in inspect.getsource(hypercorn.trio.run.worker_serve)
    base = TCPServer
    assert api_server._TCPServer.__mro__[1] is base
    assert inspect.iscoroutinefunction(base.run)
    assert list(inspect.signature(base).parameters) == ["app", "config", "context", "state", "stream"]
    assert "self.run()" in inspect.getsource(base.__await__)
    # _TCPServer._read_data stops the keep-alive timer when the peer has gone.
    assert inspect.iscoroutinefunction(base._read_data)
    assert "self._read_data()" in inspect.getsource(base.run)
    assert "self.idle_task = " in inspect.getsource(base.__init__)
    assert inspect.iscoroutinefunction(hypercorn.trio.worker_context.TrioSingleTask.stop)
