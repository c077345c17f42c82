"""TFLite backend on LiteRT (`ai-edge-litert`), or the older `tflite-runtime` wheel.

Invariants:

- Tensors are named by the model's signature when it has exactly one (a converted
  SavedModel's ``input`` / ``probabilities``), otherwise by their tensor names.
- Quantized models speak floats. An input or output stored as int8/uint8/int16 with a
  quantization scale is exposed as float32: `predict` quantizes float inputs with the
  tensor's (scale, zero_point), clipping to the integer range, and dequantizes outputs.
  An operator posting JSON floats to the inference API therefore gets the same
  contract from a float and an int8 model. ``raw=True`` turns this off, for callers
  (benchmarks, tools) that want the stored integer tensors.
- Inputs are checked (names, rank, fixed dimensions, numeric type) before the
  interpreter sees them, so a bad request fails with `InferenceError` naming the tensor,
  what was expected and what was found. The leading (batch) dimension may vary: the
  interpreter is resized on a new batch size.
- An input that already is an ndarray of the dtype `predict` takes (float32 for a
  quantized input) and of the right rank, on a model whose non-batch dimensions are all
  fixed, goes to the interpreter as it is (LiteRT's ``set_tensor`` copies it, contiguous
  or not); anything else is converted and checked by the general path. Such an input's
  shape is checked only when it differs from the shape the interpreter holds, which was
  checked when it was set: at batch 1 checking every call cost about 0.3 us, close to a
  tenth of the wine model's run. ``get_tensor`` returns a copy, so outputs are not
  copied again.
- The interpreter's compiled methods (``Interpreter._interpreter``: ``SetTensor``,
  ``Invoke``, ``GetTensor``, ``ResizeInputTensor``, ``AllocateTensors``) are called
  directly when the wheel has them, resolved once at load: the public wrappers add a
  Python frame each, and ``invoke``/``allocate_tensors`` a reference-count check that
  guards views from ``Interpreter.tensor()``, which this module never takes (outputs
  come from ``GetTensor``, a copy). At batch 1 the wrappers cost about 0.25 us, a
  fifth of the wine model's run. Without them the public methods are used.
- `predict_array` is `predict` for a model with one input, taking that input's array
  (of exactly the dtype `predict` takes) and skipping the name lookups: the model
  host's fast path. It leaves the shape check to LiteRT's ``SetTensor`` (which checks
  the rank and every dimension) and raises what `predict` raises.
- A TFLite interpreter holds its tensors in place and is not thread-safe, so `predict`
  serialises calls with a lock; on the small CPUs we target one interpreter with
  ``intra_op_threads`` threads is already the fastest arrangement. The other
  `RuntimeOptions` (inter-op threads, graph optimisation, execution mode) are ONNX
  Runtime settings and do not apply here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.runtime.base import InferenceError, RuntimeLoadError, RuntimeOptions, Tensors
from edgefleet.shared.tensors import TensorSpec

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on which wheel the device has
    from tflite_runtime.interpreter import Interpreter

logger = logging.getLogger(__name__)

_QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)


def _clip_ufunc() -> np.ufunc:
    """numpy's clip ufunc itself (``np.clip`` wraps it in Python calls), numpy 1 or 2."""
    for module in ("numpy._core.umath", "numpy.core.umath"):
        with contextlib.suppress(ImportError, AttributeError):
            return cast(np.ufunc, importlib.import_module(module).clip)
    raise ImportError("numpy has no clip ufunc")  # pragma: no cover


_clip = _clip_ufunc()

_RANGE = {
    np.dtype(t): (np.float32(np.iinfo(t).min), np.float32(np.iinfo(t).max))
    for t in _QUANTIZED_DTYPES
}


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of one tensor: ``real = (stored - zero_point) * scale``."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class _Port:
    """One input or output tensor as the interpreter stores it."""

    name: str
    index: int
    dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 where any size is allowed
    quantization: Quantization | None

    def spec(self, *, raw: bool) -> TensorSpec:
        dtype = self.dtype.name if raw or self.quantization is None else "float32"
        return TensorSpec(
            name=self.name, dtype=dtype, shape=[d if d >= 0 else None for d in self.shape]
        )


