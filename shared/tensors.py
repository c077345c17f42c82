"""Tensor descriptions shared by model manifests and runtimes."""

from __future__ import annotations

from pydantic import Field

from edgefleet.shared.messages import WireModel


class TensorSpec(WireModel):
    """One model input or output: its name, element type and shape (None = any size)."""

    name: str
    dtype: str = Field(description="numpy dtype name: float32, int8, uint8, int64, ...")
    shape: list[int | None]
