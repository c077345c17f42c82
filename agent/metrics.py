"""Inference counters and latency percentiles, cheap enough to record on every call.

Invariants:
- recording takes no lock: each call draws a ticket from an `itertools.count` (one C
  call, atomic under the GIL and thread-safe on free-threaded builds) and stores its
  latency in nanoseconds into a preallocated list at ``ticket % ring size``, so
  concurrent callers never lose a count;
- `interval` (one caller at a time: the telemetry thread) draws a ticket itself to learn
  how many were drawn; those marker tickets are not inferences and are subtracted;
- percentiles are computed only when telemetry asks for an interval. If an interval has
  more inferences than the ring holds, its percentiles cover the most recent ones; a
  latency still being stored as the interval closes may show up in the next one;
- `totals` (the agent's ``/metrics``) reads the running counts between intervals: it
  draws marker tickets too, under the same lock, and writes `_NO_LATENCY` into their ring
  slots, which `interval` leaves out. Nothing is remembered per scrape, so a device
  scraped often and reporting rarely keeps a constant footprint.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edgefleet.shared.messages import LatencyPercentiles

DEFAULT_RING_SIZE = 8192
# In the ring slot of a `totals` marker ticket: not a latency (real ones are >= 0).
_NO_LATENCY = -1


@dataclass(frozen=True, slots=True)
class IntervalStats:
    """What happened since the previous `InferenceMetrics.interval` call."""

    inferences: int
    errors: int
    inferences_total: int
    errors_total: int
    latency: LatencyPercentiles | None


class _Tally:
    """A lock-free monotonic counter whose current value `read` can sample.

    ``read`` draws a marker ticket; markers are remembered so the count excludes them.
    Only one thread may call ``read`` at a time (the caller holds a lock).
    """

    __slots__ = ("_markers", "tickets")

    def __init__(self) -> None:
        self.tickets = itertools.count()
        self._markers = 0

    def read(self) -> tuple[int, int]:
        """(the marker ticket just drawn, how many real tickets were drawn before it)."""
        ticket = next(self.tickets)
        value = ticket - self._markers
        self._markers += 1
        return ticket, value


class InferenceMetrics:
    """Thread-safe counters of inferences and errors, and a ring of recent latencies.

    ``observer``, when set, is told about every inference (``ok``, latency in ms); the
    update runner uses it to judge a model on probation.
    """

    def __init__(self, ring_size: int = DEFAULT_RING_SIZE) -> None:
        if ring_size < 1:
            raise ValueError(f"ring_size must be at least 1, found {ring_size}")
        self.observer: Callable[[bool, float], None] | None = None
        self._size = ring_size
        self._ring: list[int] = [0] * ring_size
        self._ok = _Tally()
        self._errors = _Tally()
        self._ok_ticket = self._ok.tickets
        self._interval_lock = threading.Lock()
        self._last_ok_ticket = -1
        self._last_ok = 0
        self._last_errors = 0
        self._last_interval: IntervalStats | None = None

    def record_ns(self, latency_ns: int) -> None:
        """Count one successful inference that took ``latency_ns`` nanoseconds."""
        self._ring[next(self._ok_ticket) % self._size] = latency_ns
        observer = self.observer
        if observer is not None:
            observer(True, latency_ns * 1e-6)

    def latency_slots(self) -> tuple[list[int], Iterator[int], int]:
        """(ring, ticket counter, ring size), for a hot path that records inline.

        ``ring[next(tickets) % size] = latency_ns`` is `record_ns` without its call and
        without telling ``observer``, which the caller then checks itself.
        """
        return self._ring, self._ok_ticket, self._size

    def record(self, latency_s: float) -> None:
        """Count one successful inference that took ``latency_s`` seconds."""
        self.record_ns(int(latency_s * 1e9))

    def record_error(self) -> None:
        """Count one inference that the runtime failed to complete."""
        next(self._errors.tickets)
        observer = self.observer
        if observer is not None:
            observer(False, 0.0)

    def interval(self) -> IntervalStats:
        """Close the current interval: its counts and latency percentiles, then reset."""
        with self._interval_lock:
            ticket, ok_total = self._ok.read()
            _, errors_total = self._errors.read()
            # This interval's real tickets lie strictly between the previous marker and
            # this one, so the marker slots (never written) are never read.
            inferences = ok_total - self._last_ok
            errors = errors_total - self._last_errors
            first = self._last_ok_ticket + 1
            self._last_ok_ticket, self._last_ok, self._last_errors = ticket, ok_total, errors_total
            # Between the two interval markers lie this interval's inferences and the
            # `totals` markers (tagged `_NO_LATENCY`); a ring lap back at most.
            span = min(ticket - first, self._size)
            ring = self._ring
            found = [ring[t % self._size] for t in range(ticket - span, ticket)]
            latencies_ns = (
                [v for v in found if v != _NO_LATENCY][-inferences:] if inferences else []
            )
        latency = None
        if latencies_ns:
            ms = np.asarray(latencies_ns, dtype=np.float64) * 1e-6
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            latency = LatencyPercentiles(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99))
        stats = IntervalStats(inferences, errors, ok_total, errors_total, latency=latency)
        self._last_interval = stats
        return stats

    @property
    def last_interval(self) -> IntervalStats | None:
        """What the most recent `interval` returned (None before the first one)."""
        return self._last_interval

    def totals(self) -> tuple[int, int]:
        """(successful inferences, errors) since start, counted now; thread-safe."""
        with self._interval_lock:
            ticket, ok_total = self._ok.read()
            self._ring[ticket % self._size] = _NO_LATENCY
            _, errors_total = self._errors.read()
        return ok_total, errors_total
