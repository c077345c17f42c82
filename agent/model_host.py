"""The active model, swappable while requests run, and the inference hot path.

Invariants:
- `ModelHost.infer` reads the serving record once, so a request runs entirely on the
  model (and drift monitor) that was active when it started; `swap` replaces the record
  under a small lock and never waits for requests, so an update drops none of them. The
  old runtime is returned to the caller rather than closed, because requests may still
  be using it; dropping the last reference frees it when they are done.
- Everything that depends only on the model (input specs as numpy dtypes and fixed
  dimensions, the runtime's predict, the metrics' recorders, the drift monitor) is
  resolved once per swap into one closure (`_request_path`), not per call. The metrics
  object is fixed at construction for that reason.
- The fast path: for a model with one input of variable batch size, an ndarray of
  exactly the model's dtype (the canonical native-order dtype object) under that one
  name goes to the runtime as it is, its shape unchecked here: every runtime checks the
  rank and the fixed dimensions after the batch axis itself and raises `InferenceError`
  (the `ModelRuntime` contract), and checking here too cost 0.3-0.5 us, 3-4% of a
  tabular model's run. Only when the runtime fails are the inputs checked
  (`check_inputs`), so that a caller's bad input is still raised as `InputError` and not
  counted as a model error. Anything else (lists, other dtypes, other names, several
  inputs, a fixed batch size) takes the checked path (`check_inputs`) with its
  conversions and messages.
- On that fast path, a runtime that has ``predict_array`` (both of ours) gets the array
  itself, no dict (see the runtimes' invariants), and the latency goes straight into
  the metrics' ring (`InferenceMetrics.latency_slots`); ``metrics.observer`` is read on
  every call, since the update service sets it only while a model is on probation.
- On a swap the old model's drift monitor is handed to ``on_retired`` (which closes and
  publishes its window) after the new one serves. A request that read the old record
  just before the swap may still append to the retired monitor; those few rows are
  not in any window.
- The drift monitor keeps references to the input arrays until its timer folds them
  (well under a second): callers must not write into an array after passing it in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.drift_monitor import ArrayObserver, DriftMonitor
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.runtime import InferenceError, ModelRuntime
from edgefleet.shared.runtime.base import Tensors
from edgefleet.shared.tensors import TensorSpec

log = logging.getLogger(__name__)

_now_ns = time.perf_counter_ns


class NoModelLoadedError(Exception):
    """An inference was asked for before any model was loaded."""


class InputError(InferenceError):
    """Inputs that do not match the model: unknown or missing names, shape, dtype."""


@dataclass(frozen=True, slots=True)
class ActiveModel:
    """A loaded runtime and which model version it is."""

    runtime: ModelRuntime
    ref: ModelRef


DriftFactory = Callable[[ActiveModel], DriftMonitor | None]
"""Builds the drift monitor for a model about to serve (None: not monitored)."""

RetiredHandler = Callable[[ActiveModel, DriftMonitor], None]
"""Told about the drift monitor of a model that stopped serving."""


def check_inputs(specs: list[TensorSpec], inputs: Mapping[str, Any]) -> Tensors:
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


class InputPlan:
    """A model's input specs resolved once: numpy dtypes, ranks, fixed dimensions."""

    __slots__ = ("_count", "_fast", "check", "specs")

    def __init__(self, specs: list[TensorSpec]) -> None:
        self.specs = specs
        self._count = len(specs)
        self._fast = tuple(
            (
                spec.name,
                np.dtype(spec.dtype),
                len(spec.shape),
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if dim is not None),
            )
            for spec in specs
        )
        self.check: Callable[[Mapping[str, Any]], Tensors] = self._check_general
        only = specs[0] if len(specs) == 1 else None
        if only is not None and only.shape and only.shape[0] is None and None not in only.shape[1:]:
            # The common case, one input with a variable batch size: one comparison.
            self.check = self._single_checker(only)

    def _single_checker(self, spec: TensorSpec) -> Callable[[Mapping[str, Any]], Tensors]:
        name, dtype, ndim = spec.name, np.dtype(spec.dtype), len(spec.shape)
        tail = tuple(spec.shape[1:])
        ndarray, specs = np.ndarray, self.specs

        def check(inputs: Mapping[str, Any]) -> Tensors:
            value = inputs.get(name)
            if (
                value.__class__ is ndarray
                and value.dtype == dtype
                and value.ndim == ndim
                and value.shape[1:] == tail
                and len(inputs) == 1
            ):
                return {name: value}
            return check_inputs(specs, inputs)

        return check

    def _check_general(self, inputs: Mapping[str, Any]) -> Tensors:
        """`check_inputs`, with a pass-through for arrays that already fit; same errors."""
        if len(inputs) != self._count:
            return check_inputs(self.specs, inputs)
        tensors: Tensors = {}
        for name, dtype, ndim, fixed in self._fast:
            value = inputs.get(name)
            if value.__class__ is not np.ndarray or value.dtype != dtype or value.ndim != ndim:
                return check_inputs(self.specs, inputs)
            shape = value.shape
            for axis, dim in fixed:
                if shape[axis] != dim:
                    return check_inputs(self.specs, inputs)
            tensors[name] = value
        return tensors


