"""The runtime interface every model backend implements, and the factory that picks one.

A runtime is loaded once per model version and then called from many threads (the
inference API serves requests concurrently), so `predict` must be thread-safe; both
ONNX Runtime sessions and our TFLite wrapper are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from edgefleet.shared.tensors import TensorSpec

Tensors = dict[str, NDArray[np.generic]]

RUNTIME_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}


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


def runtime_for_path(path: Path) -> str:
    """The runtime name for a model file, from its suffix; raises `RuntimeLoadError`."""
    try:
        return RUNTIME_BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise RuntimeLoadError(
            f"{path}: unknown model format {path.suffix!r}; expected one of "
            f"{sorted(RUNTIME_BY_SUFFIX)}"
        ) from None


def load_runtime(
    path: Path, *, runtime: str | None = None, options: RuntimeOptions | None = None
) -> ModelRuntime:
    """Load ``path`` with the named runtime (or the one its suffix implies).

    Raises `RuntimeLoadError` if the file is missing or the runtime rejects it.
    """
    options = options or RuntimeOptions()
    name = runtime or runtime_for_path(path)
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: model file not found")
    if name == "onnx":
        from edgefleet.shared.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, options)
    if name == "tflite":
        try:
            from edgefleet.shared.runtime.tflite import TfliteRuntime
        except ImportError as e:
            raise RuntimeLoadError(
                f"{path}: the TFLite runtime is not installed (pip install 'edgefleet[tflite]')"
            ) from e
        backend: ModelRuntime = TfliteRuntime(path, options)
        return backend
    raise RuntimeLoadError(f"{path}: unknown runtime {name!r}")
