"""Fold batches of model inputs, outputs and labels into a window's counts.

Everything is vectorised per batch: one ``np.searchsorted`` per numeric column, one
``np.bincount`` per batch for all numeric bins, ``np.unique`` per categorical column.
No Python loop runs per row, so the cost per row falls as batches grow; the agent's
`DriftMonitor` buffers single-row calls into batches for that reason.

Missing values (NaN, None) are counted per feature and excluded from bins and moments;
``±inf`` lands in the under/overflow bin but not in the moments, min or max.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift.base import DriftInputError
from edgefleet.shared.drift.categories import encode_categories, missing_mask
from edgefleet.shared.drift.profile import (
    CategoricalFeature,
    FeatureBase,
    NumericFeature,
    ReferenceProfile,
    Tensors,
    as_tensors,
    check_layout,
    feature_columns,
    numeric_values,
    tensor_layout,
)
from edgefleet.shared.drift.window import (
    CategoricalCounts,
    ClassificationCounts,
    NumericCounts,
    RegressionCounts,
    WindowSketch,
)


@dataclass
class _Group:
    """Numeric features read from one tensor, folded as one [N, F] block."""

    tensor: str
    columns: NDArray[np.intp] | None  # None: the tensor is 1-D
    slots: NDArray[np.intp]  # positions in the role's numeric state arrays


_Moments = tuple[
    NDArray[np.int64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.int64],
]


@dataclass
class _Delta:
    """One validated, binned batch of one role, not yet added to the counts."""

    rows: int
    groups: list[tuple[_Group, NDArray[np.intp], _Moments]] = field(default_factory=list)
    categorical: list[tuple[NDArray[np.int64], int]] = field(default_factory=list)


@dataclass
class _LabelDelta:
    """One batch of labels, joined and binned, not yet added to the counts."""

    labelled: int = 0
    confusion: NDArray[np.int64] | None = None
    positives: list[NDArray[np.int64]] = field(default_factory=list)
    negatives: list[NDArray[np.int64]] = field(default_factory=list)
    regression: NDArray[np.float64] | None = None


def _integer_table(categories: Sequence[str]) -> tuple[int, NDArray[np.intp]] | None:
    """(lowest key, key - lowest -> category) when every category is a small integer."""
    try:
        keys = [int(c) for c in categories]
    except ValueError:
        return None
    if not keys or any(str(k) != c for k, c in zip(keys, categories, strict=True)):
        return None
    low, high = min(keys), max(keys)
    if high - low > 4096:
        return None
    table = np.full(high - low + 1, len(categories), dtype=np.intp)
    table[np.array(keys) - low] = np.arange(len(keys))
    return low, table


def _encode_integers(
    values: NDArray[np.generic], table: tuple[int, NDArray[np.intp]], other: int
) -> NDArray[np.intp]:
    low, lookup = table
    shifted = values.astype(np.int64) - low
    inside = (shifted >= 0) & (shifted < lookup.size)
    codes: NDArray[np.intp] = np.where(inside, lookup[np.where(inside, shifted, 0)], other)
    return codes


class _RoleState:
    """Counts of the inputs (or of the outputs) of one window."""

    def __init__(self, features: Sequence[NumericFeature | CategoricalFeature], role: str) -> None:
        self.role = role
        self.features = list(features)
        self.numeric = [f for f in features if isinstance(f, NumericFeature)]
        self.categorical = [f for f in features if isinstance(f, CategoricalFeature)]
        self.edges = [np.asarray(f.edges, dtype=np.float64) for f in self.numeric]
        sizes = [f.n_bins for f in self.numeric]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        self.groups: list[_Group] = []
        by_tensor: dict[str, list[int]] = {}
        for slot, feature in enumerate(self.numeric):
            by_tensor.setdefault(feature.tensor, []).append(slot)
        for tensor, slots in by_tensor.items():
            first = self.numeric[slots[0]]
            columns = (
                None
                if first.column is None
                else np.array([self.numeric[s].column for s in slots], dtype=np.intp)
            )
            self.groups.append(_Group(tensor, columns, np.array(slots, dtype=np.intp)))
        self.cat_index = [{k: i for i, k in enumerate(f.categories)} for f in self.categorical]
        self.int_tables = [_integer_table(f.categories) for f in self.categorical]
        self.layout = tensor_layout(self.features)
        self.reset()

    def reset(self) -> None:
        n = len(self.numeric)
        self.bins = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        self.n = np.zeros(n, dtype=np.int64)
        self.mean = np.zeros(n)
        self.m2 = np.zeros(n)
        self.min = np.full(n, np.inf)
        self.max = np.full(n, -np.inf)
        self.missing = np.zeros(n, dtype=np.int64)
        self.cat_counts = [np.zeros(f.n_bins, dtype=np.int64) for f in self.categorical]
        self.cat_missing = [0] * len(self.categorical)

    def prepare(self, tensors: Tensors) -> _Delta:
        """Validate and bin one batch without touching the counts."""
        rows = check_layout(tensors, self.layout, role=self.role)
        delta = _Delta(rows=rows)
        if rows == 0:
            return delta
        for group in self.groups:
            delta.groups.append((group, *self._bin_group(group, np.asarray(tensors[group.tensor]))))
        for i, feature in enumerate(self.categorical):
            array = np.asarray(tensors[feature.tensor])
            column = array if feature.column is None else array[:, feature.column]
            table = self.int_tables[i]
            if table is not None and column.dtype.kind in "iu":
                codes, missing = _encode_integers(column, table, len(feature.categories)), 0
            else:
                codes, missing = encode_categories(
                    column, self.cat_index[i], len(feature.categories), name=feature.name
                )
            delta.categorical.append((np.bincount(codes, minlength=feature.n_bins), missing))
        return delta

    def apply(self, delta: _Delta) -> None:
        """Add a prepared batch to the counts."""
        if delta.rows == 0:
            return
        if delta.groups:
            flat = np.concatenate([indices for _, indices, _ in delta.groups])
            self.bins += np.bincount(flat, minlength=self.bins.size)
        for group, _, moments in delta.groups:
            self._merge_moments(group.slots, moments)
        for i, (counts, missing) in enumerate(delta.categorical):
            self.cat_counts[i] += counts
            self.cat_missing[i] += missing

    def _bin_group(
        self, group: _Group, array: NDArray[np.generic]
    ) -> tuple[NDArray[np.intp], _Moments]:
        if group.columns is None:
            block = array.reshape(-1, 1)
        elif group.columns.size == array.shape[1] and np.array_equal(
            group.columns, np.arange(array.shape[1])
        ):
            block = array
        else:
            block = array[:, group.columns]
        # Feature-major and contiguous: every reduction and search below runs along rows.
        x = np.ascontiguousarray(numeric_values(block, name=group.tensor).T)
        finite = np.isfinite(x)
        if finite.all():
            count = np.full(x.shape[0], x.shape[1], dtype=np.int64)
            mean = x.mean(axis=1)
            m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
            low, high = x.min(axis=1), x.max(axis=1)
            missing = np.zeros(x.shape[0], dtype=np.int64)
        else:
            count = finite.sum(axis=1)
            mean = np.where(finite, x, 0.0).sum(axis=1) / np.maximum(count, 1)
            m2 = (np.where(finite, x - mean[:, None], 0.0) ** 2).sum(axis=1)
            low = np.where(finite, x, np.inf).min(axis=1)
            high = np.where(finite, x, -np.inf).max(axis=1)
            missing = np.isnan(x).sum(axis=1)
        parts = []
        for k, slot in enumerate(group.slots.tolist()):
            column = x[k]
            if missing[k]:
                column = column[~np.isnan(column)]
            parts.append(
                np.searchsorted(self.edges[slot], column, side="right") + self.offsets[slot]
            )
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return flat, (count, mean, m2, low, high, missing)

    def _merge_moments(self, slots: NDArray[np.intp], moments: _Moments) -> None:
        n_b, mean_b, m2_b, low, high, missing = moments
        n_a, mean_a = self.n[slots], self.mean[slots]
        n = n_a + n_b
        safe = np.maximum(n, 1)
        delta = mean_b - mean_a
        self.mean[slots] = (n_a * mean_a + n_b * mean_b) / safe
        self.m2[slots] = self.m2[slots] + m2_b + delta * delta * (n_a * n_b / safe)
        self.n[slots] = n
        self.min[slots] = np.minimum(self.min[slots], low)
        self.max[slots] = np.maximum(self.max[slots], high)
        self.missing[slots] += missing

    def counts(self) -> dict[str, NumericCounts | CategoricalCounts]:
        out: dict[str, NumericCounts | CategoricalCounts] = {}
        numeric_slot = {f.name: i for i, f in enumerate(self.numeric)}
        cat_slot = {f.name: i for i, f in enumerate(self.categorical)}
        for feature in self.features:
            if feature.name in numeric_slot:
                i = numeric_slot[feature.name]
                seen = int(self.n[i]) > 0
                out[feature.name] = NumericCounts(
                    counts=self.bins[self.offsets[i] : self.offsets[i + 1]].tolist(),
                    count=int(self.n[i]),
                    mean=float(self.mean[i]),
                    m2=float(self.m2[i]),
                    min=float(self.min[i]) if seen else None,
                    max=float(self.max[i]) if seen else None,
                    missing=int(self.missing[i]),
                )
            else:
                j = cat_slot[feature.name]
                out[feature.name] = CategoricalCounts(
                    counts=self.cat_counts[j].tolist(), missing=self.cat_missing[j]
                )
        return out


class WindowAccumulator:
    """Mutable counts of the current window against one `ReferenceProfile`.

    Not thread-safe: the agent's monitor serialises calls with its lock.
    """

    def __init__(self, profile: ReferenceProfile, *, input_tensor: str | None = None) -> None:
        self.profile = profile
        tensors = {f.tensor for f in profile.inputs}
        self._input_tensor = input_tensor or (next(iter(tensors)) if len(tensors) == 1 else "input")
        self._inputs = _RoleState(profile.inputs, "input")
        self._outputs = _RoleState(profile.outputs, "output")
        self._labels = profile.labels
        self.reset()

    def reset(self) -> None:
        """Start a new, empty window."""
        self._inputs.reset()
        self._outputs.reset()
        self.count = 0
        self.labelled = 0
        spec = self._labels
        k = len(spec.classes) + 1 if spec else 0
        self._confusion = np.zeros((k, k), dtype=np.int64)
        edges = spec.score_edges if spec and spec.scores else []
        self._score_edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self._positives = [np.zeros(e.size + 1, dtype=np.int64) for e in self._score_edges]
        self._negatives = [np.zeros(e.size + 1, dtype=np.int64) for e in self._score_edges]
        self._class_index = {c: i for i, c in enumerate(spec.classes)} if spec else {}
        self._regression = np.zeros(4)  # count, error, |error|, error²

    def add(
        self,
        inputs: Tensors | NDArray[np.generic],
        outputs: Tensors | None = None,
        labels: NDArray[np.generic] | None = None,
    ) -> None:
        """Fold one batch of inputs (and the model's outputs on them, and labels).

        Validates everything before changing any count, so a rejected batch leaves the
        window as it was. Raises `DriftInputError` naming the tensor or feature that
        does not fit the profile.
        """
        in_tensors = as_tensors(inputs, self._input_tensor)
        out_tensors = outputs or {}
        in_delta = self._inputs.prepare(in_tensors)
        rows = in_delta.rows
        out_delta = self._outputs.prepare(out_tensors)
        if self._outputs.features and out_delta.rows != rows:
            raise DriftInputError(f"{rows} input rows but {out_delta.rows} output rows")
        label_delta = None if labels is None else self._label_delta(out_tensors, np.asarray(labels))
        self._inputs.apply(in_delta)
        self._outputs.apply(out_delta)
        self.count += rows
        if label_delta is not None:
            self._apply_labels(label_delta)

    def add_labels(self, outputs: Tensors, labels: NDArray[np.generic]) -> None:
        """Fold labels joined with the outputs the model gave on the same rows.

        Rows whose label (or prediction) is missing are skipped. Raises
        `DriftInputError` if the profile has no label spec or the shapes disagree;
        the counts are then unchanged.
        """
        self._apply_labels(self._label_delta(outputs, np.asarray(labels)))

    def _label_delta(self, outputs: Tensors, y: NDArray[np.generic]) -> _LabelDelta:
        spec = self._labels
        if spec is None:
            raise DriftInputError("the profile has no label spec; labels cannot be scored")
        columns, rows = feature_columns(
            outputs, [FeatureBase(name=spec.prediction, tensor=spec.prediction)], role="output"
        )
        if y.shape != (rows,):
            raise DriftInputError(f"labels of shape {list(y.shape)} for {rows} predictions")
        prediction = columns[0]
        delta = _LabelDelta()
        if spec.task == "regression":
            predicted = numeric_values(prediction, name=spec.prediction)
            truth = numeric_values(y, name="label")
            ok = np.isfinite(predicted) & np.isfinite(truth)
            error = predicted[ok] - truth[ok]
            delta.regression = np.array(
                [error.size, error.sum(), np.abs(error).sum(), (error**2).sum()]
            )
            delta.labelled = int(error.size)
            return delta
        ok = ~(missing_mask(y) | missing_mask(prediction))
        other = len(spec.classes)
        truth_codes, _ = encode_categories(y[ok], self._class_index, other, name="label")
        pred_codes, _ = encode_categories(
            prediction[ok], self._class_index, other, name=spec.prediction
        )
        k = other + 1
        delta.confusion = np.bincount(truth_codes * k + pred_codes, minlength=k * k).reshape(k, k)
        if spec.scores:
            scores = np.asarray(outputs.get(spec.scores, np.empty((0, 0))))
            if scores.shape != (rows, len(spec.classes)):
                raise DriftInputError(
                    f"scores {spec.scores!r}: expected shape [{rows}, {len(spec.classes)}], "
                    f"got {list(scores.shape)}"
                )
            s = numeric_values(scores[ok], name=spec.scores)
            for j, edges in enumerate(self._score_edges):
                bins = np.searchsorted(edges, s[:, j], side="right")
                is_j = truth_codes == j
                delta.positives.append(np.bincount(bins[is_j], minlength=edges.size + 1))
                delta.negatives.append(np.bincount(bins[~is_j], minlength=edges.size + 1))
        delta.labelled = int(truth_codes.size)
        return delta

    def _apply_labels(self, delta: _LabelDelta) -> None:
        if delta.confusion is not None:
            self._confusion += delta.confusion
        for j, (pos, neg) in enumerate(zip(delta.positives, delta.negatives, strict=True)):
            self._positives[j] += pos
            self._negatives[j] += neg
        if delta.regression is not None:
            self._regression += delta.regression
        self.labelled += delta.labelled

    def snapshot(self) -> WindowSketch:
        """The current window as a wire sketch (the accumulator keeps counting)."""
        spec = self._labels
        classification = None
        regression = None
        if spec is not None and spec.task == "classification":
            classification = ClassificationCounts(
                confusion=self._confusion.tolist(),
                positives=[p.tolist() for p in self._positives],
                negatives=[n.tolist() for n in self._negatives],
            )
        elif spec is not None:
            n, err, abs_err, sq_err = self._regression.tolist()
            regression = RegressionCounts(
                count=int(n), error_sum=err, abs_error_sum=abs_err, squared_error_sum=sq_err
            )
        return WindowSketch(
            profile_id=self.profile.profile_id,
            count=self.count,
            inputs=self._inputs.counts(),
            outputs=self._outputs.counts(),
            labelled=self.labelled,
            classification=classification,
            regression=regression,
        )
