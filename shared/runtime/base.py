"""The runtime interface every model backend implements: errors, options, `ModelRuntime`.

The backends (`onnx`, `tflite`) import this module; the factory that picks one is
`edgefleet.shared.runtime.loader`, so no backend imports the module that imports it.

A runtime is loaded once per model version and then called from many threads (the
inference API serves requests concurrently), so `predict` must be thread-safe; both
ONNX Runtime sessions and our TFLite wrapper are.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.shared.tensors import TensorSpec

Tensors = dict[str, NDArray[np.generic]]


class RuntimeLoadError(Exception):
    """A model file that the runtime cannot load (corrupt, wrong format, unsupported op)."""


class InferenceError(Exception):
    """Inputs the model cannot run on (wrong name, dtype or shape), or a runtime failure."""


class RuntimeOptions(BaseModel):
    """Knobs that matter on small CPUs. Defaults suit a 4-core Raspberry Pi class device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intra_op_threads: int = Field(
        default=1, ge=0, description="threads inside one operator; 0 = runtime decides"
    )
    inter_op_threads: int = Field(default=1, ge=0, description="ONNX parallel mode only")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"


class ModelRuntime(Protocol):
    """A loaded model, ready to run."""

    runtime: str

    @property
    def inputs(self) -> list[TensorSpec]: ...

    @property
    def outputs(self) -> list[TensorSpec]: ...

    def predict(self, inputs: Tensors) -> Tensors:
        """Run the model; raises `InferenceError` on bad inputs or a runtime failure."""
        ...

    def close(self) -> None: ...
