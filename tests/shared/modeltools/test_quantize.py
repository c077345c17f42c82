"""A quantized model remembers the float model it came from, and its package says so."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.shared.manifest import Lineage
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.modeltools.quantize import (
    QUANTIZED_FROM_KEY,
    quantize_onnx,
    quantized_from,
)
from edgefleet.shared.package.format import ManifestError
from edgefleet.shared.package.read import read_package
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import wine_split

FLOAT_MODEL = model_path("wine_float.onnx")


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("int8")
    rows = work / "eval.npy"
    np.save(rows, wine_split().x_test)
    out = work / "wine.int8.onnx"
    quantize_onnx(FLOAT_MODEL, out, mode="dynamic", eval_data=rows, max_accuracy_drop=0.05)
    return out


def _float_sha256() -> str:
    return hashlib.sha256(FLOAT_MODEL.read_bytes()).hexdigest()


def _package(model: Path, out: Path, lineage: Lineage | None = None) -> Path:
    return build_package(model, name="wine", version="1.1.0", out_dir=out, golden_count=4,
                         lineage=lineage)  # fmt: skip


def test_quantized_model_is_stamped_with_the_float_models_sha256(int8_model: Path) -> None:
    props = {p.key: p.value for p in onnx.load(str(int8_model)).metadata_props}
    assert props[QUANTIZED_FROM_KEY] == _float_sha256()
    assert quantized_from(int8_model) == _float_sha256()
    assert quantized_from(FLOAT_MODEL) is None


def test_packaging_a_quantized_model_records_quantized_from(
    int8_model: Path, tmp_path: Path
) -> None:
    manifest, _ = read_package(_package(int8_model, tmp_path))
    assert manifest.lineage == Lineage(quantized_from=_float_sha256())
    # The float model itself has no such lineage.
    float_manifest, _ = read_package(_package(FLOAT_MODEL, tmp_path / "float"))
    assert float_manifest.lineage is None


def test_the_lineage_given_is_kept_beside_quantized_from(int8_model: Path, tmp_path: Path) -> None:
    given = Lineage(run_uri="runs:/77aa", parent_version="1.0.0", params={"bits": "8"})
    manifest, _ = read_package(_package(int8_model, tmp_path, given))
    assert manifest.lineage is not None
    assert manifest.lineage.quantized_from == _float_sha256()
    assert manifest.lineage.run_uri == "runs:/77aa"
    assert manifest.lineage.parent_version == "1.0.0"
    assert manifest.lineage.params == {"bits": "8"}


def test_lineage_naming_another_float_model_is_refused(int8_model: Path, tmp_path: Path) -> None:
    wrong = Lineage(quantized_from="0" * 64)
    with pytest.raises(ManifestError, match=r"lineage says quantized from 0{64}, but"):
        _package(int8_model, tmp_path, wrong)
    assert not (tmp_path / "wine-1.1.0.efpkg").exists()


def test_a_stamp_that_is_not_a_sha256_is_refused(int8_model: Path, tmp_path: Path) -> None:
    model = onnx.load(str(int8_model))
    for prop in model.metadata_props:
        if prop.key == QUANTIZED_FROM_KEY:
            prop.value = "not-a-digest"
    forged = tmp_path / "forged.onnx"
    onnx.save(model, str(forged))
    with pytest.raises(ManifestError, match="bad quantization stamp"):
        _package(forged, tmp_path)
