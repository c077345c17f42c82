"""ONNX Runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.runtime.base import InferenceError, RuntimeLoadError, RuntimeOptions, Tensors
from shared.tensors import TensorSpec

_OPT_LEVEL = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

# onnxruntime reports element types as "tensor(float)"; manifests use numpy names.
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    shape = [d if isinstance(d, int) else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=_ORT_TO_NUMPY.get(arg.type, arg.type), shape=shape)


class OnnxRuntime:
    """A model loaded in an ONNX Runtime CPU session. `predict` is thread-safe."""

    runtime = "onnx"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self._path = path
        self._session: ort.InferenceSession | None = None
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = _OPT_LEVEL[options.graph_optimization]
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL
            if options.execution_mode == "parallel"
            else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        so.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own unrelated exception types
            raise RuntimeLoadError(f"{path}: onnxruntime cannot load it: {e}") from e
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def predict(self, inputs: Tensors) -> Tensors:
        session = self._session  # one read: close() may drop it while we run
        if session is None:
            raise InferenceError(f"{self._path.name}: the runtime is closed")
        try:
            results = session.run(self._output_names, inputs)
        except Exception as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)
        }

    def close(self) -> None:
        # Sessions free their memory when collected; dropping the reference is enough, and
        # a request already running keeps its own reference until it returns.
        self._session = None
