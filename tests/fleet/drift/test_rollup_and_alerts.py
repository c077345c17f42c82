"""The pure cores: rolling windows up, bucketing them, and deciding alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgefleet.fleet.drift.alerts import AlertDecision, AlertKind, apply_cooldown, decide
from edgefleet.fleet.drift.rollup import (
    SliceFilter,
    WindowRecord,
    bucket_start,
    buckets,
    rollup,
    slices,
)
from edgefleet.shared.drift import SketchMismatchError, WindowAccumulator, build_profile, evaluate
from edgefleet.shared.drift.thresholds import FeatureVerdict
from edgefleet.shared.drift.window import NumericCounts
from tests.fleet.drift.conftest import WineData

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RNG = np.random.default_rng(7)
X = RNG.normal(size=(400, 3)).astype(np.float64)
PROFILE = build_profile(X, feature_names=["a", "b", "c"])


def record(x: np.ndarray, *, device: str = "d1", start: datetime = T0, tags=()) -> WindowRecord:
    accumulator = WindowAccumulator(PROFILE)
    accumulator.add(x)
    return WindowRecord(
        device_id=device,
        model_name="m",
        model_version="1",
        window_start=start,
        window_end=start + timedelta(minutes=1),
        sketch=accumulator.snapshot(),
        tags=tuple(tags),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cuts=st.lists(st.integers(min_value=1, max_value=399), max_size=6, unique=True),
    shift=st.floats(min_value=-3, max_value=3),
)
def test_rolling_up_split_windows_equals_one_window_over_the_union(
    cuts: list[int], shift: float
) -> None:
    data = X + shift
    parts = np.split(data, sorted(cuts))
    records = [record(p, device=f"d{i}") for i, p in enumerate(parts) if len(p)]
    merged = rollup(records).sketch
    whole = record(data).sketch
    assert merged.count == whole.count == len(data)
    for name, counts in whole.inputs.items():
        got = merged.inputs[name]
        assert isinstance(got, NumericCounts)
        assert isinstance(counts, NumericCounts)
        assert got.counts == counts.counts
        assert got.count == counts.count
        assert got.mean == pytest.approx(counts.mean, rel=1e-9, abs=1e-9)
        assert got.m2 == pytest.approx(counts.m2, rel=1e-9)
        assert (got.min, got.max) == (counts.min, counts.max)
    assert _close(evaluate(PROFILE, merged).features, evaluate(PROFILE, whole).features)


def _close(a: list[FeatureVerdict], b: list[FeatureVerdict]) -> bool:
    return all(
        x.scores.psi == pytest.approx(y.scores.psi) and x.status == y.status
        for x, y in zip(a, b, strict=True)
    )


def test_windows_of_another_profile_do_not_roll_up() -> None:
    other = build_profile(X[:200] * 2, feature_names=["a", "b", "c"])
    accumulator = WindowAccumulator(other)
    accumulator.add(X[:10])
    foreign = WindowRecord("d9", "m", "2", T0, T0, accumulator.snapshot())
    with pytest.raises(SketchMismatchError, match="different profiles"):
        rollup([record(X[:10]), foreign])
    with pytest.raises(SketchMismatchError, match="no windows"):
        rollup([])


def test_a_device_with_two_tags_counts_in_both_tag_slices_and_once_in_the_fleet() -> None:
    records = [
        record(X[:50], device="a", tags=["lab", "line-1"]),
        record(X[50:80], device="b", tags=["lab"]),
    ]
    cut = slices(records, ["fleet", "device", "tag"])
    assert {k: len(v) for k, v in cut.items()} == {
        "fleet": 2,
        "device:a": 1,
        "device:b": 1,
        "tag:lab": 2,
        "tag:line-1": 1,
    }
    assert rollup(cut["tag:lab"]).sketch.count == 80


def test_time_buckets_hold_each_window_once_aligned_to_the_epoch() -> None:
    starts = [T0 + timedelta(minutes=m) for m in (0, 59, 60, 61, 185)]
    records = [record(X[i * 10 : i * 10 + 10], start=s) for i, s in enumerate(starts)]
    series = buckets(records, 3600)
    assert [(start, r.windows, r.sketch.count) for start, r in series] == [
        (T0, 2, 20),
        (T0 + timedelta(hours=1), 2, 20),
        (T0 + timedelta(hours=3), 1, 10),
    ]
    assert bucket_start(T0 + timedelta(seconds=3599), 3600) == T0
    assert bucket_start(T0 + timedelta(seconds=3600), 3600) == T0 + timedelta(hours=1)
    with pytest.raises(ValueError, match="bucket_s must be positive"):
        buckets(records, 0)


def test_a_slice_filter_refuses_an_empty_time_range_and_matches_overlaps() -> None:
    with pytest.raises(ValidationError, match="must be before until"):
        SliceFilter(since=T0, until=T0)
    window = record(X[:5], start=T0)
    assert SliceFilter(since=T0 + timedelta(seconds=30)).matches(window)
    assert not SliceFilter(since=T0 + timedelta(minutes=1)).matches(window)
    assert not SliceFilter(until=T0).matches(window)
    assert SliceFilter(tag="x").matches(window) is False


def _decide(wine: WineData, sketch) -> list[AlertKind]:
    report = evaluate(wine.profile, sketch)
    decisions = decide(report, model_name="wine", model_version="1", slice_key="fleet")
    return sorted(d.kind for d in decisions)


def test_shifted_inputs_alert_data_and_prediction_drift_unshifted_do_not(wine: WineData) -> None:
    assert _decide(wine, wine.unlabelled(300, seed=1)) == []
    assert _decide(wine, wine.unlabelled(300, shift=1.0, seed=1)) == [
        AlertKind.DATA_DRIFT,
        AlertKind.PREDICTION_DRIFT,
    ]


def test_worse_labels_on_stable_inputs_are_concept_drift_and_on_shifted_a_performance_drop(
    wine: WineData,
) -> None:
    assert _decide(wine, wine.labelled(300, seed=2)) == []
    assert _decide(wine, wine.labelled(300, wrong=0.3, seed=2)) == [AlertKind.CONCEPT_DRIFT]
    shifted = _decide(wine, wine.labelled(300, shift=1.5, seed=2))
    assert AlertKind.PERFORMANCE_DROP in shifted
    assert AlertKind.CONCEPT_DRIFT not in shifted
    assert AlertKind.DATA_DRIFT in shifted


def test_too_few_rows_are_not_judged_so_nothing_alerts(wine: WineData) -> None:
    assert _decide(wine, wine.unlabelled(50, shift=2.0)) == []


def _decision(kind: AlertKind, slice_key: str = "fleet") -> AlertDecision:
    return AlertDecision(
        kind=kind,
        severity="warning",
        model_name="wine",
        model_version="1",
        slice_key=slice_key,
        message="x",
        evidence={},
    )


@pytest.mark.parametrize(
    ("last_s_ago", "kept"),
    [(None, True), (10.0, False), (3599.0, False), (3600.0, True), (7200.0, True)],
)
def test_cooldown_keeps_a_slice_quiet_until_it_ends(last_s_ago: float | None, kept: bool) -> None:
    decision = _decision(AlertKind.DATA_DRIFT)
    last = {} if last_s_ago is None else {decision.dedupe_key: T0 - timedelta(seconds=last_s_ago)}
    assert apply_cooldown([decision], last, now=T0, cooldown_s=3600) == ([decision] if kept else [])


def test_cooldown_is_per_kind_and_slice_and_drops_duplicates() -> None:
    quiet = _decision(AlertKind.DATA_DRIFT)
    other_kind = _decision(AlertKind.CONCEPT_DRIFT)
    other_slice = _decision(AlertKind.DATA_DRIFT, "device:a")
    last = {quiet.dedupe_key: T0}
    kept = apply_cooldown(
        [quiet, other_kind, other_slice, other_slice], last, now=T0, cooldown_s=60
    )
    assert kept == [other_kind, other_slice]
