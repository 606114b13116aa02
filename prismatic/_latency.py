"""A fixed-bucket latency histogram, cheap enough to sit on the call path.

Each process keeps one for the calls it makes (:mod:`._outbox`); the node reads them at
scrape time (a ``stats`` request to each mailbox) and exposes them as the Prometheus
histogram ``prismatic_call_latency_seconds``. Buckets are upper bounds in seconds; counts
are per bucket (not cumulative) until exposition.
"""

from __future__ import annotations

import bisect

__all__ = ["BUCKETS", "LatencyHistogram"]

BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3,
           1.0, 5.0)


class LatencyHistogram:
    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1

    def snapshot(self) -> list[object]:
        return [self.counts, self.total, self.n]
