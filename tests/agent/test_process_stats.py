"""The agent's own process figures agree with psutil's, which they replace on Linux."""

from __future__ import annotations

import time

import numpy as np
import psutil

from edgefleet.agent.process_stats import CpuMeter, memory_total_bytes, rss_bytes


def test_memory_total_is_psutils() -> None:
    assert memory_total_bytes() == psutil.virtual_memory().total


def test_rss_follows_an_allocation_as_psutil_sees_it() -> None:
    before = rss_bytes()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
    during, reference = rss_bytes(), psutil.Process().memory_info().rss
    assert abs(during - reference) < 4 * 2**20
    assert during - before > 48 * 2**20
    del block


def test_cpu_percent_is_near_100_for_a_busy_thread_and_near_0_asleep() -> None:
    meter = CpuMeter()
    reference = psutil.Process()
    reference.cpu_percent(None)
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    busy, busy_reference = meter.percent(), reference.cpu_percent(None)
    # On a loaded machine the spin gets less than a core, but both meters see the same.
    assert 10.0 < busy <= 110.0
    assert abs(busy - busy_reference) < 15.0
    time.sleep(0.3)
    assert meter.percent() < 10.0


def test_no_time_passed_is_zero_percent() -> None:
    meter = CpuMeter(clock=lambda: 5.0)
    assert meter.percent() == 0.0
