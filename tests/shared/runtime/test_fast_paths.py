"""The runtimes' per-call shortcuts give the same answers and the same errors as before.

ONNX calls the session's compiled run after its own input-name check; TFLite passes
arrays that already fit straight to the interpreter. Everything that does not fit must
still be converted, or rejected with an error naming the tensor.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.shared.runtime import InferenceError, load_runtime
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import Split

FILES = ["wine_float.onnx", "wine_float.tflite", "wine_int8.tflite"]


def _strided(rows: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous float32 view (every other column of a wider array)."""
    wide = np.zeros((rows.shape[0], rows.shape[1] * 2), dtype=np.float32)
    wide[:, ::2] = rows
    view = wide[:, ::2]
    assert not view.flags.c_contiguous
    return view


@pytest.mark.parametrize("file", FILES)
def test_a_non_contiguous_input_gives_the_contiguous_answer(file: str, wine_data: Split) -> None:
    runtime = load_runtime(model_path(file))
    rows = np.ascontiguousarray(wine_data.x_test[:4], dtype=np.float32)
    expected = runtime.predict({"input": rows})["probabilities"]
    got = runtime.predict({"input": _strided(rows)})["probabilities"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("file", ["wine_float.tflite", "wine_int8.tflite"])
def test_tflite_converts_float64_and_nested_lists(file: str, wine_data: Split) -> None:
    runtime = load_runtime(model_path(file))
    rows = np.ascontiguousarray(wine_data.x_test[:4], dtype=np.float32)
    expected = runtime.predict({"input": rows})["probabilities"]
    for variant in (rows.astype(np.float64), rows.tolist()):
        got = runtime.predict({"input": variant})["probabilities"]  # type: ignore[dict-item]
        np.testing.assert_allclose(
            np.asarray(got, np.float64), np.asarray(expected, np.float64), atol=1e-6
        )


def test_onnx_rejects_a_float64_array_naming_both_types(wine_data: Split) -> None:
    """The ONNX runtime converts nothing (the model host does): a clear error, not a crash."""
    runtime = load_runtime(model_path("wine_float.onnx"))
    with pytest.raises(InferenceError, match=r"double.*float"):
        runtime.predict({"input": wine_data.x_test[:1].astype(np.float64)})


@pytest.mark.parametrize("file", FILES)
def test_outputs_are_fresh_arrays_that_a_later_call_does_not_overwrite(
    file: str, wine_data: Split
) -> None:
    runtime = load_runtime(model_path(file))
    first = runtime.predict({"input": wine_data.x_test[:1]})["probabilities"]
    kept = first.copy()
    runtime.predict({"input": wine_data.x_test[5:6]})
    np.testing.assert_array_equal(first, kept)
    assert isinstance(first, np.ndarray)


@pytest.mark.parametrize("file", FILES)
def test_a_missing_input_is_an_inference_error_naming_the_expected_one(file: str) -> None:
    runtime = load_runtime(model_path(file))
    with pytest.raises(InferenceError, match="input"):
        runtime.predict({})


@pytest.mark.parametrize("file", FILES)
def test_an_extra_input_is_rejected(file: str) -> None:
    runtime = load_runtime(model_path(file))
    rows = np.zeros((1, 13), dtype=np.float32)
    with pytest.raises(InferenceError, match="extra"):
        runtime.predict({"input": rows, "extra": rows})


@pytest.mark.parametrize(
    "shape", [(13,), (1, 12), (1, 13, 1)], ids=["no batch axis", "narrow", "extra axis"]
)
@pytest.mark.parametrize("file", FILES)
def test_a_float32_array_of_the_wrong_shape_is_rejected_naming_the_shape(
    file: str, shape: tuple[int, ...]
) -> None:
    runtime = load_runtime(model_path(file))
    with pytest.raises(InferenceError, match=r"(?i)shape|dimension|rank"):
        runtime.predict({"input": np.zeros(shape, dtype=np.float32)})


@pytest.mark.parametrize("file", ["wine_float.tflite", "wine_int8.tflite"])
def test_tflite_rejects_strings_on_both_paths(file: str) -> None:
    runtime = load_runtime(model_path(file))
    with pytest.raises(InferenceError, match="'input'"):
        runtime.predict({"input": np.full((1, 13), "a")})


def test_quantized_input_fast_path_matches_the_converted_path(digits_data: Split) -> None:
    """float32 images go through quantize directly; float64 ones are converted first."""
    runtime = load_runtime(model_path("digits_cnn_int8.tflite"))
    images = np.ascontiguousarray(digits_data.x_test[:8], dtype=np.float32)
    fast = runtime.predict({"input": images})["probabilities"]
    converted = runtime.predict({"input": images.astype(np.float64)})["probabilities"]
    np.testing.assert_array_equal(fast, converted)
    assert fast.dtype == np.float32


@pytest.mark.parametrize("file", ["wine_float.tflite", "wine_int8.tflite"])
def test_tflite_checks_a_new_shape_before_resizing_to_it(file: str, wine_data: Split) -> None:
    """Arrays shaped like the last call skip the shape check; any other shape gets it."""
    runtime = load_runtime(model_path(file))
    rows = np.ascontiguousarray(wine_data.x_test[:2], dtype=np.float32)
    first = runtime.predict({"input": rows[:1]})["probabilities"]
    for bad in ((1, 12), (2, 14)):
        with pytest.raises(InferenceError, match=r"expected shape \[None, 13\]"):
            runtime.predict({"input": np.zeros(bad, dtype=np.float32)})
    both = runtime.predict({"input": rows})["probabilities"]
    again = runtime.predict({"input": rows[:1]})["probabilities"]
    np.testing.assert_array_equal(both[:1], first)
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("file", [*FILES, "digits_cnn_int8.tflite", "digits_cnn_float.onnx"])
def test_predict_array_answers_and_fails_as_predict_does(
    file: str, wine_data: Split, digits_data: Split
) -> None:
    """The model host's one-input path: same outputs, same errors, at any batch size."""
    runtime = load_runtime(model_path(file))
    predict_array = getattr(runtime, "predict_array", None)
    assert predict_array is not None
    data = digits_data if file.startswith("digits") else wine_data
    rows = np.ascontiguousarray(data.x_test[:3], dtype=np.float32)
    for batch in (1, 3, 1, 2):
        expected = runtime.predict({"input": rows[:batch]})
        got = predict_array(rows[:batch])
        assert got.keys() == expected.keys()
        for name in got:
            np.testing.assert_array_equal(got[name], expected[name])
    tail = rows.shape[1:]
    for bad in ((1, *tail[:-1], tail[-1] + 1), (2, *tail, 1), tail):
        with pytest.raises(InferenceError):
            predict_array(np.zeros(bad, dtype=np.float32))
    # After the failures, the model still answers the last good shape and a new one.
    np.testing.assert_array_equal(
        predict_array(rows[:2])["probabilities"],
        runtime.predict({"input": rows[:2]})["probabilities"],
    )
    runtime.close()
    with pytest.raises(InferenceError, match="closed"):
        predict_array(rows[:1])
