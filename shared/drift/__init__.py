"""Drift: reference profiles, mergeable window sketches, statistics and verdicts.

The device folds its model's inputs and outputs into counts in the reference profile's
bins (`WindowAccumulator`); the fleet merges windows by addition (`merge`) and judges
them (`evaluate`). Only numpy and pydantic are needed on either side.

The names below load their submodule at first use (PEP 562): a device imports only the
accumulator, the profile and the window sketch, not the fleet's statistics and verdicts
nor the tooling's profile builder (issue 15: ~0.6 MiB of an idle agent).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.shared.drift.accumulator import WindowAccumulator
    from edgefleet.shared.drift.base import (
        DriftError,
        DriftInputError,
        ProfileError,
        SketchMismatchError,
    )
    from edgefleet.shared.drift.builder import build_profile
    from edgefleet.shared.drift.labels import (
        ClassificationMetrics,
        RegressionMetrics,
        metric_summary,
    )
    from edgefleet.shared.drift.profile import ReferenceProfile
    from edgefleet.shared.drift.thresholds import (
        DriftReport,
        DriftThresholds,
        FeatureThresholds,
        evaluate,
    )
    from edgefleet.shared.drift.window import WindowSketch, merge, merge_all

_WHERE = {
    "ClassificationMetrics": "edgefleet.shared.drift.labels",
    "DriftError": "edgefleet.shared.drift.base",
    "DriftInputError": "edgefleet.shared.drift.base",
    "DriftReport": "edgefleet.shared.drift.thresholds",
    "DriftThresholds": "edgefleet.shared.drift.thresholds",
    "FeatureThresholds": "edgefleet.shared.drift.thresholds",
    "ProfileError": "edgefleet.shared.drift.base",
    "ReferenceProfile": "edgefleet.shared.drift.profile",
    "RegressionMetrics": "edgefleet.shared.drift.labels",
    "SketchMismatchError": "edgefleet.shared.drift.base",
    "WindowAccumulator": "edgefleet.shared.drift.accumulator",
    "WindowSketch": "edgefleet.shared.drift.window",
    "build_profile": "edgefleet.shared.drift.builder",
    "evaluate": "edgefleet.shared.drift.thresholds",
    "merge": "edgefleet.shared.drift.window",
    "merge_all": "edgefleet.shared.drift.window",
    "metric_summary": "edgefleet.shared.drift.labels",
}


def __getattr__(name: str) -> Any:
    """Load the submodule that defines ``name``; raises AttributeError for other names."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
