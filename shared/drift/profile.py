"""The reference profile a model package carries: what "normal" looks like for drift.

Built once from training or validation data (`edgefleet.shared.drift.builder.build_profile`),
serialised as JSON into the package manifest, and shared by device (binning) and fleet
(comparison).

Invariants:
- a numeric feature has ``len(edges) + 1`` bins (see `edgefleet.shared.drift.binning`) and its
  reference ``counts`` has exactly that length, with zero under- and overflow;
- a categorical feature has ``len(categories) + 1`` bins, the last one "other";
- features address the model's tensors: ``tensor`` by name and ``column`` (``None`` for
  a 1-D tensor), so a device folds the very tensors it feeds and gets from the model;
- ``profile_id`` is the SHA-256 of everything else, so windows built against one
  profile are never compared with, or merged into, another;
- an input tensor of more than two dimensions (an image ``[N, H, W, C]``) is profiled
  as `flatten_features` makes it, ``[N, H*W*C]`` in C order with one numeric feature
  per element, the very reshape the device's drift monitor applies before folding, so
  feature ``input[j]`` is element ``j`` of the flattened row on both sides. Building
  refuses more than `MAX_FLAT_FEATURES` such features: a camera frame should be
  profiled on an embedding output instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edgefleet.shared.drift.base import DriftInputError, DriftModel, ProfileError
from edgefleet.shared.drift.bounds import (
    MAX_BINS,
    MAX_CLASSES,
    MAX_FEATURES,
    MAX_METRICS,
    MAX_NAME_CHARS,
    Bins,
    Count,
    Edges,
    Finite,
    Name,
)
from edgefleet.shared.drift.categories import missing_mask

PROFILE_VERSION = 1
OTHER = "__other__"
MAX_FLAT_FEATURES = MAX_FEATURES
Tensors = Mapping[str, NDArray[np.generic]]


def flatten_features(
    array: NDArray[np.generic], *, name: str = "input", max_features: int | None = None
) -> NDArray[np.generic]:
    """``array`` as rows of features: more than two dimensions become ``[N, -1]``.

    1-D and 2-D arrays are returned as they are. ``max_features`` (None: no limit) caps
    the width of a flattened tensor. Raises `ProfileError` naming the tensor ``name``
    when a flattened row would have more than ``max_features`` elements.
    """
    if array.ndim <= 2:
        return array
    rows = array.shape[0]
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    if max_features is not None and width > max_features:
        raise ProfileError(
            f"tensor {name!r} of shape {list(array.shape)} flattens to {width} features "
            f"per row, more than the {max_features} a profile allows; profile an "
            "embedding (a model output) or a downscaled input instead"
        )
    return array.reshape(rows, width)


def flatten_tensors(tensors: Tensors, *, max_features: int | None = None) -> Tensors:
    """`flatten_features` on every tensor; ``tensors`` itself when none needs it."""
    if all(np.ndim(a) <= 2 for a in tensors.values()):
        return tensors
    return {
        name: flatten_features(np.asarray(a), name=name, max_features=max_features)
        for name, a in tensors.items()
    }


class FeatureBase(DriftModel):
    """Where a feature comes from: a tensor, and a column of it when it is 2-D."""

    name: Name
    tensor: Name
    column: int | None = Field(default=None, ge=0, lt=MAX_FEATURES)


class NumericFeature(FeatureBase):
    """A numeric feature's reference: quantile bins, counts in them, and moments."""

    kind: Literal["numeric"] = "numeric"
    edges: Edges
    counts: Bins
    count: Count = Field(description="finite values (moments are over these)")
    mean: Finite
    m2: Finite = Field(ge=0, description="sum of squared deviations from the mean")
    min: Finite
    max: Finite
    missing: Count

    @property
    def n_bins(self) -> int:
        """Bins including under- and overflow."""
        return len(self.edges) + 1

    @property
    def std(self) -> float:
        """Population standard deviation of the finite reference values."""
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


class CategoricalFeature(FeatureBase):
    """A categorical feature's reference: top-K category counts plus "other"."""

    kind: Literal["categorical"] = "categorical"
    categories: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] = Field(max_length=MAX_BINS)
    counts: Bins
    missing: Count

    @property
    def n_bins(self) -> int:
        """Categories plus the trailing "other" bin."""
        return len(self.categories) + 1


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class LabelSpec(DriftModel):
    """How labels join predictions, and the baseline metrics on the reference data."""

    task: Literal["classification", "regression"]
    prediction: Name = Field(description="1-D output tensor: predicted class or value")
    scores: Name | None = Field(
        default=None, description="2-D output tensor [N, K]; column j scores classes[j]"
    )
    classes: list[Annotated[str, Field(max_length=MAX_NAME_CHARS)]] = Field(
        default_factory=list, max_length=MAX_CLASSES
    )
    score_edges: list[Edges] = Field(
        default_factory=list,
        max_length=MAX_CLASSES,
        description="per class, bin edges of that class's score",
    )
    baseline: dict[Name, Finite] = Field(default_factory=dict, max_length=MAX_METRICS)


