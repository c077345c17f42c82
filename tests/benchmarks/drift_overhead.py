"""What drift monitoring adds to each inference, at batch 1, on the wine ONNX model.

Run: .venv/bin/python tests/benchmarks/drift_overhead.py [--rows 20000]

Each iteration times a bare ``session.run`` and then ``DriftMonitor.observe`` on its
inputs and outputs; the folds (every 256 rows) and window closes land inside the
observe timings, so the mean observe time is the amortised cost per inference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from edgefleet.agent.drift_monitor import DriftMonitor
from edgefleet.shared.drift import build_profile
from edgefleet.simulators.models import SensorFeed, train_wine_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--fold-rows", type=int, default=1024)
    args = parser.parse_args()
    model = train_wine_classifier(Path(tempfile.mkdtemp()) / "wine.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": model.x_train})
    profile = build_profile(
        model.x_train,
        {"label": label, "probabilities": probabilities},
        feature_names=model.feature_names,
        labels=model.y_train,
    )
    monitor = DriftMonitor(profile, window_count=5000, window_s=1e9, fold_rows=args.fold_rows)
    feed = SensorFeed(model.x_train, seed=1)
    rows = feed.sample(args.rows)
    for row in rows[:500]:  # warm up both paths
        out = session.run(None, {"input": row[None, :]})
        monitor.observe({"input": row[None, :]}, {"label": out[0], "probabilities": out[1]})
    monitor.close()

    run_ns: list[int] = []
    observe_ns: list[int] = []
    fold_ns: list[int] = []
    closed = 0
    perf = time.perf_counter_ns
    for i, row in enumerate(rows):
        batch = row[None, :]
        t0 = perf()
        out = session.run(None, {"input": batch})
        t1 = perf()
        monitor.observe({"input": batch}, {"label": out[0], "probabilities": out[1]})
        if i % 1000 == 0:  # the daemon checks on a timer, not per inference
            closed += monitor.maybe_close() is not None
        t2 = perf()
        run_ns.append(t1 - t0)
        # A call after which nothing is pending folded the buffer (private, read only).
        (fold_ns if monitor._pending_rows == 0 else observe_ns).append(t2 - t1)

    # Medians resist the preemption spikes of a shared machine; means are shown too.
    run_median = statistics.median(run_ns) / 1000
    run_mean = statistics.fmean(run_ns) / 1000
    observe_median = statistics.median(observe_ns) / 1000
    fold_median = statistics.median(fold_ns) / 1000
    amortised = observe_median + fold_median / args.fold_rows
    mean_all = (sum(observe_ns) + sum(fold_ns)) / len(rows) / 1000
    print(f"rows: {args.rows} at batch 1, 13 features + 4 outputs, fold every {args.fold_rows}")
    print(f"windows closed: {closed}, folds: {len(fold_ns)}")
    print(f"onnxruntime session.run:        median {run_median:8.2f} us   mean {run_mean:8.2f} us")
    print(f"observe, no fold:               median {observe_median:8.2f} us")
    print(f"observe that folds the buffer:  median {fold_median:8.2f} us")
    print(f"monitoring per inference:       {amortised:8.2f} us (median observe + fold / rows)")
    print(f"                                {mean_all:8.2f} us (plain mean, incl. preemption)")
    print(f"overhead vs median run:         {100 * amortised / run_median:6.1f} %")


if __name__ == "__main__":
    main()
