"""Load a model file with the runtime its suffix (or the caller) names.

The backends are imported only when a model of theirs is loaded, so importing this
module needs neither onnxruntime nor LiteRT: a device may install one of them.
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.shared.runtime.base import ModelRuntime, RuntimeLoadError, RuntimeOptions

RUNTIME_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite"}


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
