"""Serving the Quart-Trio app with Hypercorn's trio worker.

Works around a quart-trio/hypercorn bug (stack-notes section 1.3): the final
response body send is cancelled when quart-trio sees ``http.disconnect``, so
hypercorn never closes HTTP/1.1 connections. Shielding that one send fixes it;
tests/test_http_server.py keeps a regression test (EOF after ``Connection: close``).

Requests that h11 cannot parse (bad request line or headers, headers over
16 KiB, an unknown Transfer-Encoding) never reach the app: hypercorn answers
them itself with an empty body. ``_send_json_error_response`` replaces that
answer with the API's JSON error shape (docs/api.md "Errors"). And
``_TCPServer`` puts a deadline on hypercorn's shielded writes (see
``SEND_TIMEOUT_S``). tests/registry/test_hostile_http.py checks both still
take effect.

``_TCPServer`` also bounds the number of open connections
(``MQTTGATE_HTTP_MAX_CONNECTIONS``, see ``api/http_limits.py``): past the
limit a new connection gets a fixed 503 and is closed before hypercorn reads
anything. tests/registry/test_http_limits.py checks it, and that hypercorn
still builds its connection handlers from the class replaced here.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as _hypercorn_run
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection

from mqttgate.api.errors import _HTTP_CODES
from mqttgate.api.http_limits import REFUSAL, ConnectionGate
from mqttgate.config import Address, Config
from mqttgate.logs import get_logger

log = get_logger("api")

_PROTOCOL_ERROR_DETAIL = {
    400: "the request is not valid HTTP/1.1",
    431: "the request line or headers are too large (at most 16 KiB)",
    501: "unsupported Transfer-Encoding",
}


async def _send_json_error_response(self: Any, status_code: int) -> None:
    """hypercorn's ``H11Protocol._send_error_response``, with a JSON body."""
    body = json.dumps(
        {
            "error": _HTTP_CODES.get(status_code, "bad_request"),
            "detail": _PROTOCOL_ERROR_DETAIL.get(status_code, "malformed request"),
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


setattr(H11Protocol, "_send_error_response", _send_json_error_response)  # noqa: B010

#: Longest one write of a response may take, in seconds. hypercorn shields
#: every write from cancellation, so a client that never reads its response
#: (a Swagger asset, a long device list) held its connection, and the
#: daemon's shutdown, for ever. 10 s for one chunk (at most the whole body of
#: a JSON answer, 8 KiB of a file) cuts only a client that has stopped reading.
SEND_TIMEOUT_S = 10.0


#: Longest the fixed 503 to a refused connection may take to write. It fits
#: the empty send buffer of a new socket, so this is only a backstop.
REFUSAL_SEND_TIMEOUT_S = 1.0


class _HyperConfig(HyperConfig):
    """hypercorn's config, carrying the connection gate to ``_TCPServer``."""

    connection_gate: ConnectionGate | None = None


class _TCPServer(TCPServer):
    """hypercorn's connection handler, with a connection limit and a deadline
    on every write."""

    async def run(self) -> None:
        gate = getattr(self.config, "connection_gate", None)
        if gate is None:
            await super().run()
            return
        if not gate.try_open():
            await _refuse(gate, self.stream)
            return
        try:
            await super().run()
        finally:
            gate.close()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The peer has gone (EOF, reset or read error). hypercorn's h11
        # protocol does not report that while the connection is idle between
        # requests, so the connection (and its slot in the gate) stayed open
        # until the keep-alive timer fired, 5 s later. Nothing more can arrive:
        # stop the timer; run() then closes the socket at once. A request
        # still being answered is unaffected (the timer only runs when idle).
        await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        async with self.send_lock:
            # Still shielded (a cancelled write would leave the stream in an
            # unknown state), but with its own deadline.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SEND_TIMEOUT_S
                try:
                    await self.stream.send_all(event.data)
                    return
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if scope.cancelled_caught:
                await self.stream.aclose()  # the write stopped half way: unusable
            await self.protocol.handle(Closed())


setattr(_hypercorn_run, "TCPServer", _TCPServer)  # noqa: B010


async def _refuse(gate: ConnectionGate, stream: Any) -> None:
    """Answer a connection over the limit with the fixed 503 and close it."""
    suppressed = gate.log_refusal(trio.current_time())
    if suppressed is not None:
        log.warning(
            "http_connections_refused",
            peer=_peer(stream), limit=gate.limit, suppressed=suppressed,
        )
    # Plain TCP only: on a TLS stream the bytes would start a handshake first.
    if isinstance(stream, trio.SocketStream):
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT_S):
            try:
                await stream.send_all(REFUSAL)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await trio.aclose_forcefully(stream)


def _peer(stream: Any) -> str | None:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (AttributeError, OSError, ValueError):
        return None
    return f"{host}:{port}"


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
    max_connections: int | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until ``shutdown`` is set; report the bound addresses.

    ``max_connections`` defaults to ``http_max_connections`` of the app's
    mqttgate config (``create_app`` puts it in ``app.extensions``). The
    connection gate goes into the same dict, where /metrics reads it.
    """
    services = app.extensions.get("mqttgate")
    if not isinstance(services, dict):
        services = {}
    if max_connections is None:
        app_config = services.get("config")
        if not isinstance(app_config, Config):
            app_config = Config()
        max_connections = app_config.http_max_connections
    gate = ConnectionGate(max_connections)
    services["http_connections"] = gate
    config = _HyperConfig()
    config.connection_gate = gate
    config.bind = [str(listen)]
    config.graceful_timeout = graceful_timeout
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 5
    await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
