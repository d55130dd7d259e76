"""The bound on concurrent HTTP API connections (``MQTTGATE_HTTP_MAX_CONNECTIONS``).

Theory of operation: hypercorn's trio worker accepts every connection in
``trio.serve_listeners`` and starts one handler (its ``TCPServer``) per
connection, with no limit of its own; each connection then holds a task,
buffers and hypercorn's protocol objects until a timeout. ``ConnectionGate``
counts the open connections. The first thing a handler does
(``_TCPServer.run`` in ``api/server.py``) is ``try_open()``: past the limit
the connection gets the fixed ``REFUSAL`` bytes (a 503 in the API's error
shape) and is closed at once, before hypercorn reads or parses anything. A
flood therefore costs one short task per connection, and the connections
already open keep being served.

Why at the handler and not around the listener: hypercorn builds its
``trio.SocketListener`` objects inside ``worker_serve`` from raw sockets and
offers no hook to wrap them; the handler class is the one thing the server
module already replaces, so the check lives there (one place).

The gate only decides and counts (no I/O, no clock of its own); server.py
writes, closes and logs. No lock: trio is single-threaded, and nothing awaits
between the test and the update in ``try_open``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: Refusals are logged (``http_connections_refused``) at most once per this
#: many seconds, with the number not logged since: a flood must not flood the logs.
LOG_INTERVAL_S = 10.0

_BODY = json.dumps(
    {"error": "too_many_connections", "detail": "too many HTTP connections are open; retry later"}
).encode()
#: The whole answer to a refused connection, sent before its request is read
#: (HTTP lets a server answer early and close). Fixed bytes: nothing to build
#: per refusal, and it fits any socket's empty send buffer, so writing it
#: never waits for the peer.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"\r\n" + _BODY
)


@attrs.define
class ConnectionGate:
    """Open HTTP connections against ``limit``; what /metrics exports."""

    limit: int
    open_count: int = 0
    refused_total: int = 0
    _logged_at: float | None = attrs.field(default=None, init=False)
    _suppressed: int = attrs.field(default=0, init=False)

    def try_open(self) -> bool:
        """Take a slot for a new connection; False (and counted) when full."""
        if self.open_count >= self.limit:
            self.refused_total += 1
            return False
        self.open_count += 1
        return True

    def close(self) -> None:
        """Give back the slot of a connection ``try_open`` admitted."""
        self.open_count -= 1

    def log_refusal(self, now: float) -> int | None:
        """After a refusal: None when it is not to be logged, else how many
        refusals went unlogged since the last logged one."""
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL_S:
            self._suppressed += 1
            return None
        self._logged_at = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    def collect(self) -> Iterator[Metric]:
        """The gate's metrics, read at scrape time by api/ops.py."""
        yield GaugeMetricFamily(
            "mqttgate_http_connections", "HTTP API connections open now", value=self.open_count
        )
        yield CounterMetricFamily(
            "mqttgate_http_connections_refused",
            "HTTP API connections closed at accept because MQTTGATE_HTTP_MAX_CONNECTIONS were open",
            value=self.refused_total,
        )