@dataclass(frozen=True, slots=True)
class _FastInput:
    """What an input array must be to skip conversion: exact dtype and rank.

    Its trailing shape (``tail``) is checked when it differs from the interpreter's
    (`_check_shape`). ``tail`` is None when a non-batch dimension is variable; such an
    input always takes the general path.
    """

    name: str
    dtype: np.dtype[Any]
    ndim: int
    tail: tuple[int, ...] | None
    quantization: Quantization | None
    stored: np.dtype[Any]

    @classmethod
    def of(cls, port: _Port, *, raw: bool) -> _FastInput:
        quantization = None if raw else port.quantization
        fixed = len(port.shape) > 0 and all(d >= 0 for d in port.shape[1:])
        return cls(
            name=port.name,
            dtype=np.dtype(np.float32) if quantization is not None else port.dtype,
            ndim=len(port.shape),
            tail=tuple(port.shape[1:]) if fixed else None,
            quantization=quantization,
            stored=port.dtype,
        )


def _check_shape(port: _Port, shape: tuple[int, ...]) -> None:
    """Raise `InferenceError` unless ``shape`` has the port's rank and fixed dimensions."""
    if len(shape) != len(port.shape) or any(
        want >= 0 and got != want
        for axis, (want, got) in enumerate(zip(port.shape, shape, strict=True))
        if axis > 0
    ):
        expected = [d if d >= 0 else None for d in port.shape]
        raise InferenceError(
            f"input {port.name!r}: expected shape {expected} (first axis = batch), "
            f"got {list(shape)}"
        )


def _port(name: str, detail: dict[str, Any]) -> _Port:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quantization = (
        Quantization(float(scale), int(zero_point))
        if dtype.type in _QUANTIZED_DTYPES and scale > 0
        else None
    )
    return _Port(
        name=name,
        index=int(detail["index"]),
        dtype=dtype,
        shape=tuple(int(d) for d in dims),
        quantization=quantization,
    )


def _ports(interpreter: Any) -> tuple[list[_Port], list[_Port]]:
    """Inputs and outputs, named by the single signature if there is one."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        by_index_in = {int(d["index"]): n for n, d in runner.get_input_details().items()}
        by_index_out = {int(d["index"]): n for n, d in runner.get_output_details().items()}
        return (
            [_port(by_index_in.get(int(d["index"]), str(d["name"])), d) for d in inputs],
            [_port(by_index_out.get(int(d["index"]), str(d["name"])), d) for d in outputs],
        )
    return [_port(str(d["name"]), d) for d in inputs], [_port(str(d["name"]), d) for d in outputs]


def quantize(
    values: NDArray[Any], quantization: Quantization, dtype: np.dtype[Any]
) -> NDArray[Any]:
    """Float values to the stored integer type: round half to even, clip to the type's range."""
    low, high = _RANGE[dtype]
    # Ufuncs with out=: at batch 1 the per-call overhead of each numpy call dominates, so
    # four calls (the clip writes the integers directly) rather than np.clip/np.round.
    stored: NDArray[np.float32] = np.divide(
        values, np.float32(quantization.scale), dtype=np.float32
    )
    np.rint(stored, out=stored)
    stored += np.float32(quantization.zero_point)
    out = np.empty(stored.shape, dtype=dtype)
    _clip(stored, low, high, out=out, casting="unsafe")
    return out


def dequantize(stored: NDArray[Any], quantization: Quantization) -> NDArray[np.float32]:
    """Stored integers back to float32."""
    # The subtraction casts the integers to float32 itself: one numpy call fewer.
    real: NDArray[np.float32] = np.subtract(
        stored, np.float32(quantization.zero_point), dtype=np.float32
    )
    real *= np.float32(quantization.scale)
    return real


