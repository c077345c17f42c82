"""The ONNX backend through `load_runtime`, on the wine fixture and the committed models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from edgefleet.shared.runtime import (
    InferenceError,
    ModelRuntime,
    RuntimeLoadError,
    RuntimeOptions,
    load_runtime,
)
from edgefleet.simulators.tflite_models.catalog import load_manifest, model_path


def _probs(runtime: ModelRuntime, x: Any) -> NDArray[np.float64]:
    """The model's class probabilities as float64, for comparisons."""
    return np.asarray(runtime.predict({"input": x})["probabilities"], dtype=np.float64)


def test_wine_fixture_outputs_labels_and_probabilities(wine_model):
    runtime = load_runtime(wine_model.path)
    assert runtime.runtime == "onnx"
    assert [(s.name, s.dtype) for s in runtime.inputs] == [("input", "float32")]
    outputs = runtime.predict({"input": wine_model.x_test})
    assert outputs["label"].dtype == np.int64
    assert outputs["label"].shape == (len(wine_model.x_test),)
    assert outputs["probabilities"].dtype == np.float32
    assert outputs["probabilities"].shape == (len(wine_model.x_test), 3)
    accuracy = float(np.mean(outputs["label"] == wine_model.y_test))
    assert accuracy == pytest.approx(wine_model.accuracy)


@pytest.mark.parametrize("task", ["wine", "digits_cnn"])
def test_onnx_copy_matches_the_tflite_float_model(task, request):
    """Same weights, two runtimes: the generated ONNX graph is a faithful copy."""
    data = request.getfixturevalue("wine_data" if task == "wine" else "digits_data")
    onnx_rt = load_runtime(model_path(f"{task}_float.onnx"))
    tflite_rt = load_runtime(model_path(f"{task}_float.tflite"))
    onnx_p = _probs(onnx_rt, data.x_test)
    tflite_p = _probs(tflite_rt, data.x_test)
    np.testing.assert_allclose(onnx_p, tflite_p, atol=1e-4)
    entry = load_manifest().entry(f"{task}_float.onnx")
    accuracy = float(np.mean(onnx_p.argmax(axis=1) == data.y_test))
    assert abs(accuracy - entry.heldout_accuracy) <= 2 / entry.heldout_rows


@pytest.mark.parametrize("batch", [1, 8])
def test_batch_sizes_one_and_eight(batch, wine_model):
    runtime = load_runtime(wine_model.path)
    x = wine_model.x_test[:batch]
    probabilities = _probs(runtime, x)
    assert probabilities.shape == (batch, 3)
    singles = np.concatenate([_probs(runtime, x[i : i + 1]) for i in range(batch)])
    np.testing.assert_allclose(probabilities, singles, atol=1e-6)


def test_wrong_input_name_is_an_inference_error_naming_it(wine_model):
    runtime = load_runtime(wine_model.path)
    with pytest.raises(InferenceError, match="features"):
        runtime.predict({"features": wine_model.x_test[:1]})


def test_wrong_input_shape_is_an_inference_error(wine_model):
    runtime = load_runtime(wine_model.path)
    with pytest.raises(InferenceError, match=r"(?i)dimension"):
        runtime.predict({"input": np.zeros((2, 5), dtype=np.float32)})


def test_corrupt_file_is_a_load_error(tmp_path: Path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(model_path("wine_float.onnx").read_bytes()[:300])
    with pytest.raises(RuntimeLoadError, match=r"broken\.onnx"):
        load_runtime(path)


def test_missing_file_is_a_load_error(tmp_path: Path):
    with pytest.raises(RuntimeLoadError, match="not found"):
        load_runtime(tmp_path / "absent.onnx")


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_option_is_honoured(threads, digits_data):
    options = RuntimeOptions(intra_op_threads=threads, inter_op_threads=threads)
    runtime = load_runtime(model_path("digits_cnn_float.onnx"), options=options)
    reference = load_runtime(model_path("digits_cnn_float.onnx"))
    x = digits_data.x_test[:32]
    np.testing.assert_allclose(
        _probs(runtime, x),
        _probs(reference, x),
        atol=1e-5,
    )
    # Equal outputs alone would pass with the option ignored: read what the session
    # was actually built with (ONNX Runtime's default, 0, means "one per core").
    applied = runtime._session.get_session_options()
    assert (applied.intra_op_num_threads, applied.inter_op_num_threads) == (threads, threads)
