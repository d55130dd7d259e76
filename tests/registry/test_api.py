"""The /devices API over real HTTP against the real daemon and PostgreSQL."""

from __future__ import annotations

import datetime
import re
import sys
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import structlog
import trio
from trio_asyncio import aio_as_trio

from mqttgate.config import ConfigError
from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.conftest import (
    Daemon,
    TcpProxy,
    pg_port,
    proxied_url,
    registry_config,
)
from tests.registry.http import Reply, request

pytestmark = pytest.mark.integration

DEVICE_FIELDS = {"id", "type", "mqtt_user", "created_at", "updated_at", "disabled", "disabled_at"}


async def create(daemon: Daemon, device_type: str = "sensor") -> dict[str, Any]:
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, json_body={"type": device_type}
    )
    assert reply.status == 201, reply
    body: dict[str, Any] = reply.json()
    return body


def assert_error(reply: Reply, status: int, error: str) -> None:
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error, body
    assert "Traceback" not in reply.body.decode()


# ---------------------------------------------------------------- happy paths


async def test_create_returns_201_location_and_the_original_shape(daemon: Daemon) -> None:
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, json_body={"type": "thermo"}
    )
    assert reply.status == 201
    body = reply.json()
    assert set(body) == {"id", "type", "mqtt_user", "mqtt_password", "created_at"}
    assert body["type"] == "thermo"
    assert reply.headers["location"] == f"/devices/{body['id']}"
    assert reply.headers["cache-control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{24}", body["id"])
    assert re.fullmatch(r"dev_[0-9a-f]{16}", body["mqtt_user"])
    # token_urlsafe(24): 32 characters of base64url, 192 bits.
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", body["mqtt_password"])
    created = datetime.datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.UTC) - created) < datetime.timedelta(minutes=1)


async def test_get_shows_no_secret_and_password_is_stored_hashed(
    daemon: Daemon, database_url: str, aio_loop: None
) -> None:
    created = await create(daemon)
    reply = await request(daemon.http_port, "GET", f"/devices/{created['id']}", token=daemon.token)
    assert reply.status == 200
    body = reply.json()
    assert set(body) == DEVICE_FIELDS
    assert body["mqtt_user"] == created["mqtt_user"]
    assert body["disabled"] is False and body["disabled_at"] is None
    assert created["mqtt_password"] not in reply.body.decode()
    conn = await aio_as_trio(asyncpg.connect)(database_url)
    try:
        row = await aio_as_trio(conn.fetchrow)(
            "SELECT * FROM devices WHERE id = $1", created["id"]
        )
    finally:
        await aio_as_trio(conn.close)()
    assert row["password_hash"].startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert created["mqtt_password"] not in " ".join(str(v) for v in row.values())


async def test_list_paginates_with_a_cursor_and_filters_by_type(daemon: Daemon) -> None:
    kind = f"pager-{trio.current_time()}"
    ids = sorted([(await create(daemon, kind))["id"] for _ in range(5)])
    await create(daemon, "other-type")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = f"/devices?type={kind}&limit=2" + (f"&cursor={cursor}" if cursor else "")
        reply = await request(daemon.http_port, "GET", path, token=daemon.token)
        assert reply.status == 200
        page = reply.json()
        assert len(page["devices"]) <= 2
        assert all(set(d) == DEVICE_FIELDS and d["type"] == kind for d in page["devices"])
        seen += [d["id"] for d in page["devices"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3


async def test_delete_then_gone(daemon: Daemon) -> None:
    created = await create(daemon)
    path = f"/devices/{created['id']}"
    reply = await request(daemon.http_port, "DELETE", path, token=daemon.token)
    assert reply.status == 204 and reply.body == b""
    assert_error(await request(daemon.http_port, "GET", path, token=daemon.token), 404, "device_not_found")
    assert_error(await request(daemon.http_port, "DELETE", path, token=daemon.token), 404, "device_not_found")


async def test_rotate_returns_a_new_password_once(daemon: Daemon) -> None:
    created = await create(daemon)
    reply = await request(
        daemon.http_port, "POST", f"/devices/{created['id']}/credentials", token=daemon.token
    )
    assert reply.status == 200
    body = reply.json()
    assert set(body) == {"id", "type", "mqtt_user", "mqtt_password", "created_at", "updated_at"}
    assert body["mqtt_user"] == created["mqtt_user"]
    assert body["mqtt_password"] != created["mqtt_password"]
    assert body["updated_at"] > body["created_at"]


async def test_disable_and_enable_are_idempotent(daemon: Daemon) -> None:
    created = await create(daemon)
    base = f"/devices/{created['id']}"
    first = await request(daemon.http_port, "POST", base + "/disable", token=daemon.token)
    assert first.status == 200 and first.json()["disabled"] is True
    again = await request(daemon.http_port, "POST", base + "/disable", token=daemon.token)
    assert again.json()["disabled_at"] == first.json()["disabled_at"]
    enabled = await request(daemon.http_port, "POST", base + "/enable", token=daemon.token)
    assert enabled.status == 200
    assert enabled.json()["disabled"] is False and enabled.json()["disabled_at"] is None


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "invalid_type"),
        ({"type": ""}, "invalid_type"),
        ({"type": "   "}, "invalid_type"),
        ({"type": "x" * 65}, "invalid_type"),
        ({"type": 7}, "invalid_type"),
        ({"type": None}, "invalid_type"),
        ({"type": "a\nb"}, "invalid_type"),
        (["type", "sensor"], "invalid_body"),
        ("sensor", "invalid_body"),
    ],
)
async def test_bad_bodies_get_400(daemon: Daemon, body: Any, error: str) -> None:
    reply = await request(daemon.http_port, "POST", "/devices", token=daemon.token, json_body=body)
    assert_error(reply, 400, error)


