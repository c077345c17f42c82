"""Label metrics from merged counts agree with scikit-learn on the raw predictions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    precision_recall_fscore_support,
    roc_auc_score,
)

from edgefleet.shared.drift import WindowAccumulator, build_profile, merge_all
from edgefleet.shared.drift.labels import (
    auc_binning_bound,
    classification_metrics,
    regression_metrics,
)


def scored_classifier(rng: np.random.Generator, n: int, k: int, noise: float):
    y = rng.integers(0, k, n)
    logits = rng.normal(0.0, noise, (n, k))
    logits[np.arange(n), y] += 1.0
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, scores.argmax(axis=1), scores


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), k=st.sampled_from([2, 3, 5]), noise=st.floats(0.3, 3.0))
def test_metrics_from_merged_counts_match_sklearn(seed, k, noise) -> None:
    rng = np.random.default_rng(seed)
    y_ref, p_ref, s_ref = scored_classifier(rng, 1500, k, noise)
    profile = build_profile(
        {"x": s_ref[:, 0]},
        {"label": p_ref, "probabilities": s_ref},
        labels=y_ref,
        classes=list(range(k)),
        score_bins=50,
    )
    y, predicted, scores = scored_classifier(rng, 1200, k, noise)
    windows = []
    for part in np.array_split(np.arange(1200), 4):  # four devices, merged at the fleet
        accumulator = WindowAccumulator(profile)
        accumulator.add(
            {"x": scores[part, 0]},
            {"label": predicted[part], "probabilities": scores[part]},
            y[part],
        )
        windows.append(accumulator.snapshot())
    merged = merge_all(windows).classification
    assert merged is not None
    assert profile.labels is not None
    ours = classification_metrics(merged, profile.labels.classes)

    assert ours.accuracy == pytest.approx(accuracy_score(y, predicted))
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, zero_division=0)
    present = np.unique(np.concatenate([y, predicted]))
    for name, p, r, f, s in zip(
        present, precision[present], recall[present], f1[present], support[present], strict=True
    ):
        assert ours.precision[str(name)] == pytest.approx(p)
        assert ours.recall[str(name)] == pytest.approx(r)
        assert ours.f1[str(name)] == pytest.approx(f)
        assert ours.support[str(name)] == s
    macro = precision_recall_fscore_support(y, predicted, average="macro", zero_division=0)
    assert (ours.macro_precision, ours.macro_recall, ours.macro_f1) == pytest.approx(macro[:3])

    # Ties inside a score bin count half, so the binned AUC is within
    # 0.5 * sum_i P_i N_i / (P N) of the exact one (per class, and so for the mean).
    bounds = [auc_binning_bound(merged.positives[j], merged.negatives[j]) for j in range(k)]
    if k == 2:
        exact = roc_auc_score(y, scores[:, 1])
        bound = bounds[1]
    else:
        exact = roc_auc_score(y, scores, multi_class="ovr", average="macro")
        bound = float(np.mean(bounds))
    assert ours.roc_auc is not None
    assert abs(ours.roc_auc - exact) <= bound + 1e-12
    assert bound < 0.05  # 50 quantile bins keep the binning error small


def test_auc_is_exact_when_no_positive_shares_a_bin_with_a_negative() -> None:
    from edgefleet.shared.drift.labels import binned_roc_auc

    assert binned_roc_auc([0, 0, 3, 5], [4, 2, 0, 0]) == pytest.approx(1.0)
    assert binned_roc_auc([4, 0], [0, 4]) == pytest.approx(0.0)
    assert binned_roc_auc([2, 2], [2, 2]) == pytest.approx(0.5)
    assert binned_roc_auc([0, 0], [1, 1]) is None


def test_regression_errors_match_sklearn_and_numpy() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    y = 2 * x + rng.normal(0, 0.5, 500)
    predicted = 2 * x
    profile = build_profile({"x": x}, {"value": predicted}, labels=y)
    assert profile.labels is not None
    assert profile.labels.task == "regression"
    accumulator = WindowAccumulator(profile)
    accumulator.add({"x": x}, {"value": predicted}, y)
    counts = accumulator.snapshot().regression
    assert counts is not None
    metrics = regression_metrics(counts)
    assert metrics.mae == pytest.approx(mean_absolute_error(y, predicted))
    assert metrics.rmse == pytest.approx(float(np.sqrt(np.mean((predicted - y) ** 2))))
    assert metrics.bias == pytest.approx(float(np.mean(predicted - y)))
    assert profile.labels.baseline["mae"] == pytest.approx(metrics.mae)


def test_missing_labels_are_skipped_not_counted_as_errors(profile) -> None:
    accumulator = WindowAccumulator(profile)
    outputs = {
        "label": np.array([0, 1, 2]),
        "probabilities": np.full((3, 3), 1 / 3, dtype=np.float32),
    }
    accumulator.add_labels(outputs, np.array([0, None, 2], dtype=object))
    sketch = accumulator.snapshot()
    assert sketch.labelled == 2
    assert sketch.classification is not None
    assert np.trace(np.array(sketch.classification.confusion)) == 2


def test_unknown_classes_land_in_other(profile) -> None:
    accumulator = WindowAccumulator(profile)
    outputs = {"label": np.array([0, 7]), "probabilities": np.full((2, 3), 1 / 3, dtype=np.float32)}
    accumulator.add_labels(outputs, np.array([9, 7]))
    classification = accumulator.snapshot().classification
    assert classification is not None
    confusion = np.array(classification.confusion)
    assert confusion[3, 0] == 1
    assert confusion[3, 3] == 1