class _Calls:
    """The interpreter's methods `predict` uses, compiled ones when the wheel has them.

    ``get`` takes (tensor index, subgraph index) either way.
    """

    __slots__ = ("_compiled", "_interpreter", "allocate", "get", "invoke", "set")

    def __init__(self, interpreter: Any) -> None:
        compiled = getattr(interpreter, "_interpreter", None)
        names = ("SetTensor", "Invoke", "GetTensor", "ResizeInputTensor", "AllocateTensors")
        if compiled is None or not all(callable(getattr(compiled, n, None)) for n in names):
            compiled = None  # pragma: no cover - depends on the wheel
        self._compiled = compiled
        self._interpreter = interpreter
        self.set: Callable[[int, NDArray[Any]], None]
        self.invoke: Callable[[], None]
        self.get: Callable[[int, int], NDArray[Any]]
        self.allocate: Callable[[], object]
        if compiled is not None:
            self.set = compiled.SetTensor
            self.invoke = compiled.Invoke
            self.get = compiled.GetTensor
            self.allocate = compiled.AllocateTensors
        else:  # pragma: no cover - depends on the wheel
            self.set = interpreter.set_tensor
            self.invoke = interpreter.invoke
            self.get = interpreter.get_tensor
            self.allocate = interpreter.allocate_tensors

    def resize(self, index: int, shape: tuple[int, ...]) -> None:
        if self._compiled is None:  # pragma: no cover - depends on the wheel
            self._interpreter.resize_tensor_input(index, shape)
        else:
            self._compiled.ResizeInputTensor(index, np.array(shape, dtype=np.int32), False)


