"""The TFLite backend on the committed float and int8 models, through `load_runtime`."""

from __future__ import annotations

import threading
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
from edgefleet.shared.runtime.tflite import TfliteRuntime
from edgefleet.simulators.tflite_models.catalog import load_manifest, model_path, sha256_of


def _probs(runtime: ModelRuntime, x: Any) -> NDArray[np.float64]:
    """The model's class probabilities as float64, for comparisons."""
    return np.asarray(runtime.predict({"input": x})["probabilities"], dtype=np.float64)


TFLITE_FILES = [
    "wine_float.tflite",
    "wine_int8.tflite",
    "digits_cnn_float.tflite",
    "digits_cnn_int8.tflite",
]
CLASSES = {"wine": 3, "digits": 10}
# int8 keeps the predicted class except for rows whose top two scores are within a
# quantization step of each other; on these easy tasks that is well under 1 row in 20
# (measured: 100 % on wine, > 99 % on digits), so 95 % still catches a broken scale or
# zero point, which sends agreement to chance level (33 % / 10 %).
MIN_INT8_AGREEMENT = 0.95


def _data(request: pytest.FixtureRequest, file: str):
    return request.getfixturevalue("wine_data" if file.startswith("wine") else "digits_data")


def test_committed_files_match_the_manifest():
    manifest = load_manifest()
    for entry in manifest.models:
        assert sha256_of(model_path(entry.file)) == entry.sha256, entry.file
        assert entry.size_bytes < 64 * 1024


@pytest.mark.parametrize("file", TFLITE_FILES)
def test_model_exposes_float_tensors_and_reaches_its_recorded_accuracy(file, request):
    entry = load_manifest().entry(file)
    data = _data(request, file)
    runtime = load_runtime(model_path(file))
    assert runtime.runtime == "tflite"
    assert [(s.name, s.dtype) for s in runtime.inputs] == [("input", "float32")]
    assert [(s.name, s.dtype) for s in runtime.outputs] == [("probabilities", "float32")]
    assert runtime.inputs[0].shape == [None, *data.x_test.shape[1:]]

    raw_output = runtime.predict({"input": data.x_test})["probabilities"]
    assert raw_output.dtype == np.float32
    probabilities = np.asarray(raw_output, dtype=np.float64)

    assert probabilities.shape == (len(data.x_test), CLASSES[entry.task])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)
    accuracy = float(np.mean(probabilities.argmax(axis=1) == data.y_test))
    # Another CPU may round a near-tie differently: allow two rows either way.
    assert abs(accuracy - entry.heldout_accuracy) <= 2 / entry.heldout_rows
    assert accuracy > 0.9


@pytest.mark.parametrize("task", ["wine", "digits_cnn"])
def test_int8_model_agrees_with_float_model_on_heldout_data(task, request):
    data = _data(request, task)
    float_rt = load_runtime(model_path(f"{task}_float.tflite"))
    int8_rt = load_runtime(model_path(f"{task}_int8.tflite"))
    float_p = _probs(float_rt, data.x_test)
    int8_p = _probs(int8_rt, data.x_test)
    agreement = float(np.mean(float_p.argmax(axis=1) == int8_p.argmax(axis=1)))
    assert agreement >= MIN_INT8_AGREEMENT
    # Dequantized probabilities stay close to the float ones, not just the argmax.
    assert float(np.mean(np.abs(float_p - int8_p))) < 0.02


def test_full_integer_model_quantizes_inputs_and_dequantizes_outputs(digits_data):
    path = model_path("digits_cnn_int8.tflite")
    raw = TfliteRuntime(path, RuntimeOptions(), raw=True)
    floats = load_runtime(path)
    assert raw.inputs[0].dtype == "int8"
    assert raw.outputs[0].dtype == "int8"
    q_in = raw.quantization["input"]
    q_out = raw.quantization["probabilities"]
    x = digits_data.x_test[:16]
    stored_in = np.clip(np.rint(x / np.float32(q_in.scale)) + q_in.zero_point, -128, 127)
    stored_in = stored_in.astype(np.int8)

    stored_out = raw.predict({"input": stored_in})["probabilities"]
    real_out = floats.predict({"input": x})["probabilities"]

    assert stored_out.dtype == np.int8
    expected = (stored_out.astype(np.float32) - np.float32(q_out.zero_point)) * np.float32(
        q_out.scale
    )
    np.testing.assert_array_equal(np.asarray(real_out, dtype=np.float32), expected)


