"""Runtime cost: bare runtime APIs versus the agent's wrappers, ONNX and TFLite, float and int8.

Run: .venv/bin/python tests/benchmarks/runtime_bench.py [--iterations 400] [--repeats 5]

For the wine MLP and the digits CNN (the committed files in simulators/tflite_models;
the ONNX int8 model is made on the spot with ``quantize_onnx``, static QDQ, calibrated on
the training rows) and each of ONNX float, ONNX int8, TFLite float, TFLite int8, it
times batch-1 calls three ways, all with one intra-op thread:

- bare: ``onnxruntime.InferenceSession.run`` / LiteRT ``set_tensor, invoke, get_tensor``
  (int8 inputs pre-quantized, outputs left as int8);
- runtime: ``edgefleet.shared.runtime.load_runtime(...).predict`` (float in, float out);
- host: ``edgefleet.agent.model_host.ModelHost.infer`` (input checks and metrics on top).

Each run is ``--iterations`` calls cycling over held-out rows after a warm-up; the
figures are medians over ``--repeats`` runs: p50 and p99 latency in microseconds, and
throughput at batch 1 (calls/s) and batch 64 (rows/s). ``x bare`` is p50 / bare p50.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter
from numpy.typing import NDArray

from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.modeltools.quantize import quantize_onnx
from edgefleet.shared.runtime import RuntimeOptions, load_runtime
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import Split, digits_split, wine_split

Call = Callable[[NDArray[np.float32]], object]
WARMUP = 50
BATCH = 64


@dataclass(frozen=True)
class Figures:
    p50_us: float
    p99_us: float
    calls_per_s: float
    rows_per_s: float


def bare_onnx(path: Path) -> Call:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def call(x: NDArray[np.float32]) -> object:
        return session.run(["probabilities"], {"input": x})

    return call


def bare_tflite(path: Path) -> Call:
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    shapes = {"current": tuple(inp["shape"])}
    cache: dict[int, Any] = {}

    def call(x: NDArray[np.float32]) -> object:
        if x.shape != shapes["current"]:
            interpreter.resize_tensor_input(inp["index"], x.shape)
            interpreter.allocate_tensors()
            shapes["current"] = x.shape
        if inp["dtype"] == np.int8:
            # Quantize once per distinct array: "bare" means the caller already has int8.
            key = id(x)
            if key not in cache:
                cache[key] = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
            x = cache[key]
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return call


def agent_runtime(path: Path) -> Call:
    runtime = load_runtime(path, options=RuntimeOptions(intra_op_threads=1))

    def call(x: NDArray[np.float32]) -> object:
        return runtime.predict({"input": x})

    return call


def agent_host(path: Path) -> Call:
    runtime = load_runtime(path, options=RuntimeOptions(intra_op_threads=1))
    host = ModelHost(
        InferenceMetrics(), ActiveModel(runtime, ModelRef(name=path.stem, version="1.0.0"))
    )

    def call(x: NDArray[np.float32]) -> object:
        return host.infer({"input": x})

    return call


def measure(call: Call, rows: NDArray[np.float32], iterations: int, repeats: int) -> Figures:
    singles = [np.ascontiguousarray(rows[i : i + 1]) for i in range(min(len(rows), 64))]
    batch = np.ascontiguousarray(rows[:BATCH])
    runs: list[Figures] = []
    for _ in range(repeats):
        for i in range(WARMUP):
            call(singles[i % len(singles)])
        timings = np.empty(iterations)
        for i in range(iterations):
            x = singles[i % len(singles)]
            start = time.perf_counter()
            call(x)
            timings[i] = time.perf_counter() - start
        call(batch)
        batch_calls = max(5, iterations // 20)
        start = time.perf_counter()
        for _ in range(batch_calls):
            call(batch)
        batch_s = time.perf_counter() - start
        p50, p99 = np.percentile(timings, [50, 99]) * 1e6
        runs.append(
            Figures(
                p50_us=float(p50),
                p99_us=float(p99),
                calls_per_s=float(iterations / timings.sum()),
                rows_per_s=batch_calls * len(batch) / batch_s,
            )
        )
    return Figures(
        p50_us=statistics.median(r.p50_us for r in runs),
        p99_us=statistics.median(r.p99_us for r in runs),
        calls_per_s=statistics.median(r.calls_per_s for r in runs),
        rows_per_s=statistics.median(r.rows_per_s for r in runs),
    )


def onnx_int8(task: str, split: Split, workdir: Path) -> Path:
    calibration = workdir / f"{task}_calibration.npy"
    np.save(calibration, split.x_train[:256])
    out = workdir / f"{task}_int8.onnx"
    quantize_onnx(
        model_path(f"{task}_float.onnx"),
        out,
        mode="static",
        calibration=calibration,
        max_accuracy_drop=0.05,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    header = (
        f"{'model':<28}{'path':<9}{'p50 us':>9}{'p99 us':>9}{'calls/s':>10}"
        f"{'rows/s@64':>11}{'x bare':>8}"
    )
    started = time.perf_counter()
    for task, split in (("wine", wine_split()), ("digits_cnn", digits_split())):
        variants = {
            f"{task} onnx float": (model_path(f"{task}_float.onnx"), bare_onnx),
            f"{task} onnx int8": (onnx_int8(task, split, workdir), bare_onnx),
            f"{task} tflite float": (model_path(f"{task}_float.tflite"), bare_tflite),
            f"{task} tflite int8": (model_path(f"{task}_int8.tflite"), bare_tflite),
        }
        print(header)
        for name, (path, bare) in variants.items():
            base: Figures | None = None
            for label, factory in (
                ("bare", bare),
                ("runtime", agent_runtime),
                ("host", agent_host),
            ):
                fig = measure(factory(path), split.x_test, args.iterations, args.repeats)
                base = base or fig
                print(
                    f"{name:<28}{label:<9}{fig.p50_us:>9.1f}{fig.p99_us:>9.1f}"
                    f"{fig.calls_per_s:>10.0f}{fig.rows_per_s:>11.0f}"
                    f"{fig.p50_us / base.p50_us:>8.2f}"
                )
        print()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
