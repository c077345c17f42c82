"""Building a reference profile from reference data: `build_profile`.

The profile model (`edgefleet.shared.drift.profile`) is what device and fleet read; this
is what the packaging tools run on a workstation. It lives apart because it needs the
label join (`edgefleet.shared.drift.label_spec`) and the device's own folding code to
compute baseline metrics, and both of those read the profile model.

Invariants (of what it builds): see `edgefleet.shared.drift.profile`; building the same
data with the same arguments gives the same ``profile_id``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift.base import DriftInputError, ProfileError
from edgefleet.shared.drift.binning import bin_index, quantile_edges
from edgefleet.shared.drift.categories import category_key, encode_categories, missing_mask
from edgefleet.shared.drift.label_spec import baseline_metrics, label_spec
from edgefleet.shared.drift.profile import (
    MAX_FLAT_FEATURES,
    CategoricalFeature,
    FeatureBase,
    NumericFeature,
    ReferenceProfile,
    Tensors,
    as_tensors,
    feature_columns,
    flatten_tensors,
    numeric_values,
)
from edgefleet.shared.replace import replace


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
        profile = replace(profile, labels=spec)
        baseline = baseline_metrics(profile, tensors, output_tensors, np.asarray(labels))
        profile = replace(profile, labels=replace(spec, baseline=baseline))
    return replace(profile, profile_id=profile.content_id())
