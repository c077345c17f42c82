"""How long the orchestrator waits between ticks: the interval, paced by the tick's CPU."""

from __future__ import annotations

import pytest

from edgefleet.fleet.rollout_service.orchestrator import TICK_CPU_BACKOFF, next_wait_s


def test_a_cheap_tick_waits_for_the_rest_of_the_interval() -> None:
    assert next_wait_s(1.0, elapsed_s=0.1, cpu_s=0.05, lease_s=5.0) == pytest.approx(0.9)


def test_a_costly_tick_waits_a_multiple_of_its_cpu() -> None:
    # 0.25 s of CPU at 10,000 devices: at most a quarter of a core, not most of one.
    wait = next_wait_s(0.5, elapsed_s=0.3, cpu_s=0.25, lease_s=5.0)
    assert wait == pytest.approx(TICK_CPU_BACKOFF * 0.25)
    assert 0.25 / (0.3 + wait) <= 1 / (1 + TICK_CPU_BACKOFF) + 1e-9


def test_the_wait_never_outlasts_the_lease_renewal() -> None:
    # A third of the lease is when the holder renews: waiting longer would risk it.
    assert next_wait_s(0.5, elapsed_s=0.5, cpu_s=2.0, lease_s=3.0) == pytest.approx(0.5)
    assert next_wait_s(0.5, elapsed_s=1.5, cpu_s=1.5, lease_s=3.0) == 0.0
