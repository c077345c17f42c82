"""ONNX Runtime backend.

Invariants:

- `predict` calls the session's compiled ``run`` (``InferenceSession._sess.run``) when
  the installed onnxruntime has it, resolved once at load. The public
  ``InferenceSession.run`` adds, per call, Python checks that do not apply here: that
  the feed names every input (`predict` checks that itself, more cheaply, and names
  the missing input), that `OrtValue` inputs belong to this session (we feed numpy
  arrays), WebGPU graph capture and execution-provider fallback (we run on the CPU
  provider only). The compiled run still checks names, dtypes and shapes. Without
  ``_sess`` (a future onnxruntime), the public ``run`` is used.
- Outputs that the model declares as tensors come back as fresh ndarrays and are passed
  on as they are; non-tensor outputs (sequences, maps) are converted with `np.asarray`.
  A model with one tensor output gets its output dict built as a literal:
  ``dict(zip(..., strict=True))`` cost a few hundred nanoseconds, 3-5% of a tabular
  model's run at batch 1.
- `predict_array` is `predict` for a model with one input, taking that input's array:
  the model host's fast path, without the feed dict's name check (the feed is built
  here, under the one name).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.shared.runtime.base import InferenceError, RuntimeLoadError, RuntimeOptions, Tensors
from edgefleet.shared.tensors import TensorSpec

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


Run = Callable[[list[str], Tensors, "ort.RunOptions | None"], list[Any]]


def _compiled_run(session: ort.InferenceSession) -> Run:
    """The session's compiled ``run``, or its public one (see the module invariants)."""
    compiled = getattr(session, "_sess", None)
    run = getattr(compiled, "run", None)
    if callable(run):
        return cast(Run, run)
    return cast(Run, session.run)


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
        self._input_names = tuple(s.name for s in self._inputs)
        self._tensor_outputs = all(
            a.type.startswith("tensor(") for a in self._session.get_outputs()
        )
        self._only_output = (
            self._output_names[0] if self._tensor_outputs and len(self._output_names) == 1 else None
        )
        self._run: Run | None = _compiled_run(self._session)
        self.predict_array: Callable[[NDArray[Any]], Tensors] | None = self._array_path()

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    def predict(self, inputs: Tensors) -> Tensors:
        """Run the model; raises `InferenceError` on bad inputs or a runtime failure."""
        run = self._run  # one read: close() may drop it while we run
        if run is None:
            raise InferenceError(f"{self._path.name}: the runtime is closed")
        for name in self._input_names:
            if name not in inputs:
                raise InferenceError(
                    f"{self._path.name}: input {name!r} is missing; the model takes "
                    f"{sorted(self._input_names)}, got {sorted(inputs)}"
                )
        try:
            results = run(self._output_names, inputs, None)
        except Exception as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        only = self._only_output
        if only is not None:
            return {only: results[0]}
        return self._outputs_of(results)

    def _outputs_of(self, results: list[Any]) -> Tensors:
        if self._tensor_outputs:
            return dict(zip(self._output_names, results, strict=True))
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, results, strict=True)
        }

    def _array_path(self) -> Callable[[NDArray[Any]], Tensors] | None:
        """`predict_array` for a one-input model, else None (see the module invariants)."""
        if len(self._input_names) != 1:
            return None
        name, names, only, runtime = (
            self._input_names[0],
            self._output_names,
            self._only_output,
            self,
        )

        def predict_array(value: NDArray[Any]) -> Tensors:
            run = runtime._run  # one read: close() may drop it while we run
            if run is None:
                raise InferenceError(f"{runtime._path.name}: the runtime is closed")
            try:
                results = run(names, {name: value}, None)
            except Exception as e:
                raise InferenceError(f"onnxruntime: {e}") from e
            if only is not None:
                return {only: results[0]}
            return runtime._outputs_of(results)

        return predict_array

    def close(self) -> None:
        # Sessions free their memory when collected; dropping the reference is enough, and
        # a request already running keeps its own reference until it returns.
        self._session = None
        self._run = None
