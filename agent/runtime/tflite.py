"""TFLite backend on LiteRT (`ai-edge-litert`), or the older `tflite-runtime` wheel.

A TFLite interpreter holds its tensors in place and is not thread-safe, so `predict`
serialises calls with a lock; on the small CPUs we target one interpreter with
``intra_op_threads`` threads is already the fastest arrangement.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime.base import InferenceError, RuntimeLoadError, RuntimeOptions, Tensors
from shared.tensors import TensorSpec

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on which wheel the device has
    from tflite_runtime.interpreter import Interpreter


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=[int(d) if d >= 0 else None for d in dims],
    )


class TfliteRuntime:
    """A `.tflite` model in a LiteRT interpreter."""

    runtime = "tflite"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        threads = options.intra_op_threads or None
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except Exception as e:  # LiteRT raises ValueError/RuntimeError for bad files
            raise RuntimeLoadError(f"{path}: TFLite cannot load it: {e}") from e
        self._lock = threading.Lock()
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self._inputs = [_spec(d) for d in self._input_details]
        self._outputs = [_spec(d) for d in self._output_details]
        self._current_shapes = {d["index"]: tuple(d["shape"]) for d in self._input_details}

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def predict(self, inputs: Tensors) -> Tensors:
        missing = [d["name"] for d in self._input_details if d["name"] not in inputs]
        if missing:
            raise InferenceError(f"missing inputs {missing}; the model takes {self._names()}")
        with self._lock:
            try:
                for detail in self._input_details:
                    value = np.asarray(inputs[detail["name"]], dtype=detail["dtype"])
                    if self._current_shapes[detail["index"]] != value.shape:
                        # A new batch size: resize once, then reuse for same-sized calls.
                        self._interpreter.resize_tensor_input(detail["index"], value.shape)
                        self._interpreter.allocate_tensors()
                        self._current_shapes[detail["index"]] = value.shape
                    self._interpreter.set_tensor(detail["index"], value)
                self._interpreter.invoke()
                return {
                    str(d["name"]): np.array(self._interpreter.get_tensor(d["index"]))
                    for d in self._output_details
                }
            except (ValueError, RuntimeError) as e:
                raise InferenceError(f"tflite: {e}") from e

    def _names(self) -> list[str]:
        return [str(d["name"]) for d in self._input_details]

    def close(self) -> None:
        del self._interpreter
