"""The active model, swappable while requests run.

Invariant: `ModelHost.infer` reads the active model once, so a request runs entirely
on the model that was active when it started; `swap` replaces the reference under a
small lock and never waits for requests, so an update drops none of them. The old
runtime is returned to the caller rather than closed, because requests may still be
using it; dropping the last reference frees it when they are done.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.metrics import InferenceMetrics
from agent.runtime import InferenceError, ModelRuntime
from agent.runtime.base import Tensors
from shared.messages import ModelRef
from shared.tensors import TensorSpec


class NoModelLoadedError(Exception):
    """An inference was asked for before any model was loaded."""


class InputError(InferenceError):
    """Inputs that do not match the model: unknown or missing names, shape, dtype."""


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """A loaded runtime and which model version it is."""

    runtime: ModelRuntime
    ref: ModelRef


def check_inputs(specs: list[TensorSpec], inputs: dict[str, Any]) -> Tensors:
    """Convert ``inputs`` to arrays of the model's dtypes and check names and shapes.

    Raises `InputError` naming the input, what the model expects and what was found.
    """
    expected = {s.name: s for s in specs}
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InputError(f"unknown inputs {unknown}; the model takes {sorted(expected)}")
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InputError(f"missing inputs {missing}; the model takes {sorted(expected)}")
    tensors: Tensors = {}
    for name, spec in expected.items():
        try:
            raw = np.asarray(inputs[name])
        except ValueError as e:
            raise InputError(f"input {name!r} must be a rectangular array: {e}") from None
        want = np.dtype(spec.dtype)
        if not np.can_cast(raw.dtype, want, casting="same_kind"):
            raise InputError(f"input {name!r} must be {want.name}, found {raw.dtype.name} values")
        array = raw.astype(want, copy=False)
        if array.ndim != len(spec.shape) or any(
            dim is not None and dim != got for dim, got in zip(spec.shape, array.shape, strict=True)
        ):
            shown = ["N" if d is None else d for d in spec.shape]
            raise InputError(f"input {name!r} must have shape {shown}, found {list(array.shape)}")
        tensors[name] = array
    return tensors


class ModelHost:
    """Holds the active model; `infer` counts every call in the metrics."""

    def __init__(self, metrics: InferenceMetrics, active: ActiveModel | None = None) -> None:
        self.metrics = metrics
        self._active = active
        self._swap_lock = threading.Lock()

    @property
    def active(self) -> ActiveModel | None:
        return self._active

    def swap(self, new: ActiveModel | None) -> ActiveModel | None:
        """Make ``new`` the active model; return the previous one (not closed)."""
        with self._swap_lock:
            old, self._active = self._active, new
        return old

    def infer(self, inputs: dict[str, Any]) -> tuple[ModelRef, Tensors]:
        """Run the active model on ``inputs`` (arrays or nested lists).

        Returns the model that ran and its outputs. Raises `NoModelLoadedError`, `InputError`
        for inputs that do not fit the model (not counted as errors: the caller is at
        fault, not the model), or `InferenceError` when the runtime fails (counted).
        """
        active = self._active
        if active is None:
            raise NoModelLoadedError("no model is loaded yet")
        tensors = check_inputs(active.runtime.inputs, inputs)
        started = time.perf_counter()
        try:
            outputs = active.runtime.predict(tensors)
        except InferenceError:
            self.metrics.record_error()
            raise
        self.metrics.record(time.perf_counter() - started)
        return active.ref, outputs
