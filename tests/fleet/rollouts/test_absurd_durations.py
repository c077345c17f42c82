"""A stored gate with absurd durations never makes the pure core raise.

Rows written before the schema bounded ``timeout_s``, ``soak_s`` and
``metrics_timeout_s`` (1e15 was accepted) are still read back and decided on; a device may
report a timestamp at the far end of the calendar. Each of these used to raise
`OverflowError` from `timedelta` inside `decide`, which stopped every rollout's tick.
The gates here are built with `replace`, which skips validation, as a stored row would be
read by an older model.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.fleet.rollouts import (
    DeviceRolloutState,
    FailurePolicy,
    Gate,
    MarkTimedOut,
    RolloutState,
    RolloutStatus,
    Wave,
    decide,
    new_rollout,
)
from edgefleet.fleet.rollouts.gates import MAX_SPAN_S, span_s
from edgefleet.fleet.rollouts.model import DeviceObservation
from edgefleet.shared.replace import replace
from tests.fleet.rollouts.support import T0, failed, fleet, healthy, idle, observe, spec

S = RolloutStatus
HUGE = (1e15, 1e300, math.inf, math.nan)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)


def absurd(**values: float) -> Gate:
    """A gate past today's bounds, as a stored row of an older schema holds it."""
    return replace(Gate(), **values)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(gate: Gate, **overrides: object) -> tuple[RolloutState, dict[str, DeviceObservation]]:
    devices = fleet(2)
    state = new_rollout(
        "r-absurd", spec(gate=gate, waves=(Wave(fraction=1.0),), **overrides), devices, {}, T0
    )
    obs = idle(devices)
    return decide(state, obs, None, T0).state, obs


@pytest.mark.parametrize("timeout_s", HUGE)
def test_huge_device_timeout_means_never_not_overflow(timeout_s: float) -> None:
    state, obs = started(absurd(timeout_s=timeout_s))
    away = state.targets[0]
    obs[away] = observe(away, online=False)
    decision = decide(state, obs, None, later(10 * 365 * 86400))
    assert not [a for a in decision.actions if isinstance(a, MarkTimedOut)]
    assert decision.state.devices[away].state is DeviceRolloutState.OFFLINE


@pytest.mark.parametrize("soak_s", HUGE)
def test_huge_soak_keeps_the_wave_soaking(soak_s: float) -> None:
    state, obs = started(absurd(soak_s=soak_s))
    for d in state.targets:
        obs[d] = healthy(d, later(5))
    decision = decide(state, obs, None, later(60))
    assert decision.state.status is S.SOAKING
    assert decision.actions == ()


@pytest.mark.parametrize("metrics_timeout_s", HUGE)
def test_huge_metrics_timeout_keeps_waiting_for_metrics(metrics_timeout_s: float) -> None:
    gate = absurd(max_error_rate_increase=0.02, metrics_timeout_s=metrics_timeout_s)
    state, obs = started(gate)
    for d in state.targets:
        obs[d] = healthy(d, later(5))
    decision = decide(state, obs, None, later(86400))
    assert decision.state.status is S.SOAKING
    assert decision.actions == ()


@pytest.mark.parametrize("timeout_s", HUGE)
def test_huge_rollback_timeout_keeps_rolling_back(timeout_s: float) -> None:
    state, obs = started(absurd(timeout_s=timeout_s), failure_policy=FailurePolicy.ROLLBACK_ALL)
    good, bad = state.targets
    obs[good], obs[bad] = healthy(good, later(5)), failed(bad, later(6))
    rolling = decide(state, obs, None, later(10)).state
    assert rolling.status is S.ROLLING_BACK
    obs[good] = observe(good, online=False, version="2.0.0")  # never confirms the rollback
    assert decide(rolling, obs, None, later(10 * 365 * 86400)).state.status is S.ROLLING_BACK


def test_device_healthy_at_the_end_of_the_calendar_does_not_overflow_the_soak() -> None:
    state, obs = started(Gate(soak_s=60))
    for d in state.targets:
        obs[d] = healthy(d, FAR_FUTURE)
    assert decide(state, obs, None, later(120)).state.status is S.SOAKING


def test_span_clamps_to_a_finite_never() -> None:
    assert [span_s(v) for v in (-1.0, 0.0, 30.0)] == [0.0, 0.0, 30.0]
    assert {span_s(v) for v in HUGE} == {MAX_SPAN_S}
    assert math.isfinite(MAX_SPAN_S)


durations = st.floats(min_value=0, allow_infinity=True) | st.just(math.nan)


@settings(max_examples=200, deadline=None)
@given(
    timeout_s=durations,
    soak_s=durations,
    metrics_timeout_s=durations,
    when=st.datetimes(timezones=st.just(UTC)),
    step_s=st.floats(min_value=0, max_value=1e11),
)
def test_no_stored_duration_or_device_time_makes_decide_raise(
    timeout_s: float, soak_s: float, metrics_timeout_s: float, when: datetime, step_s: float
) -> None:
    gate = absurd(
        timeout_s=timeout_s,
        soak_s=soak_s,
        metrics_timeout_s=metrics_timeout_s,
        max_error_rate_increase=0.1,
    )
    state, obs = started(gate, failure_policy=FailurePolicy.ROLLBACK_FAILED)
    good, bad = state.targets
    obs[good], obs[bad] = healthy(good, when), failed(bad, when)
    decide(state, obs, None, later(step_s))
