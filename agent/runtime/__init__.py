"""Model runtimes behind one interface: ONNX Runtime and TFLite (LiteRT)."""

from agent.runtime.base import (
    InferenceError,
    ModelRuntime,
    RuntimeLoadError,
    RuntimeOptions,
    load_runtime,
    runtime_for_path,
)

__all__ = [
    "InferenceError",
    "ModelRuntime",
    "RuntimeLoadError",
    "RuntimeOptions",
    "load_runtime",
    "runtime_for_path",
]
