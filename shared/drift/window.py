"""A device window: counts in the reference profile's bins, and how windows merge.

A `WindowSketch` is what leaves the device. Everything in it merges by addition
(moments by Chan's parallel formula), so `merge` is associative and commutative on the
counts — exactly — and on the moments up to floating-point rounding. The fleet can
merge the windows of any set of devices over any time range and get the sketch of the
union of their data.

Version-1 form (this model's own JSON, what agents before the compact form send and what
the fleet stores): plain JSON lists of ints keyed by feature name, a ``version`` and the
``profile_id`` of the profile whose bins the counts are in. Agents now send the compact
form of the same sketch (`edgefleet.shared.drift.compact`, version 2).

Bounds (a window crosses the wire from devices the fleet does not trust): every float is
finite; every count is 0..2**63-1; a feature has at most `MAX_BINS` bins, a window at
most `MAX_FEATURES` input and as many output features, a classifier at most
`MAX_CLASSES` classes (plus "other"); names are at most 200 characters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError

from edgefleet.shared.drift.base import DriftModel, SketchMismatchError
from edgefleet.shared.drift.bounds import (
    MAX_BINS,
    MAX_CLASSES,
    MAX_COUNT,
    MAX_FEATURES,
    MAX_NAME_CHARS,
    Bins,
    Count,
)

SKETCH_VERSION = 1
__all__ = ["MAX_BINS", "MAX_CLASSES", "MAX_COUNT", "MAX_FEATURES", "Bins", "Count"]

Matrix = Annotated[list[Bins], Field(max_length=MAX_CLASSES + 1)]
FeatureName = Annotated[str, Field(max_length=MAX_NAME_CHARS)]


class WindowModel(DriftModel):
    """Base of the window's parts: floats must be finite (JSON has no NaN or Infinity)."""

    model_config = ConfigDict(allow_inf_nan=False)


class NumericCounts(WindowModel):
    """One numeric feature in one window."""

    kind: Literal["numeric"] = "numeric"
    counts: Bins = Field(description="per bin, underflow first, overflow last")
    count: Count = Field(description="finite values; moments are over these")
    mean: float = 0.0
    m2: float = Field(default=0.0, ge=0, description="sum of squared deviations")
    min: float | None = None
    max: float | None = None
    missing: Count = 0


class CategoricalCounts(WindowModel):
    """One categorical feature in one window."""

    kind: Literal["categorical"] = "categorical"
    counts: Bins = Field(description="per profile category, 'other' last")
    missing: Count = 0


FeatureCounts = Annotated[NumericCounts | CategoricalCounts, Field(discriminator="kind")]


class ClassificationCounts(WindowModel):
    """Labelled predictions of a classifier: confusion matrix and score histograms."""

    confusion: Matrix = Field(description="[true][predicted], 'other' last")
    positives: Matrix = Field(
        description="per class j, score-j bin counts of rows whose label is j"
    )
    negatives: Matrix = Field(
        description="per class j, score-j bin counts of rows whose label is not j"
    )


class RegressionCounts(WindowModel):
    """Labelled predictions of a regressor: error sums (error = predicted - true)."""

    count: Count = 0
    error_sum: float = 0.0
    abs_error_sum: float = Field(default=0.0, ge=0)
    squared_error_sum: float = Field(default=0.0, ge=0)


class WindowSketch(WindowModel):
    """Mergeable summary of the inputs, outputs and labels seen in one window."""

    version: Literal[1] = 1
    profile_id: str = Field(max_length=128)
    count: Count = Field(description="rows observed")
    inputs: dict[FeatureName, FeatureCounts] = Field(max_length=MAX_FEATURES)
    outputs: dict[FeatureName, FeatureCounts] = Field(default_factory=dict, max_length=MAX_FEATURES)
    labelled: Count = Field(default=0, description="predictions joined with a label")
    classification: ClassificationCounts | None = None
    regression: RegressionCounts | None = None


def _add_lists(a: list[int], b: list[int], what: str) -> list[int]:
    if len(a) != len(b):
        raise SketchMismatchError(f"{what}: {len(a)} bins in one sketch, {len(b)} in the other")
    return [x + y for x, y in zip(a, b, strict=True)]


