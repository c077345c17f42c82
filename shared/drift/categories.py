"""Canonical category keys, so ``1``, ``1.0``, ``np.int64(1)`` and ``"1"`` are one class.

Categories travel as strings. Missing values are NaN in float arrays and ``None`` (or
NaN) in object arrays; they are counted apart from every category.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.drift.base import DriftInputError


def category_key(value: object) -> str:
    """The string a category travels as: integral numbers without ``.0``, bytes decoded."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def missing_mask(values: NDArray[np.generic]) -> NDArray[np.bool_]:
    """Which elements are missing: NaN in float arrays, None or NaN in object arrays."""
    kind = values.dtype.kind
    if kind in "fc":
        nan: NDArray[np.bool_] = np.isnan(values)
        return nan
    if kind == "O":
        flat = values.ravel().tolist()
        mask = np.array(
            [v is None or (isinstance(v, float) and math.isnan(v)) for v in flat], dtype=bool
        )
        return mask.reshape(values.shape)
    return np.zeros(values.shape, dtype=bool)


def encode_categories(
    values: NDArray[np.generic], index: dict[str, int], other: int, *, name: str
) -> tuple[NDArray[np.intp], int]:
    """Map each present value to its category index (``other`` if unknown).

    Returns the indices of the present values and the number of missing ones. Sorting
    the distinct values once keeps this vectorised: only distinct values are looked up.
    Raises `DriftInputError` if ``values`` is not one-dimensional.
    """
    if values.ndim != 1:
        raise DriftInputError(
            f"categorical {name!r}: expected a 1-D array, got shape {values.shape}"
        )
    missing = missing_mask(values)
    present = values[~missing] if missing.any() else values
    try:
        distinct, inverse = np.unique(present, return_inverse=True)
    except TypeError:  # an object array mixing types that do not compare
        distinct, inverse = np.unique(present.astype(str), return_inverse=True)
    lookup = np.array([index.get(category_key(v), other) for v in distinct.tolist()], dtype=np.intp)
    codes: NDArray[np.intp] = (
        lookup[inverse.reshape(-1)] if distinct.size else inverse.astype(np.intp)
    )
    return codes, int(missing.sum())
