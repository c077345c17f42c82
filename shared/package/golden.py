"""Golden-sample checks: run a model on its package's golden inputs, compare the outputs.

A device checks a package this way at install, before the model may serve; the builder
records the golden outputs with `run_model`. `compare_golden` is pure; `check_golden`
runs any `Predictor` (an `edgefleet.shared.runtime.ModelRuntime` fits). Needs only numpy.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edgefleet.shared.manifest import Tolerance
from edgefleet.shared.messages import WireModel
from edgefleet.shared.package.format import DataError
from edgefleet.shared.tensors import TensorSpec

Tensors = dict[str, NDArray[Any]]
_UNBOUNDED = float(np.finfo(np.float64).max)


class Predictor(Protocol):
    """What golden checks need from a loaded model; `edgefleet.shared.runtime.ModelRuntime` fits."""

    @property
    def inputs(self) -> list[TensorSpec]: ...

    def predict(self, inputs: Tensors) -> Tensors: ...


class OutputComparison(WireModel):
    """How one output compared with its golden values."""

    name: str
    max_abs_error: float
    max_rel_error: float
    failed_samples: list[int]


class GoldenReport(WireModel):
    """The outcome of running a model on its golden samples."""

    passed: bool
    samples: int
    outputs: list[OutputComparison]
    failed_samples: list[int]
    problems: list[str]

    def summary(self) -> str:
        """One line for logs and deployment events."""
        if self.passed:
            return f"all {self.samples} golden samples within tolerance"
        worst = ", ".join(
            f"{o.name}: max abs error {o.max_abs_error:.3g}"
            for o in self.outputs
            if o.failed_samples
        )
        return "; ".join(
            [f"{len(self.failed_samples)} of {self.samples} golden samples failed", *self.problems]
            + ([worst] if worst else [])
        )


def compare_golden(expected: Tensors, actual: Tensors, tolerance: Tolerance) -> GoldenReport:
    """Compare outputs with golden ones: ``|a - e| <= atol + rtol * |e|`` element-wise.

    Pure. A missing output, a different shape, or a NaN where a number was expected
    fails; row ``i`` of every output is golden sample ``i``.
    """
    samples = max((len(v) if v.ndim else 1 for v in expected.values()), default=0)
    failed: set[int] = set()
    problems: list[str] = []
    comparisons: list[OutputComparison] = []
    for name in sorted(expected):
        want = expected[name]
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            found = "missing" if got is None else f"shape {list(got.shape)}"
            problems.append(f"output {name!r}: expected shape {list(want.shape)}, found {found}")
            failed.update(range(samples))
            continue
        if want.dtype.kind in "biuf" and got.dtype.kind in "biuf":
            e, a = want.astype(np.float64), got.astype(np.float64)
            diff = np.abs(a - e)
            bad = ~(diff <= tolerance.atol + tolerance.rtol * np.abs(e))
            # A NaN or an overflow has no error bound; the report says "as large as a
            # float gets" because it crosses wires that refuse inf and NaN.
            rel = diff / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
            diff, rel = (np.nan_to_num(x, nan=_UNBOUNDED, posinf=_UNBOUNDED) for x in (diff, rel))
        else:
            bad = want != got
            diff = rel = bad.astype(np.float64)
        rows = bad.reshape(len(bad), -1).any(axis=1) if bad.ndim else np.array([bool(bad)])
        bad_rows = [int(i) for i in np.flatnonzero(rows)]
        failed.update(bad_rows)
        comparisons.append(
            OutputComparison(
                name=name,
                max_abs_error=float(diff.max()) if diff.size else 0.0,
                max_rel_error=float(rel.max()) if rel.size else 0.0,
                failed_samples=bad_rows,
            )
        )
    return GoldenReport(
        passed=not failed and not problems,
        samples=samples,
        outputs=comparisons,
        failed_samples=sorted(failed),
        problems=problems,
    )


def load_golden(golden: Path | bytes) -> tuple[Tensors, Tensors]:
    """The golden inputs and expected outputs from a ``golden.npz``; raises `DataError`."""
    source = "golden data" if isinstance(golden, bytes) else str(golden)
    try:
        with np.load(
            io.BytesIO(golden) if isinstance(golden, bytes) else golden, allow_pickle=False
        ) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{source}: cannot read golden samples: {e}") from e
    inputs = {k.removeprefix("in:"): v for k, v in arrays.items() if k.startswith("in:")}
    outputs = {k.removeprefix("out:"): v for k, v in arrays.items() if k.startswith("out:")}
    if not inputs or not outputs:
        raise DataError(f"{source}: expected 'in:*' and 'out:*' arrays, found {sorted(arrays)}")
    return inputs, outputs


def run_model(runtime: Predictor, inputs: Tensors) -> Tensors:
    """Run ``inputs`` (rows along axis 0) through the model, in batches it accepts.

    Models with a fixed batch size (common for TFLite) get that many rows per call.
    Raises whatever ``runtime.predict`` raises.
    """
    rows = len(next(iter(inputs.values())))
    fixed = [s.shape[0] for s in runtime.inputs if s.shape and s.shape[0] is not None]
    batch = fixed[0] if fixed else max(rows, 1)
    parts = [
        runtime.predict({k: v[i : i + batch] for k, v in inputs.items()})
        for i in range(0, rows, batch)
    ]
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def check_golden(runtime: Predictor, golden: Path | bytes, tolerance: Tolerance) -> GoldenReport:
    """Run the golden inputs through ``runtime`` and compare with the expected outputs.

    A model that raises on the golden inputs gives a failed result naming the error.
    Raises `DataError` only if the golden file itself cannot be read.
    """
    inputs, expected = load_golden(golden)
    try:
        actual = run_model(runtime, inputs)
    except Exception as e:  # any runtime failure is a failed check, not a crash
        samples = len(next(iter(inputs.values())))
        return GoldenReport(
            passed=False,
            samples=samples,
            outputs=[],
            failed_samples=list(range(samples)),
            problems=[f"the model failed on the golden inputs: {e}"],
        )
    return compare_golden(expected, actual, tolerance)
