"""One device's (or one model version's) drift evaluation failing never stops the others:
in the monitor, and in the slice views the drift API serves.

Windows are stored in a real database (SQLite and PostgreSQL) as the ingester stores
them; the bad ones are written straight into the table, past the ingester, as an older
agent or a hand edit could leave them: a window whose confusion matrix is ragged (it
parses, but the label metrics choke on it), a reference profile that no longer parses.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel

from edgefleet.fleet.drift.alerts import AlertKind
from edgefleet.fleet.drift.analysis import slice_metrics, slice_scores, time_series
from edgefleet.fleet.drift.monitor import DriftMonitorService
from edgefleet.fleet.drift.notify import Notifier
from edgefleet.fleet.drift.rollup import WindowRecord
from edgefleet.fleet.drift.store import put_reference
from edgefleet.fleet.store import drift_tables
from edgefleet.fleet.store.engine import make_engine
from edgefleet.fleet.store.migrate import create_all
from edgefleet.fleet.store.tables import Device, DriftWindowRow
from edgefleet.shared.drift import (
    DriftThresholds,
    ReferenceProfile,
    WindowAccumulator,
    WindowSketch,
    build_profile,
)
from edgefleet.shared.messages import utcnow

MODEL, VERSION = "sensor", "1.0.0"
FEATURES = ["a", "b", "c"]
WEIGHTS = np.array([[1.0, -0.5, 0.2], [0.3, 1.0, -0.7], [-0.6, 0.4, 1.0]], dtype=np.float32)


def _model(x: np.ndarray) -> dict[str, np.ndarray]:
    """A tiny fixed classifier, so outputs follow the inputs as a real model's do."""
    logits = x @ WEIGHTS
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {"label": p.argmax(axis=1), "probabilities": p.astype(np.float32)}


def _reference(n: int = 2000) -> np.ndarray:
    return np.random.default_rng(99).normal(size=(n, len(FEATURES))).astype(np.float32)


def _data(n: int, *, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows resampled from the reference data (as a device in the same world sees
    it), moved by ``shift``; labels are the model's own, so only drift shows."""
    reference = _reference()
    rows = np.random.default_rng(seed).integers(0, len(reference), size=n)
    x = (reference[rows] + shift).astype(np.float32)
    return x, _model(x)["label"]


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    x = _reference()
    return build_profile(x, _model(x), feature_names=FEATURES, labels=_model(x)["label"])


def _window(profile: ReferenceProfile, *, shift: float = 0.0, seed: int = 0) -> dict[str, Any]:
    x, y = _data(300, shift=shift, seed=seed)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, _model(x), y)
    return accumulator.snapshot().model_dump(mode="json")


def _ragged(sketch: dict[str, Any]) -> dict[str, Any]:
    """A window that parses, whose confusion matrix has a row one class short."""
    bad = copy.deepcopy(sketch)
    bad["classification"]["confusion"][0].pop()
    return bad


@pytest.fixture
def engine(database_url: str, profile: ReferenceProfile) -> Iterator[Engine]:
    engine = make_engine(database_url)
    create_all(engine)
    SQLModel.metadata.create_all(engine)  # the drift tables (registered by the imports)
    with Session(engine) as session:
        put_reference(session, MODEL, VERSION, profile)
    yield engine
    engine.dispose()


def _store(
    engine: Engine, windows: dict[str, dict[str, Any]], now: datetime, *, model: str = MODEL
) -> None:
    """One window per device, ending a minute ago, each device tagged ``lab`` on ``pi4``."""
    with Session(engine) as session:
        for device_id, sketch in windows.items():
            if session.get(Device, device_id) is None:
                session.add(
                    Device(
                        device_id=device_id,
                        online=True,
                        first_seen=now,
                        last_seen=now,
                        tags=["lab"],
                        hardware="pi4",
                        last_state_seq=1,
                    )
                )
            session.add(
                DriftWindowRow(
                    device_id=device_id,
                    seq=1,
                    ts=now,
                    received_at=now,
                    model_name=model,
                    model_version=VERSION,
                    window_start=now - timedelta(minutes=2),
                    window_end=now - timedelta(minutes=1),
                    count=sketch["count"],
                    sketch=sketch,
                )
            )
        session.commit()


def _monitor(engine: Engine, registry: CollectorRegistry) -> DriftMonitorService:
    return DriftMonitorService(
        engine, Notifier(engine, publisher=None), lookback_s=3600, registry=registry
    )