def _add_matrices(a: list[list[int]], b: list[list[int]], what: str) -> list[list[int]]:
    if len(a) != len(b):
        raise SketchMismatchError(f"{what}: {len(a)} rows in one sketch, {len(b)} in the other")
    return [_add_lists(x, y, f"{what}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]


Moments = tuple[int, float, float]


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Merge (count, mean, M2) by Chan et al.'s pairwise update; symmetric bit for bit."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    mean = (n_a * mean_a + n_b * mean_b) / n
    delta = mean_b - mean_a
    m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
    return n, mean, m2


def _opt_min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _opt_max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _merge_feature(
    a: NumericCounts | CategoricalCounts, b: NumericCounts | CategoricalCounts, name: str
) -> NumericCounts | CategoricalCounts:
    if isinstance(a, NumericCounts) and isinstance(b, NumericCounts):
        n, mean, m2 = merge_moments((a.count, a.mean, a.m2), (b.count, b.mean, b.m2))
        return NumericCounts(
            counts=_add_lists(a.counts, b.counts, name),
            count=n,
            mean=mean,
            m2=m2,
            min=_opt_min(a.min, b.min),
            max=_opt_max(a.max, b.max),
            missing=a.missing + b.missing,
        )
    if isinstance(a, CategoricalCounts) and isinstance(b, CategoricalCounts):
        return CategoricalCounts(
            counts=_add_lists(a.counts, b.counts, name), missing=a.missing + b.missing
        )
    raise SketchMismatchError(
        f"feature {name!r} is {a.kind} in one sketch and {b.kind} in the other"
    )


def _merge_features(
    a: dict[str, NumericCounts | CategoricalCounts],
    b: dict[str, NumericCounts | CategoricalCounts],
    role: str,
) -> dict[str, NumericCounts | CategoricalCounts]:
    if a.keys() != b.keys():
        raise SketchMismatchError(f"{role} features differ: {sorted(a)} vs {sorted(b)}")
    return {name: _merge_feature(a[name], b[name], f"{role} {name!r}") for name in a}


def merge(a: WindowSketch, b: WindowSketch) -> WindowSketch:
    """The sketch of both windows' data together.

    Raises `SketchMismatchError` if they were built against different profiles, their
    shapes disagree, or the sum leaves the bounds (a corrupt or forged sketch).
    """
    try:
        return _merge(a, b)
    except ValidationError as e:
        # Each side is in bounds, but sums of forged counts or moments may not be.
        raise SketchMismatchError(f"merged sketch out of bounds: {e.errors()[0]['msg']}") from e


def _merge(a: WindowSketch, b: WindowSketch) -> WindowSketch:
    if a.profile_id != b.profile_id:
        raise SketchMismatchError(
            f"sketches of different profiles: {a.profile_id[:12]} vs {b.profile_id[:12]}"
        )
    classification = a.classification or b.classification
    if a.classification is not None and b.classification is not None:
        classification = ClassificationCounts(
            confusion=_add_matrices(
                a.classification.confusion, b.classification.confusion, "confusion"
            ),
            positives=_add_matrices(
                a.classification.positives, b.classification.positives, "positives"
            ),
            negatives=_add_matrices(
                a.classification.negatives, b.classification.negatives, "negatives"
            ),
        )
    regression = a.regression or b.regression
    if a.regression is not None and b.regression is not None:
        regression = RegressionCounts(
            count=a.regression.count + b.regression.count,
            error_sum=a.regression.error_sum + b.regression.error_sum,
            abs_error_sum=a.regression.abs_error_sum + b.regression.abs_error_sum,
            squared_error_sum=a.regression.squared_error_sum + b.regression.squared_error_sum,
        )
    return WindowSketch(
        profile_id=a.profile_id,
        count=a.count + b.count,
        inputs=_merge_features(a.inputs, b.inputs, "input"),
        outputs=_merge_features(a.outputs, b.outputs, "output"),
        labelled=a.labelled + b.labelled,
        classification=classification,
        regression=regression,
    )


def merge_all(sketches: Iterable[WindowSketch]) -> WindowSketch:
    """Merge any number of sketches; raises `SketchMismatchError` (also for none at all)."""
    result: WindowSketch | None = None
    for sketch in sketches:
        result = sketch if result is None else merge(result, sketch)
    if result is None:
        raise SketchMismatchError("no sketches to merge")
    return result
