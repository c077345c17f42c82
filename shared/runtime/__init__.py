"""Model runtimes behind one interface: ONNX Runtime and TFLite (LiteRT).

In `shared` because packaging tools (golden outputs, quantization reports) and the agent
(serving, golden checks) must run a model the same way. The runtimes themselves are
imported lazily, so importing this package needs neither onnxruntime nor LiteRT.
"""

from edgefleet.shared.runtime.base import (
    InferenceError,
    ModelRuntime,
    RuntimeLoadError,
    RuntimeOptions,
)
from edgefleet.shared.runtime.loader import load_runtime, runtime_for_path

__all__ = [
    "InferenceError",
    "ModelRuntime",
    "RuntimeLoadError",
    "RuntimeOptions",
    "load_runtime",
    "runtime_for_path",
]
