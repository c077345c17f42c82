"""TFLite model packages, built from the committed models and their held-out data.

The models are the real files of `edgefleet.simulators.tflite_models` (float and int8), run by the
agent's LiteRT runtime; the reference data are the training rows of
`edgefleet.simulators.tflite_models.datasets`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.shared.drift import ProfileError
from edgefleet.shared.drift.builder import build_profile
from edgefleet.shared.drift.profile import MAX_FLAT_FEATURES, NumericFeature, ReferenceProfile
from edgefleet.shared.manifest import ModelManifest, Tolerance
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.golden import GoldenReport, check_golden, load_golden
from edgefleet.shared.package.read import extract_package, read_package
from edgefleet.shared.runtime import load_runtime
from edgefleet.shared.tensors import TensorSpec
from edgefleet.simulators.tflite_models.catalog import load_manifest, model_path
from edgefleet.simulators.tflite_models.datasets import Split, digits_split, wine_split
from tests.e2e.updates.support import Pkg, repackage

GOLDEN_COUNT = 16
WINE_IN = [TensorSpec(name="input", dtype="float32", shape=[None, 13])]
WINE_OUT = [TensorSpec(name="probabilities", dtype="float32", shape=[None, 3])]
DIGITS_IN = [TensorSpec(name="input", dtype="float32", shape=[None, 8, 8, 1])]
DIGITS_OUT = [TensorSpec(name="probabilities", dtype="float32", shape=[None, 10])]


@pytest.fixture(scope="module")
def splits() -> dict[str, Split]:
    return {"wine": wine_split(), "digits": digits_split()}


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, splits: dict[str, Split]
) -> dict[str, Path]:
    """The training rows of each task as ``.npy`` reference data."""
    out = tmp_path_factory.mktemp("tflite-reference")
    paths = {}
    for task, split in splits.items():
        paths[task] = out / f"{task}.npy"
        np.save(paths[task], split.x_train)
    return paths


def _flat_profile(
    inputs: dict[str, NDArray[Any]], outputs: dict[str, NDArray[Any]], names: list[str] | None
) -> ReferenceProfile:
    """A profile of image inputs with one numeric feature per pixel (8x8: 64 features)."""
    flat = {k: v.reshape(len(v), -1) for k, v in inputs.items()}
    return build_profile(flat, outputs, feature_names=names)


def _extracted(package: Path, dest: Path) -> tuple[ModelManifest, Path]:
    manifest = extract_package(package, dest)
    return manifest, dest


def _golden(model_dir: Path, manifest: ModelManifest) -> GoldenReport:
    assert manifest.golden is not None
    runtime = load_runtime(model_dir / manifest.model_file, runtime=manifest.runtime)
    try:
        return check_golden(runtime, model_dir / manifest.golden.file, manifest.golden.tolerance)
    finally:
        runtime.close()


def _heldout_accuracy(model_dir: Path, manifest: ModelManifest, split: Split) -> float:
    runtime = load_runtime(model_dir / manifest.model_file, runtime=manifest.runtime)
    try:
        scores = runtime.predict({"input": split.x_test})["probabilities"]
    finally:
        runtime.close()
    return float(np.mean(scores.argmax(axis=1) == split.y_test))


@pytest.mark.parametrize("file", ["wine_float.tflite", "wine_int8.tflite"])
def test_wine_tflite_package_has_float_specs_passing_golden_samples_and_a_profile(
    file: str, tmp_path: Path, reference: dict[str, Path], splits: dict[str, Split]
) -> None:
    entry = load_manifest().entry(file)
    package = build_package(
        model_path(file),
        name="wine",
        version="2.0.0",
        out_dir=tmp_path,
        reference_data=reference["wine"],
        golden_count=GOLDEN_COUNT,
    )
    manifest, members = read_package(package)
    assert manifest.runtime == "tflite"
    assert manifest.model_file == "model.tflite"
    assert (manifest.sha256, manifest.size_bytes) == (entry.sha256, entry.size_bytes)
    assert (manifest.inputs, manifest.outputs) == (WINE_IN, WINE_OUT)
    assert manifest.golden is not None
    assert (manifest.golden.count, manifest.golden.source) == (GOLDEN_COUNT, "reference")
    assert sorted(m.name for m in members) == ["golden.npz", "manifest.json", "model.tflite"]

    manifest, model_dir = _extracted(package, tmp_path / "extracted")
    golden_in, golden_out = load_golden(model_dir / "golden.npz")
    # Golden inputs are real reference rows, not synthetic ones.
    rows = splits["wine"].x_train
    assert all(any(np.array_equal(g, r) for r in rows) for g in golden_in["input"])
    assert golden_out["probabilities"].dtype == np.float32
    result = _golden(model_dir, manifest)
    assert result.passed, result.summary()
    assert result.samples == GOLDEN_COUNT

    profile = ReferenceProfile.model_validate(manifest.reference_profile)
    assert profile.rows == len(rows)
    assert [f.name for f in profile.inputs] == [f"input[{j}]" for j in range(13)]
    assert [f.name for f in profile.outputs] == [f"probabilities[{j}]" for j in range(3)]
    assert _heldout_accuracy(model_dir, manifest, splits["wine"]) == entry.heldout_accuracy


def test_full_integer_digits_package_exposes_float_tensors_and_passes_golden_samples(
    tmp_path: Path, reference: dict[str, Path], splits: dict[str, Split]
) -> None:
    entry = load_manifest().entry("digits_cnn_int8.tflite")
    assert [t.dtype for t in entry.inputs + entry.outputs] == ["int8", "int8"], "stored as int8"
    package = build_package(
        model_path("digits_cnn_int8.tflite"),
        name="digits",
        version="1.0.0",
        out_dir=tmp_path,
        reference_data=reference["digits"],
        golden_count=GOLDEN_COUNT,
        profile_builder=_flat_profile,
    )
    manifest, model_dir = _extracted(package, tmp_path / "extracted")
    assert manifest.runtime == "tflite"
    assert (manifest.inputs, manifest.outputs) == (DIGITS_IN, DIGITS_OUT)
    golden_in, golden_out = load_golden(model_dir / "golden.npz")
    assert golden_in["input"].dtype == np.float32
    assert golden_in["input"].shape == (GOLDEN_COUNT, 8, 8, 1)
    # Dequantized outputs: probabilities in [0, 1] on the output's 1/256 grid.
    scores = golden_out["probabilities"]
    assert scores.dtype == np.float32
    assert scores.min() >= 0.0
    assert scores.max() <= 1.0
    assert np.allclose(scores * 256, np.round(scores * 256), atol=1e-3)
    result = _golden(model_dir, manifest)
    assert result.passed, result.summary()
    profile = ReferenceProfile.model_validate(manifest.reference_profile)
    assert (len(profile.inputs), len(profile.outputs)) == (64, 10)
    assert profile.rows == len(splits["digits"].x_train)
    assert _heldout_accuracy(model_dir, manifest, splits["digits"]) == pytest.approx(
        entry.heldout_accuracy
    )


def test_image_model_gets_a_default_profile_the_agent_folds_pixel_for_pixel(
    tmp_path: Path, reference: dict[str, Path], splits: dict[str, Split]
) -> None:
    package = build_package(
        model_path("digits_cnn_int8.tflite"),
        name="digits",
        version="1.0.0",
        out_dir=tmp_path,
        reference_data=reference["digits"],
        golden_count=GOLDEN_COUNT,
    )
    manifest, _ = read_package(package)
    assert manifest.reference_profile is not None
    profile = ReferenceProfile.model_validate(manifest.reference_profile)
    flat_train = splits["digits"].x_train.reshape(len(splits["digits"].x_train), -1)
    # Feature j is element j of the C-order flattened image, on both sides.
    assert [f.name for f in profile.inputs] == [f"input[{j}]" for j in range(64)]
    means = [f.mean for f in profile.inputs if isinstance(f, NumericFeature)]
    np.testing.assert_allclose(means, flat_train.mean(axis=0, dtype=np.float64), rtol=1e-6)

    monitor = DriftMonitor(profile)
    held_out = splits["digits"].x_test
    outputs = load_runtime(model_path("digits_cnn_int8.tflite")).predict({"input": held_out})
    monitor.observe({"input": held_out}, outputs)
    window = monitor.close()
    assert window is not None
    assert (window.count, monitor.rejected_rows) == (len(held_out), 0)


def test_an_image_too_large_to_profile_pixel_by_pixel_is_refused_naming_the_tensor() -> None:
    frames = np.zeros((4, 65, 65, 1), dtype=np.float32)  # 4225 features per row
    with pytest.raises(ProfileError, match=r"'camera'.*4225 features.*4096"):
        build_profile({"camera": frames})
    assert len(build_profile({"camera": frames[:, :64, :64]}).inputs) == MAX_FLAT_FEATURES


# The int8 wine model differs from the float one by at most ~0.007 on the reference rows
# (measured), so golden outputs of the float model hold the int8 model to that.
LOOSE = Tolerance(atol=0.02, rtol=0.0)
TIGHT = Tolerance(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("tolerance", "passes"), [(LOOSE, True), (TIGHT, False)])
def test_int8_model_against_float_golden_samples_passes_only_within_the_tolerance(
    tolerance: Tolerance, passes: bool, tmp_path: Path, reference: dict[str, Path]
) -> None:
    float_package = build_package(
        model_path("wine_float.tflite"),
        name="wine",
        version="2.0.0",
        out_dir=tmp_path / "float",
        reference_data=reference["wine"],
        golden_count=GOLDEN_COUNT,
        tolerance=tolerance,
    )
    int8_bytes = model_path("wine_int8.tflite").read_bytes()
    mixed = repackage(
        Pkg(float_package, "2.0.0"), tmp_path / "mixed", version="2.0.1", model_bytes=int8_bytes
    )
    manifest, model_dir = _extracted(mixed.path, tmp_path / "extracted")
    assert (model_dir / manifest.model_file).read_bytes() == int8_bytes
    assert manifest.golden is not None
    assert manifest.golden.tolerance == tolerance

    result = _golden(model_dir, manifest)

    assert result.passed is passes, result.summary()
    worst = {o.name: o.max_abs_error for o in result.outputs}["probabilities"]
    assert TIGHT.atol < worst < LOOSE.atol, "int8 differs from float, but only a little"
    if not passes:
        assert "golden samples failed" in result.summary()
        assert result.failed_samples
