"""``edgefleet model quantize``: int8 ONNX models that are checked before they are kept.

Dynamic quantization (int8 weights, activations quantized at run time) or static
quantization in QDQ format (int8 weights and activations, ranges calibrated on the
operator's data) with ``onnxruntime.quantization``. The quantized model is then run
next to the float one on held-out data, and the report compares accuracy (or, without
labels, how often the two agree), latency at batch 1 and size.

Invariant: the output file exists only if the quantized model passed the accuracy
gate. It is written to a temporary file in the output's directory and moved into place
(`edgefleet.shared.durable.replace_durably`) after the check; a refused or failed run
removes the temporary file. The int8 model carries the sha256 of the float model it came
from in its ONNX metadata (`QUANTIZED_FROM_KEY`), so packaging it records
``lineage.quantized_from`` without being told (`quantized_from`). Without labels the
"accuracy drop" is the share of rows whose predicted class changed (1 - agreement), an
upper bound on the real drop.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from edgefleet.shared.durable import replace_durably
from edgefleet.shared.hashing import sha256_file

logger = logging.getLogger(__name__)

Mode = Literal["dynamic", "static"]
LATENCY_WARMUP = 10
LATENCY_RUNS = 200
# Static calibration needs few rows; more only slows the MinMax pass down.
MAX_CALIBRATION_ROWS = 512
# The ONNX metadata_props key of the float model's sha256 in a quantized model.
QUANTIZED_FROM_KEY = "edgefleet.quantized_from"


class QuantizeError(Exception):
    """The model or the data cannot be used (unreadable, shape or name mismatch)."""


class AccuracyDropTooLarge(QuantizeError):  # noqa: N818 - reads as the reason for refusal
    """The quantized model lost more accuracy than the operator allows; nothing was written."""

    def __init__(self, report: QuantizationReport) -> None:
        self.report = report
        super().__init__(
            f"{report.quantized_model}: {report.metric} drop {report.accuracy_drop:.4f} "
            f"exceeds the allowed {report.max_accuracy_drop:.4f}; the quantized model was "
            "not written"
        )


class ModelFigures(BaseModel):
    """Size, batch-1 latency and accuracy of one model on the evaluation rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size_bytes: int
    latency_p50_ms: float
    latency_p99_ms: float
    accuracy: float | None


class QuantizationReport(BaseModel):
    """Float versus quantized, side by side; ``accepted`` says whether the file was kept."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode
    float_model: str
    quantized_model: str
    output: str
    eval_rows: int
    metric: Literal["accuracy", "disagreement"]
    baseline: ModelFigures
    quantized: ModelFigures
    agreement: float
    max_abs_diff: float
    accuracy_drop: float
    max_accuracy_drop: float
    accepted: bool

    def table(self) -> str:
        """The report as a fixed-width text table."""

        def acc(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        rows = [
            ("", "float", "int8"),
            ("size (bytes)", str(self.baseline.size_bytes), str(self.quantized.size_bytes)),
            (
                "latency p50 (ms, batch 1)",
                f"{self.baseline.latency_p50_ms:.3f}",
                f"{self.quantized.latency_p50_ms:.3f}",
            ),
            (
                "latency p99 (ms, batch 1)",
                f"{self.baseline.latency_p99_ms:.3f}",
                f"{self.quantized.latency_p99_ms:.3f}",
            ),
            ("accuracy", acc(self.baseline.accuracy), acc(self.quantized.accuracy)),
        ]
        lines = [f"{a:<28}{b:>14}{c:>14}" for a, b, c in rows]
        verdict = "accepted" if self.accepted else "REFUSED"
        lines += [
            f"{'argmax agreement':<28}{self.agreement:>28.4f}",
            f"{'max abs diff':<28}{self.max_abs_diff:>28.6f}",
            f"{self.metric + ' drop':<28}{self.accuracy_drop:>28.4f}",
            f"{'allowed drop':<28}{self.max_accuracy_drop:>28.4f}",
            f"{self.mode} int8, {self.eval_rows} rows of {self.output!r}: {verdict}",
        ]
        return "\n".join(lines)


# --- data files -------------------------------------------------------------------------


def load_array_file(path: Path) -> dict[str, NDArray[Any]] | NDArray[Any]:
    """Rows from ``.npy`` (one array), ``.npz`` (arrays by input name) or ``.csv``.

    A CSV may start with a header line; every other cell must be a number. Raises
    `QuantizeError` naming the file if it cannot be read.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array: NDArray[Any] = np.load(path, allow_pickle=False)
            return array
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        if suffix == ".csv":
            return _load_csv(path)
    except (OSError, ValueError) as e:
        raise QuantizeError(f"{path}: cannot read it as {suffix} data: {e}") from e
    raise QuantizeError(f"{path}: unknown data format {suffix!r}; expected .npy, .npz or .csv")


