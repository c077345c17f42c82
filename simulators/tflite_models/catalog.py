"""The committed model files and ``manifest.json``, which describes each of them.

The manifest is written by ``generate.py``; tests read it to know the tensor names,
quantization and the accuracy each file reached on held-out data when it was made.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.shared.tensors import TensorSpec

MODEL_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = MODEL_DIR / "manifest.json"


class QuantParams(BaseModel):
    """Affine quantization of one tensor: ``real = (q - zero_point) * scale``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float
    zero_point: int


class ModelTensor(TensorSpec):
    """A tensor as stored in the file, with its quantization if it is an integer tensor."""

    quantization: QuantParams | None = None


class ModelFile(BaseModel):
    """One generated model file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: str
    task: Literal["wine", "digits"]
    format: Literal["tflite", "onnx"]
    precision: Literal["float32", "int8"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=1)
    inputs: list[ModelTensor]
    outputs: list[ModelTensor]
    heldout_accuracy: float = Field(ge=0.0, le=1.0)
    heldout_rows: int = Field(ge=1)
    notes: str = ""


class Manifest(BaseModel):
    """Everything ``generate.py`` produced, and with which library versions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    generator: str
    tensorflow: str
    seed: int
    models: list[ModelFile]

    def entry(self, file: str) -> ModelFile:
        """The entry for ``file``; raises `KeyError` naming the files that exist."""
        for model in self.models:
            if model.file == file:
                return model
        raise KeyError(f"{file!r} is not in the manifest; it has {[m.file for m in self.models]}")


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_manifest(path: Path = MANIFEST_PATH) -> Manifest:
    """Read and validate the manifest; raises `OSError` or `pydantic.ValidationError`."""
    return Manifest.model_validate_json(path.read_text(encoding="utf-8"))


def model_path(file: str) -> Path:
    """Absolute path of a committed model file."""
    return MODEL_DIR / file