async def test_longest_type_is_accepted(daemon: Daemon) -> None:
    assert (await create(daemon, "y" * 64))["type"] == "y" * 64


@pytest.mark.parametrize("raw", [b"{", b"{'type': 'x'}", b"", b"\xff\xfe", b'{"type": "x"} x'])
async def test_invalid_json_gets_400(daemon: Daemon, raw: bytes) -> None:
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, body=raw,
        headers={"Content-Type": "application/json"},
    )
    assert_error(reply, 400, "invalid_json")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("raw", [b"{", b"", b"type=x"])
async def test_a_body_that_is_not_json_gets_400_whatever_its_content_type(
    daemon: Daemon, content_type: str | None, raw: bytes
) -> None:
    # Issue 5: "400 for a bad body (missing/empty/too long type, wrong JSON)".
    headers = {"Content-Type": content_type} if content_type else {}
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, body=raw, headers=headers
    )
    assert_error(reply, 400, "invalid_json")


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_is_accepted_whatever_its_content_type(
    daemon: Daemon, content_type: str | None
) -> None:
    # `curl -d '{"type": "x"}'` sends form encoding; the body decides (docs/api.md).
    headers = {"Content-Type": content_type} if content_type else {}
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, body=b'{"type": "x"}',
        headers=headers,
    )
    assert reply.status == 201, reply.body
    assert reply.json()["type"] == "x"


async def test_oversized_body_gets_413(daemon: Daemon) -> None:
    big = b'{"type": "' + b"x" * (64 * 1024) + b'"}'
    reply = await request(
        daemon.http_port, "POST", "/devices", token=daemon.token, body=big,
        headers={"Content-Type": "application/json"},
    )
    assert_error(reply, 413, "body_too_large")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/devices"),
        ("POST", "/devices"),
        ("GET", "/devices/0123456789abcdef01234567"),
        ("DELETE", "/devices/0123456789abcdef01234567"),
        ("POST", "/devices/0123456789abcdef01234567/credentials"),
        ("POST", "/devices/0123456789abcdef01234567/disable"),
        ("POST", "/devices/0123456789abcdef01234567/enable"),
    ],
)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic dGVzdDp0ZXN0", "Bearer", "Token x"]
)
async def test_every_route_needs_the_token(
    daemon: Daemon, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    reply = await request(daemon.http_port, method, path, headers=headers, json_body={"type": "x"})
    assert_error(reply, 401, "unauthorized")
    assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_token_is_case_sensitive_but_scheme_is_not(daemon: Daemon) -> None:
    wrong_case = await request(
        daemon.http_port, "GET", "/devices", headers={"Authorization": f"Bearer {daemon.token.upper()}"}
    )
    assert_error(wrong_case, 401, "unauthorized")
    ok = await request(
        daemon.http_port, "GET", "/devices", headers={"Authorization": f"bearer {daemon.token}"}
    )
    assert ok.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/devices/0123456789abcdef01234567",  # well-formed, unknown
        "/devices/not-an-id",  # not an id we issue
        "/devices/0123456789abcdef01234567/credentials",
        "/devices/0123456789abcdef01234567/disable",
        "/devices/0123456789abcdef01234567/enable",
    ],
)
async def test_unknown_device_gets_404(daemon: Daemon, path: str) -> None:
    method = "GET" if path.count("/") == 2 else "POST"
    assert_error(await request(daemon.http_port, method, path, token=daemon.token), 404, "device_not_found")


