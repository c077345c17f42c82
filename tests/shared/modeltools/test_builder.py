"""Building packages from real models: round trip, determinism, and clear build errors."""

from __future__ import annotations

import hashlib
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edgefleet.shared.manifest import Lineage, Tolerance
from edgefleet.shared.modeltools.builder import GoldenFailureError, ModelLoadError, build_package
from edgefleet.shared.modeltools.reference import SchemaMismatchError
from edgefleet.shared.package.format import DataError, ManifestError
from edgefleet.shared.package.golden import Tensors, load_golden
from edgefleet.shared.package.read import extract_package, read_package
from edgefleet.simulators.models import TrainedModel

WHEN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_package_read_extract_round_trip(
    built_package: Path, wine_model: TrainedModel, tmp_path: Path
) -> None:
    assert built_package.name == "wine-1.0.0.efpkg"
    manifest, members = read_package(built_package)
    assert [m.name for m in members] == ["golden.npz", "manifest.json", "model.onnx"]
    model_bytes = wine_model.path.read_bytes()
    assert manifest.sha256 == hashlib.sha256(model_bytes).hexdigest()
    assert manifest.size_bytes == len(model_bytes)
    assert manifest.runtime == "onnx"
    assert [s.name for s in manifest.inputs] == ["input"]
    assert manifest.inputs[0].shape == [None, 13]
    assert {s.name for s in manifest.outputs} == {"label", "probabilities"}
    assert manifest.feature_names == wine_model.feature_names
    assert manifest.metrics == {"accuracy": wine_model.accuracy}
    assert manifest.golden is not None
    assert manifest.golden.source == "reference"

    extracted = extract_package(built_package, tmp_path / "x")
    assert extracted == manifest
    assert (tmp_path / "x" / "model.onnx").read_bytes() == model_bytes
    on_disk = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert on_disk["version"] == "1.0.0"


def test_golden_inputs_are_rows_of_the_reference_data(
    built_package: Path, wine_model: TrainedModel, tmp_path: Path
) -> None:
    extract_package(built_package, tmp_path / "x")
    inputs, outputs = load_golden(tmp_path / "x" / "golden.npz")
    rows = inputs["input"]
    assert rows.shape == (16, 13)
    assert rows.dtype == np.float32
    reference = {r.tobytes() for r in wine_model.x_train}
    assert all(r.tobytes() in reference for r in rows)
    assert outputs["probabilities"].shape == (16, 3)
    assert np.allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def _build(model: Path, out: Path, reference: Path | None, **kw: object) -> Path:
    return build_package(
        model,
        name="wine",
        version="2.1.0-rc.1",
        out_dir=out,
        reference_data=reference,
        golden_count=8,
        created_at=WHEN,
        **kw,  # type: ignore[arg-type]
    )


def test_same_inputs_give_byte_identical_packages(
    wine_model: TrainedModel, reference_npy: Path, tmp_path: Path
) -> None:
    first = _build(wine_model.path, tmp_path / "a", reference_npy, metrics={"f1": 0.9})
    second = _build(wine_model.path, tmp_path / "b", reference_npy, metrics={"f1": 0.9})
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert {(m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, "")}
    third = _build(wine_model.path, tmp_path / "c", reference_npy, metrics={"f1": 0.8})
    assert third.read_bytes() != first.read_bytes()


