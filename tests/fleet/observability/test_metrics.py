"""`FleetMetrics`: what each group records, and the bounds on its labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry

from edgefleet.fleet.observability import metrics as m
from edgefleet.fleet.observability.metrics import FleetMetrics
from edgefleet.fleet.rollouts.model import (
    Candidate,
    Decision,
    DeviceRolloutState,
    GateDecision,
    ModelTarget,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    Selector,
    Wave,
)
from edgefleet.fleet.rollouts.policy import new_rollout
from edgefleet.shared.drift import DriftReport
from edgefleet.shared.drift.stats import FeatureScores
from edgefleet.shared.drift.thresholds import FeatureVerdict

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _rollout(n: int = 4) -> RolloutState:
    spec = RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"),
        selector=Selector(tags=("lab",)),
        waves=(Wave(count=1), Wave(fraction=1.0)),
    )
    candidates = [Candidate(device_id=f"d{i}", tags=("lab",)) for i in range(n)]
    return new_rollout("r1", spec, candidates, {}, T0)


def _report(**psi_by_feature: float | None) -> DriftReport:
    verdicts = [
        FeatureVerdict(
            scores=FeatureScores(
                name=name,
                role="input",
                kind="numeric",
                count=100,
                reference_count=100,
                missing_rate=0.0,
                reference_missing_rate=0.0,
                psi=psi,
                js=None if psi is None else psi / 10,
            ),
            crossed=[],
            status="ok",
        )
        for name, psi in psi_by_feature.items()
    ]
    return DriftReport(
        profile_id="p",
        count=100,
        labelled=0,
        judged=True,
        features=verdicts,
        drifted_inputs=[],
        drifted_outputs=[],
        data_drift=False,
        prediction_drift=False,
    )


@pytest.fixture
def metrics() -> FleetMetrics:
    return FleetMetrics(CollectorRegistry())


def value(metrics: FleetMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_two_services_in_one_process_do_not_collide() -> None:
    first, second = FleetMetrics(CollectorRegistry()), FleetMetrics(CollectorRegistry())
    first.director.record(0.01, ok=3, failed=0)
    assert value(second, "edgefleet_director_desired_published_total", outcome="ok") == 0


def test_every_enum_label_exists_at_zero_before_anything_happens(metrics: FleetMetrics) -> None:
    for state in DeviceRolloutState:
        assert value(metrics, "edgefleet_rollout_devices", state=state.value) == 0
    for status in RolloutStatus:
        assert value(metrics, "edgefleet_rollouts_active", status=status.value) == 0
    assert value(metrics, "edgefleet_rollout_gate_decisions_total", result="failed") == 0
    assert (
        value(metrics, "edgefleet_drift_alerts_total", kind="concept_drift", severity="critical")
        == 0
    )


def test_devices_per_state_count_the_active_rollouts_and_clear_without_the_lease(
    metrics: FleetMetrics,
) -> None:
    first = _rollout(4)
    second = _rollout(2).model_copy(update={"rollout_id": "r2", "status": RolloutStatus.RUNNING})
    metrics.rollouts.set_active([first, second])
    assert value(metrics, "edgefleet_rollout_devices", state="pending") == 6
    assert value(metrics, "edgefleet_rollouts_active", status="created") == 1
    assert value(metrics, "edgefleet_rollouts_active", status="running") == 1
    assert value(metrics, "edgefleet_rollout_lease_held") == 1

    metrics.rollouts.set_active(None)  # another replica holds the lease: it reports them
    assert value(metrics, "edgefleet_rollout_devices", state="pending") == 0
    assert value(metrics, "edgefleet_rollout_lease_held") == 0


def test_a_gate_decision_counts_and_times_the_wave_from_its_start(metrics: FleetMetrics) -> None:
    before = _rollout().model_copy(
        update={"status": RolloutStatus.RUNNING, "current_wave": 0, "wave_started_at": T0}
    )
    decision = Decision(
        state=before, actions=(GateDecision(wave=0, passed=False, reasons=("failure ratio",)),)
    )
    metrics.rollouts.record(before, decision, T0 + timedelta(seconds=90))
    assert value(metrics, "edgefleet_rollout_gate_decisions_total", result="failed") == 1
    assert value(metrics, "edgefleet_rollout_gate_decisions_total", result="passed") == 0
    assert value(metrics, "edgefleet_rollout_wave_duration_seconds_sum", result="failed") == 90
    assert (
        value(metrics, "edgefleet_rollout_wave_duration_seconds_bucket", result="failed", le="60.0")
        == 0
    )

    metrics.rollouts.record(before, Decision(state=before), T0)  # no gate: nothing counted
    assert value(metrics, "edgefleet_rollout_wave_duration_seconds_count", result="failed") == 1


def test_drift_scores_leave_out_device_slices_and_drop_stale_series(metrics: FleetMetrics) -> None:
    metrics.drift.set_scores(
        {
            ("wine", "1.1.0", "fleet"): _report(alcohol=0.4, ash=0.1),
            ("wine", "1.1.0", "tag:lab"): _report(alcohol=float("nan"), ash=0.2),
            ("wine", "1.1.0", "device:d1"): _report(alcohol=9.0),
        }
    )
    fleet = {"model": "wine", "version": "1.1.0", "slice": "fleet"}
    assert value(metrics, "edgefleet_drift_score", score="psi", **fleet) == 0.4
    assert value(metrics, "edgefleet_drift_score", score="js", **fleet) == pytest.approx(0.04)
    tag = fleet | {"slice": "tag:lab"}
    assert value(metrics, "edgefleet_drift_score", score="psi", **tag) == 0.2  # NaN ignored
    exported = [
        s.labels
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "edgefleet_drift_score"
    ]
    assert all(not labels["slice"].startswith("device:") for labels in exported)

    metrics.drift.set_scores({("wine", "1.2.0", "fleet"): _report(alcohol=0.05)})
    assert value(metrics, "edgefleet_drift_score", score="psi", **fleet) is None
    assert value(metrics, "edgefleet_drift_score", score="psi", **fleet | {"version": "1.2.0"})


def test_slices_without_a_verdict_are_counted_per_version(metrics: FleetMetrics) -> None:
    """A slow sensor's slice never fills min_count: the scrape says how many wait so."""
    slow = _report(alcohol=0.0).model_copy(update={"judged": False, "count": 40})
    metrics.drift.set_scores(
        {
            ("wine", "1.1.0", "fleet"): _report(alcohol=0.1),
            ("wine", "1.1.0", "device:slow-1"): slow,
            ("wine", "1.1.0", "device:slow-2"): slow,
            ("wine", "1.2.0", "fleet"): _report(alcohol=0.1),
        }
    )
    assert value(metrics, "edgefleet_drift_unjudged_slices", model="wine", version="1.1.0") == 2
    assert value(metrics, "edgefleet_drift_unjudged_slices", model="wine", version="1.2.0") == 0
    metrics.drift.set_scores({("wine", "1.2.0", "fleet"): slow})
    assert value(metrics, "edgefleet_drift_unjudged_slices", model="wine", version="1.1.0") is None
    assert value(metrics, "edgefleet_drift_unjudged_slices", model="wine", version="1.2.0") == 1


def test_drift_score_series_are_capped_and_the_rest_counted(
    metrics: FleetMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(m, "MAX_DRIFT_SCORE_SERIES", 3)
    metrics.drift.set_scores({("wine", "1", f"tag:t{i}"): _report(a=0.1) for i in range(5)})
    assert value(metrics, "edgefleet_drift_score_series_dropped_total") == 7  # 10 - 3
    exported = [
        s
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "edgefleet_drift_score"
    ]
    assert len(exported) == 3


def test_alerts_are_counted_by_kind_and_severity(metrics: FleetMetrics) -> None:
    metrics.drift.record_alerts([("data_drift", "warning"), ("data_drift", "warning")])
    assert (
        value(metrics, "edgefleet_drift_alerts_total", kind="data_drift", severity="warning") == 2
    )