async def test_unknown_route_and_wrong_method_are_json(daemon: Daemon) -> None:
    assert_error(await request(daemon.http_port, "GET", "/nope"), 404, "not_found")
    reply = await request(daemon.http_port, "PUT", "/devices", token=daemon.token)
    assert_error(reply, 405, "method_not_allowed")
    assert "POST" in reply.headers["allow"]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "cursor=zzz"])
async def test_bad_list_queries_get_400(daemon: Daemon, query: str) -> None:
    reply = await request(daemon.http_port, "GET", f"/devices?{query}", token=daemon.token)
    assert reply.status == 400
    assert reply.json()["error"] in ("invalid_limit", "invalid_cursor")


# ---------------------------------------------------------------- PostgreSQL down


async def test_postgres_down_gives_503_and_recovers(
    start_daemon: StartDaemon, database_url: str, nursery: trio.Nursery
) -> None:
    proxy = TcpProxy(pg_port(database_url))
    await proxy.start(nursery)
    config = registry_config(proxied_url(database_url, proxy.port))
    endpoints = await start_daemon(config)
    port, token = port_of(endpoints.http), config.api_token
    assert (await request(port, "GET", "/devices?limit=1", token=token)).status == 200
    proxy.stop()
    for method, path, body in [
        ("GET", "/devices", None),
        ("POST", "/devices", {"type": "x"}),
        ("GET", "/devices/0123456789abcdef01234567", None),
        ("DELETE", "/devices/0123456789abcdef01234567", None),
        ("POST", "/devices/0123456789abcdef01234567/disable", None),
    ]:
        reply = await request(port, method, path, token=token, json_body=body)
        assert_error(reply, 503, "store_unavailable")
        assert reply.headers["retry-after"] == "5"
    await proxy.start(nursery)  # same port again: the pool reconnects by itself
    reply = await request(port, "GET", "/devices?limit=1", token=token)
    assert reply.status == 200


# ---------------------------------------------------------------- start-up rules


@pytest.fixture
def keep_log_config() -> Iterator[None]:
    """main() reconfigures logging onto the captured stdout; put it back after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


async def test_without_a_database_the_registry_routes_answer_503(start_daemon: StartDaemon) -> None:
    endpoints = await start_daemon(make_config(allow_anonymous=True, database_url=None, api_token=None))
    port = port_of(endpoints.http)
    assert_error(await request(port, "GET", "/devices"), 503, "no_registry")
    assert (await request(port, "GET", "/healthz")).status == 200


def test_a_registry_without_an_api_token_refuses_to_start(
    keep_log_config: None,
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mqttgate.__main__ import main

    for name in ("MQTTGATE_API_TOKEN", "MQTTGATE_EMBEDDED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MQTTGATE_DATABASE_URL", database_url)
    code = main(
        ["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--forward", "off", "--log-level", "error"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mqttgate: error: MQTTGATE_API_TOKEN:")


def test_no_database_and_no_anonymous_mode_names_the_variable(
    keep_log_config: None,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mqttgate.__main__ import main

    for name in ("MQTTGATE_DATABASE_URL", "MQTTGATE_EMBEDDED", "MQTTGATE_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    code = main(
        ["serve", "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
         "--forward", "off", "--log-level", "error", "--api-token", "x"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[0]] and err[0].startswith("mqttgate: error: MQTTGATE_DATABASE_URL:")


def test_config_error_type_is_the_cli_contract() -> None:
    # The supervisor raises ConfigError; __main__ turns it into exit status 2.
    assert issubclass(ConfigError, Exception) and sys.version_info >= (3, 11)