def _load_csv(path: Path) -> NDArray[np.float64]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError("the file is empty")
    first = lines[0].split(",")
    try:
        [float(cell) for cell in first]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    return np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.float64, ndmin=2)


def _rows_for(
    data: dict[str, NDArray[Any]] | NDArray[Any],
    inputs: Sequence[Any],
    *,
    source: Path,
) -> dict[str, NDArray[Any]]:
    """Match data to the model's inputs, check shapes, cast to the input dtypes."""
    names = [i.name for i in inputs]
    if isinstance(data, np.ndarray):
        if len(inputs) != 1:
            raise QuantizeError(
                f"{source}: one array given but the model takes inputs {names}; "
                "use an .npz with one array per input"
            )
        data = {names[0]: data}
    elif len(data) == 1 and len(inputs) == 1 and names[0] not in data:
        data = {names[0]: next(iter(data.values()))}
    missing = [n for n in names if n not in data]
    if missing:
        raise QuantizeError(f"{source}: no data for inputs {missing}; it has {sorted(data)}")
    rows: dict[str, NDArray[Any]] = {}
    counts = set()
    for spec in inputs:
        array = np.asarray(data[spec.name])
        want = [d if isinstance(d, int) else None for d in spec.shape][1:]
        # CSV rows are flat: fold them into the model's per-row shape if sizes agree.
        flat_fits = len(want) > 1 and None not in want and array.ndim == 2
        if flat_fits and array.shape[1] == int(np.prod([w or 0 for w in want])):
            array = array.reshape(array.shape[0], *want)
        got = list(array.shape[1:])
        if len(got) != len(want) or any(
            w is not None and w != g for w, g in zip(want, got, strict=True)
        ):
            raise QuantizeError(
                f"{source}: rows for input {spec.name!r} have shape {got}, "
                f"the model expects {want} (None = any size)"
            )
        rows[spec.name] = array.astype(_numpy_dtype(spec.type), copy=False)
        counts.add(array.shape[0])
    if len(counts) != 1 or 0 in counts:
        raise QuantizeError(
            f"{source}: inputs need the same, non-zero number of rows; got {counts}"
        )
    return rows


def _numpy_dtype(ort_type: str) -> np.dtype[Any]:
    mapping = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
    }
    if ort_type not in mapping:
        raise QuantizeError(f"input type {ort_type} is not supported for quantization data")
    return np.dtype(mapping[ort_type])


# --- the onnxruntime pieces -------------------------------------------------------------


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own unrelated exception types
        raise QuantizeError(f"{path}: onnxruntime cannot load it as an ONNX model: {e}") from e


def _score_output(session: Any, requested: str | None) -> str:
    """The output whose argmax is the predicted class: named, or the first 2-D float one."""
    outputs = session.get_outputs()
    if requested is not None:
        if requested not in [o.name for o in outputs]:
            raise QuantizeError(
                f"output {requested!r} not in the model; it has {[o.name for o in outputs]}"
            )
        return requested
    for output in outputs:
        if output.type in ("tensor(float)", "tensor(double)") and len(output.shape or []) == 2:
            name: str = output.name
            return name
    raise QuantizeError(
        f"no 2-D float output (class scores) among {[o.name for o in outputs]}; "
        "name one with --output"
    )


def _batched(rows: dict[str, NDArray[Any]], size: int) -> Iterator[dict[str, NDArray[Any]]]:
    count = len(next(iter(rows.values())))
    for start in range(0, count, size):
        yield {name: value[start : start + size] for name, value in rows.items()}


class _Reader:
    """`CalibrationDataReader` over in-memory rows, one row per call as ORT expects."""

    def __init__(self, rows: dict[str, NDArray[Any]]) -> None:
        self._rows = rows
        self._iter = _batched(rows, 1)

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = _batched(self._rows, 1)


def _scores(session: Any, output: str, rows: dict[str, NDArray[Any]]) -> NDArray[np.float64]:
    parts = [session.run([output], batch)[0] for batch in _batched(rows, 256)]
    return np.concatenate(parts).astype(np.float64)


