"""Golden checks: the pure comparison, and real models run on real golden files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared.manifest import Tolerance
from edgefleet.shared.package.format import DataError
from edgefleet.shared.package.golden import check_golden, compare_golden, load_golden
from edgefleet.shared.package.read import extract_package
from edgefleet.shared.runtime import load_runtime
from edgefleet.simulators.models import TrainedModel

TOL = Tolerance(atol=1e-4, rtol=1e-4)


def _expected() -> dict[str, np.ndarray]:
    return {
        "probabilities": np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], dtype=np.float32),
        "label": np.array([1, 0, 0], dtype=np.int64),
    }


def test_identical_outputs_pass() -> None:
    result = compare_golden(_expected(), _expected(), TOL)
    assert result.passed
    assert result.samples == 3
    assert result.failed_samples == []
    assert all(o.max_abs_error == 0 for o in result.outputs)


def test_error_within_tolerance_passes_and_is_reported() -> None:
    actual = _expected()
    actual["probabilities"] = actual["probabilities"] + np.float32(5e-5)
    result = compare_golden(_expected(), actual, TOL)
    assert result.passed
    worst = {o.name: o for o in result.outputs}["probabilities"]
    assert 4e-5 < worst.max_abs_error < 6e-5


def test_only_the_samples_out_of_tolerance_fail() -> None:
    actual = _expected()
    actual["probabilities"][2, 0] += 0.01
    result = compare_golden(_expected(), actual, TOL)
    assert not result.passed
    assert result.failed_samples == [2]
    worst = {o.name: o for o in result.outputs}["probabilities"]
    assert worst.max_abs_error == pytest.approx(0.01, rel=1e-3)
    assert worst.max_rel_error == pytest.approx(0.02, rel=1e-3)
    assert "1 of 3 golden samples failed" in result.summary()


def test_a_changed_label_fails_its_sample() -> None:
    actual = _expected()
    actual["label"][1] = 1
    result = compare_golden(_expected(), actual, TOL)
    assert result.failed_samples == [1]


def test_nan_outputs_fail() -> None:
    actual = _expected()
    actual["probabilities"][0, 1] = np.nan
    result = compare_golden(_expected(), actual, TOL)
    assert result.failed_samples == [0]
    worst = {o.name: o for o in result.outputs}["probabilities"]
    assert worst.max_abs_error == worst.max_rel_error == np.finfo(np.float64).max


@pytest.mark.parametrize("change", ["missing", "reshaped"])
def test_missing_or_reshaped_output_fails_every_sample(change: str) -> None:
    actual = _expected()
    if change == "missing":
        del actual["label"]
    else:
        actual["label"] = actual["label"].reshape(3, 1)
    result = compare_golden(_expected(), actual, TOL)
    assert not result.passed
    assert result.failed_samples == [0, 1, 2]
    assert "output 'label': expected shape [3]" in result.problems[0]


def test_packaged_golden_samples_pass_on_their_model(built_package: Path, tmp_path: Path) -> None:
    manifest = extract_package(built_package, tmp_path / "x")
    assert manifest.golden is not None
    runtime = load_runtime(tmp_path / "x" / manifest.model_file)
    result = check_golden(runtime, tmp_path / "x" / manifest.golden.file, manifest.golden.tolerance)
    assert result.passed, result.summary()
    assert result.samples == manifest.golden.count == 16


def test_golden_samples_catch_a_different_model(
    built_package: Path, other_wine_model: TrainedModel, tmp_path: Path
) -> None:
    manifest = extract_package(built_package, tmp_path / "x")
    assert manifest.golden is not None
    result = check_golden(
        load_runtime(other_wine_model.path),
        tmp_path / "x" / "golden.npz",
        manifest.golden.tolerance,
    )
    assert not result.passed
    assert result.failed_samples


def test_a_model_that_cannot_run_the_golden_inputs_fails_the_check(
    built_package: Path, narrow_model: Path, tmp_path: Path
) -> None:
    extract_package(built_package, tmp_path / "x")
    result = check_golden(load_runtime(narrow_model), tmp_path / "x" / "golden.npz", TOL)
    assert not result.passed
    assert result.failed_samples == list(range(16))
    assert "the model failed on the golden inputs" in result.problems[0]


def test_unreadable_golden_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read golden samples"):
        load_golden(b"not a zip")
    np.savez(tmp_path / "g.npz", x=np.zeros(3))
    with pytest.raises(DataError, match="expected 'in:\\*' and 'out:\\*' arrays"):
        load_golden(tmp_path / "g.npz")
