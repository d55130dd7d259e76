"""Serving the Quart-Trio app with Hypercorn's trio worker.

Works around a quart-trio/hypercorn bug (stack-notes section 1.3): the final
response body send is cancelled when quart-trio sees ``http.disconnect``, so
hypercorn never closes HTTP/1.1 connections. Shielding that one send fixes it;
tests/test_http_server.py keeps a regression test (EOF after ``Connection: close``).
"""

from __future__ import annotations

from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from mqttgate.config import Address


class _HTTPConnection(TrioASGIHTTPConnection):
    async def __call__(self, receive: Any, send: Any) -> None:
        async def send_final_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await super().__call__(receive, send_final_shielded)


class PatchedQuartTrio(QuartTrio):
    asgi_http_class = _HTTPConnection


async def serve_http(
    app: QuartTrio,
    listen: Address,
    shutdown: trio.Event,
    *,
    graceful_timeout: float = 5.0,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown`` is set; report the bound addresses."""
    config = HyperConfig()
    config.bind = [str(listen)]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 5
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
