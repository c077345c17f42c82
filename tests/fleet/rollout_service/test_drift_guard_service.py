"""The rollout gate's drift guard: the score `wave_metrics` computes from stored windows
(on SQLite and PostgreSQL), and the guard acting through the running fleet with devices
that publish real sketches of the wine model's inputs and outputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

import edgefleet.fleet.store.rollout_tables  # noqa: F401  (registers the rollout tables)
from edgefleet.fleet.drift.store import put_reference, put_thresholds
from edgefleet.fleet.rollout_service import store
from edgefleet.fleet.rollout_service.observe import wave_metrics
from edgefleet.fleet.rollouts.model import (
    DeviceObservation,
    Gate,
    GateDecision,
    ModelTarget,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    Selector,
    Wave,
    WaveMetrics,
)
from edgefleet.fleet.rollouts.policy import decide
from edgefleet.fleet.store.tables import Device, DriftWindowRow
from edgefleet.shared.drift import (
    DriftThresholds,
    ReferenceProfile,
    WindowAccumulator,
    WindowSketch,
    build_profile,
    evaluate,
    merge_all,
)
from edgefleet.shared.messages import EventKind
from edgefleet.simulators.models import SensorFeed, TrainedModel
from tests.fleet.rollout_service.conftest import FAST, StartDevices, publish_models
from tests.fleet.rollout_service.wine_windows import WineWindows
from tests.support.fleet_fixtures import MakeFleet, admin_client
from tests.support.rollouts import wait_status

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DRIFT_GATE = Gate(max_drift_score=0.25, min_metric_samples=200, metrics_timeout_s=60)


# --- the score, from stored windows --------------------------------------------------


class Wine:
    """The wine model's profile and windows of it, without a package."""

    def __init__(self, model: TrainedModel, *, n_bins: int = 10) -> None:
        self.model = model
        self.session = ort.InferenceSession(str(model.path))
        self.profile = build_profile(
            model.x_train,
            self._outputs(model.x_train),
            feature_names=model.feature_names,
            n_bins=n_bins,
        )

    def _outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        label, probabilities = self.session.run(None, {"input": x})
        return {"label": np.asarray(label), "probabilities": np.asarray(probabilities)}

    def window(
        self,
        rows: int,
        *,
        shift: float = 0.0,
        seed: int = 0,
        profile: ReferenceProfile | None = None,
    ) -> WindowSketch:
        feed = SensorFeed(self.model.x_train, seed=seed)
        feed.shift = shift
        x = feed.sample(rows)
        accumulator = WindowAccumulator(profile or self.profile)
        accumulator.add(x, self._outputs(x))
        return accumulator.snapshot()


@pytest.fixture(scope="module")
def wine(wine_model: TrainedModel) -> Wine:
    return Wine(wine_model)


def _device(device_id: str) -> Device:
    return Device(
        device_id=device_id,
        online=True,
        first_seen=T0,
        last_seen=T0,
        model_name="wine",
        model_version="1.0.0",
        last_state_seq=1,
    )


def _window(
    device_id: str, seq: int, sketch: WindowSketch, *, received_s: float, version: str = "1.1.0"
) -> DriftWindowRow:
    received = T0 + timedelta(seconds=received_s)
    return DriftWindowRow(
        device_id=device_id,
        seq=seq,
        ts=received,
        received_at=received,
        model_name="wine",
        model_version=version,
        window_start=received - timedelta(seconds=60),
        window_end=received,
        count=sketch.count,
        sketch=sketch.model_dump(mode="json"),
    )


def _assigned(engine: Engine, gate: Gate = DRIFT_GATE) -> RolloutState:
    """m1 and m2 (of m1, m2, other) in one wave, assigned at T0 + 5 s."""
    with Session(engine) as session:
        session.add_all([_device("m1"), _device("m2"), _device("other")])
        session.commit()
    spec = RolloutSpec(
        model=ModelTarget(name="wine", version="1.1.0"),
        selector=Selector(device_ids=("m1", "m2")),
        waves=(Wave(fraction=1.0, gate=gate),),
    )
    state = store.create(engine, "ro-drift", spec, created_by="a", now=T0).state
    state = decide(state, {}, None, T0 + timedelta(seconds=5)).state
    assert {r.assigned_at for r in state.devices.values()} == {T0 + timedelta(seconds=5)}
    return state


