"""Reference profiles: bins that fit the data, JSON that round-trips, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.shared.drift import ProfileError, ReferenceProfile, WindowAccumulator, build_profile
from edgefleet.shared.drift.profile import OTHER, CategoricalFeature, NumericFeature


def test_profile_survives_a_json_round_trip_with_the_same_id(profile) -> None:
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    assert again.content_id() == profile.profile_id
    assert len(profile.profile_id) == 64


def test_profile_id_changes_when_the_reference_changes(reference_data) -> None:
    x, outputs, _ = reference_data
    a = build_profile(x, outputs)
    b = build_profile(x[:-1], {k: v[:-1] for k, v in outputs.items()})
    assert a.profile_id != b.profile_id


def test_numeric_bins_hold_every_reference_value_with_empty_outer_bins(profile) -> None:
    for feature in profile.inputs:
        assert isinstance(feature, NumericFeature)
        assert len(feature.counts) == feature.n_bins
        assert feature.counts[0] == 0
        assert feature.counts[-1] == 0
        assert sum(feature.counts) == profile.rows
        assert feature.edges == sorted(set(feature.edges))


def test_quantile_bins_hold_roughly_equal_shares(profile) -> None:
    temperature = profile.inputs[0]
    assert isinstance(temperature, NumericFeature)
    assert temperature.n_bins == 12
    shares = np.array(temperature.counts[1:-1]) / profile.rows
    assert np.allclose(shares, 0.1, atol=0.01)


def test_discrete_values_get_a_bin_each_so_a_shift_between_neighbours_shows() -> None:
    x = np.array([0, 1, 1, 2, 2, 2] * 10, dtype=np.float64)
    profile = build_profile({"level": x})
    level = profile.inputs[0]
    assert isinstance(level, NumericFeature)
    assert level.counts == [0, 10, 20, 30, 0]
    accumulator = WindowAccumulator(profile)
    accumulator.add({"level": np.array([1.0, 2.0, 3.0, -1.0])})
    assert accumulator.snapshot().inputs["level"].counts == [1, 0, 1, 1, 1]


def test_constant_feature_still_gets_a_bin() -> None:
    profile = build_profile({"flag": np.full(20, 5.0)})
    flag = profile.inputs[0]
    assert isinstance(flag, NumericFeature)
    assert flag.counts == [0, 20, 0]


def test_categorical_features_keep_the_top_k_and_fold_the_rest_into_other() -> None:
    colours = np.array(["red"] * 5 + ["green"] * 3 + ["blue"] * 2 + ["pink"])
    profile = build_profile({"colour": colours}, top_k=2)
    colour = profile.inputs[0]
    assert isinstance(colour, CategoricalFeature)
    assert colour.categories == ["red", "green"]
    assert colour.counts == [5, 3, 3]
    accumulator = WindowAccumulator(profile)
    accumulator.add({"colour": np.array(["green", "mauve", None], dtype=object)})
    counts = accumulator.snapshot().inputs["colour"]
    assert counts.counts == [0, 1, 1]
    assert counts.missing == 1


def test_outputs_profile_classes_as_categories_and_scores_as_numbers(
    profile, reference_data
) -> None:
    _, outputs, labels = reference_data
    kinds = {f.name: f.kind for f in profile.outputs}
    assert kinds == {
        "label": "categorical",
        "probabilities[0]": "numeric",
        "probabilities[1]": "numeric",
        "probabilities[2]": "numeric",
    }
    assert profile.labels is not None
    assert profile.labels.classes == ["0", "1", "2"]
    assert profile.labels.scores == "probabilities"
    expected = float(np.mean(outputs["label"] == labels))
    assert profile.labels.baseline["accuracy"] == pytest.approx(expected)
    assert OTHER not in profile.labels.classes


def test_a_feature_without_any_finite_value_is_refused_by_name() -> None:
    with pytest.raises(ProfileError, match="'broken' has no finite reference value"):
        build_profile({"ok": np.arange(5.0), "broken": np.full(5, np.nan)})


def test_feature_names_must_match_the_columns() -> None:
    with pytest.raises(ProfileError, match="3 columns but 2 feature names"):
        build_profile(np.zeros((4, 3)), feature_names=["a", "b"])


def test_labels_must_cover_every_reference_row(reference_data) -> None:
    x, outputs, labels = reference_data
    with pytest.raises(ProfileError, match="labels of shape"):
        build_profile(x, outputs, labels=labels[:-1])
