from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from edgefleet.agent.link import backoff_s
from edgefleet.agent.metrics import InferenceMetrics


def test_interval_reports_counts_and_percentiles_then_resets() -> None:
    metrics = InferenceMetrics()
    latencies_s = [i / 1000 for i in range(1, 101)]
    for latency in latencies_s:
        metrics.record(latency)
    metrics.record_error()
    stats = metrics.interval()
    assert (stats.inferences, stats.errors) == (100, 1)
    assert stats.latency is not None
    expected = np.percentile(np.array(latencies_s) * 1000, [50, 95, 99])
    assert stats.latency.p50_ms == pytest.approx(expected[0])
    assert stats.latency.p95_ms == pytest.approx(expected[1])
    assert stats.latency.p99_ms == pytest.approx(expected[2])

    metrics.record(0.5)
    again = metrics.interval()
    assert (again.inferences, again.errors) == (1, 0)
    assert (again.inferences_total, again.errors_total) == (101, 1)
    assert again.latency is not None
    assert again.latency.p50_ms == pytest.approx(500)
    assert metrics.interval().latency is None


def test_percentiles_cover_the_most_recent_when_the_ring_overflows() -> None:
    metrics = InferenceMetrics(ring_size=10)
    for _ in range(50):
        metrics.record(1.0)
    for _ in range(10):
        metrics.record(0.002)
    stats = metrics.interval()
    assert stats.inferences == 60
    assert stats.latency is not None
    assert stats.latency.p99_ms == pytest.approx(2.0)


def test_concurrent_recording_loses_no_counts() -> None:
    metrics = InferenceMetrics(ring_size=64)

    def work() -> None:
        for _ in range(5000):
            metrics.record(0.001)
            metrics.record_error()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = metrics.interval()
    assert (stats.inferences, stats.errors) == (20000, 20000)


def test_reconnect_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    waits = [[backoff_s(a, min_s=0.5, max_s=30, rng=rng) for _ in range(200)] for a in range(12)]
    for attempt, samples in enumerate(waits):
        ceiling = min(30, 0.5 * 2**attempt)
        assert all(ceiling / 2 <= w <= ceiling for w in samples)
        assert max(samples) - min(samples) > ceiling / 4  # really jittered
    assert max(waits[-1]) <= 30
    assert backoff_s(10_000, min_s=0.5, max_s=30, rng=rng) <= 30


def test_totals_between_intervals_count_now_and_leave_the_percentiles_alone() -> None:
    metrics = InferenceMetrics(ring_size=16)
    for _ in range(5):
        metrics.record(0.004)
    metrics.record_error()
    assert metrics.totals() == (5, 1)  # a scrape: counted now, no interval closed
    metrics.record(0.004)
    assert metrics.totals() == (6, 1)
    stats = metrics.interval()
    assert (stats.inferences, stats.errors, stats.inferences_total) == (6, 1, 6)
    assert stats.latency is not None
    # The scrapes' marker slots are not latencies: every percentile is a recorded 4 ms.
    assert stats.latency.p50_ms == pytest.approx(4.0)
    assert stats.latency.p99_ms == pytest.approx(4.0)
    assert metrics.last_interval is stats


def test_many_scrapes_without_an_interval_keep_counts_and_memory_bounded() -> None:
    metrics = InferenceMetrics(ring_size=8)
    for i in range(1000):
        metrics.record(0.002)
        assert metrics.totals() == (i + 1, 0)
    stats = metrics.interval()
    assert stats.inferences == 1000
    assert stats.latency is not None
    assert stats.latency.p50_ms == pytest.approx(2.0)
    assert len(metrics._ring) == 8
