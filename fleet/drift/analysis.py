"""Judge a slice: merged windows against the version's reference profile. Pure.

Windows counted against another profile than the version's current reference (a
profile re-registered after devices started reporting) cannot be compared with it;
they are left out and counted in ``skipped_windows`` rather than failing the slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from edgefleet.fleet.drift.rollup import WindowRecord, buckets, rollup
from edgefleet.shared.drift import (
    ClassificationMetrics,
    DriftReport,
    DriftThresholds,
    ReferenceProfile,
    RegressionMetrics,
    evaluate,
)
from edgefleet.shared.drift.labels import classification_metrics, regression_metrics
from edgefleet.shared.drift.thresholds import FeatureVerdict, MetricDrop


class SliceScores(BaseModel):
    """Per-feature drift scores and the verdicts of one merged slice."""

    model: str
    version: str
    slice: dict[str, str]
    windows: int
    skipped_windows: int
    devices: int
    start: datetime | None
    end: datetime | None
    count: int
    judged: bool
    data_drift: bool
    prediction_drift: bool
    drifted_inputs: list[str]
    drifted_outputs: list[str]
    features: list[FeatureVerdict]


class SliceMetrics(BaseModel):
    """Label metrics of one merged slice against the baseline."""

    model: str
    version: str
    slice: dict[str, str]
    windows: int
    labelled: int
    metrics: dict[str, float]
    baseline: dict[str, float]
    metric_drops: list[MetricDrop]
    performance_drop: bool
    classification: ClassificationMetrics | None = None
    regression: RegressionMetrics | None = None


class TimePoint(BaseModel):
    """One time bucket of a slice."""

    start: datetime
    end: datetime
    windows: int
    devices: int
    count: int
    labelled: int
    judged: bool
    data_drift: bool
    prediction_drift: bool
    performance_drop: bool
    psi: dict[str, float | None]
    metrics: dict[str, float]


class TimeSeries(BaseModel):
    """A slice's drift over time, one point per non-empty bucket."""

    model: str
    version: str
    slice: dict[str, str]
    bucket_s: int
    points: list[TimePoint]


def comparable(
    records: Sequence[WindowRecord], profile: ReferenceProfile
) -> tuple[list[WindowRecord], int]:
    """The records counted against ``profile``, and how many were not."""
    kept = [r for r in records if r.sketch.profile_id == profile.profile_id]
    return kept, len(records) - len(kept)


def judge(
    records: Sequence[WindowRecord], profile: ReferenceProfile, thresholds: DriftThresholds
) -> DriftReport | None:
    """The verdict on the merge of ``records`` (all comparable); None if there are none.

    Raises `edgefleet.shared.drift.SketchMismatchError` for a sketch whose shape does not fit the
    profile (a corrupt window).
    """
    if not records:
        return None
    return evaluate(profile, rollup(records).sketch, thresholds)


def slice_scores(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: str,
    where: dict[str, str],
) -> SliceScores:
    """Scores of the slice; an empty slice is reported as not judged, with no features."""
    kept, skipped = comparable(records, profile)
    report = judge(kept, profile, thresholds)
    merged = rollup(kept) if kept else None
    return SliceScores(
        model=model,
        version=version,
        slice=where,
        windows=len(kept),
        skipped_windows=skipped,
        devices=merged.devices if merged else 0,
        start=merged.start if merged else None,
        end=merged.end if merged else None,
        count=report.count if report else 0,
        judged=report.judged if report else False,
        data_drift=report.data_drift if report else False,
        prediction_drift=report.prediction_drift if report else False,
        drifted_inputs=report.drifted_inputs if report else [],
        drifted_outputs=report.drifted_outputs if report else [],
        features=report.features if report else [],
    )


def slice_metrics(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: str,
    where: dict[str, str],
) -> SliceMetrics:
    """Label metrics of the slice (empty when nothing was labelled or no label spec)."""
    kept, _ = comparable(records, profile)
    report = judge(kept, profile, thresholds)
    classification = regression = None
    if kept and profile.labels is not None:
        sketch = rollup(kept).sketch
        if sketch.classification is not None and sketch.labelled:
            classification = classification_metrics(sketch.classification, profile.labels.classes)
        if sketch.regression is not None and sketch.regression.count:
            regression = regression_metrics(sketch.regression)
    return SliceMetrics(
        model=model,
        version=version,
        slice=where,
        windows=len(kept),
        labelled=report.labelled if report else 0,
        metrics=report.metrics if report else {},
        baseline=profile.labels.baseline if profile.labels else {},
        metric_drops=report.metric_drops if report else [],
        performance_drop=report.performance_drop if report else False,
        classification=classification,
        regression=regression,
    )


def time_series(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    *,
    bucket_s: int,
    model: str,
    version: str,
    where: dict[str, str],
) -> TimeSeries:
    """The slice bucketed by window start; each bucket judged on its own."""
    kept, _ = comparable(records, profile)
    points: list[TimePoint] = []
    for start, merged in buckets(kept, bucket_s):
        report = evaluate(profile, merged.sketch, thresholds)
        psi: dict[str, Any] = {v.scores.name: v.scores.psi for v in report.features}
        points.append(
            TimePoint(
                start=start,
                end=start + timedelta(seconds=bucket_s),
                windows=merged.windows,
                devices=merged.devices,
                count=report.count,
                labelled=report.labelled,
                judged=report.judged,
                data_drift=report.data_drift,
                prediction_drift=report.prediction_drift,
                performance_drop=report.performance_drop,
                psi=psi,
                metrics=report.metrics,
            )
        )
    return TimeSeries(model=model, version=version, slice=where, bucket_s=bucket_s, points=points)
