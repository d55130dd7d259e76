"""A small latency histogram exported as a Prometheus histogram by /metrics.

Plain attributes incremented on the event loop: cheaper than prometheus-client
objects (which take a lock per observation) on paths that run per message.
"""

from __future__ import annotations

import bisect

import attrs

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@attrs.define
class LatencyHistogram:
    """A latency histogram in seconds (JetStream acks, argon2 verifications).

    ``counts[i]`` counts observations ``<= bounds[i]`` and above the previous
    bound (not cumulative); ``counts[-1]`` is above the last bound (+Inf).
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = attrs.field(
        default=attrs.Factory(lambda self: [0] * (len(self.bounds) + 1), takes_self=True)
    )
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, i.e. the "le" bucket.
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.count += 1