class ReferenceProfile(DriftModel):
    """Everything a device needs to fold windows and the fleet needs to compare them."""

    version: Literal[1] = 1
    profile_id: str = Field(default="", max_length=128)
    rows: Count
    inputs: list[Feature] = Field(max_length=MAX_FEATURES)
    outputs: list[Feature] = Field(default_factory=list, max_length=MAX_FEATURES)
    labels: LabelSpec | None = None

    def to_json(self) -> str:
        """The JSON stored in the model package's manifest."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ReferenceProfile:
        """Parse a stored profile; raises `pydantic.ValidationError` on a bad document."""
        return cls.model_validate_json(text)

    def content_id(self) -> str:
        """SHA-256 over every field but ``profile_id``, in canonical (sorted-key) JSON.

        Sorted keys, because a profile read back from a package manifest (written with
        sorted keys) must hash to the id it carries whatever order dicts had when built.
        """
        body = json.dumps(
            self.model_dump(mode="json", exclude={"profile_id"}),
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()


def as_tensors(data: Tensors | NDArray[np.generic], default_name: str) -> Tensors:
    """A bare array becomes the single tensor ``default_name``."""
    if isinstance(data, np.ndarray):
        return {default_name: data}
    return data


Layout = dict[str, int | None]


def tensor_layout(features: Sequence[FeatureBase]) -> Layout:
    """Tensor name -> expected width (None for a 1-D tensor) the features read from."""
    widths: Layout = {}
    for feature in features:
        if feature.column is None:
            widths[feature.tensor] = None
        else:
            known = widths.get(feature.tensor) or 0
            widths[feature.tensor] = max(known, feature.column + 1)
    return widths


def check_layout(tensors: Tensors, layout: Layout, *, role: str) -> int:
    """The common number of rows of ``tensors``, checked against ``layout``.

    Raises `DriftInputError` naming the tensor when one is missing, has the wrong rank
    or width, or when tensors disagree on the number of rows.
    """
    rows: int | None = None
    for name, width in layout.items():
        if name not in tensors:
            raise DriftInputError(f"{role} tensor {name!r} is missing; got {sorted(tensors)}")
        array = np.asarray(tensors[name])
        expected_ndim = 1 if width is None else 2
        if array.ndim != expected_ndim or (width is not None and array.shape[1] != width):
            shape = "[N]" if width is None else f"[N, {width}]"
            raise DriftInputError(
                f"{role} tensor {name!r}: expected shape {shape}, got {list(array.shape)}"
            )
        if rows is not None and array.shape[0] != rows:
            raise DriftInputError(
                f"{role} tensor {name!r} has {array.shape[0]} rows, others have {rows}"
            )
        rows = array.shape[0]
    return rows or 0


def feature_columns(
    tensors: Tensors, features: Sequence[FeatureBase], *, role: str
) -> tuple[list[NDArray[np.generic]], int]:
    """Each feature's 1-D column from ``tensors``, and the common number of rows.

    Raises `DriftInputError` as `check_layout` does.
    """
    rows = check_layout(tensors, tensor_layout(features), role=role)
    columns = [
        np.asarray(tensors[f.tensor])
        if f.column is None
        else np.asarray(tensors[f.tensor])[:, f.column]
        for f in features
    ]
    return columns, rows


def numeric_values(values: NDArray[np.generic], *, name: str) -> NDArray[np.float64]:
    """``values`` as float64 with missing as NaN; raises `DriftInputError` if not numeric."""
    kind = values.dtype.kind
    if kind in "iufb":
        return values.astype(np.float64, copy=False)
    if kind == "O":
        missing = missing_mask(values)
        try:
            out = np.where(missing, np.nan, values).astype(np.float64)
        except (TypeError, ValueError) as e:
            raise DriftInputError(f"numeric feature {name!r}: non-numeric value ({e})") from e
        return out
    raise DriftInputError(f"numeric feature {name!r}: expected numbers, got dtype {values.dtype}")