def test_created_at_defaults_to_source_date_epoch(
    wine_model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    kw = {"name": "wine", "version": "1.0.0", "golden_count": 4}
    a = build_package(wine_model.path, out_dir=tmp_path / "a", **kw)  # type: ignore[arg-type]
    b = build_package(wine_model.path, out_dir=tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert a.read_bytes() == b.read_bytes()
    assert read_package(a)[0].created_at == datetime.fromtimestamp(1700000000, UTC)


def test_without_reference_data_golden_samples_are_synthetic(
    wine_model: TrainedModel, tmp_path: Path
) -> None:
    out = _build(wine_model.path, tmp_path, None, tolerance=Tolerance(atol=1e-3, rtol=0))
    manifest, _ = read_package(out)
    assert manifest.golden is not None
    assert manifest.golden.source == "synthetic"
    assert manifest.golden.count == 8
    assert manifest.golden.tolerance == Tolerance(atol=1e-3, rtol=0)
    assert manifest.reference_profile is None


def test_zero_golden_samples_leave_the_golden_file_out(
    wine_model: TrainedModel, tmp_path: Path
) -> None:
    out = build_package(
        wine_model.path, name="wine", version="1.0.0", out_dir=tmp_path, golden_count=0
    )
    manifest, members = read_package(out)
    assert manifest.golden is None
    assert [m.name for m in members] == ["manifest.json", "model.onnx"]


def test_csv_reference_with_header_names_the_features(
    wine_model: TrainedModel, tmp_path: Path
) -> None:
    csv = tmp_path / "ref.csv"
    header = ",".join(wine_model.feature_names)
    np.savetxt(csv, wine_model.x_train, delimiter=",", header=header, comments="")
    out = _build(wine_model.path, tmp_path / "out", csv)
    manifest, _ = read_package(out)
    assert manifest.feature_names == wine_model.feature_names
    assert manifest.golden is not None
    assert manifest.golden.source == "reference"


def test_reference_profile_is_built_from_reference_inputs_and_outputs(
    wine_model: TrainedModel, reference_npy: Path, tmp_path: Path
) -> None:
    seen: list[tuple[Tensors, Tensors, list[str] | None]] = []

    def builder(inputs: Tensors, outputs: Tensors, names: list[str] | None) -> dict[str, object]:
        seen.append((inputs, outputs, names))
        return {"rows": len(inputs["input"]), "outputs": sorted(outputs)}

    out = _build(
        wine_model.path,
        tmp_path,
        reference_npy,
        feature_names=wine_model.feature_names,
        profile_builder=builder,
    )
    manifest, _ = read_package(out)
    assert manifest.reference_profile == {
        "rows": len(wine_model.x_train),
        "outputs": ["label", "probabilities"],
    }
    (inputs, outputs, names) = seen[0]
    assert np.array_equal(inputs["input"], wine_model.x_train)
    assert outputs["probabilities"].shape == (len(wine_model.x_train), 3)
    assert names == wine_model.feature_names


def test_default_reference_profile_comes_from_the_drift_library(
    built_package: Path, wine_model: TrainedModel
) -> None:
    manifest, _ = read_package(built_package)
    profile = manifest.reference_profile
    assert profile is not None
    assert profile["rows"] == len(wine_model.x_train)
    assert [f["name"] for f in profile["inputs"]] == wine_model.feature_names


def test_training_data_hash_records_lineage(
    wine_model: TrainedModel, reference_npy: Path, tmp_path: Path
) -> None:
    out = _build(wine_model.path, tmp_path, None, training_data=reference_npy)
    manifest, _ = read_package(out)
    assert manifest.training_data_sha256 == hashlib.sha256(reference_npy.read_bytes()).hexdigest()
    with pytest.raises(DataError, match=r"missing\.csv: cannot read training data"):
        _build(wine_model.path, tmp_path, None, training_data=tmp_path / "missing.csv")


def test_lineage_is_written_into_the_manifest(wine_model: TrainedModel, tmp_path: Path) -> None:
    lineage = Lineage(
        code_revision="9f1c2e7",
        run_uri="runs:/4b1d",
        parent_version="2.0.0",
        dataset_version="wine-2024-05",
        params={"C": "1.0", "max_iter": "500"},
        source="train.py",
    )
    out = _build(wine_model.path, tmp_path, None, lineage=lineage)
    manifest, _ = read_package(out)
    assert manifest.lineage == lineage
    with tarfile.open(out) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        on_disk = json.loads(member.read())
    assert on_disk["lineage"]["params"] == {"C": "1.0", "max_iter": "500"}
    assert on_disk["lineage"]["parent_version"] == "2.0.0"


def test_without_lineage_the_manifest_has_none(wine_model: TrainedModel, tmp_path: Path) -> None:
    manifest, _ = read_package(_build(wine_model.path, tmp_path, None))
    assert manifest.lineage is None


# ------------------------------------------------------------------------------ errors


def test_reference_data_with_another_feature_count_names_both_widths(
    narrow_model: Path, reference_npy: Path, tmp_path: Path
) -> None:
    with pytest.raises(SchemaMismatchError) as err:
        _build(narrow_model, tmp_path, reference_npy)
    message = str(err.value)
    assert "wine-reference.npy" in message
    assert "input 'X' expects shape [N, 4], found [124, 13]" in message
    assert "4 features per row, found 13" in message
    assert list(tmp_path.iterdir()) == []


def test_reference_data_of_the_wrong_dtype_names_both_dtypes(
    int_model: Path, reference_npy: Path, tmp_path: Path
) -> None:
    with pytest.raises(SchemaMismatchError, match="expects dtype int64, found float32"):
        _build(int_model, tmp_path, reference_npy)


def test_integral_csv_values_feed_an_integer_model(int_model: Path, tmp_path: Path) -> None:
    csv = tmp_path / "ints.csv"
    np.savetxt(csv, np.arange(13 * 5).reshape(5, 13), delimiter=",", fmt="%d")
    manifest, _ = read_package(_build(int_model, tmp_path / "out", csv))
    assert manifest.inputs[0].dtype == "int64"
    np.savetxt(csv, np.full((5, 13), 0.5), delimiter=",")
    with pytest.raises(SchemaMismatchError, match="expects dtype int64, found float64"):
        _build(int_model, tmp_path / "out", csv)


def test_npz_with_the_wrong_input_names_is_rejected(
    wine_model: TrainedModel, tmp_path: Path
) -> None:
    npz = tmp_path / "ref.npz"
    np.savez(npz, a=wine_model.x_train, b=wine_model.x_train)
    with pytest.raises(SchemaMismatchError, match=r"takes inputs \['input'\], found arrays"):
        _build(wine_model.path, tmp_path, npz)


def test_unsupported_reference_format_is_rejected(wine_model: TrainedModel, tmp_path: Path) -> None:
    (tmp_path / "ref.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported reference data format"):
        _build(wine_model.path, tmp_path, tmp_path / "ref.parquet")


def test_a_file_the_runtime_cannot_load_is_named_with_its_runtime(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelLoadError, match=r"broken\.onnx: the onnx runtime cannot load it"):
        _build(broken, tmp_path / "out", None)
    assert not (tmp_path / "out").exists()


def test_a_model_that_gives_nan_on_its_golden_samples_is_refused(
    nan_model: Path, reference_npy: Path, tmp_path: Path
) -> None:
    with pytest.raises(GoldenFailureError, match="NaN or infinite 'output' outputs"):
        _build(nan_model, tmp_path, reference_npy)


@pytest.mark.parametrize(
    ("kw", "complaint"),
    [
        ({"version": "1.4"}, "'1.4' is not a semantic version"),
        ({"version": "latest"}, "'latest' is not a semantic version"),
        ({"name": "../wine"}, "model name '../wine' must be"),
        ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'; expected one of onnx, tflite"),
        ({"min_agent_version": "0.1"}, "'0.1' is not a semantic version"),
    ],
)
def test_bad_identity_is_refused_before_loading_the_model(
    wine_model: TrainedModel, tmp_path: Path, kw: dict[str, str], complaint: str
) -> None:
    args: dict[str, object] = {"name": "wine", "version": "1.0.0", "out_dir": tmp_path}
    with pytest.raises(ManifestError, match=complaint):
        build_package(wine_model.path, **(args | kw))  # type: ignore[arg-type]


def test_unknown_model_suffix_asks_for_the_runtime(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\0")
    with pytest.raises(ManifestError, match=r"cannot tell the runtime from the suffix '\.bin'"):
        build_package(model, name="m", version="1.0.0", out_dir=tmp_path)