class _Serving:
    """Everything `infer` needs about the active model, read with one attribute load.

    ``run`` is the whole request path for this model (check, time, predict, count,
    observe) as one closure over values resolved at swap time, so a call does no
    attribute lookups on the host, the metrics or the monitor.
    """

    __slots__ = ("drift", "model", "ref", "run")

    def __init__(
        self, model: ActiveModel, drift: DriftMonitor | None, metrics: InferenceMetrics
    ) -> None:
        self.model = model
        self.ref = model.ref
        self.drift = drift
        self.run = _request_path(model, drift, metrics)


RequestPath = Callable[[Mapping[str, Any], Sequence[str] | None], tuple[ModelRef, Tensors]]


def _input_fault(specs: list[TensorSpec], inputs: Mapping[str, Any]) -> InputError | None:
    """The `InputError` that ``inputs`` deserve, or None when they fit the model."""
    try:
        check_inputs(specs, inputs)
    except InputError as e:
        return e
    return None


def _request_path(
    model: ActiveModel, drift: DriftMonitor | None, metrics: InferenceMetrics
) -> RequestPath:
    """`ModelHost.infer` for one model and monitor, with everything resolved once."""
    ref = model.ref
    specs = list(model.runtime.inputs)
    check = InputPlan(specs).check
    predict = model.runtime.predict
    record_ns, record_error = metrics.record_ns, metrics.record_error
    now = _now_ns
    single = specs[0] if len(specs) == 1 and specs[0].shape else None
    observe: Callable[[Tensors, Tensors, Sequence[str] | None], None] | None = None
    observe_array: ArrayObserver | None = None
    if drift is not None and single is not None:
        observe_array = observe_one = drift.array_observer(single.name)
        only = single.name

        def observe_checked(
            tensors: Tensors, outputs: Tensors, request_ids: Sequence[str] | None
        ) -> None:
            # The monitor's cheaper entries on the checked path too, so that the drift
            # timer sees one kind of entry and stacks them without a loop.
            observe_one(tensors[only], outputs, request_ids)

        observe = observe_checked
    elif drift is not None:
        observe = drift.observe_batch

    def checked(
        inputs: Mapping[str, Any], request_ids: Sequence[str] | None
    ) -> tuple[ModelRef, Tensors]:
        tensors = check(inputs)
        started = now()
        try:
            outputs = predict(tensors)
        except InferenceError:
            record_error()
            raise
        record_ns(now() - started)
        if observe is not None:
            observe(tensors, outputs, request_ids)
        return ref, outputs

    if single is None or single.shape[0] is not None:
        return checked

    # One input of known rank and a variable batch size: the fast path (see the module
    # invariants). A fixed batch size is checked here: TFLite would resize to any.
    name, dtype, ndarray = single.name, np.dtype(single.dtype), np.ndarray
    predict_array: Callable[[Any], Tensors] | None = getattr(model.runtime, "predict_array", None)
    if predict_array is not None:
        return _array_path(
            single,
            predict_array,
            checked=checked,
            metrics=metrics,
            observe_array=observe_array,
            ref=ref,
        )

    def run(
        inputs: Mapping[str, Any], request_ids: Sequence[str] | None
    ) -> tuple[ModelRef, Tensors]:
        value = inputs.get(name)
        if value.__class__ is not ndarray or value.dtype is not dtype or len(inputs) != 1:
            return checked(inputs, request_ids)
        started = now()
        try:
            # The caller's dict as it is when it is one (it holds just this input).
            outputs = predict(inputs if inputs.__class__ is dict else {name: value})  # type: ignore[arg-type]
        except InferenceError:
            fault = _input_fault(specs, inputs)
            if fault is not None:
                raise fault from None
            record_error()
            raise
        record_ns(now() - started)
        if observe_array is not None:
            observe_array(value, outputs, request_ids)
        return ref, outputs

    return run


