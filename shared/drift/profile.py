"""The reference profile a model package carries: what "normal" looks like for drift.

Built once from training or validation data (`build_profile`), serialised as JSON into
the package manifest, and shared by device (binning) and fleet (comparison).

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
from collections.abc import Collection, Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from edgefleet.shared.drift.base import DriftInputError, DriftModel, ProfileError
from edgefleet.shared.drift.binning import bin_index, quantile_edges
from edgefleet.shared.drift.categories import category_key, encode_categories, missing_mask

PROFILE_VERSION = 1
OTHER = "__other__"
MAX_FLAT_FEATURES = 4096
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

    name: str = Field(min_length=1)
    tensor: str = Field(min_length=1)
    column: int | None = Field(default=None, ge=0)


class NumericFeature(FeatureBase):
    """A numeric feature's reference: quantile bins, counts in them, and moments."""

    kind: Literal["numeric"] = "numeric"
    edges: list[float] = Field(min_length=2)
    counts: list[int]
    count: int = Field(ge=0, description="finite values (moments are over these)")
    mean: float
    m2: float = Field(ge=0, description="sum of squared deviations from the mean")
    min: float
    max: float
    missing: int = Field(ge=0)

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
    categories: list[str]
    counts: list[int]
    missing: int = Field(ge=0)

    @property
    def n_bins(self) -> int:
        """Categories plus the trailing "other" bin."""
        return len(self.categories) + 1


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="kind")]


class LabelSpec(DriftModel):
    """How labels join predictions, and the baseline metrics on the reference data."""

    task: Literal["classification", "regression"]
    prediction: str = Field(description="1-D output tensor: predicted class or value")
    scores: str | None = Field(
        default=None, description="2-D output tensor [N, K]; column j scores classes[j]"
    )
    classes: list[str] = Field(default_factory=list)
    score_edges: list[list[float]] = Field(
        default_factory=list, description="per class, bin edges of that class's score"
    )
    baseline: dict[str, float] = Field(default_factory=dict)


class ReferenceProfile(DriftModel):
    """Everything a device needs to fold windows and the fleet needs to compare them."""

    version: Literal[1] = 1
    profile_id: str = ""
    rows: int = Field(ge=0)
    inputs: list[Feature]
    outputs: list[Feature] = Field(default_factory=list)
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


def _numeric_feature(base: FeatureBase, values: NDArray[np.generic], n_bins: int) -> NumericFeature:
    x = numeric_values(values, name=base.name)
    nan = np.isnan(x)
    present = x[~nan]
    finite = present[np.isfinite(present)]
    if finite.size == 0:
        raise ProfileError(f"numeric feature {base.name!r} has no finite reference value")
    edges = quantile_edges(finite, n_bins)
    counts = np.bincount(bin_index(np.asarray(edges), present), minlength=len(edges) + 1)
    mean = float(finite.mean())
    return NumericFeature(
        **base.model_dump(),
        edges=edges,
        counts=[int(c) for c in counts],
        count=int(finite.size),
        mean=mean,
        m2=float(((finite - mean) ** 2).sum()),
        min=float(finite.min()),
        max=float(finite.max()),
        missing=int(nan.sum()),
    )


def _categorical_feature(
    base: FeatureBase, values: NDArray[np.generic], top_k: int
) -> CategoricalFeature:
    if values.ndim != 1:
        raise ProfileError(f"categorical feature {base.name!r} must be 1-D")
    present = values[~missing_mask(values)]
    keys = [category_key(v) for v in np.unique(present).tolist()] if present.size else []
    index = {k: i for i, k in enumerate(keys)}
    codes, missing = encode_categories(values, index, len(keys), name=base.name)
    freq = np.bincount(codes, minlength=len(keys))
    # Most frequent first; ties broken by key so the profile is deterministic.
    order = sorted(range(len(keys)), key=lambda i: (-int(freq[i]), keys[i]))[:top_k]
    kept = [keys[i] for i in order]
    counts = [int(freq[i]) for i in order] + [int(freq.sum()) - sum(int(freq[i]) for i in order)]
    return CategoricalFeature(**base.model_dump(), categories=kept, counts=counts, missing=missing)


