"""Counters and histograms for ``GET /metrics`` (updated on the event loop only, so no locks)."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from typing import Any

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative-bucket histogram (Prometheus style): ``counts[i]`` = observations <= ``bounds[i]``."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._bins = [0] * (len(self.bounds) + 1)  # last bin: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._bins[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def to_dict(self) -> dict[str, Any]:
        buckets, running = {}, 0
        for bound, n in zip(self.bounds, self._bins):
            running += n
            buckets[f"le_{bound:g}"] = running
        buckets["le_inf"] = self.count
        return {"buckets": buckets, "count": self.count, "sum": round(self.sum, 3)}


class ServerMetrics:
    """Request counts by endpoint and status, /predict latency, batch sizes, texts served."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.predict_latency_ms = Histogram(LATENCY_BUCKETS_MS)
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.texts_predicted = 0

    def record_request(self, path: str, status: int, latency_ms: float) -> None:
        self.requests[(path, status)] += 1
        if path == "/predict":
            self.predict_latency_ms.observe(latency_ms)

    def record_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        self.texts_predicted += size

    def to_dict(self, *, queue_depth: int, queue_limit: int) -> dict[str, Any]:
        by_status: Counter[str] = Counter()
        by_endpoint: dict[str, dict[str, int]] = {}
        for (path, status), n in sorted(self.requests.items()):
            by_status[str(status)] += n
            by_endpoint.setdefault(path, {})[str(status)] = n
        return {
            "requests_total": sum(self.requests.values()),
            "requests_by_status": dict(sorted(by_status.items())),
            "requests_by_endpoint": by_endpoint,
            "predict_latency_ms": self.predict_latency_ms.to_dict(),
            "batch_size": self.batch_size.to_dict(),
            "batches_total": self.batch_size.count,
            "texts_predicted_total": self.texts_predicted,
            "queue_depth": queue_depth,
            "queue_limit": queue_limit,
        }
