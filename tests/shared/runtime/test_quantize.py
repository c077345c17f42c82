"""`edgefleet model quantize`: int8 models are kept only when they stay accurate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgefleet.shared.cli import main
from edgefleet.shared.modeltools.quantize import (
    AccuracyDropTooLarge,
    QuantizeError,
    quantize_onnx,
)
from edgefleet.shared.runtime import load_runtime
from edgefleet.simulators.tflite_models.catalog import model_path

# These tasks are easy and the models small: int8 measured no accuracy loss on wine and
# within one row in 540 on digits. Two points covers rounding on another CPU while
# still catching a quantizer that breaks the model (which costs tens of points).
MAX_DROP = 0.02


@pytest.fixture
def wine_files(tmp_path: Path, wine_data):
    files = {
        "calibration": tmp_path / "calibration.npy",
        "eval": tmp_path / "eval.npy",
        "labels": tmp_path / "labels.npy",
    }
    np.save(files["calibration"], wine_data.x_train)
    np.save(files["eval"], wine_data.x_test)
    np.save(files["labels"], wine_data.y_test)
    return files


def _int8_initializers(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(1 for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantized_wine_model_is_valid_int8_and_within_the_drop(
    mode, tmp_path, wine_files, wine_data
):
    out = tmp_path / f"wine_{mode}.onnx"
    report = quantize_onnx(
        model_path("wine_float.onnx"),
        out,
        mode=mode,
        calibration=wine_files["calibration"],
        eval_data=wine_files["eval"],
        labels=wine_files["labels"],
        max_accuracy_drop=MAX_DROP,
    )
    assert report.accepted
    assert report.metric == "accuracy"
    assert report.accuracy_drop <= MAX_DROP
    assert report.eval_rows == len(wine_data.y_test)
    assert report.quantized.size_bytes == out.stat().st_size
    assert _int8_initializers(out) >= 2  # both weight matrices are int8 now
    runtime = load_runtime(out)
    probabilities = runtime.predict({"input": wine_data.x_test})["probabilities"]
    accuracy = float(np.mean(probabilities.argmax(axis=1) == wine_data.y_test))
    assert accuracy == pytest.approx(report.quantized.accuracy)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantized_cnn_is_smaller_and_within_the_drop(mode, tmp_path, digits_data):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, input=digits_data.x_train[:200])
    eval_x, labels = tmp_path / "eval.npy", tmp_path / "labels.npy"
    np.save(eval_x, digits_data.x_test)
    np.save(labels, digits_data.y_test)
    out = tmp_path / "digits_int8.onnx"
    report = quantize_onnx(
        model_path("digits_cnn_float.onnx"),
        out,
        mode=mode,
        calibration=calibration,
        eval_data=eval_x,
        labels=labels,
        max_accuracy_drop=MAX_DROP,
    )
    # Weights dominate this model, so int8 shrinks it; the wine MLP has 256 weights and
    # the QDQ nodes outweigh what quantization saves.
    assert report.quantized.size_bytes < report.baseline.size_bytes
    assert report.accuracy_drop <= MAX_DROP
    assert report.agreement >= 0.95
    assert out.is_file()


def test_csv_calibration_rows_are_folded_into_image_shape(tmp_path, digits_data):
    calibration = tmp_path / "calibration.csv"
    flat = digits_data.x_train[:100].reshape(100, 64)
    header = ",".join(f"px{i}" for i in range(64))
    np.savetxt(calibration, flat, delimiter=",", header=header, comments="")
    out = tmp_path / "digits_int8.onnx"
    report = quantize_onnx(
        model_path("digits_cnn_float.onnx"),
        out,
        mode="static",
        calibration=calibration,
        max_accuracy_drop=0.05,
    )
    assert report.metric == "disagreement"  # no labels: agreement with the float model
    assert report.accuracy_drop == pytest.approx(1.0 - report.agreement)
    assert out.is_file()


def test_cli_prints_the_table_and_writes_the_json_report(tmp_path, wine_files, capsys):
    out = tmp_path / "wine_int8.onnx"
    report_json = tmp_path / "report.json"
    code = main(
        [
            "model",
            "quantize",
            str(model_path("wine_float.onnx")),
            "--mode",
            "dynamic",
            "--eval",
            str(wine_files["eval"]),
            "--labels",
            str(wine_files["labels"]),
            "--out",
            str(out),
            "--report-json",
            str(report_json),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "latency p50 (ms, batch 1)" in printed
    assert "accepted" in printed
    report = json.loads(report_json.read_text())
    assert report["accepted"] is True
    assert report["baseline"]["accuracy"] == pytest.approx(1.0)
    assert out.is_file()


def test_cli_refuses_a_model_beyond_the_allowed_drop_and_writes_nothing(
    tmp_path, wine_files, capsys
):
    out = tmp_path / "wine_int8.onnx"
    code = main(
        [
            "model",
            "quantize",
            str(model_path("wine_float.onnx")),
            "--mode",
            "static",
            "--calibration",
            str(wine_files["calibration"]),
            "--eval",
            str(wine_files["eval"]),
            "--labels",
            str(wine_files["labels"]),
            "--max-accuracy-drop",
            "-0.5",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code != 0
    assert "exceeds the allowed -0.5000" in captured.err
    assert "REFUSED" in captured.out
    assert list(tmp_path.glob("wine_int8.onnx*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "calibration.npy",
        "eval.npy",
        "labels.npy",
    ]


def test_calibration_that_ruins_static_ranges_is_refused(tmp_path, digits_data):
    """Calibrating on pixels a thousand times too bright leaves real pixels one bucket wide."""
    calibration, eval_x, labels = (
        tmp_path / "bad.npy",
        tmp_path / "eval.npy",
        tmp_path / "labels.npy",
    )
    np.save(calibration, digits_data.x_train[:100] * 1000.0)
    np.save(eval_x, digits_data.x_test)
    np.save(labels, digits_data.y_test)
    out = tmp_path / "digits_int8.onnx"
    with pytest.raises(AccuracyDropTooLarge) as refused:
        quantize_onnx(
            model_path("digits_cnn_float.onnx"),
            out,
            mode="static",
            calibration=calibration,
            eval_data=eval_x,
            labels=labels,
            max_accuracy_drop=MAX_DROP,
        )
    assert refused.value.report.accuracy_drop > 0.2
    assert not refused.value.report.accepted
    assert not out.exists()
    assert list(tmp_path.glob(".digits_int8.onnx*")) == []


def test_calibration_shape_mismatch_is_a_clear_error(tmp_path):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.zeros((10, 5), dtype=np.float32))
    out = tmp_path / "wine_int8.onnx"
    with pytest.raises(QuantizeError, match=r"shape \[5\], the model expects \[13\]"):
        quantize_onnx(model_path("wine_float.onnx"), out, mode="static", calibration=calibration)
    assert list(tmp_path.iterdir()) == [calibration]


def test_unreadable_model_is_a_clear_error_via_the_cli(tmp_path, wine_files, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x01garbage")
    out = tmp_path / "out.onnx"
    code = main(
        [
            "model",
            "quantize",
            str(broken),
            "--mode",
            "dynamic",
            "--eval",
            str(wine_files["eval"]),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "broken.onnx" in capsys.readouterr().err
    assert not out.exists()


def test_static_mode_without_calibration_is_an_error(tmp_path, wine_files):
    with pytest.raises(QuantizeError, match="needs --calibration"):
        quantize_onnx(
            model_path("wine_float.onnx"),
            tmp_path / "o.onnx",
            mode="static",
            eval_data=wine_files["eval"],
        )


def test_sklearn_pipeline_without_quantizable_operators_is_explained(
    tmp_path, wine_model, wine_files
):
    """The scikit-learn wine fixture is all ai.onnx.ml operators: say so, write nothing."""
    out = tmp_path / "fixture_int8.onnx"
    with pytest.raises(QuantizeError, match=r"nothing to quantize.*ai\.onnx\.ml:LinearClassifier"):
        quantize_onnx(wine_model.path, out, mode="dynamic", eval_data=wine_files["eval"])
    assert not out.exists()