def _metrics(engine: Engine, state: RolloutState) -> WaveMetrics:
    with engine.connect() as conn:
        metrics = wave_metrics(conn, state)
    assert metrics is not None
    return metrics


def test_drift_score_is_the_largest_psi_of_the_waves_windows_since_assignment(
    engine: Engine, wine: Wine
) -> None:
    state = _assigned(engine)
    counted = [wine.window(300, seed=1), wine.window(300, seed=2)]
    other_bins = Wine(wine.model, n_bins=5).profile
    drifted = wine.window(300, shift=2.0, seed=3)
    with Session(engine) as session:
        put_reference(session, "wine", "1.1.0", wine.profile)
        session.add_all(
            [
                _window("m1", 10, drifted, received_s=1),  # before the assignment
                _window("m1", 11, counted[0], received_s=20),
                _window("m2", 12, counted[1], received_s=30),
                _window("m2", 13, drifted, received_s=40, version="1.0.0"),  # other version
                _window("other", 14, drifted, received_s=50),  # not in the wave
                _window("m1", 15, wine.window(300, shift=2.0, profile=other_bins), received_s=60),
            ]
        )
        session.commit()

    new = _metrics(engine, state).candidate

    report = evaluate(wine.profile, merge_all(counted))
    worst = max((v.scores for v in report.features), key=lambda f: f.psi or 0.0)
    assert new.drift_samples == 600
    assert new.drift_score == pytest.approx(worst.psi)
    assert new.drift_feature == f"{worst.role} {worst.name}"
    assert new.drift_score is not None
    assert new.drift_score < 0.25
    assert new.drift_unavailable is None


def test_drifted_windows_fail_the_healthy_waves_gate_naming_feature_and_score(
    engine: Engine, wine: Wine
) -> None:
    state = _assigned(engine)
    with Session(engine) as session:
        put_reference(session, "wine", "1.1.0", wine.profile)
        session.add_all(
            [
                _window("m1", 10, wine.window(300, shift=1.0, seed=1), received_s=20),
                _window("m2", 11, wine.window(300, shift=1.0, seed=2), received_s=20),
            ]
        )
        session.commit()
    metrics = _metrics(engine, state)
    new = metrics.candidate
    assert new.drift_score is not None
    assert new.drift_score > 0.25
    healthy = {
        d: DeviceObservation(
            device_id=d,
            online=True,
            current_version="1.1.0",
            previous_version="1.0.0",
            last_event_kind=EventKind.COMMITTED,
            last_event_at=T0 + timedelta(seconds=10),
        )
        for d in ("m1", "m2")
    }

    decision = decide(state, healthy, metrics, T0 + timedelta(seconds=30))

    assert decision.state.status is RolloutStatus.PAUSED
    gates = [a for a in decision.actions if isinstance(a, GateDecision)]
    assert [(g.wave, g.passed) for g in gates] == [(0, False)]
    assert list(gates[0].reasons) == [
        f"drift score {new.drift_score:g} above the maximum 0.25: PSI of {new.drift_feature}"
    ]


@pytest.mark.parametrize(
    ("setup", "unavailable", "samples"),
    [
        ("no_reference", "no reference profile for wine 1.1.0", 0),
        ("no_windows", "no drift windows since assignment", 0),
        ("too_few_rows", "150 rows, the drift thresholds judge from 200", 150),
        ("other_profile", "1 window(s) of another profile left out", 0),
        ("raised_min_count", "600 rows, the drift thresholds judge from 1000", 600),
    ],
)
def test_no_drift_score_without_a_reference_or_enough_rows(
    engine: Engine, wine: Wine, setup: str, unavailable: str, samples: int
) -> None:
    state = _assigned(engine)
    with Session(engine) as session:
        if setup != "no_reference":
            put_reference(session, "wine", "1.1.0", wine.profile)
        if setup == "too_few_rows":
            session.add(_window("m1", 10, wine.window(150), received_s=20))
        elif setup == "other_profile":
            other = Wine(wine.model, n_bins=5).profile
            session.add(_window("m1", 10, wine.window(300, profile=other), received_s=20))
        elif setup in ("no_reference", "raised_min_count"):
            session.add(_window("m1", 10, wine.window(300, seed=1), received_s=20))
            session.add(_window("m2", 11, wine.window(300, seed=2), received_s=20))
        if setup == "raised_min_count":
            put_thresholds(session, "wine", DriftThresholds(min_count=1000), by="test")
        session.commit()

    new = _metrics(engine, state).candidate

    assert new.drift_score is None
    assert new.drift_samples == samples
    assert new.drift_unavailable is not None
    assert unavailable in new.drift_unavailable


