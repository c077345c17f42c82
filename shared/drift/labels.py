"""Label metrics from mergeable counts: a confusion matrix, score histograms, error sums.

Conventions follow scikit-learn: precision/recall/F1 of a class that is never predicted
(or never true) is 0; macro averages run over the classes present in the labels or the
predictions. ROC-AUC comes from per-class score histograms: thresholds sit at the bin
edges and the curve is the trapezoid between them, so pairs of a positive and a negative
in the same bin count as ties (half). The error against the exact AUC is therefore at
most ``0.5 * sum_i P_i N_i / (P N)`` for ``P_i`` positives and ``N_i`` negatives in
bin ``i`` (`auc_binning_bound`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgefleet.shared.drift.base import DriftModel
from edgefleet.shared.drift.profile import OTHER
from edgefleet.shared.drift.window import ClassificationCounts, RegressionCounts


class ClassificationMetrics(DriftModel):
    """Accuracy, per-class and macro precision/recall/F1, and ROC-AUC."""

    count: int
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]
    macro_precision: float
    macro_recall: float
    macro_f1: float
    roc_auc_per_class: dict[str, float]
    roc_auc: float | None = None


class RegressionMetrics(DriftModel):
    """Mean absolute error, root mean squared error and mean signed error."""

    count: int
    mae: float
    rmse: float
    bias: float


def binned_roc_auc(positives: Sequence[int], negatives: Sequence[int]) -> float | None:
    """ROC-AUC from score-bin counts (bins in increasing score order); None if undefined."""
    pos = np.asarray(positives, dtype=np.float64)[::-1]
    neg = np.asarray(negatives, dtype=np.float64)[::-1]
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos == 0 or total_neg == 0:
        return None
    tp = np.concatenate([[0.0], np.cumsum(pos)]) / total_pos
    fp = np.concatenate([[0.0], np.cumsum(neg)]) / total_neg
    return float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2.0))


def auc_binning_bound(positives: Sequence[int], negatives: Sequence[int]) -> float:
    """The most `binned_roc_auc` can differ from the exact AUC of the same scores."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if pos.sum() == 0 or neg.sum() == 0:
        return 0.0
    return float(0.5 * np.sum(pos * neg) / (pos.sum() * neg.sum()))


def classification_metrics(
    counts: ClassificationCounts, classes: Sequence[str]
) -> ClassificationMetrics:
    """Metrics of labelled classifier predictions (``classes`` from the profile)."""
    names = [*classes, OTHER]
    matrix = np.asarray(counts.confusion, dtype=np.float64)
    total = float(matrix.sum())
    diagonal = np.diag(matrix)
    true_totals = matrix.sum(axis=1)
    predicted_totals = matrix.sum(axis=0)
    precision = np.divide(
        diagonal, predicted_totals, out=np.zeros_like(diagonal), where=predicted_totals > 0
    )
    recall = np.divide(diagonal, true_totals, out=np.zeros_like(diagonal), where=true_totals > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(diagonal), where=denominator > 0
    )
    present = (true_totals > 0) | (predicted_totals > 0)
    aucs: dict[str, float] = {}
    for j, name in enumerate(classes):
        if j < len(counts.positives):
            auc = binned_roc_auc(counts.positives[j], counts.negatives[j])
            if auc is not None:
                aucs[name] = auc
    if len(classes) == 2:
        overall = aucs.get(classes[1])
    else:
        overall = float(np.mean(list(aucs.values()))) if aucs else None

    def per_class(values: np.ndarray[tuple[int], np.dtype[np.float64]]) -> dict[str, float]:
        return {n: float(v) for n, v, p in zip(names, values, present, strict=True) if p}

    def macro(values: np.ndarray[tuple[int], np.dtype[np.float64]]) -> float:
        return float(values[present].mean()) if present.any() else 0.0

    return ClassificationMetrics(
        count=int(total),
        accuracy=float(diagonal.sum() / total) if total else 0.0,
        precision=per_class(precision),
        recall=per_class(recall),
        f1=per_class(f1),
        support={n: int(t) for n, t, p in zip(names, true_totals, present, strict=True) if p},
        macro_precision=macro(precision),
        macro_recall=macro(recall),
        macro_f1=macro(f1),
        roc_auc_per_class=aucs,
        roc_auc=overall,
    )


def regression_metrics(counts: RegressionCounts) -> RegressionMetrics:
    """MAE, RMSE and bias of labelled regressor predictions (zeros if none)."""
    n = counts.count
    if n == 0:
        return RegressionMetrics(count=0, mae=0.0, rmse=0.0, bias=0.0)
    return RegressionMetrics(
        count=n,
        mae=counts.abs_error_sum / n,
        rmse=math.sqrt(counts.squared_error_sum / n),
        bias=counts.error_sum / n,
    )


def metric_summary(
    classes: Sequence[str],
    classification: ClassificationCounts | None,
    regression: RegressionCounts | None,
) -> dict[str, float]:
    """The headline metrics by name, for baselines and performance-drop checks.

    Classification: ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``
    and ``roc_auc`` (when defined); regression: ``mae`` and ``rmse``. Empty when no
    prediction was labelled.
    """
    if classification is not None:
        metrics = classification_metrics(classification, classes)
        if metrics.count == 0:
            return {}
        summary = {
            "accuracy": metrics.accuracy,
            "macro_precision": metrics.macro_precision,
            "macro_recall": metrics.macro_recall,
            "macro_f1": metrics.macro_f1,
        }
        if metrics.roc_auc is not None:
            summary["roc_auc"] = metrics.roc_auc
        return summary
    if regression is not None and regression.count:
        reg = regression_metrics(regression)
        return {"mae": reg.mae, "rmse": reg.rmse}
    return {}
