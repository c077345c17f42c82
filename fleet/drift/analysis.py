"""Judge a slice: merged windows against the version's reference profile. Pure.

Windows counted against another profile than the version's current reference (a
profile re-registered after devices started reporting) cannot be compared with it;
they are left out and counted in ``skipped_windows`` rather than failing the slice.

One device cannot spoil a slice: when judging a slice of several devices fails (a stored
window that parses but does not add up, such as a ragged confusion matrix), the devices
whose own windows cannot be judged are left out (`judge_isolated`, ``excluded_devices``)
and the rest is judged. A slice that still cannot be judged is reported as not judged,
its windows counted in ``skipped_windows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from edgefleet.fleet.drift.rollup import Rollup, WindowRecord, buckets, rollup
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
    excluded_devices: list[str] = Field(
        default=[], description="devices whose windows cannot be judged, left out"
    )
    not_judged: str | None = Field(
        default=None, description="why there is no verdict (None when judged)"
    )


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


class DeviceScreen:
    """Which devices' windows cannot be judged on their own against a profile. Each
    device is tried at most once, and only when a slice it is in fails."""

    def __init__(
        self,
        records: Sequence[WindowRecord],
        profile: ReferenceProfile,
        thresholds: DriftThresholds,
    ) -> None:
        self._by_device: dict[str, list[WindowRecord]] = {}
        for record in records:
            self._by_device.setdefault(record.device_id, []).append(record)
        self._profile = profile
        self._thresholds = thresholds
        self._errors: dict[str, Exception | None] = {}

    def error(self, device_id: str) -> Exception | None:
        """Why ``device_id``'s windows cannot be judged (None: they can). Raises nothing."""
        if device_id not in self._errors:
            try:
                judge(self._by_device.get(device_id, []), self._profile, self._thresholds)
                self._errors[device_id] = None
            except Exception as e:  # whatever it is, it is this device's alone
                self._errors[device_id] = e
        return self._errors[device_id]

    def failed(self) -> dict[str, Exception]:
        """The devices tried so far whose windows cannot be judged, with why."""
        return {d: e for d, e in self._errors.items() if e is not None}


@dataclass(frozen=True)
class Judged:
    """A slice's verdict, the merge it is over, and the devices left out of it."""

    report: DriftReport
    merged: Rollup
    excluded: list[str]


def judge_isolated(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    screen: DeviceScreen | None = None,
) -> Judged | None:
    """`judge`, except that when a slice of several devices fails, it is judged again
    without the devices whose own windows fail (``screen`` remembers them across the
    slices of one evaluation). None for no records (or none left).

    Raises what `judge` or the merge raises when no single device is to blame.
    """
    try:
        report = judge(records, profile, thresholds)
        return None if report is None else Judged(report, rollup(records), [])
    except Exception:
        devices = sorted({r.device_id for r in records})
        if len(devices) < 2:
            raise
        screen = screen or DeviceScreen(records, profile, thresholds)
        bad = [d for d in devices if screen.error(d) is not None]
        if not bad:
            raise
    rest = [r for r in records if r.device_id not in set(bad)]
    report = judge(rest, profile, thresholds)
    return None if report is None else Judged(report, rollup(rest), bad)


def _judged_or_none(
    records: Sequence[WindowRecord], profile: ReferenceProfile, thresholds: DriftThresholds
) -> Judged | None:
    """`judge_isolated`, or None when the slice cannot be judged at all (the caller
    reports it as not judged)."""
    try:
        return judge_isolated(records, profile, thresholds)
    except Exception:  # shown as not judged; the monitor logs and counts such slices
        return None


def slice_scores(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: str,
    where: dict[str, str],
) -> SliceScores:
    """Scores of the slice; an empty slice, or one that cannot be judged even without
    its bad devices (its windows then count as skipped), is reported as not judged."""
    kept, skipped = comparable(records, profile)
    judged = _judged_or_none(kept, profile, thresholds)
    report, merged = (judged.report, judged.merged) if judged else (None, None)
    excluded = judged.excluded if judged else []
    used = merged.windows if merged else 0
    return SliceScores(
        model=model,
        version=version,
        slice=where,
        windows=used,
        skipped_windows=skipped + len(kept) - used,
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
        excluded_devices=excluded,
        not_judged=_why_not_judged(report, thresholds, windows=len(kept)),
    )


def _why_not_judged(
    report: DriftReport | None, thresholds: DriftThresholds, *, windows: int
) -> str | None:
    if report is not None and report.judged:
        return None
    if report is not None:
        # A slow sensor: its windows keep arriving but the range never holds enough rows.
        return (
            f"{report.count} rows in the range, {thresholds.min_count} needed for a verdict "
            "(min_count); widen since/until, or lower min_count for this model"
        )
    if windows == 0:
        return "no windows in the range"
    return "its windows cannot be judged against the reference profile (the fleet's log says why)"


def slice_metrics(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    *,
    model: str,
    version: str,
    where: dict[str, str],
) -> SliceMetrics:
    """Label metrics of the slice (empty when nothing was labelled, no label spec, or
    the slice cannot be judged); devices whose windows cannot be judged are left out."""
    kept, _ = comparable(records, profile)
    judged = _judged_or_none(kept, profile, thresholds)
    report = judged.report if judged else None
    classification = regression = None
    if judged is not None and profile.labels is not None:
        sketch = judged.merged.sketch
        if sketch.classification is not None and sketch.labelled:
            classification = classification_metrics(sketch.classification, profile.labels.classes)
        if sketch.regression is not None and sketch.regression.count:
            regression = regression_metrics(sketch.regression)
    return SliceMetrics(
        model=model,
        version=version,
        slice=where,
        windows=judged.merged.windows if judged else 0,
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
    """The slice bucketed by window start; each bucket judged on its own. If that fails,
    the devices whose windows cannot be judged are left out and it is done again.

    Raises `SketchMismatchError` (or what the failing window raises) when no single
    device is to blame, and `ValueError` for a non-positive ``bucket_s``.
    """
    kept, _ = comparable(records, profile)
    try:
        points = _points(kept, profile, thresholds, bucket_s)
    except Exception:
        if bucket_s <= 0:
            raise
        screen = DeviceScreen(kept, profile, thresholds)
        points = _points(
            [r for r in kept if screen.error(r.device_id) is None], profile, thresholds, bucket_s
        )
    return TimeSeries(model=model, version=version, slice=where, bucket_s=bucket_s, points=points)


def _points(
    records: Sequence[WindowRecord],
    profile: ReferenceProfile,
    thresholds: DriftThresholds,
    bucket_s: int,
) -> list[TimePoint]:
    points: list[TimePoint] = []
    for start, merged in buckets(records, bucket_s):
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
    return points