def _array_path(
    single: TensorSpec,
    predict_array: Callable[[Any], Tensors],
    *,
    checked: RequestPath,
    metrics: InferenceMetrics,
    observe_array: ArrayObserver | None,
    ref: ModelRef,
) -> RequestPath:
    """The fast path on a runtime's ``predict_array`` (see the module invariants).

    The latency goes into the metrics' ring here (`InferenceMetrics.latency_slots`)
    rather than through `InferenceMetrics.record_ns`: at batch 1 on a TFLite tabular
    model every call saved is a few percent of the run.
    """
    record_error, now, ndarray = metrics.record_error, _now_ns, np.ndarray
    ring, tickets, size = metrics.latency_slots()
    name, dtype, specs = single.name, np.dtype(single.dtype), [single]

    def run(
        inputs: Mapping[str, Any], request_ids: Sequence[str] | None
    ) -> tuple[ModelRef, Tensors]:
        value = inputs.get(name)
        if value.__class__ is not ndarray or value.dtype is not dtype or len(inputs) != 1:
            return checked(inputs, request_ids)
        started = now()
        try:
            outputs = predict_array(value)
        except InferenceError:
            fault = _input_fault(specs, inputs)
            if fault is not None:
                raise fault from None
            record_error()
            raise
        elapsed = now() - started
        ring[next(tickets) % size] = elapsed
        if observe_array is not None:
            observe_array(value, outputs, request_ids)
        observer = metrics.observer
        if observer is not None:
            observer(True, elapsed * 1e-6)
        return ref, outputs

    return run


class ModelHost:
    """Holds the active model; `infer` counts every call in the metrics.

    ``drift`` builds a drift monitor for each model that starts serving; ``on_retired``
    receives the monitor of each model that stops (see the module invariants).
    """

    def __init__(
        self,
        metrics: InferenceMetrics,
        active: ActiveModel | None = None,
        *,
        drift: DriftFactory | None = None,
        on_retired: RetiredHandler | None = None,
    ) -> None:
        self.metrics = metrics
        self._drift = drift
        self._on_retired = on_retired
        self._swap_lock = threading.Lock()
        self._serving = self._prepare(active)

    @property
    def active(self) -> ActiveModel | None:
        serving = self._serving
        return serving.model if serving else None

    @property
    def drift_monitor(self) -> DriftMonitor | None:
        """The active model's drift monitor, or None when it is not monitored."""
        serving = self._serving
        return serving.drift if serving else None

    def monitored(self) -> tuple[ActiveModel, DriftMonitor] | None:
        """The active model and its drift monitor, read together; None if unmonitored."""
        serving = self._serving
        if serving is None or serving.drift is None:
            return None
        return serving.model, serving.drift

    def swap(self, new: ActiveModel | None) -> ActiveModel | None:
        """Make ``new`` the active model; return the previous one (not closed).

        The new model's drift monitor is built before it serves; the old one's goes to
        ``on_retired`` after. A drift factory that fails leaves the model unmonitored
        (logged), never unserved.
        """
        serving = self._prepare(new)
        with self._swap_lock:
            old, self._serving = self._serving, serving
        if old is None:
            return None
        if old.drift is not None and self._on_retired is not None:
            self._on_retired(old.model, old.drift)
        return old.model

    def retire_drift(self) -> None:
        """Hand the active model's monitor to ``on_retired`` and stop monitoring (shutdown)."""
        with self._swap_lock:
            serving = self._serving
            if serving is None or serving.drift is None:
                return
            self._serving = _Serving(serving.model, None, self.metrics)
        if self._on_retired is not None:
            self._on_retired(serving.model, serving.drift)

    def _prepare(self, model: ActiveModel | None) -> _Serving | None:
        if model is None:
            return None
        monitor = None
        if self._drift is not None:
            try:
                monitor = self._drift(model)
            except Exception as e:  # a bad profile must not keep a good model from serving
                log.warning(
                    "model %s %s serves without drift monitoring: %s",
                    model.ref.name,
                    model.ref.version,
                    e,
                )
        return _Serving(model, monitor, self.metrics)

    def infer(
        self, inputs: Mapping[str, Any], request_ids: Sequence[str] | None = None
    ) -> tuple[ModelRef, Tensors]:
        """Run the active model on ``inputs`` (arrays or nested lists).

        ``request_ids`` (one per row) lets late labels join these predictions
        (`DriftMonitor.record_label`). Returns the model that ran and its outputs.
        Raises `NoModelLoadedError`, `InputError` for inputs that do not fit the model
        (not counted as errors: the caller is at fault, not the model), or
        `InferenceError` when the runtime fails (counted).
        """
        serving = self._serving
        if serving is None:
            raise NoModelLoadedError("no model is loaded yet")
        return serving.run(inputs, request_ids)
