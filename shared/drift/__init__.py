"""Drift: reference profiles, mergeable window sketches, statistics and verdicts.

The device folds its model's inputs and outputs into counts in the reference profile's
bins (`WindowAccumulator`); the fleet merges windows by addition (`merge`) and judges
them (`evaluate`). Only numpy and pydantic are needed on either side.
"""

from edgefleet.shared.drift.accumulator import WindowAccumulator
from edgefleet.shared.drift.base import (
    DriftError,
    DriftInputError,
    ProfileError,
    SketchMismatchError,
)
from edgefleet.shared.drift.builder import build_profile
from edgefleet.shared.drift.labels import ClassificationMetrics, RegressionMetrics, metric_summary
from edgefleet.shared.drift.profile import ReferenceProfile
from edgefleet.shared.drift.thresholds import (
    DriftReport,
    DriftThresholds,
    FeatureThresholds,
    evaluate,
)
from edgefleet.shared.drift.window import WindowSketch, merge, merge_all

__all__ = [
    "ClassificationMetrics",
    "DriftError",
    "DriftInputError",
    "DriftReport",
    "DriftThresholds",
    "FeatureThresholds",
    "ProfileError",
    "ReferenceProfile",
    "RegressionMetrics",
    "SketchMismatchError",
    "WindowAccumulator",
    "WindowSketch",
    "build_profile",
    "evaluate",
    "merge",
    "merge_all",
    "metric_summary",
]