def test_out_of_range_floats_are_clipped_not_wrapped(digits_data):
    runtime = load_runtime(model_path("digits_cnn_int8.tflite"))
    x = digits_data.x_test[:4]
    saturated = _probs(runtime, np.clip(x * 1000.0, 0, 1e6))
    # Wrapping int8 would make huge pixels negative; clipping keeps every pixel at the top.
    at_max = _probs(runtime, np.where(x > 0, 1e6, 0.0))
    np.testing.assert_array_equal(saturated, at_max)


@pytest.mark.parametrize("file", TFLITE_FILES)
def test_batch_sizes_one_and_eight_give_the_same_rows(file, request):
    data = _data(request, file)
    runtime = load_runtime(model_path(file))
    x = data.x_test[:8]
    singles = np.concatenate([_probs(runtime, x[i : i + 1]) for i in range(8)])
    batch = _probs(runtime, x)
    again = _probs(runtime, x[:1])
    assert batch.shape[0] == 8
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    np.testing.assert_allclose(again, singles[:1], atol=1e-5)


def test_wrong_input_name_is_rejected_with_the_expected_names(wine_data):
    runtime = load_runtime(model_path("wine_int8.tflite"))
    with pytest.raises(
        InferenceError, match=r"takes inputs \['input'\].*unexpected \['features'\]"
    ):
        runtime.predict({"features": wine_data.x_test[:1]})


@pytest.mark.parametrize("file", ["wine_float.tflite", "digits_cnn_int8.tflite"])
def test_wrong_input_shape_is_rejected_before_the_interpreter_runs(file, request):
    data = _data(request, file)
    runtime = load_runtime(model_path(file))
    bad = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(
        InferenceError, match=r"input 'input': expected shape \[None, .*got \[2, 5\]"
    ):
        runtime.predict({"input": bad})
    # The runtime is still usable afterwards.
    assert _probs(runtime, data.x_test[:1]).shape[0] == 1


def test_non_numeric_input_is_an_inference_error():
    runtime = load_runtime(model_path("wine_float.tflite"))
    with pytest.raises(InferenceError, match="input 'input': expected float32"):
        runtime.predict({"input": np.array([["a"] * 13])})


@pytest.mark.parametrize(
    "content",
    [b"", b"not a flatbuffer at all" * 10, "truncated"],
    ids=["empty", "garbage", "truncated"],
)
def test_corrupt_file_is_a_load_error(tmp_path: Path, content):
    if content == "truncated":
        content = model_path("wine_float.tflite").read_bytes()[:600]
    path = tmp_path / "broken.tflite"
    path.write_bytes(content)
    with pytest.raises(RuntimeLoadError, match=r"broken\.tflite"):
        load_runtime(path)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_option_is_honoured(threads, digits_data, threads_started_by):
    options = RuntimeOptions(intra_op_threads=threads)
    # LiteRT has no getter for num_threads, but its pool is observable: n threads means
    # the caller plus n - 1 workers, started when the interpreter is built. Ignoring the
    # option leaves LiteRT's own default, which cannot equal all of 1, 2 and 3.
    runtime, started = threads_started_by(
        lambda: load_runtime(model_path("digits_cnn_float.tflite"), options=options)
    )
    assert started == threads - 1
    reference = load_runtime(model_path("digits_cnn_float.tflite"))
    x = digits_data.x_test[:32]
    np.testing.assert_allclose(
        _probs(runtime, x),
        _probs(reference, x),
        atol=1e-5,
    )


@pytest.mark.parametrize("file", ["digits_cnn_float.tflite", "digits_cnn_int8.tflite"])
def test_concurrent_predicts_from_eight_threads_get_their_own_results(file, digits_data):
    runtime = load_runtime(model_path(file))
    x = digits_data.x_test[:64]
    expected = _probs(runtime, x)
    failures: list[str] = []
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for round_ in range(20):
            # Different batch sizes per thread force resizes to interleave.
            size = 1 + (k + round_) % 8
            rows = slice(k * 8, k * 8 + size)
            try:
                got = _probs(runtime, x[rows])
            except Exception as e:  # a race shows up as an interpreter error
                failures.append(f"thread {k} round {round_}: {e!r}")
                continue
            if got.shape != expected[rows].shape or not np.allclose(got, expected[rows], atol=1e-5):
                failures.append(f"thread {k} round {round_}: wrong result")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