class TfliteRuntime:
    """A `.tflite` model in a LiteRT interpreter. `predict` is thread-safe.

    Raises `RuntimeLoadError` from the constructor if LiteRT cannot load the file.
    """

    runtime = "tflite"

    def __init__(self, path: Path, options: RuntimeOptions, *, raw: bool = False) -> None:
        threads = options.intra_op_threads or None
        try:
            self._interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self._interpreter.allocate_tensors()
            self._in, self._out = _ports(self._interpreter)
        except Exception as e:  # LiteRT raises ValueError/RuntimeError for bad files
            raise RuntimeLoadError(f"{path}: TFLite cannot load it: {e}") from e
        self._path = path
        self._raw = raw
        self._lock = threading.Lock()
        self._current_shapes = {
            p.index: tuple(int(d) for d in self._interpreter.get_tensor(p.index).shape)
            for p in self._in
        }
        self._in_names = [p.name for p in self._in]
        self._in_indexes = [p.index for p in self._in]
        self._fits = [_FastInput.of(p, raw=raw) for p in self._in]
        self._out_indexes = [p.index for p in self._out]
        self._out_names = [p.name for p in self._out]
        self._dequantize = [None if raw else p.quantization for p in self._out]
        self._plain_outputs = all(q is None for q in self._dequantize)
        # One plain output: its dict is built as a literal, cheaper than dict(zip(...)).
        self._only_output = (
            (self._out_names[0], self._out_indexes[0])
            if self._plain_outputs and len(self._out) == 1
            else None
        )
        # None once closed; read under the lock.
        self._calls: _Calls | None = _Calls(self._interpreter)
        self.predict_array: Callable[[NDArray[Any]], Tensors] | None = self._array_path()
        logger.debug("loaded %s with %s threads, raw=%s", path, threads, raw)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [p.spec(raw=self._raw) for p in self._in]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [p.spec(raw=self._raw) for p in self._out]

    @property
    def quantization(self) -> dict[str, Quantization]:
        """The (scale, zero_point) of each quantized input and output, by tensor name."""
        return {p.name: p.quantization for p in (*self._in, *self._out) if p.quantization}

    def predict(self, inputs: Tensors) -> Tensors:
        """Run the model; raises `InferenceError` on bad inputs or an interpreter failure."""
        prepared = self._prepare(inputs)
        with self._lock:
            calls = self._calls
            if calls is None:
                raise InferenceError(f"{self._path.name}: the runtime is closed")
            try:
                # enumerate, not zip(strict=True): at batch 1 the keyword argument alone
                # cost a noticeable share of a small model's run.
                for position, index in enumerate(self._in_indexes):
                    value = prepared[position]
                    self._fit_shape(calls, position, value.shape)
                    calls.set(index, value)
                calls.invoke()
                get = calls.get
                only = self._only_output
                if only is not None:
                    return {only[0]: get(only[1], 0)}
                stored = [get(index, 0) for index in self._out_indexes]
            except (ValueError, RuntimeError) as e:
                raise InferenceError(f"{self._path.name}: TFLite failed: {e}") from e
        return self._outputs(stored)

    def _fit_shape(self, calls: _Calls, position: int, shape: tuple[int, ...]) -> None:
        """Resize the input at ``position`` to ``shape`` unless it has it (under the lock).

        A new batch size (or a bad shape) is checked, resized once, then reused for
        same-sized calls. Raises `InferenceError` for a shape the model does not take.
        """
        port = self._in[position]
        if self._current_shapes[port.index] != shape:
            _check_shape(port, shape)
            calls.resize(port.index, shape)
            calls.allocate()
            self._current_shapes[port.index] = shape

    def _outputs(self, stored: list[NDArray[Any]]) -> Tensors:
        if self._plain_outputs:
            return dict(zip(self._out_names, stored, strict=True))
        return {
            name: value if quantization is None else dequantize(value, quantization)
            for name, value, quantization in zip(
                self._out_names, stored, self._dequantize, strict=True
            )
        }

    def _array_path(self) -> Callable[[NDArray[Any]], Tensors] | None:
        """`predict_array` for a one-input model with fixed non-batch dimensions, else None.

        The input's shape is left to ``SetTensor``, which checks the rank, every
        dimension and the dtype against the interpreter's tensor and raises ValueError;
        only then is the shape compared with the interpreter's, and a new batch size
        resized to (`_fit_shape`, which raises the shape's `InferenceError`) and set
        again. That saves the shape tuple and comparison on every call.
        """
        calls = self._calls
        if calls is None or len(self._fits) != 1 or self._fits[0].tail is None:
            return None
        fit = self._fits[0]
        index, quantization, stored_dtype = self._in_indexes[0], fit.quantization, fit.stored
        shapes, runtime, name = self._current_shapes, self, self._path.name
        # acquire/release rather than `with`: about 0.1 us less per call.
        acquire, release = self._lock.acquire, self._lock.release
        set_tensor, invoke, get = calls.set, calls.invoke, calls.get
        only = self._only_output
        only_name, only_index = only if only is not None else ("", -1)
        out_indexes = self._out_indexes

        def predict_array(value: NDArray[Any]) -> Tensors:
            if quantization is not None:
                value = quantize(value, quantization, stored_dtype)
            acquire()
            try:
                current = runtime._calls
                if current is None:
                    raise InferenceError(f"{name}: the runtime is closed")
                try:
                    set_tensor(index, value)
                except ValueError:
                    if value.shape == shapes[index]:
                        raise
                    runtime._fit_shape(current, 0, value.shape)
                    set_tensor(index, value)
                invoke()
                if only is not None:
                    return {only_name: get(only_index, 0)}
                stored = [get(i, 0) for i in out_indexes]
            except (ValueError, RuntimeError) as e:
                raise InferenceError(f"{name}: TFLite failed: {e}") from e
            finally:
                release()
            return runtime._outputs(stored)

        return predict_array

    def _prepare(self, inputs: Tensors) -> list[NDArray[Any]]:
        """The arrays to set, in input order; shapes of passed-through arrays unchecked."""
        if len(inputs) == len(self._fits):
            prepared = []
            for fit in self._fits:
                value = inputs.get(fit.name)
                dtype = fit.dtype
                if (
                    value.__class__ is not np.ndarray
                    or (value.dtype is not dtype and value.dtype != dtype)
                    or value.ndim != fit.ndim
                    or fit.tail is None
                ):
                    break
                quantization = fit.quantization
                prepared.append(
                    value if quantization is None else quantize(value, quantization, fit.stored)
                )
            else:
                return prepared
        names = self._in_names
        missing = [n for n in names if n not in inputs]
        unexpected = sorted(set(inputs) - set(names))
        if missing or unexpected:
            raise InferenceError(
                f"{self._path.name}: the model takes inputs {names}; "
                f"missing {missing}, unexpected {unexpected}"
            )
        return [self._convert(port, inputs[port.name]) for port in self._in]

    def _convert(self, port: _Port, value: Any) -> NDArray[Any]:
        quantize_floats = port.quantization is not None and not self._raw
        wanted = np.dtype(np.float32) if quantize_floats else port.dtype
        try:
            array = np.asarray(value, dtype=wanted)
        except (TypeError, ValueError) as e:
            raise InferenceError(
                f"input {port.name!r}: expected {wanted.name} values, got {e}"
            ) from e
        _check_shape(port, array.shape)
        if quantize_floats:
            assert port.quantization is not None
            return quantize(array, port.quantization, port.dtype)
        return array

    def close(self) -> None:
        # Under the lock: a request already inside predict finishes on the old interpreter,
        # and any later one gets a clear InferenceError instead of an AttributeError.
        with self._lock:
            self._calls = None
            self._interpreter = None
