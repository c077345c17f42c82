"""A closed runtime answers with InferenceError, never an AttributeError.

The agent closes a replaced model a few seconds after a swap; a request that still holds
the old model must get an error the inference API and probation know how to count.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.shared.runtime import InferenceError, load_runtime
from edgefleet.shared.runtime.base import Tensors
from edgefleet.simulators.tflite_models.catalog import model_path


@pytest.mark.parametrize("file", ["wine_float.onnx", "wine_float.tflite", "wine_int8.tflite"])
def test_predict_after_close_is_a_clear_inference_error(file: str) -> None:
    runtime = load_runtime(model_path(file))
    inputs: Tensors = {runtime.inputs[0].name: np.zeros((1, 13), dtype=np.float32)}
    assert runtime.predict(inputs)
    runtime.close()
    with pytest.raises(InferenceError, match="closed"):
        runtime.predict(inputs)
