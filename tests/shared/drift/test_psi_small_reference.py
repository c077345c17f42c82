"""PSI defers to binned KS when the reference is too small for the 0.25 band to mean much."""

from __future__ import annotations

import numpy as np

from edgefleet.shared.drift import (
    DriftThresholds,
    FeatureThresholds,
    ReferenceProfile,
    WindowAccumulator,
    WindowSketch,
    build_profile,
)
from edgefleet.shared.drift.thresholds import evaluate
from tests.support.drift_reference import FEATURES, classify, make_inputs


def _small_profile_and_noisy_window(seed: int) -> tuple[ReferenceProfile, WindowSketch]:
    """A 60-row reference (6 rows per bin) and a same-distribution window of 300 rows."""
    rng = np.random.default_rng(seed)
    reference = make_inputs(rng, 60)
    profile = build_profile(reference, classify(reference), feature_names=FEATURES)
    window = make_inputs(rng, 300)
    accumulator = WindowAccumulator(profile)
    accumulator.add(window, classify(window))
    return profile, accumulator.snapshot()


def _psi_false_alarm(seed: int) -> tuple[ReferenceProfile, WindowSketch] | None:
    """The first seed whose no-drift window crosses PSI 0.25 on an input, with its profile."""
    profile, window = _small_profile_and_noisy_window(seed)
    old_rule = DriftThresholds(defaults=FeatureThresholds(psi_min_reference_per_bin=0))
    report = evaluate(profile, window, old_rule)
    if any("psi" in v.crossed for v in report.features if v.scores.role == "input"):
        return profile, window
    return None


def test_psi_crossing_on_a_small_reference_warns_but_does_not_alert_by_default() -> None:
    found = next(f for f in (_psi_false_alarm(s) for s in range(50)) if f is not None)
    profile, window = found
    old_rule = DriftThresholds(defaults=FeatureThresholds(psi_min_reference_per_bin=0))
    before = evaluate(profile, window, old_rule)
    after = evaluate(profile, window)
    psi_only = [
        v.scores.name
        for v in after.features
        if v.scores.role == "input" and "psi" in v.crossed and "ks" not in v.crossed
    ]
    assert psi_only, "the window crossed PSI and not KS on some input"
    for verdict in after.features:
        if verdict.scores.name in psi_only:
            assert verdict.status == "warn"
            assert verdict.psi_votes is False
    assert set(psi_only) <= set(before.drifted_inputs)
    assert not set(psi_only) & set(after.drifted_inputs)


def test_psi_still_votes_on_a_large_reference(profile: ReferenceProfile) -> None:
    # The shared profile has 2,000 rows: 200 per inner bin.
    rng = np.random.default_rng(3)
    x = make_inputs(rng, 400, shift=1.0)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, classify(x))
    report = evaluate(profile, accumulator.snapshot())
    verdict = {v.scores.name: v for v in report.features}["temperature"]
    assert verdict.psi_votes is True
    assert verdict.status == "alert"


def test_a_small_reference_still_alerts_on_a_real_shift_through_ks() -> None:
    rng = np.random.default_rng(11)
    reference = make_inputs(rng, 60)
    profile = build_profile(reference, classify(reference), feature_names=FEATURES)
    x = make_inputs(rng, 300, shift=2.0)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, classify(x))
    report = evaluate(profile, accumulator.snapshot())
    verdict = {v.scores.name: v for v in report.features}["temperature"]
    assert verdict.psi_votes is False
    assert "ks" in verdict.crossed
    assert report.drifted_inputs == ["temperature"]


def test_psi_keeps_voting_when_the_operator_left_ks_out() -> None:
    rng = np.random.default_rng(11)
    reference = make_inputs(rng, 60)
    profile = build_profile(reference, classify(reference), feature_names=FEATURES)
    x = make_inputs(rng, 300, shift=2.0)
    accumulator = WindowAccumulator(profile)
    accumulator.add(x, classify(x))
    psi_alone = DriftThresholds(defaults=FeatureThresholds(alert_on=["psi"]))
    report = evaluate(profile, accumulator.snapshot(), psi_alone)
    verdict = {v.scores.name: v for v in report.features}["temperature"]
    assert verdict.psi_votes is True
    assert verdict.status == "alert"
