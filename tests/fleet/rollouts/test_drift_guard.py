"""The gate's drift guard in the pure core: the new version's drift score on its wave
against ``max_drift_score``, with no baseline side."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.fleet.rollouts import (
    Assign,
    FailurePolicy,
    Gate,
    GateDecision,
    RollBack,
    RolloutState,
    RolloutStatus,
    StartWave,
    VersionMetrics,
    Wave,
    WaveMetrics,
    decide,
    new_rollout,
)
from edgefleet.fleet.rollouts.model import DeviceObservation
from tests.fleet.rollouts.support import NEW, OLD, T0, fleet, healthy, idle, of_kind, spec

DRIFT = Gate(max_drift_score=0.25, min_metric_samples=200, soak_s=60, metrics_timeout_s=600)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def healthy_wave(
    gate: Gate = DRIFT, policy: FailurePolicy = FailurePolicy.PAUSE
) -> tuple[RolloutState, dict[str, DeviceObservation], list[str]]:
    """Wave 0 (2 of 6 devices) assigned at T0 and healthy at +5 s."""
    devices = fleet(6)
    rollout = spec(waves=(Wave(count=2), Wave(fraction=1.0)), gate=gate, failure_policy=policy)
    state = decide(new_rollout("r-1", rollout, devices, {}, T0), idle(devices), None, T0).state
    obs = idle(devices)
    first = [r.device_id for r in state.wave_members(0)]
    for d in first:
        obs[d] = healthy(d, s(5))
    return state, obs, first


def drift(
    score: float | None,
    samples: int = 1000,
    *,
    feature: str | None = "input alcohol",
    unavailable: str | None = None,
    wave: int = 0,
) -> WaveMetrics:
    """Metrics with only a drift score (no telemetry) and no previous version."""
    candidate = VersionMetrics(
        version=NEW,
        drift_score=score,
        drift_feature=feature if score is not None else None,
        drift_samples=samples,
        drift_unavailable=unavailable,
    )
    return WaveMetrics(wave=wave, candidate=candidate)


def gate_of(actions: tuple[object, ...] | list[object]) -> list[GateDecision]:
    return of_kind(list(actions), GateDecision)


@pytest.mark.parametrize(
    ("policy", "status", "rolled_back"),
    [
        (FailurePolicy.PAUSE, RolloutStatus.PAUSED, 0),
        (FailurePolicy.ROLLBACK_ALL, RolloutStatus.ROLLING_BACK, 2),
    ],
)
def test_drift_above_the_maximum_fails_the_gate_naming_feature_and_score(
    policy: FailurePolicy, status: RolloutStatus, rolled_back: int
) -> None:
    state, obs, first = healthy_wave(policy=policy)
    # during the soak: a violated guard does not wait for the soak to end
    decision = decide(state, obs, drift(0.731), s(10))
    gates = gate_of(decision.actions)
    assert [(g.wave, g.passed) for g in gates] == [(0, False)]
    assert gates[0].reasons == ("drift score 0.731 above the maximum 0.25: PSI of input alcohol",)
    assert decision.state.status is status
    rollbacks = of_kind(list(decision.actions), RollBack)
    assert {(r.device_id, r.to_version) for r in rollbacks} == (
        {(d, OLD) for d in first} if rolled_back else set()
    )
    assert of_kind(list(decision.actions), Assign) == []


def test_drift_within_the_maximum_passes_after_the_soak_without_a_baseline() -> None:
    state, obs, _ = healthy_wave()
    soaking = decide(state, obs, drift(0.08), s(30))
    assert gate_of(soaking.actions) == []
    assert soaking.state.status is RolloutStatus.SOAKING
    decision = decide(soaking.state, obs, drift(0.08), s(70))
    gates = gate_of(decision.actions)
    assert [(g.wave, g.passed) for g in gates] == [(0, True)]
    assert "drift score 0.08 <= 0.25: PSI of input alcohol" in gates[0].reasons
    assert of_kind(list(decision.actions), StartWave)[0].index == 1


def test_score_equal_to_the_maximum_passes() -> None:
    state, obs, _ = healthy_wave()
    gates = gate_of(decide(state, obs, drift(0.25), s(70)).actions)
    assert [g.passed for g in gates] == [True]


@pytest.mark.parametrize(
    ("metrics", "missing"),
    [
        (
            drift(None, 0, unavailable="no reference profile for wine 2.0.0"),
            "new version 2.0.0 has 0/200 drift samples (no reference profile for wine 2.0.0)",
        ),
        (
            drift(None, 150, unavailable="150 rows, the drift thresholds judge from 200"),
            "new version 2.0.0 has 150/200 drift samples (150 rows, the drift thresholds judge "
            "from 200)",
        ),
        # a score on fewer rows than the gate asks for is not yet evidence
        (drift(3.0, 150), "new version 2.0.0 has 150/200 drift samples"),
        (None, "no metrics for this wave"),
    ],
)
def test_missing_drift_score_waits_then_fails_after_the_metrics_timeout(
    metrics: WaveMetrics | None, missing: str
) -> None:
    state, obs, _ = healthy_wave()
    waiting = decide(state, obs, metrics, s(65 + 599))
    assert gate_of(waiting.actions) == []
    assert waiting.state.status is RolloutStatus.SOAKING
    decision = decide(waiting.state, obs, metrics, s(65 + 600))
    gates = gate_of(decision.actions)
    assert [(g.wave, g.passed) for g in gates] == [(0, False)]
    assert gates[0].reasons == (f"{missing} 600 s after the soak",)
    assert decision.state.status is RolloutStatus.PAUSED


def test_another_waves_drift_is_not_this_waves_evidence() -> None:
    state, obs, _ = healthy_wave()
    decision = decide(state, obs, drift(5.0, wave=1), s(70))
    assert gate_of(decision.actions) == []


def test_drift_guard_works_alongside_the_comparing_guards() -> None:
    gate = DRIFT.model_copy(update={"max_error_rate_increase": 0.02})
    state, obs, _ = healthy_wave(gate)
    both = WaveMetrics(
        wave=0,
        candidate=VersionMetrics(
            version=NEW,
            error_rate=0.01,
            inference_samples=500,
            drift_score=0.9,
            drift_feature="output label",
            drift_samples=500,
        ),
        baseline=VersionMetrics(version=OLD, error_rate=0.01, inference_samples=500),
    )
    gates = gate_of(decide(state, obs, both, s(70)).actions)
    assert [g.passed for g in gates] == [False]
    assert gates[0].reasons == ("drift score 0.9 above the maximum 0.25: PSI of output label",)


@given(
    score=st.floats(min_value=0, max_value=50, allow_nan=False),
    limit=st.floats(min_value=0, max_value=50, allow_nan=False),
    samples=st.integers(min_value=0, max_value=5000),
    need=st.integers(min_value=1, max_value=2000),
)
def test_drift_verdict_after_the_soak_is_a_pure_threshold(
    score: float, limit: float, samples: int, need: int
) -> None:
    gate = Gate(max_drift_score=limit, min_metric_samples=need, soak_s=0, metrics_timeout_s=0)
    state, obs, _ = healthy_wave(gate)
    gates = gate_of(decide(state, obs, drift(score, samples), s(10)).actions)
    assert len(gates) == 1
    if samples < need:
        assert not gates[0].passed
        assert "drift samples" in gates[0].reasons[0]
    else:
        assert gates[0].passed is (score <= limit + 1e-9)
