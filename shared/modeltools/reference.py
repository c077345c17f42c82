"""Reference data (``.npy``, ``.npz`` or ``.csv``) read as a model's inputs, and the labels
of its rows, for the builder.

Off-device tooling. Data is cast to the input schema only when that loses nothing;
anything else is refused naming both sides (`SchemaMismatchError`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.package.format import DataError
from edgefleet.shared.package.golden import Tensors
from edgefleet.shared.tensors import TensorSpec


class SchemaMismatchError(DataError):
    """Data whose shape, feature count or dtype differs from the model's input schema."""


def load_reference(path: Path, specs: list[TensorSpec]) -> tuple[Tensors, list[str] | None]:
    """Read reference data (``.npy``, ``.npz`` or ``.csv``) as model inputs.

    A ``.npy``, a single-array ``.npz`` or a ``.csv`` feeds a single-input model; a
    multi-input model needs an ``.npz`` with one array per input name. A CSV whose first
    row is not numeric gives the feature names. Returns the inputs, conformed to the
    schema, and the feature names if the file had them. Raises `DataError` if the file
    cannot be read and `SchemaMismatchError` if it does not fit ``specs``.
    """
    suffix = path.suffix.lower()
    names: list[str] | None = None
    lenient = False
    try:
        if suffix == ".npy":
            arrays = {"": np.load(path, allow_pickle=False)}
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
        elif suffix == ".csv":
            table, names = _read_csv(path)
            arrays = {"": table}
            lenient = True
        else:
            raise DataError(f"{path}: unsupported reference data format; expected .npy, .npz, .csv")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read reference data: {e}") from e
    wanted = [s.name for s in specs]
    if len(arrays) == 1 and len(specs) == 1:
        by_input = {specs[0].name: next(iter(arrays.values()))}
    elif sorted(arrays) == sorted(wanted):
        by_input = arrays
    else:
        raise SchemaMismatchError(
            f"{path}: the model takes inputs {wanted}, found arrays {sorted(arrays) or ['(one)']}"
        )
    inputs = {s.name: _conform(by_input[s.name], s, str(path), lenient=lenient) for s in specs}
    rows = {len(v) for v in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise SchemaMismatchError(f"{path}: inputs need the same, non-zero row count; found {rows}")
    return inputs, names


def load_labels(path: Path, rows: int) -> NDArray[Any]:
    """Read one label per reference row from a 1-D ``.npy`` or a one-column ``.csv``
    (an optional header line; text labels stay text, numeric ones become numbers).

    Raises `DataError` if the file cannot be read, is not one column, or does not hold
    exactly ``rows`` labels.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            labels: NDArray[Any] = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            labels = _read_label_column(path)
        else:
            raise DataError(f"{path}: unsupported label file format; expected .npy or .csv")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read labels: {e}") from e
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{path}: labels must be one column, found shape {list(labels.shape)}")
    if len(labels) != rows:
        raise DataError(
            f"{path}: {len(labels)} labels for {rows} reference rows; give one label per row"
        )
    return labels


def _read_label_column(path: Path) -> NDArray[Any]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    values = [line for line in lines if line]
    if values and "," in values[0]:
        raise ValueError(f"expected one column, the first line has {values[0].count(',') + 1}")
    try:
        [float(x) for x in values[:1]]
    except ValueError:
        values = values[1:]  # a header line
    try:
        numbers = np.array([float(x) for x in values])
    except ValueError:
        return np.array(values, dtype=np.str_)
    is_integral = bool(np.all(np.isfinite(numbers))) and bool(np.all(numbers == np.round(numbers)))
    return numbers.astype(np.int64) if is_integral else numbers


def _read_csv(path: Path) -> tuple[NDArray[np.float64], list[str] | None]:
    with path.open(encoding="utf-8") as f:
        first = f.readline().strip().split(",")
    try:
        [float(x) for x in first]
        header = None
    except ValueError:
        header = [x.strip() for x in first]
    data = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2, dtype=np.float64)
    return data, header


def _conform(array: NDArray[Any], spec: TensorSpec, source: str, *, lenient: bool) -> NDArray[Any]:
    """``array`` cast to ``spec``'s dtype if that loses nothing; raises `SchemaMismatchError`."""
    shape = spec.shape
    fixed_ok = all(
        want is None or want == got for want, got in zip(shape[1:], array.shape[1:], strict=False)
    )
    if array.ndim != len(shape) or not shape or not fixed_ok:
        detail = ""
        if len(shape) == 2 and array.ndim == 2 and shape[1] is not None:
            detail = f" ({shape[1]} features per row, found {array.shape[1]})"
        raise SchemaMismatchError(
            f"{source}: input {spec.name!r} expects shape {_show(shape)}, "
            f"found {list(array.shape)}{detail}"
        )
    try:
        want = np.dtype(spec.dtype)
    except TypeError as e:
        raise SchemaMismatchError(f"input {spec.name!r} has unsupported dtype {spec.dtype}") from e
    if array.dtype == want:
        return array
    mismatch = SchemaMismatchError(
        f"{source}: input {spec.name!r} expects dtype {want.name}, found {array.dtype.name}"
    )
    if want.kind in "iu" and array.dtype.kind in "iuf":
        if array.dtype.kind == "f" and not (lenient and np.all(np.mod(array, 1) == 0)):
            raise mismatch
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise mismatch
        return array.astype(want)
    if np.can_cast(array.dtype, want, casting="same_kind"):
        return array.astype(want)
    raise mismatch


def _show(shape: list[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"