def _profile_tensors(
    tensors: Tensors,
    *,
    role: str,
    feature_names: Sequence[str] | None,
    categorical: Collection[str],
    integers_are_categorical: bool,
    n_bins: int,
    top_k: int,
) -> list[NumericFeature | CategoricalFeature]:
    features: list[NumericFeature | CategoricalFeature] = []
    two_d = [name for name, t in tensors.items() if np.asarray(t).ndim == 2]
    if feature_names is not None and len(two_d) != 1:
        raise ProfileError(f"feature_names needs exactly one 2-D {role} tensor, found {len(two_d)}")
    for tensor_name, raw in tensors.items():
        array = np.asarray(raw)
        if array.ndim == 1:
            bases = [FeatureBase(name=tensor_name, tensor=tensor_name)]
        elif array.ndim == 2:
            names = (
                list(feature_names)
                if feature_names is not None
                else [f"{tensor_name}[{j}]" for j in range(array.shape[1])]
            )
            if len(names) != array.shape[1]:
                raise ProfileError(
                    f"{role} tensor {tensor_name!r} has {array.shape[1]} columns but "
                    f"{len(names)} feature names were given"
                )
            bases = [FeatureBase(name=n, tensor=tensor_name, column=j) for j, n in enumerate(names)]
        else:
            raise ProfileError(
                f"{role} tensor {tensor_name!r}: expected 1-D or 2-D, got shape {array.shape}"
            )
        for base in bases:
            column = array if base.column is None else array[:, base.column]
            is_cat = (
                base.name in categorical
                or column.dtype.kind in "USb"
                or (column.dtype.kind == "O" and not _object_is_numeric(column))
                or (integers_are_categorical and array.ndim == 1 and column.dtype.kind in "iu")
            )
            features.append(
                _categorical_feature(base, column, top_k)
                if is_cat
                else _numeric_feature(base, column, n_bins)
            )
    names_seen = [f.name for f in features]
    if len(set(names_seen)) != len(names_seen):
        raise ProfileError(f"{role} feature names are not unique: {names_seen}")
    return features


def _object_is_numeric(column: NDArray[np.generic]) -> bool:
    try:
        numeric_values(column, name="")
    except DriftInputError:
        return False
    return True


def build_profile(
    inputs: Tensors | NDArray[np.generic],
    outputs: Tensors | None = None,
    *,
    feature_names: Sequence[str] | None = None,
    input_tensor: str = "input",
    categorical: Collection[str] = (),
    n_bins: int = 10,
    top_k: int = 20,
    labels: NDArray[np.generic] | None = None,
    task: Literal["classification", "regression"] | None = None,
    prediction: str | None = None,
    scores: str | None = None,
    classes: Sequence[object] | None = None,
    score_bins: int = 20,
) -> ReferenceProfile:
    """Profile reference ``inputs`` (and the model's ``outputs`` on them).

    ``inputs`` is either the model's input tensors by name or one ``[N, F]`` array (the
    tensor ``input_tensor``) whose columns ``feature_names`` names. Input tensors of
    more than two dimensions are flattened first (`flatten_features`, at most
    `MAX_FLAT_FEATURES` per row). Strings, booleans
    and the names in ``categorical`` become categorical features; so do 1-D integer
    outputs (predicted classes). 2-D outputs (scores) become one numeric feature per
    column. With ``labels``, the profile also records how labels join predictions and
    the baseline metrics on this data, for performance-drop detection.

    Raises `ProfileError` for empty data, a numeric feature without a finite value,
    names that do not fit, an input too large to flatten, or labels that cannot be
    joined.
    """
    tensors = flatten_tensors(as_tensors(inputs, input_tensor), max_features=MAX_FLAT_FEATURES)
    if not tensors:
        raise ProfileError("no input tensors to profile")
    input_features = _profile_tensors(
        tensors,
        role="input",
        feature_names=feature_names,
        categorical=categorical,
        integers_are_categorical=False,
        n_bins=n_bins,
        top_k=top_k,
    )
    output_tensors = outputs or {}
    output_features = _profile_tensors(
        output_tensors,
        role="output",
        feature_names=None,
        categorical=categorical,
        integers_are_categorical=True,
        n_bins=n_bins,
        top_k=top_k,
    )
    _, rows = feature_columns(tensors, input_features, role="input")
    if rows == 0:
        raise ProfileError("reference data has no rows")
    profile = ReferenceProfile(rows=rows, inputs=input_features, outputs=output_features)
    if labels is not None:
        from edgefleet.shared.drift.label_spec import label_spec

        spec = label_spec(
            output_tensors,
            np.asarray(labels),
            rows=rows,
            task=task,
            prediction=prediction,
            scores=scores,
            classes=classes,
            score_bins=score_bins,
        )
        profile = profile.model_copy(update={"labels": spec})
        from edgefleet.shared.drift.label_spec import baseline_metrics

        baseline = baseline_metrics(profile, tensors, output_tensors, np.asarray(labels))
        profile = profile.model_copy(
            update={"labels": spec.model_copy(update={"baseline": baseline})}
        )
    return profile.model_copy(update={"profile_id": profile.content_id()})