def test_windows_are_not_read_when_the_gate_has_no_drift_guard(engine: Engine, wine: Wine) -> None:
    state = _assigned(engine, Gate(max_error_rate_increase=0.01))
    with Session(engine) as session:
        put_reference(session, "wine", "1.1.0", wine.profile)
        session.add(_window("m1", 10, wine.window(300, shift=1.0), received_s=20))
        session.commit()
    new = _metrics(engine, state).candidate
    assert (new.drift_score, new.drift_samples, new.drift_unavailable) == (None, 0, None)


# --- through the running fleet --------------------------------------------------------


def _request(tag: str, **gate: Any) -> dict[str, Any]:
    return {
        "model": "wine",
        "version": "1.1.0",
        "selector": {"tags": [tag]},
        "waves": [{"count": 2}, {"fraction": 1.0}],
        "gate": {
            "soak_s": 0,
            "timeout_s": 30,
            "max_drift_score": 0.25,
            "min_metric_samples": 200,
            "metrics_timeout_s": 30,
        }
        | gate,
    }


def test_drifted_wave_fails_its_gate_and_rolls_back(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    drift_packages: dict[str, Path],
    wine_windows: WineWindows,
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, drift_packages, fleet.engine)
        devices = start_devices(
            fleet, api, 4, drift=wine_windows.source(version="1.1.0", shift=1.0)
        )
        created = api.post("/v1/rollouts", json=_request(tag) | {"failure_policy": "rollback_all"})
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]

        done = wait_status(api, rollout_id, {"rolled_back"})

        assert "gate of wave 0 failed" in done["status_reason"]
        gate = done["gate_decisions"][0]
        assert (gate["wave"], gate["passed"]) == (0, False)
        first = [d for d in devices.devices if devices.accepted(d)]
        assert len(first) == 2  # wave 1 was never assigned
        score, feature = wine_windows.expected_score(first, "1.1.0")
        assert score > 0.25
        assert any(
            f"drift score {score:g} above the maximum 0.25: PSI of {feature}" in reason
            for reason in gate["reasons"]
        ), gate["reasons"]
        for device_id in first:
            assert [(b.target.version, b.rollback) for b in devices.accepted(device_id)] == [
                ("1.1.0", False),
                ("1.0.0", True),
            ]


def test_undrifted_waves_pass_their_drift_gates(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    drift_packages: dict[str, Path],
    wine_windows: WineWindows,
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, drift_packages, fleet.engine)
        devices = start_devices(fleet, api, 4, drift=wine_windows.source(version="1.1.0"))
        created = api.post("/v1/rollouts", json=_request(tag))
        assert created.status_code == 201, created.text

        done = wait_status(api, created.json()["id"], {"completed"})

        assert done["counts"]["healthy"] == 4
        assert [(g["wave"], g["passed"]) for g in done["gate_decisions"]] == [(0, True), (1, True)]
        for gate in done["gate_decisions"]:
            assert any("<= 0.25: PSI of " in r for r in gate["reasons"]), gate["reasons"]
        assert not devices.rejected


def test_drift_gate_without_a_reference_profile_fails_after_the_metrics_timeout(
    make_fleet: MakeFleet,
    start_devices: StartDevices,
    wine_packages: dict[str, Path],
    unique_id: str,
) -> None:
    fleet = make_fleet(**FAST)
    tag = f"t-{unique_id}"
    with admin_client(fleet) as api:
        publish_models(api, wine_packages, fleet.engine)  # packages without reference profiles
        start_devices(fleet, api, 4)
        created = api.post("/v1/rollouts", json=_request(tag, metrics_timeout_s=1))
        assert created.status_code == 201, created.text

        paused = wait_status(api, created.json()["id"], {"paused"})

        gate = paused["gate_decisions"][0]
        assert (gate["wave"], gate["passed"]) == (0, False)
        assert gate["reasons"] == [
            "new version 1.1.0 has 0/200 drift samples (no reference profile for wine 1.1.0)"
            " 1 s after the soak"
        ]
