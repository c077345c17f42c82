"""Working out, from reference data, how a model's labels join its outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift.accumulator import WindowAccumulator
from edgefleet.shared.drift.base import ProfileError
from edgefleet.shared.drift.binning import quantile_edges
from edgefleet.shared.drift.categories import category_key, missing_mask
from edgefleet.shared.drift.labels import metric_summary
from edgefleet.shared.drift.profile import LabelSpec, ReferenceProfile, Tensors


def _pick(candidates: list[str], what: str, available: Sequence[str]) -> str:
    if len(candidates) != 1:
        raise ProfileError(
            f"cannot tell which output holds the {what}: candidates {candidates} among "
            f"{sorted(available)}; name it explicitly"
        )
    return candidates[0]


def label_spec(
    outputs: Tensors,
    labels: NDArray[np.generic],
    *,
    rows: int,
    task: Literal["classification", "regression"] | None,
    prediction: str | None,
    scores: str | None,
    classes: Sequence[object] | None,
    score_bins: int,
) -> LabelSpec:
    """The label spec for ``outputs``; infers what was not given.

    Raises `ProfileError` when labels and outputs do not fit together or a choice is
    ambiguous (then the caller must name ``prediction``/``scores``/``classes``).
    """
    if labels.shape != (rows,):
        raise ProfileError(f"labels of shape {list(labels.shape)} for {rows} reference rows")
    arrays = {name: np.asarray(t) for name, t in outputs.items()}
    if prediction is None:
        prediction = _pick(
            [n for n, a in arrays.items() if a.ndim == 1], "prediction", list(arrays)
        )
    if prediction not in arrays or arrays[prediction].shape != (rows,):
        raise ProfileError(f"prediction output {prediction!r} must be a 1-D output of {rows} rows")
    if task is None:
        task = "regression" if labels.dtype.kind == "f" else "classification"
    if task == "regression":
        return LabelSpec(task=task, prediction=prediction)
    if classes is None:
        present = np.concatenate(
            [labels[~missing_mask(labels)].astype(object), arrays[prediction].astype(object)]
        )
        keys = {category_key(v) for v in present.tolist()}
        numeric = all(k.lstrip("-").isdigit() for k in keys)
        class_keys = sorted(keys, key=lambda k: (int(k), k) if numeric else (0, k))
    else:
        class_keys = [category_key(c) for c in classes]
    if scores is None:
        wide = [n for n, a in arrays.items() if a.ndim == 2 and a.shape[1] == len(class_keys)]
        scores = wide[0] if len(wide) == 1 else None
    score_edges: list[list[float]] = []
    if scores is not None:
        matrix = arrays.get(scores)
        if matrix is None or matrix.shape != (rows, len(class_keys)):
            raise ProfileError(
                f"scores output {scores!r} must have shape [{rows}, {len(class_keys)}] "
                f"(one column per class {class_keys})"
            )
        values = matrix.astype(np.float64)
        score_edges = [quantile_edges(values[:, j], score_bins) for j in range(len(class_keys))]
    return LabelSpec(
        task=task,
        prediction=prediction,
        scores=scores,
        classes=class_keys,
        score_edges=score_edges,
    )


def baseline_metrics(
    profile: ReferenceProfile, inputs: Tensors, outputs: Tensors, labels: NDArray[np.generic]
) -> dict[str, float]:
    """The headline metrics of the model on the reference data itself."""
    accumulator = WindowAccumulator(profile)
    accumulator.add(inputs, outputs, labels)
    sketch = accumulator.snapshot()
    classes = profile.labels.classes if profile.labels else []
    return metric_summary(classes, sketch.classification, sketch.regression)