def _failures(registry: CollectorRegistry, scope: str) -> float:
    value = registry.get_sample_value("edgefleet_drift_evaluation_failures_total", {"scope": scope})
    return value or 0.0


def test_a_device_whose_window_chokes_the_analysis_does_not_stop_the_others(
    engine: Engine, profile: ReferenceProfile
) -> None:
    now = utcnow()
    _store(
        engine,
        {
            "calm": _window(profile, seed=1),
            "hot": _window(profile, shift=1.5, seed=2),
            "broken": _ragged(_window(profile, seed=3)),
        },
        now,
    )
    registry = CollectorRegistry()
    service = _monitor(engine, registry)
    try:
        raised = service.run_once(now)
    finally:
        service.stop()

    by_slice: dict[str, set[str]] = {}
    for alert in raised:
        by_slice.setdefault(alert.slice_key, set()).add(alert.kind)
    assert AlertKind.DATA_DRIFT in by_slice["device:hot"]
    assert "device:calm" not in by_slice
    assert "device:broken" not in by_slice
    # The slices the broken device is in are judged without it, and say so.
    shared = [a for a in raised if a.slice_key in ("fleet", "tag:lab", "hardware:pi4")]
    assert shared, by_slice
    for alert in shared:
        assert alert.evidence["excluded_devices"] == ["broken"]
        assert alert.evidence["devices"] == 2
    assert _failures(registry, "slice") == 1  # device:broken
    assert _failures(registry, "device") == 1  # left out of fleet, tag and hardware once


def test_a_model_version_that_cannot_be_evaluated_does_not_stop_the_next(
    engine: Engine, profile: ReferenceProfile
) -> None:
    now = utcnow()
    with Session(engine) as session:  # a profile row that no longer parses, sorted first
        session.add(
            drift_tables.ReferenceProfileRow(
                model_name="aaa-broken",
                model_version=VERSION,
                profile_id="0" * 64,
                profile={"not": "a profile"},
                registered_at=now,
            )
        )
        session.commit()
    _store(engine, {"old-agent": _window(profile, seed=4)}, now, model="aaa-broken")
    _store(engine, {"hot": _window(profile, shift=1.5, seed=2)}, now)
    registry = CollectorRegistry()
    service = _monitor(engine, registry)
    try:
        raised = service.run_once(now)
    finally:
        service.stop()

    assert {(a.model_name, a.slice_key) for a in raised if a.kind == AlertKind.DATA_DRIFT} >= {
        (MODEL, "device:hot")
    }
    assert {a.model_name for a in raised} == {MODEL}
    assert _failures(registry, "version") == 1


def _records(profile: ReferenceProfile, now: datetime) -> list[WindowRecord]:
    sketches = {
        "calm": _window(profile, seed=1),
        "hot": _window(profile, shift=1.5, seed=2),
        "broken": _ragged(_window(profile, seed=3)),
    }
    return [
        WindowRecord(
            device_id=device_id,
            model_name=MODEL,
            model_version=VERSION,
            window_start=now - timedelta(minutes=2),
            window_end=now - timedelta(minutes=1),
            sketch=WindowSketch.model_validate(sketch),
        )
        for device_id, sketch in sketches.items()
    ]


def test_the_slice_views_leave_out_a_device_whose_windows_cannot_be_judged(
    profile: ReferenceProfile,
) -> None:
    now = utcnow()
    records = _records(profile, now)
    thresholds = DriftThresholds()
    kw: dict[str, Any] = {"model": MODEL, "version": VERSION, "where": {}}

    scores = slice_scores(records, profile, thresholds, **kw)
    assert scores.judged
    assert scores.data_drift  # the hot device still shows through the fleet slice
    assert (scores.windows, scores.skipped_windows, scores.devices) == (2, 1, 2)
    assert scores.excluded_devices == ["broken"]

    metrics = slice_metrics(records, profile, thresholds, **kw)
    assert metrics.windows == 2
    assert metrics.labelled == 600
    assert metrics.classification is not None

    series = time_series(records, profile, thresholds, bucket_s=3600, **kw)
    assert sum(p.windows for p in series.points) == 2

    # Alone, the broken device's slice is not judged (rather than failing the request).
    alone = slice_scores(records[2:], profile, thresholds, **kw)
    assert (alone.judged, alone.windows, alone.skipped_windows) == (False, 0, 1)
