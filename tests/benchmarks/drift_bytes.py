"""Bytes of one drift report (the DriftMessage JSON) against the raw inputs it summarises.

Run: .venv/bin/python tests/benchmarks/drift_bytes.py
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefleet.shared.drift import WindowAccumulator, build_profile
from edgefleet.shared.messages import DriftMessage, ModelRef, encode
from edgefleet.simulators.models import SensorFeed, train_wine_classifier


def main() -> None:
    model = train_wine_classifier(Path(tempfile.mkdtemp()) / "wine.onnx")
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": model.x_train})
    profile = build_profile(
        model.x_train,
        {"label": label, "probabilities": probabilities},
        feature_names=model.feature_names,
        labels=model.y_train,
    )
    print(f"profile JSON (once per model version, in the package): {len(profile.to_json())} B")
    feed = SensorFeed(model.x_train, seed=3)
    now = datetime.now(UTC)
    header = ("rows", "report B", "raw f32 B", "raw JSON B", "vs f32", "vs JSON")
    print("{:>6} {:>9} {:>10} {:>11} {:>7} {:>8}".format(*header))
    for rows in (1_000, 10_000):
        x = feed.sample(rows)
        out_label, out_probabilities = session.run(None, {"input": x})
        accumulator = WindowAccumulator(profile)
        outputs = {"label": out_label, "probabilities": out_probabilities}
        # Labels for a tenth of the rows, as a device with late feedback would have.
        labelled = slice(0, rows // 10)
        accumulator.add(x, outputs)
        accumulator.add_labels(
            {k: v[labelled] for k, v in outputs.items()}, out_label[labelled].copy()
        )
        message = DriftMessage(
            device_id="device-0001",
            seq=42,
            model=ModelRef(name="wine", version="1.0.0", sha256="0" * 64),
            window_start=now,
            window_end=now,
            count=rows,
            sketch=accumulator.snapshot(),
        )
        report = len(encode(message))
        raw_f32 = x.astype(np.float32).nbytes
        raw_json = len(json.dumps(x.tolist()).encode())
        print(
            f"{rows:>6} {report:>9} {raw_f32:>10} {raw_json:>11} "
            f"{raw_f32 / report:>6.1f}x {raw_json / report:>7.1f}x"
        )


if __name__ == "__main__":
    main()
