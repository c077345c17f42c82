"""The verdict: quiet on reference-like data, loud on a shift, tunable per feature."""

from __future__ import annotations

import numpy as np

from edgefleet.shared.drift import DriftThresholds, FeatureThresholds, WindowAccumulator, evaluate
from tests.support.drift_reference import classify, make_inputs


def sketch(profile, seed: int, n: int, *, shift: float = 0.0, label_noise: float = 0.15):
    rng = np.random.default_rng(seed)
    x = make_inputs(rng, n, shift=shift)
    outputs = classify(x)
    labels = np.where(rng.random(n) < 1 - label_noise, outputs["label"], rng.integers(0, 3, n))
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, outputs, labels)
    return accumulator.snapshot()


def test_windows_like_the_reference_raise_no_alarm(profile) -> None:
    alarms = [evaluate(profile, sketch(profile, seed, 500)).data_drift for seed in range(20)]
    assert sum(alarms) <= 1


def test_a_shifted_feature_is_named_and_flags_data_and_prediction_drift(profile) -> None:
    report = evaluate(profile, sketch(profile, 1, 500, shift=2.0))
    assert report.judged
    assert report.data_drift
    assert report.prediction_drift
    assert report.drifted_inputs == ["temperature"]
    verdict = {v.scores.name: v for v in report.features}["temperature"]
    assert verdict.status == "alert"
    assert {"psi", "ks"} <= set(verdict.crossed)


def test_small_windows_are_not_judged(profile) -> None:
    report = evaluate(profile, sketch(profile, 1, 50, shift=3.0))
    assert not report.judged
    assert not report.data_drift
    assert {v.status for v in report.features} == {"not_judged"}


def test_per_feature_overrides_silence_or_tighten_a_feature(profile) -> None:
    window = sketch(profile, 1, 500, shift=2.0)
    ignored = DriftThresholds(features={"temperature": FeatureThresholds(ignore=True)})
    assert "temperature" not in evaluate(profile, window, ignored).drifted_inputs
    lenient = DriftThresholds(
        features={"temperature": FeatureThresholds(psi_alert=100.0, psi_warn=100.0, ks_alert=1.1)}
    )
    verdict = {v.scores.name: v for v in evaluate(profile, window, lenient).features}
    assert verdict["temperature"].status == "warn"  # JS/chi-square still crossed, not alerting
    assert lenient.for_feature("pressure").psi_alert == 0.25


def test_a_performance_drop_against_the_baseline_is_detected(profile) -> None:
    good = evaluate(profile, sketch(profile, 2, 600))
    assert not good.performance_drop
    bad = evaluate(profile, sketch(profile, 2, 600, label_noise=0.6))
    assert bad.performance_drop
    dropped = {d.metric for d in bad.metric_drops if d.dropped}
    assert "accuracy" in dropped
    assert bad.metrics["accuracy"] < profile.labels.baseline["accuracy"] - 0.05


def test_too_few_labels_do_not_judge_performance(profile) -> None:
    report = evaluate(profile, sketch(profile, 2, 600), DriftThresholds(min_labelled=10_000))
    assert report.metric_drops == []
    assert not report.performance_drop
