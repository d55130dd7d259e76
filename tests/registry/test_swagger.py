"""Swagger UI at /docs/index.html works offline: every asset comes from us."""

from __future__ import annotations

import re

import pytest

from tests.conftest import StartDaemon, make_config, port_of
from tests.registry.conftest import Daemon
from tests.registry.http import request

pytestmark = pytest.mark.integration

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


async def test_page_and_every_referenced_asset_load_from_the_daemon(daemon: Daemon) -> None:
    page = await request(daemon.http_port, "GET", "/docs/index.html")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.body.decode()
    assert "SwaggerUIBundle" in html
    refs = [a or b for a, b in REFERENCE.findall(html)]
    assert len(refs) >= 3  # the CSS, the JS bundle, and the OpenAPI document
    assert not [r for r in refs if "://" in r or r.startswith("//")], refs  # no CDN
    kinds = set()
    for ref in refs:
        reply = await request(daemon.http_port, "GET", ref)
        assert reply.status == 200, ref
        assert len(reply.body) > 100, ref
        kinds.add(reply.headers["content-type"].split(";")[0])
    assert {"text/css", "application/json"} <= kinds
    assert kinds & {"text/javascript", "application/javascript"}


async def test_openapi_document_describes_the_devices_api(daemon: Daemon) -> None:
    reply = await request(daemon.http_port, "GET", "/openapi.json")
    assert reply.status == 200
    spec = reply.json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths) >= {
        "/devices",
        "/devices/{device_id}",
        "/devices/{device_id}/credentials",
        "/devices/{device_id}/disable",
        "/devices/{device_id}/enable",
    }
    create = paths["/devices"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == ["type"]
    assert set(create["responses"]) >= {"201", "400", "401", "413", "503"}
    assert create["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "/docs/static/{filename}" not in paths and "/healthz" not in paths


@pytest.mark.parametrize(
    "path", ["/docs/static/../../../../etc/passwd", "/docs/static/%2e%2e/%2e%2e/setup.py", "/docs/static/nope.js"]
)
async def test_static_route_does_not_escape_its_directory(daemon: Daemon, path: str) -> None:
    reply = await request(daemon.http_port, "GET", path)
    assert reply.status == 404
    assert b"root:" not in reply.body


async def test_docs_work_without_a_registry(start_daemon: StartDaemon) -> None:
    endpoints = await start_daemon(make_config(database_url=None, api_token=None))
    assert (await request(port_of(endpoints.http), "GET", "/docs/index.html")).status == 200