def _latency_ms(session: Any, output: str, rows: dict[str, NDArray[Any]]) -> tuple[float, float]:
    singles = list(_batched(rows, 1))
    for batch in singles[:LATENCY_WARMUP]:
        session.run([output], batch)
    timings = []
    for i in range(LATENCY_RUNS):
        batch = singles[i % len(singles)]
        start = time.perf_counter()
        session.run([output], batch)
        timings.append((time.perf_counter() - start) * 1000.0)
    p50, p99 = np.percentile(timings, [50, 99])
    return float(p50), float(p99)


def _check_quantizable(mode: Mode, model: Path) -> None:
    """Refuse early, with the reason, a graph in which onnxruntime would quantize nothing."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as e:  # protobuf's DecodeError and friends
        raise QuantizeError(f"{model}: not a readable ONNX model: {e}") from e
    supported = IntegerOpsRegistry if mode == "dynamic" else QDQRegistry
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in graph.node})
    if not any(n.op_type in supported and n.domain in ("", "ai.onnx") for n in graph.node):
        raise QuantizeError(
            f"{model}: nothing to quantize in {mode} mode: its operators are {ops}, and "
            f"onnxruntime quantizes only {sorted(supported)} from the ai.onnx domain "
            "(scikit-learn pipelines converted with skl2onnx use ai.onnx.ml operators)"
        )


def _quantize_to(mode: Mode, source: Path, target: Path, calibration: Any | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return
    quantize_static(
        source,
        target,
        calibration,
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def _stamp_origin(target: Path, float_sha256: str) -> None:
    """Record the float model's sha256 in ``target``'s metadata (replacing an older stamp)."""
    import onnx

    model = onnx.load(str(target))
    kept = [p for p in model.metadata_props if p.key != QUANTIZED_FROM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=QUANTIZED_FROM_KEY, value=float_sha256)
    onnx.save(model, str(target))


def quantized_from(model_file: Path) -> str | None:
    """The float model's sha256 that `quantize_onnx` stamped into ``model_file``, if any.

    None for a model without the stamp, or when the ``onnx`` package is not installed
    (it comes with the tools extra). Raises `QuantizeError` if the file is not ONNX.
    """
    try:
        import onnx
    except ImportError:
        logger.debug("onnx is not installed: not reading %s's quantization stamp", model_file)
        return None
    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise QuantizeError(f"{model_file}: not a readable ONNX model: {e}") from e
    for prop in model.metadata_props:
        if prop.key == QUANTIZED_FROM_KEY:
            value: str = prop.value
            return value
    return None


# --- the operation ----------------------------------------------------------------------


def quantize_onnx(
    model: Path,
    out: Path,
    *,
    mode: Mode,
    calibration: Path | None = None,
    eval_data: Path | None = None,
    labels: Path | None = None,
    max_accuracy_drop: float = 0.01,
    output: str | None = None,
) -> QuantizationReport:
    """Quantize ``model`` to int8, compare it with the float model, keep it only if it passes.

    ``calibration`` is required for static mode; evaluation uses ``eval_data`` (or the
    calibration rows when absent). Returns the report of an accepted model written to
    ``out``. Raises `AccuracyDropTooLarge` (carrying the report) if the drop exceeds
    ``max_accuracy_drop``, and `QuantizeError` for an unreadable model, data that does not
    fit the model's inputs, or a quantizer failure; in every error case ``out`` is not
    created.
    """
    float_session = _session(model)
    _check_quantizable(mode, model)
    inputs = float_session.get_inputs()
    score_name = _score_output(float_session, output)
    calibration_rows = None
    if mode == "static" and calibration is None:
        raise QuantizeError("static quantization needs --calibration data")
    if calibration is not None:
        calibration_rows = _rows_for(load_array_file(calibration), inputs, source=calibration)
    if eval_data is not None:
        eval_rows = _rows_for(load_array_file(eval_data), inputs, source=eval_data)
    elif calibration_rows is not None:
        eval_rows = calibration_rows
    else:
        raise QuantizeError("nothing to evaluate on: give --eval data (or --calibration)")
    count = len(next(iter(eval_rows.values())))
    truth = _labels(labels, count) if labels is not None else None

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        reader = None
        if calibration_rows is not None and mode == "static":
            first = {k: v[:MAX_CALIBRATION_ROWS] for k, v in calibration_rows.items()}
            reader = _Reader(first)
        try:
            _quantize_to(mode, model, tmp, reader)
        except Exception as e:  # the quantizer raises assorted errors on odd graphs
            raise QuantizeError(f"{model}: onnxruntime could not quantize it ({mode}): {e}") from e
        # Stamped before the comparison, so the checked bytes are the bytes kept.
        _stamp_origin(tmp, sha256_file(model))
        report = _compare(
            mode=mode,
            model=model,
            out=out,
            quantized_path=tmp,
            float_session=float_session,
            output=score_name,
            rows=eval_rows,
            truth=truth,
            max_drop=max_accuracy_drop,
        )
        if not report.accepted:
            raise AccuracyDropTooLarge(report)
        replace_durably(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    logger.info("wrote %s (%s int8, drop %.4f)", out, mode, report.accuracy_drop)
    return report


def _labels(path: Path, count: int) -> NDArray[np.int64]:
    data = load_array_file(path)
    if isinstance(data, dict):
        if len(data) != 1:
            raise QuantizeError(f"{path}: expected one array of labels, found {sorted(data)}")
        data = next(iter(data.values()))
    labels = np.asarray(data).reshape(-1)
    if len(labels) != count:
        raise QuantizeError(f"{path}: {len(labels)} labels for {count} evaluation rows")
    return labels.astype(np.int64)


def _compare(
    *,
    mode: Mode,
    model: Path,
    out: Path,
    quantized_path: Path,
    float_session: Any,
    output: str,
    rows: dict[str, NDArray[Any]],
    truth: NDArray[np.int64] | None,
    max_drop: float,
) -> QuantizationReport:
    quant_session = _session(quantized_path)
    float_scores = _scores(float_session, output, rows)
    quant_scores = _scores(quant_session, output, rows)
    float_pred = np.argmax(float_scores, axis=1)
    quant_pred = np.argmax(quant_scores, axis=1)
    agreement = float(np.mean(float_pred == quant_pred))
    float_acc = quant_acc = None
    if truth is not None:
        float_acc = float(np.mean(float_pred == truth))
        quant_acc = float(np.mean(quant_pred == truth))
        drop = float_acc - quant_acc
    else:
        drop = 1.0 - agreement

    def figures(session: Any, path: Path, accuracy: float | None) -> ModelFigures:
        p50, p99 = _latency_ms(session, output, rows)
        return ModelFigures(
            size_bytes=path.stat().st_size,
            latency_p50_ms=p50,
            latency_p99_ms=p99,
            accuracy=accuracy,
        )

    return QuantizationReport(
        mode=mode,
        float_model=str(model),
        quantized_model=str(out),
        output=output,
        eval_rows=len(float_pred),
        metric="accuracy" if truth is not None else "disagreement",
        baseline=figures(float_session, model, float_acc),
        quantized=figures(quant_session, quantized_path, quant_acc),
        agreement=agreement,
        max_abs_diff=float(np.max(np.abs(float_scores - quant_scores))),
        accuracy_drop=drop,
        max_accuracy_drop=max_drop,
        accepted=drop <= max_drop,
    )


# --- command line -----------------------------------------------------------------------


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model quantize``."""
    parser = commands.add_parser(
        "quantize",
        help="int8-quantize an ONNX model and refuse it if it loses too much accuracy",
    )
    parser.add_argument("model", type=Path, help="the float ONNX model")
    parser.add_argument("--mode", choices=["dynamic", "static"], required=True)
    parser.add_argument(
        "--calibration", type=Path, help="rows for static calibration (.npy, .npz or .csv)"
    )
    parser.add_argument("--eval", type=Path, help="held-out rows to compare on (default: calib)")
    parser.add_argument("--labels", type=Path, help="true classes of the --eval rows")
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="refuse the model if accuracy falls by more (default 0.01 = one point)",
    )
    parser.add_argument("--output", help="class-score output to compare (default: first 2-D)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the int8 model")
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON here")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        report = quantize_onnx(
            args.model,
            args.out,
            mode=args.mode,
            calibration=args.calibration,
            eval_data=args.eval,
            labels=args.labels,
            max_accuracy_drop=args.max_accuracy_drop,
            output=args.output,
        )
    except AccuracyDropTooLarge as e:
        print(e.report.table())
        _write_report(args.report_json, e.report)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except QuantizeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    _write_report(args.report_json, report)
    return 0


def _write_report(path: Path | None, report: QuantizationReport) -> None:
    if path is not None:
        path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
