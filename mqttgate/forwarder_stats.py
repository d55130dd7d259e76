"""Counters of the JetStream forwarder (for /metrics) and a log rate limiter."""

from __future__ import annotations

import collections
from collections.abc import Callable

import attrs
import trio

from mqttgate.histogram import LatencyHistogram

#: Shortest gap between two identical rate-limited log events.
LOG_EVERY_S = 5.0

@attrs.define
class ForwarderStats:
    """Plain counters for /metrics (all ``*_total`` only grow)."""

    #: Messages JetStream acknowledged (QoS 1/2) or handed to NATS (QoS 0), by QoS.
    forwarded_total: dict[int, int] = attrs.Factory(lambda: {0: 0, 1: 0, 2: 0})
    #: QoS 1/2 messages not stored before their deadline (tickets failed).
    failed_total: int = 0
    #: Messages whose topic has no NATS subject.
    refused_total: int = 0
    #: QoS 0 messages dropped: queue full or NATS disconnected.
    dropped_qos0_total: int = 0
    #: Publishes sent again (no ack in time, reconnect, JetStream error, a
    #: batch the connection did not take).
    retries_total: int = 0
    #: Acks flagged duplicate by JetStream (stored once, thanks to Nats-Msg-Id).
    duplicates_total: int = 0
    #: JetStream error replies (no stream, storage full...).
    publish_errors_total: int = 0
    disconnects_total: int = 0
    connected: bool = False
    queue_capacity: int = 0
    max_pending: int = 0
    ack_latency: LatencyHistogram = attrs.Factory(LatencyHistogram)
    _queue_depth: Callable[[], int] = attrs.field(default=lambda: 0, repr=False)
    _pending_acks: Callable[[], int] = attrs.field(default=lambda: 0, repr=False)

    @property
    def queue_depth(self) -> int:
        """Messages waiting in the channel now."""
        return self._queue_depth()

    @property
    def pending_acks(self) -> int:
        """QoS 1/2 messages taken off the channel and not yet acked or failed."""
        return self._pending_acks()


class RateLimited:
    """Log an event at most once per LOG_EVERY_S, with how many were suppressed."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> int | None:
        """The number suppressed since the last one when allowed, else None."""
        now = trio.current_time()
        last = self._last.get(key)
        if last is not None and now - last < LOG_EVERY_S:
            self._suppressed[key] += 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
