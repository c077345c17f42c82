"""Inference counters and latency percentiles, cheap enough to record on every call.

`record` is a lock, two additions and one store into a preallocated numpy ring; the
percentiles are computed only when telemetry asks for an interval. If an interval has
more inferences than the ring holds, its percentiles cover the most recent ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from shared.messages import LatencyPercentiles

DEFAULT_RING_SIZE = 8192


@dataclass(frozen=True, slots=True)
class IntervalStats:
    """What happened since the previous `InferenceMetrics.interval` call."""

    inferences: int
    errors: int
    inferences_total: int
    errors_total: int
    latency: LatencyPercentiles | None


class InferenceMetrics:
    """Thread-safe counters of inferences and errors, and a ring of recent latencies."""

    def __init__(self, ring_size: int = DEFAULT_RING_SIZE) -> None:
        self._lock = threading.Lock()
        self._ring = np.zeros(ring_size, dtype=np.float64)
        self._filled = 0  # latencies written this interval (may exceed the ring size)
        self._inferences = 0
        self._errors = 0
        self._inferences_total = 0
        self._errors_total = 0

    def record(self, latency_s: float) -> None:
        """Count one successful inference that took ``latency_s`` seconds."""
        with self._lock:
            self._ring[self._filled % len(self._ring)] = latency_s
            self._filled += 1
            self._inferences += 1
            self._inferences_total += 1

    def record_error(self) -> None:
        """Count one inference that the runtime failed to complete."""
        with self._lock:
            self._errors += 1
            self._errors_total += 1

    @property
    def inferences_total(self) -> int:
        return self._inferences_total

    @property
    def errors_total(self) -> int:
        return self._errors_total

    def interval(self) -> IntervalStats:
        """Close the current interval: its counts and latency percentiles, then reset."""
        with self._lock:
            latencies = self._ring[: min(self._filled, len(self._ring))].copy()
            stats = (self._inferences, self._errors, self._inferences_total, self._errors_total)
            self._filled = 0
            self._inferences = 0
            self._errors = 0
        latency = None
        if latencies.size:
            p50, p95, p99 = np.percentile(latencies * 1000.0, [50, 95, 99])
            latency = LatencyPercentiles(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99))
        return IntervalStats(*stats, latency=latency)
