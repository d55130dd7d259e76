"""Hostile input against the HTTP API: always a JSON error with a sensible
status, never a 500, never a hang (docs/api.md "Errors").

The regression set of the hostile-input campaign: requests that used to get
500 (deep JSON, lone surrogates, U+0000 in a query, "²" as a limit, an
over-long file name under /docs/static/), hypercorn's own answers to requests
h11 refuses (empty bodies before), a stalled upload, and a client that never
reads its response (which held its connection and the daemon's shutdown for
ever).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio

from mqttgate.api import app as api_app
from mqttgate.api import server as api_server
from mqttgate.supervisor import run
from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.conftest import Daemon, registry_config
from tests.registry.http import Reply, request

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}


def assert_json_error(reply: Reply, status: int, error: str | None = None) -> None:
    assert reply.status == status, reply
    assert reply.headers.get("content-type", "").startswith("application/json"), reply
    body = reply.json()
    assert isinstance(body, dict) and "error" in body, reply
    if error is not None:
        assert body["error"] == error, reply
    assert b"Traceback" not in reply.body


async def raw_exchange(port: int, data: bytes, deadline_s: float = 10.0) -> bytes:
    """Send raw bytes (what h11 as a client refuses to write); read to EOF."""
    got = bytearray()
    with trio.fail_after(deadline_s):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(data)
            try:
                while chunk := await stream.receive_some(65536):
                    got += chunk
            except trio.BrokenResourceError:
                pass
    return bytes(got)


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body)


# ---------------------------------------------------------------- bodies and queries


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # Regression: RecursionError from json.loads was a 500.
        (b"[" * 8000 + b"]" * 8000, "invalid_json"),  # 16,000 bytes: under the 16 KiB limit
        (b'{"a":' * 2500 + b"1" + b"}" * 2500, "invalid_json"),
        (b"[" * 16000, "invalid_json"),
        (b'{"type":' + b"[" * 8000 + b"]" * 8000 + b"}", "invalid_json"),
        # Regression: a lone surrogate reached PostgreSQL (asyncpg DataError, 500).
        (b'{"type":"\\ud800"}', "invalid_type"),
        (b'{"type":"a\\udfffb"}', "invalid_type"),
        (b'{"type":"\\u0000"}', "invalid_type"),
        (b'{"type":"\xff\xfe"}', "invalid_json"),
        (b'{"type": NaN}', "invalid_type"),
        (b'{"type": ' + b"9" * 5000 + b"}", "invalid_json"),
        (b"", "invalid_json"),
    ],
)
async def test_hostile_bodies_get_400(daemon: Daemon, body: bytes, error: str) -> None:
    reply = await request(daemon.http_port, "POST", "/devices", token=daemon.token, body=body, headers=JSON)
    assert_json_error(reply, 400, error)


async def test_unicode_device_types_round_trip(daemon: Daemon) -> None:
    for device_type in ["\u202e😀" * 32, "e\u0301" * 32, "a\u2028b", "a\uffffb", "😀"]:
        reply = await request(
            daemon.http_port, "POST", "/devices", token=daemon.token, json_body={"type": device_type}
        )
        assert reply.status == 201, reply
        assert reply.json()["type"] == device_type
    reply = await request(daemon.http_port, "POST", "/devices", token=daemon.token, json_body={"type": "😀" * 65})
    assert_json_error(reply, 400, "invalid_type")


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("type=%00", "invalid_type"),  # regression: PostgreSQL refused U+0000 (500)
        ("type=a%01b", "invalid_type"),
        ("limit=%C2%B2", "invalid_limit"),  # regression: "²".isdigit() but int("²") fails (500)
        ("limit=%D9%A1", "invalid_limit"),  # ARABIC-INDIC DIGIT ONE
        ("limit=99999999999999999999999", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("cursor=%00", "invalid_cursor"),
    ],
)
async def test_hostile_queries_get_400(daemon: Daemon, query: str, error: str) -> None:
    reply = await request(daemon.http_port, "GET", f"/devices?{query}", token=daemon.token)
    assert_json_error(reply, 400, error)


async def test_odd_type_filters_are_just_empty(daemon: Daemon) -> None:
    for query in ["type=%ff%fe", "type=%ED%A0%80", "type=" + "x" * 8000]:
        reply = await request(daemon.http_port, "GET", f"/devices?{query}", token=daemon.token)
        assert reply.status == 200 and reply.json() == {"devices": [], "next_cursor": None}


@pytest.mark.parametrize(
    "path",
    [
        "/devices/" + "a" * 10000,
        "/devices/%00",
        "/devices/..%2f..%2fetc%2fpasswd",
        "/docs/static/../../../../etc/passwd",
        "/docs/static/..%2f..%2f..%2fetc%2fpasswd",
        "/docs/static/%2e%2e/%2e%2e/etc/passwd",
        "/docs/static/%00",
        "/docs/static/%5c..%5c..%5cetc%5cpasswd",
        "/docs/static/" + "a" * 5000,  # regression: ENAMETOOLONG was a 500
        "/" + "x/" * 3000,
    ],
)
async def test_paths_outside_the_api_are_404(daemon: Daemon, path: str) -> None:
    reply = await request(daemon.http_port, "GET", path, token=daemon.token)
    assert reply.status == 404, reply
    assert_json_error(reply, 404)
    assert b"root:" not in reply.body


async def test_doubled_slashes_redirect_inside_the_directory(daemon: Daemon) -> None:
    # Werkzeug merges slashes with a redirect (its body is HTML, as a redirect's may be).
    reply = await request(daemon.http_port, "GET", "/docs/static//etc/passwd")
    assert reply.status == 308 and reply.headers["location"].endswith("/docs/static/etc/passwd")
    assert_json_error(await request(daemon.http_port, "GET", "/docs/static/etc/passwd"), 404)


async def test_odd_methods_are_405_json(daemon: Daemon) -> None:
    for method in ["PROPFIND", "TRACE", "FOO", "PATCH"]:
        for path in ["/devices", "/healthz", "/docs/index.html"]:
            reply = await request(daemon.http_port, method, path, token=daemon.token)
            assert_json_error(reply, 405, "method_not_allowed")
            assert reply.headers.get("allow")


# ---------------------------------------------------------------- requests h11 refuses


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100, 400, "bad_request"),
        (b"GET /dev ices HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-L: " + b"a" * 100_000 + b"\r\n\r\n", 431, "headers_too_large"),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "headers_too_large"),
        (b"POST /devices HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400, "bad_request"),
        (b"POST /devices HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", 400, "bad_request"),
        (b"POST /devices HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}", 501, "not_implemented"),
        (b"GET /devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x00\r\n\r\n", 400, "bad_request"),
        (b"GET /devices/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ],
)
async def test_requests_hypercorn_refuses_get_json_errors(
    daemon: Daemon, data: bytes, status: int, error: str
) -> None:
    # Regression: hypercorn answered these with an empty, typeless body.
    assert_json_error(parse(await raw_exchange(daemon.http_port, data)), status, error)


async def test_garbled_authorization_is_401_json(daemon: Daemon) -> None:
    for value in [b"Bearer \xe9\xff", "Bearer é".encode(), b"Bearer " + b"x" * 12000, b"Basic dXNlcjpwYXNz", b"Bearer"]:
        data = b"GET /devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value + b"\r\n\r\n"
        reply = parse(await raw_exchange(daemon.http_port, data))
        assert_json_error(reply, 401, "unauthorized")


# ---------------------------------------------------------------- slow and stuck clients


async def test_a_stalled_upload_gets_408(
    start_daemon: StartDaemon, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_app, "BODY_TIMEOUT_S", 0.5)  # read by create_app
    config = registry_config(database_url)
    port = port_of((await start_daemon(config)).http)
    assert config.api_token is not None
    headers = (
        b"POST /devices HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + config.api_token.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    )
    started = trio.current_time()
    # The body promised 100 bytes and sends 2; Quart's default waited 60 s.
    reply = parse(await raw_exchange(port, headers + b'{"', deadline_s=15))
    assert_json_error(reply, 408, "request_timeout")
    assert trio.current_time() - started < 3


async def test_a_client_that_never_reads_holds_neither_its_connection_nor_the_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: hypercorn shields every write, so a client that never read
    its response (here a 1.4 MB Swagger asset, served without a token) kept
    its connection open for ever, and SIGTERM could not stop the daemon."""
    monkeypatch.setattr(api_server, "SEND_TIMEOUT_S", 0.5)
    config = make_config(shutdown_timeout=3.0)
    shutdown = trio.Event()
    sockets: list[trio.socket.SocketType] = []

    async def runner(*, task_status: trio.TaskStatus[Any]) -> None:
        await run(config, shutdown=shutdown, install_signal_handlers=False, task_status=task_status)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = port_of((await nursery.start(runner)).http)
            for _ in range(3):
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(("127.0.0.1", port))
                await sock.send(b"GET /docs/static/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n")
                sockets.append(sock)
            await trio.sleep(1.5)  # past SEND_TIMEOUT_S: the server gave up and closed
            cut = []
            for sock in sockets:
                # Reading now gets what was buffered, then EOF: the body is cut.
                # (Without the deadline the server was still waiting to send;
                # reading every socket lets it finish instead of hanging the test.)
                received = b""
                try:
                    while chunk := await sock.recv(65536):
                        received += chunk
                except ConnectionResetError:
                    pass
                sock.close()
                head, _, body = received.partition(b"\r\n\r\n")
                cut.append(len(body) < int(parse(head + b"\r\n\r\n").headers["content-length"]))
            assert cut == [True] * 3, "the responses were completed, not cut"
            # And the shutdown does not wait for stuck writes.
            for _ in range(3):
                sock = trio.socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                await sock.connect(("127.0.0.1", port))
                await sock.send(b"GET /docs/static/swagger-ui-bundle.js HTTP/1.1\r\nHost: x\r\n\r\n")
                sockets.append(sock)
            await trio.sleep(0.2)
            started = trio.current_time()
            shutdown.set()
        took = trio.current_time() - started
    for sock in sockets:
        sock.close()
    assert took < 2.5, f"shutdown took {took:.1f}s"


async def test_concurrent_garbage_leaves_the_api_serving(daemon: Daemon) -> None:
    bad = [
        b"\x00" * 100,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # never finishes its headers
        b"POST /devices HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n" + b"[" * 15000,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ]

    async def hostile(data: bytes) -> None:
        try:
            await raw_exchange(daemon.http_port, data, deadline_s=1.0)
        except trio.TooSlowError:
            pass

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(hostile, bad[i % len(bad)])
            reply = await request(daemon.http_port, "GET", "/devices", token=daemon.token)
            assert reply.status == 200 and json.loads(reply.body)["devices"] is not None
